//! Replication throughput: pgsat against `pg_recvlogical`, same WAL, one run.
//!
//! Writes 1,000,000 rows (~200 bytes each) in 10,000 transactions of 100 rows
//! to a temporary Postgres with two logical slots created beforehand, then
//! times (1) `pg_recvlogical` draining its slot (pgoutput, proto 1) to
//! /dev/null up to the end of the workload, and (2) the real `pgsat` binary
//! decoding the same WAL into its durable log (fsync on) until its slot is
//! confirmed past the start of the last transaction's commit record —
//! confirmation only follows what is durably on disk, so that is when the
//! last transaction is in the log. (Waiting for `pg_current_wal_lsn()` instead
//! would time the wait for an idle keepalive after unrelated WAL, not the
//! decoding: pg_recvlogical stops at the same position, `-E`.) Prints both rates, the ratio, pgsat's peak RSS and the
//! log's bytes per row.
//!
//! The machine is shared and noisy, so the two readers run RUNS times
//! (default 2), alternating (pg_recvlogical, pgsat, pg_recvlogical, …), each
//! on its own slot created before the workload, so every pass reads the same
//! WAL; the rates are the medians and every pass is printed. The CPU time
//! Postgres (the walsender: logical decoding) and pgsat used in each pass is
//! printed too.
//!
//! Run: `cargo bench --bench replication_throughput` (ROWS=…, RUNS=…).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{cpu_ticks, postgres_pids, ticks_per_sec};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::PgServer;

const ROWS_PER_TXN: u64 = 100;

fn main() {
    let rows: u64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let txns = rows / ROWS_PER_TXN;
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let pg = PgServer::start();
    let client = rt.block_on(pg.client());

    rt.block_on(async {
        client
            .batch_execute(
                "CREATE TABLE users (id text PRIMARY KEY);
                 CREATE TABLE bench_rows (id bigint PRIMARY KEY, n integer, amount numeric(12,2),
                                          at timestamptz, payload text);
                 CREATE PUBLICATION pgsat_bench FOR TABLE bench_rows;",
            )
            .await
            .expect("schema");
        // One statement each: a multi-statement query is one implicit
        // transaction, and a slot cannot be created in one that has written.
        for run in 0..runs {
            for slot in [format!("recvlogical{run}"), format!("pgsat{run}")] {
                client
                    .execute(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&slot],
                    )
                    .await
                    .expect("create slot");
            }
        }
    });

    eprintln!("writing {rows} rows in {txns} transactions of {ROWS_PER_TXN} rows…");
    let t = Instant::now();
    rt.block_on(async {
        client
            .batch_execute(&format!(
                "DO $$ BEGIN
                   FOR i IN 0..{last} LOOP
                     INSERT INTO bench_rows
                       SELECT i * {per} + g, g, (g * 1.25)::numeric(12,2), now(),
                              repeat(md5((i * {per} + g)::text), 4)
                       FROM generate_series(1, {per}) AS g;
                     IF i = {last} THEN
                       -- Inside the last transaction, after its rows: its
                       -- commit record starts at or after this position.
                       PERFORM set_config('bench.last_lsn', pg_current_wal_insert_lsn()::text, false);
                     END IF;
                     COMMIT;
                   END LOOP;
                 END $$;",
                last = txns - 1,
                per = ROWS_PER_TXN
            ))
            .await
            .expect("workload");
    });
    let end_lsn: String = rt.block_on(async {
        client
            .query_one("SELECT current_setting('bench.last_lsn')", &[])
            .await
            .expect("lsn")
            .get(0)
    });
    let avg_row: f64 = rt.block_on(async {
        let r = client
            .query_one(
                "SELECT avg(pg_column_size(b.*))::float8 FROM bench_rows b",
                &[],
            )
            .await
            .expect("row size");
        r.get(0)
    });
    eprintln!(
        "workload written in {:.1}s, end LSN {end_lsn}, average row {avg_row:.0} bytes",
        t.elapsed().as_secs_f64()
    );

    let mut passes = Vec::new();
    let mut peak = 0u64;
    let mut log_bytes = 0u64;
    let mut ctx_switches = 0u64;
    for run in 0..runs {
        // 1. pg_recvlogical.
        let recv = pg.bin_dir().join("pg_recvlogical");
        let pg_cpu = postgres_cpu(&pg);
        let t = Instant::now();
        let status = Command::new(&recv)
            .args([
                "-d",
                &pg.url(),
                "--slot",
                &format!("recvlogical{run}"),
                "--start",
                "--no-loop",
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=pgsat_bench",
            ])
            .args(["-E", &end_lsn, "-f", "/dev/null"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_recvlogical");
        let recv_secs = t.elapsed().as_secs_f64();
        assert!(status.success(), "pg_recvlogical failed: {status}");
        let recv_pg_cpu = postgres_cpu(&pg) - pg_cpu;

        // 2. pgsat, the real binary, fsync on.
        let data_dir = tempfile::tempdir().expect("data dir");
        let pg_cpu = postgres_cpu(&pg);
        let free = |_: ()| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .to_string()
        };
        let t = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgsat"))
            .arg("serve")
            .env("DATABASE_URL", pg.url())
            .env("AUTH_MODE", "insecure")
            .env("REPLICATION_SLOT", format!("pgsat{run}"))
            .env("PUBLICATION", "pgsat_bench")
            .env("DATA_DIR", data_dir.path())
            .env("WINDOW_MAX_BYTES", "4GiB")
            .env("LISTEN_ADDR", free(()))
            .env("WS_LISTEN_ADDR", free(()))
            .env("HTTP_LISTEN_ADDR", free(()))
            .env(
                "LOG_LEVEL",
                std::env::var("PGSAT_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn pgsat");
        let pid = child.id();
        let mut peak_kib = 0u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        let pgsat_secs = rt.block_on(async {
            loop {
                peak_kib = peak_kib.max(vm_hwm_kib(pid));
                let confirmed: Option<String> = client
                    .query_one(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $2
                           AND confirmed_flush_lsn >= $1::text::pg_lsn",
                        &[&end_lsn, &format!("pgsat{run}")],
                    )
                    .await
                    .ok()
                    .map(|r| r.get(0));
                if confirmed.is_some() {
                    return t.elapsed().as_secs_f64();
                }
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("pgsat exited early: {st}");
                }
                assert!(Instant::now() < deadline, "pgsat did not catch up within 10 minutes");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        peak_kib = peak_kib.max(vm_hwm_kib(pid));
        let pgsat_pg_cpu = postgres_cpu(&pg) - pg_cpu;
        let pgsat_cpu = cpu_ticks(&[pid]) as f64 / ticks_per_sec();
        let switches = context_switches(pid);
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let _ = child.wait();

        eprintln!("pass {run}: pg_recvlogical {recv_secs:.2} s, pgsat {pgsat_secs:.2} s");
        passes.push((recv_secs, recv_pg_cpu, pgsat_secs, pgsat_pg_cpu, pgsat_cpu));
        eprintln!("pass {run}: pgsat context switches (all threads): {switches}");
        ctx_switches = ctx_switches.max(switches);
        peak = peak.max(peak_kib);
        log_bytes = log_bytes.max(dir_size(data_dir.path()));
    }
    let median = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = passes.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        }
    };
    let recv_secs = median(|p| p.0);
    let pgsat_secs = median(|p| p.2);
    let peak_kib = peak;
    let recv_rate = rows as f64 / recv_secs;
    let pgsat_rate = rows as f64 / pgsat_secs;
    println!("replication throughput, {rows} rows in {txns} transactions (avg row {avg_row:.0} B), median of {runs} alternating passes (machine: 2 cores, shared)");
    for (i, p) in passes.iter().enumerate() {
        println!(
            "  pass {i}: pg_recvlogical {:>6.2} s ({:>7.0} rows/s, Postgres CPU {:.1} s) | pgsat {:>6.2} s ({:>7.0} rows/s, Postgres CPU {:.1} s, pgsat CPU {:.1} s) | ratio {:.3}",
            p.0, rows as f64 / p.0, p.1, p.2, rows as f64 / p.2, p.3, p.4, p.0 / p.2
        );
    }
    println!("  pg_recvlogical → /dev/null : {recv_secs:>7.2} s  {recv_rate:>10.0} rows/s");
    println!("  pgsat → durable log (fsync): {pgsat_secs:>7.2} s  {pgsat_rate:>10.0} rows/s");
    println!(
        "  ratio pgsat / pg_recvlogical: {:.3}  (target ≥ 0.95)",
        pgsat_rate / recv_rate
    );
    println!("  pgsat peak RSS: {:.1} MiB", peak_kib as f64 / 1024.0);
    println!(
        "  pgsat context switches, all threads (max of passes): {ctx_switches} ({:.2} per transaction)",
        ctx_switches as f64 / txns as f64
    );
    println!(
        "  log on disk: {:.1} MiB, {:.0} bytes per row",
        log_bytes as f64 / (1024.0 * 1024.0),
        log_bytes as f64 / rows as f64
    );
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Voluntary + involuntary context switches of every thread of `pid`.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU seconds used so far by the postmaster and its children.
fn postgres_cpu(pg: &PgServer) -> f64 {
    cpu_ticks(&postgres_pids(pg)) as f64 / ticks_per_sec()
}

fn dir_size(path: &std::path::Path) -> u64 {
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
