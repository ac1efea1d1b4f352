//! pgoutput messages → log entries: relation definitions and whole committed
//! transactions, each encoded once as the wire frames clients are sent.
//!
//! Invariant: a [`TxnEntry`] is emitted only at Commit, whole (Begin … Commit
//! across one or more OpLog frames), with `commit_lsn` = the commit end LSN;
//! a `Relation` entry is emitted when a definition is new or differs from the
//! one in force, before the transaction that uses it.
//!
//! Memory: an open transaction is buffered whole until its Commit, already
//! encoded (its pgoutput bytes plus a few bytes of protobuf framing per value
//! and per row). With proto_version 1 Postgres sends a transaction only after
//! it committed, spilling big ones to disk on its side; here the bound is the
//! largest transaction, about its encoded size (growth of the buffer by
//! doubling may transiently hold up to 2×; the entry kept is trimmed to
//! within ~25% of its length). The buffer of the next transaction is
//! preallocated from a running average of recent transaction sizes.
//!
//! Known limits: the catalog is read as it is now, not at the WAL position
//! (see [`crate::pg::catalog`]); DDL changing a table inside a transaction
//! that also writes that table before the DDL yields ops of the old shape
//! after the new Relation.

mod encode;
mod relations;
mod users;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

pub use encode::{MAX_FRAME_BODY, OPLOG_FRAME_TYPE, RELATION_FRAME_TYPE};
pub use users::{RemovedUsers, UsersTable};

use encode::{
    put_row_header, put_row_op_header, put_truncate, row_op_sizes, truncate_sizes, BinaryCell,
    FrameBuf, RowPlan, OP_DELETE, OP_INSERT, OP_UPDATE,
};
use relations::{relation_frame, RelState};

use crate::log::{Entry, RelationEntry, TxnEntry};
use crate::pg::catalog::{Catalog, CatalogError};
use crate::pg::lsn::pg_to_unix_micros;
use crate::pg::pgoutput::{
    Begin, Commit, Delete, Insert, OldKind, PgOutput, Relation, Truncate, Tuple, Update,
};

/// The stream of pgoutput messages is not what Postgres sends, or the
/// catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("pgoutput stream: {0} outside a transaction")]
    OutsideTxn(&'static str),
    #[error("pgoutput stream: Begin (xid {xid}) while transaction {open} is open")]
    NestedBegin { xid: u32, open: u32 },
    #[error("pgoutput stream: Commit LSN {commit:X} does not match Begin's final LSN {begin:X}")]
    CommitMismatch { begin: u64, commit: u64 },
    #[error(
        "pgoutput stream: {what} for relation {relation_id} not announced by a Relation message"
    )]
    UnknownRelation {
        what: &'static str,
        relation_id: u32,
    },
    #[error("pgoutput stream: {what} tuple for relation {relation_id} has {got} columns, the relation {expected}")]
    ColumnCount {
        what: &'static str,
        relation_id: u32,
        expected: usize,
        got: usize,
    },
    #[error("Relation message for {0} given to push_change (use push, which asks the catalog)")]
    RelationNeedsCatalog(u32),
    #[error("relation {relation_id}: column {column} is in binary format; pgsat requires text (binary 'false')")]
    BinaryValue { relation_id: u32, column: usize },
    #[error("catalog for relation {relation_id} answered {got} columns for {expected}")]
    CatalogColumns {
        relation_id: u32,
        expected: usize,
        got: usize,
    },
}

/// What one pushed message yields.
#[derive(Debug)]
pub enum Step {
    /// Nothing to hand on (a change buffered, or a skipped message).
    Nothing,
    /// A relation definition is new or changed: append it before the next
    /// transaction.
    Relation(Arc<RelationEntry>),
    /// A transaction committed.
    Committed(Committed),
}

/// Row changes of one transaction by kind, for
/// `pgsat_replication_changes_total{op}` (added once per transaction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub insert: u32,
    pub update: u32,
    pub delete: u32,
    /// Truncate messages (one may name several tables).
    pub truncate: u32,
}

/// A committed transaction.
#[derive(Debug)]
pub struct Committed {
    /// End LSN of the transaction: the stream may be confirmed up to here
    /// once `txn` (if any) is durable.
    pub end_lsn: u64,
    /// `None` when the transaction had no changes: nothing to log.
    pub txn: Option<Arc<TxnEntry>>,
    /// Users removed by this transaction.
    pub removed_users: RemovedUsers,
    /// Its row changes by kind.
    pub ops: OpCounts,
}

impl Committed {
    /// The log entry, if any.
    pub fn entry(&self) -> Option<Entry> {
        self.txn.clone().map(Entry::Txn)
    }
}

/// The transaction being assembled.
struct OpenTxn {
    xid: u32,
    final_lsn: u64,
    frames: FrameBuf,
    relation_ids: Vec<u32>,
    changes: u32,
    ops: OpCounts,
    removed: RemovedUsers,
}

impl OpenTxn {
    #[inline]
    fn used(&mut self, relation_id: u32, count: fn(&mut OpCounts) -> &mut u32) {
        if self.relation_ids.last() != Some(&relation_id) {
            self.relation_ids.push(relation_id);
        }
        self.changes = self.changes.saturating_add(1);
        let n = count(&mut self.ops);
        *n = n.saturating_add(1);
    }
}

/// Turns pgoutput messages, in stream order, into log entries.
///
/// Keep one assembler across reconnections (relations in force survive);
/// call [`TxnAssembler::abort_txn`] when the stream breaks mid-transaction.
pub struct TxnAssembler<C> {
    catalog: C,
    users: Option<UsersTable>,
    relations: HashMap<u32, RelState>,
    txn: Option<OpenTxn>,
    /// Row plans reused from row to row: new row, old row.
    plan_new: RowPlan,
    plan_old: RowPlan,
    /// Running average of encoded transaction sizes (preallocation).
    avg_txn_bytes: usize,
}

/// Least preallocation for a transaction's frames: room for the header,
/// Begin, Commit and a small row (a larger transaction grows the buffer).
const MIN_PREALLOC: usize = 256;
const MAX_PREALLOC: usize = 8 << 20;

impl<C: Catalog> TxnAssembler<C> {
    pub fn new(catalog: C, users: Option<UsersTable>) -> Self {
        TxnAssembler {
            catalog,
            users,
            relations: HashMap::new(),
            txn: None,
            plan_new: RowPlan::default(),
            plan_old: RowPlan::default(),
            avg_txn_bytes: MIN_PREALLOC,
        }
    }

    pub fn catalog(&self) -> &C {
        &self.catalog
    }

    /// Records a Relation already in the log (on restart), so an identical
    /// definition from pgoutput is not emitted again.
    pub fn note_relation_in_force(&mut self, entry: &RelationEntry) {
        let st = self
            .relations
            .entry(entry.relation_id)
            .or_insert_with(|| RelState {
                ncols: None,
                frame: entry.frame.clone(),
                user_id_col: None,
            });
        st.frame = entry.frame.clone();
    }

    /// Whether a transaction is open (Begin seen, Commit not yet).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Drops a partly received transaction (the stream broke; Postgres will
    /// send it again from its start).
    pub fn abort_txn(&mut self) {
        self.txn = None;
    }

    /// Feeds one message. Relation messages consult the catalog (async);
    /// everything else is synchronous.
    pub async fn push(&mut self, msg: PgOutput) -> Result<Step, IngestError> {
        match msg {
            PgOutput::Relation(rel) => self.relation(rel).await,
            other => self.push_change(other),
        }
    }

    /// Feeds one message other than Relation (which needs the catalog: use
    /// [`TxnAssembler::push`]; given here it is an error).
    pub fn push_change(&mut self, msg: PgOutput) -> Result<Step, IngestError> {
        match msg {
            PgOutput::Begin(b) => self.begin(b),
            PgOutput::Commit(c) => self.commit(c),
            PgOutput::Insert(i) => self.insert(i),
            PgOutput::Update(u) => self.update(u),
            PgOutput::Delete(d) => self.delete(d),
            PgOutput::Truncate(t) => self.truncate(t),
            PgOutput::Origin(_) | PgOutput::Type(_) | PgOutput::Message(_) => Ok(Step::Nothing),
            PgOutput::Relation(r) => Err(IngestError::RelationNeedsCatalog(r.relation_id)),
        }
    }

    /// A Relation message: asks the catalog every time (pgoutput re-sends a
    /// relation only at connection start and after a relcache invalidation
    /// of that table — exactly when NOT NULL or the primary key may have
    /// changed without the pgoutput definition changing, e.g. under
    /// REPLICA IDENTITY FULL), and emits the frame if it differs from the one
    /// in force.
    async fn relation(&mut self, rel: Relation) -> Result<Step, IngestError> {
        let meta = self.catalog.relation_meta(&rel).await?;
        if meta.columns.len() != rel.columns.len() {
            return Err(IngestError::CatalogColumns {
                relation_id: rel.relation_id,
                expected: rel.columns.len(),
                got: meta.columns.len(),
            });
        }
        let frame = relation_frame(&rel, &meta);
        let user_id_col = self.users.as_ref().and_then(|u| u.id_column_of(&rel));
        let st = RelState {
            ncols: Some(rel.columns.len()),
            frame,
            user_id_col,
        };
        let changed = self
            .relations
            .get(&rel.relation_id)
            .is_none_or(|old| old.frame != st.frame);
        let frame = st.frame.clone();
        self.relations.insert(rel.relation_id, st);
        Ok(if changed {
            Step::Relation(Arc::new(RelationEntry {
                relation_id: rel.relation_id,
                frame,
            }))
        } else {
            Step::Nothing
        })
    }

    fn begin(&mut self, b: Begin) -> Result<Step, IngestError> {
        if let Some(open) = &self.txn {
            return Err(IngestError::NestedBegin {
                xid: b.xid,
                open: open.xid,
            });
        }
        // Within FrameBuf::finish's slack for a transaction of the average
        // size, so that one is kept as written, not copied.
        let cap = (self.avg_txn_bytes + self.avg_txn_bytes / 8 + 32).min(MAX_PREALLOC);
        self.txn = Some(OpenTxn {
            xid: b.xid,
            final_lsn: b.final_lsn,
            frames: FrameBuf::with_capacity(cap),
            relation_ids: Vec::new(),
            changes: 0,
            ops: OpCounts::default(),
            removed: RemovedUsers::default(),
        });
        Ok(Step::Nothing)
    }

    fn commit(&mut self, c: Commit) -> Result<Step, IngestError> {
        let txn = self.txn.take().ok_or(IngestError::OutsideTxn("Commit"))?;
        if c.commit_lsn != txn.final_lsn {
            return Err(IngestError::CommitMismatch {
                begin: txn.final_lsn,
                commit: c.commit_lsn,
            });
        }
        if txn.changes == 0 {
            return Ok(Step::Committed(Committed {
                end_lsn: c.end_lsn,
                txn: None,
                removed_users: txn.removed,
                ops: txn.ops,
            }));
        }
        let commit_time = pg_to_unix_micros(c.commit_time);
        let written = txn.frames.len();
        self.avg_txn_bytes = ((self.avg_txn_bytes * 7 + written) / 8).max(MIN_PREALLOC);
        let frames = txn.frames.finish(txn.xid, c.end_lsn, commit_time);
        let mut relation_ids = txn.relation_ids;
        relation_ids.sort_unstable();
        relation_ids.dedup();
        Ok(Step::Committed(Committed {
            end_lsn: c.end_lsn,
            txn: Some(Arc::new(TxnEntry {
                commit_lsn: c.end_lsn,
                xid: txn.xid,
                commit_time,
                relation_ids,
                changes: txn.changes,
                frames,
            })),
            removed_users: txn.removed,
            ops: txn.ops,
        }))
    }

    fn insert(&mut self, m: Insert) -> Result<Step, IngestError> {
        let txn = self.txn.as_mut().ok_or(IngestError::OutsideTxn("Insert"))?;
        let id = m.relation_id;
        known(&self.relations, id, "Insert", &m.new)?;
        let plan = &mut self.plan_new;
        plan.plan(&m.new, None).map_err(binary(id))?;
        let (body, entry) = row_op_sizes(id, plan.len, None);
        let buf = txn.frames.op(entry);
        put_row_op_header(buf, OP_INSERT, id, body);
        put_row_header(buf, 2, plan.len);
        plan.write(buf, &m.new, None);
        txn.used(id, |o| &mut o.insert);
        Ok(Step::Nothing)
    }

    fn update(&mut self, m: Update) -> Result<Step, IngestError> {
        let txn = self.txn.as_mut().ok_or(IngestError::OutsideTxn("Update"))?;
        let id = m.relation_id;
        let rel = known(&self.relations, id, "Update", &m.new)?;
        let old = m.old.as_ref();
        if let Some(o) = old {
            check_cols(rel, id, "Update old", &o.tuple)?;
        }
        let fill = old.filter(|o| o.kind == OldKind::Full).map(|o| &o.tuple);
        self.plan_new.plan(&m.new, fill).map_err(binary(id))?;
        if let Some(o) = old {
            self.plan_old.plan(&o.tuple, None).map_err(binary(id))?;
        }
        let old_len = old.map(|_| self.plan_old.len);
        let (body, entry) = row_op_sizes(id, self.plan_new.len, old_len);
        let buf = txn.frames.op(entry);
        put_row_op_header(buf, OP_UPDATE, id, body);
        put_row_header(buf, 2, self.plan_new.len);
        self.plan_new.write(buf, &m.new, fill);
        if let Some(o) = old {
            put_row_header(buf, 3, self.plan_old.len);
            self.plan_old.write(buf, &o.tuple, None);
        }
        if let (Some(col), Some(o)) = (rel.user_id_col, old) {
            if let Some(uid) = users::changed_id(&o.tuple, &m.new, col) {
                txn.removed.ids.push(uid);
            }
        }
        txn.used(id, |o| &mut o.update);
        Ok(Step::Nothing)
    }

    fn delete(&mut self, m: Delete) -> Result<Step, IngestError> {
        let txn = self.txn.as_mut().ok_or(IngestError::OutsideTxn("Delete"))?;
        let id = m.relation_id;
        let old = &m.old.tuple;
        let rel = known(&self.relations, id, "Delete", old)?;
        let plan = &mut self.plan_old;
        plan.plan(old, None).map_err(binary(id))?;
        let (body, entry) = row_op_sizes(id, plan.len, None);
        let buf = txn.frames.op(entry);
        put_row_op_header(buf, OP_DELETE, id, body);
        put_row_header(buf, 2, plan.len);
        plan.write(buf, old, None);
        if let Some(uid) = rel.user_id_col.and_then(|c| users::deleted_id(old, c)) {
            txn.removed.ids.push(uid);
        }
        txn.used(id, |o| &mut o.delete);
        Ok(Step::Nothing)
    }

    fn truncate(&mut self, m: Truncate) -> Result<Step, IngestError> {
        let txn = self
            .txn
            .as_mut()
            .ok_or(IngestError::OutsideTxn("Truncate"))?;
        for &id in &m.relation_ids {
            let rel = self
                .relations
                .get(&id)
                .filter(|r| r.ncols.is_some())
                .ok_or(IngestError::UnknownRelation {
                    what: "Truncate",
                    relation_id: id,
                })?;
            if rel.user_id_col.is_some() {
                txn.removed.all = true;
            }
            txn.relation_ids.push(id);
        }
        let (packed, body, entry) = truncate_sizes(&m.relation_ids);
        let buf = txn.frames.op(entry);
        put_truncate(buf, &m.relation_ids, packed, body);
        txn.changes = txn.changes.saturating_add(1);
        txn.ops.truncate = txn.ops.truncate.saturating_add(1);
        Ok(Step::Nothing)
    }
}

/// The relation announced by pgoutput, with `tuple` of its column count.
fn known<'r>(
    relations: &'r HashMap<u32, RelState>,
    relation_id: u32,
    what: &'static str,
    tuple: &Tuple,
) -> Result<&'r RelState, IngestError> {
    let rel = relations
        .get(&relation_id)
        .filter(|r| r.ncols.is_some())
        .ok_or(IngestError::UnknownRelation { what, relation_id })?;
    check_cols(rel, relation_id, what, tuple)?;
    Ok(rel)
}

fn check_cols(
    rel: &RelState,
    relation_id: u32,
    what: &'static str,
    tuple: &Tuple,
) -> Result<(), IngestError> {
    let expected = rel.ncols.unwrap_or(0);
    if tuple.len() != expected {
        return Err(IngestError::ColumnCount {
            what,
            relation_id,
            expected,
            got: tuple.len(),
        });
    }
    Ok(())
}

fn binary(relation_id: u32) -> impl Fn(BinaryCell) -> IngestError {
    move |b| IngestError::BinaryValue {
        relation_id,
        column: b.column,
    }
}
