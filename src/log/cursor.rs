//! A reader's position in the log: served from the cache when it is there,
//! from disk otherwise, waiting for appends when at the end.
//!
//! Invariant: a cursor yields the relations in force at its start position,
//! then every entry after it in log order, each transaction once, never one
//! with `commit_lsn <=` the last yielded; if the window's start passes its
//! position it fails with `BehindWindow` (never skips silently). `next()`
//! is cancel-safe: state only changes when an entry is returned, and an
//! in-flight disk read is kept and awaited again on the next call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::reader::{read_batch, Batch, DiskRead};
use super::record::{Entry, RelationEntry};
use super::{LogError, Shared};

/// Most entries copied from the cache per lock.
const CACHE_BATCH: u64 = 256;

type Reading = JoinHandle<(DiskRead, Result<Batch, LogError>)>;

pub struct Cursor {
    shared: Arc<Shared>,
    appended: watch::Receiver<u64>,
    buf: VecDeque<(Option<u64>, Entry)>,
    /// Log index of the next entry to fetch.
    next_index: u64,
    lsn: u64,
    offset: u64,
    /// Initial position not yet resolved against disk: emit the relations
    /// in force there on the first disk read.
    emit_relations: bool,
    disk: Option<DiskRead>,
    reading: Option<Reading>,
}

impl Cursor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        next_index: u64,
        lsn: u64,
        offset: u64,
        snapshot: Option<BTreeMap<u32, Arc<RelationEntry>>>,
    ) -> Cursor {
        let appended = shared.appended.subscribe();
        let emit_relations = snapshot.is_none();
        let buf = snapshot
            .unwrap_or_default()
            .into_values()
            .map(|r| (None, Entry::Relation(r)))
            .collect();
        Cursor {
            shared,
            appended,
            buf,
            next_index,
            lsn,
            offset,
            emit_relations,
            disk: None,
            reading: None,
        }
    }

    /// Commit LSN of the last transaction yielded (or the start position).
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Logical byte offset of the position, comparable with `Log::head_offset()`.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Log index of the next entry to fetch (one past the last entry
    /// yielded, once the initial relations are out).
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Log index of the next entry, when everything fetched so far has been
    /// yielded (nothing buffered, no disk read in flight): the position at
    /// which another reader of the log can take over exactly.
    pub fn idle_index(&self) -> Option<u64> {
        (self.buf.is_empty() && self.reading.is_none()).then_some(self.next_index)
    }

    /// The next entry; waits at the end of the log.
    pub async fn next(&mut self) -> Result<Entry, LogError> {
        loop {
            if let Some(h) = self.reading.as_mut() {
                let res = h.await;
                self.reading = None;
                let (mut d, batch) = res.map_err(|e| LogError::Internal(e.to_string()))?;
                match batch? {
                    Batch::Entries(v) => {
                        self.buf.extend(v);
                        self.disk = Some(d);
                    }
                    Batch::Gone { first_index } => {
                        self.check_window()?;
                        // Only relations were lost with the deleted segment
                        // (its transactions are all <= our position): resume
                        // at the oldest segment with its relation snapshot.
                        d.reader = None;
                        d.emit_relations = true;
                        self.next_index = first_index.max(self.next_index);
                        d.next_index = self.next_index;
                        self.disk = Some(d);
                    }
                }
                continue;
            }
            self.check_window()?;
            if let Some((idx, e)) = self.buf.pop_front() {
                if let Some(i) = idx {
                    self.next_index = i + 1;
                }
                if let Entry::Txn(t) = &e {
                    self.offset += t.size();
                    if t.commit_lsn <= self.lsn {
                        continue;
                    }
                    self.lsn = t.commit_lsn;
                }
                return Ok(e);
            }
            self.appended.borrow_and_update();
            {
                let st = self.shared.lock();
                if self.next_index >= st.cache.base_index {
                    let end = st.next_index.min(self.next_index + CACHE_BATCH);
                    if self.next_index < end {
                        for i in self.next_index..end {
                            if let Some(e) = st.cache.get(i) {
                                self.buf.push_back((Some(i), e.clone()));
                            }
                        }
                        self.disk = None;
                        continue;
                    }
                    if self.shared.closed.load(Ordering::SeqCst) {
                        return Err(LogError::Closed);
                    }
                } else {
                    let mut d = self.disk.take().unwrap_or(DiskRead {
                        reader: None,
                        next_index: self.next_index,
                        emit_relations: false,
                    });
                    d.next_index = self.next_index;
                    if self.emit_relations {
                        d.emit_relations = true;
                        self.emit_relations = false;
                    }
                    let shared = self.shared.clone();
                    self.reading = Some(tokio::task::spawn_blocking(move || {
                        let r = read_batch(&shared, &mut d);
                        (d, r)
                    }));
                    continue;
                }
            }
            if self.appended.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    fn check_window(&self) -> Result<(), LogError> {
        let start = self.shared.start_lsn();
        if self.lsn < start {
            return Err(LogError::BehindWindow {
                requested: self.lsn,
                start_lsn: start,
            });
        }
        Ok(())
    }
}
