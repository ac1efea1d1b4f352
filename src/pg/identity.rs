//! How a table's changes reach the replication stream, from the catalog:
//! whether the publication carries it, its replica identity, and per column
//! whether an UPDATE/DELETE carries the column's old value and whether its
//! values can be TOASTed (an unchanged TOASTed value is not in the stream).
//!
//! Used by the start-up checks of the read rules and of the users table.

use tokio_postgres::Client;

/// One table, as [`table_identity`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableIdentity {
    /// `schema.table`, for messages.
    pub name: String,
    /// `pg_class.relreplident`: `d` (default: the primary key), `i` (an
    /// index), `f` (full), `n` (nothing).
    pub replident: String,
    /// In the publication asked about.
    pub published: bool,
    pub columns: Vec<IdentityColumn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityColumn {
    pub name: String,
    /// A column of the replica identity's key (not counting `FULL`).
    pub in_key: bool,
    /// Storage `extended` or `external`: large values live out of line.
    pub toastable: bool,
}

impl TableIdentity {
    pub fn is_full(&self) -> bool {
        self.replident == "f"
    }

    /// Whether an UPDATE or DELETE carries the old value of column `name`.
    pub fn carries_old(&self, name: &str) -> bool {
        self.is_full() || self.columns.iter().any(|c| c.name == name && c.in_key)
    }
}

const TABLE_SQL: &str = "\
SELECT n.nspname::text || '.' || c.relname::text, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p
               WHERE p.pubname = $2 AND p.schemaname = n.nspname AND p.tablename = c.relname)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1";

const COLUMNS_SQL: &str = "\
SELECT a.attname::text,
       COALESCE((SELECT true FROM pg_catalog.pg_index i
                 WHERE i.indrelid = a.attrelid AND a.attnum = ANY (i.indkey)
                   AND ((c.relreplident = 'd' AND i.indisprimary)
                        OR (c.relreplident = 'i' AND i.indisreplident))
                 LIMIT 1), false),
       a.attstorage::text IN ('x', 'e')
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// The table with oid `oid`, against `publication`; `None` when there is no
/// such table.
pub async fn table_identity(
    client: &Client,
    oid: u32,
    publication: &str,
) -> Result<Option<TableIdentity>, tokio_postgres::Error> {
    let Some(row) = client.query_opt(TABLE_SQL, &[&oid, &publication]).await? else {
        return Ok(None);
    };
    let mut columns = Vec::new();
    for r in client.query(COLUMNS_SQL, &[&oid]).await? {
        columns.push(IdentityColumn {
            name: r.try_get(0)?,
            in_key: r.try_get(1)?,
            toastable: r.try_get(2)?,
        });
    }
    Ok(Some(TableIdentity {
        name: row.try_get(0)?,
        replident: row.try_get(1)?,
        published: row.try_get(2)?,
        columns,
    }))
}
