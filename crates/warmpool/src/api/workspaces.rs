//! Workspaces: list, show, start, stop, delete, build history and logs. A `user` token sees and acts on its own
//! workspaces only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use warmpool_core::ids::WorkspaceId;
use warmpool_core::model::Transition;
use warmpool_store::{BuildId, Store, WorkspaceFilter, WorkspaceRecord};

use super::auth::Caller;
use super::error::ApiError;
use super::views::{BuildList, ErrorBody, Queued, Workspace, WorkspaceList};
use super::{AppState, views};

/// Workspaces (deleted ones left out), oldest first. A user token lists its own only.
#[utoipa::path(
    get,
    path = "/api/v1/workspaces",
    operation_id = "list_workspaces",
    tag = "workspaces",
    params(
        ("owner" = Option<String>, Query, description = "Only this owner's (`prebuilds`: the pools)"),
        ("template" = Option<String>, Query, description = "Only this template's"),
        ("preset" = Option<String>, Query, description = "Only this preset's"),
    ),
    responses(
        (status = 200, body = WorkspaceList),
        (status = 400, description = "`bad_request`: an unknown query parameter", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token naming another owner", body = ErrorBody),
    ),
)]
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
    let workspaces = workspaces.iter().map(views::workspace).collect();
    Ok(Json(WorkspaceList { workspaces }).into_response())
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

/// One workspace: its status follows the latest build (a claim build's progress shows here).
#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}",
    operation_id = "get_workspace",
    tag = "workspaces",
    params(("id" = String, Path, description = "The workspace's id")),
    responses(
        (status = 200, body = Workspace),
        (status = 403, description = "`forbidden`: another owner's workspace", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
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
        Json(Queued {
            build: views::build(&build),
        }),
    )
        .into_response())
}

/// Queues a `start` build.
#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/start",
    operation_id = "start_workspace",
    tag = "workspaces",
    params(("id" = String, Path, description = "The workspace's id")),
    responses(
        (status = 202, body = Queued),
        (status = 403, description = "`forbidden`: another owner's workspace", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: a build is in progress", body = ErrorBody),
    ),
)]
pub async fn start<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    queue(&state, &headers, &id, Transition::Start).await
}

/// Queues a `stop` build; a stopped prebuild leaves the pool.
#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/stop",
    operation_id = "stop_workspace",
    tag = "workspaces",
    params(("id" = String, Path, description = "The workspace's id")),
    responses(
        (status = 202, body = Queued),
        (status = 403, description = "`forbidden`: another owner's workspace", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: a build is in progress", body = ErrorBody),
    ),
)]
pub async fn stop<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    queue(&state, &headers, &id, Transition::Stop).await
}

/// Queues a `delete` build.
#[utoipa::path(
    delete,
    path = "/api/v1/workspaces/{id}",
    operation_id = "delete_workspace",
    tag = "workspaces",
    params(("id" = String, Path, description = "The workspace's id")),
    responses(
        (status = 202, body = Queued),
        (status = 403, description = "`forbidden`: another owner's workspace", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: a build is in progress", body = ErrorBody),
    ),
)]
pub async fn delete<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    queue(&state, &headers, &id, Transition::Delete).await
}

/// The workspace's builds, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/builds",
    operation_id = "list_builds",
    tag = "workspaces",
    params(("id" = String, Path, description = "The workspace's id")),
    responses(
        (status = 200, body = BuildList),
        (status = 403, description = "`forbidden`: another owner's workspace", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn builds<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let workspace = owned(&state, &caller, &id).await?;
    let builds = state.store.list_builds(&workspace.id).await?;
    let builds = builds.iter().map(views::build).collect();
    Ok(Json(BuildList { builds }).into_response())
}

/// A build's log: standard output and error, the last 1 MiB, sensitive values as `***`.
#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}/log",
    operation_id = "get_build_log",
    tag = "workspaces",
    params(("id" = String, Path, description = "The build's id")),
    responses(
        (status = 200, description = "The log text", body = String, content_type = "text/plain"),
        (status = 403, description = "`forbidden`: another owner's workspace", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
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
