//! What a client hands out: whole transactions of typed changes (and, with a
//! snapshot, rows then the snapshot's end), resolved against the Relations
//! the server sent on this session.
//!
//! Invariant: an [`Event::Transaction`] is only built from a complete
//! Begin … Commit sequence; a change never refers to a relation the session
//! did not define (that is a protocol error, never a guess).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::error::ClientError;
use crate::protocol::pb;
use crate::protocol::pb::trans_op::Op as PbOp;

/// One column value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    /// Postgres text output.
    Text(String),
    /// A TOASTed value that did not change and was not sent: keep the value
    /// you had.
    Unchanged,
}

impl Value {
    /// The text, or `None` for NULL and unchanged.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A row: column name → value, in the relation's column order.
pub type RowValues = Vec<(Arc<str>, Value)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One change of a transaction. Truncate: one change per table, no rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// The new row (insert, update).
    pub row: Option<RowValues>,
    /// The old row or its key (update, delete), when the replica identity
    /// provides it.
    pub old: Option<RowValues>,
}

/// A committed transaction, whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Commit end LSN (`Commit.lsn`): resume from here.
    pub lsn: u64,
    pub xid: u32,
    /// µs since the Unix epoch.
    pub commit_time: i64,
    pub changes: Vec<Change>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Transaction(Transaction),
    /// Snapshot rows of one table (protocol 1.1).
    SnapshotRows {
        schema: Arc<str>,
        table: Arc<str>,
        rows: Vec<RowValues>,
    },
    /// The snapshot is complete; the stream continues after `lsn`.
    SnapshotEnd {
        lsn: u64,
        rows: u64,
        view_id: String,
    },
    /// The connection dropped before SnapshotEnd: discard every snapshot row
    /// and transaction received since the snapshot began; it starts over.
    SnapshotRestart,
    /// RESYNC_REQUIRED: what this user may read changed. Discard every row
    /// received so far (the whole copy); a snapshot follows.
    Resync {
        message: String,
    },
}

/// A column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: Arc<str>,
    pub type_oid: u32,
    pub type_name: String,
    pub primary_key: bool,
    pub nullable: bool,
}

/// A table's definition as the server sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationInfo {
    pub relation_id: u32,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub columns: Vec<ColumnInfo>,
}

impl From<pb::Relation> for RelationInfo {
    fn from(r: pb::Relation) -> Self {
        RelationInfo {
            relation_id: r.relation_id,
            schema: r.schema.into(),
            table: r.table.into(),
            columns: r
                .columns
                .into_iter()
                .map(|c| ColumnInfo {
                    name: c.name.into(),
                    type_oid: c.type_oid,
                    type_name: c.type_name,
                    primary_key: c.primary_key,
                    nullable: c.nullable,
                })
                .collect(),
        }
    }
}

struct Partial {
    xid: u32,
    changes: Vec<Change>,
}

/// Assembles one session's OpLog messages into transactions.
#[derive(Default)]
pub struct Assembler {
    relations: HashMap<u32, Arc<RelationInfo>>,
    partial: Option<Partial>,
}

fn bit(mask: &[u8], i: usize) -> bool {
    mask.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// Decodes a wire row against its relation.
pub fn decode_row(rel: &RelationInfo, row: pb::Row) -> Result<RowValues, ClientError> {
    if row.values.len() != rel.columns.len() {
        return Err(ClientError::Protocol(format!(
            "a row of {}.{} has {} values but the relation has {} columns",
            rel.schema,
            rel.table,
            row.values.len(),
            rel.columns.len()
        )));
    }
    let mut out = Vec::with_capacity(row.values.len());
    for (i, (col, v)) in rel.columns.iter().zip(row.values).enumerate() {
        let value = if bit(&row.nulls, i) {
            Value::Null
        } else if bit(&row.unchanged, i) {
            Value::Unchanged
        } else {
            match String::from_utf8(v.to_vec()) {
                Ok(s) => Value::Text(s),
                Err(_) => {
                    return Err(ClientError::Protocol(format!(
                        "column {}.{}.{} is not valid UTF-8 text",
                        rel.schema, rel.table, col.name
                    )))
                }
            }
        };
        out.push((col.name.clone(), value));
    }
    Ok(out)
}

impl Assembler {
    /// Forgets everything: a new session starts (relations are sent again,
    /// a partial transaction will come again whole).
    pub fn reset(&mut self) {
        self.relations.clear();
        self.partial = None;
    }

    /// Is a transaction begun but not committed?
    pub fn in_transaction(&self) -> bool {
        self.partial.is_some()
    }

    pub fn relation(&mut self, r: pb::Relation) {
        let info = RelationInfo::from(r);
        self.relations.insert(info.relation_id, Arc::new(info));
    }

    pub fn get_relation(&self, id: u32) -> Result<&Arc<RelationInfo>, ClientError> {
        self.relations.get(&id).ok_or_else(|| {
            ClientError::Protocol(format!(
                "relation {id} used before the server sent its Relation message"
            ))
        })
    }

    fn row(
        &self,
        id: u32,
        row: Option<pb::Row>,
    ) -> Result<(Arc<RelationInfo>, Option<RowValues>), ClientError> {
        let rel = self.get_relation(id)?.clone();
        let values = row.map(|r| decode_row(&rel, r)).transpose()?;
        Ok((rel, values))
    }

    /// Feeds one OpLog message; every transaction it completes is pushed to
    /// `out`, in order.
    pub fn oplog(&mut self, log: pb::OpLog, out: &mut VecDeque<Event>) -> Result<(), ClientError> {
        for op in log.ops {
            let Some(op) = op.op else {
                return Err(ClientError::Protocol("an OpLog entry holds no op".into()));
            };
            match op {
                PbOp::Begin(b) => {
                    if self.partial.is_some() {
                        return Err(ClientError::Protocol(format!(
                            "Begin of xid {} inside an uncommitted transaction",
                            b.xid
                        )));
                    }
                    self.partial = Some(Partial {
                        xid: b.xid,
                        changes: Vec::new(),
                    });
                }
                PbOp::Commit(c) => {
                    let p = self.partial.take().ok_or_else(|| {
                        ClientError::Protocol(format!("Commit at lsn {} without Begin", c.lsn))
                    })?;
                    out.push_back(Event::Transaction(Transaction {
                        lsn: c.lsn,
                        xid: p.xid,
                        commit_time: c.commit_time,
                        changes: p.changes,
                    }));
                }
                other => {
                    let changes = self.changes_of(other)?;
                    let p = self.partial.as_mut().ok_or_else(|| {
                        ClientError::Protocol("a change outside Begin … Commit".into())
                    })?;
                    p.changes.extend(changes);
                }
            }
        }
        Ok(())
    }

    fn changes_of(&self, op: PbOp) -> Result<Vec<Change>, ClientError> {
        let change = |op, rel: Arc<RelationInfo>, row, old| Change {
            op,
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            row,
            old,
        };
        Ok(match op {
            PbOp::Insert(i) => {
                let (rel, row) = self.row(i.relation_id, i.row)?;
                vec![change(Op::Insert, rel, row, None)]
            }
            PbOp::Update(u) => {
                let (rel, row) = self.row(u.relation_id, u.row)?;
                let (_, old) = self.row(u.relation_id, u.old_row)?;
                vec![change(Op::Update, rel, row, old)]
            }
            PbOp::Delete(d) => {
                let (rel, old) = self.row(d.relation_id, d.old_row)?;
                vec![change(Op::Delete, rel, None, old)]
            }
            PbOp::Truncate(t) => t
                .relation_ids
                .iter()
                .map(|id| {
                    Ok(change(
                        Op::Truncate,
                        self.get_relation(*id)?.clone(),
                        None,
                        None,
                    ))
                })
                .collect::<Result<_, ClientError>>()?,
            PbOp::Begin(_) | PbOp::Commit(_) => Vec::new(),
        })
    }

    /// Resolves one SnapshotRows message.
    pub fn snapshot_rows(&self, m: pb::SnapshotRows) -> Result<Event, ClientError> {
        let rel = self.get_relation(m.relation_id)?.clone();
        let rows = m
            .rows
            .into_iter()
            .map(|r| decode_row(&rel, r))
            .collect::<Result<_, _>>()?;
        Ok(Event::SnapshotRows {
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rel() -> pb::Relation {
        pb::Relation {
            relation_id: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
                .iter()
                .map(|n| pb::Column {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn null_and_unchanged_bits_msb_first() {
        let mut a = Assembler::default();
        a.relation(rel());
        let row = pb::Row {
            // column 1 and column 8 null (byte 1, msb) ; column 2 unchanged
            nulls: Bytes::from_static(&[0b0100_0000, 0b1000_0000]),
            unchanged: Bytes::from_static(&[0b0010_0000]),
            values: (0..9).map(|i| Bytes::from(format!("v{i}"))).collect(),
        };
        let r = decode_row(a.get_relation(1).unwrap(), row).unwrap();
        assert_eq!(r[0].1, Value::Text("v0".into()));
        assert_eq!(r[1].1, Value::Null);
        assert_eq!(r[2].1, Value::Unchanged);
        assert_eq!(r[7].1, Value::Text("v7".into()));
        assert_eq!(r[8].1, Value::Null);
        assert_eq!(&*r[8].0, "i");
    }

    #[test]
    fn wrong_value_count_and_bad_utf8_are_protocol_errors() {
        let info = RelationInfo::from(rel());
        let short = pb::Row {
            values: vec![Bytes::new()],
            ..Default::default()
        };
        assert!(matches!(
            decode_row(&info, short),
            Err(ClientError::Protocol(_))
        ));
        let bad = pb::Row {
            values: (0..9).map(|_| Bytes::from_static(&[0xff])).collect(),
            ..Default::default()
        };
        assert!(matches!(
            decode_row(&info, bad),
            Err(ClientError::Protocol(_))
        ));
    }

    fn op(o: PbOp) -> pb::TransOp {
        pb::TransOp { op: Some(o) }
    }

    #[test]
    fn ops_out_of_place_are_protocol_errors() {
        let mut a = Assembler::default();
        a.relation(rel());
        let mut out = VecDeque::new();
        let commit = op(PbOp::Commit(pb::Commit {
            lsn: 1,
            commit_time: 0,
        }));
        assert!(a.oplog(pb::OpLog { ops: vec![commit] }, &mut out).is_err());
        let trunc = op(PbOp::Truncate(pb::Truncate {
            relation_ids: vec![1],
        }));
        assert!(a.oplog(pb::OpLog { ops: vec![trunc] }, &mut out).is_err());
        let begin = || op(PbOp::Begin(pb::Begin::default()));
        assert!(a
            .oplog(
                pb::OpLog {
                    ops: vec![begin(), begin()]
                },
                &mut out
            )
            .is_err());
        a.reset();
        let unknown = op(PbOp::Truncate(pb::Truncate {
            relation_ids: vec![2],
        }));
        let e = a
            .oplog(
                pb::OpLog {
                    ops: vec![begin(), unknown],
                },
                &mut out,
            )
            .unwrap_err();
        assert!(e.to_string().contains("relation 2"), "{e}");
        assert!(out.is_empty());
        assert!(a
            .oplog(
                pb::OpLog {
                    ops: vec![pb::TransOp { op: None }]
                },
                &mut out
            )
            .is_err());
    }
}
