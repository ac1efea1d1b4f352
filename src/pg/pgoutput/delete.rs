//! `Delete` ('D'): a removed row, identified by its key ('K') or whole old
//! row ('O').
//!
//! Invariant: `old` is a validated tuple.

use bytes::Bytes;

use super::reader::Reader;
use super::tuple::OldTuple;
use super::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    pub old: OldTuple,
}

impl Delete {
    pub(crate) fn decode(buf: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let relation_id = r.u32("relation id")?;
        let tag = r.u8("old tuple tag")?;
        let old = OldTuple::decode(tag, buf, r)?;
        r.finish()?;
        Ok(Delete { relation_id, old })
    }
}
