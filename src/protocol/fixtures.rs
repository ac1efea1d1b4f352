//! Messages the unit tests of several modules build by hand: a Relation of
//! text columns and a Row of text values.

use bytes::Bytes;

use super::pb;

/// Relation `public.<table>` of text columns named `cols`; `id` is the
/// primary key; every column nullable.
pub(crate) fn text_relation(id: u32, table: &str, cols: &[&str]) -> pb::Relation {
    pb::Relation {
        relation_id: id,
        schema: "public".into(),
        table: table.into(),
        columns: cols
            .iter()
            .map(|c| pb::Column {
                name: c.to_string(),
                type_oid: 25,
                type_name: "text".into(),
                primary_key: *c == "id",
                nullable: true,
            })
            .collect(),
    }
}

/// A row of text values; `None` is NULL (its bit set, its value empty).
pub(crate) fn text_row(vals: &[Option<&str>]) -> pb::Row {
    let mut nulls = vec![0u8; vals.len().div_ceil(8)];
    for (i, v) in vals.iter().enumerate() {
        if v.is_none() {
            nulls[i / 8] |= 0x80 >> (i % 8);
        }
    }
    pb::Row {
        nulls: Bytes::from(nulls),
        values: vals
            .iter()
            .map(|v| Bytes::copy_from_slice(v.unwrap_or("").as_bytes()))
            .collect(),
        unchanged: Bytes::new(),
    }
}
