//! Environment → typed, validated `Config` (names fixed by
//! ../shared/design/interface.md). Every bad value is one clear line naming
//! the variable; the binary exits with code 2 on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod units;
pub mod values;

pub use units::{parse_duration, parse_size};
pub use values::parse_jwt_alg;

/// `AUTH_MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Secure,
    Insecure,
}

/// Everything the `auth` module needs, validated. `Debug` hides the key.
#[derive(Clone)]
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

/// The proxy's whole configuration. `Debug` hides the database password
/// and the JWT key, so logging `{config:?}` is safe.
#[derive(Clone)]
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
    /// Threads of the async runtime (`WORKER_THREADS`, a pgsat extension).
    pub worker_threads: usize,
    pub server_id: String,
    pub log_level: String,
    pub log_format: LogFormat,
    /// TLS on both client listeners (both variables set).
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("alg", &self.alg)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("jwks_url", &self.jwks_url)
            .field("iss", &self.iss)
            .field("aud", &self.aud)
            .field("namespace", &self.namespace)
            .field("leeway", &self.leeway)
            .field("users_table", &self.users_table)
            .field("users_id_column", &self.users_id_column)
            .field("auth_timeout", &self.auth_timeout)
            .field("refresh_grace", &self.refresh_grace)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &self.redacted_database_url())
            .field("auth", &self.auth)
            .field("rules_file", &self.rules_file)
            .field("listen_addr", &self.listen_addr)
            .field("ws_listen_addr", &self.ws_listen_addr)
            .field("http_listen_addr", &self.http_listen_addr)
            .field("replication_slot", &self.replication_slot)
            .field("publication", &self.publication)
            .field("data_dir", &self.data_dir)
            .field("window_max_bytes", &self.window_max_bytes)
            .field("window_max_age", &self.window_max_age)
            .field("cache_max_bytes", &self.cache_max_bytes)
            .field("client_max_lag_bytes", &self.client_max_lag_bytes)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_connections", &self.max_connections)
            .field("worker_threads", &self.worker_threads)
            .field("server_id", &self.server_id)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl Config {
    /// `DATABASE_URL` with the password replaced by `***`, for logs.
    pub fn redacted_database_url(&self) -> String {
        match url::Url::parse(&self.database_url) {
            Ok(mut u) => {
                if u.password().is_some() {
                    // Cannot fail: a URL that has a password has a host.
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "<unparsable>".to_string(),
        }
    }
}

/// `TLS_CERT_FILE` and `TLS_KEY_FILE`: PEM files (loaded and checked
/// against each other by `server::tls` at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A configuration value that stops start-up. `Display` is one line: the
/// variable, then what is wrong with it (never a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    fn new(var: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            var,
            message: message.into(),
        }
    }
}

/// A start-up failure caused by a configured value that is only found out
/// when it is used (a users table or column that does not exist, a
/// `DATA_DIR` that is a file or belongs to another database, an unusable
/// key). `Display` is one line naming the variable; the binary exits with
/// code 2 on it, as on a `ConfigError`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(pub String);

/// Every environment variable pgsat reads (interface.md), in table order.
pub fn known_variables() -> &'static [&'static str] {
    &[
        "DATABASE_URL",
        "AUTH_MODE",
        "AUTH_JWT_ALG",
        "AUTH_JWT_KEY",
        "AUTH_JWT_JWKS_URL",
        "AUTH_JWT_ISS",
        "AUTH_JWT_AUD",
        "AUTH_JWT_NAMESPACE",
        "AUTH_JWT_LEEWAY",
        "AUTH_USERS_TABLE",
        "AUTH_USERS_ID_COLUMN",
        "RULES_FILE",
        "AUTH_TIMEOUT",
        "AUTH_REFRESH_GRACE",
        "LISTEN_ADDR",
        "WS_LISTEN_ADDR",
        "HTTP_LISTEN_ADDR",
        "REPLICATION_SLOT",
        "PUBLICATION",
        "DATA_DIR",
        "WINDOW_MAX_BYTES",
        "WINDOW_MAX_AGE",
        "CACHE_MAX_BYTES",
        "CLIENT_MAX_LAG_BYTES",
        "MAX_FRAME_BYTES",
        "MAX_CONNECTIONS",
        "SERVER_ID",
        "LOG_LEVEL",
        "LOG_FORMAT",
        // pgsat's extensions of interface.md.
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "WORKER_THREADS",
    ]
}

/// Most accepted `WORKER_THREADS`.
pub const MAX_WORKER_THREADS: usize = 1024;

/// A `WORKER_THREADS` value: a whole number from 1 to
/// [`MAX_WORKER_THREADS`].
pub fn parse_worker_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=MAX_WORKER_THREADS) => Ok(n),
        Ok(_) => Err(format!("{s:?} must be from 1 to {MAX_WORKER_THREADS}")),
        Err(_) => Err(format!("{s:?} is not a whole number ≥ 1")),
    }
}

/// `WORKER_THREADS` when unset: one fewer than the CPUs this process may
/// use (at least 1). pgsat runs beside Postgres, and its stream is only as
/// fast as its walsender, one Postgres process that needs a core of its
/// own: on 2 cores, one worker thread used 20 % less CPU per row in the
/// filtered fan-out (fewer wake-ups across threads) and passed 55,000
/// source rows/s where two failed at 50,000 (README, Performance).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// Smallest accepted `MAX_FRAME_BYTES`: an `AuthReq` carrying a real JWT must fit.
pub const MIN_MAX_FRAME_BYTES: u64 = 1024;

/// Reads variables through `lookup`; a value that is empty (or only
/// whitespace) counts as unset, so `VAR=` in an env file means "default".
struct Env<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, var: &'static str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    fn string_or(&self, var: &'static str, default: &str) -> String {
        self.get(var).unwrap_or_else(|| default.to_string())
    }

    fn parse<T>(
        &self,
        var: &'static str,
        default: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(var).as_deref().or(default) {
            None => Ok(None),
            Some(raw) => parse(raw.trim())
                .map(Some)
                .map_err(|m| ConfigError::new(var, m)),
        }
    }

    fn required<T>(
        &self,
        var: &'static str,
        default: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.parse(var, Some(default), parse)? {
            Some(v) => Ok(v),
            None => Err(ConfigError::new(var, "is required")),
        }
    }

    fn duration(
        &self,
        var: &'static str,
        default: &str,
        zero_ok: bool,
    ) -> Result<Duration, ConfigError> {
        self.required(var, default, |s| nonzero_duration(s, zero_ok))
    }

    fn size(&self, var: &'static str, default: &str, min: u64) -> Result<u64, ConfigError> {
        self.required(var, default, |s| {
            let n = parse_size(s)?;
            if n < min {
                return Err(if min == 1 {
                    format!("{s:?} must be greater than zero")
                } else {
                    format!("{s:?} is below the minimum of {min} bytes")
                });
            }
            Ok(n)
        })
    }
}

fn nonzero_duration(s: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() && !zero_ok {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(d)
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads and validates variables through `lookup` (the process
    /// environment in production, a map in tests). The first bad variable,
    /// in interface.md's table order, is reported.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env { lookup };

        // Bad values are reported first (in table order), then missing
        // required ones, so a single wrong variable is always the one named.
        let database_url = env.parse("DATABASE_URL", None, |s| {
            values::check_database_url(s).map(|()| s.to_string())
        })?;

        let mode = env.required("AUTH_MODE", "secure", |s| match s {
            "secure" => Ok(AuthMode::Secure),
            "insecure" => Ok(AuthMode::Insecure),
            other => Err(format!("{other:?} is not secure or insecure")),
        })?;
        let alg = env.parse("AUTH_JWT_ALG", None, parse_jwt_alg)?;
        // Keys are used verbatim (a secret's spaces are part of it); only an
        // all-blank value counts as unset. A one-line PEM with literal `\n`
        // (the usual way to put a PEM into an env file) gets real newlines.
        let key = env.get("AUTH_JWT_KEY").map(|k| {
            if k.trim_start().starts_with("-----BEGIN") && !k.contains('\n') {
                k.replace("\\n", "\n")
            } else {
                k
            }
        });
        let jwks_url = env.parse("AUTH_JWT_JWKS_URL", None, |s| {
            values::check_http_url(s).map(|()| s.to_string())
        })?;
        if let (Some(alg), Some(key)) = (alg, &key) {
            values::check_verification_key(alg, key)
                .map_err(|m| ConfigError::new("AUTH_JWT_KEY", m))?;
        }
        let iss = env.get("AUTH_JWT_ISS").map(|s| s.trim().to_string());
        let aud = env.get("AUTH_JWT_AUD").map(|s| s.trim().to_string());
        let namespace = env.get("AUTH_JWT_NAMESPACE").map(|s| s.trim().to_string());
        let leeway = env.duration("AUTH_JWT_LEEWAY", "0s", true)?;
        let users_table = env.required("AUTH_USERS_TABLE", "users", |s| {
            values::check_qualified_name(s).map(|()| s.to_string())
        })?;
        let users_id_column = env.required("AUTH_USERS_ID_COLUMN", "id", |s| {
            values::check_identifier(s).map(|()| s.to_string())
        })?;
        let file = |s: &str| {
            let path = PathBuf::from(s);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("{s:?} does not exist or is not a file"))
            }
        };
        let rules_file = env.parse("RULES_FILE", None, file)?;
        let auth_timeout = env.duration("AUTH_TIMEOUT", "5s", false)?;
        let refresh_grace = env.duration("AUTH_REFRESH_GRACE", "30s", true)?;

        let listen_addr = env.required("LISTEN_ADDR", "0.0.0.0:5133", values::parse_listen_addr)?;
        let ws_listen_addr =
            env.required("WS_LISTEN_ADDR", "0.0.0.0:5134", values::parse_listen_addr)?;
        let http_listen_addr = env.required(
            "HTTP_LISTEN_ADDR",
            "0.0.0.0:5135",
            values::parse_listen_addr,
        )?;
        let replication_slot = env.required("REPLICATION_SLOT", "pgsat", |s| {
            values::check_slot_name(s).map(|()| s.to_string())
        })?;
        let publication = env.required("PUBLICATION", "pgsat", |s| {
            values::check_identifier(s).map(|()| s.to_string())
        })?;
        let data_dir = PathBuf::from(env.string_or("DATA_DIR", "./pgsat-data"));
        let window_max_bytes = env.size("WINDOW_MAX_BYTES", "1GiB", 1)?;
        let window_max_age = env.parse("WINDOW_MAX_AGE", None, |s| nonzero_duration(s, false))?;
        let cache_max_bytes = env.size("CACHE_MAX_BYTES", "64MiB", 0)?;
        let client_max_lag_bytes = env.size("CLIENT_MAX_LAG_BYTES", "64MiB", 1)?;
        let max_frame_bytes = env.size("MAX_FRAME_BYTES", "1MiB", MIN_MAX_FRAME_BYTES)?;
        let max_frame_bytes = u32::try_from(max_frame_bytes).map_err(|_| {
            ConfigError::new(
                "MAX_FRAME_BYTES",
                format!(
                    "{max_frame_bytes} is above the maximum of {} bytes",
                    u32::MAX
                ),
            )
        })?;
        let max_connections =
            env.required("MAX_CONNECTIONS", "10000", |s| match s.parse::<usize>() {
                Ok(0) => Err(format!("{s:?} must be at least 1")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("{s:?} is not a whole number ≥ 1")),
            })?;
        let worker_threads = env.required(
            "WORKER_THREADS",
            &default_worker_threads().to_string(),
            parse_worker_threads,
        )?;
        let server_id = match env.get("SERVER_ID") {
            Some(id) => id.trim().to_string(),
            None => values::host_name(),
        };
        let log_level = env.required("LOG_LEVEL", "info", |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_string())
                .map_err(|e| {
                    format!("{s:?} is not a log filter ({e}); e.g. info, debug, pgsat=debug,info")
                })
        })?;
        let log_format = env.required("LOG_FORMAT", "text", |s| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        })?;

        let tls_cert = env.parse("TLS_CERT_FILE", None, file)?;
        let tls_key = env.parse("TLS_KEY_FILE", None, file)?;
        let tls =
            match (tls_cert, tls_key) {
                (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                    cert_file,
                    key_file,
                }),
                (None, None) => None,
                (Some(_), None) => return Err(ConfigError::new(
                    "TLS_KEY_FILE",
                    "is required when TLS_CERT_FILE is set (the certificate's private key, PEM)",
                )),
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        "TLS_CERT_FILE",
                        "is required when TLS_KEY_FILE is set (the certificate chain, PEM)",
                    ))
                }
            };

        let database_url = database_url.ok_or_else(|| {
            ConfigError::new(
                "DATABASE_URL",
                "is required (postgres://user:pass@host:port/db)",
            )
        })?;
        if mode == AuthMode::Secure {
            match (alg, &key, &jwks_url) {
                (Some(alg), None, None) => {
                    return Err(ConfigError::new(
                        "AUTH_JWT_KEY",
                        format!("is required with AUTH_JWT_ALG={alg:?} (or set AUTH_JWT_JWKS_URL)"),
                    ))
                }
                (None, Some(_), _) => {
                    return Err(ConfigError::new(
                        "AUTH_JWT_ALG",
                        "is required when AUTH_JWT_KEY is set",
                    ))
                }
                (None, None, None) => {
                    return Err(ConfigError::new(
                        "AUTH_JWT_ALG",
                        "is required with AUTH_MODE=secure (set AUTH_JWT_ALG and AUTH_JWT_KEY, or AUTH_JWT_JWKS_URL; AUTH_MODE=insecure only for development)",
                    ))
                }
                (Some(_), Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        "AUTH_JWT_JWKS_URL",
                        "cannot be used together with AUTH_JWT_KEY: set one of them",
                    ))
                }
                _ => {}
            }
        }

        Ok(Config {
            database_url,
            auth: AuthSettings {
                mode,
                alg,
                key,
                jwks_url,
                iss,
                aud,
                namespace,
                leeway,
                users_table,
                users_id_column,
                auth_timeout,
                refresh_grace,
            },
            rules_file,
            listen_addr,
            ws_listen_addr,
            http_listen_addr,
            replication_slot,
            publication,
            data_dir,
            window_max_bytes,
            window_max_age,
            cache_max_bytes,
            client_max_lag_bytes,
            max_frame_bytes,
            max_connections,
            worker_threads,
            server_id,
            log_level,
            log_format,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const URL: &str = "postgres://pgsat:pw@127.0.0.1:5432/app";

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    /// The minimal valid secure environment plus `extra` (later entries win).
    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut vars = vec![
            ("DATABASE_URL", URL),
            ("AUTH_JWT_ALG", "HS256"),
            ("AUTH_JWT_KEY", "secret"),
        ];
        vars.extend_from_slice(extra);
        load(&vars)
    }

    fn err(extra: &[(&'static str, &'static str)]) -> ConfigError {
        match with(extra) {
            Ok(c) => panic!("expected an error for {extra:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.database_url, URL);
        assert_eq!(c.auth.mode, AuthMode::Secure);
        assert_eq!(c.auth.alg, Some(jsonwebtoken::Algorithm::HS256));
        assert_eq!(c.auth.key.as_deref(), Some("secret"));
        assert_eq!(c.auth.jwks_url, None);
        assert_eq!(c.auth.iss, None);
        assert_eq!(c.auth.aud, None);
        assert_eq!(c.auth.namespace, None);
        assert_eq!(c.auth.leeway, Duration::ZERO);
        assert_eq!(c.auth.users_table, "users");
        assert_eq!(c.auth.users_id_column, "id");
        assert_eq!(c.auth.auth_timeout, Duration::from_secs(5));
        assert_eq!(c.auth.refresh_grace, Duration::from_secs(30));
        assert_eq!(c.rules_file, None);
        assert_eq!(c.listen_addr, "0.0.0.0:5133".parse().unwrap());
        assert_eq!(c.ws_listen_addr, "0.0.0.0:5134".parse().unwrap());
        assert_eq!(c.http_listen_addr, "0.0.0.0:5135".parse().unwrap());
        assert_eq!(c.replication_slot, "pgsat");
        assert_eq!(c.publication, "pgsat");
        assert_eq!(c.data_dir, PathBuf::from("./pgsat-data"));
        assert_eq!(c.window_max_bytes, 1 << 30);
        assert_eq!(c.window_max_age, None);
        assert_eq!(c.cache_max_bytes, 64 << 20);
        assert_eq!(c.client_max_lag_bytes, 64 << 20);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.max_connections, 10000);
        assert_eq!(c.worker_threads, default_worker_threads());
        assert!(c.worker_threads >= 1);
        assert_eq!(c.server_id, values::host_name());
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn every_variable_set() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, "{}").unwrap();
        let rules_s = rules.to_str().unwrap().to_string();
        let c = load(&[
            ("DATABASE_URL", "postgresql://u@db/app"),
            ("AUTH_MODE", "insecure"),
            ("AUTH_JWT_JWKS_URL", "https://idp.example.com/jwks.json"),
            ("AUTH_JWT_ISS", "https://idp.example.com/"),
            ("AUTH_JWT_AUD", "pgsat"),
            ("AUTH_JWT_NAMESPACE", "https://example.com/jwt"),
            ("AUTH_JWT_LEEWAY", "250ms"),
            ("AUTH_USERS_TABLE", "app.accounts"),
            ("AUTH_USERS_ID_COLUMN", "account_id"),
            ("RULES_FILE", &rules_s),
            ("AUTH_TIMEOUT", "2s"),
            ("AUTH_REFRESH_GRACE", "0s"),
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("WS_LISTEN_ADDR", "[::1]:7000"),
            ("HTTP_LISTEN_ADDR", "localhost:9100"),
            ("REPLICATION_SLOT", "slot_2"),
            ("PUBLICATION", "pub_all"),
            ("DATA_DIR", "/var/lib/pgsat"),
            ("WINDOW_MAX_BYTES", "10GiB"),
            ("WINDOW_MAX_AGE", "7d"),
            ("CACHE_MAX_BYTES", "0"),
            ("CLIENT_MAX_LAG_BYTES", "512KiB"),
            ("MAX_FRAME_BYTES", "4096"),
            ("MAX_CONNECTIONS", "1"),
            ("WORKER_THREADS", "3"),
            ("SERVER_ID", "node-a"),
            ("LOG_LEVEL", "pgsat=debug,info"),
            ("LOG_FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(c.auth.mode, AuthMode::Insecure);
        assert_eq!(c.auth.alg, None);
        assert_eq!(
            c.auth.jwks_url.as_deref(),
            Some("https://idp.example.com/jwks.json")
        );
        assert_eq!(c.auth.iss.as_deref(), Some("https://idp.example.com/"));
        assert_eq!(c.auth.aud.as_deref(), Some("pgsat"));
        assert_eq!(c.auth.namespace.as_deref(), Some("https://example.com/jwt"));
        assert_eq!(c.auth.leeway, Duration::from_millis(250));
        assert_eq!(c.auth.users_table, "app.accounts");
        assert_eq!(c.auth.users_id_column, "account_id");
        assert_eq!(c.rules_file, Some(rules));
        assert_eq!(c.auth.auth_timeout, Duration::from_secs(2));
        assert_eq!(c.auth.refresh_grace, Duration::ZERO);
        assert_eq!(c.listen_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.ws_listen_addr, "[::1]:7000".parse().unwrap());
        assert_eq!(c.http_listen_addr, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.replication_slot, "slot_2");
        assert_eq!(c.publication, "pub_all");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/pgsat"));
        assert_eq!(c.window_max_bytes, 10 << 30);
        assert_eq!(c.window_max_age, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.cache_max_bytes, 0);
        assert_eq!(c.client_max_lag_bytes, 512 << 10);
        assert_eq!(c.max_frame_bytes, 4096);
        assert_eq!(c.max_connections, 1);
        assert_eq!(c.worker_threads, 3);
        assert_eq!(c.server_id, "node-a");
        assert_eq!(c.log_level, "pgsat=debug,info");
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn empty_values_mean_default() {
        let c = with(&[
            ("WINDOW_MAX_BYTES", ""),
            ("LOG_FORMAT", "  "),
            ("AUTH_JWT_ISS", ""),
        ])
        .unwrap();
        assert_eq!(c.window_max_bytes, 1 << 30);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.auth.iss, None);
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&'static str, &'static str, &str)] = &[
            ("AUTH_MODE", "strict", "not secure or insecure"),
            ("AUTH_JWT_ALG", "ES512", "not supported"),
            ("AUTH_JWT_ALG", "none", "never accepted"),
            ("AUTH_JWT_ALG", "HS1", "not a supported algorithm"),
            ("AUTH_JWT_JWKS_URL", "file:///etc/keys", "http"),
            ("AUTH_JWT_LEEWAY", "5", "no unit"),
            ("AUTH_USERS_TABLE", "a.b.c", "schema.table"),
            ("AUTH_USERS_ID_COLUMN", "id;drop", "not an identifier"),
            ("RULES_FILE", "/nonexistent/rules.json", "does not exist"),
            ("AUTH_TIMEOUT", "0s", "greater than zero"),
            ("AUTH_TIMEOUT", "soon", "not a duration"),
            ("AUTH_REFRESH_GRACE", "-1s", "not a duration"),
            ("LISTEN_ADDR", "5133", "not an address"),
            ("WS_LISTEN_ADDR", "example.com:5134", "not an address"),
            ("HTTP_LISTEN_ADDR", "0.0.0.0:99999", "not an address"),
            ("REPLICATION_SLOT", "Pgsat", "lowercase"),
            ("PUBLICATION", "my-pub", "not an identifier"),
            ("WINDOW_MAX_BYTES", "12XB", "not a size"),
            ("WINDOW_MAX_BYTES", "0", "greater than zero"),
            ("WINDOW_MAX_AGE", "0d", "greater than zero"),
            ("CACHE_MAX_BYTES", "1GB", "decimal"),
            ("CLIENT_MAX_LAG_BYTES", "0MiB", "greater than zero"),
            ("MAX_FRAME_BYTES", "0", "minimum"),
            ("MAX_FRAME_BYTES", "8GiB", "maximum"),
            ("MAX_CONNECTIONS", "0", "at least 1"),
            ("MAX_CONNECTIONS", "-3", "whole number"),
            ("WORKER_THREADS", "0", "from 1 to 1024"),
            ("WORKER_THREADS", "5000", "from 1 to 1024"),
            ("WORKER_THREADS", "two", "whole number"),
            ("LOG_LEVEL", "pgsat=loud", "not a log filter"),
            ("LOG_FORMAT", "xml", "not text or json"),
        ];
        for &(var, value, expected) in cases {
            let e = err(&[(var, value)]);
            assert_eq!(e.var, var, "{var}={value}: {e}");
            let line = e.to_string();
            assert!(line.starts_with(&format!("{var}: ")), "{line}");
            assert!(line.contains(expected), "{var}={value}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = load(&[
            ("DATABASE_URL", "postgres://u:hunter2@db:5432/app"),
            ("AUTH_JWT_ALG", "HS256"),
            ("AUTH_JWT_KEY", "topsecret"),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("topsecret"),
            "{dbg}"
        );
        assert!(
            dbg.contains("u:***@db:5432/app") && dbg.contains("<redacted>"),
            "{dbg}"
        );
        assert_eq!(c.redacted_database_url(), "postgres://u:***@db:5432/app");
    }

    #[test]
    fn a_bad_value_is_named_before_a_missing_one() {
        let e = load(&[("WINDOW_MAX_BYTES", "12XB")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"WINDOW_MAX_BYTES: "12XB" is not a size (use bytes or KiB/MiB/GiB, e.g. 65536, 64MiB, 1GiB)"#
        );
        let e = load(&[("DATABASE_URL", URL), ("LOG_FORMAT", "yaml")]).unwrap_err();
        assert_eq!(e.var, "LOG_FORMAT");
    }

    #[test]
    fn database_url_required_and_checked_without_leaking_password() {
        let e = load(&[("AUTH_MODE", "insecure")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(e.to_string().contains("required"));
        for bad in [
            "http://u:hunter2@h/db",
            "not a url hunter2",
            "postgres://u:hunter2@h:port/db",
        ] {
            let e = load(&[("DATABASE_URL", bad), ("AUTH_MODE", "insecure")]).unwrap_err();
            assert_eq!(e.var, "DATABASE_URL", "{bad}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn secure_mode_needs_a_key_source() {
        let base = [("DATABASE_URL", URL)];
        let e = load(&base).unwrap_err();
        assert_eq!(e.var, "AUTH_JWT_ALG");
        assert!(e.message.contains("AUTH_MODE=secure"), "{e}");

        let e = load(&[base[0], ("AUTH_JWT_ALG", "HS256")]).unwrap_err();
        assert_eq!(e.var, "AUTH_JWT_KEY");

        let e = load(&[base[0], ("AUTH_JWT_KEY", "s")]).unwrap_err();
        assert_eq!(e.var, "AUTH_JWT_ALG");

        let e = load(&[
            base[0],
            ("AUTH_JWT_ALG", "RS256"),
            ("AUTH_JWT_KEY", "topsecret"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "AUTH_JWT_KEY");
        assert!(!e.to_string().contains("topsecret"), "{e}");

        // JWKS alone, or with an algorithm restriction, is enough.
        let c = load(&[base[0], ("AUTH_JWT_JWKS_URL", "https://idp/jwks")]).unwrap();
        assert_eq!(c.auth.alg, None);
        let c = load(&[
            base[0],
            ("AUTH_JWT_JWKS_URL", "https://idp/jwks"),
            ("AUTH_JWT_ALG", "RS256"),
        ])
        .unwrap();
        assert_eq!(c.auth.alg, Some(jsonwebtoken::Algorithm::RS256));
        // …but not with a static key as well (found here, before Postgres).
        let e = load(&[
            base[0],
            ("AUTH_JWT_JWKS_URL", "https://idp/jwks"),
            ("AUTH_JWT_ALG", "HS256"),
            ("AUTH_JWT_KEY", "s"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "AUTH_JWT_JWKS_URL");

        // Insecure mode needs nothing.
        let c = load(&[base[0], ("AUTH_MODE", "insecure")]).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Insecure);
    }

    #[test]
    fn pem_key_with_escaped_newlines_is_unescaped() {
        // A real EC P-256 public key (the pair of the one in cli::token's tests).
        let pem = "-----BEGIN PUBLIC KEY-----\\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE3CKCdl/07HrEtkA53xs1sVMFYhUq\\ncE2LOGiLoZyGtH3z6eAzX5pv53tXSjAGVGKst9O43rYwO7RTPrp/bp3ECg==\\n-----END PUBLIC KEY-----\\n";
        let c = load(&[
            ("DATABASE_URL", URL),
            ("AUTH_JWT_ALG", "ES256"),
            ("AUTH_JWT_KEY", pem),
        ])
        .unwrap();
        let key = c.auth.key.unwrap();
        assert!(key.contains('\n') && !key.contains("\\n"));
    }

    #[test]
    fn known_variables_are_exactly_the_ones_read() {
        let asked = std::cell::RefCell::new(Vec::<String>::new());
        Config::from_lookup(|k| {
            asked.borrow_mut().push(k.to_string());
            match k {
                "DATABASE_URL" => Some(URL.to_string()),
                "AUTH_MODE" => Some("insecure".to_string()),
                _ => None,
            }
        })
        .unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        asked.dedup();
        let mut known: Vec<String> = known_variables().iter().map(|s| s.to_string()).collect();
        known.sort();
        assert_eq!(asked, known);
        assert_eq!(known.len(), 32);
    }
}
