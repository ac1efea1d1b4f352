//! Filtering of stored transactions on values: frames built with prost
//! (the stored encoding is prost's), filtered, decoded back.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use serde_json::json;

use super::filter::{filter, FilterCache, RelFilter, Subscription};
use super::wire::parse_txn;
use super::{Rules, RulesFile, View};
use crate::log::TxnEntry;
use crate::protocol::fixtures::{text_relation, text_row};
use crate::protocol::pb;
use crate::protocol::pb::trans_op::Op;

fn frame(ty: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(body.len() as u32 + 1);
    b.put_u8(ty);
    b.put_slice(body);
    b.freeze()
}

fn relation(id: u32, table: &str, cols: &[&str]) -> Bytes {
    frame(9, &text_relation(id, table, cols).encode_to_vec())
}

fn row(vals: &[Option<&str>]) -> pb::Row {
    text_row(vals)
}

const LSN: u64 = 0x1_0000;

/// A stored transaction of `ops`, split into frames of `per_frame` ops.
fn txn(ops: Vec<Op>, per_frame: usize) -> TxnEntry {
    let mut all = vec![Op::Begin(pb::Begin {
        xid: 77,
        commit_lsn: LSN,
        commit_time: 123,
    })];
    all.extend(ops);
    all.push(Op::Commit(pb::Commit {
        lsn: LSN,
        commit_time: 123,
    }));
    let mut frames = BytesMut::new();
    for chunk in all.chunks(per_frame) {
        let log = pb::OpLog {
            ops: chunk
                .iter()
                .map(|o| pb::TransOp {
                    op: Some(o.clone()),
                })
                .collect(),
        };
        frames.put_slice(&frame(10, &log.encode_to_vec()));
    }
    TxnEntry {
        commit_lsn: LSN,
        xid: 77,
        commit_time: 123,
        relation_ids: vec![1, 2],
        changes: 1,
        frames: frames.freeze(),
    }
}

fn decode(frames: &Bytes) -> Vec<Op> {
    let mut out = Vec::new();
    for f in crate::protocol::frame::split_frames(frames) {
        assert_eq!(f[4], 10);
        let log = pb::OpLog::decode(&f[5..]).expect("OpLog");
        out.extend(log.ops.into_iter().map(|o| o.op.expect("op")));
    }
    out
}

fn ins(rel: u32, v: &[Option<&str>]) -> Op {
    Op::Insert(pb::Insert {
        relation_id: rel,
        row: Some(row(v)),
    })
}
fn upd(rel: u32, new: &[Option<&str>], old: Option<&[Option<&str>]>) -> Op {
    Op::Update(pb::Update {
        relation_id: rel,
        row: Some(row(new)),
        old_row: old.map(row),
    })
}
fn del(rel: u32, v: &[Option<&str>]) -> Op {
    Op::Delete(pb::Delete {
        relation_id: rel,
        old_row: Some(row(v)),
    })
}

struct Session {
    rels: HashMap<u32, Arc<RelFilter>>,
}

impl Session {
    fn new(view: &View, sub: &Subscription) -> Session {
        let mut rels = HashMap::new();
        for (id, f) in [
            (1, relation(1, "todos", &["id", "owner", "title"])),
            (2, relation(2, "secrets", &["id", "owner"])),
        ] {
            rels.insert(id, Arc::new(RelFilter::from_frame(&f, view, sub).unwrap()));
        }
        Session { rels }
    }
    fn run(&self, t: &TxnEntry) -> Option<Vec<Op>> {
        let p = parse_txn(&t.frames).unwrap();
        let f = filter(t, &p, &|id| self.rels.get(&id).cloned());
        f.frames.as_ref().map(|b| {
            assert_eq!(
                crate::protocol::frame::split_frames(b).count(),
                f.frame_count
            );
            let ops = decode(b);
            assert!(matches!(ops.first(), Some(Op::Begin(b)) if b.xid == 77 && b.commit_lsn == LSN && b.commit_time == 123));
            assert!(matches!(ops.last(), Some(Op::Commit(c)) if c.lsn == LSN));
            ops[1..ops.len() - 1].to_vec()
        })
    }
}

fn rules() -> Rules {
    Rules::from_file(
        RulesFile::parse(
            "r.toml",
            "[[table]]\nname = \"todos\"\nread = \"owner = auth.user_id OR owner IN auth.teams\"\n",
        )
        .unwrap(),
    )
}

#[test]
fn rows_moves_and_truncates() {
    let r = rules();
    let alice = View::new(&r, &json!({"user_id": "alice", "teams": ["red"]}));
    let s = Session::new(&alice, &Subscription::all());
    let a = Some("alice");
    let b = Some("bob");
    let t = txn(
        vec![
            ins(1, &[Some("1"), a, Some("mine")]),
            ins(1, &[Some("2"), b, Some("not mine")]),
            ins(1, &[Some("3"), None, Some("null owner")]),
            ins(1, &[Some("4"), Some("red"), Some("team")]),
            ins(2, &[Some("9"), a]),
            upd(
                1,
                &[Some("1"), a, Some("x")],
                Some(&[Some("1"), a, Some("mine")]),
            ),
            upd(
                1,
                &[Some("2"), a, Some("in")],
                Some(&[Some("2"), b, Some("no")]),
            ),
            upd(
                1,
                &[Some("1"), b, Some("out")],
                Some(&[Some("1"), a, Some("x")]),
            ),
            upd(
                1,
                &[Some("2"), b, Some("none")],
                Some(&[Some("2"), b, Some("no")]),
            ),
            upd(1, &[Some("4"), Some("red"), Some("no old")], None),
            del(1, &[Some("4"), Some("red"), Some("team")]),
            del(1, &[Some("2"), b, Some("none")]),
            Op::Truncate(pb::Truncate {
                relation_ids: vec![2, 1],
            }),
        ],
        3,
    );
    let ops = s.run(&t).expect("something readable");
    let expect = vec![
        ins(1, &[Some("1"), a, Some("mine")]),
        ins(1, &[Some("4"), Some("red"), Some("team")]),
        upd(
            1,
            &[Some("1"), a, Some("x")],
            Some(&[Some("1"), a, Some("mine")]),
        ),
        ins(1, &[Some("2"), a, Some("in")]),
        del(1, &[Some("1"), a, Some("x")]),
        upd(1, &[Some("4"), Some("red"), Some("no old")], None),
        del(1, &[Some("4"), Some("red"), Some("team")]),
        Op::Truncate(pb::Truncate {
            relation_ids: vec![1],
        }),
    ];
    assert_eq!(ops, expect);

    // A view that reads nothing of it: nothing at all.
    let carol = View::new(&r, &json!({"user_id": "carol"}));
    let t2 = txn(
        vec![
            ins(1, &[Some("2"), b, None]),
            ins(2, &[Some("1"), Some("carol")]),
        ],
        10,
    );
    assert_eq!(Session::new(&carol, &Subscription::all()).run(&t2), None);
    // Subscribed to another table: nothing of todos, not even the truncate.
    let only = Subscription::from_names(&["public.secrets".into()]).unwrap();
    assert_eq!(Session::new(&alice, &only).run(&t), None);

    // Everything readable: the stored bytes themselves.
    let all = View::unrestricted();
    let sa = Session::new(&all, &Subscription::all());
    let p = parse_txn(&t.frames).unwrap();
    let f = filter(&t, &p, &|id| sa.rels.get(&id).cloned());
    assert_eq!(f.frames.as_ref(), Some(&t.frames));
    assert_eq!(f.relation_ids, vec![1, 2]);
}

#[test]
fn big_transactions_are_split_into_frames() {
    let r = rules();
    let alice = View::new(&r, &json!({"user_id": "alice"}));
    let s = Session::new(&alice, &Subscription::all());
    let big = "x".repeat(10_000);
    let mut ops = Vec::new();
    for i in 0..200 {
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        ops.push(ins(1, &[Some(&i.to_string()), Some(owner), Some(&big)]));
    }
    let t = txn(ops, 20);
    let p = parse_txn(&t.frames).unwrap();
    let f = filter(&t, &p, &|id| s.rels.get(&id).cloned());
    let frames = f.frames.clone().unwrap();
    assert!(f.frame_count >= 4, "{}", f.frame_count);
    for fr in crate::protocol::frame::split_frames(&frames) {
        assert!(fr.len() - 5 <= crate::ingest::MAX_FRAME_BODY);
    }
    let got = decode(&frames);
    assert_eq!(got.len(), 100 + 2);
}

#[test]
fn cache_shares_by_key() {
    let r = rules();
    let alice = View::new(&r, &json!({"user_id": "alice"}));
    let s = Session::new(&alice, &Subscription::all());
    let t = txn(vec![ins(1, &[Some("1"), Some("alice"), None])], 10);
    let cache = FilterCache::default();
    let key: Arc<str> = Arc::from(alice.id());
    let a = cache.get(&t, &key, &|id| s.rels.get(&id).cloned());
    let b = cache.get(&t, &key, &|_| panic!("computed twice"));
    assert!(Arc::ptr_eq(&a, &b));
}

/// The value-index routing gives exactly what evaluating every op gives.
#[test]
fn routing_matches_full_evaluation() {
    use super::route::Route;
    use rand::{Rng, SeedableRng};
    let r = Rules::from_file(
        RulesFile::parse(
            "r.toml",
            "[[table]]\nname = \"todos\"\nread = \"(owner = auth.user_id OR title IN auth.teams) AND (id = '1' OR owner = auth.user_id OR title = 'x' OR true)\"\n[[table]]\nname = \"secrets\"\nread = \"owner = auth.user_id AND id = 2\"\n",
        )
        .unwrap(),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let names = ["alice", "bob", "carol", "red", "x"];
    let pick = |rng: &mut rand::rngs::StdRng| -> Option<&'static str> {
        if rng.random_range(0..6) == 0 {
            None
        } else {
            Some(names[rng.random_range(0..names.len())])
        }
    };
    for round in 0..200 {
        let mut ops = Vec::new();
        for _ in 0..rng.random_range(1..12) {
            let (a, b, c, d) = (
                pick(&mut rng),
                pick(&mut rng),
                pick(&mut rng),
                pick(&mut rng),
            );
            let ids = ["1", "2", "3"];
            let id = Some(ids[rng.random_range(0..3)]);
            ops.push(match rng.random_range(0..8) {
                0 | 1 => ins(1, &[id, a, b]),
                2 => ins(2, &[id, a]),
                3 | 4 => upd(1, &[id, a, b], Some(&[id, c, d])),
                5 => upd(2, &[id, a], None),
                6 => del(1, &[id, a, b]),
                _ => Op::Truncate(pb::Truncate {
                    relation_ids: vec![2],
                }),
            });
        }
        let t = txn(ops, 4);
        let p = parse_txn(&t.frames).unwrap();
        let cache = FilterCache::default();
        for u in ["alice", "bob", "carol"] {
            let teams: Vec<&str> = names
                .iter()
                .copied()
                .filter(|_| rng.random_range(0..3) == 0)
                .collect();
            let v = View::new(&r, &json!({"user_id": u, "teams": teams}));
            let s = Session::new(&v, &Subscription::all());
            let full = filter(&t, &p, &|id| s.rels.get(&id).cloned());
            let key: Arc<str> = Arc::from(v.id());
            let routed = cache.get(&t, &key, &|id| s.rels.get(&id).cloned());
            assert_eq!(*routed, full, "round {round} user {u} teams {teams:?}");
            // The router's test (server::router): a view whose routes no
            // row value hits gets nothing from the transaction.
            let idx = cache.parsed(&t).unwrap();
            let route = |rel: u32| s.rels.get(&rel).map_or(Route::Nothing, |f| Route::of(f));
            let hit = idx.relations().any(|rel| match route(rel) {
                Route::Nothing => false,
                Route::All => true,
                Route::Values(v) => v
                    .iter()
                    .any(|(col, text)| idx.index(rel, *col).contains_key(text)),
            }) || idx.truncated().any(|rel| route(rel) != Route::Nothing);
            assert!(
                hit || full.frames.is_none(),
                "round {round} user {u} teams {teams:?}: readable but not routed"
            );
        }
    }
}
