//! Bearer tokens (SPEC section 6). With `[[auth.tokens]]` configured, every endpoint but `/healthz`, `/readyz`
//! and `/metrics` needs a token whose SHA-256 matches one of them, compared in constant time; a `user` token acts
//! only as its own name. With no tokens every caller is an admin (and the server listens on loopback only).

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::{Role, TokenConfig};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name; `None` when auth is off.
    pub name: Option<String>,
    pub admin: bool,
}

impl Caller {
    /// 403 unless an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an admin token"))
        }
    }

    /// 403 unless an admin or `owner` is the caller's own name.
    pub fn require_owner(&self, owner: &str) -> Result<(), ApiError> {
        if self.admin || self.name.as_deref() == Some(owner) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a user token may only act on its own workspaces, not {owner:?}'s"
            )))
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The SHA-256 of a token, as `[[auth.tokens]] sha256` holds it.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer TOKEN` header value; the scheme's name is case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Resolves the caller from the `Authorization` header.
pub fn authenticate(tokens: &[TokenConfig], headers: &HeaderMap) -> Result<Caller, ApiError> {
    if tokens.is_empty() {
        return Ok(Caller {
            name: None,
            admin: true,
        });
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let hash = token_hash(presented);
    // Compare against every token, so the time does not depend on which one matched.
    let mut found: Option<&TokenConfig> = None;
    for token in tokens {
        if constant_time_eq(&token.sha256, &hash) {
            found = Some(token);
        }
    }
    let token = found.ok_or_else(ApiError::unauthorized)?;
    Ok(Caller {
        name: Some(token.name.clone()),
        admin: token.role == Role::Admin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_nothing_else_is_a_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn hashes_match_the_spec_example() {
        // SPEC's example hash is the SHA-256 of "test".
        let hex: String = token_hash("test")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
