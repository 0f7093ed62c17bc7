//! The API's one error type: every failure answers `{"code", "message"}` with its HTTP status (SPEC section 6).
//! Internal errors are logged here with their cause chain and answered without it: no panic text, no SQL.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;
use warmpool_store::StoreError;

use crate::executor::chain;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400, naming the field in the message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::NotFound { .. } => ApiError::not_found(err.to_string()),
            StoreError::QuotaExceeded { .. } => {
                ApiError::conflict("quota_exceeded", err.to_string())
            }
            StoreError::NameTaken { .. } => ApiError::conflict("name_taken", err.to_string()),
            StoreError::Conflict(_) => ApiError::conflict("conflict", err.to_string()),
            StoreError::Invalid(message) => ApiError::bad_request(message.clone()),
            StoreError::Inactive(_) => ApiError::not_found(err.to_string()),
            StoreError::NotPrebuild(_) => ApiError::conflict("conflict", err.to_string()),
            _ => {
                error!(error = %chain(&err), "request failed");
                let unavailable = matches!(&err, StoreError::Database { source, .. }
                    if matches!(source, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed));
                if unavailable {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the database is unavailable",
                    )
                } else {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error; see the server log",
                    )
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// Parses a JSON object body, naming the field of the first problem (`owner: invalid type: ...`); a body that is
/// not an object at all (empty, an array, a string) is refused as a whole (`body: ...`), since serde would read
/// an array as the struct's fields in order.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ApiError::bad_request("body: a JSON object is required")),
        Some(_) => return Err(ApiError::bad_request("body: expected a JSON object")),
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // `.` is the body itself; `?` a place serde could not name (the body ended early).
        if path == "." || path.is_empty() || path.starts_with('?') {
            ApiError::bad_request(format!("body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|err| ApiError::bad_request(format!("body: {err}")))?;
    Ok(value)
}
