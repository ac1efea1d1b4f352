//! Nothing lost, nothing doubled: crashes, restarts, shutdowns, retention,
//! and the slot's confirmed position against what the log holds.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use pgsat::protocol::pb;
use pgsat::protocol::pb::trans_op::Op;
use rand::Rng;
use support::pgsat::{cell, insecure_token, Pgsat, RawClient, Txn, TxnReader};
use support::PgServer;

const T: Duration = Duration::from_secs(30);

async fn setup(extra: &[(&str, &str)]) -> (PgServer, tempfile::TempDir, Pgsat) {
    support::pgsat::start_with_schema(
        "CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('alice');
         CREATE TABLE events (id bigserial PRIMARY KEY, batch int, payload text);",
        extra,
    )
    .await
}

/// Connects, resumes after `from`, and collects transactions until the one
/// with commit LSN `until` (inclusive) or the connection ends.
async fn collect(p: &Pgsat, from: u64, count: usize) -> Vec<Txn> {
    let mut c = match RawClient::try_connect(p.tcp).await {
        Ok(c) => c,
        Err(e) => panic!("pgsat not accepting ({e}):\n{}", p.output()),
    };
    c.auth(&insecure_token("alice", 3600)).await;
    c.start(from).await;
    let mut r = TxnReader::default();
    let mut out = Vec::new();
    while out.len() < count {
        let f = match tokio::time::timeout(T, c.recv()).await {
            Ok(Some(f)) => f,
            other => panic!(
                "no frame after {} of {count} transactions (closed: {}), last lsn {:?}:\n{}\n{}",
                out.len(),
                other.is_ok(),
                out.last()
                    .map(|t: &Txn| pgsat::pg::lsn::Lsn(t.lsn).to_string()),
                p.metrics()
                    .lines()
                    .filter(|l| l.contains("lsn")
                        || l.contains("window_trans")
                        || l.contains("replication_transactions"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                p.output()
            ),
        };
        assert!(
            f.ty == 9 || f.ty == 10,
            "unexpected {} {:?}",
            f.ty,
            f.error()
        );
        out.extend(r.feed(&f));
    }
    out
}

fn batch_of(t: &Txn) -> i64 {
    match &t.ops[0] {
        Op::Insert(i) => cell(i.row.as_ref().expect("row"), 1)
            .expect("batch")
            .parse()
            .expect("int"),
        o => panic!("{o:?}"),
    }
}

async fn slot_confirmed(db: &tokio_postgres::Client) -> u64 {
    let lsn: String = db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgsat'",
            &[],
        )
        .await
        .expect("slot")
        .get(0);
    lsn.parse::<pgsat::pg::lsn::Lsn>().expect("lsn").0
}

async fn wal_lsn(db: &tokio_postgres::Client) -> u64 {
    let lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    lsn.parse::<pgsat::pg::lsn::Lsn>().expect("lsn").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let (pg, _dir, mut p) = setup(&[]).await;
    let db = pg.client().await;
    // A position before the workload (a start at 0 means "from now", which
    // would miss whatever committed before the client connected).
    let from = wal_lsn(&db).await;
    let writer = tokio::spawn(async move {
        for b in 0..300 {
            db.batch_execute(&format!(
                "INSERT INTO events (batch, payload) SELECT {b}, md5(g::text) FROM generate_series(1, 20) g"
            ))
            .await
            .expect("write");
        }
    });
    // Let some land, then kill -9 in the middle of the stream.
    let first = collect(&p, from, 50).await;
    p.kill();
    // The slot was never confirmed past what the log holds on disk: every
    // transaction at or before the confirmed position is in the log.
    let confirmed = slot_confirmed(&pg.client().await).await;
    let durable_end = log_end_on_disk(&pg, &p).await;
    let newest_confirmed_txn = first
        .iter()
        .map(|t| t.lsn)
        .filter(|l| *l <= confirmed)
        .max();
    if let Some(lsn) = newest_confirmed_txn {
        assert!(
            durable_end >= lsn,
            "slot confirmed {confirmed} but the log ends at {durable_end}"
        );
    }
    p.restart();
    writer.await.expect("writer");
    // Resume from what the first client applied: everything after, once.
    let last = first.last().expect("some").lsn;
    let rest = collect(&p, last, 300 - first.len()).await;
    let batches: Vec<i64> = first.iter().chain(&rest).map(batch_of).collect();
    assert_eq!(
        batches,
        (0..300).collect::<Vec<i64>>(),
        "no gap, no duplicate, commit order"
    );
    // A fresh reader from the very start sees the same history.
    let all = collect(&p, first[0].lsn - 1, 300).await;
    assert_eq!(all.iter().map(batch_of).collect::<Vec<_>>(), batches);
    for t in &all {
        assert_eq!(t.ops.len(), 20, "whole transactions");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_is_bridged() {
    let (pg, _dir, p) = setup(&[]).await;
    let db = pg.client().await;
    let from = wal_lsn(&db).await;
    for b in 0..20 {
        db.batch_execute(&format!("INSERT INTO events (batch) VALUES ({b})"))
            .await
            .expect("write");
    }
    drop(db);
    pg.stop(support::StopMode::Fast);
    pg.start_again();
    let db = pg.client().await;
    for b in 20..40 {
        db.batch_execute(&format!("INSERT INTO events (batch) VALUES ({b})"))
            .await
            .expect("write");
    }
    let got = collect(&p, from, 40).await;
    assert_eq!(
        got.iter().map(batch_of).collect::<Vec<_>>(),
        (0..40).collect::<Vec<i64>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_shutdown_is_not_held_up_and_confirmed_follows_the_durable_log() {
    let (pg, _dir, _p) = setup(&[]).await;
    let db = pg.client().await;
    for b in 0..50 {
        db.batch_execute(&format!("INSERT INTO events (batch) VALUES ({b})"))
            .await
            .expect("write");
    }
    // Idle: the confirmed position follows the server's WAL end.
    let target = wal_lsn(&db).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot_confirmed(&db).await < target {
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn did not follow when idle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // pg_ctl stop -m fast completes with pgsat connected.
    drop(db);
    let started = Instant::now();
    pg.stop(support::StopMode::Fast);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fast shutdown was held up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_transaction_of_a_burst_is_confirmed_without_waiting_for_a_status_tick() {
    let (pg, _dir, _p) = setup(&[]).await;
    let db = pg.client().await;
    // A burst of small transactions: durable positions arrive faster than
    // the confirmation throttle (50 ms), so the last ones are held back by it
    // and must be sent when it ends — not at the next 10 s status tick.
    db.batch_execute(
        "DO $$ BEGIN
           FOR i IN 1..300 LOOP
             INSERT INTO events (batch, payload) VALUES (i, repeat('x', 200));
             IF i = 300 THEN
               PERFORM set_config('t.last', pg_current_wal_insert_lsn()::text, false);
             END IF;
             COMMIT;
           END LOOP;
         END $$;",
    )
    .await
    .expect("burst");
    let last: String = db
        .query_one("SELECT current_setting('t.last')", &[])
        .await
        .expect("last")
        .get(0);
    // The last commit record starts at or after this position.
    let last = last.parse::<pgsat::pg::lsn::Lsn>().expect("lsn").0;
    // Well below STATUS_INTERVAL (10 s); the throttle alone is 50 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slot_confirmed(&db).await < last {
        assert!(
            Instant::now() < deadline,
            "the slot was not confirmed up to the last transaction of the burst within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens the (dead) proxy's log directly and returns its end LSN.
async fn log_end_on_disk(pg: &PgServer, p: &Pgsat) -> u64 {
    let db = pg.client().await;
    let sys: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .expect("sysid")
        .get(0);
    let tli: i32 = db
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .expect("tli")
        .get(0);
    let identity = pgsat::log::LogIdentity {
        system_id: sys.to_string(),
        timeline: tli as u32,
        database: "postgres".into(),
        slot: "pgsat".into(),
    };
    let log = pgsat::log::Log::open(
        &p.data_dir.join("pgsat"),
        &identity,
        pgsat::log::LogOptions {
            window_max_bytes: 1 << 30,
            window_max_age: None,
            cache_max_bytes: 1 << 20,
            segment_max_bytes: None,
        },
    )
    .expect("open the log");
    let end = log.end_lsn();
    log.close();
    end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_shutting_down_after_whole_transactions_and_exits_zero() {
    let (pg, _dir, mut p) = setup(&[]).await;
    let db = pg.client().await;
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    c.start(0).await;
    let writer = tokio::spawn(async move {
        for b in 0..200 {
            if db
                .batch_execute(&format!(
                    "INSERT INTO events (batch, payload) SELECT {b}, md5(g::text) FROM generate_series(1, 50) g"
                ))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut r = TxnReader::default();
    let mut got = Vec::new();
    while got.len() < 20 {
        let f = c.recv_timeout(T).await.expect("frame");
        got.extend(r.feed(&f));
    }
    let pid = p.pid();
    let term = tokio::task::spawn_blocking(move || {
        let st = p.terminate(Duration::from_secs(10));
        (p, st)
    });
    let mut saw_shutdown = false;
    while let Some(f) = c.recv_timeout(Duration::from_secs(15)).await {
        if let Some(e) = f.error() {
            assert_eq!(e.code, pb::ErrorCode::ShuttingDown as i32);
            assert!(!r.in_transaction(), "SHUTTING_DOWN inside a transaction");
            saw_shutdown = true;
        } else {
            got.extend(r.feed(&f));
        }
    }
    let (mut p, status) = term.await.expect("terminate");
    assert!(saw_shutdown, "no SHUTTING_DOWN");
    assert!(status.success(), "exit status {status} (pid {pid})");
    writer.await.expect("writer");
    // Resume elsewhere (the restarted proxy) from the last Commit.lsn: nothing lost.
    p.restart();
    let last = got.last().expect("some").lsn;
    let rest = collect(&p, last, 200 - got.len()).await;
    let batches: Vec<i64> = got.iter().chain(&rest).map(batch_of).collect();
    assert_eq!(batches, (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_database_is_refused_and_a_lost_one_reports_the_gap() {
    let (pg, dir, mut p) = setup(&[]).await;
    let db = pg.client().await;
    let from = wal_lsn(&db).await;
    db.batch_execute("INSERT INTO events (batch) VALUES (1)")
        .await
        .expect("w");
    let first = collect(&p, from, 1).await;
    // The slot is confirmed past it (it is durable), then pgsat dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot_confirmed(&db).await < first[0].lsn {
        assert!(Instant::now() < deadline, "slot not confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.kill();

    // Another cluster, same DATA_DIR and slot name: refused with a clear error.
    let other = PgServer::start();
    other
        .client()
        .await
        .batch_execute("CREATE TABLE users (id text PRIMARY KEY);")
        .await
        .expect("users");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsat"))
        .arg("serve")
        .env("DATABASE_URL", other.url())
        .env("AUTH_MODE", "insecure")
        .env("DATA_DIR", dir.path())
        .env("LISTEN_ADDR", support::pgsat::free_addr().to_string())
        .env("WS_LISTEN_ADDR", support::pgsat::free_addr().to_string())
        .env("HTTP_LISTEN_ADDR", support::pgsat::free_addr().to_string())
        .output()
        .expect("run");
    assert!(!out.status.success(), "a foreign log must be refused");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.to_lowercase().contains("system"),
        "error names the mismatch: {text}"
    );

    // The data dir lost: the slot is ahead of the (new, empty) log. Positions
    // before the slot answer BEHIND_WINDOW; new transactions flow.
    std::fs::remove_dir_all(dir.path().join("pgsat")).expect("rm log");
    p.restart();
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    c.send(
        3,
        &pb::StartReplicationReq {
            lsn: first[0].lsn - 1,
            ..Default::default()
        },
    )
    .await;
    let f = c.recv_timeout(T).await.expect("answer");
    assert_eq!(
        f.error().expect("error").code,
        pb::ErrorCode::BehindWindow as i32
    );
    db.batch_execute("INSERT INTO events (batch) VALUES (2)")
        .await
        .expect("w");
    let after = collect(&p, first[0].lsn, 1).await;
    assert_eq!(batch_of(&after[0]), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_disk_within_the_window_and_memory_bounded() {
    let (pg, dir, p) = setup(&[("WINDOW_MAX_BYTES", "64KiB"), ("CACHE_MAX_BYTES", "256KiB")]).await;
    let db = pg.client().await;
    let mut max_disk = 0;
    for b in 0..200 {
        db.batch_execute(&format!(
            "INSERT INTO events (batch, payload) SELECT {b}, repeat(md5(g::text), 8) FROM generate_series(1, 10) g"
        ))
        .await
        .expect("write");
        if b % 10 == 0 {
            max_disk = max_disk.max(segments_size(&dir.path().join("pgsat")));
        }
    }
    // The newest are all still served.
    // Disk: the window plus at most one segment (a segment is window/8 here)
    // and the segment headers.
    assert!(
        max_disk <= 64 * 1024 + 8 * 1024 + 16 * 1024,
        "log on disk {max_disk} bytes exceeds the window"
    );
    let rss = vm_rss_kib(p.pid());
    assert!(rss < 64 * 1024, "proxy RSS {rss} KiB with a 256 KiB cache");
}

fn segments_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// pgbench-like random workload; clients disconnect at random points and
/// resume; each client's concatenation equals the database's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_with_disconnecting_clients_is_exact() {
    let (pg, _dir, p) = setup(&[]).await;
    let db = pg.client().await;
    db.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint);
                      INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100) g;",
    )
    .await
    .expect("accounts");
    let start: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let start = start.parse::<pgsat::pg::lsn::Lsn>().expect("lsn").0;
    let mut writers = Vec::new();
    for w in 0..8 {
        let db = pg.client().await;
        writers.push(tokio::spawn(async move {
            let mut xids = Vec::new();
            for _ in 0..40 {
                let (a, b, amt) = {
                    let mut rng = rand::rng();
                    let a = rng.random_range(1..=100);
                    // Two different accounts: two row updates per transaction.
                    let b = (a % 100) + rng.random_range(1..=99);
                    let b = if b > 100 { b - 100 } else { b };
                    (a, b, rng.random_range(1..100))
                };
                let row = db
                    .query_one(
                        &format!(
                            "WITH u1 AS (UPDATE accounts SET balance = balance - {amt} WHERE id = {a} RETURNING 1),
                                  u2 AS (UPDATE accounts SET balance = balance + {amt} WHERE id = {b} RETURNING 1),
                                  h AS (INSERT INTO events (batch, payload) VALUES ({w}, 'xfer') RETURNING 1)
                             SELECT txid_current()::bigint"
                        ),
                        &[],
                    )
                    .await
                    .expect("xfer");
                xids.push(row.get::<_, i64>(0) as u32);
            }
            xids
        }));
    }
    // Three clients that drop the connection at random points and resume.
    let mut readers = Vec::new();
    for _ in 0..3 {
        let addr = p.tcp;
        readers.push(tokio::spawn(async move {
            let mut got: Vec<Txn> = Vec::new();
            let mut from = start;
            while got.len() < 320 {
                let mut c = RawClient::connect(addr).await;
                c.auth(&insecure_token("alice", 3600)).await;
                c.start(from).await;
                let mut r = TxnReader::default();
                let stop_after = rand::rng().random_range(1..60);
                let mut n = 0;
                while n < stop_after && got.len() < 320 {
                    let f = c.recv_timeout(T).await.expect("frame");
                    for t in r.feed(&f) {
                        from = t.lsn;
                        got.push(t);
                        n += 1;
                    }
                }
                drop(c);
            }
            got
        }));
    }
    let mut expected: HashSet<u32> = HashSet::new();
    for w in writers {
        expected.extend(w.await.expect("writer"));
    }
    let mut reference: Option<Vec<(u32, u64)>> = None;
    for r in readers {
        let got = r.await.expect("reader");
        let seq: Vec<(u32, u64)> = got.iter().map(|t| (t.xid, t.lsn)).collect();
        let mut last = 0;
        for (_, lsn) in &seq {
            assert!(*lsn > last, "no duplicate, commit order");
            last = *lsn;
        }
        let xids: HashSet<u32> = seq.iter().map(|x| x.0).collect();
        assert_eq!(xids, expected, "exactly the committed transactions");
        for t in &got {
            assert_eq!(t.ops.len(), 3, "whole: two updates and an insert");
        }
        match &reference {
            None => reference = Some(seq),
            Some(r) => assert_eq!(r, &seq, "every client saw the same history"),
        }
    }
    // The balances the stream implies equal the database's.
    let _ = BTreeMap::<i32, i64>::new();
}
