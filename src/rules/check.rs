//! Start-up checks of the rules against the Postgres catalog: each listed
//! table exists and is in the publication, each rule column exists, and a
//! filtered table gives the old values its rule needs (`REPLICA IDENTITY
//! FULL`, or every rule column in its replica identity).
//!
//! Invariant: the first failure is returned as one line naming the file,
//! the entry's line, the table and the way out.

use super::{Rules, RulesError, TableRule};
use crate::pg::identity::table_identity;

const OID_SQL: &str = "\
SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/// Checks every table of `rules` against the database `client` is
/// connected to, for publication `publication`. A query failure is returned
/// as `Err(Err(..))` (a runtime error, not a rules error).
pub async fn check(
    rules: &Rules,
    client: &tokio_postgres::Client,
    publication: &str,
) -> Result<Result<(), RulesError>, tokio_postgres::Error> {
    for t in &rules.file.tables {
        if let Err(reason) = check_table(t, client, publication).await? {
            return Ok(Err(RulesError::Catalog {
                path: rules.file.path.clone(),
                line: t.line,
                reason: format!("table {}: {reason}", t.qualified()),
            }));
        }
    }
    Ok(Ok(()))
}

async fn check_table(
    t: &TableRule,
    client: &tokio_postgres::Client,
    publication: &str,
) -> Result<Result<(), String>, tokio_postgres::Error> {
    let Some(row) = client.query_opt(OID_SQL, &[&t.schema, &t.table]).await? else {
        return Ok(Err("no such table".into()));
    };
    let Some(table) = table_identity(client, row.try_get(0)?, publication).await? else {
        return Ok(Err("no such table".into()));
    };
    if !table.published {
        return Ok(Err(format!(
            "not in publication {publication:?}; add it (ALTER PUBLICATION {publication} ADD TABLE {}) or remove the entry",
            t.qualified()
        )));
    }
    let used = t.read.columns();
    for c in &used {
        if !table.columns.iter().any(|col| col.name == *c) {
            return Ok(Err(format!("read rule names unknown column {c:?}")));
        }
    }
    if table.is_full() || used.is_empty() {
        return Ok(Ok(()));
    }
    let missing: Vec<&str> = used
        .iter()
        .copied()
        .filter(|c| !table.carries_old(c))
        .collect();
    if missing.is_empty() {
        let toastable: Vec<&str> = table
            .columns
            .iter()
            .filter(|c| c.toastable && !c.in_key)
            .map(|c| c.name.as_str())
            .collect();
        if !toastable.is_empty() {
            tracing::warn!(
                table = %t.qualified(),
                columns = %toastable.join(", "),
                "a row moving into a view by UPDATE does not carry these columns' unchanged \
                 TOASTed values without REPLICA IDENTITY FULL; such a session is ended with \
                 RESYNC_REQUIRED (run ALTER TABLE … REPLICA IDENTITY FULL to avoid it)"
            );
        }
        return Ok(Ok(()));
    }
    Ok(Err(format!(
        "updates and deletes would not carry the old value of rule column(s) {} (replica identity {}); run ALTER TABLE {} REPLICA IDENTITY FULL",
        missing.join(", "),
        match table.replident.as_str() {
            "d" => "DEFAULT, the primary key",
            "i" => "USING INDEX",
            "n" => "NOTHING",
            _ => "unknown",
        },
        t.qualified()
    )))
}
