//! The group-commit writer thread.
//!
//! Invariant: `durable_lsn` (and the durable index/extent readers trust) is
//! published only after the records up to it were written AND fsynced. A
//! batch is whatever is queued when the writer gets to it (so one fsync
//! covers every record appended meanwhile; never one per row). A failed
//! write/fsync (ENOSPC, EIO) marks the log unhealthy and the same batch is
//! rewritten at the same file positions with backoff until it succeeds:
//! nothing is dropped, nothing is published early.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use super::format::{encode_relation, encode_txn};
use super::record::{RelationEntry, TxnEntry};
use super::segment::{fsync_dir, segment_path};
use super::{Durable, Shared};

/// Most bytes encoded into one batch before it is written and fsynced.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Least time between the starts of two batches: under a steady stream of
/// small transactions one fsync covers this long of appends instead of one
/// each (sessions are served before durability; only the slot's confirmed
/// position, sent at most every 50 ms anyway, and a shutdown's final sync
/// wait for it). On this virtual disk an fdatasync costs hundreds of µs of
/// CPU (the device notifications are VM exits): at 5 ms that was 200 a
/// second, whatever the load.
const GROUP_INTERVAL: Duration = Duration::from_millis(20);
/// Least wait after the first record of a batch arrives: the fsync (a
/// burst of kernel work on a small machine) then runs after the sessions
/// have sent that transaction, not while they do.
const LINGER: Duration = Duration::from_millis(1);
/// After a batch, how long the writer keeps polling for the next one
/// (every GROUP_INTERVAL) before blocking until an append wakes it.
const STAY_AWAKE: Duration = Duration::from_millis(100);
/// How often the writer wakes when idle (age-based retention).
const TICK: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) enum Cmd {
    /// Seal the active segment and start segment `seq` with this header.
    Roll {
        seq: u64,
        header: Vec<u8>,
    },
    Txn(Arc<TxnEntry>),
    Relation(Arc<RelationEntry>),
    /// Remove a segment file (all of it is outside the window).
    Delete(u64),
    Shutdown,
}

impl Cmd {
    fn len(&self) -> usize {
        match self {
            Cmd::Roll { header, .. } => header.len(),
            Cmd::Txn(t) => t.frames.len() + 64,
            Cmd::Relation(r) => r.frame.len() + 16,
            Cmd::Delete(_) | Cmd::Shutdown => 0,
        }
    }
}

/// The segment being appended to.
pub(crate) struct Active {
    pub seq: u64,
    pub file: File,
    pub len: u64,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: Receiver<Cmd>,
    pub active: Active,
    /// Index of the next record (everything before is durable).
    pub index: u64,
    /// Newest durable commit LSN.
    pub lsn: u64,
}

enum ApplyError {
    Io(io::Error),
    /// Test failpoint: the process "dies" between write and fsync.
    #[allow(dead_code)]
    Crash,
}

impl From<io::Error> for ApplyError {
    fn from(e: io::Error) -> Self {
        ApplyError::Io(e)
    }
}

impl Writer {
    pub fn run(mut self) {
        let mut batch: Vec<Cmd> = Vec::new();
        let mut last_batch = std::time::Instant::now() - GROUP_INTERVAL;
        loop {
            if batch.is_empty() && last_batch.elapsed() < STAY_AWAKE {
                // Recently busy: look again shortly rather than block, so
                // that appends need not wake this thread (a wake-up is a
                // context switch on the cores serving the transaction).
                std::thread::sleep(GROUP_INTERVAL);
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(std::sync::mpsc::TryRecvError::Empty) => continue,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
            if batch.is_empty() {
                match self.rx.recv_timeout(TICK) {
                    Ok(c) => batch.push(c),
                    Err(RecvTimeoutError::Timeout) => {
                        self.shared.tick();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if !matches!(batch.last(), Some(Cmd::Shutdown)) {
                let wait = GROUP_INTERVAL
                    .saturating_sub(last_batch.elapsed())
                    .max(LINGER);
                std::thread::sleep(wait);
            }
            last_batch = std::time::Instant::now();
            let mut bytes: usize = batch.iter().map(Cmd::len).sum();
            while bytes < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(c) => {
                        bytes += c.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            let shutdown = if let Some(p) = batch.iter().position(|c| matches!(c, Cmd::Shutdown)) {
                batch.truncate(p);
                true
            } else {
                false
            };
            let mut backoff = Duration::from_millis(10);
            let mut failures = 0u32;
            loop {
                match self.apply(&batch) {
                    Ok(()) => break,
                    Err(ApplyError::Crash) => return,
                    Err(ApplyError::Io(e)) => {
                        failures += 1;
                        if self.shared.healthy.swap(false, Ordering::SeqCst) || failures == 1 {
                            tracing::error!(dir = %self.shared.dir.display(), error = %e,
                                "log write failed; retrying (nothing is confirmed past the last fsynced transaction)");
                        }
                        self.shared.healthy_changed();
                        if (shutdown || self.shared.closed.load(Ordering::SeqCst)) && failures >= 3
                        {
                            tracing::error!(dir = %self.shared.dir.display(),
                                "log closed while writes fail: un-synced transactions are not durable (they were never confirmed to the slot)");
                            return;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            self.shared.healthy_changed();
            batch.clear();
            if shutdown {
                return;
            }
        }
    }

    fn path(&self, seq: u64) -> PathBuf {
        segment_path(&self.shared.dir, seq)
    }

    /// Writes and fsyncs the whole batch, then publishes it. Idempotent on
    /// failure: a retry rewrites the same bytes at the same offsets.
    fn apply(&mut self, batch: &[Cmd]) -> Result<(), ApplyError> {
        let mut seq = self.active.seq;
        let mut len = self.active.len;
        let mut rolled: Option<File> = None;
        let mut index = self.index;
        let mut lsn = self.lsn;
        let mut buf: Vec<u8> = Vec::new();
        let mut record_bytes = 0u64;
        let mut dir_dirty = false;
        for cmd in batch {
            match cmd {
                Cmd::Txn(t) => {
                    encode_txn(t, &mut buf);
                    index += 1;
                    lsn = t.commit_lsn;
                }
                Cmd::Relation(r) => {
                    encode_relation(r, &mut buf);
                    index += 1;
                }
                Cmd::Roll { seq: s, header } => {
                    let cur = rolled.as_ref().unwrap_or(&self.active.file);
                    self.write_at(cur, &buf, len)?;
                    record_bytes += buf.len() as u64;
                    buf.clear();
                    cur.sync_data()?;
                    let f = OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .open(self.path(*s))?;
                    self.write_at(&f, header, 0)?;
                    fsync_dir(&self.shared.dir)?;
                    rolled = Some(f);
                    seq = *s;
                    len = header.len() as u64;
                }
                Cmd::Delete(s) => match std::fs::remove_file(self.path(*s)) {
                    Ok(()) => dir_dirty = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                },
                Cmd::Shutdown => {}
            }
        }
        let cur = rolled.as_ref().unwrap_or(&self.active.file);
        self.write_at(cur, &buf, len)?;
        len += buf.len() as u64;
        record_bytes += buf.len() as u64;
        #[cfg(test)]
        self.shared.faults.before_fsync()?;
        cur.sync_data()?;
        if dir_dirty {
            fsync_dir(&self.shared.dir)?;
        }
        if let Some(f) = rolled {
            self.active.file = f;
        }
        self.active.seq = seq;
        self.active.len = len;
        self.index = index;
        self.lsn = lsn;
        // Healthy before durable progress is visible.
        if !self.shared.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!(dir = %self.shared.dir.display(), "log writes succeed again");
        }
        self.shared.publish(
            Durable {
                index,
                seq,
                len,
                lsn,
            },
            record_bytes,
        );
        Ok(())
    }

    fn write_at(&self, f: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        self.shared.faults.before_write()?;
        f.write_all_at(buf, pos)
    }
}

#[cfg(test)]
impl super::Faults {
    fn before_write(&self) -> io::Result<()> {
        if self.fail_io.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn before_fsync(&self) -> Result<(), ApplyError> {
        self.written.fetch_add(1, Ordering::SeqCst);
        while self.hold_fsync.load(Ordering::SeqCst) {
            if self.crash.load(Ordering::SeqCst) {
                return Err(ApplyError::Crash);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if self.fail_io.load(Ordering::SeqCst) {
            return Err(ApplyError::Io(io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        Ok(())
    }
}
