//! `Type` ('Y'): a user-defined type used by a following Relation (pgsat takes
//! type names from the catalog instead, so callers ignore it).
//!
//! Invariant: carries exactly the wire fields.

use super::reader::Reader;
use super::DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMsg {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

impl TypeMsg {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let t = TypeMsg {
            oid: r.u32("type oid")?,
            namespace: r.cstr("namespace")?.to_owned(),
            name: r.cstr("type name")?.to_owned(),
        };
        r.finish()?;
        Ok(t)
    }
}
