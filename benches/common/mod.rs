//! Helpers shared by the benches (not a bench target itself: cargo only
//! auto-discovers `benches/*.rs` and `benches/*/main.rs`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Now, µs since the Unix epoch (the protocol's timestamp unit).
pub use pgsat::clock::unix_micros;

/// The `p` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`…); 0 when unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Environment variable that turns a bench binary into its own client
/// process (so the proxy and its clients each get their own fd limit).
pub const CHILD_ENV: &str = "PGSAT_BENCH_CHILD";

/// This bench binary re-executed as a client process, driven by lines on
/// stdin and answering with lines on stdout.
pub struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ChildProc {
    pub fn spawn(role: &str, args: &[String]) -> ChildProc {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .env(CHILD_ENV, role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client process");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        ChildProc {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to client process");
        self.stdin.flush().expect("flush");
    }

    /// The next line the child prints (panics when it exited).
    pub fn recv(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read client process");
        assert!(n > 0, "client process exited: {:?}", self.child.try_wait());
        line.trim_end().to_string()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Schema every bench shares: a users table with one user (the proxy's auth
/// check), and a publication for `tables`.
pub fn bench_schema(pg: &crate::support::PgServer, table_ddl: &str, tables: &str) {
    pg.execute(&format!(
        "CREATE TABLE users (id text PRIMARY KEY);
         INSERT INTO users VALUES ('bench');
         {table_ddl};
         CREATE PUBLICATION pgsat_bench FOR TABLE {tables};"
    ));
}

/// The release pgsat on [`bench_schema`]'s publication, logging warnings
/// only. `clients`: the bench's connection count; MAX_CONNECTIONS (default
/// 10,000) is set above it so the bench does not depend on the default.
pub fn start_pgsat(
    pg: &crate::support::PgServer,
    data_dir: &Path,
    clients: Option<u64>,
    extra: &[(&str, &str)],
) -> crate::support::pgsat::Pgsat {
    let max_conn = clients.map(|n| (n + 100).to_string());
    let mut env = vec![
        ("PUBLICATION", "pgsat_bench"),
        ("REPLICATION_SLOT", "pgsat"),
        ("LOG_LEVEL", "warn"),
    ];
    if let Some(m) = &max_conn {
        env.push(("MAX_CONNECTIONS", m.as_str()));
    }
    env.extend_from_slice(extra);
    crate::support::pgsat::Pgsat::start(pg, data_dir, &env)
}

pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of the processes, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// The postmaster and its children (backends, walsenders).
pub fn postgres_pids(pg: &crate::support::PgServer) -> Vec<u32> {
    let pidfile = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap_or_default();
    let Some(master) = pidfile
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let mut pids = vec![master];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
    }
    pids
}

pub mod fan;

/// Light protocol client pieces: just enough of protocol.md to authenticate,
/// start and count rows, without decoding rows.
pub mod light {
    use bytes::{BufMut, BytesMut};

    pub const AUTH_REQ: u8 = 1;
    pub const AUTH_RESP: u8 = 2;
    pub const START_REQ: u8 = 3;
    pub const START_RESP: u8 = 4;
    pub const OPLOG: u8 = 10;

    /// One frame: `u32` length (type + body) + type + body.
    pub fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(5 + body.len());
        out.put_u32(1 + body.len() as u32);
        out.put_u8(ty);
        out.put_slice(body);
        out.to_vec()
    }

    /// AuthReq{id="a", token} then StartReplicationReq{lsn=0}, as bytes.
    pub fn auth_frame(token: &str) -> Vec<u8> {
        let mut body = Vec::with_capacity(token.len() + 8);
        // field 1 (id), "a"
        body.extend_from_slice(&[0x0a, 0x01, b'a']);
        // field 2 (token)
        body.push(0x12);
        put_varint(&mut body, token.len() as u64);
        body.extend_from_slice(token.as_bytes());
        frame(AUTH_REQ, &body)
    }

    pub fn start_frame() -> Vec<u8> {
        frame(START_REQ, &[])
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*pos)?;
            *pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// What an OpLog body holds, counted without decoding rows.
    #[derive(Default, Debug)]
    pub struct OpCounts {
        pub rows: u64,
        /// `Commit.commit_time` of each Commit in the body (µs, Unix epoch).
        pub commits: Vec<i64>,
        /// Rows whose owner (first column of an Insert) was not the one
        /// expected, and updates/deletes when an owner is expected.
        pub foreign: u64,
    }

    /// Walks `OpLog{repeated TransOp ops = 1}`: TransOp field 3/4/5 (insert,
    /// update, delete) counts a row; field 2 is a Commit whose field 2 is the
    /// commit time. With `owner`, an Insert's row (TransOp 3 → Insert.row 2
    /// → Row.values 2) whose first value differs counts in `foreign`.
    pub fn count_oplog(body: &[u8], owner: Option<&[u8]>, out: &mut OpCounts) -> Option<()> {
        let mut pos = 0;
        while pos < body.len() {
            let key = varint(body, &mut pos)?;
            let len = varint(body, &mut pos)? as usize;
            let end = pos.checked_add(len)?;
            if key != (1 << 3 | 2) || end > body.len() {
                return None;
            }
            let op = &body[pos..end];
            pos = end;
            let mut p = 0;
            let op_key = varint(op, &mut p)?;
            match op_key >> 3 {
                3 => {
                    out.rows += 1;
                    if let Some(owner) = owner {
                        if first_value(op, p)? != owner {
                            out.foreign += 1;
                        }
                    }
                }
                4 | 5 => {
                    out.rows += 1;
                    if owner.is_some() {
                        out.foreign += 1;
                    }
                }
                2 => {
                    let clen = varint(op, &mut p)? as usize;
                    let commit = op.get(p..p + clen)?;
                    let mut q = 0;
                    let mut time = 0i64;
                    while q < commit.len() {
                        let k = varint(commit, &mut q)?;
                        let v = varint(commit, &mut q)?;
                        if k == (2 << 3) {
                            time = v as i64;
                        }
                    }
                    out.commits.push(time);
                }
                _ => {}
            }
        }
        Some(())
    }

    /// The first `values` entry of the Insert whose length-delimited body
    /// starts at `op[p..]` (its length varint first).
    fn first_value(op: &[u8], mut p: usize) -> Option<&[u8]> {
        let len = varint(op, &mut p)? as usize;
        let insert = op.get(p..p.checked_add(len)?)?;
        let row = field(insert, 2)?;
        field(row, 2)
    }

    /// The first occurrence of length-delimited field `num` in `msg`.
    fn field(msg: &[u8], num: u64) -> Option<&[u8]> {
        let mut p = 0;
        while p < msg.len() {
            let key = varint(msg, &mut p)?;
            match key & 7 {
                0 => {
                    varint(msg, &mut p)?;
                }
                2 => {
                    let len = varint(msg, &mut p)? as usize;
                    let end = p.checked_add(len)?;
                    let v = msg.get(p..end)?;
                    if key >> 3 == num {
                        return Some(v);
                    }
                    p = end;
                }
                _ => return None,
            }
        }
        None
    }
}

/// A throwaway CA and a certificate for `localhost` written into a temp
/// dir: what pgsat needs to serve TLS, and the CA file clients trust.
pub struct BenchTls {
    _dir: tempfile::TempDir,
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: std::path::PathBuf,
}

impl BenchTls {
    pub fn new() -> BenchTls {
        let dir = tempfile::tempdir().expect("tls dir");
        let ca = crate::support::ca::Ca::new("pgsat bench CA");
        let (cert, key) = ca.server_cert(&["localhost"]);
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert).expect("cert");
        std::fs::write(&key_file, key).expect("key");
        let ca_file = ca.write(dir.path(), "ca.pem");
        BenchTls {
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
            ca_file,
            _dir: dir,
        }
    }

    /// pgsat's environment for it.
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("TLS_CERT_FILE", self.cert_file.as_str()),
            ("TLS_KEY_FILE", self.key_file.as_str()),
        ]
    }
}
