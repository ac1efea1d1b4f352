//! Initial sync throughput: one client takes a snapshot of a 1,000,000-row
//! table through the real `pgsat` binary, against
//! `psql -c "COPY (SELECT * FROM t) TO STDOUT" > /dev/null` on the same
//! database in the same run. Prints both rates and the ratio (target ≥ 0.7×)
//! and pgsat's peak RSS.
//!
//! The table is filled before pgsat starts (its rows are not in pgsat's log).
//! COPY runs once to warm the cache, then is timed before and after the
//! snapshot (the faster of the two counts). The client reads whole frames
//! off the socket without decoding the rows (as psql writes COPY to
//! /dev/null); the row count is `SnapshotEnd.rows`, checked against the table.
//!
//! Run: `cargo bench --bench snapshot` (ROWS=… to scale).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgsat::protocol::pb;
use prost::Message;
use support::pgsat::{insecure_token, Pgsat, RawClient};
use support::PgServer;

fn main() {
    let rows: u64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let pg = PgServer::start();
    let client = rt.block_on(pg.client());
    let t = Instant::now();
    rt.block_on(async {
        client
            .batch_execute(&format!(
                "CREATE TABLE users (id text PRIMARY KEY);
                 INSERT INTO users VALUES ('bench');
                 CREATE TABLE t (id bigint PRIMARY KEY, n integer, amount numeric(12,2),
                                 at timestamptz, flag boolean, payload text);
                 INSERT INTO t SELECT g, g % 1000, (g * 1.25)::numeric(12,2),
                                      '2024-01-01'::timestamptz + g * interval '1 second',
                                      g % 2 = 0, md5(g::text) || md5((g * 7)::text)
                 FROM generate_series(1, {rows}) g;"
            ))
            .await
            .expect("table");
        client
            .batch_execute("VACUUM ANALYZE t")
            .await
            .expect("vacuum");
    });
    let (table_mib, avg_row): (i64, f64) = rt.block_on(async {
        let r = client
            .query_one(
                "SELECT pg_table_size('t') >> 20, (SELECT avg(pg_column_size(x.*))::float8 FROM t x)",
                &[],
            )
            .await
            .expect("size");
        (r.get(0), r.get(1))
    });
    eprintln!(
        "table of {rows} rows ({table_mib} MiB, average row {avg_row:.0} B) written in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let psql = pg.bin_dir().join("psql");
    let copy = || {
        let t = Instant::now();
        let status = Command::new(&psql)
            .args([
                pg.url().as_str(),
                "-X",
                "-q",
                "-c",
                "COPY (SELECT * FROM t) TO STDOUT",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("run psql");
        assert!(status.success(), "psql COPY failed: {status}");
        t.elapsed().as_secs_f64()
    };
    copy(); // warm-up
    let copy_before = copy();

    let data_dir = tempfile::tempdir().expect("data dir");
    let p = Pgsat::start(&pg, data_dir.path(), &[("LOG_LEVEL", "warn")]);
    let pid = p.pid();
    let (snap_secs, got_rows, bytes) = rt.block_on(async {
        let mut c = RawClient::connect(p.tcp).await;
        c.auth(&insecure_token("bench", 3600)).await;
        let t = Instant::now();
        c.send(
            3,
            &pb::StartReplicationReq {
                snapshot: true,
                ..Default::default()
            },
        )
        .await;
        let mut bytes = 0u64;
        let limit = Duration::from_secs(600);
        loop {
            let f = c.recv_timeout(limit).await.expect("frame");
            bytes += f.body.len() as u64 + 5;
            match f.ty {
                4 | 9 | 12 => {}
                13 => {
                    let end = pb::SnapshotEnd::decode(f.body).expect("SnapshotEnd");
                    return (t.elapsed().as_secs_f64(), end.rows, bytes);
                }
                other => panic!("unexpected frame {other}: {:?}", f.error()),
            }
        }
    });
    let peak_kib = vm_hwm_kib(pid);
    drop(p);
    let copy_after = copy();
    assert_eq!(got_rows, rows + 1, "every row of t and users");

    let copy_secs = copy_before.min(copy_after);
    let copy_rate = rows as f64 / copy_secs;
    let snap_rate = got_rows as f64 / snap_secs;
    println!("snapshot throughput, {rows} rows (avg row {avg_row:.0} B, table {table_mib} MiB)");
    println!(
        "  psql COPY → /dev/null      : {copy_secs:>7.2} s  {copy_rate:>10.0} rows/s  (runs {copy_before:.2} s, {copy_after:.2} s)"
    );
    println!(
        "  pgsat snapshot → one client: {snap_secs:>7.2} s  {snap_rate:>10.0} rows/s  ({:.1} MiB of frames)",
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  ratio pgsat / COPY: {:.3}  (target ≥ 0.7)",
        snap_rate / copy_rate
    );
    println!("  pgsat peak RSS: {:.1} MiB", peak_kib as f64 / 1024.0);
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
