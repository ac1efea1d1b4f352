//! Prometheus metrics: one `Metrics` value (created once, shared via `Arc`)
//! holding typed handles in its own `Registry`; every name starts `pgsat_`.
//! Invariant: every labelled series is resolved when `Metrics` is built, so
//! updating a metric on the hot path is an atomic operation on a handle —
//! no lock, no hashing of label values, no allocation.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `pgsat_build_info{version}` | gauge | always 1; the running version |
//! | `pgsat_replication_connected` | gauge | 1 while the replication stream from Postgres is up |
//! | `pgsat_replication_received_lsn` | gauge | end LSN of the last WAL data received (as a number) |
//! | `pgsat_replication_confirmed_lsn` | gauge | LSN confirmed (flushed) to the slot |
//! | `pgsat_replication_lag_bytes` | gauge | bytes between the server's current WAL position and the LSN durably written to the log |
//! | `pgsat_replication_slot_retained_wal_bytes` | gauge | WAL the slot holds back on the server (current WAL − slot restart_lsn) |
//! | `pgsat_replication_transactions_total` | counter | committed transactions received |
//! | `pgsat_replication_commit_lag_seconds` | histogram | from a transaction's commit in Postgres (its commit timestamp) to its append to pgsat's log, where sessions can read it; assumes the two machines' clocks agree |
//! | `pgsat_replication_changes_total{op}` | counter | row changes received, `op` = insert/update/delete/truncate |
//! | `pgsat_replication_decode_errors_total` | counter | pgoutput messages that could not be decoded |
//! | `pgsat_replication_reconnects_total` | counter | replication connections re-established after a loss |
//! | `pgsat_window_bytes` | gauge | bytes of transactions retained for resuming clients |
//! | `pgsat_window_transactions` | gauge | transactions retained in the window |
//! | `pgsat_window_oldest_lsn` | gauge | commit LSN of the oldest retained transaction (0 when empty) |
//! | `pgsat_cache_bytes` | gauge | bytes of the newest transactions held in memory |
//! | `pgsat_log_disk_bytes` | gauge | bytes of the log's segment files on disk |
//! | `pgsat_log_durable_lsn` | gauge | highest commit LSN durably written (fsynced) to the log |
//! | `pgsat_log_write_errors_total` | counter | failed writes/fsyncs of the log |
//! | `pgsat_sessions{state}` | gauge | open sessions, `state` = authenticating/streaming/paused |
//! | `pgsat_sessions_opened_total` | counter | client connections accepted |
//! | `pgsat_sessions_closed_total{reason}` | counter | sessions closed, `reason` = `client_closed` or the error code sent, lowercase (`slow_consumer`, `auth_failed`, `shutting_down`, …) |
//! | `pgsat_auth_attempts_total{result,reason}` | counter | AuthReq outcomes (first and refresh): `result` = `ok`, `auth_failed`, `token_expired`, `user_not_found`, `principal_changed`, `internal`; `reason` = the failed check for `auth_failed` (`malformed`, `too_large`, `alg`, `header`, `kid`, `signature`, `exp`, `nbf`, `iat`, `iss`, `aud`, `user_id`), else the same as `result` |
//! | `pgsat_sent_bytes_total` | counter | bytes written to client sockets |
//! | `pgsat_sent_frames_total` | counter | frames written to client sockets |
//! | `pgsat_direct_transactions_total` | counter | transactions the replication task wrote straight to the socket of a session waiting at the log's end (the direct lane, see server/direct.rs) |
//! | `pgsat_session_lag_bytes` | histogram | per-session distance (bytes of WAL) between the newest transaction and what the session was sent, observed as it streams |
//! | `pgsat_client_ack_lag_bytes` | histogram | at each AckReq, the distance (bytes of WAL) between the newest transaction and what the client says it durably applied |
//! | `pgsat_slow_consumer_disconnects_total` | counter | sessions closed with SLOW_CONSUMER |
//! | `pgsat_auth_insecure_mode` | gauge | 1 when AUTH_MODE=insecure (tokens not verified) |
//! | `pgsat_read_rules_enabled` | gauge | 1 when RULES_FILE is loaded |
//! | `pgsat_runtime_worker_threads` | gauge | threads of the async runtime serving sessions and the stream (`WORKER_THREADS`) |
//! | `pgsat_routed_sessions` | gauge | filtered sessions at the live end, woken only for transactions they may read |
//! | `pgsat_router_evictions_total` | counter | routed sessions sent back to reading the log themselves because they fell behind |
//! | `pgsat_tls_handshake_failures_total` | counter | client connections dropped because their TLS handshake failed or took longer than AUTH_TIMEOUT (TLS_CERT_FILE set) |

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::auth::error::{AuthError, FAILED_CHECKS};
use crate::protocol::pb::ErrorCode;

pub mod exposition;

/// Kind of row change, for `pgsat_replication_changes_total{op}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl ChangeOp {
    pub const ALL: [ChangeOp; 4] = [
        ChangeOp::Insert,
        ChangeOp::Update,
        ChangeOp::Delete,
        ChangeOp::Truncate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
            ChangeOp::Truncate => "truncate",
        }
    }
}

/// Session state, for `pgsat_sessions{state}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Authenticating,
    Streaming,
    Paused,
}

impl SessionState {
    pub const ALL: [SessionState; 3] = [
        SessionState::Authenticating,
        SessionState::Streaming,
        SessionState::Paused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SessionState::Authenticating => "authenticating",
            SessionState::Streaming => "streaming",
            SessionState::Paused => "paused",
        }
    }
}

/// Outcome of one `AuthReq`, for `pgsat_auth_attempts_total{result,reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    Ok,
    /// AUTH_FAILED, with the check that failed (one of
    /// [`crate::auth::error::FAILED_CHECKS`]: malformed, signature, alg, …).
    Failed(&'static str),
    TokenExpired,
    UserNotFound,
    PrincipalChanged,
    /// The check could not be made (e.g. the users-table query failed).
    Internal,
}

impl AuthResult {
    /// Every `(result, reason)` series, in a fixed order.
    pub fn all() -> Vec<AuthResult> {
        let mut v = vec![AuthResult::Ok];
        v.extend(FAILED_CHECKS.iter().map(|c| AuthResult::Failed(c)));
        v.extend([
            AuthResult::TokenExpired,
            AuthResult::UserNotFound,
            AuthResult::PrincipalChanged,
            AuthResult::Internal,
        ]);
        v
    }

    /// The `result` label: `ok` or the error code sent, lowercase.
    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Failed(_) => "auth_failed",
            AuthResult::TokenExpired => "token_expired",
            AuthResult::UserNotFound => "user_not_found",
            AuthResult::PrincipalChanged => "principal_changed",
            AuthResult::Internal => "internal",
        }
    }

    /// The `reason` label: the failed check for `auth_failed`, else the
    /// same as `result`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthResult::Failed(check) => check,
            other => other.label(),
        }
    }

    /// The outcome an authentication error is counted as.
    pub fn of_error(e: &AuthError) -> AuthResult {
        match e {
            AuthError::Failed { check, .. } => AuthResult::Failed(check),
            AuthError::Expired => AuthResult::TokenExpired,
            AuthError::UserNotFound => AuthResult::UserNotFound,
            AuthError::Internal(_) => AuthResult::Internal,
        }
    }

    /// Position in [`AuthResult::all`]; a check name outside
    /// `FAILED_CHECKS` (a programming error) counts as `malformed`.
    fn index(self) -> usize {
        let n = FAILED_CHECKS.len();
        match self {
            AuthResult::Ok => 0,
            AuthResult::Failed(check) => {
                1 + FAILED_CHECKS.iter().position(|c| *c == check).unwrap_or(0)
            }
            AuthResult::TokenExpired => 1 + n,
            AuthResult::UserNotFound => 2 + n,
            AuthResult::PrincipalChanged => 3 + n,
            AuthResult::Internal => 4 + n,
        }
    }
}

/// Why a session ended, for `pgsat_sessions_closed_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection (or it was lost) without an error from us.
    ClientClosed,
    /// We sent this `ErrorResp` code and closed.
    Error(ErrorCode),
}

/// One counter per `ChangeOp`.
#[derive(Clone, Debug)]
pub struct ChangeCounters {
    pub insert: IntCounter,
    pub update: IntCounter,
    pub delete: IntCounter,
    pub truncate: IntCounter,
}

impl ChangeCounters {
    pub fn get(&self, op: ChangeOp) -> &IntCounter {
        match op {
            ChangeOp::Insert => &self.insert,
            ChangeOp::Update => &self.update,
            ChangeOp::Delete => &self.delete,
            ChangeOp::Truncate => &self.truncate,
        }
    }
}

/// One gauge per `SessionState`.
#[derive(Clone, Debug)]
pub struct SessionGauges {
    pub authenticating: IntGauge,
    pub streaming: IntGauge,
    pub paused: IntGauge,
}

impl SessionGauges {
    pub fn get(&self, state: SessionState) -> &IntGauge {
        match state {
            SessionState::Authenticating => &self.authenticating,
            SessionState::Streaming => &self.streaming,
            SessionState::Paused => &self.paused,
        }
    }
}

/// Every pgsat metric. Fields are the handles themselves: `inc()`, `set()`,
/// `observe()` on them are lock-free.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,

    pub build_info: IntGauge,

    pub replication_connected: IntGauge,
    pub replication_received_lsn: IntGauge,
    pub replication_confirmed_lsn: IntGauge,
    pub replication_lag_bytes: IntGauge,
    pub replication_slot_retained_wal_bytes: IntGauge,
    pub replication_transactions: IntCounter,
    pub replication_commit_lag_seconds: Histogram,
    pub replication_changes: ChangeCounters,
    pub replication_decode_errors: IntCounter,
    pub replication_reconnects: IntCounter,

    pub window_bytes: IntGauge,
    pub window_transactions: IntGauge,
    pub window_oldest_lsn: IntGauge,
    pub cache_bytes: IntGauge,
    pub log_disk_bytes: IntGauge,
    pub log_durable_lsn: IntGauge,
    pub log_write_errors: IntCounter,

    pub sessions: SessionGauges,
    pub sessions_opened: IntCounter,
    /// Indexed by `ErrorCode as usize`; see [`Metrics::session_closed`].
    sessions_closed_by_code: Vec<Option<IntCounter>>,
    sessions_closed_client: IntCounter,
    /// Indexed by `AuthResult::index`; see [`Metrics::auth_attempt`].
    auth_attempts: Vec<IntCounter>,
    pub sent_bytes: IntCounter,
    pub sent_frames: IntCounter,
    pub direct_transactions: IntCounter,
    pub session_lag_bytes: Histogram,
    pub client_ack_lag_bytes: Histogram,
    pub slow_consumer_disconnects: IntCounter,

    pub auth_insecure_mode: IntGauge,
    pub read_rules_enabled: IntGauge,
    pub runtime_worker_threads: IntGauge,
    pub routed_sessions: IntGauge,
    pub router_evictions: IntCounter,
    pub tls_handshake_failures: IntCounter,
}

/// Every `ErrorCode` value, in number order.
fn all_error_codes() -> Vec<ErrorCode> {
    (0..=255)
        .filter_map(|n: i32| ErrorCode::try_from(n).ok())
        .collect()
}

/// An LSN (or any u64 position) as a gauge value; positions beyond `i64::MAX`
/// (never seen in practice) saturate.
pub fn u64_gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Lowercase label value of an error code (`SLOW_CONSUMER` → `slow_consumer`).
pub fn error_code_label(code: ErrorCode) -> String {
    code.as_str_name().to_ascii_lowercase()
}

impl Metrics {
    /// Builds and registers every metric. Fails only on a programming error
    /// (duplicate or invalid metric names), which the tests exercise.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(v.clone()))?;
                Ok(v)
            };

        let build = IntGaugeVec::new(
            Opts::new(
                "pgsat_build_info",
                "Always 1; labelled with the running version.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build.clone()))?;
        let build_info = build.get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?;
        build_info.set(1);

        let changes = counter_vec(
            "pgsat_replication_changes_total",
            "Row changes received from Postgres, by operation.",
            "op",
        )?;
        let replication_changes = ChangeCounters {
            insert: changes.get_metric_with_label_values(&[ChangeOp::Insert.label()])?,
            update: changes.get_metric_with_label_values(&[ChangeOp::Update.label()])?,
            delete: changes.get_metric_with_label_values(&[ChangeOp::Delete.label()])?,
            truncate: changes.get_metric_with_label_values(&[ChangeOp::Truncate.label()])?,
        };

        let states = IntGaugeVec::new(
            Opts::new("pgsat_sessions", "Open client sessions, by state."),
            &["state"],
        )?;
        registry.register(Box::new(states.clone()))?;
        let sessions = SessionGauges {
            authenticating: states
                .get_metric_with_label_values(&[SessionState::Authenticating.label()])?,
            streaming: states.get_metric_with_label_values(&[SessionState::Streaming.label()])?,
            paused: states.get_metric_with_label_values(&[SessionState::Paused.label()])?,
        };

        let closed = counter_vec(
            "pgsat_sessions_closed_total",
            "Sessions closed, by reason: client_closed or the error code sent (lowercase).",
            "reason",
        )?;
        let mut sessions_closed_by_code = Vec::new();
        for code in all_error_codes() {
            let i = code as usize;
            if sessions_closed_by_code.len() <= i {
                sessions_closed_by_code.resize(i + 1, None);
            }
            sessions_closed_by_code[i] =
                Some(closed.get_metric_with_label_values(&[&error_code_label(code)])?);
        }
        let sessions_closed_client = closed.get_metric_with_label_values(&["client_closed"])?;

        let auth = IntCounterVec::new(
            Opts::new(
                "pgsat_auth_attempts_total",
                "AuthReq outcomes, by result (ok or the error code) and reason (the failed check).",
            ),
            &["result", "reason"],
        )?;
        registry.register(Box::new(auth.clone()))?;
        let auth_attempts = AuthResult::all()
            .iter()
            .map(|r| auth.get_metric_with_label_values(&[r.label(), r.reason()]))
            .collect::<Result<Vec<_>, _>>()?;

        // Distances in WAL bytes: 1 KiB, 4 KiB, … 1 GiB.
        let lag_histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(prometheus::exponential_buckets(1024.0, 4.0, 11)?),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let session_lag_bytes = lag_histogram(
            "pgsat_session_lag_bytes",
            "Per-session distance in WAL bytes between the newest transaction and what the session was sent.",
        )?;
        let client_ack_lag_bytes = lag_histogram(
            "pgsat_client_ack_lag_bytes",
            "At each AckReq, the distance in WAL bytes between the newest transaction and what the client durably applied.",
        )?;

        // 0.5 ms … 1 h: live streaming is sub-millisecond to milliseconds;
        // catching up after an outage, minutes.
        let replication_commit_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pgsat_replication_commit_lag_seconds",
                "Time from a transaction's commit in Postgres to its append to pgsat's log (clocks assumed in sync).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
        )?;
        registry.register(Box::new(replication_commit_lag_seconds.clone()))?;

        Ok(Metrics {
            build_info,
            replication_commit_lag_seconds,
            replication_connected: gauge(
                "pgsat_replication_connected",
                "1 while the replication stream from Postgres is up.",
            )?,
            replication_received_lsn: gauge(
                "pgsat_replication_received_lsn",
                "End LSN of the last WAL data received.",
            )?,
            replication_confirmed_lsn: gauge(
                "pgsat_replication_confirmed_lsn",
                "LSN confirmed (flushed) to the replication slot.",
            )?,
            replication_lag_bytes: gauge(
                "pgsat_replication_lag_bytes",
                "Bytes between the server's current WAL position and the LSN durably written to the log.",
            )?,
            replication_slot_retained_wal_bytes: gauge(
                "pgsat_replication_slot_retained_wal_bytes",
                "WAL bytes the slot holds back on the server.",
            )?,
            replication_transactions: counter(
                "pgsat_replication_transactions_total",
                "Committed transactions received from Postgres.",
            )?,
            replication_changes,
            replication_decode_errors: counter(
                "pgsat_replication_decode_errors_total",
                "pgoutput messages that could not be decoded.",
            )?,
            replication_reconnects: counter(
                "pgsat_replication_reconnects_total",
                "Replication connections re-established after a loss.",
            )?,
            window_bytes: gauge(
                "pgsat_window_bytes",
                "Bytes of transactions retained for resuming clients.",
            )?,
            window_transactions: gauge(
                "pgsat_window_transactions",
                "Transactions retained in the window.",
            )?,
            window_oldest_lsn: gauge(
                "pgsat_window_oldest_lsn",
                "Commit LSN of the oldest retained transaction (0 when empty).",
            )?,
            cache_bytes: gauge(
                "pgsat_cache_bytes",
                "Bytes of the newest transactions held in memory.",
            )?,
            log_disk_bytes: gauge(
                "pgsat_log_disk_bytes",
                "Bytes of the log's segment files on disk.",
            )?,
            log_durable_lsn: gauge(
                "pgsat_log_durable_lsn",
                "Highest commit LSN durably written to the log.",
            )?,
            log_write_errors: counter(
                "pgsat_log_write_errors_total",
                "Failed writes or fsyncs of the log.",
            )?,
            sessions,
            sessions_opened: counter(
                "pgsat_sessions_opened_total",
                "Client connections accepted.",
            )?,
            sessions_closed_by_code,
            sessions_closed_client,
            auth_attempts,
            sent_bytes: counter("pgsat_sent_bytes_total", "Bytes written to client sockets.")?,
            sent_frames: counter(
                "pgsat_sent_frames_total",
                "Frames written to client sockets.",
            )?,
            direct_transactions: counter(
                "pgsat_direct_transactions_total",
                "Transactions the replication task wrote straight to the socket of a session waiting at the log's end.",
            )?,
            session_lag_bytes,
            client_ack_lag_bytes,
            slow_consumer_disconnects: counter(
                "pgsat_slow_consumer_disconnects_total",
                "Sessions closed with SLOW_CONSUMER.",
            )?,
            auth_insecure_mode: gauge(
                "pgsat_auth_insecure_mode",
                "1 when AUTH_MODE=insecure (tokens are not verified).",
            )?,
            runtime_worker_threads: gauge(
                "pgsat_runtime_worker_threads",
                "Threads of the async runtime serving sessions and the stream (WORKER_THREADS).",
            )?,
            read_rules_enabled: gauge(
                "pgsat_read_rules_enabled",
                "1 when read rules (RULES_FILE) are loaded.",
            )?,
            routed_sessions: gauge(
                "pgsat_routed_sessions",
                "Filtered sessions at the live end, woken only for transactions they may read.",
            )?,
            router_evictions: counter(
                "pgsat_router_evictions_total",
                "Routed sessions sent back to reading the log themselves because they fell behind.",
            )?,
            tls_handshake_failures: counter(
                "pgsat_tls_handshake_failures_total",
                "Client connections dropped because their TLS handshake failed or timed out.",
            )?,
            registry,
        })
    }

    /// Counts a closed session. `Error(SLOW_CONSUMER)` also counts in
    /// `pgsat_slow_consumer_disconnects_total`.
    /// Frames for a client, counted when handed to its socket or queued
    /// for it (`pgsat_sent_frames_total`, `pgsat_sent_bytes_total`).
    pub fn count_sent(&self, frames: u64, bytes: usize) {
        self.sent_frames.inc_by(frames);
        self.sent_bytes.inc_by(bytes as u64);
    }

    pub fn session_closed(&self, reason: CloseReason) {
        match reason {
            CloseReason::ClientClosed => self.sessions_closed_client.inc(),
            CloseReason::Error(code) => {
                if code == ErrorCode::SlowConsumer {
                    self.slow_consumer_disconnects.inc();
                }
                // Every ErrorCode has a counter (built from the same enum);
                // a code missing from it would only go uncounted.
                if let Some(Some(c)) = self.sessions_closed_by_code.get(code as usize) {
                    c.inc();
                }
            }
        }
    }

    /// Counts one `AuthReq` outcome.
    pub fn auth_attempt(&self, result: AuthResult) {
        if let Some(c) = self.auth_attempts.get(result.index()) {
            c.inc();
        }
    }

    /// Moves one session between states in `pgsat_sessions{state}`: `None`
    /// as `from` for a new session, `None` as `to` for a closed one.
    pub fn session_state(&self, from: Option<SessionState>, to: Option<SessionState>) {
        if let Some(s) = from {
            self.sessions.get(s).dec();
        }
        if let Some(s) = to {
            self.sessions.get(s).inc();
        }
    }

    /// Sets an LSN/position gauge from a `u64`.
    pub fn set_u64(gauge: &IntGauge, v: u64) {
        gauge.set(u64_gauge(v));
    }

    /// The registry, for tests or for registering extra collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The `Content-Type` of [`Metrics::encode`]'s output.
    pub fn content_type(&self) -> String {
        TextEncoder::new().format_type().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Value of the sample line `series` (exact name+labels) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
    }

    #[test]
    fn every_metric_is_exposed_and_prefixed() {
        let m = Metrics::new().unwrap();
        let text = m.encode();
        let samples = exposition::parse(&text).unwrap();
        assert!(samples.iter().all(|s| s.name.starts_with("pgsat_")));
        for line in text.lines() {
            let name = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            assert!(name.starts_with("pgsat_"), "{line}");
        }
        // The documented table at the top of this file lists exactly the
        // exposed families.
        let documented: Vec<&str> = include_str!("metrics.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `pgsat_"))
            .filter_map(|l| l.split(['`', '{']).next())
            .collect();
        let exposed: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE pgsat_"))
            .filter_map(|l| l.split(' ').next())
            .map(|s| s.to_string())
            .collect();
        let mut documented: Vec<String> = documented.iter().map(|s| s.to_string()).collect();
        documented.sort();
        let mut exposed_sorted = exposed.clone();
        exposed_sorted.sort();
        assert_eq!(documented, exposed_sorted);
        assert_eq!(
            sample(
                &text,
                &format!(
                    "pgsat_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
    }

    #[test]
    fn handles_move_their_series() {
        let m = Metrics::new().unwrap();
        m.replication_changes.get(ChangeOp::Update).inc_by(3);
        m.session_closed(CloseReason::Error(ErrorCode::SlowConsumer));
        m.session_closed(CloseReason::Error(ErrorCode::TableNotReadable));
        m.session_closed(CloseReason::ClientClosed);
        m.auth_attempt(AuthResult::UserNotFound);
        m.auth_attempt(AuthResult::Failed("signature"));
        m.auth_attempt(AuthResult::of_error(&AuthError::Failed {
            check: "signature",
            detail: String::new(),
        }));
        m.session_state(None, Some(SessionState::Authenticating));
        m.session_state(
            Some(SessionState::Authenticating),
            Some(SessionState::Streaming),
        );
        Metrics::set_u64(&m.replication_received_lsn, 0x1_0000_0010);
        Metrics::set_u64(&m.log_durable_lsn, u64::MAX);
        m.session_lag_bytes.observe(5000.0);
        let t = m.encode();
        assert_eq!(
            sample(&t, r#"pgsat_replication_changes_total{op="update"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_replication_changes_total{op="insert"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_sessions_closed_total{reason="slow_consumer"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"pgsat_sessions_closed_total{reason="table_not_readable"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_sessions_closed_total{reason="client_closed"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_sessions_closed_total{reason="auth_failed"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, "pgsat_slow_consumer_disconnects_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"pgsat_auth_attempts_total{reason="user_not_found",result="user_not_found"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_auth_attempts_total{reason="ok",result="ok"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"pgsat_auth_attempts_total{reason="signature",result="auth_failed"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"pgsat_auth_attempts_total{reason="malformed",result="auth_failed"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_sessions{state="authenticating"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_sessions{state="streaming"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, "pgsat_replication_received_lsn"),
            Some(4294967312.0)
        );
        assert_eq!(sample(&t, "pgsat_log_durable_lsn"), Some(i64::MAX as f64));
        assert_eq!(
            sample(&t, r#"pgsat_session_lag_bytes_bucket{le="4096"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, r#"pgsat_session_lag_bytes_bucket{le="16384"}"#),
            Some(1.0)
        );
        assert_eq!(sample(&t, "pgsat_session_lag_bytes_count"), Some(1.0));
    }

    #[test]
    fn every_error_code_has_a_close_counter() {
        let m = Metrics::new().unwrap();
        let codes = all_error_codes();
        assert!(codes.len() >= 17, "{codes:?}");
        for code in codes {
            m.session_closed(CloseReason::Error(code));
            let series = format!(
                "pgsat_sessions_closed_total{{reason=\"{}\"}}",
                error_code_label(code)
            );
            assert_eq!(sample(&m.encode(), &series), Some(1.0), "{series}");
        }
    }
}
