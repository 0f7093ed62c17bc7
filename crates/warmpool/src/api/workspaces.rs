//! Workspaces: list, show, start, stop, delete, build history and logs. A `user` token sees and acts on its own
//! workspaces only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use warmpool_core::ids::WorkspaceId;
use warmpool_core::model::Transition;
use warmpool_store::{BuildId, Store, WorkspaceFilter, WorkspaceRecord};

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, views};

pub async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "owner" | "template" | "preset"))
    {
        return Err(ApiError::bad_request(format!(
            "{unknown}: unknown query parameter"
        )));
    }
    let mut owner = query.get("owner").cloned();
    if !caller.admin {
        match &owner {
            Some(o) => caller.require_owner(o)?,
            None => owner = caller.name.clone(),
        }
    }
    let filter = WorkspaceFilter {
        owner,
        template: query.get("template").cloned(),
        preset: query.get("preset").cloned(),
        include_deleted: false,
    };
    let workspaces = state.store.list_workspaces(&filter).await?;
    let workspaces: Vec<_> = workspaces.iter().map(views::workspace).collect();
    Ok(Json(json!({"workspaces": workspaces})).into_response())
}

async fn owned<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    id: &str,
) -> Result<WorkspaceRecord, ApiError> {
    let workspace = state
        .store
        .get_workspace(&WorkspaceId::new(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workspace {id} not found")))?;
    caller.require_owner(&workspace.owner)?;
    Ok(workspace)
}

pub async fn show<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let workspace = owned(&state, &caller, &id).await?;
    Ok(Json(views::workspace(&workspace)).into_response())
}

async fn queue<S: Store>(
    state: &AppState<S>,
    headers: &HeaderMap,
    id: &str,
    transition: Transition,
) -> Result<Response, ApiError> {
    let caller = state.caller(headers)?;
    let workspace = owned(state, &caller, id).await?;
    let build = state
        .store
        .enqueue_build(&workspace.id, transition, state.clock.now())
        .await?;
    state.jobs.wake();
    state.reconciler.trigger().fire();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"build": views::build(&build)})),
    )
        .into_response())
}

pub async fn start<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    queue(&state, &headers, &id, Transition::Start).await
}

pub async fn stop<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    queue(&state, &headers, &id, Transition::Stop).await
}

pub async fn delete<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    queue(&state, &headers, &id, Transition::Delete).await
}

pub async fn builds<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let workspace = owned(&state, &caller, &id).await?;
    let builds = state.store.list_builds(&workspace.id).await?;
    let builds: Vec<_> = builds.iter().map(views::build).collect();
    Ok(Json(json!({"builds": builds})).into_response())
}

pub async fn log<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let build_id = BuildId::new(id.clone());
    let build = state
        .store
        .get_build(&build_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("build {id} not found")))?;
    owned(&state, &caller, build.workspace_id.as_str()).await?;
    let log = state.store.build_log(&build_id).await?.unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}
