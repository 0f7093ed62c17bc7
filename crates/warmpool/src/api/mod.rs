//! The HTTP API (SPEC section 6), served by every `serve` replica: the router, the shared state, and the small
//! endpoints (health, settings, reconcile, status). Each larger group of endpoints has its own module. Every
//! handler authenticates first ([`auth`]), validates its input with messages that name the field, and answers
//! errors as `{"code", "message"}` ([`error::ApiError`]).

pub mod auth;
pub mod claims;
pub mod error;
pub mod presets;
pub mod templates;
pub mod views;
pub mod workspaces;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;
use warmpool_store::Store;

use self::auth::Caller;
use self::error::{ApiError, parse_body};
use crate::clock::Clock;
use crate::config::TokenConfig;
use crate::reconciler::Reconciler;
use crate::worker::JobNotify;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState<S: Store> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub reconciler: Arc<Reconciler<S>>,
    pub tokens: Vec<TokenConfig>,
    /// Wakes this process's build workers after a request queued a build.
    pub jobs: JobNotify,
}

impl<S: Store> AppState<S> {
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        auth::authenticate(&self.tokens, headers)
    }
}

/// The router of all endpoints.
pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/api/v1/templates", get(templates::list::<S>))
        .route(
            "/api/v1/templates/{name}",
            get(templates::show::<S>)
                .put(templates::apply::<S>)
                .delete(templates::delete::<S>),
        )
        .route("/api/v1/presets", get(presets::list::<S>))
        .route(
            "/api/v1/presets/{template}/{preset}/plan",
            get(presets::plan::<S>),
        )
        .route(
            "/api/v1/presets/{template}/{preset}/settings",
            put(presets::settings::<S>),
        )
        .route(
            "/api/v1/presets/{template}/{preset}/invalidate",
            post(presets::invalidate::<S>),
        )
        .route("/api/v1/claims", post(claims::claim::<S>))
        .route("/api/v1/workspaces", get(workspaces::list::<S>))
        .route(
            "/api/v1/workspaces/{id}",
            get(workspaces::show::<S>).delete(workspaces::delete::<S>),
        )
        .route(
            "/api/v1/workspaces/{id}/start",
            post(workspaces::start::<S>),
        )
        .route("/api/v1/workspaces/{id}/stop", post(workspaces::stop::<S>))
        .route(
            "/api/v1/workspaces/{id}/builds",
            get(workspaces::builds::<S>),
        )
        .route("/api/v1/builds/{id}/log", get(workspaces::log::<S>))
        .route(
            "/api/v1/settings",
            get(get_settings::<S>).put(put_settings::<S>),
        )
        .route("/api/v1/reconcile", post(reconcile::<S>))
        .route("/api/v1/status", get(status::<S>))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<S: Store>(State(state): State<Arc<AppState<S>>>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database does not answer",
        )
        .into_response(),
    }
}

async fn get_settings<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let settings = state.store.settings().await?;
    Ok(Json(json!({"reconciliation_paused": settings.reconciliation_paused})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    reconciliation_paused: bool,
}

async fn put_settings<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let body: SettingsBody = parse_body(&body)?;
    state
        .store
        .set_reconciliation_paused(body.reconciliation_paused, state.clock.now())
        .await?;
    state.reconciler.trigger().fire();
    Ok(Json(json!({"reconciliation_paused": body.reconciliation_paused})).into_response())
}

async fn reconcile<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    state.reconciler.trigger().fire();
    Ok((StatusCode::ACCEPTED, Json(json!({"triggered": true}))).into_response())
}

async fn status<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let last = state.store.last_tick().await?;
    let jobs = state.store.job_counts().await?;
    let now = state.clock.now();
    let body = json!({
        "replica_id": state.reconciler.replica_id(),
        "last_tick_replica": last.as_ref().map(|t| t.replica_id.clone()),
        "ticks": state.reconciler.history(),
        "jobs": {
            "by_status": jobs.by_status,
            "oldest_pending_age_seconds": jobs.oldest_pending_at.map(|at| (now - at).num_milliseconds() as f64 / 1000.0),
            "failing_deletes": jobs.failing_deletes,
        },
    });
    Ok(Json(body).into_response())
}
