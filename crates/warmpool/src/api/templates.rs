//! Templates through the API: list, show, apply (`PUT`, the config file's fields as JSON, validated the same
//! way), delete.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use warmpool_store::{AppliedBy, Store};

use super::error::{ApiError, parse_body};
use super::{AppState, views};
use crate::template_input::{RawTemplate, validate_template};

pub async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?;
    let templates = state.store.list_templates().await?;
    let templates: Vec<_> = templates.iter().map(views::template).collect();
    Ok(Json(json!({"templates": templates})).into_response())
}

pub async fn show<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.caller(&headers)?;
    match state.store.get_template(&name).await? {
        Some(t) => Ok(Json(views::template(&t)).into_response()),
        None => Err(ApiError::not_found(format!("template {name:?} not found"))),
    }
}

pub async fn apply<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let raw: RawTemplate = parse_body(&body)?;
    if let Some(program) = raw.command.as_ref().and_then(|c| c.first())
        && program.contains('/')
        && !std::path::Path::new(program).is_absolute()
    {
        return Err(ApiError::bad_request(format!(
            "command[0]: {program:?} is a relative path; through the API give an absolute path or a bare name"
        )));
    }
    let spec = validate_template(&raw, Some(&name), None)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let result = state
        .store
        .apply_template(&spec, AppliedBy::Api, state.clock.now())
        .await?;
    if result.settings_changed {
        state.reconciler.trigger().fire();
    }
    Ok(Json(views::template(&result.template)).into_response())
}

pub async fn delete<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    state
        .store
        .delete_template(&name, state.clock.now())
        .await?;
    state.reconciler.trigger().fire();
    Ok((StatusCode::ACCEPTED, Json(json!({"deleted": name}))).into_response())
}
