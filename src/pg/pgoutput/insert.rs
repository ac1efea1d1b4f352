//! `Insert` ('I'): a new row.
//!
//! Invariant: `new` is a validated tuple (zero-copy).

use bytes::Bytes;

use super::reader::Reader;
use super::tuple::Tuple;
use super::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: Tuple,
}

impl Insert {
    pub(crate) fn decode(buf: &Bytes, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let relation_id = r.u32("relation id")?;
        let tag = r.u8("tuple tag")?;
        if tag != b'N' {
            return Err(r.invalid(format!("expected new tuple 'N', got {:?}", tag as char)));
        }
        let new = Tuple::decode(buf, r)?;
        r.finish()?;
        Ok(Insert { relation_id, new })
    }
}
