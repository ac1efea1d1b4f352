//! `Begin` ('B'): start of a committed transaction's changes.
//!
//! Invariant: carries exactly the wire fields, nothing derived.

use super::reader::Reader;
use super::DecodeError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (equals `Commit::commit_lsn`).
    pub final_lsn: u64,
    /// Commit timestamp, µs since 2000-01-01 (Postgres epoch).
    pub commit_time: i64,
    pub xid: u32,
}

impl Begin {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let b = Begin {
            final_lsn: r.u64("final_lsn")?,
            commit_time: r.i64("commit_time")?,
            xid: r.u32("xid")?,
        };
        r.finish()?;
        Ok(b)
    }
}
