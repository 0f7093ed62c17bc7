//! Presets: the pool of every active preset (and of inactive ones still holding prebuilds), the live plan of one,
//! its pause, and invalidation. Answers come from a fresh snapshot, planned by the same planner as the reconciler.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use warmpool_core::plan::{TargetSource, format_timestamp};
use warmpool_store::Store;

use super::AppState;
use super::error::{ApiError, parse_body};
use super::views::{
    ErrorBody, Invalidated, PlanAnswer, PresetList, PresetPool, PresetSettings,
    PresetSettingsAnswer,
};

/// The pools: every active preset with a pool, and inactive presets that still have prebuilds.
#[utoipa::path(
    get,
    path = "/api/v1/presets",
    operation_id = "list_presets",
    tag = "presets",
    responses((status = 200, body = PresetList)),
)]
pub async fn list<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?;
    let snapshot = state
        .store
        .snapshot(state.clock.now(), state.reconciler.config().planner)
        .await?;
    let plan = warmpool_core::plan(&snapshot);
    let presets = snapshot
        .presets
        .iter()
        .zip(&plan.presets)
        .filter(|(preset, entry)| {
            let has_pool = preset.active && entry.state.target_source != TargetSource::None;
            let still_holds =
                !preset.active && (entry.state.actual > 0 || entry.state.starting > 0);
            has_pool || still_holds
        })
        .map(|(preset, entry)| PresetPool {
            template: preset.template.clone(),
            preset: preset.preset.clone(),
            template_version: preset.template_version.clone(),
            active: preset.active,
            state: entry.state,
            status: entry.status,
            paused: preset.paused,
            backoff_until: entry.backoff_until().map(|until| format_timestamp(&until)),
        })
        .collect();
    Ok(Json(PresetList { presets }).into_response())
}

/// The live plan of the active version's preset: `{"presets": [its entry]}`, as `warmpool plan` prints it.
#[utoipa::path(
    get,
    path = "/api/v1/presets/{template}/{preset}/plan",
    operation_id = "get_preset_plan",
    tag = "presets",
    params(
        ("template" = String, Path, description = "The template's name"),
        ("preset" = String, Path, description = "The preset's name"),
    ),
    responses(
        (status = 200, body = PlanAnswer),
        (status = 404, description = "`not_found`: no such active preset, or it has no pool", body = ErrorBody),
    ),
)]
pub async fn plan<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path((template, preset)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.caller(&headers)?;
    let Some(info) = state.store.active_preset(&template, &preset).await? else {
        return Err(ApiError::not_found(format!(
            "no active preset {template}/{preset}"
        )));
    };
    let snapshot = state
        .store
        .snapshot(state.clock.now(), state.reconciler.config().planner)
        .await?;
    let plan = warmpool_core::plan(&snapshot);
    match plan.preset(&info.id) {
        Some(entry) => Ok(Json(PlanAnswer {
            presets: vec![entry.clone()],
        })
        .into_response()),
        // An active preset without a pool is not part of the snapshot: nothing to plan.
        None => Err(ApiError::not_found(format!(
            "preset {template}/{preset} has no pool"
        ))),
    }
}

/// Pauses or resumes one preset (kept by template and preset name, across versions).
#[utoipa::path(
    put,
    path = "/api/v1/presets/{template}/{preset}/settings",
    operation_id = "set_preset_paused",
    tag = "presets",
    params(
        ("template" = String, Path, description = "The template's name"),
        ("preset" = String, Path, description = "The preset's name"),
    ),
    request_body = PresetSettings,
    responses(
        (status = 200, body = PresetSettingsAnswer),
        (status = 400, description = "`bad_request`, naming the field", body = ErrorBody),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
        (status = 404, description = "`not_found`: no such active preset", body = ErrorBody),
    ),
)]
pub async fn settings<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path((template, preset)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let body: PresetSettings = parse_body(&body)?;
    if state
        .store
        .active_preset(&template, &preset)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "no active preset {template}/{preset}"
        )));
    }
    state
        .store
        .set_preset_paused(&template, &preset, body.paused, state.clock.now())
        .await?;
    state.reconciler.trigger().fire();
    Ok(Json(PresetSettingsAnswer {
        template,
        preset,
        paused: body.paused,
    })
    .into_response())
}

/// Expires every current prebuild of the active version's preset; the reconciler replaces them.
#[utoipa::path(
    post,
    path = "/api/v1/presets/{template}/{preset}/invalidate",
    operation_id = "invalidate_preset",
    tag = "presets",
    params(
        ("template" = String, Path, description = "The template's name"),
        ("preset" = String, Path, description = "The preset's name"),
    ),
    responses(
        (status = 200, body = Invalidated),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
        (status = 404, description = "`not_found`: no such active preset", body = ErrorBody),
    ),
)]
pub async fn invalidate<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Path((template, preset)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    if state
        .store
        .active_preset(&template, &preset)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "no active preset {template}/{preset}"
        )));
    }
    let n = state
        .store
        .invalidate_preset(&template, &preset, state.clock.now())
        .await?;
    state.reconciler.trigger().fire();
    Ok(Json(Invalidated { invalidated: n }).into_response())
}
