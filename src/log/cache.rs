//! Bounded in-memory cache of the newest log entries, shared by cursors.
//!
//! Invariant: the cache holds every entry with index in `base_index..end`,
//! contiguous, as `Arc`s (no copy per cursor). It holds at most `max_bytes`
//! of entries that are already durable on disk; entries not yet fsynced are
//! never evicted (they exist nowhere else readable), their total is bounded
//! by the writer backpressure. `base_relations` are the relation definitions
//! in force just before `base_index`. The entries are kept in chunks
//! (growing moves nothing: see [`ChunkedDeque`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::chunked::ChunkedDeque;
use super::record::{Entry, RelationEntry};

/// Bytes a relation entry accounts for in the cache bound.
pub fn relation_size(r: &RelationEntry) -> u64 {
    r.frame.len() as u64 + 64
}

pub fn entry_size(e: &Entry) -> u64 {
    match e {
        Entry::Relation(r) => relation_size(r),
        Entry::Txn(t) => t.size(),
    }
}

#[derive(Debug)]
pub struct Cache {
    pub items: ChunkedDeque<Entry>,
    pub base_index: u64,
    pub base_relations: BTreeMap<u32, Arc<RelationEntry>>,
    pub bytes: u64,
    pub txns: usize,
    pub max_bytes: u64,
}

impl Cache {
    /// An empty cache starting at `base_index` with these relations in force.
    pub fn new(
        base_index: u64,
        base_relations: BTreeMap<u32, Arc<RelationEntry>>,
        max_bytes: u64,
    ) -> Cache {
        Cache {
            items: ChunkedDeque::default(),
            base_index,
            base_relations,
            bytes: 0,
            txns: 0,
            max_bytes,
        }
    }

    pub fn end_index(&self) -> u64 {
        self.base_index + self.items.len() as u64
    }

    pub fn push(&mut self, e: Entry) {
        self.bytes += entry_size(&e);
        if matches!(e, Entry::Txn(_)) {
            self.txns += 1;
        }
        self.items.push_back(e);
    }

    /// Evicts the oldest entries while over the bound, never one at or after
    /// `durable_index`.
    pub fn evict(&mut self, durable_index: u64) {
        while self.bytes > self.max_bytes && self.base_index < durable_index {
            let Some(e) = self.items.pop_front() else {
                break;
            };
            self.bytes -= entry_size(&e);
            match e {
                Entry::Relation(r) => {
                    self.base_relations.insert(r.relation_id, r);
                }
                Entry::Txn(_) => self.txns -= 1,
            }
            self.base_index += 1;
        }
    }

    /// The entry at log index `i`, if cached.
    pub fn get(&self, i: u64) -> Option<&Entry> {
        let k = i.checked_sub(self.base_index)?;
        self.items.get(usize::try_from(k).ok()?)
    }

    /// Relation definitions in force just before index `i` (`i` within the cache).
    pub fn relations_at(&self, i: u64) -> BTreeMap<u32, Arc<RelationEntry>> {
        let mut m = self.base_relations.clone();
        let n = i.saturating_sub(self.base_index) as usize;
        for e in self.items.iter().take(n) {
            if let Entry::Relation(r) = e {
                m.insert(r.relation_id, r.clone());
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::TxnEntry;
    use bytes::Bytes;

    fn txn(lsn: u64, n: usize) -> Entry {
        Entry::Txn(Arc::new(TxnEntry {
            commit_lsn: lsn,
            xid: 1,
            commit_time: 0,
            relation_ids: vec![],
            changes: 1,
            frames: Bytes::from(vec![0u8; n]),
        }))
    }

    #[test]
    fn evicts_only_durable_and_tracks_relations() {
        let mut c = Cache::new(5, BTreeMap::new(), 300);
        c.push(Entry::Relation(Arc::new(RelationEntry {
            relation_id: 1,
            frame: Bytes::from_static(b"r1"),
        })));
        for i in 0..4 {
            c.push(txn(10 + i, 36)); // size 100 each
        }
        c.evict(0);
        assert_eq!(c.base_index, 5, "nothing durable: nothing evicted");
        c.evict(7);
        assert_eq!(c.base_index, 7);
        assert!(c.base_relations.contains_key(&1));
        assert_eq!(c.bytes, 300);
        assert_eq!(c.txns, 3);
        assert!(c.get(6).is_none());
        assert!(c.get(7).is_some());
        assert_eq!(c.relations_at(9).len(), 1);
    }
}
