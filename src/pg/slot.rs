//! Replication slot and publication management, over an ordinary
//! `tokio_postgres` connection to the replicated database.
//!
//! Invariant: pgsat only ever streams from a permanent, valid, logical
//! `pgoutput` slot of the database it is connected to. Everything else — a
//! slot of another plugin, type or database, an invalidated slot, a slot used
//! by another process, `wal_level` below `logical`, a role without the rights
//! — is a clear error saying what to do. Creating is idempotent and
//! race-safe (`duplicate_object` from a concurrent creator means "exists").

use tokio_postgres::Client;

use crate::pg::conn::PgError;
use crate::pg::lsn::Lsn;
use crate::pg::replication::{quote_ident, quote_literal};

/// What [`check_server`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    pub user: String,
    pub database: String,
    pub is_superuser: bool,
    pub has_replication: bool,
}

/// Checks that the server can feed pgsat: `wal_level = logical`, and the
/// current role is superuser or has REPLICATION.
pub async fn check_server(client: &Client) -> Result<ServerInfo, PgError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('server_version_num')::int4, \
                    current_user::text, current_database()::text, r.rolsuper, r.rolreplication \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    let wal_level: String = row.try_get(0)?;
    let info = ServerInfo {
        version_num: row.try_get(1)?,
        user: row.try_get(2)?,
        database: row.try_get(3)?,
        is_superuser: row.try_get(4)?,
        has_replication: row.try_get(5)?,
    };
    if wal_level != "logical" {
        return Err(PgError::Setup(format!(
            "Postgres has wal_level = {wal_level}, but logical replication needs wal_level = logical: \
             set it in postgresql.conf (or run ALTER SYSTEM SET wal_level = logical) and restart Postgres"
        )));
    }
    if !info.is_superuser && !info.has_replication {
        return Err(PgError::Setup(format!(
            "role {:?} may not use replication: grant it with ALTER ROLE {} REPLICATION \
             (or connect as a superuser)",
            info.user,
            quote_ident(&info.user)
        )));
    }
    Ok(info)
}

/// Creates publication `name` `FOR ALL TABLES` when missing. Returns whether
/// it was created now. An existing publication is used as it is.
pub async fn ensure_publication(client: &Client, name: &str) -> Result<bool, PgError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    let sql = format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(name));
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(true),
        Err(e) => match PgError::from(e) {
            // Created meanwhile by someone else: 42710 when their creation
            // had committed, 23505 (the catalog's unique index) when both
            // inserted at once.
            PgError::Server { code, .. } if code == "42710" || code == "23505" => Ok(false),
            PgError::Server { code, message, .. } if code == "42501" => {
                Err(PgError::Setup(format!(
                    "cannot create publication {name:?}: {message} (SQLSTATE 42501). A publication \
                     FOR ALL TABLES needs a superuser: run `{sql}` as one, or set PUBLICATION to an \
                     existing publication"
                )))
            }
            other => Err(other),
        },
    }
}

/// The slot pgsat streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    /// Where streaming resumes (0 when Postgres reports none).
    pub confirmed_flush_lsn: u64,
    /// Oldest WAL the slot retains (0 when none).
    pub restart_lsn: u64,
    /// Whether this call created the slot.
    pub created: bool,
    /// `wal_status` (`reserved`, `extended`, `unreserved`).
    pub wal_status: Option<String>,
}

/// Ensures a permanent logical slot `name` with `pgoutput` exists in the
/// connected database and is usable: creates it when missing, otherwise
/// checks plugin, type, database, validity and that no other process uses it.
///
/// A slot active in another process is `PgError::Server` with SQLSTATE
/// `55006` (object_in_use), which is transient: the walsender of a previous,
/// dead pgsat holds the slot until it notices (at most `wal_sender_timeout`).
pub async fn ensure_slot(client: &Client, name: &str) -> Result<SlotInfo, PgError> {
    if let Some(row) = read_settled_slot(client, name).await? {
        return validate(name, row, false);
    }
    let created = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await;
    let created = match created {
        Ok(_) => true,
        Err(e) => match PgError::from(e) {
            // Created concurrently by another process: re-read below.
            PgError::Server { code, .. } if code == "42710" => false,
            PgError::Server { code, message, .. } if code == "55000" => {
                // object_not_in_prerequisite_state: e.g. wal_level too low.
                return Err(PgError::Setup(format!(
                    "cannot create replication slot {name:?}: {message} (SQLSTATE 55000); \
                     logical replication needs wal_level = logical (then restart Postgres)"
                )));
            }
            PgError::Server { code, message, .. } if code == "42501" => {
                return Err(PgError::Setup(format!(
                    "cannot create replication slot {name:?}: {message} (SQLSTATE 42501); the role \
                     needs REPLICATION (ALTER ROLE ... REPLICATION) or superuser"
                )));
            }
            other => return Err(other),
        },
    };
    match read_settled_slot(client, name).await? {
        Some(row) => validate(name, row, created),
        None => Err(PgError::Setup(format!(
            "replication slot {name:?} vanished right after it was created (dropped concurrently?)"
        ))),
    }
}

/// Drops slot `name` if it exists (waiting for no one: fails with `55006`
/// when it is active). Returns whether it existed.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool, PgError> {
    let n = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(n > 0)
}

/// Reads the slot; while it is held by an ordinary backend (another session
/// creating it, which can take as long as the transactions it waits for),
/// waits for it to be released, for at most 30 s. A slot held by a walsender
/// is returned as it is.
async fn read_settled_slot(client: &Client, name: &str) -> Result<Option<SlotRow>, PgError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let Some(row) = read_slot(client, name).await? else {
            return Ok(None);
        };
        let Some(pid) = row.active_pid else {
            return Ok(Some(row));
        };
        let holder: Option<String> = client
            .query_opt(
                "SELECT backend_type FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await?
            .map(|r| r.try_get::<_, Option<String>>(0))
            .transpose()?
            .flatten();
        if holder.as_deref() == Some("walsender") || tokio::time::Instant::now() >= deadline {
            return Ok(Some(row));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

struct SlotRow {
    plugin: Option<String>,
    slot_type: String,
    database: Option<String>,
    current_db: String,
    temporary: bool,
    active_pid: Option<i32>,
    confirmed_flush: Option<String>,
    restart: Option<String>,
    wal_status: Option<String>,
    invalidation: Option<String>,
}

async fn read_slot(client: &Client, name: &str) -> Result<Option<SlotRow>, PgError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .try_get(0)?;
    // wal_status: PG 13+; invalidation_reason: PG 17+.
    let wal_status = if version >= 130000 {
        "wal_status"
    } else {
        "NULL::text"
    };
    let invalidation = if version >= 170000 {
        "invalidation_reason"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT plugin::text, slot_type, database::text, current_database()::text, temporary, \
                active_pid, confirmed_flush_lsn::text, restart_lsn::text, {wal_status}, {invalidation} \
         FROM pg_replication_slots WHERE slot_name = $1"
    );
    let Some(r) = client.query_opt(&sql, &[&name]).await? else {
        return Ok(None);
    };
    Ok(Some(SlotRow {
        plugin: r.try_get(0)?,
        slot_type: r.try_get(1)?,
        database: r.try_get(2)?,
        current_db: r.try_get(3)?,
        temporary: r.try_get(4)?,
        active_pid: r.try_get(5)?,
        confirmed_flush: r.try_get(6)?,
        restart: r.try_get(7)?,
        wal_status: r.try_get(8)?,
        invalidation: r.try_get(9)?,
    }))
}

fn parse_lsn(v: Option<&str>, what: &str) -> Result<u64, PgError> {
    match v {
        None => Ok(0),
        Some(s) => s
            .parse::<Lsn>()
            .map(|l| l.0)
            .map_err(|e| PgError::protocol(format!("{what}: {e}"))),
    }
}

fn validate(name: &str, r: SlotRow, created: bool) -> Result<SlotInfo, PgError> {
    let drop_hint = format!(
        "drop it with SELECT pg_drop_replication_slot({}) or set REPLICATION_SLOT to another name",
        quote_literal(name)
    );
    if r.slot_type != "logical" {
        return Err(PgError::Setup(format!(
            "replication slot {name:?} is a {} slot; pgsat needs a logical pgoutput slot: {drop_hint}",
            r.slot_type
        )));
    }
    if r.plugin.as_deref() != Some("pgoutput") {
        return Err(PgError::Setup(format!(
            "replication slot {name:?} uses output plugin {:?}; pgsat needs pgoutput: {drop_hint}",
            r.plugin.unwrap_or_default()
        )));
    }
    if r.database.as_deref() != Some(r.current_db.as_str()) {
        return Err(PgError::Setup(format!(
            "replication slot {name:?} belongs to database {:?}, not {:?} (the one in DATABASE_URL): \
             {drop_hint}",
            r.database.unwrap_or_default(),
            r.current_db
        )));
    }
    if r.wal_status.as_deref() == Some("lost") || r.invalidation.is_some() {
        let why = match &r.invalidation {
            Some(reason) => format!("invalidation reason: {reason}"),
            None => "wal_status = lost".to_string(),
        };
        return Err(PgError::Setup(format!(
            "replication slot {name:?} was invalidated by Postgres ({why}): it fell further behind \
             than max_slot_wal_keep_size allows, and the WAL it needed was removed, so the changes \
             in it can no longer be read. Way out: drop the slot (SELECT \
             pg_drop_replication_slot({})); pgsat recreates it on start and clients resynchronise: \
             positions before the new slot answer BEHIND_WINDOW",
            quote_literal(name)
        )));
    }
    if r.temporary {
        return Err(PgError::Setup(format!(
            "replication slot {name:?} is temporary; pgsat needs a permanent one: use another name"
        )));
    }
    if let Some(pid) = r.active_pid {
        return Err(PgError::Server {
            code: "55006".into(),
            message: format!(
                "replication slot {name:?} is in use by another process (PID {pid}): another pgsat \
                 or replication client is reading it"
            ),
            detail: None,
            hint: Some(
                "stop the other reader; if it was a pgsat that died, Postgres frees the slot \
                 within wal_sender_timeout"
                    .into(),
            ),
        });
    }
    if r.wal_status.as_deref() == Some("unreserved") {
        tracing::warn!(
            slot = name,
            "replication slot is about to lose WAL it needs (wal_status = unreserved, \
             max_slot_wal_keep_size): it will be invalidated unless it catches up"
        );
    }
    Ok(SlotInfo {
        name: name.to_string(),
        confirmed_flush_lsn: parse_lsn(r.confirmed_flush.as_deref(), "confirmed_flush_lsn")?,
        restart_lsn: parse_lsn(r.restart.as_deref(), "restart_lsn")?,
        created,
        wal_status: r.wal_status,
    })
}

/// Slot figures for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStats {
    pub confirmed_flush_lsn: u64,
    pub restart_lsn: u64,
    /// WAL Postgres keeps for the slot: `pg_current_wal_lsn() - restart_lsn`.
    pub retained_wal_bytes: u64,
    /// The server's current WAL write position.
    pub current_wal_lsn: u64,
    pub active: bool,
    pub wal_status: Option<String>,
}

/// Current figures of slot `name`; `None` when it does not exist.
pub async fn slot_stats(client: &Client, name: &str) -> Result<Option<SlotStats>, PgError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .try_get(0)?;
    let wal_status = if version >= 130000 {
        "wal_status"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT confirmed_flush_lsn::text, restart_lsn::text, \
                GREATEST(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8, \
                pg_current_wal_lsn()::text, active, {wal_status} \
         FROM pg_replication_slots WHERE slot_name = $1"
    );
    let Some(r) = client.query_opt(&sql, &[&name]).await? else {
        return Ok(None);
    };
    let confirmed: Option<String> = r.try_get(0)?;
    let restart: Option<String> = r.try_get(1)?;
    let retained: Option<i64> = r.try_get(2)?;
    let current: Option<String> = r.try_get(3)?;
    Ok(Some(SlotStats {
        confirmed_flush_lsn: parse_lsn(confirmed.as_deref(), "confirmed_flush_lsn")?,
        restart_lsn: parse_lsn(restart.as_deref(), "restart_lsn")?,
        retained_wal_bytes: retained.unwrap_or(0).max(0) as u64,
        current_wal_lsn: parse_lsn(current.as_deref(), "pg_current_wal_lsn")?,
        active: r.try_get(4)?,
        wal_status: r.try_get(5)?,
    }))
}
