//! `Update` ('U'): a changed row, with the old key ('K') or old row ('O')
//! when the replica identity provides it.
//!
//! Invariant: `old`, when present, and `new` are validated tuples.

use bytes::Bytes;

use super::reader::Reader;
use super::tuple::{OldTuple, Tuple};
use super::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

impl Update {
    pub(crate) fn decode(buf: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let relation_id = r.u32("relation id")?;
        let mut tag = r.u8("tuple tag")?;
        let old = if tag == b'K' || tag == b'O' {
            let old = OldTuple::decode(tag, buf, r)?;
            tag = r.u8("new tuple tag")?;
            Some(old)
        } else {
            None
        };
        if tag != b'N' {
            return Err(r.invalid(format!("expected new tuple 'N', got {:?}", tag as char)));
        }
        let new = Tuple::decode(buf, r)?;
        r.finish()?;
        Ok(Update {
            relation_id,
            old,
            new,
        })
    }
}
