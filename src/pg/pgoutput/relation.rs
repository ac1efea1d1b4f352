//! `Relation` ('R'): a table's definition as pgoutput sees it, sent before
//! the first change that uses it and again after it changes.
//!
//! Invariant: column order is the order of values in every tuple of this
//! relation.

use super::reader::Reader;
use super::DecodeError;

/// `pg_class.relreplident`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': primary key (if any).
    Default,
    /// 'n': none.
    Nothing,
    /// 'f': all columns.
    Full,
    /// 'i': a chosen unique index.
    Index,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Column {
    /// Part of the replica identity key (flag bit 1). Under FULL every column
    /// is flagged, so this is not "primary key".
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Relation {
    pub relation_id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// flags (1) + name NUL (1) + type oid (4) + typmod (4).
const MIN_COLUMN_BYTES: usize = 10;

impl Relation {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let relation_id = r.u32("relation id")?;
        let namespace = r.cstr("namespace")?.to_owned();
        let name = r.cstr("relation name")?.to_owned();
        let ident = r.u8("replica identity")?;
        let replica_identity = match ident {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => return Err(r.invalid(format!("unknown replica identity {:?}", other as char))),
        };
        let n = r.i16("column count")?;
        let n = r.count(n.into(), MIN_COLUMN_BYTES, "column count")?;
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            let flags = r.u8("column flags")?;
            columns.push(Column {
                key: flags & 1 != 0,
                name: r.cstr("column name")?.to_owned(),
                type_oid: r.u32("column type oid")?,
                type_modifier: r.i32("column type modifier")?,
            });
        }
        r.finish()?;
        Ok(Relation {
            relation_id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }
}
