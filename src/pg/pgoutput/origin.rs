//! `Origin` ('O'): replication origin of the current transaction (skipped by
//! pgsat).
//!
//! Invariant: carries exactly the wire fields.

use super::reader::Reader;
use super::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: u64,
    pub name: String,
}

impl Origin {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let o = Origin {
            commit_lsn: r.u64("commit_lsn")?,
            name: r.cstr("name")?.to_owned(),
        };
        r.finish()?;
        Ok(o)
    }
}
