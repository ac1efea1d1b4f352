//! Assembler tests: hand-built pgoutput bytes in, frames decoded back with
//! prost and compared field by field (and byte for byte with prost's own
//! encoding).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message;

use super::*;
use crate::pg::catalog::{ColumnMeta, RelationMeta};
use crate::pg::lsn::PG_EPOCH_OFFSET_MICROS;
use crate::pg::pgoutput::testutil::{self as pgo, C};
use crate::pg::pgoutput::{decode, Relation};
use crate::protocol::pb::{self, trans_op::Op};

/// Our own `Catalog` for tests: type names from oids, `id` is the primary
/// key and NOT NULL, others nullable unless listed in `not_null`.
#[derive(Default)]
struct TestCatalog {
    calls: AtomicUsize,
    fail: AtomicBool,
    short: AtomicBool,
    not_null: Mutex<Vec<String>>,
}

impl Catalog for TestCatalog {
    fn relation_meta(
        &self,
        rel: &Relation,
    ) -> impl Future<Output = Result<RelationMeta, CatalogError>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let not_null = self.not_null.lock().unwrap().clone();
        let mut columns: Vec<ColumnMeta> = rel
            .columns
            .iter()
            .map(|c| ColumnMeta {
                type_name: format!("type{}", c.type_oid),
                primary_key: c.name == "id",
                nullable: c.name != "id" && !not_null.contains(&c.name),
            })
            .collect();
        if self.short.load(Ordering::SeqCst) {
            columns.pop();
        }
        let r = if self.fail.load(Ordering::SeqCst) {
            Err(CatalogError::Invalid {
                relation_id: rel.relation_id,
                detail: "test failure".into(),
            })
        } else {
            Ok(RelationMeta { columns })
        };
        std::future::ready(r)
    }
}

const REL: u32 = 16_384;
const USERS: u32 = 16_390;

fn items_rel(ident: u8) -> Bytes {
    pgo::relation(
        REL,
        "public",
        "items",
        ident,
        &[
            (true, "id", 23, -1),
            (false, "name", 25, -1),
            (false, "note", 25, -1),
        ],
    )
}

fn users_rel() -> Bytes {
    pgo::relation(
        USERS,
        "public",
        "users",
        b'd',
        &[(true, "id", 25, -1), (false, "email", 25, -1)],
    )
}

fn asm() -> TxnAssembler<TestCatalog> {
    TxnAssembler::new(
        TestCatalog::default(),
        Some(UsersTable::from_setting("users", "id")),
    )
}

async fn feed(a: &mut TxnAssembler<TestCatalog>, msgs: &[Bytes]) -> Result<Vec<Step>, IngestError> {
    let mut out = Vec::new();
    for m in msgs {
        let msg = decode(m).unwrap_or_else(|e| panic!("test message does not decode: {e}"));
        out.push(a.push(msg).await?);
    }
    Ok(out)
}

/// The single committed transaction among `steps`.
fn committed(steps: Vec<Step>) -> Committed {
    let mut c: Vec<Committed> = steps
        .into_iter()
        .filter_map(|s| match s {
            Step::Committed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(c.len(), 1, "expected exactly one commit");
    c.pop().unwrap()
}

fn relations(steps: &[Step]) -> Vec<Arc<RelationEntry>> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Relation(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Splits concatenated TCP frames, checking each length prefix.
fn split_frames(b: &Bytes) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < b.len() {
        let len = u32::from_be_bytes(b[p..p + 4].try_into().unwrap()) as usize;
        assert!(
            len >= 1 && p + 4 + len <= b.len(),
            "bad frame length {len} at {p}"
        );
        out.push((b[p + 4], b.slice(p + 5..p + 4 + len)));
        p += 4 + len;
    }
    assert_eq!(p, b.len());
    out
}

/// Decodes every OpLog frame; each body must equal prost's own encoding.
fn oplogs(t: &TxnEntry) -> Vec<Vec<Op>> {
    split_frames(&t.frames)
        .into_iter()
        .map(|(ty, body)| {
            assert_eq!(ty, OPLOG_FRAME_TYPE);
            let log = pb::OpLog::decode(body.clone()).expect("OpLog decodes");
            assert_eq!(log.encode_to_vec(), body.to_vec(), "not prost's encoding");
            log.ops.into_iter().map(|o| o.op.expect("op set")).collect()
        })
        .collect()
}

fn all_ops(t: &TxnEntry) -> Vec<Op> {
    oplogs(t).into_iter().flatten().collect()
}

fn row(nulls: &[u8], values: &[&str], unchanged: &[u8]) -> pb::Row {
    pb::Row {
        nulls: Bytes::copy_from_slice(nulls),
        values: values
            .iter()
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .collect(),
        unchanged: Bytes::copy_from_slice(unchanged),
    }
}

const TS: i64 = 770_000_000_123_456;

fn begin(final_lsn: u64, xid: u32) -> Bytes {
    pgo::begin(final_lsn, TS, xid)
}

fn commit(final_lsn: u64, end_lsn: u64) -> Bytes {
    pgo::commit(final_lsn, end_lsn, TS)
}

#[tokio::test]
async fn insert_transaction_whole() {
    let mut a = asm();
    let steps = feed(
        &mut a,
        &[
            begin(0x100, 7),
            items_rel(b'd'),
            pgo::insert(REL, &[C::T("1"), C::T("héllo"), C::N]),
            pgo::origin(5, "x"),
            pgo::message(true, 0x100, "p", b"skip me"),
            pgo::type_msg(9, "public", "t"),
            pgo::insert(REL, &[C::T("2"), C::T(""), C::T("n")]),
            commit(0x100, 0x130),
        ],
    )
    .await
    .unwrap();
    assert_eq!(relations(&steps).len(), 1);
    let c = committed(steps);
    assert_eq!(c.end_lsn, 0x130);
    assert!(c.removed_users.is_empty());
    let t = c.txn.unwrap();
    assert_eq!(t.commit_lsn, 0x130);
    assert_eq!(t.xid, 7);
    assert_eq!(t.commit_time, TS + PG_EPOCH_OFFSET_MICROS);
    assert_eq!(t.relation_ids, vec![REL]);
    assert_eq!(t.changes, 2);
    assert_eq!(
        all_ops(&t),
        vec![
            Op::Begin(pb::Begin {
                xid: 7,
                commit_lsn: 0x130,
                commit_time: TS + PG_EPOCH_OFFSET_MICROS
            }),
            Op::Insert(pb::Insert {
                relation_id: REL,
                row: Some(row(&[0b0010_0000], &["1", "héllo", ""], &[])),
            }),
            Op::Insert(pb::Insert {
                relation_id: REL,
                row: Some(row(&[0], &["2", "", "n"], &[])),
            }),
            Op::Commit(pb::Commit {
                lsn: 0x130,
                commit_time: TS + PG_EPOCH_OFFSET_MICROS
            }),
        ]
    );
    assert_eq!(oplogs(&t).len(), 1);
}

#[tokio::test]
async fn relation_frame_contents() {
    let mut a = asm();
    let steps = feed(&mut a, &[items_rel(b'f')]).await.unwrap();
    let r = relations(&steps);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].relation_id, REL);
    let frames = split_frames(&r[0].frame);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, RELATION_FRAME_TYPE);
    let rel = pb::Relation::decode(frames[0].1.clone()).unwrap();
    let col = |name: &str, type_oid, pk, nullable| pb::Column {
        name: name.into(),
        type_oid,
        type_name: format!("type{type_oid}"),
        primary_key: pk,
        nullable,
    };
    assert_eq!(
        rel,
        pb::Relation {
            relation_id: REL,
            schema: "public".into(),
            table: "items".into(),
            // Under FULL every column carries pgoutput's key flag; the
            // primary key comes from the catalog.
            columns: vec![
                col("id", 23, true, false),
                col("name", 25, false, true),
                col("note", 25, false, true)
            ],
        }
    );
}

#[tokio::test]
async fn relation_emitted_only_when_changed() {
    let mut a = asm();
    let s = feed(&mut a, &[items_rel(b'd'), items_rel(b'd')])
        .await
        .unwrap();
    assert_eq!(relations(&s).len(), 1);
    assert!(matches!(s[1], Step::Nothing));
    // New column → new frame.
    let wider = pgo::relation(
        REL,
        "public",
        "items",
        b'd',
        &[
            (true, "id", 23, -1),
            (false, "name", 25, -1),
            (false, "note", 25, -1),
            (false, "extra", 16, -1),
        ],
    );
    let s = feed(&mut a, std::slice::from_ref(&wider)).await.unwrap();
    let r = relations(&s);
    assert_eq!(r.len(), 1);
    let rel = pb::Relation::decode(split_frames(&r[0].frame)[0].1.clone()).unwrap();
    assert_eq!(rel.columns.len(), 4);
    // Same pgoutput definition but the catalog now says NOT NULL → new frame.
    a.catalog().not_null.lock().unwrap().push("extra".into());
    let s = feed(&mut a, std::slice::from_ref(&wider)).await.unwrap();
    let r = relations(&s);
    assert_eq!(r.len(), 1);
    let rel = pb::Relation::decode(split_frames(&r[0].frame)[0].1.clone()).unwrap();
    assert!(!rel.columns[3].nullable);
    assert_eq!(a.catalog().calls.load(Ordering::SeqCst), 4);

    // A relation already in the log (restart) is not emitted again.
    let mut b = asm();
    b.note_relation_in_force(&r[0]);
    b.catalog().not_null.lock().unwrap().push("extra".into());
    let s = feed(&mut b, &[wider]).await.unwrap();
    assert!(relations(&s).is_empty());
    // …but a seeded relation alone does not let rows through.
    let mut c = asm();
    c.note_relation_in_force(&r[0]);
    let e = feed(
        &mut c,
        &[
            begin(1, 1),
            pgo::insert(REL, &[C::T("1"), C::N, C::N, C::N]),
        ],
    )
    .await
    .unwrap_err();
    assert!(matches!(e, IngestError::UnknownRelation { .. }), "{e}");
}

#[tokio::test]
async fn null_bitmask_over_eight_columns() {
    let cols: Vec<(bool, String, u32, i32)> = (0..11)
        .map(|i| {
            (
                i == 0,
                if i == 0 { "id".into() } else { format!("c{i}") },
                25,
                -1,
            )
        })
        .collect();
    let cols: Vec<(bool, &str, u32, i32)> = cols
        .iter()
        .map(|(k, n, o, t)| (*k, n.as_str(), *o, *t))
        .collect();
    let rel = pgo::relation(1, "public", "wide", b'd', &cols);
    let mut cells = vec![C::T("v"); 11];
    for i in [0, 7, 8, 10] {
        cells[i] = C::N;
    }
    let mut a = asm();
    let c = committed(
        feed(
            &mut a,
            &[begin(9, 1), rel, pgo::insert(1, &cells), commit(9, 10)],
        )
        .await
        .unwrap(),
    );
    let ops = all_ops(&c.txn.unwrap());
    let Op::Insert(ins) = &ops[1] else {
        panic!("not an insert: {:?}", ops[1])
    };
    let r = ins.row.as_ref().unwrap();
    assert_eq!(r.nulls.as_ref(), &[0b1000_0001, 0b1010_0000]);
    assert!(r.unchanged.is_empty());
    let vals: Vec<&[u8]> = r.values.iter().map(|v| v.as_ref()).collect();
    let mut want: Vec<&[u8]> = vec![b"v"; 11];
    for i in [0, 7, 8, 10] {
        want[i] = b"";
    }
    assert_eq!(vals, want);
}

#[tokio::test]
async fn unchanged_toast_filled_under_full() {
    let mut a = asm();
    let big = "x".repeat(3000);
    let c = committed(
        feed(
            &mut a,
            &[
                begin(9, 1),
                items_rel(b'f'),
                pgo::update(
                    REL,
                    Some((b'O', &[C::T("1"), C::T("a"), C::T(&big)])),
                    &[C::T("1"), C::T("b"), C::U],
                ),
                commit(9, 10),
            ],
        )
        .await
        .unwrap(),
    );
    let ops = all_ops(&c.txn.unwrap());
    assert_eq!(
        ops[1],
        Op::Update(pb::Update {
            relation_id: REL,
            row: Some(row(&[0], &["1", "b", &big], &[])),
            old_row: Some(row(&[0], &["1", "a", &big], &[])),
        })
    );
}

#[tokio::test]
async fn unchanged_toast_bit_under_default() {
    // 10 columns, column 9 unchanged (byte 1, bit 1 from the top).
    let cols: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let cols: Vec<(bool, &str, u32, i32)> = cols
        .iter()
        .enumerate()
        .map(|(i, n)| (i == 0, n.as_str(), 25, -1))
        .collect();
    let rel = pgo::relation(2, "public", "t", b'd', &cols);
    let mut cells = vec![C::T("v"); 10];
    cells[9] = C::U;
    cells[2] = C::U;
    cells[3] = C::N;
    let mut a = asm();
    let c = committed(
        feed(
            &mut a,
            &[
                begin(9, 1),
                rel,
                pgo::update(2, None, &cells),
                commit(9, 10),
            ],
        )
        .await
        .unwrap(),
    );
    let ops = all_ops(&c.txn.unwrap());
    let mut vals = vec!["v"; 10];
    vals[9] = "";
    vals[2] = "";
    vals[3] = "";
    assert_eq!(
        ops[1],
        Op::Update(pb::Update {
            relation_id: 2,
            row: Some(row(&[0b0001_0000, 0], &vals, &[0b0010_0000, 0b0100_0000])),
            old_row: None,
        })
    );
}

#[tokio::test]
async fn key_old_tuple_kept_as_sent_and_unchanged_not_filled_from_key() {
    let mut a = asm();
    let c = committed(
        feed(
            &mut a,
            &[
                begin(9, 1),
                items_rel(b'd'),
                pgo::update(
                    REL,
                    Some((b'K', &[C::T("1"), C::N, C::N])),
                    &[C::T("2"), C::T("b"), C::U],
                ),
                pgo::delete(REL, b'K', &[C::T("2"), C::N, C::N]),
                pgo::delete(REL, b'O', &[C::T("3"), C::T("c"), C::N]),
                commit(9, 10),
            ],
        )
        .await
        .unwrap(),
    );
    let t = c.txn.unwrap();
    assert_eq!(t.changes, 3);
    assert_eq!(t.relation_ids, vec![REL]);
    let ops = all_ops(&t);
    assert_eq!(
        ops[1..4],
        [
            Op::Update(pb::Update {
                relation_id: REL,
                row: Some(row(&[0], &["2", "b", ""], &[0b0010_0000])),
                old_row: Some(row(&[0b0110_0000], &["1", "", ""], &[])),
            }),
            Op::Delete(pb::Delete {
                relation_id: REL,
                old_row: Some(row(&[0b0110_0000], &["2", "", ""], &[])),
            }),
            Op::Delete(pb::Delete {
                relation_id: REL,
                old_row: Some(row(&[0b0010_0000], &["3", "c", ""], &[])),
            }),
        ]
    );
}

#[tokio::test]
async fn truncate_and_relation_ids() {
    let mut a = asm();
    let c = committed(
        feed(
            &mut a,
            &[
                begin(9, 1),
                users_rel(),
                items_rel(b'd'),
                pgo::insert(USERS, &[C::T("u"), C::N]),
                pgo::insert(REL, &[C::T("1"), C::N, C::N]),
                pgo::insert(USERS, &[C::T("v"), C::N]),
                pgo::truncate(1, &[REL, USERS]),
                commit(9, 10),
            ],
        )
        .await
        .unwrap(),
    );
    assert!(c.removed_users.all);
    assert_eq!(
        c.ops,
        OpCounts {
            insert: 3,
            update: 0,
            delete: 0,
            truncate: 1
        }
    );
    let t = c.txn.unwrap();
    assert_eq!(t.changes, 4);
    assert_eq!(t.relation_ids, vec![REL, USERS]);
    let ops = all_ops(&t);
    assert_eq!(
        ops[4],
        Op::Truncate(pb::Truncate {
            relation_ids: vec![REL, USERS]
        })
    );
}

#[tokio::test]
async fn removed_users_reported() {
    let mut a = asm();
    let other_schema = pgo::relation(
        77,
        "other",
        "users",
        b'd',
        &[(true, "id", 25, -1), (false, "email", 25, -1)],
    );
    let c = committed(
        feed(
            &mut a,
            &[
                begin(9, 1),
                users_rel(),
                items_rel(b'f'),
                other_schema,
                pgo::delete(USERS, b'K', &[C::T("alice"), C::N]),
                // id changed: old id reported
                pgo::update(
                    USERS,
                    Some((b'K', &[C::T("bob"), C::N])),
                    &[C::T("bobby"), C::T("e")],
                ),
                // no id change (no old tuple under DEFAULT)
                pgo::update(USERS, None, &[C::T("carol"), C::T("e2")]),
                // same table name, other schema; and another table's id column
                pgo::delete(77, b'K', &[C::T("dave"), C::N]),
                pgo::delete(REL, b'O', &[C::T("erin"), C::N, C::N]),
                commit(9, 10),
            ],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        c.removed_users,
        RemovedUsers {
            ids: vec!["alice".into(), "bob".into()],
            all: false
        }
    );
    assert_eq!(
        c.ops,
        OpCounts {
            insert: 0,
            update: 2,
            delete: 3,
            truncate: 0
        }
    );

    // Under FULL an update carries the old row even when the id is the same.
    let mut a = asm();
    let full_users = pgo::relation(
        USERS,
        "public",
        "users",
        b'f',
        &[(true, "id", 25, -1), (true, "email", 25, -1)],
    );
    let c = committed(
        feed(
            &mut a,
            &[
                begin(9, 1),
                full_users,
                pgo::update(
                    USERS,
                    Some((b'O', &[C::T("x"), C::T("a")])),
                    &[C::T("x"), C::T("b")],
                ),
                commit(9, 10),
            ],
        )
        .await
        .unwrap(),
    );
    assert!(c.removed_users.is_empty());
}

#[tokio::test]
async fn empty_transaction_reports_end_lsn() {
    let mut a = asm();
    let c = committed(
        feed(
            &mut a,
            &[
                begin(0x50, 3),
                pgo::message(true, 0x50, "p", b"x"),
                commit(0x50, 0x60),
            ],
        )
        .await
        .unwrap(),
    );
    assert_eq!(c.end_lsn, 0x60);
    assert!(c.txn.is_none());
    assert!(c.entry().is_none());
    assert!(!a.in_transaction());
}

#[tokio::test]
async fn large_transaction_split_into_frames() {
    let mut a = asm();
    let n = 3000;
    let vals: Vec<String> = (0..n).map(|i| format!("{i:0>200}")).collect();
    let mut msgs = vec![begin(0x1000, 5), items_rel(b'd')];
    for (i, v) in vals.iter().enumerate() {
        msgs.push(pgo::insert(REL, &[C::T(&i.to_string()), C::T(v), C::N]));
    }
    // One row bigger than a frame: it gets a frame of its own.
    let huge = "h".repeat(300 * 1024);
    msgs.push(pgo::insert(REL, &[C::T("huge"), C::T(&huge), C::N]));
    msgs.push(pgo::insert(REL, &[C::T("last"), C::N, C::N]));
    msgs.push(commit(0x1000, 0x2000));
    let c = committed(feed(&mut a, &msgs).await.unwrap());
    let t = c.txn.unwrap();
    assert_eq!(t.changes, n as u32 + 2);
    let logs = oplogs(&t);
    assert!(logs.len() >= 4, "{} frames", logs.len());
    let bodies = split_frames(&t.frames);
    for (i, (_, body)) in bodies.iter().enumerate() {
        let has_huge = logs[i].iter().any(|op| matches!(op, Op::Insert(x) if x.row.as_ref().unwrap().values[0].as_ref() == b"huge"));
        if has_huge {
            assert_eq!(logs[i].len(), 1, "huge row shares its frame");
        } else {
            assert!(body.len() <= MAX_FRAME_BODY, "frame {i}: {}", body.len());
        }
    }
    for (i, ops) in logs.iter().enumerate() {
        assert_eq!(matches!(ops[0], Op::Begin(_)), i == 0);
        assert_eq!(
            matches!(ops.last().unwrap(), Op::Commit(_)),
            i == logs.len() - 1
        );
        let begins = ops.iter().filter(|o| matches!(o, Op::Begin(_))).count();
        let commits = ops.iter().filter(|o| matches!(o, Op::Commit(_))).count();
        assert_eq!(begins, usize::from(i == 0));
        assert_eq!(commits, usize::from(i == logs.len() - 1));
    }
    let ops: Vec<Op> = logs.into_iter().flatten().collect();
    assert_eq!(ops.len(), n + 4);
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(
            ops[i + 1],
            Op::Insert(pb::Insert {
                relation_id: REL,
                row: Some(row(&[0b0010_0000], &[&i.to_string(), v, ""], &[])),
            })
        );
    }
    assert_eq!(
        ops[n + 1],
        Op::Insert(pb::Insert {
            relation_id: REL,
            row: Some(row(&[0b0010_0000], &["huge", &huge, ""], &[])),
        })
    );
    assert_eq!(
        ops[n + 3],
        Op::Commit(pb::Commit {
            lsn: 0x2000,
            commit_time: TS + PG_EPOCH_OFFSET_MICROS
        })
    );
    // The next (small) transaction still encodes right after a big one.
    let c = committed(
        feed(
            &mut a,
            &[
                begin(0x3000, 6),
                pgo::insert(REL, &[C::T("1"), C::N, C::N]),
                commit(0x3000, 0x3010),
            ],
        )
        .await
        .unwrap(),
    );
    assert_eq!(all_ops(&c.txn.unwrap()).len(), 3);
}

#[tokio::test]
async fn stream_errors() {
    async fn err(msgs: &[Bytes]) -> IngestError {
        feed(&mut asm(), msgs).await.unwrap_err()
    }
    let ins = pgo::insert(REL, &[C::T("1"), C::N, C::N]);
    assert!(matches!(
        err(&[items_rel(b'd'), ins.clone()]).await,
        IngestError::OutsideTxn("Insert")
    ));
    assert!(matches!(
        err(&[commit(1, 2)]).await,
        IngestError::OutsideTxn("Commit")
    ));
    assert!(matches!(
        err(&[begin(1, 1), begin(2, 2)]).await,
        IngestError::NestedBegin { .. }
    ));
    assert!(matches!(
        err(&[begin(1, 1), ins.clone()]).await,
        IngestError::UnknownRelation { .. }
    ));
    assert!(matches!(
        err(&[begin(1, 1), pgo::truncate(0, &[42])]).await,
        IngestError::UnknownRelation { .. }
    ));
    assert!(matches!(
        err(&[begin(1, 1), items_rel(b'd'), pgo::insert(REL, &[C::T("1")])]).await,
        IngestError::ColumnCount { .. }
    ));
    assert!(matches!(
        err(&[
            begin(1, 1),
            items_rel(b'd'),
            pgo::update(REL, Some((b'K', &[C::T("1")])), &[C::T("1"), C::N, C::N])
        ])
        .await,
        IngestError::ColumnCount { .. }
    ));
    assert!(matches!(
        err(&[
            begin(1, 1),
            items_rel(b'd'),
            pgo::insert(REL, &[C::T("1"), C::B(b"\x00"), C::N])
        ])
        .await,
        IngestError::BinaryValue { column: 1, .. }
    ));
    assert!(matches!(
        err(&[begin(1, 1), commit(2, 3)]).await,
        IngestError::CommitMismatch {
            begin: 1,
            commit: 2
        }
    ));

    let mut a = asm();
    a.catalog().fail.store(true, Ordering::SeqCst);
    let e = feed(&mut a, &[items_rel(b'd')]).await.unwrap_err();
    assert!(matches!(e, IngestError::Catalog(_)), "{e}");
    let mut a = asm();
    a.catalog().short.store(true, Ordering::SeqCst);
    let e = feed(&mut a, &[items_rel(b'd')]).await.unwrap_err();
    assert!(matches!(e, IngestError::CatalogColumns { .. }), "{e}");

    // Relation through the sync path is refused, not mis-handled.
    let Ok(PgOutput::Relation(r)) = decode(&items_rel(b'd')) else {
        panic!()
    };
    assert!(matches!(
        asm().push_change(PgOutput::Relation(r)),
        Err(IngestError::RelationNeedsCatalog(REL))
    ));
}

#[tokio::test]
async fn abort_drops_partial_transaction() {
    let mut a = asm();
    feed(
        &mut a,
        &[
            begin(1, 1),
            items_rel(b'd'),
            pgo::insert(REL, &[C::T("1"), C::N, C::N]),
        ],
    )
    .await
    .unwrap();
    assert!(a.in_transaction());
    a.abort_txn();
    // Replayed from its Begin after a reconnect: no Relation re-emitted.
    let steps = feed(
        &mut a,
        &[
            begin(1, 1),
            items_rel(b'd'),
            pgo::insert(REL, &[C::T("1"), C::N, C::N]),
            commit(1, 2),
        ],
    )
    .await
    .unwrap();
    assert!(relations(&steps).is_empty());
    assert_eq!(committed(steps).txn.unwrap().changes, 1);
}

/// The memory behind a cached transaction stays near the length the cache
/// counts it at, for small transactions and after a large one inflated the
/// preallocation (a 64 MiB cache of small transactions once held several
/// times that).
#[tokio::test]
async fn frames_memory_close_to_their_length() {
    let mut a = asm();
    feed(&mut a, &[items_rel(b'd')]).await.unwrap();
    let big = "b".repeat(200 * 1024);
    let mut lsn = 0x1000u64;
    for i in 0..300u32 {
        let value = if i == 100 { big.as_str() } else { "small" };
        let id = i.to_string();
        let steps = feed(
            &mut a,
            &[
                begin(lsn, i),
                pgo::insert(REL, &[C::T(&id), C::T(value), C::N]),
                commit(lsn, lsn + 0x10),
            ],
        )
        .await
        .unwrap();
        lsn += 0x100;
        let t = Arc::try_unwrap(committed(steps).txn.unwrap()).unwrap_or_else(|_| panic!("shared"));
        let len = t.frames.len();
        let held = t
            .frames
            .try_into_mut()
            .unwrap_or_else(|_| panic!("shared"))
            .capacity();
        assert!(
            held <= len + len / 4 + super::encode::SLACK,
            "transaction {i}: {len} bytes held in {held}"
        );
    }
}

#[test]
fn users_table_setting() {
    assert_eq!(
        UsersTable::from_setting("auth.people", "uid"),
        UsersTable {
            schema: "auth".into(),
            table: "people".into(),
            id_column: "uid".into()
        }
    );
    assert_eq!(UsersTable::from_setting("users", "id").schema, "public");
}

/// Compile-time: the assembler over the real catalog can run in a spawned
/// task (its `push` future is `Send`).
#[allow(dead_code)]
fn push_future_is_send(a: &mut TxnAssembler<crate::pg::catalog::PgCatalog>, m: PgOutput) {
    fn is_send<T: Send>(_: &T) {}
    let f = a.push(m);
    is_send(&f);
}
