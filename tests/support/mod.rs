//! Test harness: a real, throwaway PostgreSQL server per test.
//!
//! Invariant: every `PgServer` lives in its own fresh temp dir on its own free
//! port, with `wal_level=logical`, and leaves nothing behind — `Drop` stops the
//! server (`-m immediate`) and removes the dir, even when the test panics; a
//! watchdog child does the same if the test process dies without unwinding.
//!
//! Usage from an integration test: `mod support;` then
//! `let pg = support::PgServer::start();`. Binaries are found on `PATH`
//! (following symlinks to the real install dir), else in the highest
//! `/usr/lib/postgresql/*/bin`, or in `$PGSAT_PG_BIN` when set. When the tests
//! run as root, every Postgres program runs as the OS user `postgres` through
//! `runuser`, and the temp dir is created under `/tmp` and owned by it.
//!
//! `execute` is synchronous (it runs `psql` over the server's unix socket as
//! the superuser) so it can be called from sync and async tests alike; it
//! panics with psql's stderr when the SQL fails. `try_execute` returns the error.
#![allow(dead_code)]

pub mod pgsat;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Authentication method written for the `127.0.0.1` host lines of `pg_hba.conf`
/// (both ordinary and replication connections). Unix-socket connections are
/// always `trust`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAuth {
    Trust,
    /// Cleartext password (`password` in pg_hba.conf).
    Password,
    /// `md5`; the superuser's password is stored as an MD5 hash
    /// (`password_encryption = md5`) so the MD5 exchange really happens.
    Md5,
    ScramSha256,
}

impl HostAuth {
    fn hba_name(self) -> &'static str {
        match self {
            HostAuth::Trust => "trust",
            HostAuth::Password => "password",
            HostAuth::Md5 => "md5",
            HostAuth::ScramSha256 => "scram-sha-256",
        }
    }
}

/// `pg_ctl stop -m <mode>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Options for [`PgServer::builder`].
#[derive(Clone, Debug)]
pub struct PgServerBuilder {
    auth: HostAuth,
    extra_conf: Vec<String>,
}

impl PgServerBuilder {
    /// pg_hba method for the 127.0.0.1 host lines (default `scram-sha-256`).
    pub fn auth(mut self, auth: HostAuth) -> Self {
        self.auth = auth;
        self
    }

    /// A `postgresql.conf` line, written after the harness' own lines so it
    /// overrides them (e.g. `"wal_level = replica"`).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }

    /// `initdb` + start. Panics with a clear message on any failure.
    pub fn start(self) -> PgServer {
        PgServer::create(self)
    }
}

/// A running throwaway PostgreSQL server. All methods take `&self`, so it can
/// be shared (e.g. in an `Arc`) between a task driving a stream and the code
/// stopping the server.
pub struct PgServer {
    /// Removed on drop (after the server is stopped).
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin_dir: PathBuf,
    port: Mutex<u16>,
    password: String,
    as_postgres: bool,
    running: AtomicBool,
    /// The watchdog child waits for EOF on this pipe; dropping it (or the test
    /// process dying) makes it stop the server and remove the dir.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl PgServer {
    /// A server with the default options (scram-sha-256 on 127.0.0.1).
    pub fn start() -> PgServer {
        Self::builder().start()
    }

    pub fn builder() -> PgServerBuilder {
        PgServerBuilder {
            auth: HostAuth::ScramSha256,
            extra_conf: Vec::new(),
        }
    }

    fn create(opts: PgServerBuilder) -> PgServer {
        let bin_dir = find_bin_dir();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = if as_postgres {
            tempfile::Builder::new()
                .prefix("pgsat-pg-")
                .tempdir_in("/tmp")
        } else {
            tempfile::Builder::new().prefix("pgsat-pg-").tempdir()
        }
        .unwrap_or_else(|e| panic!("cannot create the Postgres temp dir: {e}"));
        let root = dir.path().to_path_buf();
        let password = random_password();
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).expect("write pwfile");
        if as_postgres {
            let (uid, gid) = postgres_ids();
            chown(&root, uid, gid);
            chown(&pwfile, uid, gid);
        }

        let server = PgServer {
            dir: Some(dir),
            root: root.clone(),
            bin_dir,
            port: Mutex::new(0),
            password,
            as_postgres,
            running: AtomicBool::new(false),
            watchdog: Mutex::new(None),
        };
        server.spawn_watchdog();

        let out = server
            .pg_command("initdb")
            .arg("-D")
            .arg(server.data_dir())
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
            .arg("--auth-local=trust")
            .arg(format!("--auth-host={}", opts.auth.hba_name()))
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Our settings live in an included file so each start attempt can
        // rewrite the port without touching initdb's file.
        append(
            &server.data_dir().join("postgresql.conf"),
            "\ninclude 'pgsat_test.conf'\n",
        );

        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", root.display()),
            "wal_level = logical".into(),
            "max_wal_senders = 32".into(),
            "max_replication_slots = 32".into(),
            "fsync = off".into(),
            "synchronous_commit = on".into(),
            "shared_buffers = 32MB".into(),
            "max_connections = 200".into(),
            "log_min_messages = warning".into(),
        ];
        if opts.auth == HostAuth::Md5 {
            conf.push("password_encryption = md5".into());
        }
        conf.extend(opts.extra_conf.iter().cloned());

        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            *server.port.lock().unwrap() = port;
            let mut text = conf.join("\n");
            text.push_str(&format!("\nport = {port}\n"));
            let conf_path = server.data_dir().join("pgsat_test.conf");
            std::fs::write(&conf_path, text).expect("write pgsat_test.conf");
            if as_postgres {
                let (uid, gid) = postgres_ids();
                chown(&conf_path, uid, gid);
            }
            match server.try_pg_ctl_start() {
                Ok(()) => {
                    server.running.store(true, Ordering::SeqCst);
                    if opts.auth == HostAuth::Md5 {
                        // initdb stored a SCRAM verifier; store an MD5 one.
                        server.execute(&format!(
                            "SET password_encryption = 'md5'; ALTER ROLE postgres PASSWORD {}",
                            quote_literal(&server.password)
                        ));
                    }
                    return server;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("Postgres did not start after 5 attempts (free port taken?): {last_err}");
    }

    /// Where the cluster lives (`<tempdir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The temp dir (also the unix socket directory).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The dir holding `initdb`, `pg_ctl`, `postgres`, `psql`, `pg_recvlogical`…
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn port(&self) -> u16 {
        *self.port.lock().unwrap()
    }

    /// The superuser `postgres`' password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://postgres:<pw>@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        self.url_for_db("postgres")
    }

    /// Same, for another database.
    pub fn url_for_db(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{}",
            self.password,
            self.port(),
            db
        )
    }

    /// The server log (`<tempdir>/server.log`), for diagnosing a failure.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
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
        let out = Command::new(self.bin_dir.join("psql"))
            .current_dir(&self.root)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .arg("-h")
            .arg(&self.root)
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-U", "postgres", "-d", db, "-X", "-q", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `CREATE DATABASE "<name>"`.
    pub fn create_database(&self, name: &str) {
        self.execute(&format!("CREATE DATABASE {}", quote_ident(name)));
    }

    /// `pg_ctl stop -m <mode>` (waits up to 60 s). Panics when it fails.
    pub fn stop(&self, mode: StopMode) {
        let out = self
            .stop_command(mode)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        self.after_stop(out);
    }

    /// Same as [`stop`](Self::stop) without blocking the runtime, so a task
    /// of the same test can keep a replication stream answering meanwhile.
    pub async fn stop_async(&self, mode: StopMode) {
        let out = tokio::process::Command::from(self.stop_command(mode))
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        self.after_stop(out);
    }

    fn stop_command(&self, mode: StopMode) -> Command {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "-m", mode.as_str(), "stop"]);
        cmd
    }

    fn after_stop(&self, out: std::process::Output) {
        if !out.status.success() {
            panic!(
                "pg_ctl stop failed ({}): {}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
        self.running.store(false, Ordering::SeqCst);
    }

    /// Starts the stopped server again, same dir and port. Panics on failure.
    pub fn start_again(&self) {
        self.try_pg_ctl_start()
            .unwrap_or_else(|e| panic!("Postgres restart failed: {e}"));
        self.running.store(true, Ordering::SeqCst);
    }

    /// `stop(Fast)` then `start_again()`.
    pub fn restart(&self) {
        self.stop(StopMode::Fast);
        self.start_again();
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    fn try_pg_ctl_start(&self) -> Result<(), String> {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start ({}): {}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            ))
        }
    }

    /// A command for a Postgres program, run as `postgres` when we are root.
    fn pg_command(&self, prog: &str) -> Command {
        let path = self.bin_dir.join(prog);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    /// A `sh` child that blocks reading our pipe; when the pipe closes (we
    /// dropped it, or this process died, however), it stops the server and
    /// removes the dir. Best effort: a failure to spawn it is ignored.
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- '{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                self.data_dir().display()
            )
        } else {
            format!(
                "'{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                self.data_dir().display()
            )
        };
        let script = format!(
            "cat >/dev/null; if [ -f '{d}/postmaster.pid' ]; then {stop} >/dev/null 2>&1; fi; rm -rf '{r}'",
            d = self.data_dir().display(),
            r = self.root.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = child {
            if let Some(stdin) = child.stdin.take() {
                *self.watchdog.lock().unwrap() = Some((child, stdin));
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.stop_command(StopMode::Immediate).output();
        }
        if let Ok(mut w) = self.watchdog.lock() {
            if let Some((mut child, stdin)) = w.take() {
                drop(stdin);
                let _ = child.wait();
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
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

fn find_bin_dir() -> PathBuf {
    let has_all = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    if let Some(d) = std::env::var_os("PGSAT_PG_BIN") {
        let d = PathBuf::from(d);
        if has_all(&d) {
            return d;
        }
        panic!(
            "PGSAT_PG_BIN={} does not hold initdb, pg_ctl and postgres",
            d.display()
        );
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("pg_ctl");
            if cand.is_file() {
                // /usr/local/bin/pg_ctl may be a symlink into the real install.
                let real = std::fs::canonicalize(&cand).unwrap_or(cand);
                if let Some(parent) = real.parent() {
                    if has_all(parent) {
                        return parent.to_path_buf();
                    }
                }
                if has_all(&dir) {
                    return dir;
                }
            }
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(v) = name.parse::<u32>() else { continue };
            let bin = e.path().join("bin");
            if has_all(&bin) && best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                best = Some((v, bin));
            }
        }
    }
    match best {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in \
             /usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql` \
             (or set PGSAT_PG_BIN to their directory)"
        ),
    }
}

fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").expect("static name");
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy
    // the two ids out at once. Tests calling it concurrently read the same entry.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        panic!(
            "running as root, but there is no OS user `postgres` to run the server as \
             (it comes with `apt-get install -y postgresql`; or run the tests as a non-root user)"
        );
    }
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}
