//! Relation definitions in force, and their `Relation` frames.
//!
//! Invariant: a relation's frame is re-emitted only when the frame (schema,
//! table, columns with catalog metadata) differs from the one in force.

use bytes::Bytes;
use prost::Message;

use super::encode::{frame, RELATION_FRAME_TYPE};
use crate::pg::catalog::RelationMeta;
use crate::pg::pgoutput::Relation;
use crate::protocol::pb;

/// What the assembler keeps per relation id.
pub(crate) struct RelState {
    /// Column count of the pgoutput definition in force; `None` when the
    /// relation is only known from the log (seeded), not yet from pgoutput.
    pub ncols: Option<usize>,
    /// The `Relation` frame in force.
    pub frame: Bytes,
    /// Index of the users id column when this is the users table.
    pub user_id_col: Option<usize>,
}

/// The complete TCP frame (type 9) for `rel` with `meta` (same length).
pub(crate) fn relation_frame(rel: &Relation, meta: &RelationMeta) -> Bytes {
    let msg = pb::Relation {
        relation_id: rel.relation_id,
        schema: rel.namespace.clone(),
        table: rel.name.clone(),
        columns: rel
            .columns
            .iter()
            .zip(&meta.columns)
            .map(|(c, m)| pb::Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_name: m.type_name.clone(),
                primary_key: m.primary_key,
                nullable: m.nullable,
            })
            .collect(),
    };
    frame(RELATION_FRAME_TYPE, &msg.encode_to_vec())
}
