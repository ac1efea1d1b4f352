//! Whether a table is in the publication, asked of Postgres when a session
//! subscribes to named tables (the publication may change while pgsat runs).
//!
//! Invariant: one lazily (re)connected SQL connection, shared; a failed
//! query drops it so the next question reconnects.

use tokio::sync::Mutex;

use crate::pg::conn::ConnParams;
use crate::replicator::connect_sql;

const SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables \
                   WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)";

/// Longest a session waits for the answer (connecting included).
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Published {
    params: ConnParams,
    publication: String,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl Published {
    pub fn new(params: ConnParams, publication: String) -> Self {
        Published {
            params,
            publication,
            client: Mutex::new(None),
        }
    }

    /// Whether `schema.table` is published; `Err` when Postgres cannot be
    /// asked.
    pub async fn contains(&self, schema: &str, table: &str) -> Result<bool, String> {
        tokio::time::timeout(LOOKUP_TIMEOUT, self.ask(schema, table))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {LOOKUP_TIMEOUT:?}")))
    }

    async fn ask(&self, schema: &str, table: &str) -> Result<bool, String> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect_sql(&self.params).await.map_err(|e| e.to_string())?);
        }
        let Some(client) = guard.as_ref() else {
            return Err("no connection".into());
        };
        match client
            .query_one(SQL, &[&self.publication, &schema, &table])
            .await
        {
            Ok(row) => row.try_get::<_, bool>(0).map_err(|e| e.to_string()),
            Err(e) => {
                *guard = None;
                Err(e.to_string())
            }
        }
    }
}
