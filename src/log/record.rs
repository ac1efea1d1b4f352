//! What the log holds: relation definitions and whole committed transactions,
//! each already encoded as the wire frames clients are sent.
//!
//! Invariant: a `TxnEntry` is whole (Begin … Commit), immutable once built,
//! and shared (`Arc`/`Bytes`) by every session that sends it.

use std::sync::Arc;

use bytes::Bytes;

/// One entry of the log, in log order. A `Relation` entry precedes the first
/// transaction that uses that definition.
#[derive(Clone, Debug)]
pub enum Entry {
    Relation(Arc<RelationEntry>),
    Txn(Arc<TxnEntry>),
}

/// A table's definition as sent to clients (protocol message type 9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationEntry {
    pub relation_id: u32,
    /// Complete TCP frame: `u32 length` + type byte 9 + `Relation` body.
    pub frame: Bytes,
}

/// One committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnEntry {
    /// Commit end LSN (`Commit.lsn` on the wire); the log's key, strictly
    /// increasing along the log.
    pub commit_lsn: u64,
    pub xid: u32,
    /// µs since the Unix epoch.
    pub commit_time: i64,
    /// Relations used by the ops, sorted and deduplicated: a session sends
    /// the definitions in force before the first OpLog of this transaction.
    pub relation_ids: Vec<u32>,
    /// Number of row changes (insert/update/delete; a truncate counts 1).
    pub changes: u32,
    /// One or more complete TCP frames of type 10 (`OpLog`), concatenated:
    /// the first starts with `Begin`, the last ends with `Commit`. WebSocket
    /// sessions send each frame minus its 4-byte length prefix.
    pub frames: Bytes,
}

impl TxnEntry {
    /// Bytes this entry accounts for in the window and cache bounds.
    pub fn size(&self) -> u64 {
        self.frames.len() as u64 + 64 + 4 * self.relation_ids.len() as u64
    }

    /// Number of OpLog frames in `frames`.
    pub fn frame_count(&self) -> usize {
        crate::protocol::frame::split_frames(&self.frames).count()
    }
}
