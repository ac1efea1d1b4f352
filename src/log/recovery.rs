//! Opening a log directory: lock, meta, identity check, scan, torn-tail cut.
//!
//! Invariant: after [`recover`] returns, this process holds the directory's
//! `LOCK`, every segment was read once record by record with CRCs checked,
//! the newest segment ends on a whole record (a torn/corrupt tail there is cut
//! and logged), and a corrupt record in any older segment or a segment of
//! another database is an error: nothing is silently skipped. Memory used is
//! one record at a time plus the window's per-transaction metadata.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use super::format::{encode_header, SegmentHeader};
use super::meta::{self, Meta};
use super::record::{Entry, RelationEntry};
use super::retention::{TxnMeta, Window};
use super::segment::{fsync_dir, list_segments, segment_path, SegmentError, SegmentReader};
use super::writer::Active;
use super::{LogError, LogIdentity, SegMeta};

pub const LOCK_FILE: &str = "LOCK";

pub(crate) struct Recovered {
    pub lock: File,
    pub is_new: bool,
    pub meta: Meta,
    pub segs: VecDeque<SegMeta>,
    /// Every transaction with `lsn > start_lsn` found on disk.
    pub window: Window,
    pub relations: BTreeMap<u32, Arc<RelationEntry>>,
    pub next_index: u64,
    pub head_offset: u64,
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub active: Active,
}

/// Takes the directory's lock (flock, non-blocking).
fn lock(dir: &Path) -> Result<File, LogError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| LogError::io(dir, "open LOCK", e))?;
    // A child process forked by this process (any std::process::Command)
    // shares the lock's open file description from fork until its exec
    // closes it (CLOEXEC): a just-released lock can look held for that
    // instant. A few short retries ride that out; a lock held by another
    // pgsat is still refused within LOCK_RETRIES × LOCK_RETRY_DELAY.
    const LOCK_RETRIES: u32 = 10;
    const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(20);
    let mut attempt = 0;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(LogError::io(dir, "lock LOCK", e));
        }
        attempt += 1;
        if attempt > LOCK_RETRIES {
            return Err(LogError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        std::thread::sleep(LOCK_RETRY_DELAY);
    }
}

/// Compares the stored identity with the server's: system id, database and
/// slot must match; a timeline change (promotion) is accepted with a warning.
fn check_identity(dir: &Path, what: &str, stored: &Meta, id: &LogIdentity) -> Result<(), LogError> {
    let mut diffs = Vec::new();
    if stored.system_id != id.system_id {
        diffs.push(format!(
            "system identifier: log has {}, server has {}",
            stored.system_id, id.system_id
        ));
    }
    if stored.database != id.database {
        diffs.push(format!(
            "database: log has {:?}, server has {:?}",
            stored.database, id.database
        ));
    }
    if stored.slot != id.slot {
        diffs.push(format!(
            "slot: log has {:?}, configured {:?}",
            stored.slot, id.slot
        ));
    }
    if !diffs.is_empty() {
        return Err(LogError::ForeignLog {
            dir: dir.to_path_buf(),
            what: format!("{what}: {}", diffs.join("; ")),
        });
    }
    Ok(())
}

fn corrupt(path: &Path, offset: u64, detail: impl ToString) -> LogError {
    LogError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        detail: detail.to_string(),
    }
}

pub(crate) fn recover(dir: &Path, identity: &LogIdentity) -> Result<Recovered, LogError> {
    std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, "create directory", e))?;
    let lock = lock(dir)?;
    let stored = meta::read(dir)?;
    let seqs = list_segments(dir).map_err(|e| LogError::io(dir, "list segments", e))?;
    let is_new = stored.is_none() && seqs.is_empty();

    // The identity the log was written for: meta, else (meta lost) the newest segment's.
    let mut meta = match stored {
        Some(m) => m,
        None => match seqs.last() {
            Some(&seq) => {
                let path = segment_path(dir, seq);
                match SegmentReader::open(&path, None) {
                    Ok(r) => {
                        tracing::warn!(dir = %dir.display(), "log meta file missing; taking the identity from the newest segment");
                        Meta::new(&r.header.identity, 0)
                    }
                    Err(_) => Meta::new(identity, 0),
                }
            }
            None => Meta::new(identity, 0),
        },
    };
    check_identity(dir, "meta", &meta, identity)?;
    let mut rewrite_meta = is_new || meta.format != 1;
    if meta.timeline != identity.timeline {
        tracing::warn!(dir = %dir.display(), log_timeline = meta.timeline, server_timeline = identity.timeline,
            "timeline changed since this log was written (promotion?); continuing");
        meta.timeline = identity.timeline;
        rewrite_meta = true;
    }

    let mut segs: VecDeque<SegMeta> = VecDeque::new();
    let mut window = Window::default();
    let mut relations = BTreeMap::new();
    let mut start_lsn = meta.start_lsn;
    // (next index, head offset, last lsn) after the segments scanned so far.
    let mut end: Option<(u64, u64, u64)> = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = segment_path(dir, seq);
        let mut r = match SegmentReader::open(&path, None) {
            Ok(r) => r,
            Err(SegmentError::Format { err, .. }) if last => {
                tracing::warn!(segment = %path.display(), error = %err,
                    "newest log segment has a torn header (crash while creating it); removing it");
                std::fs::remove_file(&path)
                    .map_err(|e| LogError::io(dir, "remove torn segment", e))?;
                fsync_dir(dir).map_err(|e| LogError::io(dir, "fsync directory", e))?;
                break;
            }
            Err(SegmentError::Format { offset, err }) => return Err(corrupt(&path, offset, err)),
            Err(SegmentError::Io(e)) => return Err(LogError::io(dir, "open segment", e)),
        };
        let h = &r.header;
        check_identity(
            dir,
            &format!("segment {}", path.display()),
            &Meta::new(&h.identity, 0),
            identity,
        )?;
        if h.seq != seq {
            return Err(corrupt(&path, 0, format!("header says segment {}", h.seq)));
        }
        if let Some((index, offset, lsn)) = end {
            if h.first_index != index || h.first_offset != offset || h.prev_lsn < lsn {
                return Err(corrupt(&path, 0, "does not continue the previous segment"));
            }
        } else {
            start_lsn = start_lsn.max(h.prev_lsn);
        }
        relations = h.relations.clone();
        let first_index = h.first_index;
        let mut offset = h.first_offset;
        let mut last_lsn = h.prev_lsn;
        let mut records = 0u64;
        loop {
            let index = r.index();
            match r.next_record() {
                Ok(None) => break,
                Ok(Some(Entry::Txn(t))) => {
                    if t.commit_lsn <= last_lsn {
                        return Err(corrupt(&path, r.pos(), "commit LSNs out of order"));
                    }
                    let size = t.size();
                    if t.commit_lsn > start_lsn {
                        window.push(TxnMeta {
                            lsn: t.commit_lsn,
                            time: t.commit_time,
                            index,
                            offset,
                            size,
                        });
                    }
                    offset += size;
                    last_lsn = t.commit_lsn;
                    records += 1;
                }
                Ok(Some(Entry::Relation(rel))) => {
                    relations.insert(rel.relation_id, rel);
                    records += 1;
                }
                Err(SegmentError::Format { offset: at, err }) if last => {
                    tracing::warn!(segment = %path.display(), at, error = %err,
                        "torn or corrupt tail in the newest log segment (crash during a write); cutting it");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| LogError::io(dir, "open segment to cut", e))?;
                    f.set_len(at)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| LogError::io(dir, "cut torn tail", e))?;
                    break;
                }
                Err(SegmentError::Format { offset: at, err }) => {
                    return Err(corrupt(&path, at, err))
                }
                Err(SegmentError::Io(e)) => return Err(LogError::io(dir, "read segment", e)),
            }
        }
        segs.push_back(SegMeta {
            seq,
            first_index,
            last_lsn,
            len: r.pos(),
            records,
        });
        end = Some((r.index(), offset, last_lsn));
    }

    let (next_index, head_offset, last_lsn) = end.unwrap_or((0, 0, 0));
    let end_lsn = last_lsn.max(start_lsn);
    let active = match segs.back() {
        Some(s) => Active {
            seq: s.seq,
            file: OpenOptions::new()
                .write(true)
                .open(segment_path(dir, s.seq))
                .map_err(|e| LogError::io(dir, "open active segment", e))?,
            len: s.len,
        },
        None => {
            let seq = seqs.last().map_or(1, |s| s + 1);
            let header = encode_header(&SegmentHeader {
                seq,
                first_index: next_index,
                first_offset: head_offset,
                prev_lsn: end_lsn,
                identity: identity.clone(),
                relations: relations.clone(),
            });
            let path = segment_path(dir, seq);
            let io = |e| LogError::io(dir, "create segment", e);
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(io)?;
            use std::io::Write;
            (&file).write_all(&header).map_err(io)?;
            file.sync_all().map_err(io)?;
            fsync_dir(dir).map_err(io)?;
            segs.push_back(SegMeta {
                seq,
                first_index: next_index,
                last_lsn: end_lsn,
                len: header.len() as u64,
                records: 0,
            });
            Active {
                seq,
                file,
                len: header.len() as u64,
            }
        }
    };
    if rewrite_meta {
        meta.format = 1;
        meta::write(dir, &meta)?;
    }
    Ok(Recovered {
        lock,
        is_new,
        meta,
        segs,
        window,
        relations,
        next_index,
        head_offset,
        start_lsn,
        end_lsn,
        active,
    })
}
