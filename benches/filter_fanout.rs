//! Filter path only, in process (not the end-to-end fan-out
//! benchmark): N sessions, each a different user, 10-row transactions whose
//! rows belong to random users; every session gets each transaction through
//! the shared `FilterCache` (parse + value index once per transaction, one
//! routed evaluation per view). Prints the CPU per source row and per
//! session-transaction for N = 100 and N = 1000, and their ratio. No
//! assertions: run with `cargo bench --bench filter_fanout`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use pgsat::log::TxnEntry;
use pgsat::protocol::pb;
use pgsat::protocol::pb::trans_op::Op;
use pgsat::rules::{FilterCache, RelFilter, Rules, RulesFile, Subscription, View};
use prost::Message;
use rand::{Rng, SeedableRng};

const TXNS: usize = 2_000;
const ROWS: usize = 10;

fn frame(ty: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(body.len() as u32 + 1);
    b.put_u8(ty);
    b.put_slice(body);
    b.freeze()
}

fn relation() -> Bytes {
    let cols = ["id", "owner_id", "title"];
    let r = pb::Relation {
        relation_id: 1,
        schema: "public".into(),
        table: "todos".into(),
        columns: cols
            .iter()
            .map(|c| pb::Column {
                name: c.to_string(),
                type_oid: 25,
                type_name: "text".into(),
                primary_key: *c == "id",
                nullable: false,
            })
            .collect(),
    };
    frame(9, &r.encode_to_vec())
}

fn txn(lsn: u64, owners: &[String]) -> TxnEntry {
    let mut ops = vec![Op::Begin(pb::Begin {
        xid: lsn as u32,
        commit_lsn: lsn,
        commit_time: 1,
    })];
    for (i, o) in owners.iter().enumerate() {
        ops.push(Op::Insert(pb::Insert {
            relation_id: 1,
            row: Some(pb::Row {
                nulls: Bytes::from_static(&[0]),
                values: vec![
                    Bytes::from(i.to_string()),
                    Bytes::from(o.clone()),
                    Bytes::from_static(b"a todo title of some length"),
                ],
                unchanged: Bytes::new(),
            }),
        }));
    }
    ops.push(Op::Commit(pb::Commit {
        lsn,
        commit_time: 1,
    }));
    let log = pb::OpLog {
        ops: ops
            .into_iter()
            .map(|o| pb::TransOp { op: Some(o) })
            .collect(),
    };
    TxnEntry {
        commit_lsn: lsn,
        xid: lsn as u32,
        commit_time: 1,
        relation_ids: vec![1],
        changes: ROWS as u32,
        frames: frame(10, &log.encode_to_vec()),
    }
}

/// A session: its cache key and relation filters.
type Session = (Arc<str>, HashMap<u32, Arc<RelFilter>>);

/// (ns per source row, ns per session-transaction, rows delivered).
fn run(n: usize) -> (f64, f64, usize) {
    let rules = Rules::from_file(
        RulesFile::parse(
            "bench.toml",
            "[[table]]\nname = \"todos\"\nread = \"owner_id = auth.user_id\"\n",
        )
        .expect("rules"),
    );
    let rel = relation();
    let sessions: Vec<Session> = (0..n)
        .map(|i| {
            let view = View::new(&rules, &serde_json::json!({"user_id": format!("u{i}")}));
            let sub = Subscription::all();
            let f = RelFilter::from_frame(&rel, &view, &sub).expect("relation");
            let key: Arc<str> = Arc::from(format!("{}|", view.id()));
            (key, HashMap::from([(1, Arc::new(f))]))
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let txns: Vec<TxnEntry> = (0..TXNS)
        .map(|t| {
            let owners: Vec<String> = (0..ROWS)
                .map(|_| format!("u{}", rng.random_range(0..n)))
                .collect();
            txn(t as u64 + 1, &owners)
        })
        .collect();
    let cache = FilterCache::default();
    let mut delivered = 0usize;
    let start = Instant::now();
    for t in &txns {
        for (key, rels) in &sessions {
            let f = cache.get(t, key, &|id| rels.get(&id).cloned());
            if f.frames.is_some() {
                delivered += 1;
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64;
    (ns / (TXNS * ROWS) as f64, ns / (TXNS * n) as f64, delivered)
}

fn main() {
    let (row100, st100, d100) = run(100);
    let (row1000, st1000, d1000) = run(1000);
    println!("filter path, {TXNS} transactions of {ROWS} rows, each session a different user:");
    println!(
        "  100 sessions:  {row100:.0} ns per source row, {st100:.0} ns per session-transaction, {d100} transactions delivered"
    );
    println!(
        "  1000 sessions: {row1000:.0} ns per source row, {st1000:.0} ns per session-transaction, {d1000} transactions delivered"
    );
    println!(
        "  ratio 1000/100: per session-transaction {:.2} (flat = 1.0), per source row {:.2} (sessions pull: grows with sessions)",
        st1000 / st100,
        row1000 / row100
    );
}
