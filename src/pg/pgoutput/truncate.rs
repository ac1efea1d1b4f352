//! `Truncate` ('T'): one or more tables emptied.
//!
//! Invariant: `relation_ids.len()` equals the count on the wire.

use super::reader::Reader;
use super::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    pub const CASCADE: u8 = 1;
    pub const RESTART_IDENTITY: u8 = 2;

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.i32("relation count")?;
        let options = r.u8("options")?;
        let n = r.count(n.into(), 4, "relation count")?;
        let mut relation_ids = Vec::with_capacity(n);
        for _ in 0..n {
            relation_ids.push(r.u32("relation id")?);
        }
        r.finish()?;
        Ok(Truncate {
            options,
            relation_ids,
        })
    }
}
