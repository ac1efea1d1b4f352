//! Initial sync (protocol 1.1, `snapshot = true`) against real Postgres and
//! the real server: snapshot rows are pgoutput's text, snapshot + catch-up
//! equals the database under concurrent writers, a client that disconnects
//! mid-snapshot can start over, memory stays bounded for a large table.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgsat::protocol::pb;
use pgsat::protocol::pb::trans_op::Op;
use pgsat::rules::snapshot::{SnapshotConn, SnapshotError, SnapshotItem};
use prost::Message;
use support::pgsat::{cell, insecure_token, Decoded, Pgsat, RawClient, Txn, TxnReader};
use support::PgServer;

const T: Duration = Duration::from_secs(60);

async fn setup(schema: &str) -> (PgServer, tempfile::TempDir, Pgsat) {
    support::pgsat::start_with_schema(
        &format!("CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('alice'); {schema}"),
        &[],
    )
    .await
}

async fn authed(p: &Pgsat) -> RawClient {
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    c
}

async fn start_snapshot(c: &mut RawClient) -> pb::StartReplicationResp {
    c.send(
        3,
        &pb::StartReplicationReq {
            snapshot: true,
            ..Default::default()
        },
    )
    .await;
    let f = c.recv_timeout(T).await.expect("start answer");
    assert_eq!(
        f.ty,
        4,
        "expected StartReplicationResp, got {:?}",
        f.error()
    );
    pb::StartReplicationResp::decode(f.body).expect("StartReplicationResp")
}

/// Everything a client gets up to and including SnapshotEnd.
#[derive(Default)]
struct Snapshot {
    reader: TxnReader,
    /// Relation frames as received before the first row.
    relations: HashMap<u32, pb::Relation>,
    rows: HashMap<u32, Vec<pb::Row>>,
    /// Transactions delivered before SnapshotEnd (catch-up).
    catchup: Vec<Txn>,
    end: pb::SnapshotEnd,
}

impl Snapshot {
    fn row_count(&self) -> u64 {
        self.rows.values().map(|v| v.len() as u64).sum()
    }
}

/// Reads until SnapshotEnd, checking the order: Relations, rows, OpLog.
async fn read_snapshot(c: &mut RawClient) -> Snapshot {
    let mut s = Snapshot::default();
    let mut saw_oplog = false;
    loop {
        let f = c.recv_timeout(T).await.expect("snapshot frame");
        match f.decoded() {
            Decoded::Relation(r) => {
                if !saw_oplog {
                    s.relations.insert(r.relation_id, r);
                }
                s.reader.feed(&f);
            }
            Decoded::SnapshotRows(m) => {
                assert!(!saw_oplog, "SnapshotRows after a catch-up OpLog");
                assert!(
                    s.relations.contains_key(&m.relation_id),
                    "rows of relation {} before its Relation",
                    m.relation_id
                );
                s.rows.entry(m.relation_id).or_default().extend(m.rows);
            }
            Decoded::OpLog => {
                saw_oplog = true;
                s.catchup.extend(s.reader.feed(&f));
            }
            Decoded::SnapshotEnd(end) => {
                assert!(
                    !s.reader.in_transaction(),
                    "SnapshotEnd inside a transaction"
                );
                s.end = end;
                return s;
            }
            _ => panic!("unexpected frame {}: {:?}", f.ty, f.error()),
        }
    }
}

fn row_of(op: &Op) -> &pb::Row {
    match op {
        Op::Insert(i) => i.row.as_ref().expect("row"),
        Op::Update(u) => u.row.as_ref().expect("row"),
        other => panic!("no new row in {other:?}"),
    }
}

fn texts(row: &pb::Row, n: usize) -> Vec<Option<String>> {
    (0..n).map(|i| cell(row, i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_are_byte_identical_to_pgoutput_inserts() {
    let schema = "
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
        CREATE TABLE types (
            id serial PRIMARY KEY, i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8,
            t text, b bytea, bo boolean, u uuid, j json, jb jsonb, ts timestamp, tstz timestamptz,
            d date, tm time, iv interval, arr int[], tarr text[], e mood, dom posint, vc varchar(10),
            gen int GENERATED ALWAYS AS (i4 / 2) STORED, ch char(3), mo money, pt point, ip inet);
        ALTER TABLE types DROP COLUMN i2;";
    let (pg, _dir, p) = setup(schema).await;
    let db = pg.client().await;
    let mut live = authed(&p).await;
    live.start(0).await;
    db.batch_execute(
        r#"INSERT INTO types (i4,i8,num,f4,f8,t,b,bo,u,j,jb,ts,tstz,d,tm,iv,arr,tarr,e,dom,vc,ch,mo,pt,ip) VALUES
        (2147483647, -9223372036854775808, 12345678901234567890.000000001, 1.5, 'NaN',
         E'héllo "quoted" \n new\\line\ttab\r\\N ✓ 日本 \\\\', '\x00ff10095c0a', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '{"a": [1, 2], "s": "x\ty\\z"}', '{"b": {"c": null}}', '2024-02-29 23:59:59.123456', '2024-01-01 12:00:00+05:30',
         '0001-01-01', '24:00:00', '1 year 2 mons -3 days 04:05:06.789', '{1,NULL,3}', E'{"a b","c,d",NULL,"t\\\\ab","q\\"x"}',
         'happy', 7, 'short', 'ab', 12.34, '(1.5,-2)', '10.0.0.1/8'),
        (0, 0, 'NaN', '-Infinity', 'Infinity', '', '\x', false, '00000000-0000-0000-0000-000000000000',
         'null', '[]', 'infinity', '-infinity', 'infinity', '00:00', '0', '{}', '{}', 'sad', 1, '', '', 0, '(0,0)', '::1'),
        (NULL, NULL, NULL, NULL, 0.1, '\N', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#,
    )
    .await
    .expect("insert");
    // The same rows as pgoutput sent them.
    let mut r = TxnReader::default();
    let mut txns = Vec::new();
    while txns.is_empty() {
        let f = live.recv_timeout(T).await.expect("stream frame");
        txns.extend(r.feed(&f));
    }
    let inserts: Vec<pb::Row> = txns[0].ops.iter().map(|o| row_of(o).clone()).collect();
    assert_eq!(inserts.len(), 3);
    let stream_rel = r
        .relations
        .values()
        .find(|x| x.table == "types")
        .expect("Relation")
        .clone();

    // Idle database from here on: SnapshotEnd must still come.
    let mut c = authed(&p).await;
    let resp = start_snapshot(&mut c).await;
    assert_eq!(resp.lsn, 0);
    let s = read_snapshot(&mut c).await;
    assert!(
        s.catchup.is_empty(),
        "nothing committed during the snapshot"
    );
    let rel = s
        .relations
        .values()
        .find(|x| x.table == "types")
        .expect("snapshot Relation");
    assert_eq!(*rel, stream_rel, "Relation equals the stream's");
    let mut rows = s.rows.get(&rel.relation_id).cloned().expect("rows");
    rows.sort_by_key(|r| cell(r, 0).and_then(|v| v.parse::<i32>().ok()));
    assert_eq!(rows.len(), 3);
    for (got, want) in rows.iter().zip(&inserts) {
        for (i, col) in rel.columns.iter().enumerate() {
            assert_eq!(cell(got, i), cell(want, i), "column {}", col.name);
        }
        assert_eq!(got, want, "whole Row message");
    }
    // users is published too (every published table).
    let users = s
        .relations
        .values()
        .find(|x| x.table == "users")
        .expect("users Relation");
    assert_eq!(s.rows.get(&users.relation_id).map(Vec::len), Some(1));
    assert_eq!(s.end.rows, 4);
    assert!(s.end.lsn > 0);

    // The stream goes on after SnapshotEnd; resuming from SnapshotEnd.lsn
    // gives the same next transaction.
    db.batch_execute("UPDATE types SET t = 'after' WHERE id = 1")
        .await
        .expect("update");
    let mut next = Vec::new();
    while next.is_empty() {
        let f = c.recv_timeout(T).await.expect("after snapshot");
        assert!(f.ty == 9 || f.ty == 10, "frame {}", f.ty);
        next.extend(s_reader_feed(&f));
    }
    assert!(next[0].lsn > s.end.lsn);
    let mut resumed = authed(&p).await;
    resumed.start(s.end.lsn).await;
    let mut rr = TxnReader::default();
    let mut again = Vec::new();
    while again.is_empty() {
        let f = resumed.recv_timeout(T).await.expect("resumed");
        again.extend(rr.feed(&f));
    }
    assert_eq!(again[0], next[0]);
}

/// A TxnReader for frames after SnapshotEnd where Relations were sent
/// earlier: ops on unknown relations are fine here.
fn s_reader_feed(f: &support::pgsat::RawFrame) -> Vec<Txn> {
    let mut out = Vec::new();
    if f.ty == 10 {
        let log = pb::OpLog::decode(f.body.clone()).expect("OpLog");
        let mut cur: Option<Txn> = None;
        for op in log.ops {
            match op.op.expect("op") {
                Op::Begin(b) => {
                    cur = Some(Txn {
                        xid: b.xid,
                        lsn: b.commit_lsn,
                        ops: Vec::new(),
                    })
                }
                Op::Commit(_) => out.extend(cur.take()),
                o => {
                    if let Some(t) = cur.as_mut() {
                        t.ops.push(o)
                    }
                }
            }
        }
    }
    out
}

/// acct(id int PK, v int, note text): a replica keyed by id.
#[derive(Default)]
struct Replica {
    rows: BTreeMap<i64, Vec<Option<String>>>,
}

impl Replica {
    fn key(row: &pb::Row) -> i64 {
        cell(row, 0)
            .and_then(|v| v.parse().ok())
            .expect("integer key")
    }

    fn apply_row(&mut self, row: &pb::Row) {
        let k = Self::key(row);
        assert!(
            self.rows.insert(k, texts(row, 3)).is_none(),
            "row {k} twice (snapshot + insert, or two inserts)"
        );
    }

    fn apply(&mut self, rel: u32, txn: &Txn) {
        for op in &txn.ops {
            match op {
                Op::Insert(i) if i.relation_id == rel => self.apply_row(row_of(op)),
                Op::Update(u) if u.relation_id == rel => {
                    let new = u.row.as_ref().expect("row");
                    let old_key = u.old_row.as_ref().map(Self::key).unwrap_or(Self::key(new));
                    assert!(
                        self.rows.remove(&old_key).is_some(),
                        "update of missing row {old_key} (xid {})",
                        txn.xid
                    );
                    self.apply_row(new);
                }
                Op::Delete(d) if d.relation_id == rel => {
                    let k = Self::key(d.old_row.as_ref().expect("old row"));
                    assert!(
                        self.rows.remove(&k).is_some(),
                        "delete of missing row {k} (xid {})",
                        txn.xid
                    );
                }
                Op::Truncate(t) if t.relation_ids.contains(&rel) => self.rows.clear(),
                _ => {}
            }
        }
    }
}

async fn database_rows(db: &tokio_postgres::Client) -> BTreeMap<i64, Vec<Option<String>>> {
    let rows = db
        .query("SELECT id::int8, v::text, note FROM acct", &[])
        .await
        .expect("select");
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            (id, vec![Some(id.to_string()), r.get(1), r.get(2)])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_during_fifty_writers_equal_the_database() {
    let (pg, _dir, p) = setup(
        "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
         INSERT INTO acct SELECT g, g, 'n' || g FROM generate_series(1, 20000) g;
         CREATE TABLE marker (id int PRIMARY KEY);",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(100_000));
    let commits = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..50u64 {
        let db = pg.client().await;
        let stop = stop.clone();
        let next_id = next_id.clone();
        let commits = commits.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let target = ((w * 7919 + i * 104_729) % 20_000) as i32 + 1;
                let sql = match if w < 5 { 5 } else { i % 5 } {
                    // Long transactions: open (in the snapshot's xip) while
                    // snapshots are taken, committing after them.
                    5 => format!(
                        "BEGIN; INSERT INTO acct VALUES ({}, {i}, 'long'); \
                         UPDATE acct SET v = v - 1 WHERE id = {target}; \
                         SELECT pg_sleep(0.05); COMMIT",
                        next_id.fetch_add(1, Ordering::Relaxed)
                    ),
                    0 => format!(
                        "INSERT INTO acct VALUES ({}, {w}, 'w{w}')",
                        next_id.fetch_add(1, Ordering::Relaxed)
                    ),
                    1 => format!("DELETE FROM acct WHERE id = {target}"),
                    2 => format!(
                        "BEGIN; UPDATE acct SET v = v + 1 WHERE id = {target}; \
                         INSERT INTO acct VALUES ({}, {i}, NULL); COMMIT",
                        next_id.fetch_add(1, Ordering::Relaxed)
                    ),
                    3 => format!(
                        "UPDATE acct SET id = {} WHERE id = {target}",
                        next_id.fetch_add(1, Ordering::Relaxed)
                    ),
                    _ => format!("UPDATE acct SET note = E'x\\ty{i}' WHERE id = {target}"),
                };
                match db.batch_execute(&sql).await {
                    Ok(()) => {
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if db.is_closed() => return,
                    Err(_) => {
                        // e.g. a deadlock: the transaction rolled back,
                        // which is fine.
                        let _ = db.batch_execute("ROLLBACK").await;
                        tokio::task::yield_now().await;
                    }
                }
            }
        }));
    }
    let relid: u32 = {
        let db = pg.client().await;
        let r = db
            .query_one("SELECT 'acct'::regclass::oid", &[])
            .await
            .expect("oid");
        r.get(0)
    };
    // Three snapshots taken while the writers run, each kept streaming.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let before = commits.load(Ordering::Relaxed);
        assert!(
            support::wait_until(T, || {
                let c = commits.clone();
                async move { c.load(Ordering::Relaxed) >= before + 200 }
            })
            .await,
            "writers make progress"
        );
        let mut c = authed(&p).await;
        start_snapshot(&mut c).await;
        let s = read_snapshot(&mut c).await;
        let mut rep = Replica::default();
        for row in s.rows.get(&relid).into_iter().flatten() {
            rep.apply_row(row);
        }
        for t in &s.catchup {
            rep.apply(relid, t);
        }
        eprintln!(
            "snapshot: {} rows, {} catch-up transactions before SnapshotEnd",
            s.row_count(),
            s.catchup.len()
        );
        clients.push((c, s.reader, rep, s.catchup.len()));
    }
    let n = commits.load(Ordering::Relaxed);
    assert!(
        support::wait_until(T, || {
            let c = commits.clone();
            async move { c.load(Ordering::Relaxed) >= n + 200 }
        })
        .await
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let db = pg.client().await;
    db.batch_execute("INSERT INTO marker VALUES (1)")
        .await
        .expect("marker");
    let marker: u32 = db
        .query_one("SELECT 'marker'::regclass::oid", &[])
        .await
        .expect("oid")
        .get(0);
    let want = database_rows(&db).await;
    for (i, (mut c, mut reader, mut rep, catchup)) in clients.into_iter().enumerate() {
        'read: loop {
            let f = c.recv_timeout(T).await.expect("stream frame");
            assert!(f.ty == 9 || f.ty == 10, "frame {}: {:?}", f.ty, f.error());
            for t in reader.feed(&f) {
                rep.apply(relid, &t);
                let is_marker = t
                    .ops
                    .iter()
                    .any(|o| matches!(o, Op::Insert(x) if x.relation_id == marker));
                if is_marker {
                    break 'read;
                }
            }
        }
        assert_eq!(
            rep.rows.len(),
            want.len(),
            "snapshot {i} (catch-up txns {catchup}): row count"
        );
        assert!(
            rep.rows == want,
            "snapshot {i}: replica differs from SELECT"
        );
    }
    assert!(commits.load(Ordering::Relaxed) > 600);
}

async fn snapshot_backends(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsat-snapshot'",
        &[],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_snapshot_then_start_over() {
    let (pg, _dir, p) = setup(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g;",
    )
    .await;
    let db = pg.client().await;
    // More disconnects than concurrent snapshot permits: a leaked permit
    // would make the last snapshot wait forever.
    for _ in 0..6 {
        let mut c = authed(&p).await;
        start_snapshot(&mut c).await;
        let mut got_rows = false;
        while !got_rows {
            let f = c.recv_timeout(T).await.expect("frame");
            assert_ne!(f.ty, 13, "SnapshotEnd before reading much");
            got_rows = f.ty == 12;
        }
        // The reader is blocked on this client (which stopped reading).
        assert_eq!(snapshot_backends(&db).await, 1, "one snapshot connection");
        drop(c);
        assert!(
            support::wait_until(T, || {
                let db = &db;
                async move { snapshot_backends(db).await == 0 }
            })
            .await,
            "the snapshot connection (and its transaction) is closed"
        );
    }
    db.batch_execute("DELETE FROM big WHERE id <= 10")
        .await
        .expect("delete");
    let mut c = authed(&p).await;
    start_snapshot(&mut c).await;
    let s = read_snapshot(&mut c).await;
    let relid: u32 = db
        .query_one("SELECT 'big'::regclass::oid", &[])
        .await
        .expect("oid")
        .get(0);
    let n = s.rows.get(&relid).map(Vec::len).unwrap_or(0);
    assert_eq!(n, 99_990);
    assert_eq!(s.end.rows, s.row_count());
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_snapshot_keeps_memory_bounded() {
    const ROWS: u64 = 1_000_000;
    // Filled before pgsat starts: the rows are not in its log.
    let (pg, _dir, p) = setup(&format!(
        "CREATE TABLE wide (id int PRIMARY KEY, a text, b int8);
         INSERT INTO wide SELECT g, md5(g::text) || md5((g+1)::text), g * 3 FROM generate_series(1, {ROWS}) g;"
    ))
    .await;
    let db = pg.client().await;
    let table_bytes: i64 = db
        .query_one("SELECT pg_table_size('wide')", &[])
        .await
        .expect("size")
        .get(0);
    let before = vm_hwm_kib(p.pid()).expect("VmHWM");
    let mut c = authed(&p).await;
    start_snapshot(&mut c).await;
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let end = loop {
        let f = c.recv_timeout(T).await.expect("frame");
        match f.ty {
            9 => {}
            12 => {
                bytes += f.body.len() as u64;
                assert!(
                    f.body.len() < 512 * 1024,
                    "SnapshotRows of {} bytes",
                    f.body.len()
                );
                rows += pb::SnapshotRows::decode(f.body).expect("rows").rows.len() as u64;
            }
            13 => break pb::SnapshotEnd::decode(f.body).expect("end"),
            other => panic!("frame {other}"),
        }
    };
    assert_eq!(rows, ROWS + 1, "every row (and the users row)");
    assert_eq!(end.rows, ROWS + 1);
    let after = vm_hwm_kib(p.pid()).expect("VmHWM");
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "snapshot of {ROWS} rows ({} MiB table, {} MiB sent): VmHWM {} → {} MiB",
        table_bytes >> 20,
        bytes >> 20,
        before / 1024,
        after / 1024
    );
    assert!(
        grew_mib < 64 && (grew_mib << 20) < bytes / 2,
        "server peak memory grew {grew_mib} MiB for a {} MiB snapshot",
        bytes >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_chooses_published_tables_and_refuses_others() {
    let pg = PgServer::start();
    let db = pg.client().await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, x text); CREATE TABLE b (id int); CREATE TABLE c (id int);
         CREATE SCHEMA s; CREATE TABLE s.d (k text PRIMARY KEY, v text);
         CREATE PUBLICATION p FOR TABLE a, b, s.d;
         INSERT INTO a VALUES (1, 'one'), (2, NULL), (3, 'three');
         INSERT INTO s.d VALUES ('k', E'v\\\\');",
    )
    .await
    .expect("schema");
    let cfg: tokio_postgres::Config = pg.url().parse().expect("url");
    let mut conn = SnapshotConn::connect(cfg.clone().into())
        .await
        .expect("connect");
    let (snap, lsn) = conn.begin().await.expect("begin");
    assert!(snap.xmin <= snap.xmax && lsn > 0);
    let all = conn.tables("p", &[]).await.expect("tables");
    let names: Vec<String> = all.iter().map(|t| t.qualified()).collect();
    assert_eq!(names, ["public.a", "public.b", "s.d"]);
    let some = conn
        .tables("p", &["s.d".into(), "a".into()])
        .await
        .expect("tables");
    assert_eq!(
        some.iter().map(|t| t.qualified()).collect::<Vec<_>>(),
        ["s.d", "public.a"]
    );
    assert!(matches!(
        conn.tables("p", &["c".into()]).await,
        Err(SnapshotError::NotPublished(_))
    ));
    // A filter (what the read rules will pass) narrows the rows.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SnapshotItem>(4);
    let n = conn
        .copy_rows(&some[1], Some("x IS NOT NULL AND id > 1"), &tx)
        .await
        .expect("copy");
    assert_eq!(n, 1);
    let n = conn.copy_rows(&some[0], None, &tx).await.expect("copy");
    assert_eq!(n, 1);
    drop(tx);
    let mut rows = Vec::new();
    while let Some(item) = rx.recv().await {
        if let SnapshotItem::Rows { frame, .. } = item {
            rows.extend(pb::SnapshotRows::decode(&frame[5..]).expect("rows").rows);
        }
    }
    assert_eq!(texts(&rows[0], 2), [Some("3".into()), Some("three".into())]);
    assert_eq!(texts(&rows[1], 2), [Some("k".into()), Some("v\\".into())]);
    conn.finish().await.expect("finish");

    // Partitioned (published via the root) and inheritance tables.
    db.batch_execute(
        "CREATE TABLE parted (id int, k int) PARTITION BY RANGE (k);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
         CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20);
         INSERT INTO parted VALUES (1, 1), (2, 15), (3, 16);
         CREATE TABLE inh (id int); CREATE TABLE inh_c (x int) INHERITS (inh);
         INSERT INTO inh VALUES (1); INSERT INTO inh_c VALUES (2, 2), (3, 3);
         CREATE PUBLICATION p2 FOR TABLE parted, inh, inh_c WITH (publish_via_partition_root = true);",
    )
    .await
    .expect("more tables");
    let mut conn = SnapshotConn::connect(cfg.into()).await.expect("connect");
    conn.begin().await.expect("begin");
    let tables = conn.tables("p2", &[]).await.expect("tables");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SnapshotItem>(64);
    let mut counts = BTreeMap::new();
    for t in &tables {
        let n = conn.copy_rows(t, None, &tx).await.expect("copy");
        counts.insert(t.qualified(), n);
    }
    drop(tx);
    while rx.recv().await.is_some() {}
    let want: BTreeMap<String, u64> = [
        ("public.inh".to_string(), 1),
        ("public.inh_c".to_string(), 2),
        ("public.parted".to_string(), 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_snapshot_prints_rows_then_end_then_changes() {
    tail_snapshot(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_snapshot_over_websocket() {
    tail_snapshot(true).await;
}

async fn tail_snapshot(websocket: bool) {
    use std::io::{BufRead, BufReader};
    let (pg, _dir, p) = setup(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes VALUES (1, E'tab\\there'), (2, NULL);",
    )
    .await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgsat"))
        .args([
            "tail",
            "--url",
            &if websocket {
                format!("ws://{}/ws", p.ws)
            } else {
                format!("tcp://{}", p.tcp)
            },
            "--token",
            &insecure_token("alice", 3600),
            "--snapshot",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn pgsat tail");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(T, rx.recv())
            .await
            .expect("a line in time")
            .expect("tail still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let mut snap = Vec::new();
    let end = loop {
        let v = next().await;
        match v["op"].as_str() {
            Some("snapshot") => snap.push(v),
            Some("snapshot_end") => break v,
            other => panic!("unexpected line {other:?}: {v}"),
        }
    };
    let notes: Vec<_> = snap.iter().filter(|v| v["table"] == "notes").collect();
    assert_eq!(notes.len(), 2);
    assert!(notes
        .iter()
        .any(|v| v["row"]["id"] == "1" && v["row"]["body"] == "tab\there"));
    assert!(notes
        .iter()
        .any(|v| v["row"]["id"] == "2" && v["row"]["body"].is_null()));
    assert_eq!(end["rows"], 3);
    let db = pg.client().await;
    db.batch_execute("INSERT INTO notes VALUES (3, 'after')")
        .await
        .expect("insert");
    let v = next().await;
    let change = &v["changes"][0];
    assert_eq!(change["op"], "insert", "{v}");
    assert_eq!(change["row"]["body"], "after", "{v}");
    assert!(v["lsn"].as_u64().unwrap_or(0) > end["lsn"].as_u64().unwrap_or(u64::MAX));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_or_stopped_snapshots_do_not_hold_anyone_up() {
    let (pg, _dir, p) = setup(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('y', 200) FROM generate_series(1, 100000) g;",
    )
    .await;
    let db = pg.client().await;
    // snapshot with a position: refused.
    let mut bad = authed(&p).await;
    bad.send(
        3,
        &pb::StartReplicationReq {
            lsn: 5,
            snapshot: true,
            ..Default::default()
        },
    )
    .await;
    let f = bad.recv_timeout(T).await.expect("answer");
    assert_eq!(
        f.error().map(|e| e.code),
        Some(pb::ErrorCode::InvalidRequest as i32)
    );

    // A client that stops reading mid-snapshot…
    let mut stalled = authed(&p).await;
    start_snapshot(&mut stalled).await;
    loop {
        let f = stalled.recv_timeout(T).await.expect("frame");
        if f.ty == 12 {
            break;
        }
    }
    // …holds up neither a live session nor another snapshot.
    let mut live = authed(&p).await;
    live.start(0).await;
    db.batch_execute("INSERT INTO big VALUES (0, 'live')")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let mut got = Vec::new();
    while got.is_empty() {
        let f = live.recv_timeout(T).await.expect("live frame");
        got.extend(r.feed(&f));
    }
    let mut other = authed(&p).await;
    start_snapshot(&mut other).await;
    let s = read_snapshot(&mut other).await;
    assert_eq!(s.end.rows, 100_002, "big (with row 0) and users");

    // StopReplicationReq mid-snapshot: StopReplicationResp, the snapshot
    // connection closes, and a new snapshot can start on the same session.
    let mut stopper = authed(&p).await;
    start_snapshot(&mut stopper).await;
    loop {
        let f = stopper.recv_timeout(T).await.expect("frame");
        if f.ty == 12 {
            break;
        }
    }
    stopper.send(5, &pb::StopReplicationReq {}).await;
    loop {
        let f = stopper.recv_timeout(T).await.expect("frame");
        assert!(f.ty == 12 || f.ty == 6, "frame {} {:?}", f.ty, f.error());
        if f.ty == 6 {
            break;
        }
    }
    drop(stalled);
    assert!(
        support::wait_until(T, || {
            let db = &db;
            async move { snapshot_backends(db).await == 0 }
        })
        .await,
        "stopped and stalled snapshots closed their connections"
    );
    start_snapshot(&mut stopper).await;
    let s = read_snapshot(&mut stopper).await;
    assert_eq!(s.end.rows, 100_002);
    assert_eq!(s.row_count(), 100_002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_snapshots_are_limited_and_queue_for_a_permit() {
    let (_pg, _dir, p) = setup(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('z', 200) FROM generate_series(1, 100000) g;",
    )
    .await;
    let limit = pgsat::rules::snapshot::MAX_CONCURRENT_SNAPSHOTS;
    let mut stalled = Vec::new();
    for _ in 0..limit {
        let mut c = authed(&p).await;
        start_snapshot(&mut c).await;
        loop {
            let f = c.recv_timeout(T).await.expect("frame");
            if f.ty == 12 {
                break;
            }
        }
        stalled.push(c);
    }
    let mut waiting = authed(&p).await;
    start_snapshot(&mut waiting).await;
    // Every permit is held by a stalled client: nothing comes yet.
    let early = tokio::time::timeout(Duration::from_millis(1500), waiting.recv()).await;
    assert!(
        early.is_err(),
        "a snapshot beyond the limit started: {early:?}"
    );
    stalled.pop();
    let s = read_snapshot(&mut waiting).await;
    assert_eq!(s.end.rows, 100_001);
}

/// TRUNCATE is not MVCC-safe: `begin_locked` locks the session's published
/// tables before the snapshot, so a TRUNCATE waits (here: times out) instead
/// of emptying a table the snapshot has not read yet. The unlocked `begin`
/// shows what went wrong before: the rows vanish from the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_after_the_snapshot_does_not_empty_it() {
    let pg = PgServer::start();
    let db = pg.client().await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         CREATE PUBLICATION p FOR TABLE a, b;
         INSERT INTO a SELECT generate_series(1, 10); INSERT INTO b VALUES (1);",
    )
    .await
    .expect("schema");
    let cfg: tokio_postgres::Config = pg.url().parse().expect("url");
    let count = |conn: SnapshotConn| async move {
        let t = conn.tables("p", &["a".into()]).await.expect("tables");
        let (tx, _rx) = tokio::sync::mpsc::channel::<SnapshotItem>(64);
        conn.copy_rows(&t[0], None, &tx).await.expect("copy")
    };
    let truncate = "SET lock_timeout = '500ms'; TRUNCATE a";

    // Unlocked (the old behaviour): the TRUNCATE goes through and the
    // snapshot reads an empty table although it did not see the TRUNCATE.
    let mut conn = SnapshotConn::connect(cfg.clone().into())
        .await
        .expect("connect");
    conn.begin().await.expect("begin");
    let other = pg.client().await;
    other
        .batch_execute(truncate)
        .await
        .expect("truncate unlocked");
    assert_eq!(count(conn).await, 0, "TRUNCATE is not MVCC-safe");
    db.batch_execute("INSERT INTO a SELECT generate_series(1, 10)")
        .await
        .expect("refill");

    // Locked (only the tables the session reads): the TRUNCATE of `a`
    // cannot get its lock while the snapshot is open; `b` (subscribed but
    // not read, e.g. unreadable under the rules) is not locked.
    let mut conn = SnapshotConn::connect(cfg.into()).await.expect("connect");
    conn.begin_locked("p", &["a".into(), "b".into()], &|_, t| t == "a")
        .await
        .expect("begin_locked");
    let e = other.batch_execute(truncate).await.expect_err("lock held");
    assert!(format!("{e:?}").contains("lock timeout"), "{e:?}");
    other
        .batch_execute("SET lock_timeout = '500ms'; TRUNCATE b")
        .await
        .expect("b is not locked");
    assert_eq!(count(conn).await, 10);
}
