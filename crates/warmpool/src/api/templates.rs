//! Templates through the API: list, show, apply (`PUT`, the config file's fields as JSON, validated the same
//! way as the config file, so every 400 names the field by its path inside the template, `presets[0].ttl`),
//! delete. Applying is idempotent: the same body answers the same template and changes nothing. Through the API
//! a relative `command[0]` is refused: there is no file for it to be relative to.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use warmpool_store::{AppliedBy, Store};

use super::error::{ApiError, parse_body};
use super::views::{Deleted, ErrorBody, Template, TemplateList};
use super::{AppState, views};
use crate::template_input::{RawTemplate, validate_template};

/// Every template (deleted ones too), with versions and presets, ordered by name.
#[utoipa::path(
    get,
    path = "/api/v1/templates",
    operation_id = "list_templates",
    tag = "templates",
    responses((status = 200, body = TemplateList)),
)]
pub async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?;
    let templates = state.store.list_templates().await?;
    let templates = templates.iter().map(views::template).collect();
    Ok(Json(TemplateList { templates }).into_response())
}

/// One template with its versions and presets.
#[utoipa::path(
    get,
    path = "/api/v1/templates/{name}",
    operation_id = "get_template",
    tag = "templates",
    params(("name" = String, Path, description = "The template's name")),
    responses(
        (status = 200, body = Template),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
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

/// Applies one template (the config file's fields as JSON). A change to what is built creates and activates a
/// new version; pool settings, `max_workspaces` and `claim_build` change in place. Answers the template.
#[utoipa::path(
    put,
    path = "/api/v1/templates/{name}",
    operation_id = "apply_template",
    tag = "templates",
    params(("name" = String, Path, description = "The template's name")),
    request_body = RawTemplate,
    responses(
        (status = 200, description = "The template as it now is (the same body when nothing changed)", body = Template),
        (status = 400, description = "`bad_request`, naming the field (`presets[0].ttl: ...`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
    ),
)]
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

/// Marks a template deleted; its prebuilds are deleted by the reconciler.
#[utoipa::path(
    delete,
    path = "/api/v1/templates/{name}",
    operation_id = "delete_template",
    tag = "templates",
    params(("name" = String, Path, description = "The template's name")),
    responses(
        (status = 202, body = Deleted),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
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
    Ok((StatusCode::ACCEPTED, Json(Deleted { deleted: name })).into_response())
}
