//! Start-up checks of the rules against the Postgres catalog: each listed
//! table exists and is in the publication, each rule column exists, and a
//! filtered table gives the old values its rule needs (`REPLICA IDENTITY
//! FULL`, or every rule column in its replica identity).
//!
//! Invariant: the first failure is returned as one line naming the file,
//! the entry's line, the table and the way out.

use super::{Rules, RulesError, TableRule};

const TABLE_SQL: &str = "\
SELECT c.oid, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p
               WHERE p.pubname = $3 AND p.schemaname = $1 AND p.tablename = $2) AS published
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

const COLUMNS_SQL: &str = "\
SELECT a.attname::text,
       COALESCE((SELECT true FROM pg_catalog.pg_index i
                 WHERE i.indrelid = a.attrelid AND a.attnum = ANY (i.indkey)
                   AND ((c.relreplident = 'd' AND i.indisprimary)
                        OR (c.relreplident = 'i' AND i.indisreplident))
                 LIMIT 1), false) AS in_identity,
       a.attstorage::text IN ('x', 'e') AS toastable
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped";

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
    let rows = client
        .query(TABLE_SQL, &[&t.schema, &t.table, &publication])
        .await?;
    let Some(row) = rows.first() else {
        return Ok(Err("no such table".into()));
    };
    let oid: u32 = row.try_get(0)?;
    let ident: String = row.try_get(1)?;
    let published: bool = row.try_get(2)?;
    if !published {
        return Ok(Err(format!(
            "not in publication {publication:?}; add it (ALTER PUBLICATION {publication} ADD TABLE {}) or remove the entry",
            t.qualified()
        )));
    }
    let cols = client.query(COLUMNS_SQL, &[&oid]).await?;
    let mut have: Vec<(String, bool)> = Vec::with_capacity(cols.len());
    let mut toastable: Vec<String> = Vec::new();
    for r in &cols {
        let (name, in_identity): (String, bool) = (r.try_get(0)?, r.try_get(1)?);
        if r.try_get::<_, bool>(2)? && !in_identity {
            toastable.push(name.clone());
        }
        have.push((name, in_identity));
    }
    let used = t.read.columns();
    for c in &used {
        if !have.iter().any(|(n, _)| n == c) {
            return Ok(Err(format!("read rule names unknown column {c:?}")));
        }
    }
    if ident == "f" || used.is_empty() {
        return Ok(Ok(()));
    }
    let missing: Vec<&str> = used
        .iter()
        .copied()
        .filter(|c| !have.iter().any(|(n, k)| n == c && *k))
        .collect();
    if missing.is_empty() {
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
        match ident.as_str() {
            "d" => "DEFAULT, the primary key",
            "i" => "USING INDEX",
            "n" => "NOTHING",
            _ => "unknown",
        },
        t.qualified()
    )))
}
