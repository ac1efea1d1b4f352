//! A stored transaction filtered for one (view, subscription), per the
//! contract: rows the view may read go out as they are, an UPDATE that moves
//! a row into the view becomes an Insert of the new row, one that moves it
//! out a Delete of the old row; a TRUNCATE goes to sessions subscribed to
//! the table; nothing of a relation the session does not get.
//!
//! Sharing: the ops of a transaction are located once per transaction
//! ([`ParsedTxn`] + value indexes, [`TxnIndex`], cached by commit LSN); a
//! view evaluates only the ops the indexes route to it; the filtered frames
//! are built once per
//! (commit LSN, view_id, subscription) in [`FilterCache`], so sessions with
//! the same view share the bytes and the work. Kept ops are copied from the
//! stored bytes; a transaction whose every op is kept as is is the stored
//! `Bytes` itself (no copy).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::route::TxnIndex;
use super::view::{Pred, View};
use super::wire::{
    assemble, parse_txn, row_op, truncate_op, Cell, OpKind, OutOp, ParsedTxn, RowRef, DELETE_KEY,
    INSERT_KEY,
};
use crate::log::TxnEntry;

/// The tables a session asked for: `None` = every readable table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    tables: Option<HashSet<(String, String)>>,
    key: String,
}

impl Subscription {
    pub fn all() -> Subscription {
        Subscription::default()
    }

    /// From `StartReplicationReq.tables`: `schema.table`, or `table` for
    /// `public`. `Err(name)` for a name of another shape.
    pub fn from_names(names: &[String]) -> Result<Subscription, String> {
        if names.is_empty() {
            return Ok(Subscription::all());
        }
        let mut set = HashSet::new();
        for n in names {
            let (s, t) = parse_table_name(n).ok_or_else(|| n.clone())?;
            set.insert((s.to_string(), t.to_string()));
        }
        let mut key: Vec<String> = set.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        key.sort();
        Ok(Subscription {
            tables: Some(set),
            key: key.join(","),
        })
    }

    pub fn is_all(&self) -> bool {
        self.tables.is_none()
    }

    pub fn includes(&self, schema: &str, table: &str) -> bool {
        match &self.tables {
            None => true,
            Some(s) => s.contains(&(schema.to_string(), table.to_string())),
        }
    }

    /// The tables named, sorted (empty for all).
    pub fn names(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.tables.iter().flatten().cloned().collect();
        v.sort();
        v
    }

    /// Identifies the subscription in cache keys.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// `schema.table` or `table` (public).
pub fn parse_table_name(n: &str) -> Option<(&str, &str)> {
    let mut it = n.split('.');
    let (a, b, c) = (it.next(), it.next(), it.next());
    match (a, b, c) {
        (Some(t), None, None) if !t.is_empty() => Some(("public", t)),
        (Some(s), Some(t), None) if !s.is_empty() && !t.is_empty() => Some((s, t)),
        _ => None,
    }
}

/// What a session does with one relation: `None` pred = not sent at all.
#[derive(Clone, Debug)]
pub struct RelFilter {
    pub schema: String,
    pub table: String,
    /// `Some` when the session gets this relation: its rule with column
    /// names resolved to positions.
    pub pred: Option<Pred>,
    /// Column name → position in the row.
    columns: Vec<(String, usize)>,
}

impl RelFilter {
    /// For a stored Relation frame (`u32 len, 9, Relation`).
    pub fn from_frame(frame: &Bytes, view: &View, sub: &Subscription) -> Option<RelFilter> {
        use prost::Message;
        let rel = crate::protocol::pb::Relation::decode(frame.get(5..)?).ok()?;
        let pred = if sub.includes(&rel.schema, &rel.table) {
            view.pred(&rel.schema, &rel.table).cloned()
        } else {
            None
        };
        Some(RelFilter {
            columns: rel
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            schema: rel.schema,
            table: rel.table,
            pred,
        })
    }

    /// Position of column `name` in the rows.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().find(|(n, _)| n == name).map(|c| c.1)
    }

    /// Whether the rule accepts `row` (a row of this relation). Unchanged
    /// TOAST cells and columns beyond the row count as NULL.
    fn accepts(&self, frames: &[u8], row: &RowRef) -> bool {
        let Some(pred) = &self.pred else {
            return false;
        };
        pred.eval(&|col: &str| {
            let i = self.column_index(col)?;
            match row.cells.get(i)? {
                Cell::Text(r) => frames.get(r.clone()),
                Cell::Null | Cell::Unchanged => None,
            }
        })
    }
}

/// A transaction as one session sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filtered {
    /// The OpLog frames; `None` when nothing is readable (nothing is sent,
    /// the position still moves past it).
    pub frames: Option<Bytes>,
    pub frame_count: usize,
    /// Relations of the ops sent (their definitions go out first).
    pub relation_ids: Vec<u32>,
    /// A row moved into the view by an UPDATE whose new row lacks the value
    /// of an unchanged TOASTed column (the table is not REPLICA IDENTITY
    /// FULL): the client has no previous value to keep, so this view cannot
    /// be served exactly from the stream — the session must resync.
    pub incomplete: bool,
}

/// Filters `p` (the parsed `txn`) with `rels` (the session's filter of each
/// relation id; an unknown id is not sent).
pub fn filter(
    txn: &TxnEntry,
    p: &ParsedTxn,
    rels: &dyn Fn(u32) -> Option<Arc<RelFilter>>,
) -> Filtered {
    let all: Vec<usize> = (0..p.ops.len()).collect();
    filter_ops(txn, p, rels, &all)
}

/// [`filter`] over the ops at positions `only` (sorted): every other op is
/// known not to be readable (see [`super::route`]).
pub fn filter_ops(
    txn: &TxnEntry,
    p: &ParsedTxn,
    rels: &dyn Fn(u32) -> Option<Arc<RelFilter>>,
    only: &[usize],
) -> Filtered {
    let buf: &[u8] = &p.frames;
    let mut out: Vec<OutOp> = Vec::with_capacity(only.len());
    let mut relation_ids: Vec<u32> = Vec::new();
    let mut unchanged = only.len() == p.ops.len();
    let mut incomplete = false;
    let mut last: Option<(u32, Option<Arc<RelFilter>>)> = None;
    let mut rel_of = |id: u32| -> Option<Arc<RelFilter>> {
        match &last {
            Some((lid, f)) if *lid == id => f.clone(),
            _ => {
                let f = rels(id).filter(|f| f.pred.is_some());
                last = Some((id, f.clone()));
                f
            }
        }
    };
    for op in only.iter().filter_map(|&i| p.ops.get(i)) {
        match op.kind {
            OpKind::Truncate => {
                let kept: Vec<u32> = op
                    .truncate_ids
                    .iter()
                    .copied()
                    .filter(|&id| rel_of(id).is_some())
                    .collect();
                if kept.is_empty() {
                    unchanged = false;
                    continue;
                }
                relation_ids.extend_from_slice(&kept);
                if kept.len() == op.truncate_ids.len() {
                    out.push(OutOp::Stored(op.entry.clone()));
                } else {
                    unchanged = false;
                    out.push(OutOp::New(truncate_op(&kept)));
                }
            }
            OpKind::Insert | OpKind::Delete => {
                let keep = match (rel_of(op.relation_id), &op.row) {
                    (Some(f), Some(row)) => f.accepts(buf, row),
                    _ => false,
                };
                if keep {
                    relation_ids.push(op.relation_id);
                    out.push(OutOp::Stored(op.entry.clone()));
                } else {
                    unchanged = false;
                }
            }
            OpKind::Update => {
                let (Some(f), Some(new)) = (rel_of(op.relation_id), &op.row) else {
                    unchanged = false;
                    continue;
                };
                let after = f.accepts(buf, new);
                // No old row: the replica identity did not change, and the
                // rule's columns are in it (checked at start), so the old
                // values are the new ones.
                let before = match &op.old_row {
                    Some(old) => f.accepts(buf, old),
                    None => after,
                };
                match (before, after) {
                    (true, true) => out.push(OutOp::Stored(op.entry.clone())),
                    (false, true) => {
                        unchanged = false;
                        incomplete |= new.cells.iter().any(|c| matches!(c, Cell::Unchanged));
                        out.push(OutOp::New(row_op(
                            INSERT_KEY,
                            op.relation_id,
                            &buf[new.bytes.clone()],
                        )))
                    }
                    (true, false) => {
                        unchanged = false;
                        let old = op.old_row.as_ref().unwrap_or(new);
                        out.push(OutOp::New(row_op(
                            DELETE_KEY,
                            op.relation_id,
                            &buf[old.bytes.clone()],
                        )))
                    }
                    (false, false) => {
                        unchanged = false;
                        continue;
                    }
                }
                relation_ids.push(op.relation_id);
            }
            OpKind::Begin | OpKind::Commit => {}
        }
    }
    relation_ids.sort_unstable();
    relation_ids.dedup();
    if out.is_empty() {
        return Filtered {
            frames: None,
            frame_count: 0,
            relation_ids,
            incomplete,
        };
    }
    if unchanged {
        return Filtered {
            frames: Some(txn.frames.clone()),
            frame_count: txn.frame_count(),
            relation_ids,
            incomplete,
        };
    }
    let (frames, frame_count) = assemble(p, &out);
    Filtered {
        frames: Some(frames),
        frame_count,
        relation_ids,
        incomplete,
    }
}

/// A small bounded map, oldest insert evicted first, bounded both by entry
/// count and by the sum of the entries' weights (bytes).
struct Bounded<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    cap: usize,
    max_weight: usize,
    weight: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    fn new(cap: usize, max_weight: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
            max_weight,
            weight: 0,
        }
    }
    fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).map(|(v, _)| v.clone())
    }
    fn insert(&mut self, k: K, v: V, weight: usize) {
        if weight > self.max_weight {
            return;
        }
        if let Some((_, old)) = self.map.insert(k.clone(), (v, weight)) {
            self.weight -= old;
        } else {
            self.order.push_back(k);
        }
        self.weight += weight;
        while self.order.len() > self.cap || self.weight > self.max_weight {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.weight -= w;
            }
        }
    }
}

/// Bytes of parsed transactions kept (frames + op and cell positions).
const PARSED_MAX_BYTES: usize = 32 << 20;
/// Bytes of filtered transactions kept.
const FILTERED_MAX_BYTES: usize = 64 << 20;

type FilterKey = (u64, Arc<str>);

/// Shared by every session: parsed transactions by commit LSN, and filtered
/// transactions by (commit LSN, view key). Bounded by entry counts and
/// bytes (a transaction larger than a bound is not kept); a miss only costs
/// recomputation.
pub struct FilterCache {
    parsed: Mutex<Bounded<u64, Arc<TxnIndex>>>,
    filtered: Mutex<Bounded<FilterKey, Arc<Filtered>>>,
}

impl Default for FilterCache {
    fn default() -> Self {
        FilterCache {
            parsed: Mutex::new(Bounded::new(1024, PARSED_MAX_BYTES)),
            filtered: Mutex::new(Bounded::new(16 * 1024, FILTERED_MAX_BYTES)),
        }
    }
}

impl FilterCache {
    /// `txn` filtered for the session whose cache key is `key` (view_id +
    /// subscription; sessions with the same key have the same `rels`).
    /// A stored transaction that cannot be parsed is sent to nobody and
    /// logged (it cannot happen for what the ingest wrote).
    pub fn get(
        &self,
        txn: &TxnEntry,
        key: &Arc<str>,
        rels: &dyn Fn(u32) -> Option<Arc<RelFilter>>,
    ) -> Arc<Filtered> {
        let fk = (txn.commit_lsn, key.clone());
        if let Some(f) = lock(&self.filtered).get(&fk) {
            return f;
        }
        let Some(parsed) = self.parsed(txn) else {
            return Arc::new(Filtered {
                frames: None,
                frame_count: 0,
                relation_ids: Vec::new(),
                incomplete: false,
            });
        };
        let f = Arc::new(filter_routed(txn, &parsed, rels));
        let weight = f.frames.as_ref().map_or(0, Bytes::len) + 64 + 4 * f.relation_ids.len();
        lock(&self.filtered).insert(fk, f.clone(), weight);
        f
    }

    /// `txn` parsed and indexed (cached by commit LSN), or `None` (logged)
    /// when its stored bytes cannot be parsed.
    pub fn parsed(&self, txn: &TxnEntry) -> Option<Arc<TxnIndex>> {
        if let Some(p) = lock(&self.parsed).get(&txn.commit_lsn) {
            return Some(p);
        }
        match parse_txn(&txn.frames) {
            Ok(p) => {
                let p = Arc::new(TxnIndex::new(p));
                lock(&self.parsed).insert(txn.commit_lsn, p.clone(), p.weight());
                Some(p)
            }
            Err(e) => {
                tracing::error!(lsn = txn.commit_lsn, error = %e, "cannot filter a stored transaction; sent to no session with read rules");
                None
            }
        }
    }
}

/// `txn` (parsed and indexed as `parsed`) filtered with `rels`, evaluating
/// only the routing candidates.
pub fn filter_routed(
    txn: &TxnEntry,
    parsed: &TxnIndex,
    rels: &dyn Fn(u32) -> Option<Arc<RelFilter>>,
) -> Filtered {
    let only = parsed.candidates(rels);
    filter_ops(txn, &parsed.parsed, rels, &only)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::Bounded;

    #[test]
    fn bounded_by_count_and_weight() {
        let mut b: Bounded<u32, u32> = Bounded::new(3, 100);
        for i in 0..5 {
            b.insert(i, i, 10);
        }
        assert_eq!((b.get(&1), b.get(&2), b.get(&4)), (None, Some(2), Some(4)));
        b.insert(9, 9, 85);
        assert_eq!((b.get(&3), b.get(&4), b.get(&9)), (None, Some(4), Some(9)));
        assert!(b.weight <= 100);
        b.insert(10, 10, 101);
        assert_eq!(b.get(&10), None, "heavier than the bound: not kept");
        b.insert(9, 9, 5);
        assert_eq!(b.weight, 15);
        assert!(b.map.len() == 2 && b.order.len() == 2);
    }
}
