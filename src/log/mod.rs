//! pgsat's durable, bounded history of committed transactions
//! (`DATA_DIR/<slot>/`), served to clients through cursors.
//!
//! Invariants:
//! - Entries are in log order: transactions strictly increasing by
//!   `commit_lsn`, each `Relation` entry before the first transaction that
//!   uses that definition. `append_txn` ignores a transaction whose
//!   `commit_lsn <= end_lsn()` (dedupe after a reconnection).
//! - `durable_lsn()` ≤ the newest commit LSN whose record was written AND
//!   fsynced (group commit, see `writer`). The replication driver confirms the
//!   slot only up to `durable_lsn()`, so a crash loses nothing confirmed.
//! - The window: every transaction with `commit_lsn > start_lsn()` is
//!   served; their `TxnEntry::size()` sum ≤ `window_max_bytes` (unless the
//!   newest alone exceeds it), none older than `window_max_age`. `start_lsn`
//!   advances transaction by transaction; segment files are deleted whole
//!   once every transaction in them is ≤ `start_lsn`. Disk use ≤ window + one
//!   segment + headers. A position `< start_lsn()` is `BehindWindow`, also
//!   for a cursor that falls behind while reading.
//! - `start_lsn` survives restarts: it is at least the `meta` file's
//!   `start_lsn` (set durably by `mark_gap`/`set_start`) and at least the
//!   `prev_lsn` of the oldest segment, and otherwise recomputed by the same
//!   retention rule on open. A gap (slot ahead of the log) is never bridged.
//! - Memory: the cache (≤ `cache_max_bytes` of durable entries, plus entries
//!   not yet fsynced, which `wait_for_room` bounds to [`UNSYNCED_MAX_BYTES`]),
//!   ~40 bytes of metadata per transaction in the window, and per disk
//!   cursor one read buffer plus one batch (≤ 256 KiB, or one larger txn).
//!
//! - Open (`recovery`): take `LOCK`; refuse a log of another system id,
//!   database or slot (`ForeignLog`; a timeline change is accepted with a
//!   warning); read every segment once, record by record, checking CRCs; a
//!   torn or corrupt tail of the NEWEST segment is cut (warning: it can only
//!   hold records that were never fsynced, hence never confirmed); a bad
//!   record in an older segment is `Corrupt { segment, offset }`. The cache
//!   starts empty; cursors read older entries from disk.
//!
//! Directory layout: `LOCK` (flock: one process per log), `meta` (JSON:
//! identity + start floor, replaced atomically), `{seq:020}.seg` segments
//! (format in `format`). New log: `Log::open` creates an empty log with
//! `start_lsn() == end_lsn() == 0` and `is_new() == true`; the replication
//! driver then calls `set_start(confirmed_flush_lsn)` so that clients asking
//! for an older position get BEHIND_WINDOW rather than a silent gap.

pub mod cache;
pub mod chunked;
pub mod cursor;
pub mod format;
pub mod meta;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod writer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

pub use cursor::Cursor;
pub use record::{Entry, RelationEntry, TxnEntry};

use crate::clock::unix_micros as now_micros;
use crate::pg::lsn::Lsn;
use cache::Cache;
use format::{encode_header, relation_record_len, txn_record_len, SegmentHeader, MAX_RECORD_LEN};
use meta::Meta;
use retention::{TxnMeta, Window};
use writer::{Cmd, Writer};

/// Bound on appended-but-not-yet-fsynced record bytes before
/// [`Log::wait_for_room`] makes the producer wait.
pub const UNSYNCED_MAX_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// `WINDOW_MAX_BYTES`: sum of `TxnEntry::size()` served.
    pub window_max_bytes: u64,
    /// `WINDOW_MAX_AGE`: drop transactions committed longer ago.
    pub window_max_age: Option<Duration>,
    /// `CACHE_MAX_BYTES`: newest durable entries kept in memory.
    pub cache_max_bytes: u64,
    /// Segment roll size; `None`: `clamp(window / 8, 4 KiB, 64 MiB)`.
    pub segment_max_bytes: Option<u64>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            window_max_bytes: 1 << 30,
            window_max_age: None,
            cache_max_bytes: 64 << 20,
            segment_max_bytes: None,
        }
    }
}

impl LogOptions {
    pub fn segment_max(&self) -> u64 {
        self.segment_max_bytes
            .unwrap_or((self.window_max_bytes / 8).clamp(4 << 10, 64 << 20))
            .max(1)
    }
}

/// Which server, database and slot a log belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogIdentity {
    /// `IDENTIFY_SYSTEM` systemid.
    pub system_id: String,
    pub timeline: u32,
    pub database: String,
    pub slot: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log {}: {op}: {source}", .dir.display())]
    Io {
        dir: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("log {} is in use by another pgsat process (its LOCK file is held); stop it or use another DATA_DIR", .dir.display())]
    Locked { dir: PathBuf },
    #[error("log {} belongs to another database ({what}); point DATA_DIR elsewhere or move that folder away", .dir.display())]
    ForeignLog { dir: PathBuf, what: String },
    #[error("log segment {} is corrupt at byte {offset}: {detail}", .segment.display())]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("log meta file {} is unreadable: {detail}", .path.display())]
    BadMeta { path: PathBuf, detail: String },
    #[error("position {} is behind the log window (oldest position served: {})", Lsn(*.requested), Lsn(*.start_lsn))]
    BehindWindow { requested: u64, start_lsn: u64 },
    #[error("transaction of {bytes} bytes is larger than a log record may be")]
    TooLarge { bytes: u64 },
    #[error("log is closed")]
    Closed,
    #[error("log reader task failed: {0}")]
    Internal(String),
}

impl LogError {
    pub(crate) fn io(dir: &Path, op: &'static str, source: std::io::Error) -> LogError {
        LogError::Io {
            dir: dir.to_path_buf(),
            op,
            source,
        }
    }
}

/// A snapshot of the log's accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStats {
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub durable_lsn: u64,
    /// Oldest transaction served, if any.
    pub oldest_lsn: Option<u64>,
    pub window_bytes: u64,
    pub window_txns: u64,
    pub cache_bytes: u64,
    pub cache_txns: u64,
    /// Appended record bytes not yet fsynced.
    pub unsynced_bytes: u64,
    pub disk_bytes: u64,
    pub segments: u64,
    pub head_offset: u64,
    pub healthy: bool,
}

/// One segment as the log accounts for it.
#[derive(Clone, Debug)]
pub(crate) struct SegMeta {
    pub seq: u64,
    pub first_index: u64,
    /// Newest commit LSN in it (the one before it when it has none).
    pub last_lsn: u64,
    /// Bytes assigned to it (header + records appended, written or not).
    pub len: u64,
    pub records: u64,
}

/// What the writer has made durable.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Durable {
    /// Every record with a smaller index is fsynced.
    pub index: u64,
    /// Segment and length of the durable extent.
    pub seq: u64,
    pub len: u64,
    pub lsn: u64,
}

pub(crate) struct State {
    tx: Sender<Cmd>,
    pub segs: VecDeque<SegMeta>,
    pub next_index: u64,
    pub end_lsn: u64,
    pub head_offset: u64,
    pub start_lsn: u64,
    pub relations: BTreeMap<u32, Arc<RelationEntry>>,
    pub window: Window,
    pub cache: Cache,
    pub durable: Durable,
    pub unsynced: u64,
    meta: Meta,
}

impl State {
    fn enforce_retention(&mut self, opts: &LogOptions, now: i64) {
        if let Some(lsn) = self
            .window
            .enforce(opts.window_max_bytes, opts.window_max_age, now)
        {
            self.start_lsn = self.start_lsn.max(lsn);
        }
        while self.segs.len() > 1 && self.segs[0].last_lsn <= self.start_lsn {
            if let Some(seg) = self.segs.pop_front() {
                let _ = self.tx.send(Cmd::Delete(seg.seq));
            }
        }
    }
}

#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// Writes and fsyncs fail with ENOSPC.
    pub fail_io: AtomicBool,
    /// The writer waits after writing, before fsync.
    pub hold_fsync: AtomicBool,
    /// While held before fsync, the writer thread dies (simulated crash).
    pub crash: AtomicBool,
    /// Batches written (reached the point before fsync).
    pub written: AtomicU64,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    opts: LogOptions,
    segment_max: u64,
    identity: LogIdentity,
    state: Mutex<State>,
    pub closed: AtomicBool,
    pub healthy: AtomicBool,
    start_lsn: AtomicU64,
    end_lsn: AtomicU64,
    head: AtomicU64,
    /// Log index of the next entry; bumped on append, gap and close.
    appended: watch::Sender<u64>,
    durable: watch::Sender<u64>,
    /// Bumped on every durable publication or health change.
    progress: watch::Sender<u64>,
    /// WAL position the replication stream has passed: every transaction
    /// whose commit ends at or before it is appended (see [`Log::set_passed`]).
    passed: watch::Sender<u64>,
    #[cfg(test)]
    pub faults: Faults,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the accounting half
        // updated in a way later code relies on; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn start_lsn(&self) -> u64 {
        self.start_lsn.load(Ordering::SeqCst)
    }

    fn sync_atomics(&self, st: &State) {
        self.start_lsn.store(st.start_lsn, Ordering::SeqCst);
        self.end_lsn.store(st.end_lsn, Ordering::SeqCst);
        self.head.store(st.head_offset, Ordering::SeqCst);
    }

    /// Applies the retention rule (window by bytes and age), deletes segments
    /// wholly outside the window (never the active one).
    fn enforce_retention(&self, st: &mut State, now: i64) {
        st.enforce_retention(&self.opts, now);
    }

    /// Starts a new segment if the record would not fit in the active one.
    fn maybe_roll(&self, st: &mut State, rec_len: u64) {
        let Some(active) = st.segs.back() else {
            return;
        };
        if active.records == 0 || active.len + rec_len <= self.segment_max {
            return;
        }
        let seq = active.seq + 1;
        let header = encode_header(&SegmentHeader {
            seq,
            first_index: st.next_index,
            first_offset: st.head_offset,
            prev_lsn: st.end_lsn,
            identity: self.identity.clone(),
            relations: st.relations.clone(),
        });
        st.segs.push_back(SegMeta {
            seq,
            first_index: st.next_index,
            last_lsn: st.end_lsn,
            len: header.len() as u64,
            records: 0,
        });
        let _ = st.tx.send(Cmd::Roll { seq, header });
    }

    /// Called by the writer after a batch is written and fsynced.
    pub(crate) fn publish(&self, d: Durable, synced_bytes: u64) {
        let lsn = {
            let mut st = self.lock();
            st.durable.index = st.durable.index.max(d.index);
            st.durable.seq = d.seq;
            st.durable.len = d.len;
            st.durable.lsn = st.durable.lsn.max(d.lsn);
            st.unsynced = st.unsynced.saturating_sub(synced_bytes);
            let idx = st.durable.index;
            st.cache.evict(idx);
            st.durable.lsn
        };
        self.durable.send_if_modified(|v| {
            let changed = *v != lsn;
            *v = lsn;
            changed
        });
        self.progress.send_modify(|v| *v += 1);
    }

    pub(crate) fn healthy_changed(&self) {
        self.progress.send_modify(|v| *v += 1);
    }

    /// Periodic work of the writer thread while idle: age-based retention.
    pub(crate) fn tick(&self) {
        if self.opts.window_max_age.is_none() {
            return;
        }
        let mut st = self.lock();
        self.enforce_retention(&mut st, now_micros());
        self.sync_atomics(&st);
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    lock_file: Mutex<Option<File>>,
    is_new: bool,
}

impl Inner {
    fn shutdown(&self) {
        {
            let st = self.shared.lock();
            if self.shared.closed.swap(true, Ordering::SeqCst) {
                return;
            }
            let _ = st.tx.send(Cmd::Shutdown);
        }
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!(dir = %self.shared.dir.display(), "log writer thread panicked");
            }
        }
        self.lock_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.shared.appended.send_modify(|_| {});
        self.shared.healthy_changed();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Handle on an open log. Cheap to clone; the writer thread stops when the
/// last handle is dropped or [`Log::close`] is called.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl Log {
    /// Opens (or creates) the log in `dir` (`DATA_DIR/<slot>`): takes its
    /// lock, checks its identity, recovers it (see `recovery`), starts the
    /// writer thread.
    pub fn open(dir: &Path, identity: &LogIdentity, opts: LogOptions) -> Result<Log, LogError> {
        let rec = recovery::recover(dir, identity)?;
        let (tx, rx) = mpsc::channel();
        let durable = Durable {
            index: rec.next_index,
            seq: rec.active.seq,
            len: rec.active.len,
            lsn: rec.end_lsn,
        };
        let mut st = State {
            tx,
            segs: rec.segs,
            next_index: rec.next_index,
            end_lsn: rec.end_lsn,
            head_offset: rec.head_offset,
            start_lsn: rec.start_lsn,
            relations: rec.relations.clone(),
            window: rec.window,
            cache: Cache::new(rec.next_index, rec.relations, opts.cache_max_bytes),
            durable,
            unsynced: 0,
            meta: rec.meta,
        };
        st.enforce_retention(&opts, now_micros());
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segment_max: opts.segment_max(),
            opts,
            identity: identity.clone(),
            closed: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            start_lsn: AtomicU64::new(0),
            end_lsn: AtomicU64::new(0),
            head: AtomicU64::new(0),
            appended: watch::Sender::new(rec.next_index),
            durable: watch::Sender::new(rec.end_lsn),
            progress: watch::Sender::new(0),
            passed: watch::Sender::new(0),
            #[cfg(test)]
            faults: Faults::default(),
            state: Mutex::new(st),
        });
        shared.sync_atomics(&shared.lock());
        let writer = Writer {
            shared: shared.clone(),
            rx,
            active: rec.active,
            index: rec.next_index,
            lsn: rec.end_lsn,
        };
        let handle = std::thread::Builder::new()
            .name("pgsat-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::io(dir, "start writer thread", e))?;
        Ok(Log {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(handle)),
                lock_file: Mutex::new(Some(rec.lock)),
                is_new: rec.is_new,
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// True when this open created the log (no meta, no segment before).
    pub fn is_new(&self) -> bool {
        self.inner.is_new
    }

    /// Appends a relation definition; visible to cursors at once. A
    /// definition identical to the one in force is not appended again.
    pub fn append_relation(&self, rel: RelationEntry) -> Result<(), LogError> {
        let s = self.shared();
        let mut st = s.lock();
        if s.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        if st
            .relations
            .get(&rel.relation_id)
            .is_some_and(|r| **r == rel)
        {
            return Ok(());
        }
        let rec_len = relation_record_len(&rel);
        if rec_len > MAX_RECORD_LEN {
            return Err(LogError::TooLarge { bytes: rec_len });
        }
        s.maybe_roll(&mut st, rec_len);
        let rel = Arc::new(rel);
        let index = st.next_index;
        st.next_index += 1;
        if let Some(seg) = st.segs.back_mut() {
            seg.len += rec_len;
            seg.records += 1;
        }
        st.relations.insert(rel.relation_id, rel.clone());
        st.unsynced += rec_len;
        st.cache.push(Entry::Relation(rel.clone()));
        let _ = st.tx.send(Cmd::Relation(rel));
        drop(st);
        s.appended.send_replace(index + 1);
        Ok(())
    }

    /// Appends a committed transaction. `Ok(false)` (ignored) when
    /// `commit_lsn <= end_lsn()`. Visible to cursors at once (from the
    /// cache); durable once `durable_lsn() >= commit_lsn`. Takes the
    /// assembler's `Arc` as it is: the entry is shared, not copied.
    pub fn append_txn(&self, txn: impl Into<Arc<TxnEntry>>) -> Result<bool, LogError> {
        self.append_txn_at(txn).map(|index| index.is_some())
    }

    /// [`Log::append_txn`], returning the transaction's log index (`None`:
    /// ignored, the log already has it).
    pub fn append_txn_at(&self, txn: impl Into<Arc<TxnEntry>>) -> Result<Option<u64>, LogError> {
        let txn: Arc<TxnEntry> = txn.into();
        let s = self.shared();
        let mut st = s.lock();
        if s.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        if txn.commit_lsn <= st.end_lsn {
            return Ok(None);
        }
        let rec_len = txn_record_len(&txn);
        if rec_len > MAX_RECORD_LEN {
            return Err(LogError::TooLarge { bytes: rec_len });
        }
        s.maybe_roll(&mut st, rec_len);
        let index = st.next_index;
        st.next_index += 1;
        if let Some(seg) = st.segs.back_mut() {
            seg.len += rec_len;
            seg.records += 1;
            seg.last_lsn = txn.commit_lsn;
        }
        let size = txn.size();
        let offset = st.head_offset;
        st.window.push(TxnMeta {
            lsn: txn.commit_lsn,
            time: txn.commit_time,
            index,
            offset,
            size,
        });
        st.head_offset += size;
        st.end_lsn = txn.commit_lsn;
        st.unsynced += rec_len;
        st.cache.push(Entry::Txn(txn.clone()));
        let durable_index = st.durable.index;
        st.cache.evict(durable_index);
        let _ = st.tx.send(Cmd::Txn(txn));
        s.enforce_retention(&mut st, now_micros());
        s.sync_atomics(&st);
        drop(st);
        s.appended.send_replace(index + 1);
        Ok(Some(index))
    }

    /// Backpressure: resolves once fewer than [`UNSYNCED_MAX_BYTES`] appended
    /// bytes wait for the disk (or the log is closed).
    pub async fn wait_for_room(&self) {
        let s = self.shared();
        let room = || s.lock().unsynced < UNSYNCED_MAX_BYTES || s.closed.load(Ordering::SeqCst);
        if room() {
            // The usual case, after every commit: no watch subscription.
            return;
        }
        let mut rx = s.progress.subscribe();
        loop {
            if room() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once everything appended before the call is fsynced.
    pub async fn flush(&self) -> Result<(), LogError> {
        let s = self.shared();
        let mut rx = s.progress.subscribe();
        let target = s.lock().next_index;
        loop {
            if s.lock().durable.index >= target {
                return Ok(());
            }
            if s.closed.load(Ordering::SeqCst) {
                return Err(LogError::Closed);
            }
            if rx.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    /// Newest commit LSN appended (`start_lsn()` when none since).
    pub fn end_lsn(&self) -> u64 {
        self.shared().end_lsn.load(Ordering::SeqCst)
    }

    /// Newest commit LSN fsynced.
    pub fn durable_lsn(&self) -> u64 {
        *self.shared().durable.borrow()
    }

    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.shared().durable.subscribe()
    }

    /// Called by the replication driver with the `wal_end` of a primary
    /// keepalive (the walsender's sent position): every transaction whose
    /// commit ends at or before `lsn` has been appended before this call.
    /// Monotonic; used by snapshot sessions to know that no transaction at
    /// or before a WAL position can still arrive on an idle server.
    pub fn set_passed(&self, lsn: u64) {
        self.shared().passed.send_if_modified(|v| {
            let changed = lsn > *v;
            if changed {
                *v = lsn;
            }
            changed
        });
    }

    /// The position given to [`Log::set_passed`] (0 before any).
    pub fn passed_lsn(&self) -> u64 {
        *self.shared().passed.borrow()
    }

    pub fn watch_passed(&self) -> watch::Receiver<u64> {
        self.shared().passed.subscribe()
    }

    /// A position a little before the transactions committed at or after
    /// `since_micros` (commit time, µs since the Unix epoch): the commit LSN
    /// of the newest transaction in the window committed before it, else
    /// `start_lsn()`. Never before `start_lsn()`, so a cursor opens there.
    pub fn lsn_before_time(&self, since_micros: i64) -> u64 {
        let s = self.shared();
        let st = s.lock();
        let i = st.window.txns.partition_point(|m| m.time < since_micros);
        let lsn = if i == 0 {
            st.start_lsn
        } else {
            st.window.txns.get(i - 1).map_or(st.start_lsn, |m| m.lsn)
        };
        lsn.max(st.start_lsn)
    }

    /// Every transaction with `commit_lsn > start_lsn()` is retained.
    pub fn start_lsn(&self) -> u64 {
        self.shared().start_lsn()
    }

    /// Cumulative `TxnEntry::size()` appended (comparable with `Cursor::offset`).
    pub fn head_offset(&self) -> u64 {
        self.shared().head.load(Ordering::SeqCst)
    }

    pub fn healthy(&self) -> bool {
        self.shared().healthy.load(Ordering::SeqCst)
    }

    /// The slot is at `lsn`, ahead of the log's end: positions before it
    /// cannot be served. Durably sets `start_lsn = end_lsn = lsn` (older
    /// transactions leave the window); the log continues after it. No-op
    /// when `lsn <= end_lsn()`.
    pub fn mark_gap(&self, lsn: u64) -> Result<(), LogError> {
        let s = self.shared();
        let mut st = s.lock();
        if s.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        if lsn <= st.end_lsn {
            return Ok(());
        }
        let mut meta = st.meta.clone();
        meta.start_lsn = lsn;
        meta::write(&s.dir, &meta)?;
        st.meta = meta;
        st.start_lsn = lsn;
        st.end_lsn = lsn;
        st.window.clear();
        st.durable.lsn = st.durable.lsn.max(lsn);
        s.enforce_retention(&mut st, now_micros());
        s.sync_atomics(&st);
        let next = st.next_index;
        drop(st);
        s.durable.send_if_modified(|v| {
            let changed = *v < lsn;
            *v = (*v).max(lsn);
            changed
        });
        s.appended.send_replace(next);
        Ok(())
    }

    /// Sets the first position of a new log (the slot's confirmed flush
    /// LSN): same as [`Log::mark_gap`].
    pub fn set_start(&self, lsn: u64) -> Result<(), LogError> {
        self.mark_gap(lsn)
    }

    /// A cursor yielding the relations in force at `after`, then every
    /// entry after it. `after` may be beyond `end_lsn()` (waits).
    pub fn cursor(&self, after: u64) -> Result<Cursor, LogError> {
        let s = self.shared();
        let st = s.lock();
        if after < st.start_lsn {
            return Err(LogError::BehindWindow {
                requested: after,
                start_lsn: st.start_lsn,
            });
        }
        let (target, offset) = match st.window.first_after(after) {
            Some(m) => (m.index, m.offset),
            None => (st.next_index, st.head_offset),
        };
        let snapshot = (target >= st.cache.base_index).then(|| st.cache.relations_at(target));
        drop(st);
        Ok(Cursor::new(s.clone(), target, after, offset, snapshot))
    }

    pub fn stats(&self) -> LogStats {
        let s = self.shared();
        let st = s.lock();
        LogStats {
            start_lsn: st.start_lsn,
            end_lsn: st.end_lsn,
            durable_lsn: *s.durable.borrow(),
            oldest_lsn: st.window.txns.front().map(|m| m.lsn),
            window_bytes: st.window.bytes,
            window_txns: st.window.txns.len() as u64,
            cache_bytes: st.cache.bytes,
            cache_txns: st.cache.txns as u64,
            unsynced_bytes: st.unsynced,
            disk_bytes: st.segs.iter().map(|g| g.len).sum(),
            segments: st.segs.len() as u64,
            head_offset: st.head_offset,
            healthy: s.healthy.load(Ordering::SeqCst),
        }
    }

    /// Flushes and fsyncs everything appended, stops the writer thread and
    /// releases the lock. Further appends fail with `Closed`; cursors drain
    /// what was appended, then get `Closed`.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    pub fn close(self) {
        self.shutdown();
    }

    #[cfg(test)]
    pub(crate) fn faults(&self) -> &Faults {
        &self.shared().faults
    }

    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }
}
