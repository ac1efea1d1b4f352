//! Routing a transaction's rows to views by the values rules compare, so
//! that filtering one transaction for one view costs about the rows that
//! view may read, not every row of the transaction.
//!
//! For each (relation, column) a rule compares, an index of the
//! transaction from a cell's text to the ops whose new or old row holds it
//! is built once, on first use, and shared by every view. A view's
//! candidate ops are derived from its predicate: `column = v` → the ops
//! indexed under `v`; OR → the union; AND → the smallest of its parts; a
//! `true` rule → every op of the relation. Only candidates are evaluated
//! (exactly, by [`super::filter::filter`]); an op that is not a candidate
//! has neither a new nor an old row the rule accepts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::filter::RelFilter;
use super::view::Pred;
use super::wire::{Cell, OpKind, ParsedTxn};

/// Cell text → ops (positions) whose new or old row holds it.
pub type ValueIndex = HashMap<Box<[u8]>, Vec<usize>>;

/// A parsed transaction with its lazily built value indexes.
pub struct TxnIndex {
    pub parsed: ParsedTxn,
    /// Ops of each relation (row changes), in order.
    by_rel: HashMap<u32, Vec<usize>>,
    /// Truncate ops (always candidates).
    truncates: Vec<usize>,
    values: Mutex<HashMap<(u32, usize), Arc<ValueIndex>>>,
}

impl TxnIndex {
    pub fn new(parsed: ParsedTxn) -> TxnIndex {
        let mut by_rel: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut truncates = Vec::new();
        for (i, op) in parsed.ops.iter().enumerate() {
            match op.kind {
                OpKind::Truncate => truncates.push(i),
                OpKind::Insert | OpKind::Update | OpKind::Delete => {
                    by_rel.entry(op.relation_id).or_default().push(i)
                }
                OpKind::Begin | OpKind::Commit => {}
            }
        }
        TxnIndex {
            parsed,
            by_rel,
            truncates,
            values: Mutex::new(HashMap::new()),
        }
    }

    /// Approximate memory held (frames, op and cell positions; the value
    /// indexes built later are not counted).
    pub fn weight(&self) -> usize {
        let cells: usize = self
            .parsed
            .ops
            .iter()
            .map(|o| {
                o.row.as_ref().map_or(0, |r| r.cells.len())
                    + o.old_row.as_ref().map_or(0, |r| r.cells.len())
            })
            .sum();
        self.parsed.frames.len() + self.parsed.ops.len() * 160 + cells * 24
    }

    /// Relations with row changes in this transaction.
    pub fn relations(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_rel.keys().copied()
    }

    /// Relations truncated by this transaction.
    pub fn truncated(&self) -> impl Iterator<Item = u32> + '_ {
        self.truncates
            .iter()
            .filter_map(|&i| self.parsed.ops.get(i))
            .flat_map(|op| op.truncate_ids.iter().copied())
    }

    /// The index of column `col` of relation `rel`, built on first use.
    pub fn index(&self, rel: u32, col: usize) -> Arc<ValueIndex> {
        let mut m = self.values.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((rel, col))
            .or_insert_with(|| {
                let mut idx: ValueIndex = HashMap::new();
                let buf: &[u8] = &self.parsed.frames;
                for &i in self.by_rel.get(&rel).map(Vec::as_slice).unwrap_or(&[]) {
                    let op = &self.parsed.ops[i];
                    for row in [op.row.as_ref(), op.old_row.as_ref()].into_iter().flatten() {
                        if let Some(Cell::Text(r)) = row.cells.get(col) {
                            if let Some(v) = buf.get(r.clone()) {
                                let e = idx.entry(v.into()).or_default();
                                if e.last() != Some(&i) {
                                    e.push(i);
                                }
                            }
                        }
                    }
                }
                Arc::new(idx)
            })
            .clone()
    }

    /// Candidate ops (sorted) for a session with relation filters `rels`.
    pub fn candidates(&self, rels: &dyn Fn(u32) -> Option<Arc<RelFilter>>) -> Vec<usize> {
        let mut out = self.truncates.clone();
        for (&rel, ops) in &self.by_rel {
            let Some(f) = rels(rel) else { continue };
            let Some(pred) = &f.pred else { continue };
            match self.cand(rel, &f, pred) {
                None => out.extend_from_slice(ops),
                Some(v) => out.extend(v),
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `None`: every op of `rel`.
    fn cand(&self, rel: u32, f: &RelFilter, p: &Pred) -> Option<Vec<usize>> {
        match p {
            Pred::True => None,
            Pred::False => Some(Vec::new()),
            Pred::Match { column, values } => {
                let Some(col) = f.column_index(column) else {
                    return Some(Vec::new());
                };
                let idx = self.index(rel, col);
                let mut v: Vec<usize> = values
                    .iter()
                    .filter_map(|x| idx.get(x.as_bytes()))
                    .flatten()
                    .copied()
                    .collect();
                v.sort_unstable();
                v.dedup();
                Some(v)
            }
            Pred::Or(parts) => {
                let mut all = Vec::new();
                for q in parts {
                    all.extend(self.cand(rel, f, q)?);
                }
                all.sort_unstable();
                all.dedup();
                Some(all)
            }
            Pred::And(parts) => parts
                .iter()
                .filter_map(|q| self.cand(rel, f, q))
                .min_by_key(Vec::len),
        }
    }
}

/// Which rows of one relation can matter to a view, in terms of values:
/// an op can be readable only if its new or old row has one of `Values` in
/// that column (the same derivation as [`TxnIndex::candidates`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The relation is not sent to the view (but see truncates: none).
    Nothing,
    /// Any row may be readable.
    All,
    /// Only rows with one of these (column position, cell text) pairs.
    Values(Vec<(usize, Box<[u8]>)>),
}

impl Route {
    /// The route of a relation filter (`None` pred: not sent).
    pub fn of(f: &RelFilter) -> Route {
        match &f.pred {
            None => Route::Nothing,
            Some(p) => match route_pred(f, p) {
                None => Route::All,
                Some(mut v) => {
                    v.sort();
                    v.dedup();
                    Route::Values(v)
                }
            },
        }
    }
}

/// `None`: every row.
fn route_pred(f: &RelFilter, p: &Pred) -> Option<Vec<(usize, Box<[u8]>)>> {
    match p {
        Pred::True => None,
        Pred::False => Some(Vec::new()),
        Pred::Match { column, values } => Some(match f.column_index(column) {
            None => Vec::new(),
            Some(col) => values.iter().map(|v| (col, v.as_bytes().into())).collect(),
        }),
        Pred::Or(parts) => {
            let mut all = Vec::new();
            for q in parts {
                all.extend(route_pred(f, q)?);
            }
            Some(all)
        }
        Pred::And(parts) => parts
            .iter()
            .filter_map(|q| route_pred(f, q))
            .min_by_key(Vec::len),
    }
}
