//! The served window: which transactions are retained, by bytes and by age.
//!
//! Invariant: `bytes` is the sum of `TxnEntry::size()` of the retained
//! transactions and, after [`Window::enforce`], is ≤ `max_bytes` unless a
//! single (newest) transaction alone exceeds it; every transaction with
//! `commit_lsn > start_lsn` is retained, in commit order. Memory: one
//! [`TxnMeta`] (40 bytes) per retained transaction, never its data, in
//! chunks (growing moves nothing: see [`ChunkedDeque`]).

use std::time::Duration;

use super::chunked::ChunkedDeque;

/// What the window keeps of one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnMeta {
    pub lsn: u64,
    /// µs since the Unix epoch.
    pub time: i64,
    /// Log index of its record.
    pub index: u64,
    /// Logical offset before it.
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Default)]
pub struct Window {
    pub txns: ChunkedDeque<TxnMeta>,
    pub bytes: u64,
}

impl Window {
    pub fn push(&mut self, m: TxnMeta) {
        self.bytes += m.size;
        self.txns.push_back(m);
    }

    pub fn clear(&mut self) {
        self.txns.clear();
        self.bytes = 0;
    }

    /// Drops transactions from the oldest end until the window holds at most
    /// `max_bytes` (always keeping the newest transaction) and none is older
    /// than `max_age` (commit time vs `now_micros`). Returns the commit LSN of
    /// the last dropped transaction, the new start position, if any dropped.
    pub fn enforce(
        &mut self,
        max_bytes: u64,
        max_age: Option<Duration>,
        now_micros: i64,
    ) -> Option<u64> {
        let mut dropped = None;
        while self.txns.len() > 1 && self.bytes > max_bytes {
            dropped = self.pop();
        }
        if let Some(age) = max_age {
            let cutoff =
                now_micros.saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX));
            while self.txns.front().is_some_and(|m| m.time < cutoff) {
                dropped = self.pop();
            }
        }
        dropped
    }

    fn pop(&mut self) -> Option<u64> {
        let m = self.txns.pop_front()?;
        self.bytes -= m.size;
        Some(m.lsn)
    }

    /// The first retained transaction with `lsn > after`, if any.
    pub fn first_after(&self, after: u64) -> Option<&TxnMeta> {
        let p = self.txns.partition_point(|m| m.lsn <= after);
        self.txns.get(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(lsn: u64, time: i64, size: u64) -> TxnMeta {
        TxnMeta {
            lsn,
            time,
            index: lsn,
            offset: 0,
            size,
        }
    }

    #[test]
    fn bytes_bound_is_exact_and_keeps_newest() {
        let mut w = Window::default();
        for i in 1..=10 {
            w.push(meta(i, 0, 100));
        }
        assert_eq!(w.enforce(350, None, 0), Some(7));
        assert_eq!(w.bytes, 300);
        assert_eq!(w.txns.front().map(|m| m.lsn), Some(8));
        w.push(meta(11, 0, 1000));
        assert_eq!(w.enforce(350, None, 0), Some(10));
        assert_eq!(
            w.txns.len(),
            1,
            "the newest is kept even when alone too big"
        );
        assert_eq!(w.enforce(350, None, 0), None);
    }

    #[test]
    fn age_drops_old_ones() {
        let mut w = Window::default();
        w.push(meta(1, 1_000_000, 10));
        w.push(meta(2, 5_000_000, 10));
        w.push(meta(3, 9_000_000, 10));
        assert_eq!(
            w.enforce(u64::MAX, Some(Duration::from_secs(3)), 10_000_000),
            Some(2)
        );
        assert_eq!(w.first_after(0).map(|m| m.lsn), Some(3));
        assert_eq!(w.first_after(3), None);
    }
}
