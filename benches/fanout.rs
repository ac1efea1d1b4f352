//! Fan-out: 1,000 concurrent light clients on one pgsat under a steady load
//! of 10-row transactions; the rate is stepped up to find the highest one at
//! which every client receives every row with commit → client p99 ≤ 100 ms.
//!
//! The clients run in a separate process (this binary re-executed with
//! `PGSAT_BENCH_CHILD=fanout`, soft RLIMIT_NOFILE raised to the hard limit):
//! each is a raw TCP protocol client that authenticates, starts at the head
//! and counts rows by walking the OpLog protobuf without decoding rows; it
//! takes the commit → receipt latency of each transaction from
//! `Commit.commit_time` (Postgres' clock) and the local clock when the frame
//! holding the Commit has been read (same machine, same clock).
//!
//! Per step: the writer commits `rate` transactions of 10 rows per second for
//! STEP_SECS (default 5) through one pipelined connection; then waits until
//! every client has every row (or 15 s). A step passes when every client got
//! exactly rate × STEP_SECS × 10 rows and the p99 over all (client,
//! transaction) deliveries is ≤ 100 ms. Prints row deliveries/s of each step
//! and the best passing one, with the CPU time pgsat, the clients and
//! Postgres used. Stops after two failing steps in a row; because a shared
//! machine makes single steps noisy, the highest rate below which every step
//! passed is printed too when it differs.
//!
//! Run: `cargo bench --bench fanout` (CLIENTS=…, STEP_SECS=…, RATES=10,20,…,
//! CLIENT_THREADS=… for the client process, default 2).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use common::fan::{self, Users, ROWS_PER_TXN};
use common::{postgres_pids, CHILD_ENV};
use support::PgServer;

fn main() {
    if std::env::var(CHILD_ENV).as_deref() == Ok(fan::ROLE) {
        return fan::client_process();
    }
    let clients = fan::env_or("CLIENTS", 1_000);
    let step_secs = fan::env_or("STEP_SECS", 5);
    let rates = fan::rates_or(&[
        10, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400, 500, 600,
    ]);

    let pg = PgServer::start();
    common::bench_schema(
        &pg,
        "CREATE TABLE fan (id bigserial PRIMARY KEY, n integer NOT NULL,
                           at timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)",
        "fan",
    );
    let data_dir = tempfile::tempdir().expect("data dir");
    let pgsat = common::start_pgsat(&pg, data_dir.path(), Some(clients), &[]);
    let mut child = fan::spawn_clients(pgsat.tcp, clients, &Users::Shared, 2);
    eprintln!(
        "pgsat RSS {:.1} MiB",
        common::proc_status_kib(pgsat.pid(), "VmRSS") as f64 / 1024.0
    );

    let pg_pids = postgres_pids(&pg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let writer = Arc::new(rt.block_on(pg.client()));
    let stmt = rt
        .block_on(writer.prepare(
            "INSERT INTO fan (n, payload) SELECT g, md5(g::text) || md5(($1::int + g)::text)
               FROM generate_series(1, 10) AS g",
        ))
        .expect("prepare");

    println!(
        "fan-out: {clients} clients, 10-row transactions, {step_secs} s per step (machine: 2 cores, shared)"
    );
    println!(
        "  txn/s  rows/s  row deliveries/s   complete   p50 ms   p99 ms   max ms   CPU% pgsat clients postgres"
    );
    let mut search = fan::Search::default();
    for &rate in &rates {
        let write = fan::write_steady(rate, step_secs, |i| {
            let (writer, stmt) = (writer.clone(), stmt.clone());
            async move { writer.execute(&stmt, &[&(i as i32)]).await.is_ok() }
        });
        let step = fan::measure(&mut child, &rt, pgsat.pid(), &pg_pids, write, |committed| {
            vec![committed * ROWS_PER_TXN; clients as usize]
        });
        let (report, cpu) = (&step.report, step.cpu_pct());
        let expected = step.committed * ROWS_PER_TXN;
        let ok = step.passed();
        let achieved = step.committed as f64 / step_secs as f64;
        println!(
            "  {rate:>5} {:>7.0} {:>17.0}   {:>8}   {:>6.1}   {:>6.1}   {:>6.1}   {:>9.0} {:>7.0} {:>8.0}{}",
            achieved * ROWS_PER_TXN as f64,
            achieved * (ROWS_PER_TXN * clients) as f64,
            if step.complete { "yes".to_string() } else { format!("{}/{}", report.min_rows(), expected) },
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            cpu.0,
            cpu.1,
            cpu.2,
            if ok { "" } else { "  ← fails" }
        );
        if !search.record(rate, ok) {
            break;
        }
        // Let everything settle before the next step.
        std::thread::sleep(Duration::from_millis(500));
    }
    let (best, best_unbroken) = (search.best, search.best_unbroken);
    match best {
        Some(rate) => println!(
            "  highest passing rate: {rate} txn/s = {} rows/s = {} row deliveries/s (target ≥ 1,000,000)",
            rate * ROWS_PER_TXN,
            rate * ROWS_PER_TXN * clients
        ),
        None => println!("  no rate passed"),
    }
    if best_unbroken != best {
        match best_unbroken {
            Some(rate) => println!(
                "  highest rate with every lower step passing too: {rate} txn/s = {} row deliveries/s",
                rate * ROWS_PER_TXN * clients
            ),
            None => println!("  the first step failed"),
        }
    }
    child.send("exit");
    drop(child);
    drop(pgsat);
}
