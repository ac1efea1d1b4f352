//! A deque stored in fixed-size chunks, for the log's per-transaction
//! indexes (the retention window, the cache).
//!
//! A `VecDeque` grows by reallocating and copying all of itself: with
//! jemalloc, pushing the 4,194,305th 40-byte entry took 133 ms (20 ms at
//! 524,289), and the log's indexes grow under the lock every session reads
//! through, on the replication task. Here growth allocates one more chunk
//! of about 64 KiB and moves nothing; popping from the front frees a chunk
//! once it is empty.
//!
//! Invariant: no chunk is empty, and every chunk but the first and the last
//! holds exactly `chunk_len()` entries (so an index maps to a chunk by
//! division).

use std::collections::VecDeque;

/// Bytes of entries per chunk.
const CHUNK_BYTES: usize = 64 << 10;

pub struct ChunkedDeque<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ChunkedDeque<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedDeque")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl<T> ChunkedDeque<T> {
    /// Entries per chunk: about [`CHUNK_BYTES`], at least 16.
    const fn chunk_len() -> usize {
        let size = std::mem::size_of::<T>();
        if size == 0 || CHUNK_BYTES / size < 16 {
            16
        } else {
            CHUNK_BYTES / size
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, value: T) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < Self::chunk_len() => c.push_back(value),
            _ => {
                let mut c = VecDeque::with_capacity(Self::chunk_len());
                c.push_back(value);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let value = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        if value.is_some() {
            self.len -= 1;
        }
        value
    }

    pub fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(|c| c.front())
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        let first = self.chunks.front()?;
        if i < first.len() {
            return first.get(i);
        }
        let j = i - first.len();
        self.chunks
            .get(1 + j / Self::chunk_len())?
            .get(j % Self::chunk_len())
    }

    /// The index of the first entry for which `pred` is false, the entries
    /// being partitioned (all true before all false), as
    /// [`slice::partition_point`].
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        // First the chunk, by its last entry; then within it.
        let mut before = 0;
        for c in &self.chunks {
            match c.back() {
                Some(last) if pred(last) => before += c.len(),
                _ => return before + c.partition_point(|x| pred(x)),
            }
        }
        before
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation against a `VecDeque`, across many chunk boundaries.
    #[test]
    fn behaves_as_a_vecdeque() {
        let mut d: ChunkedDeque<u64> = ChunkedDeque::default();
        let mut model: VecDeque<u64> = VecDeque::new();
        let per = ChunkedDeque::<u64>::chunk_len();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut next = 0u64;
        for round in 0..60 {
            // Grow by up to 3 chunks, shrink by up to 2.
            for _ in 0..rand() % (3 * per as u64) {
                d.push_back(next);
                model.push_back(next);
                next += 1;
            }
            for _ in 0..rand() % (2 * per as u64) {
                assert_eq!(d.pop_front(), model.pop_front());
            }
            if round % 17 == 16 {
                d.clear();
                model.clear();
            }
            assert_eq!(d.len(), model.len());
            assert_eq!(d.is_empty(), model.is_empty());
            assert_eq!(d.front(), model.front());
            for _ in 0..50 {
                let i = (rand() % (model.len() as u64 + 3)) as usize;
                assert_eq!(d.get(i), model.get(i), "get({i}) in round {round}");
            }
            assert!(d.iter().eq(model.iter()));
            // Values are increasing: every split point.
            for _ in 0..20 {
                let t = next.saturating_sub(rand() % (model.len() as u64 + 2));
                assert_eq!(
                    d.partition_point(|&x| x < t),
                    model.partition_point(|&x| x < t),
                    "partition at {t}"
                );
            }
            assert!(d.chunks.iter().all(|c| !c.is_empty()));
            let n = d.chunks.len();
            assert!(d
                .chunks
                .iter()
                .enumerate()
                .all(|(k, c)| k == 0 || k + 1 == n || c.len() == per));
        }
        while let Some(x) = model.pop_front() {
            assert_eq!(d.pop_front(), Some(x));
        }
        assert_eq!(d.pop_front(), None);
        assert!(d.chunks.is_empty());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(ChunkedDeque::<u64>::chunk_len(), 8192);
        assert_eq!(ChunkedDeque::<[u8; 40]>::chunk_len(), 1638);
        assert_eq!(ChunkedDeque::<[u8; 100_000]>::chunk_len(), 16);
        assert_eq!(ChunkedDeque::<()>::chunk_len(), 16);
    }
}
