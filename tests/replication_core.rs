//! The replication core end to end: what Postgres commits is what a client
//! receives — every type's text, every replica identity, TOAST, concurrency,
//! huge transactions, DDL — checked against the database itself.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use pgsat::protocol::pb;
use pgsat::protocol::pb::trans_op::Op;
use support::pgsat::{cell, insecure_token, Pgsat, RawClient, TxnReader};
use support::PgServer;

const T: Duration = Duration::from_secs(30);

/// The session settings pgsat pins on its replication connection, so the
/// database's own text output can be compared with what pgoutput sent.
const SAME_TEXT: &str =
    "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET IntervalStyle = postgres; SET extra_float_digits = 3;";

async fn setup(schema: &str, extra: &[(&str, &str)]) -> (PgServer, tempfile::TempDir, Pgsat) {
    support::pgsat::start_with_schema(
        &format!("CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('alice'); {schema}"),
        extra,
    )
    .await
}

/// Runs each statement as its own transaction (a multi-statement simple
/// query would be one implicit transaction).
async fn each(db: &tokio_postgres::Client, statements: &str) {
    for stmt in statements
        .split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        db.batch_execute(stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
}

async fn client(p: &Pgsat, from: u64) -> RawClient {
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    c.start(from).await;
    c
}

fn row_of(op: &Op) -> &pb::Row {
    match op {
        Op::Insert(i) => i.row.as_ref().expect("row"),
        Op::Update(u) => u.row.as_ref().expect("row"),
        other => panic!("no new row in {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_common_type_arrives_as_postgres_text() {
    let schema = "
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
        CREATE TABLE types (
            id serial PRIMARY KEY, i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8,
            t text, b bytea, bo boolean, u uuid, j json, jb jsonb, ts timestamp, tstz timestamptz,
            d date, tm time, iv interval, arr int[], tarr text[], e mood, dom posint, vc varchar(10));";
    let (pg, _dir, p) = setup(schema, &[]).await;
    let db = pg.client().await;
    let mut c = client(&p, 0).await;
    db.batch_execute(
        r#"INSERT INTO types (i2,i4,i8,num,f4,f8,t,b,bo,u,j,jb,ts,tstz,d,tm,iv,arr,tarr,e,dom,vc) VALUES
        (-32768, 2147483647, -9223372036854775808, 12345678901234567890.000000001, 1.5, 'NaN',
         E'héllo "quoted" \n new\\line ✓ 日本', '\x00ff10', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '{"a": [1, 2]}', '{"b": {"c": null}}', '2024-02-29 23:59:59.123456', '2024-01-01 12:00:00+05:30',
         '0001-01-01', '24:00:00', '1 year 2 mons -3 days 04:05:06.789', '{1,NULL,3}', '{"a b","c,d",NULL}',
         'happy', 7, 'short'),
        (0, 0, 0, 'NaN', '-Infinity', 'Infinity', '', '\x', false, '00000000-0000-0000-0000-000000000000',
         'null', '[]', 'infinity', '-infinity', 'infinity', '00:00', '0', '{}', '{}', 'sad', 1, ''),
        (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#,
    )
    .await
    .expect("insert");
    let mut r = TxnReader::default();
    let txn = c.read_txns_within(&mut r, 1, T).await.remove(0);
    let rel = r
        .relations
        .values()
        .find(|x| x.table == "types")
        .expect("Relation");
    let cols: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
    db.batch_execute(SAME_TEXT).await.expect("settings");
    let expect_sql = format!(
        "SELECT {} FROM types ORDER BY id",
        cols.iter()
            .map(|c| format!("CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = db.query(expect_sql.as_str(), &[]).await.expect("select");
    let inserts: Vec<&pb::Row> = txn.ops.iter().map(row_of).collect();
    assert_eq!(inserts.len(), rows.len());
    for (got, want) in inserts.iter().zip(&rows) {
        for (i, name) in cols.iter().enumerate() {
            let w: Option<String> = want.get(i);
            assert_eq!(cell(got, i), w, "column {name}");
        }
    }
    // format('%s') is the type's output function, as pgoutput uses; for
    // everything but boolean that is also `::text`.
    let text_cast = db
        .query_one(
            "SELECT t::text, num::text, tstz::text, iv::text FROM types ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .expect("cast");
    for (i, name) in ["t", "num", "tstz", "iv"].iter().enumerate() {
        let idx = cols.iter().position(|c| c == name).expect("column");
        let w: Option<String> = text_cast.get(i);
        assert_eq!(cell(inserts[0], idx), w, "{name}::text");
    }
    // Relation metadata: type names and keys.
    let col = |n: &str| rel.columns.iter().find(|c| c.name == n).expect("col");
    assert_eq!(col("e").type_name, "mood");
    assert_eq!(col("vc").type_name, "character varying(10)");
    assert_eq!(col("arr").type_name, "integer[]");
    assert!(col("id").primary_key && !col("i4").primary_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identities_and_primary_key_change() {
    let schema = "
        CREATE TABLE r_default (id int PRIMARY KEY, v text);
        CREATE TABLE r_full (id int PRIMARY KEY, v text); ALTER TABLE r_full REPLICA IDENTITY FULL;
        CREATE TABLE r_index (id int NOT NULL, k int NOT NULL, v text);
        CREATE UNIQUE INDEX r_index_k ON r_index (k); ALTER TABLE r_index REPLICA IDENTITY USING INDEX r_index_k;
        CREATE TABLE r_nothing (id int, v text); ALTER TABLE r_nothing REPLICA IDENTITY NOTHING;";
    let (pg, _dir, p) = setup(schema, &[]).await;
    let db = pg.client().await;
    let mut c = client(&p, 0).await;
    each(
        &db,
        "INSERT INTO r_default VALUES (1, 'a');
         INSERT INTO r_full VALUES (1, 'a');
         INSERT INTO r_index VALUES (1, 10, 'a');
         INSERT INTO r_nothing VALUES (1, 'a');
         UPDATE r_default SET v = 'b';
         UPDATE r_full SET v = 'b';
         UPDATE r_index SET v = 'b';
         UPDATE r_default SET id = 2;
         DELETE FROM r_default;
         DELETE FROM r_full;
         DELETE FROM r_index;
         TRUNCATE r_nothing, r_full;
         INSERT INTO r_default VALUES (9, 'end')",
    )
    .await;
    let mut r = TxnReader::default();
    let txns = c.read_txns_within(&mut r, 13, T).await;
    let rel_id = |t: &str| {
        r.relations
            .values()
            .find(|x| x.table == t)
            .expect(t)
            .relation_id
    };
    let (d, f, ix) = (rel_id("r_default"), rel_id("r_full"), rel_id("r_index"));
    let op = |i: usize| &txns[i].ops[0];
    // Updates: DEFAULT without key change sends no old row; FULL sends all of it.
    match op(4) {
        Op::Update(u) => {
            assert_eq!(u.relation_id, d);
            assert!(u.old_row.is_none());
        }
        o => panic!("{o:?}"),
    }
    match op(5) {
        Op::Update(u) => {
            assert_eq!(u.relation_id, f);
            let old = u.old_row.as_ref().expect("FULL old row");
            assert_eq!(cell(old, 1).as_deref(), Some("a"));
        }
        o => panic!("{o:?}"),
    }
    match op(6) {
        Op::Update(u) => assert_eq!(u.relation_id, ix),
        o => panic!("{o:?}"),
    }
    // Primary key change: the old key comes along.
    match op(7) {
        Op::Update(u) => {
            assert_eq!(
                cell(u.old_row.as_ref().expect("old key"), 0).as_deref(),
                Some("1")
            );
            assert_eq!(cell(u.row.as_ref().expect("row"), 0).as_deref(), Some("2"));
        }
        o => panic!("{o:?}"),
    }
    // Deletes carry the identity: key for DEFAULT / USING INDEX, all for FULL.
    match op(8) {
        Op::Delete(x) => assert_eq!(
            cell(x.old_row.as_ref().expect("key"), 0).as_deref(),
            Some("2")
        ),
        o => panic!("{o:?}"),
    }
    match op(9) {
        Op::Delete(x) => assert_eq!(
            cell(x.old_row.as_ref().expect("full"), 1).as_deref(),
            Some("b")
        ),
        o => panic!("{o:?}"),
    }
    match op(10) {
        Op::Delete(x) => assert_eq!(
            cell(x.old_row.as_ref().expect("key"), 1).as_deref(),
            Some("10")
        ),
        o => panic!("{o:?}"),
    }
    // NOTHING: updates and deletes are refused by Postgres itself for a
    // published table; its inserts and truncates still flow.
    let truncates: Vec<_> = txns
        .iter()
        .flat_map(|t| &t.ops)
        .filter_map(|o| match o {
            Op::Truncate(t) => Some(t.relation_ids.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(truncates.len(), 1);
    let mut ids = truncates[0].clone();
    ids.sort();
    let mut want = vec![rel_id("r_nothing"), f];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_marked_or_filled_by_replica_identity() {
    let schema = "
        CREATE TABLE big_default (id int PRIMARY KEY, n int, doc text);
        CREATE TABLE big_full (id int PRIMARY KEY, n int, doc text); ALTER TABLE big_full REPLICA IDENTITY FULL;";
    let (pg, _dir, p) = setup(schema, &[]).await;
    let db = pg.client().await;
    let mut c = client(&p, 0).await;
    // ~128 KB of incompressible text: stored out of line (TOAST).
    let big = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 4000))";
    each(
        &db,
        &format!(
            "INSERT INTO big_default VALUES (1, 0, {big});
             INSERT INTO big_full VALUES (1, 0, {big});
             UPDATE big_default SET n = 1;
             UPDATE big_full SET n = 1"
        ),
    )
    .await;
    let mut r = TxnReader::default();
    let txns = c.read_txns_within(&mut r, 4, T).await;
    let doc_full: String = db
        .query_one("SELECT doc FROM big_full", &[])
        .await
        .expect("doc")
        .get(0);
    match &txns[2].ops[0] {
        Op::Update(u) => {
            let row = u.row.as_ref().expect("row");
            assert_eq!(
                row.unchanged.first().copied().unwrap_or(0) & (0x80 >> 2),
                0x80 >> 2,
                "doc unchanged bit"
            );
            assert!(row.values[2].is_empty());
            assert_eq!(cell(row, 1).as_deref(), Some("1"));
        }
        o => panic!("{o:?}"),
    }
    match &txns[3].ops[0] {
        Op::Update(u) => {
            let row = u.row.as_ref().expect("row");
            assert!(
                row.unchanged.iter().all(|b| *b == 0),
                "FULL: no unchanged bit"
            );
            assert_eq!(
                cell(row, 2).as_deref(),
                Some(doc_full.as_str()),
                "filled from the old row"
            );
        }
        o => panic!("{o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_writers_arrive_whole_in_commit_order() {
    let (pg, _dir, p) = setup(
        "CREATE TABLE w (id bigserial PRIMARY KEY, writer int, seq int, xid bigint);",
        &[],
    )
    .await;
    let mut c = client(&p, 0).await;
    let mut writers = Vec::new();
    for w in 0..50 {
        let db = pg.client().await;
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for s in 0..10 {
                let tx_rows = 1 + (w + s) % 4;
                let sql = format!(
                    "BEGIN; INSERT INTO w (writer, seq, xid) SELECT {w}, {s}, txid_current() FROM generate_series(1, {tx_rows}); COMMIT;"
                );
                db.batch_execute(&sql).await.expect("write");
                committed.push((w, s, tx_rows));
            }
            committed
        }));
    }
    let mut expected = BTreeMap::new();
    for wr in writers {
        for (w, s, n) in wr.await.expect("writer") {
            expected.insert((w, s), n);
        }
    }
    let mut r = TxnReader::default();
    let txns = c.read_txns_within(&mut r, expected.len(), T).await;
    let mut last = 0;
    let mut seen = HashSet::new();
    for t in &txns {
        assert!(t.lsn > last, "commit order");
        last = t.lsn;
        let rows: Vec<(i64, i64)> = t
            .ops
            .iter()
            .map(|o| {
                let row = row_of(o);
                (
                    cell(row, 1).expect("writer").parse().expect("int"),
                    cell(row, 2).expect("seq").parse().expect("int"),
                )
            })
            .collect();
        let key = rows[0];
        assert!(
            rows.iter().all(|x| *x == key),
            "one writer transaction per Begin…Commit"
        );
        let want = expected[&(key.0 as i32, key.1 as i32)];
        assert_eq!(rows.len() as i32, want, "transaction whole");
        assert!(seen.insert(key), "no duplicate");
    }
    assert_eq!(seen.len(), expected.len(), "nothing missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_row_transaction_arrives_whole() {
    let (pg, _dir, p) = setup("CREATE TABLE huge (id int PRIMARY KEY, v text);", &[]).await;
    let mut c = client(&p, 0).await;
    pg.client()
        .await
        .batch_execute("INSERT INTO huge SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let mut frames = 0;
    let mut txns = Vec::new();
    while txns.is_empty() {
        let f = c.recv_timeout(T).await.expect("frame");
        if f.ty == 10 {
            frames += 1;
        }
        txns.extend(r.feed(&f));
    }
    let t = &txns[0];
    assert_eq!(t.ops.len(), 100_000);
    assert!(
        frames > 1,
        "a large transaction is split across OpLog messages"
    );
    let ids: HashSet<String> = t
        .ops
        .iter()
        .map(|o| cell(row_of(o), 0).expect("id"))
        .collect();
    assert_eq!(ids.len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_mid_stream_sends_new_relation_and_resume_gets_the_old_one_first() {
    let (pg, _dir, p) = setup(
        "CREATE TABLE evolving (id int PRIMARY KEY, a text, b text);",
        &[],
    )
    .await;
    let db = pg.client().await;
    let mut c = client(&p, 0).await;
    each(
        &db,
        "INSERT INTO evolving VALUES (1, 'a1', 'b1');
         ALTER TABLE evolving ADD COLUMN c int;
         INSERT INTO evolving VALUES (2, 'a2', 'b2', 2);
         ALTER TABLE evolving DROP COLUMN a;
         INSERT INTO evolving VALUES (3, 'b3', 3)",
    )
    .await;
    let mut r = TxnReader::default();
    let mut rels: Vec<Vec<String>> = Vec::new();
    let mut txns = Vec::new();
    while txns.len() < 3 {
        let f = c.recv_timeout(T).await.expect("frame");
        if f.ty == 9 {
            let rel = <pb::Relation as prost::Message>::decode(f.body.clone()).expect("rel");
            if rel.table == "evolving" {
                rels.push(rel.columns.iter().map(|c| c.name.clone()).collect());
            }
        }
        txns.extend(r.feed(&f));
    }
    assert_eq!(
        rels,
        vec![
            vec!["id", "a", "b"],
            vec!["id", "a", "b", "c"],
            vec!["id", "b", "c"]
        ]
    );
    assert_eq!(cell(row_of(&txns[2].ops[0]), 1).as_deref(), Some("b3"));
    assert_eq!(cell(row_of(&txns[2].ops[0]), 2).as_deref(), Some("3"));

    // A client resuming before the DDL gets the definition in force there
    // first, then the new one before the first transaction that uses it.
    let mut c2 = client(&p, txns[0].lsn - 1).await;
    let mut r2 = TxnReader::default();
    let mut order = Vec::new();
    let mut got = 0;
    while got < 2 {
        let f = c2.recv_timeout(T).await.expect("frame");
        if f.ty == 9 {
            let rel = <pb::Relation as prost::Message>::decode(f.body.clone()).expect("rel");
            order.push(format!("rel:{}", rel.columns.len()));
        }
        let done = r2.feed(&f);
        for t in &done {
            order.push(format!(
                "txn:{}",
                t.lsn == txns[0].lsn || t.lsn == txns[1].lsn
            ));
        }
        got += done.len();
    }
    assert_eq!(order, ["rel:3", "txn:true", "rel:4", "txn:true"]);
}
