//! `Message` ('M'): a logical decoding message from
//! `pg_logical_emit_message` (decoded, then skipped by pgsat).
//!
//! Invariant: `content` is a zero-copy slice of the input.

use bytes::Bytes;

use super::reader::Reader;
use super::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Emitted inside a transaction (flag bit 1).
    pub transactional: bool,
    pub lsn: u64,
    pub prefix: String,
    pub content: Bytes,
}

impl LogicalMessage {
    pub(crate) fn decode(buf: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u8("flags")?;
        let lsn = r.u64("lsn")?;
        let prefix = r.cstr("prefix")?.to_owned();
        let len = r.i32("content length")?;
        let len = r.count(len.into(), 1, "content length")?;
        let start = r.pos();
        r.take(len, "content")?;
        r.finish()?;
        Ok(LogicalMessage {
            transactional: flags & 1 != 0,
            lsn,
            prefix,
            content: buf.slice(start..start + len),
        })
    }
}
