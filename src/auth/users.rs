//! The users-row check. Invariants: the table and column are resolved once
//! at start through the catalog (so a bad `AUTH_USERS_TABLE` /
//! `AUTH_USERS_ID_COLUMN` stops the server with a message naming the
//! variable) and spliced into the statement only as quoted catalog names;
//! `user_id` is only ever a bound parameter. A lookup answers found / not
//! found, or an error (database failure, timeout) that is never "not found".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, Statement};

use crate::pg::identity::table_identity;
use crate::pg::sql::SqlConfig;
use crate::pg::PgError;

use super::error::{AuthError, AuthInitError};

/// Connections in the lookup pool.
pub const POOL_SIZE: usize = 3;

/// Quotes an SQL identifier (`"` doubled).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL identifier semantics for a configured column name: `"Quoted"` is
/// taken literally, anything else is folded to lower case as Postgres does.
fn column_name(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        t[1..t.len() - 1].replace("\"\"", "\"")
    } else {
        t.to_ascii_lowercase()
    }
}

struct Conn {
    client: Client,
    stmt: Statement,
}

/// A tiny pool of ordinary connections with the lookup statement prepared.
pub struct UsersLookup {
    pg: SqlConfig,
    sql: String,
    timeout: Duration,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    /// For messages: `schema.table.column`.
    target: String,
}

async fn connect(pg: &SqlConfig) -> Result<Client, PgError> {
    Ok(pg.connect("users lookup", true).await?.0)
}

impl UsersLookup {
    /// Resolves the table and column, prepares the statement and runs it once.
    pub async fn new(
        mut pg: SqlConfig,
        table: &str,
        column: &str,
        timeout: Duration,
    ) -> Result<Self, AuthInitError> {
        pg.application_name("pgsat-auth");
        let db = |e: tokio_postgres::Error| AuthInitError::Database(e.to_string());
        let client = tokio::time::timeout(timeout.max(Duration::from_secs(5)), connect(&pg))
            .await
            .map_err(|_| AuthInitError::Database("timed out connecting to Postgres".to_owned()))?
            .map_err(|e| AuthInitError::Database(e.to_string()))?;
        let row = client
            .query_opt(
                "SELECT c.oid, n.nspname::text, c.relname::text
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = to_regclass($1)",
                &[&table],
            )
            .await;
        let row = match row {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(AuthInitError::UsersTableMissing {
                    table: table.to_owned(),
                })
            }
            Err(e) if e.as_db_error().is_some() => {
                // e.g. invalid name syntax
                return Err(AuthInitError::Config(format!(
                    "AUTH_USERS_TABLE: {table:?} is not a valid table name: {e}"
                )));
            }
            Err(e) => return Err(db(e)),
        };
        let oid: u32 = row.get(0);
        let schema: String = row.get(1);
        let relname: String = row.get(2);
        let col = column_name(column);
        let typ = client
            .query_opt(
                "SELECT a.atttypid::regtype::text FROM pg_attribute a
                  WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&oid, &col],
            )
            .await
            .map_err(db)?;
        let Some(typ) = typ else {
            return Err(AuthInitError::UsersColumnMissing {
                table: format!("{schema}.{relname}"),
                column: column.to_owned(),
            });
        };
        let typ: String = typ.get(0);
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&relname));
        // Text-like keys compare directly (index usable). Other key types
        // compare in the column's type so their index is usable too, and
        // then as text: the key must *equal* user_id (`042` is not user 42,
        // an upper-case uuid is not its lower-case row), as the rules and
        // the deletion notices (both by the key's text) see it. A user_id
        // that is not a valid value of that type (data exception, SQLSTATE
        // class 22) is simply "no such row".
        let col_q = quote_ident(&col);
        let cond = match typ.as_str() {
            "text" | "character varying" | "character" | "name" | "citext" => {
                format!("{col_q} = $1::text")
            }
            _ => format!("{col_q} = CAST($1::text AS {typ}) AND {col_q}::text = $1::text"),
        };
        let sql = format!("SELECT 1 FROM {qualified} WHERE {cond} LIMIT 1");
        let stmt = client.prepare(&sql).await.map_err(|e| {
            AuthInitError::Database(format!("preparing the users lookup failed: {e}"))
        })?;
        // Run it once so a missing SELECT privilege is caught now.
        match client.query_opt(&stmt, &[&""]).await {
            Ok(_) => {}
            Err(e) if is_data_exception(&e) => {}
            Err(e) => {
                return Err(AuthInitError::Database(format!(
                    "the users lookup on {qualified} failed: {e}"
                )))
            }
        }
        let mut slots = Vec::with_capacity(POOL_SIZE);
        slots.push(tokio::sync::Mutex::new(Some(Arc::new(Conn {
            client,
            stmt,
        }))));
        for _ in 1..POOL_SIZE {
            slots.push(tokio::sync::Mutex::new(None));
        }
        Ok(UsersLookup {
            pg,
            sql,
            timeout,
            slots,
            next: AtomicUsize::new(0),
            target: format!("{schema}.{relname}.{col}"),
        })
    }

    /// The resolved `schema.table.column` checked by this lookup.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn conn(&self) -> Result<Arc<Conn>, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.client.is_closed() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let client = connect(&self.pg)
            .await
            .map_err(|e| format!("connecting to Postgres failed: {e}"))?;
        let stmt = client
            .prepare(&self.sql)
            .await
            .map_err(|e| format!("preparing the users lookup failed: {e}"))?;
        let c = Arc::new(Conn { client, stmt });
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Does a row with this key exist?
    pub async fn check(&self, user_id: &str) -> Result<(), AuthError> {
        let work = async {
            let c = self.conn().await?;
            match c.client.query_opt(&c.stmt, &[&user_id]).await {
                Ok(Some(_)) => Ok(true),
                Ok(None) => Ok(false),
                Err(e) if is_data_exception(&e) => Ok(false),
                Err(e) => Err(format!("users lookup failed: {e}")),
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(AuthError::UserNotFound),
            Ok(Err(e)) => {
                tracing::error!(target_table = %self.target, "{e}");
                Err(AuthError::Internal("the users lookup failed".to_owned()))
            }
            Err(_) => {
                tracing::error!(target_table = %self.target, timeout = ?self.timeout, "users lookup timed out");
                Err(AuthError::Internal("the users lookup timed out".to_owned()))
            }
        }
    }
}

fn is_data_exception(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.code().code().starts_with("22"))
}

/// The users table as the replication stream must carry it for
/// USER_DELETED: in the publication, and its key column in the replica
/// identity (a DELETE carries only the identity's old values). `Ok(Err(..))`
/// says what is missing and what to change; `Err` is a failed query.
pub async fn check_replicated(
    client: &Client,
    table: &str,
    column: &str,
    publication: &str,
) -> Result<Result<(), String>, tokio_postgres::Error> {
    let oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&table])
        .await?
        .try_get(0)?;
    // The lookup has already checked that the table exists.
    let Some(t) = (match oid {
        Some(oid) => table_identity(client, oid, publication).await?,
        None => None,
    }) else {
        return Ok(Ok(()));
    };
    let name = &t.name;
    if !t.published {
        return Ok(Err(format!(
            "AUTH_USERS_TABLE: {name} is not in publication {publication:?}, so a deleted user's \
             sessions are not closed (USER_DELETED) until they end: ALTER PUBLICATION \
             {publication} ADD TABLE {name}"
        )));
    }
    if !t.carries_old(&column_name(column)) {
        return Ok(Err(format!(
            "AUTH_USERS_ID_COLUMN: {column:?} is not in the replica identity of {name}, so a \
             DELETE does not say which user was deleted and their sessions are not closed \
             (USER_DELETED): make it the primary key, or ALTER TABLE {name} REPLICA IDENTITY FULL"
        )));
    }
    Ok(Ok(()))
}
