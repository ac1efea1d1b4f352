//! Environment → typed, validated `Config` (names fixed by
//! ../shared/design/interface.md). Every bad value is one clear line naming
//! the variable; the binary exits with code 2 on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `AUTH_MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Secure,
    Insecure,
}

/// Everything the `auth` module needs, validated.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// `AUTH_JWT_ALG`, validated to one of HS256/384/512, RS256/384/512,
    /// PS256/384/512, ES256/384, EdDSA. Required in secure mode unless
    /// `jwks_url` is set.
    pub alg: Option<jsonwebtoken::Algorithm>,
    /// `AUTH_JWT_KEY`: HMAC secret or PEM public key.
    pub key: Option<String>,
    pub jwks_url: Option<String>,
    pub iss: Option<String>,
    pub aud: Option<String>,
    pub namespace: Option<String>,
    pub leeway: Duration,
    /// `AUTH_USERS_TABLE`, possibly schema-qualified (`schema.table`).
    pub users_table: String,
    pub users_id_column: String,
    pub auth_timeout: Duration,
    pub refresh_grace: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The proxy's whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL` as given (`postgres://user:pass@host:port/db`).
    pub database_url: String,
    pub auth: AuthSettings,
    pub rules_file: Option<PathBuf>,
    pub listen_addr: SocketAddr,
    pub ws_listen_addr: SocketAddr,
    pub http_listen_addr: SocketAddr,
    pub replication_slot: String,
    pub publication: String,
    pub data_dir: PathBuf,
    pub window_max_bytes: u64,
    pub window_max_age: Option<Duration>,
    pub cache_max_bytes: u64,
    pub client_max_lag_bytes: u64,
    pub max_frame_bytes: u32,
    pub max_connections: usize,
    pub server_id: String,
    pub log_level: String,
    pub log_format: LogFormat,
}
