//! Fan-out bench pieces shared by `fanout` and `filtered_fanout`: the
//! client process (this bench binary re-executed with
//! `PGSAT_BENCH_CHILD=fanout`, soft RLIMIT_NOFILE raised to the hard limit,
//! N raw TCP light clients that count rows and take commit → receipt
//! latencies), a steady-rate writer and one measured step.
//!
//! The client process reads lines on stdin: `reset` (zero the counters,
//! answers `ok`), `report` (answers `report <foreign> <p50 ms> <p99 ms>
//! <max ms> <rows of client 0> … <rows of client N-1>`), anything else exits.
//!
//! The client process runs its clients on the threads the bench asks for
//! (`CLIENT_THREADS=N` overrides): `filtered_fanout` uses one — each
//! delivery wakes one client, and on this 2-core machine a second thread
//! bought only cross-thread wake-ups and took CPU from Postgres' walsender
//! and pgsat, whose lag is what pushes the p99 over 100 ms when the two
//! cores are saturated (measured at 5,000 txn/s: pg_stat_replication
//! .sent_lsn up to 1 MB, 100 ms of WAL, behind pg_current_wal_lsn(), and
//! pgsat's replication socket up to 0.8 MB unread); `fanout` uses two — every
//! transaction wakes all 1,000 clients at once, and two threads drain them
//! in parallel.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::light::{self, OpCounts};
use super::{cpu_ticks, ticks_per_sec, unix_micros, ChildProc};

pub const ROWS_PER_TXN: u64 = 10;
pub const P99_LIMIT_MS: f64 = 100.0;

/// Client process role (the `PGSAT_BENCH_CHILD` value).
pub const ROLE: &str = "fanout";

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `RATES=a,b,…` or `default`.
pub fn rates_or(default: &[u64]) -> Vec<u64> {
    std::env::var("RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// How the clients authenticate.
pub enum Users {
    /// Every client is user `bench` (version 1: everyone reads every row).
    Shared,
    /// Client i is user `<prefix><i>` and checks that the first column of
    /// every inserted row it gets is its user id.
    PerUser(String),
}

/// Starts `n` clients against `addr` in a client process running them on
/// `threads` threads (`CLIENT_THREADS` overrides) and waits until all of
/// them stream; prints how long that took.
pub fn spawn_clients(addr: std::net::SocketAddr, n: u64, users: &Users, threads: u64) -> ChildProc {
    let mode = match users {
        Users::Shared => "shared".to_string(),
        Users::PerUser(prefix) => format!("user:{prefix}"),
    };
    let threads = env_or("CLIENT_THREADS", threads);
    let mut child = ChildProc::spawn(
        ROLE,
        &[addr.to_string(), n.to_string(), mode, threads.to_string()],
    );
    let t = Instant::now();
    let ready = child.recv();
    eprintln!("{ready} ({:.1}s)", t.elapsed().as_secs_f64());
    assert!(ready.starts_with("ready"), "client process: {ready}");
    child
}

#[derive(Debug)]
pub struct Report {
    /// Rows received by each client.
    pub rows: Vec<u64>,
    /// Rows a client got that were not its own (per-user clients only).
    pub foreign: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Report {
    fn parse(line: &str) -> Report {
        let mut it = line.split_whitespace();
        assert_eq!(it.next(), Some("report"), "bad report {line:?}");
        let mut f = || -> f64 {
            it.next()
                .and_then(|x| x.parse().ok())
                .expect("report field")
        };
        let (foreign, p50_ms, p99_ms, max_ms) = (f() as u64, f(), f(), f());
        let rows = line
            .split_whitespace()
            .skip(5)
            .map(|x| x.parse().expect("rows"))
            .collect();
        Report {
            rows,
            foreign,
            p50_ms,
            p99_ms,
            max_ms,
        }
    }

    pub fn min_rows(&self) -> u64 {
        self.rows.iter().copied().min().unwrap_or(0)
    }

    pub fn max_rows(&self) -> u64 {
        self.rows.iter().copied().max().unwrap_or(0)
    }
}

/// One measured step.
pub struct Step {
    pub committed: u64,
    pub report: Report,
    /// Every client got exactly the rows expected of it and none foreign.
    pub complete: bool,
    pub wall_secs: f64,
    /// CPU seconds of pgsat, the client process and Postgres.
    pub cpu_secs: (f64, f64, f64),
}

impl Step {
    pub fn passed(&self) -> bool {
        self.complete && self.report.p99_ms <= P99_LIMIT_MS
    }

    /// CPU use over the step's wall time, % of one core.
    pub fn cpu_pct(&self) -> (f64, f64, f64) {
        let p = |s: f64| s / self.wall_secs * 100.0;
        (p(self.cpu_secs.0), p(self.cpu_secs.1), p(self.cpu_secs.2))
    }
}

/// Resets the clients, runs `write` (which returns how many transactions
/// committed), then waits until every client has the rows `expected` gives
/// for it (or 15 s) and returns the step's figures.
pub fn measure<W: Future<Output = u64>>(
    child: &mut ChildProc,
    rt: &tokio::runtime::Runtime,
    pgsat_pid: u32,
    pg_pids: &[u32],
    write: W,
    expected: impl Fn(u64) -> Vec<u64>,
) -> Step {
    child.send("reset");
    assert_eq!(child.recv(), "ok");
    let pids = ([pgsat_pid], [child.pid()]);
    let cpu = || (cpu_ticks(&pids.0), cpu_ticks(&pids.1), cpu_ticks(pg_pids));
    let cpu0 = cpu();
    let t0 = Instant::now();
    let committed = rt.block_on(write);
    let expected = expected(committed);
    let deadline = Instant::now() + Duration::from_secs(15);
    let report = loop {
        child.send("report");
        let r = Report::parse(&child.recv());
        let done = r.rows.len() == expected.len()
            && r.rows.iter().zip(&expected).all(|(got, want)| got >= want);
        if done || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall_secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu();
    let secs = |a: u64, b: u64| (b - a) as f64 / ticks_per_sec();
    let complete = report.rows == expected && report.foreign == 0;
    Step {
        committed,
        report,
        complete,
        wall_secs,
        cpu_secs: (
            secs(cpu0.0, cpu1.0),
            secs(cpu0.1, cpu1.1),
            secs(cpu0.2, cpu1.2),
        ),
    }
}

/// Starts `rate` transactions per second for `secs` seconds (`txn(i)`
/// commits the i-th and says whether it did, spawned so they pipeline on
/// one connection); returns how many committed.
pub async fn write_steady<F, Fut>(rate: u64, secs: u64, mut txn: F) -> u64
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let total = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        tasks.push(tokio::spawn(txn(i)));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    ok
}

// ---------------------------------------------------------------------------
// The client process.

/// Latency histogram: 100 µs buckets up to 10 s, plus overflow.
const BUCKET_US: i64 = 100;
const BUCKETS: usize = 100_001;

struct Shared {
    rows: Vec<AtomicU64>,
    foreign: AtomicU64,
    hist: Vec<AtomicU64>,
}

impl Shared {
    fn record(&self, latency_us: i64) {
        let b = ((latency_us.max(0) / BUCKET_US) as usize).min(BUCKETS - 1);
        self.hist[b].fetch_add(1, Ordering::Relaxed);
    }

    fn quantile_ms(counts: &[u64], total: u64, q: f64) -> f64 {
        if total == 0 {
            return 0.0;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return ((i as i64 + 1) * BUCKET_US) as f64 / 1000.0;
            }
        }
        (BUCKETS as i64 * BUCKET_US) as f64 / 1000.0
    }

    fn report(&self) -> String {
        use std::fmt::Write;
        let counts: Vec<u64> = self
            .hist
            .iter()
            .map(|h| h.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = counts
            .iter()
            .rposition(|&c| c > 0)
            .map(|i| ((i as i64 + 1) * BUCKET_US) as f64 / 1000.0)
            .unwrap_or(0.0);
        let mut out = format!(
            "report {} {:.1} {:.1} {:.1}",
            self.foreign.load(Ordering::Relaxed),
            Self::quantile_ms(&counts, total, 0.5),
            Self::quantile_ms(&counts, total, 0.99),
            max
        );
        for r in &self.rows {
            let _ = write!(out, " {}", r.load(Ordering::Relaxed));
        }
        out
    }

    fn reset(&self) {
        for r in self.rows.iter().chain(&self.hist) {
            r.store(0, Ordering::Relaxed);
        }
        self.foreign.store(0, Ordering::Relaxed);
    }
}

/// The client process' `main` (args: addr, clients, `shared` | `user:<prefix>`).
pub fn client_process() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: std::net::SocketAddr = args[0].parse().expect("addr");
    let n: usize = args[1].parse().expect("clients");
    let prefix = args[2].strip_prefix("user:").map(str::to_string);
    let limit = super::raise_nofile();
    assert!(
        limit as usize > n + 64,
        "RLIMIT_NOFILE {limit} too low for {n} clients"
    );
    let shared = Arc::new(Shared {
        rows: (0..n).map(|_| AtomicU64::new(0)).collect(),
        foreign: AtomicU64::new(0),
        hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
    });
    let threads: u64 = args[3].parse().expect("threads");
    let rt = match threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n as usize)
            .enable_all()
            .build(),
    }
    .expect("runtime");
    rt.block_on(async {
        let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(n);
        let gate = Arc::new(tokio::sync::Semaphore::new(200));
        for i in 0..n {
            let shared = shared.clone();
            let user = prefix.as_ref().map(|p| format!("{p}{i}"));
            let token = crate::support::pgsat::insecure_token(
                user.as_deref().unwrap_or("bench"),
                24 * 3600,
            );
            let started = started_tx.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await;
                let client = Client {
                    idx: i,
                    owner: user.map(String::into_bytes),
                };
                let r = client
                    .run(addr, &token, &shared, started.clone(), permit.ok())
                    .await;
                if let Err(e) = r {
                    let _ = started.send(Err(e)).await;
                }
            });
        }
        let mut ok = 0;
        while ok < n {
            match started_rx.recv().await {
                Some(Ok(())) => ok += 1,
                Some(Err(e)) => panic!("client failed: {e}"),
                None => break,
            }
        }
        println!("ready {ok} clients connected, authenticated and streaming");
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        use tokio::io::AsyncBufReadExt;
        let mut lines = stdin.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "reset" => {
                    shared.reset();
                    println!("ok");
                }
                "report" => println!("{}", shared.report()),
                _ => break,
            }
        }
    });
    std::process::exit(0);
}

struct Client {
    idx: usize,
    /// The user id every row must carry in its first column, when checked.
    owner: Option<Vec<u8>>,
}

impl Client {
    async fn run(
        &self,
        addr: std::net::SocketAddr,
        token: &str,
        shared: &Shared,
        started: tokio::sync::mpsc::Sender<Result<(), String>>,
        mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).ok();
        let mut hello = light::auth_frame(token);
        hello.extend_from_slice(&light::start_frame());
        s.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut buf = bytes::BytesMut::with_capacity(16 * 1024);
        let mut counts = OpCounts::default();
        loop {
            // Whole frames in the buffer.
            let now = unix_micros();
            let mut pos = 0;
            while buf.len() - pos >= 4 {
                let len = u32::from_be_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
                if buf.len() - pos < 4 + len {
                    break;
                }
                let ty = buf[pos + 4];
                let body = &buf[pos + 5..pos + 4 + len];
                match ty {
                    light::OPLOG => {
                        counts.rows = 0;
                        counts.foreign = 0;
                        counts.commits.clear();
                        light::count_oplog(body, self.owner.as_deref(), &mut counts)
                            .ok_or("bad OpLog")?;
                        shared.rows[self.idx].fetch_add(counts.rows, Ordering::Relaxed);
                        if counts.foreign > 0 {
                            shared.foreign.fetch_add(counts.foreign, Ordering::Relaxed);
                        }
                        for &t in &counts.commits {
                            shared.record(now - t);
                        }
                    }
                    light::START_RESP => {
                        permit.take();
                        let _ = started.send(Ok(())).await;
                    }
                    0 => {
                        return Err(format!(
                            "server error frame: {:?}",
                            String::from_utf8_lossy(body)
                        ))
                    }
                    _ => {}
                }
                pos += 4 + len;
            }
            bytes::Buf::advance(&mut buf, pos);
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            let n = s.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
        }
    }
}

/// The stepped-rate search: the highest passing rate, and the highest one
/// below which every step passed too (steps are noisy on a shared machine:
/// a passing step above a failing one is reported apart).
#[derive(Default)]
pub struct Search {
    pub best: Option<u64>,
    pub best_unbroken: Option<u64>,
    failed_once: bool,
    fails_in_a_row: u32,
}

impl Search {
    /// Records a step; false once two steps in a row failed (stop).
    pub fn record(&mut self, rate: u64, ok: bool) -> bool {
        if ok {
            self.best = Some(rate);
            if !self.failed_once {
                self.best_unbroken = Some(rate);
            }
            self.fails_in_a_row = 0;
        } else {
            self.failed_once = true;
            self.fails_in_a_row += 1;
        }
        self.fails_in_a_row < 2
    }
}
