//! `Commit` ('C'): end of a committed transaction's changes.
//!
//! Invariant: carries exactly the wire fields, nothing derived.

use super::reader::Reader;
use super::DecodeError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Unused by Postgres so far (always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// End LSN of the transaction (what a client confirms).
    pub end_lsn: u64,
    /// Commit timestamp, µs since 2000-01-01 (Postgres epoch).
    pub commit_time: i64,
}

impl Commit {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let c = Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit_lsn")?,
            end_lsn: r.u64("end_lsn")?,
            commit_time: r.i64("commit_time")?,
        };
        r.finish()?;
        Ok(c)
    }
}
