//! `POST /api/v1/claims`: hand a ready prebuild to a user (SPEC section 6).
//!
//! The warm path is one conditional update in the store (the oldest ready, unexpired prebuild of the active
//! version's preset changes owner and name), answered 201. With nothing ready, `fallback = build` creates and
//! builds a workspace for the user (202) and `fallback = none` answers 409 `pool_empty`. An `idempotency_key` is
//! kept 24 h per owner: the same key and body answer the first answer again (2xx and 409 are kept), another body
//! is 409 `idempotency_conflict`, and a second request while the first runs waits for it. Every claim records
//! `claim_succeeded` or `claim_missed` (the store does, in the claim's transaction) and triggers a tick.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use warmpool_store::{ClaimOutcome, ClaimRequest, IdempotencyBegin, Store};

use super::error::{ApiError, parse_body};
use super::views::{ClaimAnswer, ErrorBody};
use super::{AppState, views};
use crate::template_input::{is_valid_name, is_valid_owner_name};

/// A claim: the active version's preset to claim from, for whom, and what to do when nothing is ready.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    #[schema(example = "devbox")]
    template: String,
    #[schema(example = "small")]
    preset: String,
    /// Defaults to the caller's token name; `prebuilds` is refused.
    #[serde(default)]
    #[schema(example = "alice", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    owner: Option<String>,
    /// Defaults to `<owner>-<preset>-<6 random [a-z0-9]>`, cut to 63 characters.
    #[serde(default)]
    #[schema(example = "alice-1", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    name: Option<String>,
    /// Default `build`.
    #[serde(default)]
    fallback: Option<Fallback>,
    /// Kept 24 h per owner: the same key and body answer the first answer again.
    #[serde(default)]
    #[schema(example = "k1", min_length = 1, max_length = 200)]
    idempotency_key: Option<String>,
}

/// With no ready prebuild: `build` creates and builds a workspace for the user (202), `none` answers 409
/// `pool_empty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    Build,
    None,
}

/// How long a request waits for the first request with its idempotency key.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(60);

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..6]
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Claims a workspace: the oldest ready, unexpired prebuild of the active version's preset moves to the owner.
#[utoipa::path(
    post,
    path = "/api/v1/claims",
    operation_id = "claim",
    tag = "claims",
    request_body = ClaimBody,
    responses(
        (status = 201, description = "Warm: a prebuild was handed over (with `claim_build`, `build` is the `start` \
build that follows with the new owner)", body = ClaimAnswer),
        (status = 202, description = "Cold (`fallback = build`): a new workspace is being built for the owner", body = ClaimAnswer),
        (status = 400, description = "`bad_request`, naming the field", body = ErrorBody),
        (status = 403, description = "`forbidden`: a user token claiming for another owner", body = ErrorBody),
        (status = 404, description = "`not_found`: no such active template or preset", body = ErrorBody),
        (status = 409, description = "`pool_empty` (`fallback = none`), `quota_exceeded`, `name_taken`, \
`idempotency_conflict`", body = ErrorBody),
    ),
)]
pub async fn claim<S: Store>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match claim_inner(&state, &headers, &body).await {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn claim_inner<S: Store>(
    state: &AppState<S>,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let caller = state.caller(headers)?;
    let body: ClaimBody = parse_body(raw)?;
    if !is_valid_name(&body.template) {
        return Err(ApiError::bad_request(format!(
            "template: invalid name {:?}",
            body.template
        )));
    }
    if !is_valid_name(&body.preset) {
        return Err(ApiError::bad_request(format!(
            "preset: invalid name {:?}",
            body.preset
        )));
    }
    let owner = match (&body.owner, &caller.name) {
        (Some(owner), _) => owner.clone(),
        (None, Some(name)) => name.clone(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "owner: required (no token names the caller)",
            ));
        }
    };
    if owner == warmpool_core::PREBUILDS_OWNER {
        return Err(ApiError::bad_request(
            "owner: \"prebuilds\" is reserved for the pool",
        ));
    }
    if !is_valid_owner_name(&owner) {
        return Err(ApiError::bad_request(format!(
            "owner: invalid name {owner:?} (1-63 characters: a-z, 0-9, '.', '_', '-')"
        )));
    }
    caller.require_owner(&owner)?;
    let name = match &body.name {
        Some(name) => {
            if !is_valid_owner_name(name) {
                return Err(ApiError::bad_request(format!(
                    "name: invalid workspace name {name:?} (1-63 characters: a-z, 0-9, '.', '_', '-')"
                )));
            }
            name.clone()
        }
        None => {
            let mut name = format!("{owner}-{}-{}", body.preset, random_suffix());
            name.truncate(63);
            name
        }
    };
    let fallback = body.fallback.unwrap_or(Fallback::Build);
    if let Some(key) = &body.idempotency_key
        && (key.is_empty() || key.len() > 200)
    {
        return Err(ApiError::bad_request(
            "idempotency_key: must be 1-200 characters",
        ));
    }

    let Some(key) = body.idempotency_key.clone() else {
        return run_claim(state, &body, owner, name, fallback).await;
    };
    // The body as parsed JSON, for comparing a replay.
    let request_json: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    loop {
        match state
            .store
            .idempotency_begin(&owner, &key, &request_json, state.clock.now())
            .await?
        {
            IdempotencyBegin::Started => break,
            IdempotencyBegin::Replay { status, body } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                return Ok((status, body));
            }
            IdempotencyBegin::Conflict => {
                return Err(ApiError::conflict(
                    "idempotency_conflict",
                    "idempotency_key was already used with a different request",
                ));
            }
            IdempotencyBegin::InFlight => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::conflict(
                        "conflict",
                        "the first request with this idempotency_key is still running",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    let answer = run_claim(state, &body, owner.clone(), name, fallback).await;
    let kept = match &answer {
        Ok((status, body)) => Some((*status, body.clone())),
        Err(err) if err.status == StatusCode::CONFLICT => Some((
            err.status,
            json!({"code": err.code, "message": err.message}),
        )),
        Err(_) => None,
    };
    match kept {
        Some((status, body)) => {
            state
                .store
                .idempotency_finish(&owner, &key, status.as_u16(), &body)
                .await?
        }
        None => state.store.idempotency_release(&owner, &key).await?,
    }
    answer
}

async fn run_claim<S: Store>(
    state: &AppState<S>,
    body: &ClaimBody,
    owner: String,
    name: String,
    fallback: Fallback,
) -> Result<(StatusCode, Value), ApiError> {
    let request = ClaimRequest {
        template: body.template.clone(),
        preset: body.preset.clone(),
        owner,
        name,
    };
    let started = std::time::Instant::now();
    let answer = claim_or_fallback(state, &request, fallback).await;
    if let Ok((status, _)) = &answer {
        state.metrics.observe_claim(
            &request.template,
            &request.preset,
            *status == StatusCode::CREATED,
            started.elapsed().as_secs_f64(),
        );
    }
    answer
}

async fn claim_or_fallback<S: Store>(
    state: &AppState<S>,
    request: &ClaimRequest,
    fallback: Fallback,
) -> Result<(StatusCode, Value), ApiError> {
    let outcome = state.store.claim(request, state.clock.now()).await;
    // Whatever happened, the pool may need a refill.
    state.reconciler.trigger().fire();
    match outcome? {
        ClaimOutcome::Claimed { workspace, build } => {
            if build.is_some() {
                state.jobs.wake();
            }
            let answer = ClaimAnswer {
                workspace: views::workspace(&workspace),
                warm: true,
                build: build.as_ref().map(views::build),
            };
            Ok((StatusCode::CREATED, to_value(&answer)?))
        }
        ClaimOutcome::PoolEmpty => match fallback {
            Fallback::None => Err(ApiError::conflict(
                "pool_empty",
                format!(
                    "no ready prebuild of {}/{}",
                    request.template, request.preset
                ),
            )),
            Fallback::Build => {
                let (workspace, build) = state
                    .store
                    .create_workspace(request, state.clock.now())
                    .await?;
                state.jobs.wake();
                let answer = ClaimAnswer {
                    workspace: views::workspace(&workspace),
                    warm: false,
                    build: Some(views::build(&build)),
                };
                Ok((StatusCode::ACCEPTED, to_value(&answer)?))
            }
        },
    }
}

/// The answer as JSON, kept as a value so an idempotent replay answers the very same body.
fn to_value(answer: &ClaimAnswer) -> Result<Value, ApiError> {
    serde_json::to_value(answer).map_err(|err| {
        tracing::error!(error = %err, "cannot serialize a claim answer");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    })
}
