//! Test harness: a real, throwaway PostgreSQL server per test.
//!
//! Invariant: every `PgServer` lives in its own fresh temp dir on its own free
//! port, with `wal_level=logical`, and leaves nothing behind — `Drop` stops the
//! server (`-m immediate`) and removes the dir, even when the test panics; a
//! watchdog child does the same if the test process dies without unwinding.
//!
//! Usage from an integration test: `mod support;` then
//! `let pg = support::PgServer::start();`. It is `pgsat::devpg::DevPg` (the
//! cluster `pgsat dev` runs: binaries found on `PATH`, in the highest
//! `/usr/lib/postgresql/*/bin` or in `$PGSAT_PG_BIN`; as root every Postgres
//! program runs as the OS user `postgres` through `runuser`) with the tests'
//! settings, and methods that panic with a clear message instead of
//! returning errors.
//!
//! `execute` is synchronous (it runs `psql` over the server's unix socket as
//! the superuser) so it can be called from sync and async tests alike; it
//! panics with psql's stderr when the SQL fails. `try_execute` returns the error.
#![allow(dead_code)]

pub mod ca;
pub mod jwks;
pub mod pgsat;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::pgsat::devpg::{DevPg, DevPgBuilder};
pub use ::pgsat::devpg::{HostAuth, StopMode};

/// How long `pg_ctl` may take to start or stop the server.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`PgServer::builder`].
#[derive(Clone, Debug)]
pub struct PgServerBuilder {
    inner: DevPgBuilder,
}

impl PgServerBuilder {
    /// pg_hba method for the 127.0.0.1 host lines (default `scram-sha-256`;
    /// with `Md5` the password is stored as an MD5 hash so the MD5 exchange
    /// really happens).
    pub fn auth(mut self, auth: HostAuth) -> Self {
        self.inner = self.inner.host_auth(auth);
        self
    }

    /// A `postgresql.conf` line, written after the harness' own lines so it
    /// overrides them (e.g. `"wal_level = replica"`).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.inner = self.inner.conf(line);
        self
    }

    /// `initdb` + start. Panics with a clear message on any failure.
    pub fn start(self) -> PgServer {
        match self.inner.start() {
            Ok(pg) => PgServer { pg },
            Err(e) => panic!("cannot start the test Postgres: {e}"),
        }
    }
}

/// A running throwaway PostgreSQL server. All methods take `&self`, so it can
/// be shared (e.g. in an `Arc`) between a task driving a stream and the code
/// stopping the server.
pub struct PgServer {
    pg: DevPg,
}

impl PgServer {
    /// A server with the default options (scram-sha-256 on 127.0.0.1).
    pub fn start() -> PgServer {
        Self::builder().start()
    }

    pub fn builder() -> PgServerBuilder {
        let mut inner = DevPg::builder()
            .prefix("pgsat-pg-")
            .drop_mode(StopMode::Immediate);
        // The tests' settings, before any of the builder's own lines.
        for line in [
            "max_wal_senders = 32",
            "max_replication_slots = 32",
            "fsync = off",
            "synchronous_commit = on",
            "max_connections = 200",
        ] {
            inner = inner.conf(line);
        }
        PgServerBuilder { inner }
    }

    /// Where the cluster lives (`<tempdir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.pg.data_dir()
    }

    /// The temp dir (also the unix socket directory).
    pub fn socket_dir(&self) -> &Path {
        self.pg.socket_dir()
    }

    /// The dir holding `initdb`, `pg_ctl`, `postgres`, `psql`, `pg_recvlogical`…
    pub fn bin_dir(&self) -> &Path {
        self.pg.bin_dir()
    }

    pub fn port(&self) -> u16 {
        self.pg.port()
    }

    /// The superuser `postgres`' password.
    pub fn password(&self) -> &str {
        self.pg.password()
    }

    /// `postgres://postgres:<pw>@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        self.pg.url()
    }

    /// Same, for another database.
    pub fn url_for_db(&self, db: &str) -> String {
        self.pg.url_for_db(db)
    }

    /// The server log (`<tempdir>/server.log`), for diagnosing a failure.
    pub fn log_text(&self) -> String {
        self.pg.log_text()
    }

    /// A connected `tokio_postgres::Client` (over TCP, with the password);
    /// the connection task is spawned on the current runtime.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.client_for_db("postgres").await
    }

    pub async fn client_for_db(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url_for_db(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to test Postgres on port {}: {e}", self.port()));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs SQL (one or more statements) as the superuser in database
    /// `postgres` through psql; returns psql's unaligned, tuples-only output
    /// (`|`-separated columns, one row per line). Panics when it fails.
    pub fn execute(&self, sql: &str) -> String {
        self.execute_in("postgres", sql)
    }

    pub fn execute_in(&self, db: &str, sql: &str) -> String {
        self.try_execute_in(db, sql)
            .unwrap_or_else(|e| panic!("SQL failed: {sql}\n{e}"))
    }

    pub fn try_execute(&self, sql: &str) -> Result<String, String> {
        self.try_execute_in("postgres", sql)
    }

    pub fn try_execute_in(&self, db: &str, sql: &str) -> Result<String, String> {
        self.pg.psql_in(db, sql).map_err(|e| e.to_string())
    }

    /// `CREATE DATABASE "<name>"`.
    pub fn create_database(&self, name: &str) {
        self.execute(&format!("CREATE DATABASE {}", quote_ident(name)));
    }

    /// `pg_ctl stop -m <mode>` (waits up to 60 s). Panics when it fails.
    pub fn stop(&self, mode: StopMode) {
        if let Err(e) = self.pg.stop(mode, PG_CTL_TIMEOUT) {
            panic!("{e}\nserver log:\n{}", self.log_text());
        }
    }

    /// Same as [`stop`](Self::stop) without blocking the runtime, so a task
    /// of the same test can keep a replication stream answering meanwhile.
    pub async fn stop_async(&self, mode: StopMode) {
        let mut cmd = self.pg.pg_command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-w",
            "-t",
            &PG_CTL_TIMEOUT.as_secs().to_string(),
            "-m",
            mode.as_str(),
            "stop",
        ]);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        if !out.status.success() {
            panic!(
                "pg_ctl stop failed ({}): {}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
    }

    /// Starts the stopped server again, same dir and port. Panics on failure.
    pub fn start_again(&self) {
        if let Err(e) = self.pg.start_again() {
            panic!("Postgres restart failed: {e}");
        }
    }

    /// `stop(Fast)` then `start_again()`.
    pub fn restart(&self) {
        self.stop(StopMode::Fast);
        self.start_again();
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.pg.is_running()
    }
}

/// A fresh server (started off the async worker) with `sql` executed.
pub async fn pg_with_schema(sql: &str) -> PgServer {
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start Postgres");
    pg.client()
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("schema: {e}"));
    pg
}

/// Polls `cond` every 20 ms until it returns true or `timeout` passes;
/// returns whether it became true. Use as `assert!(wait_until(..).await, "what")`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
