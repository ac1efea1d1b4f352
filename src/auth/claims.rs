//! The principal's identity inside the claims. Invariant: `user_id` is taken
//! only from the top level, or only from the configured namespace object when
//! one is set, and is a non-empty, non-whitespace string; the claims object
//! it came from is kept whole for read rules.

use serde_json::{Map, Value};

use super::error::AuthError;

/// Longest `user_id` accepted (it is bound as a query parameter, never
/// spliced into SQL; the bound only keeps messages and logs small).
pub const MAX_USER_ID_BYTES: usize = 1024;

/// Returns `(user_id, the claims object holding it)`.
pub fn extract_user_id(
    claims: &Map<String, Value>,
    namespace: Option<&str>,
) -> Result<(String, Value), AuthError> {
    let scope: &Map<String, Value> = match namespace {
        None => claims,
        Some(ns) => match claims.get(ns) {
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(AuthError::failed(
                    "user_id",
                    "the namespace claim (AUTH_JWT_NAMESPACE) is not an object",
                ))
            }
            None => {
                return Err(AuthError::failed(
                    "user_id",
                    "the namespace claim (AUTH_JWT_NAMESPACE) is missing",
                ))
            }
        },
    };
    let user_id = match scope.get("user_id") {
        None => return Err(AuthError::failed("user_id", "user_id claim is missing")),
        Some(Value::String(s)) => s,
        Some(Value::Null) => return Err(AuthError::failed("user_id", "user_id claim is null")),
        Some(_) => {
            return Err(AuthError::failed(
                "user_id",
                "user_id claim is not a string",
            ))
        }
    };
    if user_id.is_empty() {
        return Err(AuthError::failed("user_id", "user_id claim is empty"));
    }
    if user_id.trim().is_empty() {
        return Err(AuthError::failed(
            "user_id",
            "user_id claim is only whitespace",
        ));
    }
    if user_id.len() > MAX_USER_ID_BYTES {
        return Err(AuthError::failed(
            "user_id",
            format!("user_id claim is longer than {MAX_USER_ID_BYTES} bytes"),
        ));
    }
    if user_id.contains('\0') {
        // Postgres text cannot hold NUL; no row can match it.
        return Err(AuthError::failed(
            "user_id",
            "user_id claim contains a NUL character",
        ));
    }
    Ok((user_id.clone(), Value::Object(scope.clone())))
}
