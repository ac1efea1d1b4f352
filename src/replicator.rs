//! The replication driver: slot → pgoutput decoder → transaction assembler →
//! log, with reconnection.
//!
//! Invariants:
//! - the slot's confirmed flush position never passes what the log has
//!   durably written (`Log::durable_lsn`), except that when Postgres is idle
//!   and everything received is durable it follows the server's WAL end, so
//!   pgsat pins no WAL it does not need and fast shutdown is never held up;
//! - keepalives that ask for a reply are answered as soon as they are read,
//!   and a status update goes out at least every 10 s, whatever the log or
//!   the sessions are doing (sessions never touch this task);
//! - after a reconnect the stream restarts at the log's end; transactions the
//!   log already has are skipped by commit LSN, so nothing is lost or doubled.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ingest::{IngestError, Step, TxnAssembler, UsersTable};
use crate::log::Log;
use crate::metrics::Metrics;
use crate::pg::catalog::{CatalogError, PgCatalog};
use crate::pg::conn::{ConnParams, ReplicationConn};
use crate::pg::lsn::Lsn;
use crate::pg::pgoutput;
use crate::pg::replication::ReplMessage;
use crate::pg::slot;
use crate::pg::sql::SqlConfig;
use crate::pg::PgError;
use crate::server::direct::DirectLane;
use crate::server::registry::Registry;

/// A status update goes out at least this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Confirmations follow the log's durable position at most this often.
const CONFIRM_THROTTLE: Duration = Duration::from_millis(50);
/// An unrequested confirmation prompted by a keepalive waits this long, so
/// that the transaction usually following the keepalive is served first.
const KEEPALIVE_REPLY_DELAY: Duration = Duration::from_millis(2);

pub struct Replicator {
    pub params: ConnParams,
    pub slot: String,
    pub publication: String,
    pub log: Log,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// Sessions waiting at the log's end: written to right after an append.
    pub direct: Arc<DirectLane>,
    pub users_table: Option<UsersTable>,
    /// The system identifier the log belongs to: a reconnect that finds
    /// another server stops replication.
    pub system_id: String,
    pub on_connected: Arc<dyn Fn(bool) + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error("replication stopped: {0}")]
    Fatal(String),
}

impl Replicator {
    /// Runs until `shutdown`, reconnecting with backoff on transient errors.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ReplicatorError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self.run_once(&shutdown).await;
            (self.on_connected)(false);
            self.metrics.replication_connected.set(0);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    self.metrics.replication_reconnects.inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replication connection lost; reconnecting");
                }
                Err(e) => {
                    tracing::error!(error = %e, "replication failed");
                    return Err(ReplicatorError::Fatal(e.to_string()));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let mut conn = ReplicationConn::connect(&self.params).await?;
        let ident = conn.identify_system().await?;
        if ident.system_id != self.system_id {
            return Err(RunError::Fatal(format!(
                "reconnected to another PostgreSQL system (system identifier {} instead of {}); refusing to mix their histories",
                ident.system_id, self.system_id
            )));
        }
        let client = connect_sql(&self.params).await?;
        let info = slot::ensure_slot(&client, &self.slot).await?;
        if info.confirmed_flush_lsn > self.log.end_lsn() {
            tracing::warn!(
                slot_confirmed = %Lsn(info.confirmed_flush_lsn),
                log_end = %Lsn(self.log.end_lsn()),
                "the slot is ahead of the log (data dir lost or restored from an old backup): positions before the slot answer BEHIND_WINDOW"
            );
            self.log
                .mark_gap(info.confirmed_flush_lsn)
                .map_err(|e| RunError::Fatal(e.to_string()))?;
        }
        let start = self.log.end_lsn();
        let mut stream = conn
            .start_logical(&self.slot, start, &self.publication)
            .await?;
        tracing::info!(slot = %self.slot, from = %Lsn(start), "replication started");
        (self.on_connected)(true);
        self.metrics.replication_connected.set(1);

        let mut assembler = TxnAssembler::new(PgCatalog::new(client), self.users_table.clone());
        let mut durable = self.log.watch_durable();
        let mut ticker = tokio::time::interval(STATUS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut confirmed = 0u64;
        let mut received = start;
        // The server's WAL end when it was last seen idle with everything
        // durable: confirmable even though no transaction ends there.
        let mut idle_end = 0u64;
        let mut last_confirm = tokio::time::Instant::now();
        // A durable position held back by the throttle is confirmed when the
        // throttle interval ends (the trailing edge), not at the next
        // STATUS_INTERVAL tick: otherwise the last transactions of a burst
        // stay unconfirmed for up to 10 s.
        let mut confirm_due: Option<tokio::time::Instant> = None;
        // Made once, not per message: registering a waiter takes a lock.
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);

        loop {
            tokio::select! {
                biased;
                _ = &mut stopping => {
                    let flush = self.confirmable(&assembler, idle_end);
                    let _ = stream.send_status(received.max(flush), flush, flush, false).await;
                    let _ = stream.close().await;
                    return Ok(());
                }
                msg = stream.recv() => {
                    let Some(msg) = msg? else {
                        return Err(RunError::Transient("replication stream ended".into()));
                    };
                    match msg {
                        ReplMessage::XLogData { wal_end, data, .. } => {
                            tracing::trace!(wal_end = %Lsn(wal_end), tag = data.first().copied().unwrap_or(0) as char as u32, "xlogdata");
                            received = received.max(wal_end);
                            Metrics::set_u64(&self.metrics.replication_received_lsn, received);
                            let decoded = pgoutput::decode(&data).map_err(|e| {
                                self.metrics.replication_decode_errors.inc();
                                RunError::Fatal(format!("undecodable pgoutput message: {e}"))
                            })?;
                            let step = assembler.push(decoded).await.map_err(ingest_error)?;
                            let committed = matches!(step, Step::Committed(_));
                            self.apply(step)?;
                            if committed {
                                // The socket buffer may hold a long backlog,
                                // all of it readable without waiting: yield
                                // after at most 128 transactions (the task's budget)
                                // so the router and the sessions serve the
                                // ones appended so far.
                                tokio::task::coop::consume_budget().await;
                                // Backpressure from a slow or full disk (resolves
                                // at once when there is room): keep answering
                                // Postgres while the writer catches up.
                                loop {
                                    tokio::select! {
                                        biased;
                                        _ = self.log.wait_for_room() => break,
                                        _ = ticker.tick() => {
                                            let flush = self.confirmable(&assembler, idle_end);
                                            stream.send_status(received.max(flush), flush, flush, false).await?;
                                        }
                                        _ = &mut stopping => break,
                                    }
                                }
                            }
                        }
                        ReplMessage::Keepalive { wal_end, reply_requested, .. } => {
                            tracing::trace!(wal_end = %Lsn(wal_end), reply_requested, "keepalive");
                            received = received.max(wal_end);
                            // Everything the walsender sent before this
                            // keepalive is appended: no commit ending at or
                            // before wal_end can still come (snapshot sessions).
                            self.log.set_passed(wal_end);
                            if !assembler.in_transaction() && self.log.durable_lsn() == self.log.end_lsn() {
                                idle_end = idle_end.max(wal_end);
                            }
                            // Answer at once when asked; otherwise report an
                            // idle WAL end we may now confirm, so an idle slot
                            // pins nothing and fast shutdown is not held up —
                            // but a moment later, through the throttle: the
                            // walsender sends a keepalive just before each new
                            // transaction, and a reply here would sit between
                            // receiving that transaction and serving it.
                            let flush = self.confirmable(&assembler, idle_end);
                            if reply_requested {
                                stream.send_status(received.max(flush), flush, flush, false).await?;
                                confirmed = flush;
                                last_confirm = tokio::time::Instant::now();
                                Metrics::set_u64(&self.metrics.replication_confirmed_lsn, flush);
                            } else if flush > confirmed && confirm_due.is_none() {
                                confirm_due = Some((last_confirm + CONFIRM_THROTTLE).max(tokio::time::Instant::now() + KEEPALIVE_REPLY_DELAY));
                            }
                        }
                    }
                }
                // Only while no confirmation is scheduled: one then goes
                // out when it is due with whatever is durable by then, so
                // the log writer's every fsync need not wake this task.
                changed = durable.changed(), if confirm_due.is_none() => {
                    if changed.is_err() {
                        return Err(RunError::Fatal("the log writer stopped".into()));
                    }
                    let flush = self.confirmable(&assembler, idle_end);
                    if flush > confirmed {
                        if last_confirm.elapsed() >= CONFIRM_THROTTLE {
                            stream.send_status(received.max(flush), flush, flush, false).await?;
                            confirmed = flush;
                            last_confirm = tokio::time::Instant::now();
                            confirm_due = None;
                            Metrics::set_u64(&self.metrics.replication_confirmed_lsn, flush);
                        } else if confirm_due.is_none() {
                            confirm_due = Some(last_confirm + CONFIRM_THROTTLE);
                        }
                    }
                }
                _ = tokio::time::sleep_until(confirm_due.unwrap_or_else(tokio::time::Instant::now)), if confirm_due.is_some() => {
                    confirm_due = None;
                    let flush = self.confirmable(&assembler, idle_end);
                    if flush > confirmed {
                        stream.send_status(received.max(flush), flush, flush, false).await?;
                        confirmed = flush;
                        last_confirm = tokio::time::Instant::now();
                        Metrics::set_u64(&self.metrics.replication_confirmed_lsn, flush);
                    }
                }
                _ = ticker.tick() => {
                    let flush = self.confirmable(&assembler, idle_end);
                    stream.send_status(received.max(flush), flush, flush, false).await?;
                    confirmed = flush;
                    last_confirm = tokio::time::Instant::now();
                    Metrics::set_u64(&self.metrics.replication_confirmed_lsn, flush);
                }
            }
        }
    }

    /// What may be confirmed to the slot: what the log holds durably, or the
    /// idle WAL end when nothing is pending.
    fn confirmable(&self, assembler: &TxnAssembler<PgCatalog>, idle_end: u64) -> u64 {
        let durable = self.log.durable_lsn();
        if !assembler.in_transaction() && durable == self.log.end_lsn() {
            durable.max(idle_end)
        } else {
            durable
        }
    }

    fn apply(&self, step: Step) -> Result<(), RunError> {
        match step {
            Step::Nothing => {}
            // A Relation arrives inside the transaction that first uses it:
            // appending it now puts it before that transaction in the log.
            Step::Relation(rel) => self
                .log
                .append_relation((*rel).clone())
                .map_err(|e| RunError::Fatal(e.to_string()))?,
            Step::Committed(c) => {
                let changes = &self.metrics.replication_changes;
                changes.insert.inc_by(u64::from(c.ops.insert));
                changes.update.inc_by(u64::from(c.ops.update));
                changes.delete.inc_by(u64::from(c.ops.delete));
                changes.truncate.inc_by(u64::from(c.ops.truncate));
                if let Some(txn) = &c.txn {
                    self.metrics.replication_transactions.inc();
                    let index = self
                        .log
                        .append_txn_at(txn.clone())
                        .map_err(|e| RunError::Fatal(e.to_string()))?;
                    let appended = index.is_some();
                    if let Some(index) = index {
                        // Before anything else: sessions waiting at the end
                        // get it now.
                        self.direct.deliver(index, txn);
                        // A clock behind Postgres' would make it negative.
                        let lag = (crate::clock::unix_micros() - txn.commit_time).max(0);
                        self.metrics
                            .replication_commit_lag_seconds
                            .observe(lag as f64 / 1e6);
                    }
                    tracing::trace!(lsn = %Lsn(txn.commit_lsn), appended, "transaction");
                    if !appended {
                        tracing::debug!(lsn = %Lsn(txn.commit_lsn), "skipped a transaction the log already has");
                    }
                }
                if c.removed_users.all {
                    let n = self.registry.all_users_deleted();
                    tracing::info!(sessions = n, "users table truncated: closing every session");
                }
                for user in &c.removed_users.ids {
                    let n = self.registry.user_deleted(user);
                    if n > 0 {
                        tracing::info!(user_id = %user, sessions = n, "user row deleted: closing the user's sessions");
                    }
                }
            }
        }
        Ok(())
    }
}

/// An ordinary SQL connection to the same server.
pub async fn connect_sql(params: &ConnParams) -> Result<tokio_postgres::Client, PgError> {
    Ok(SqlConfig::new(params)?.connect("SQL", false).await?.0)
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{0}")]
    Pg(#[from] PgError),
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Fatal(String),
}

impl RunError {
    fn is_transient(&self) -> bool {
        match self {
            RunError::Pg(e) => e.is_transient(),
            RunError::Transient(_) => true,
            RunError::Fatal(_) => false,
        }
    }
}

/// A catalog lookup that failed because the SQL connection broke (Postgres
/// restarting) is transient: a reconnect re-reads from the slot and loses
/// nothing. Anything else in the stream is a real inconsistency: stop.
fn ingest_error(e: IngestError) -> RunError {
    match e {
        IngestError::Catalog(CatalogError::Query { source, .. }) => match PgError::from(source) {
            pg if pg.is_transient() => RunError::Pg(pg),
            pg => RunError::Fatal(format!("catalog lookup failed: {pg}")),
        },
        other => RunError::Fatal(other.to_string()),
    }
}

fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64((nanos % 1000) as f64 / 4000.0)
}
