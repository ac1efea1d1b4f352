//! A throwaway local PostgreSQL cluster, for `pgsat dev` (and usable by the
//! test harness).
//!
//! Invariant: a [`DevPg`] owns a fresh temp dir holding the cluster
//! (`data/`), its unix socket and its log, listens on 127.0.0.1 only, on a
//! free port, with `wal_level=logical`; it never outlives its owner: `Drop`
//! stops the server (`fast`, then `immediate`) and removes the dir, and a
//! watchdog child does the same if this process dies without unwinding
//! (SIGKILL, abort).
//!
//! The binaries (`initdb`, `pg_ctl`, `postgres`) are found in
//! `$PGSAT_PG_BIN`, else on `PATH` (following a symlink to the real install
//! dir), else in the highest `/usr/lib/postgresql/<version>/bin`. Postgres
//! refuses to run as root, so when this process is root every Postgres
//! program runs as the OS user `postgres` through `runuser`, in a temp dir
//! under `/tmp` (traversable by it) that it owns.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::Duration;

/// The three programs a cluster needs.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// How many free ports are tried before giving up on `pg_ctl start`.
const START_ATTEMPTS: usize = 5;

/// What can go wrong creating or running a [`DevPg`].
#[derive(Debug, thiserror::Error)]
pub enum DevPgError {
    /// No usable Postgres installation: the user must install one.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in \
         /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: `apt-get install -y postgresql`, \
         macOS: `brew install postgresql@16`) or set PGSAT_PG_BIN to their directory"
    )]
    NotFound,
    /// `$PGSAT_PG_BIN` is set but lacks a program.
    #[error(
        "PGSAT_PG_BIN={0} does not hold initdb, pg_ctl and postgres (unset it to search PATH \
         and /usr/lib/postgresql/*/bin; Debian/Ubuntu: `apt-get install -y postgresql`)"
    )]
    BadBinDir(PathBuf),
    /// Running as root without a `postgres` OS user to run the server as.
    #[error(
        "running as root, but there is no OS user `postgres` to run PostgreSQL as \
         (Debian/Ubuntu: `apt-get install -y postgresql` creates it; or run as a non-root user)"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A Postgres program ran and failed; `output` is what it printed.
    #[error("{program} failed ({status}): {output}")]
    Program {
        program: &'static str,
        status: String,
        output: String,
    },
}

impl DevPgError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevPgError {
        let what = what.into();
        move |source| DevPgError::Io { what, source }
    }

    /// True when the user has to install something (a usage error, exit 2).
    pub fn is_missing_install(&self) -> bool {
        matches!(
            self,
            DevPgError::NotFound | DevPgError::BadBinDir(_) | DevPgError::NoPostgresUser
        )
    }
}

/// `pg_hba.conf` method for TCP connections from 127.0.0.1 (ordinary and
/// replication). Unix-socket connections are always `trust`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAuth {
    Trust,
    Password,
    Md5,
    ScramSha256,
}

impl HostAuth {
    pub fn hba_name(self) -> &'static str {
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
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres` (see the
/// module doc for the search order).
pub fn find_bin_dir() -> Result<PathBuf, DevPgError> {
    if let Some(d) = std::env::var_os("PGSAT_PG_BIN").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        return if has_all(&d) {
            Ok(d)
        } else {
            Err(DevPgError::BadBinDir(d))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("pg_ctl");
            if !cand.is_file() {
                continue;
            }
            // /usr/local/bin/pg_ctl may be a symlink into the real install.
            if let Ok(real) = std::fs::canonicalize(&cand) {
                if let Some(parent) = real.parent().filter(|p| has_all(p)) {
                    return Ok(parent.to_path_buf());
                }
            }
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    highest_versioned_bin(Path::new("/usr/lib/postgresql")).ok_or(DevPgError::NotFound)
}

/// `<root>/<N>/bin` with the highest numeric `N` that holds all programs.
fn highest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let Ok(version) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let bin = e.path().join("bin");
        if has_all(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

fn has_all(dir: &Path) -> bool {
    REQUIRED.iter().all(|p| dir.join(p).is_file())
}

/// Options for [`DevPg::start`].
#[derive(Clone, Debug)]
pub struct DevPgBuilder {
    host_auth: HostAuth,
    extra_conf: Vec<String>,
    prefix: String,
    watchdog: bool,
    drop_mode: StopMode,
}

impl Default for DevPgBuilder {
    fn default() -> Self {
        DevPgBuilder {
            host_auth: HostAuth::ScramSha256,
            extra_conf: Vec::new(),
            prefix: "pgsat-dev-".to_string(),
            watchdog: true,
            drop_mode: StopMode::Fast,
        }
    }
}

impl DevPgBuilder {
    /// pg_hba method for the 127.0.0.1 host lines (default `scram-sha-256`,
    /// with a random password for the superuser `postgres`).
    pub fn host_auth(mut self, auth: HostAuth) -> Self {
        self.host_auth = auth;
        self
    }

    /// A `postgresql.conf` line written after ours, so it overrides them.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }

    /// Name prefix of the temp dir (default `pgsat-dev-`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether to spawn the watchdog child (default yes).
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// How `Drop` stops the server (default `fast`, falling back to
    /// `immediate`; tests use `immediate`: nothing to keep, no wait for
    /// replication clients).
    pub fn drop_mode(mut self, mode: StopMode) -> Self {
        self.drop_mode = mode;
        self
    }

    /// Finds the binaries, runs `initdb` and starts the server. Blocking
    /// (it runs child processes): call it from `spawn_blocking` in async code.
    pub fn start(self) -> Result<DevPg, DevPgError> {
        DevPg::create(self)
    }
}

/// A running throwaway cluster; see the module doc.
pub struct DevPg {
    /// Removed on drop, after the server is stopped.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    host_auth: HostAuth,
    /// `Some((uid, gid))` of `postgres` when we are root.
    run_as: Option<(u32, u32)>,
    /// The watchdog child waits for EOF on this pipe.
    watchdog: Option<(Child, ChildStdin)>,
    drop_mode: StopMode,
}

impl std::fmt::Debug for DevPg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPg")
            .field("root", &self.root)
            .field("bin_dir", &self.bin_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl DevPg {
    /// A cluster with the default options.
    pub fn start() -> Result<DevPg, DevPgError> {
        DevPgBuilder::default().start()
    }

    pub fn builder() -> DevPgBuilder {
        DevPgBuilder::default()
    }

    fn create(opts: DevPgBuilder) -> Result<DevPg, DevPgError> {
        let bin_dir = find_bin_dir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_ids()?)
        } else {
            None
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(&opts.prefix);
        let dir = if run_as.is_some() {
            // The default temp dir may sit under a home dir `postgres` cannot
            // traverse; /tmp always can be.
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .map_err(DevPgError::io("cannot create a temp dir for Postgres"))?;
        let root = dir.path().to_path_buf();
        let password = random_password()?;

        let mut pg = DevPg {
            dir: Some(dir),
            root,
            bin_dir,
            port: 0,
            password,
            host_auth: opts.host_auth,
            run_as,
            watchdog: None,
            drop_mode: opts.drop_mode,
        };
        pg.chown(&pg.root.clone())?;
        if opts.watchdog {
            pg.spawn_watchdog();
        }
        pg.initdb()?;

        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", pg.root.display()),
            "wal_level = logical".to_string(),
            "max_wal_senders = 20".to_string(),
            "max_replication_slots = 20".to_string(),
            "shared_buffers = 32MB".to_string(),
            "log_min_messages = warning".to_string(),
        ];
        if opts.host_auth == HostAuth::Md5 {
            conf.push("password_encryption = md5".to_string());
        }
        conf.extend(opts.extra_conf.iter().cloned());

        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            pg.port = free_port()?;
            let mut text = conf.join("\n");
            text.push_str(&format!("\nport = {}\n", pg.port));
            let conf_path = pg.data_dir().join("pgsat_dev.conf");
            std::fs::write(&conf_path, text)
                .map_err(DevPgError::io(format!("write {}", conf_path.display())))?;
            pg.chown(&conf_path)?;
            match pg.pg_ctl_start() {
                Ok(()) => {
                    if opts.host_auth == HostAuth::Md5 {
                        // initdb stored a SCRAM verifier; store an MD5 one.
                        pg.psql(&format!(
                            "SET password_encryption = 'md5'; ALTER ROLE postgres PASSWORD '{}'",
                            pg.password
                        ))?;
                    }
                    return Ok(pg);
                }
                // Most likely the free port was taken meanwhile: try another.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(DevPgError::Program {
            program: "pg_ctl",
            status: "not run".to_string(),
            output: String::new(),
        }))
    }

    fn initdb(&self) -> Result<(), DevPgError> {
        let pwfile = self.root.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password))
            .map_err(DevPgError::io(format!("write {}", pwfile.display())))?;
        self.chown(&pwfile)?;
        let out = self
            .pg_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
            .arg("--auth-local=trust")
            .arg(format!("--auth-host={}", self.host_auth.hba_name()))
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(DevPgError::io("cannot run initdb"));
        let _ = std::fs::remove_file(&pwfile);
        check("initdb", out?)?;
        // Our settings live in an included file, rewritten on each start
        // attempt, so initdb's own file is touched once.
        let main_conf = self.data_dir().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&main_conf)
            .map_err(DevPgError::io(format!("open {}", main_conf.display())))?;
        std::io::Write::write_all(&mut f, b"\ninclude 'pgsat_dev.conf'\n")
            .map_err(DevPgError::io(format!("write {}", main_conf.display())))
    }

    fn pg_ctl_start(&self) -> Result<(), DevPgError> {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .output()
            .map_err(DevPgError::io("cannot run pg_ctl"))?;
        check("pg_ctl start", out).map_err(|e| match e {
            DevPgError::Program {
                program,
                status,
                output,
            } => DevPgError::Program {
                program,
                status,
                output: format!("{output}\nserver log:\n{}", self.log_text()),
            },
            other => other,
        })
    }

    /// `pg_ctl stop -m <mode>`, waiting up to `timeout` (whole seconds, at
    /// least 1). Blocking.
    pub fn stop(&self, mode: StopMode, timeout: Duration) -> Result<(), DevPgError> {
        let secs = timeout.as_secs().max(1).to_string();
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", &secs, "-m", mode.as_str(), "stop"])
            .output()
            .map_err(DevPgError::io("cannot run pg_ctl"))?;
        check("pg_ctl stop", out)
    }

    /// Starts the stopped server again (same dir and port). Blocking.
    pub fn start_again(&self) -> Result<(), DevPgError> {
        self.pg_ctl_start()
    }

    /// Whether the postmaster is running (its pid file names a live process).
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(process_alive)
    }

    /// The postmaster's pid, from `data/postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        read_postmaster_pid(&self.data_dir())
    }

    /// The temp dir: also the unix socket dir; holds `data/` and `server.log`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser `postgres`' password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://postgres:<pw>@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        self.url_for_db("postgres")
    }

    pub fn url_for_db(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{}",
            self.password, self.port, db
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The server log, for diagnosing a failure.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs SQL through `psql` over the unix socket (when `psql` sits beside
    /// the server binaries); returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String, DevPgError> {
        self.psql_in("postgres", sql)
    }

    /// Same as [`psql`](Self::psql), in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> Result<String, DevPgError> {
        let out = Command::new(self.bin_dir.join("psql"))
            .current_dir(&self.root)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .arg("-h")
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-X", "-q", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(DevPgError::io("cannot run psql"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        check("psql", out)?;
        Ok(stdout)
    }

    /// A command for a Postgres program, run as `postgres` when we are root.
    pub fn pg_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = if self.run_as.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    fn chown(&self, path: &Path) -> Result<(), DevPgError> {
        match self.run_as {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(DevPgError::io(format!("chown {}", path.display()))),
            None => Ok(()),
        }
    }

    /// A `sh` child blocking on our pipe: when it closes (we dropped it, or
    /// this process died however) it stops the server and removes the dir.
    /// Best effort: a failure to spawn it is ignored.
    fn spawn_watchdog(&mut self) {
        let stop = format!(
            "{runuser}'{pg_ctl}' -D '{data}' -m immediate stop",
            runuser = if self.run_as.is_some() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = self.bin_dir.join("pg_ctl").display(),
            data = self.data_dir().display(),
        );
        let script = format!(
            "cat >/dev/null; if [ -f '{data}/postmaster.pid' ]; then {stop} >/dev/null 2>&1; fi; rm -rf '{root}'",
            data = self.data_dir().display(),
            root = self.root.display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        if let Ok(mut child) = child {
            if let Some(stdin) = child.stdin.take() {
                self.watchdog = Some((child, stdin));
            }
        }
    }
}

impl Drop for DevPg {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists()
            && self.stop(self.drop_mode, Duration::from_secs(10)).is_err()
        {
            let _ = self.stop(StopMode::Immediate, Duration::from_secs(10));
        }
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// The first line of `<data>/postmaster.pid`.
pub fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
}

/// Whether a process with this pid exists and is not a zombie (an exited
/// process its parent has not reaped yet, as a daemonized postmaster is
/// until init reaps it). Uses `/proc` when mounted, else `kill(pid, 0)`
/// (EPERM counts as existing).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if Path::new("/proc/self/stat").exists() {
        return match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // "pid (comm) S ...": the state follows the last ')'.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        };
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn check(program: &'static str, out: Output) -> Result<(), DevPgError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(DevPgError::Program {
            program,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_string(),
        })
    }
}

fn postgres_ids() -> Result<(u32, u32), DevPgError> {
    let name = c"postgres";
    // SAFETY: getpwnam returns null or a pointer to a static entry; the two
    // ids are copied out at once, before any other getpw* call of ours.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(DevPgError::NoPostgresUser);
    }
    // SAFETY: non-null, points to a valid passwd entry (see above).
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> Result<u16, DevPgError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(DevPgError::io(
        "cannot bind 127.0.0.1:0 to find a free port",
    ))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(DevPgError::io("local_addr of a bound socket"))
}

/// 32 hex digits from the OS' random source.
fn random_password() -> Result<String, DevPgError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(DevPgError::io("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_version_wins_and_incomplete_dirs_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let mk = |v: &str, progs: &[&str]| {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for p in progs {
                std::fs::write(bin.join(p), "").unwrap();
            }
        };
        mk("9", &REQUIRED);
        mk("15", &REQUIRED);
        mk("17", &["initdb", "pg_ctl"]); // no postgres: skipped
        mk("notaversion", &REQUIRED);
        assert_eq!(
            highest_versioned_bin(root.path()),
            Some(root.path().join("15").join("bin"))
        );
        assert_eq!(highest_versioned_bin(&root.path().join("missing")), None);
    }

    #[test]
    fn missing_install_errors_name_the_package() {
        let msg = DevPgError::NotFound.to_string();
        assert!(msg.contains("apt-get install -y postgresql"), "{msg}");
        assert!(DevPgError::NotFound.is_missing_install());
        assert!(DevPgError::NoPostgresUser
            .to_string()
            .contains("apt-get install -y postgresql"));
        let other = DevPgError::Program {
            program: "initdb",
            status: "exit status: 1".into(),
            output: String::new(),
        };
        assert!(!other.is_missing_install());
    }

    #[test]
    fn postmaster_pid_parsing() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_postmaster_pid(d.path()), None);
        std::fs::write(d.path().join("postmaster.pid"), "1234\n/data\n").unwrap();
        assert_eq!(read_postmaster_pid(d.path()), Some(1234));
        std::fs::write(d.path().join("postmaster.pid"), "garbage\n").unwrap();
        assert_eq!(read_postmaster_pid(d.path()), None);
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(0));
    }

    #[test]
    fn passwords_are_random_hex() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    /// A real cluster: starts with wal_level=logical on 127.0.0.1, and on
    /// drop leaves no process and no dir.
    #[test]
    fn starts_logical_and_cleans_up_on_drop() {
        let pg = DevPg::start().expect("start a dev cluster");
        assert!(pg.is_running());
        let pid = pg.postmaster_pid().expect("pid");
        assert_eq!(pg.psql("SHOW wal_level").unwrap().trim(), "logical");
        assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_ok());
        let root = pg.root().to_path_buf();
        let port = pg.port();
        drop(pg);
        assert!(!root.exists(), "temp dir {} left behind", root.display());
        // pg_ctl returns once the pid file is gone; the process exits just after.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!process_alive(pid), "postmaster {pid} still runs");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
