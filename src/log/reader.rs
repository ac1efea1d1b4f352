//! Reading the log from disk for a cursor that is behind the cache.
//!
//! Invariant: a disk read uses the cursor's own file handle, reads only the
//! durable (fsynced) extent of a segment, and holds at most one batch
//! (≤ [`BATCH_BYTES`], or one larger record) plus a fixed read buffer.

use std::collections::BTreeMap;

use super::cache::entry_size;
use super::record::Entry;
use super::segment::{segment_path, SegmentError, SegmentReader};
use super::{LogError, Shared};

pub const BATCH_BYTES: u64 = 256 << 10;
const BATCH_ENTRIES: usize = 512;

/// A cursor's disk position, moved into a blocking task for each batch.
pub(crate) struct DiskRead {
    pub reader: Option<SegmentReader>,
    /// Log index of the next entry wanted.
    pub next_index: u64,
    /// Emit the relations in force at `next_index` first (initial position).
    pub emit_relations: bool,
}

pub(crate) enum Batch {
    /// Entries in log order; `None` index: a relation of the initial snapshot.
    Entries(Vec<(Option<u64>, Entry)>),
    /// The segment holding `next_index` was deleted; the oldest remaining
    /// segment starts at `first_index`.
    Gone { first_index: u64 },
}

/// Reads the next batch of entries at `d.next_index` from disk. Blocking.
pub(crate) fn read_batch(shared: &Shared, d: &mut DiskRead) -> Result<Batch, LogError> {
    let (seq, limit) = {
        let st = shared.lock();
        let Some(first) = st.segs.front() else {
            return Ok(Batch::Entries(Vec::new()));
        };
        if d.next_index < first.first_index {
            return Ok(Batch::Gone {
                first_index: first.first_index,
            });
        }
        let pos = st.segs.partition_point(|s| s.first_index <= d.next_index);
        let seg = &st.segs[pos.saturating_sub(1)];
        let limit = if seg.seq < st.durable.seq {
            seg.len
        } else if seg.seq == st.durable.seq {
            st.durable.len
        } else {
            // Not on disk yet: the cache serves it.
            return Ok(Batch::Entries(Vec::new()));
        };
        (seg.seq, limit)
    };
    let path = segment_path(&shared.dir, seq);
    let corrupt = |e: SegmentError| match e {
        SegmentError::Io(e) => LogError::io(&shared.dir, "read segment", e),
        SegmentError::Format { offset, err } => LogError::Corrupt {
            segment: path.clone(),
            offset,
            detail: err.to_string(),
        },
    };
    let mut rdr = match d.reader.take() {
        Some(r) if r.seq == seq && r.index() <= d.next_index => r,
        _ => match SegmentReader::open(&path, Some(limit)) {
            Ok(r) => r,
            Err(SegmentError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                let first_index = shared
                    .lock()
                    .segs
                    .front()
                    .map_or(d.next_index, |s| s.first_index);
                return Ok(Batch::Gone { first_index });
            }
            Err(e) => return Err(corrupt(e)),
        },
    };
    rdr.set_limit(limit);
    let mut relations: Option<BTreeMap<_, _>> =
        d.emit_relations.then(|| rdr.header.relations.clone());
    while rdr.index() < d.next_index {
        match rdr.next_record().map_err(corrupt)? {
            Some(Entry::Relation(r)) => {
                if let Some(m) = relations.as_mut() {
                    m.insert(r.relation_id, r);
                }
            }
            Some(Entry::Txn(_)) => {}
            None => {
                d.reader = Some(rdr);
                return Ok(Batch::Entries(Vec::new()));
            }
        }
    }
    let mut out = Vec::new();
    if let Some(m) = relations {
        d.emit_relations = false;
        out.extend(m.into_values().map(|r| (None, Entry::Relation(r))));
    }
    let mut bytes = 0;
    while bytes < BATCH_BYTES && out.len() < BATCH_ENTRIES {
        let index = rdr.index();
        match rdr.next_record().map_err(corrupt)? {
            Some(e) => {
                bytes += entry_size(&e);
                out.push((Some(index), e));
            }
            None => break,
        }
    }
    d.next_index = rdr.index();
    d.reader = Some(rdr);
    Ok(Batch::Entries(out))
}
