//! Authentication errors. Invariant: every message names the check that
//! failed and never contains the token (nor any part of it longer than a
//! bounded, sanitised claim value).

use crate::protocol::pb::ErrorCode;

/// Why a token or principal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A structural, signature or claim check failed → `AUTH_FAILED`.
    /// `check` is a short stable name (also the metric label), `detail` a
    /// human sentence naming what was wrong.
    #[error("authentication failed ({check}): {detail}")]
    Failed { check: &'static str, detail: String },
    /// `exp` is in the past beyond the leeway → `TOKEN_EXPIRED`.
    #[error("token expired")]
    Expired,
    /// No row in the users table has this key → `USER_NOT_FOUND`.
    #[error("user not found: no row in the users table has this user_id")]
    UserNotFound,
    /// The server could not decide (database error or timeout, key set never
    /// fetched) → `INTERNAL`. The detail is logged, the client sees it too.
    #[error("internal error during authentication: {0}")]
    Internal(String),
}

/// Every `check` an `AuthError::Failed` can name (the `reason` label of
/// `pgsat_auth_attempts_total{result="auth_failed"}`); a fixed set, so the
/// metric's series are all known at start.
pub const FAILED_CHECKS: [&str; 12] = [
    "malformed",
    "too_large",
    "alg",
    "header",
    "kid",
    "signature",
    "exp",
    "nbf",
    "iat",
    "iss",
    "aud",
    "user_id",
];

impl AuthError {
    pub(crate) fn failed(check: &'static str, detail: impl Into<String>) -> Self {
        AuthError::Failed {
            check,
            detail: detail.into(),
        }
    }

    /// The protocol error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Failed { .. } => ErrorCode::AuthFailed,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::UserNotFound => ErrorCode::UserNotFound,
            AuthError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Value of the `result` label of `pgsat_auth_attempts_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuthError::Failed { check, .. } => check,
            AuthError::Expired => "expired",
            AuthError::UserNotFound => "user_not_found",
            AuthError::Internal(_) => "internal",
        }
    }

    /// The message sent in `ErrorResp.message`.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// Start-up errors of the `Authenticator` (bad configuration or database).
#[derive(Debug, thiserror::Error)]
pub enum AuthInitError {
    #[error("{0}")]
    Config(String),
    #[error(
        "AUTH_USERS_TABLE: table {table} does not exist (or is not visible to the connecting role)"
    )]
    UsersTableMissing { table: String },
    #[error("AUTH_USERS_ID_COLUMN: column {column} does not exist in table {table}")]
    UsersColumnMissing { table: String, column: String },
    #[error("AUTH_USERS_TABLE: cannot check the users table: {0}")]
    Database(String),
}

/// Errors of `mint_token`.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}
