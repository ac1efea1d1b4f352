//! Column metadata pgoutput does not carry (type name, primary key,
//! nullability), resolved from the Postgres catalog.
//!
//! Invariant: [`Catalog::relation_meta`] answers one [`ColumnMeta`] per column
//! of the Relation message, in its order; a column the catalog no longer has
//! (dropped since the WAL was written) gets the fallback metadata
//! (type from the oid via `format_type`, not primary key, nullable).
//!
//! The catalog is read as it is now, not as it was at the WAL position being
//! decoded: when replaying old WAL after DDL, metadata may already reflect
//! the newer definition (names and types in the Relation message itself are
//! always historic).

use std::future::Future;

use crate::pg::pgoutput::Relation;

/// Catalog metadata for one column.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ColumnMeta {
    /// `format_type` output, e.g. `integer`, `character varying(20)`; empty
    /// when unknown.
    pub type_name: String,
    pub primary_key: bool,
    pub nullable: bool,
}

impl ColumnMeta {
    /// What is known of a column without the catalog.
    pub fn fallback() -> Self {
        ColumnMeta {
            type_name: String::new(),
            primary_key: false,
            nullable: true,
        }
    }
}

/// Catalog metadata for one relation, one entry per column of the Relation
/// message it was asked for, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelationMeta {
    pub columns: Vec<ColumnMeta>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog query for relation {relation_id} failed: {source}")]
    Query {
        relation_id: u32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("catalog for relation {relation_id}: {detail}")]
    Invalid { relation_id: u32, detail: String },
}

/// Resolves the metadata of a relation's columns.
pub trait Catalog {
    fn relation_meta(
        &self,
        rel: &Relation,
    ) -> impl Future<Output = Result<RelationMeta, CatalogError>> + Send;
}

/// One row per column of the Relation message (`ord` 1-based), joined to
/// `pg_attribute` by name; `format_type` of the message's own oid/typmod
/// when the column is gone from the catalog.
const META_SQL: &str = "\
SELECT c.ord,
       COALESCE(format_type(a.atttypid, a.atttypmod), format_type(c.typ, c.typmod), '') AS type_name,
       COALESCE(pk.is_pk, false) AS primary_key,
       NOT COALESCE(a.attnotnull, false) AS nullable
FROM unnest($2::text[], $3::oid[], $4::int4[]) WITH ORDINALITY AS c(name, typ, typmod, ord)
LEFT JOIN pg_catalog.pg_attribute a
       ON a.attrelid = $1::oid AND a.attname = c.name AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN LATERAL (
       SELECT true AS is_pk FROM pg_catalog.pg_index i
       WHERE i.indrelid = $1::oid AND i.indisprimary AND a.attnum = ANY (i.indkey)
       LIMIT 1) pk ON true
ORDER BY c.ord";

/// [`Catalog`] over a plain (non-replication) `tokio_postgres` connection.
pub struct PgCatalog {
    client: tokio_postgres::Client,
}

impl PgCatalog {
    pub fn new(client: tokio_postgres::Client) -> Self {
        PgCatalog { client }
    }

    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl Catalog for PgCatalog {
    async fn relation_meta(&self, rel: &Relation) -> Result<RelationMeta, CatalogError> {
        let relation_id = rel.relation_id;
        let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
        let typmods: Vec<i32> = rel.columns.iter().map(|c| c.type_modifier).collect();
        let rows = self
            .client
            .query(META_SQL, &[&relation_id, &names, &oids, &typmods])
            .await
            .map_err(|source| CatalogError::Query {
                relation_id,
                source,
            })?;
        if rows.len() != rel.columns.len() {
            return Err(CatalogError::Invalid {
                relation_id,
                detail: format!("{} rows for {} columns", rows.len(), rel.columns.len()),
            });
        }
        let mut columns = Vec::with_capacity(rows.len());
        for row in &rows {
            let get = |e: tokio_postgres::Error| CatalogError::Query {
                relation_id,
                source: e,
            };
            columns.push(ColumnMeta {
                type_name: row.try_get::<_, String>(1).map_err(get)?,
                primary_key: row.try_get::<_, bool>(2).map_err(get)?,
                nullable: row.try_get::<_, bool>(3).map_err(get)?,
            });
        }
        Ok(RelationMeta { columns })
    }
}
