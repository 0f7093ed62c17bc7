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
use warmpool_store::{ClaimOutcome, ClaimRequest, IdempotencyBegin, Store};

use super::error::{ApiError, parse_body};
use super::{AppState, views};
use crate::template_input::{is_valid_name, is_valid_owner_name};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    template: String,
    preset: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    fallback: Option<Fallback>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Fallback {
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
    let outcome = state.store.claim(&request, state.clock.now()).await;
    // Whatever happened, the pool may need a refill.
    state.reconciler.trigger().fire();
    match outcome? {
        ClaimOutcome::Claimed { workspace, build } => {
            let mut answer = json!({"workspace": views::workspace(&workspace), "warm": true});
            if let (Some(build), Some(map)) = (build, answer.as_object_mut()) {
                map.insert("build".into(), views::build(&build));
                state.jobs.wake();
            }
            Ok((StatusCode::CREATED, answer))
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
                    .create_workspace(&request, state.clock.now())
                    .await?;
                state.jobs.wake();
                Ok((
                    StatusCode::ACCEPTED,
                    json!({"workspace": views::workspace(&workspace), "warm": false, "build": views::build(&build)}),
                ))
            }
        },
    }
}
