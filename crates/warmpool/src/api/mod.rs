//! The HTTP API (SPEC section 6), served by every `serve` replica: the router, the shared state, the OpenAPI
//! document, and the small endpoints (health, settings, reconcile, status). Each larger group of endpoints has its
//! own module. Every handler authenticates first ([`auth`]), validates its input with messages that name the
//! field, and answers errors as `{"code", "message"}` ([`error::ApiError`]).
//!
//! Every route is registered from its handler's `#[utoipa::path]` annotation (the [`op!`] macro reads the
//! annotation's path and method), so the router and the OpenAPI document served at `GET /api/openapi.json` cannot
//! disagree; request and answer schemas come from the types the handlers parse and serialize ([`views`], and
//! [`schemas`] for the types of other crates). The document needs no token: it describes the API, not its data
//! (the same reading as `/healthz`, `/readyz` and `/metrics`). It also lists `GET /metrics`, which
//! [`crate::metrics::router`] serves and `serve` merges in.
//!
//! Bodies are read as JSON whatever their `Content-Type` says (so `curl -d '{...}'` works), and must be one JSON
//! object with no unknown fields.
//!
//! Deliberately not here: an API browser (no swagger-ui crate: it downloads its assets at build time; any
//! OpenAPI viewer can read the document), and versioning beyond the `/api/v1` prefix.

pub mod auth;
pub mod claims;
pub mod error;
pub mod presets;
pub mod schemas;
pub mod templates;
pub mod views;
pub mod workspaces;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use warmpool_store::Store;

use self::auth::Caller;
use self::error::{ApiError, parse_body};
use self::views::{ErrorBody, JobsView, Settings, Status, Triggered};
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
    /// `warmpool_claim_duration_seconds`.
    pub metrics: crate::metrics::Metrics,
}

impl<S: Store> AppState<S> {
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        auth::authenticate(&self.tokens, headers)
    }
}

/// Routes one handler from its `#[utoipa::path]` annotation: the annotation's path and methods register the
/// handler (instantiated for the store type `S` unless marked `plain`), and its operation goes into the
/// document. The same as `utoipa_axum::routes!`, which cannot name a generic handler.
macro_rules! op {
    (plain $handler:ident) => {
        utoipa_axum::paste! { op!(@build [<__path_ $handler>], $handler) }
    };
    ($S:ident, $module:ident :: $handler:ident) => {
        utoipa_axum::paste! { op!(@build $module::[<__path_ $handler>], $module::$handler::<$S>) }
    };
    ($S:ident, $handler:ident) => {
        utoipa_axum::paste! { op!(@build [<__path_ $handler>], $handler::<$S>) }
    };
    (@build $doc:ty, $callable:expr) => {{
        type Doc = $doc;
        let mut schemas = Vec::new();
        <Doc as utoipa::__dev::SchemaReferences>::schemas(&mut schemas);
        let mut operation = <Doc as utoipa::Path>::operation();
        let tags = <Doc as utoipa::__dev::Tags>::tags();
        if !tags.is_empty() {
            operation
                .tags
                .get_or_insert_with(Vec::new)
                .extend(tags.iter().map(|t| (*t).to_owned()));
        }
        let methods = <Doc as utoipa::Path>::methods();
        let router = methods
            .iter()
            .fold(axum::routing::MethodRouter::new(), |router, method| {
                router.on(
                    utoipa_axum::PathItemExt::to_method_filter(method),
                    $callable,
                )
            });
        let mut paths = utoipa::openapi::path::Paths::new();
        paths.add_path_operation(<Doc as utoipa::Path>::path(), methods, operation);
        (schemas, paths, router)
    }};
}

/// The document's fixed parts; the paths and their schemas come from [`api_router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "warmpool",
        description = "Warm pools of prebuilt workspaces: claim a ready workspace at once, manage templates, \
presets and their pools. Errors are `{\"code\", \"message\"}`. With `[[auth.tokens]]` configured, every endpoint \
but `/healthz`, `/readyz`, `/metrics` and `/api/openapi.json` needs `Authorization: Bearer TOKEN`; a `user` token \
acts only on its own workspaces and reads templates, presets and plans, everything else is `admin` only.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    security(("bearer" = [])),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody)),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document; no token needed"),
        (name = "claims", description = "Claiming a workspace from a preset's pool"),
        (name = "templates", description = "Templates, their versions and presets"),
        (name = "presets", description = "Pools: state, live plan, pause, invalidation"),
        (name = "workspaces", description = "Workspaces, their builds and logs"),
        (name = "reconciler", description = "Global pause, triggering a tick, status"),
    ),
)]
struct ApiDoc;

/// Declares the bearer-token scheme that `security(("bearer" = []))` names.
#[derive(Debug)]
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `warmpool token new`, whose SHA-256 is in `[[auth.tokens]]`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented endpoint, routed. `/metrics` is documented here and served by [`crate::metrics::router`].
fn api_router<S: Store>() -> OpenApiRouter<Arc<AppState<S>>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(op!(plain healthz))
        .routes(op!(S, readyz))
        .routes(op!(S, templates::list))
        .routes(op!(S, templates::show))
        .routes(op!(S, templates::apply))
        .routes(op!(S, templates::delete))
        .routes(op!(S, presets::list))
        .routes(op!(S, presets::plan))
        .routes(op!(S, presets::settings))
        .routes(op!(S, presets::invalidate))
        .routes(op!(S, claims::claim))
        .routes(op!(S, workspaces::list))
        .routes(op!(S, workspaces::show))
        .routes(op!(S, workspaces::delete))
        .routes(op!(S, workspaces::start))
        .routes(op!(S, workspaces::stop))
        .routes(op!(S, workspaces::builds))
        .routes(op!(S, workspaces::log))
        .routes(op!(S, get_settings))
        .routes(op!(S, put_settings))
        .routes(op!(S, reconcile))
        .routes(op!(S, status))
        .routes(op!(plain openapi_json))
}

/// The OpenAPI document of the API, as served at `GET /api/openapi.json` (the paths do not depend on the store).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_router::<warmpool_store::AnyStore>().split_for_parts();
    doc.paths.add_path_operation(
        "/metrics",
        vec![utoipa::openapi::HttpMethod::Get],
        <__path_metrics_doc as utoipa::Path>::operation(),
    );
    add_common_responses(&mut doc);
    doc
}

/// Adds what every operation that needs a token (no `security(())` of its own) can answer: 401, 500, 503.
fn add_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            // `security(())`: one empty requirement, no token needed.
            let public = operation.security.as_ref().is_some_and(|s| {
                s.iter()
                    .any(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
            });
            if public {
                continue;
            }
            let responses = &mut operation.responses.responses;
            for (status, description) in [
                ("401", "`unauthorized`: a missing or unknown token"),
                ("500", "`internal`: see the server log"),
                ("503", "`unavailable`: the database does not answer"),
            ] {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
}

/// The router of all endpoints.
pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    let (router, _) = api_router::<S>().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// This OpenAPI document (rendered once per process).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "get_openapi",
    tag = "health",
    security(()),
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json")),
)]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| match openapi().to_pretty_json() {
        Ok(json) => json,
        Err(err) => {
            tracing::error!(error = %err, "cannot render the OpenAPI document");
            String::from("{}")
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.as_str(),
    )
        .into_response()
}

// Documents `GET /metrics`, which `crate::metrics::router` serves and `serve` merges in; never routed from here.
/// Prometheus metrics (SPEC section 8).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    security(()),
    responses((status = 200, description = "Prometheus text format: counters from the database, gauges from the \
latest snapshot, histograms in process", content_type = "application/openmetrics-text")),
)]
#[allow(dead_code)]
fn metrics_doc() {}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    security(()),
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok\n")),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain", example = "ok\n"),
        (status = 503, description = "`unavailable`: the database does not answer", body = ErrorBody),
    ),
)]
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

/// The global reconciliation pause.
#[utoipa::path(
    get,
    path = "/api/v1/settings",
    operation_id = "get_settings",
    tag = "reconciler",
    responses(
        (status = 200, body = Settings),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
    ),
)]
async fn get_settings<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let settings = state.store.settings().await?;
    Ok(Json(Settings {
        reconciliation_paused: settings.reconciliation_paused,
    })
    .into_response())
}

/// Pauses or resumes all reconciliation (claims still work; nothing is created or deleted while paused).
#[utoipa::path(
    put,
    path = "/api/v1/settings",
    operation_id = "set_settings",
    tag = "reconciler",
    request_body = Settings,
    responses(
        (status = 200, body = Settings),
        (status = 400, description = "`bad_request`, naming the field", body = ErrorBody),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
    ),
)]
async fn put_settings<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let body: Settings = parse_body(&body)?;
    state
        .store
        .set_reconciliation_paused(body.reconciliation_paused, state.clock.now())
        .await?;
    state.reconciler.trigger().fire();
    Ok(Json(body).into_response())
}

/// Triggers a reconciliation tick now.
#[utoipa::path(
    post,
    path = "/api/v1/reconcile",
    operation_id = "reconcile",
    tag = "reconciler",
    responses(
        (status = 202, body = Triggered),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
    ),
)]
async fn reconcile<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    state.reconciler.trigger().fire();
    Ok((StatusCode::ACCEPTED, Json(Triggered { triggered: true })).into_response())
}

/// This replica's last ticks, the replica that ran the last tick, and the job queue.
#[utoipa::path(
    get,
    path = "/api/v1/status",
    operation_id = "get_status",
    tag = "reconciler",
    responses(
        (status = 200, body = Status),
        (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
    ),
)]
async fn status<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.caller(&headers)?.require_admin()?;
    let last = state.store.last_tick().await?;
    let jobs = state.store.job_counts().await?;
    let now = state.clock.now();
    let body = Status {
        replica_id: state.reconciler.replica_id().to_owned(),
        last_tick_replica: last.map(|t| t.replica_id),
        ticks: state.reconciler.history(),
        jobs: JobsView {
            by_status: jobs.by_status,
            oldest_pending_age_seconds: jobs
                .oldest_pending_at
                .map(|at| (now - at).num_milliseconds() as f64 / 1000.0),
            failing_deletes: jobs.failing_deletes,
        },
    };
    Ok(Json(body).into_response())
}
