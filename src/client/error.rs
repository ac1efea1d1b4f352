//! Client errors, each either retryable (the client reconnects and resumes
//! by itself) or final (handed to the caller).
//!
//! Invariant: `is_retryable()` is the only place deciding reconnect versus
//! give up.

use crate::protocol::pb::ErrorCode;
use crate::protocol::{FrameError, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("connection: {0}")]
    Transport(String),
    /// The server's certificate failed the check, or the TLS settings are
    /// unusable (final: retrying cannot fix a certificate).
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection closed by the server")]
    Closed,
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("server error {}: {message}", code_name(*code))]
    Server { code: i32, message: String },
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error("token source: {0}")]
    Token(String),
    #[error("gave up after {attempts} failed attempts; last error: {last}")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        last: Box<ClientError>,
    },
}

fn code_name(code: i32) -> String {
    match ErrorCode::try_from(code) {
        Ok(c) => c.as_str_name().to_owned(),
        Err(_) => format!("#{code}"),
    }
}

impl ClientError {
    /// The server's error code, when this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => ErrorCode::try_from(*code).ok(),
            ClientError::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// Does reconnecting (and resuming from the last delivered LSN) help?
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) | ClientError::Closed | ClientError::Timeout(_) => true,
            ClientError::Server { code, .. } => matches!(
                ErrorCode::try_from(*code),
                Ok(ErrorCode::SlowConsumer
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Internal
                    | ErrorCode::AuthTimeout)
            ),
            _ => false,
        }
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => ClientError::Transport(e.to_string()),
            FrameError::Truncated { .. } => ClientError::Transport(e.to_string()),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Frame(f) => f.into(),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Transport(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> ClientError {
        ClientError::Server {
            code: code as i32,
            message: "m".into(),
        }
    }

    #[test]
    fn fatal_and_retryable_codes() {
        for c in [ErrorCode::SlowConsumer, ErrorCode::ShuttingDown] {
            assert!(server(c).is_retryable(), "{c:?}");
        }
        for c in [
            ErrorCode::AuthFailed,
            ErrorCode::UserNotFound,
            ErrorCode::UserDeleted,
            ErrorCode::PrincipalChanged,
            ErrorCode::BehindWindow,
            ErrorCode::ResyncRequired,
            ErrorCode::TableNotReadable,
            ErrorCode::InvalidRequest,
        ] {
            assert!(!server(c).is_retryable(), "{c:?}");
        }
        assert!(ClientError::Closed.is_retryable());
        assert!(!ClientError::Protocol("x".into()).is_retryable());
        assert_eq!(
            server(ErrorCode::BehindWindow).to_string(),
            "server error BEHIND_WINDOW: m"
        );
        assert_eq!(
            ClientError::Server {
                code: 99,
                message: "m".into()
            }
            .to_string(),
            "server error #99: m"
        );
    }
}
