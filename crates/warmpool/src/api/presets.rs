//! Presets: the pool of every active preset (and of inactive ones still holding prebuilds), the live plan of one,
//! its pause, and invalidation. Answers come from a fresh snapshot, planned by the same planner as the reconciler.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use warmpool_core::plan::{TargetSource, format_timestamp};
use warmpool_store::Store;

use super::error::{ApiError, parse_body};
use super::{AppState, views};

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
    let presets: Vec<Value> = snapshot
        .presets
        .iter()
        .zip(&plan.presets)
        .filter(|(preset, entry)| {
            let has_pool = preset.active && entry.state.target_source != TargetSource::None;
            let still_holds =
                !preset.active && (entry.state.actual > 0 || entry.state.starting > 0);
            has_pool || still_holds
        })
        .map(|(preset, entry)| {
            let mut out = json!({
                "template": preset.template,
                "preset": preset.preset,
                "active": preset.active,
                "state": entry.state,
                "status": entry.status,
                "paused": preset.paused,
            });
            if let Some(map) = out.as_object_mut() {
                if let Some(version) = &preset.template_version {
                    map.insert("template_version".into(), json!(version));
                }
                if let Some(until) = views::backoff_until(entry) {
                    map.insert("backoff_until".into(), json!(format_timestamp(&until)));
                }
            }
            out
        })
        .collect();
    Ok(Json(json!({"presets": presets})).into_response())
}

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
        Some(entry) => Ok(Json(json!({"presets": [entry]})).into_response()),
        // An active preset without a pool is not part of the snapshot: nothing to plan.
        None => Err(ApiError::not_found(format!(
            "preset {template}/{preset} has no pool"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetSettings {
    paused: bool,
}

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
    Ok(
        Json(json!({"template": template, "preset": preset, "paused": body.paused}))
            .into_response(),
    )
}

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
    Ok(Json(json!({"invalidated": n})).into_response())
}
