//! A session's initial sync (`StartReplicationReq.snapshot = true`).
//!
//! Order on the wire: `StartReplicationResp`, the Relation of every table,
//! every row as `SnapshotRows`, then (catch-up) the OpLog of transactions the
//! snapshot did not see, `SnapshotEnd{lsn}`, then normal streaming.
//!
//! Why it is exact (nothing missing, nothing twice):
//! 1. A log cursor is opened BEFORE the snapshot is taken, at a position a
//!    little before the log's end ([`LOOKBACK`] of commit time earlier).
//!    Every transaction the snapshot does not see commits after this
//!    position: it was still running when the snapshot was taken, hence its
//!    commit reached the log after the cursor was opened — or, in the tiny
//!    window between a commit's WAL flush and its leaving the proc array, at
//!    most just before; the lookback covers that window. Starting early is
//!    always safe because delivery is decided per transaction below.
//!    (Commit times are Postgres' clock, "now" is pgsat's: clocks that
//!    disagree by more than LOOKBACK shrink the lookback towards none, which
//!    only reopens that microsecond-wide window.)
//! 2. The catch-up delivers a transaction (commit LSN ≤ `W`) iff the
//!    snapshot did not see it ([`TxSnapshot::saw`] on `Begin.xid`), so each
//!    change is either in the snapshot rows or delivered, never both.
//! 3. `W` = `pg_current_wal_insert_lsn()` read right after the snapshot:
//!    every transaction the snapshot saw ended its commit record at or
//!    before `W`, so everything committing after `W` is unseen and is
//!    streamed normally. `SnapshotEnd{lsn: W}` goes out once the cursor is
//!    past `W` — either it meets a commit > `W`, or the replication stream
//!    has reported passing `W` ([`crate::log::Log::passed_lsn`], from
//!    keepalives) and the cursor has consumed the whole log. On an idle
//!    server the reader commits one empty transaction after the snapshot so
//!    the walsender moves past `W` and says so promptly.
//! 4. Rows are queued before any catch-up OpLog, so a change always lands
//!    on top of the snapshot row it changes.
//! 5. The tables are locked (ACCESS SHARE) before the snapshot is taken:
//!    TRUNCATE is not MVCC-safe, so one committing after the snapshot but
//!    before a table's COPY would otherwise empty it under the snapshot
//!    ([`SnapshotConn::begin_locked`]).
//!
//! Merging with the read rules: `start` takes the request's `tables` and a
//! [`RowFilter`] (the session's `View::where_sql`); catch-up transactions go
//! through the session's normal per-transaction path (`Session::on_entry`),
//! so the rules' stream filtering applies to them unchanged.
//!
//! Memory: the reader task fills a channel of [`CHANNEL_FRAMES`] frames of
//! ≤ ~256 KiB; the session takes from it only while its socket queue is
//! under the high-water mark. A client that disconnects drops the session,
//! which aborts the task: the connection, its transaction and the permit go.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::ServerCtx;
use crate::clock::unix_micros as now_micros;
use crate::log::Cursor;
use crate::protocol::pb::ErrorCode;
use crate::rules::snapshot::{permits, SnapshotConn, SnapshotError, SnapshotItem, TxSnapshot};

/// How far before the log's end (in commit time) the catch-up cursor starts.
pub const LOOKBACK: Duration = Duration::from_secs(10);
/// Frames buffered between the reader task and the session.
const CHANNEL_FRAMES: usize = 4;

/// What the reader task tells the session, in order.
pub(super) enum PhaseMsg {
    /// The snapshot is taken; `cursor` was opened before it.
    Started {
        cursor: Box<Cursor>,
        snapshot: TxSnapshot,
        wal_lsn: u64,
    },
    Item(SnapshotItem),
    /// All rows are sent; the snapshot transaction is closed.
    Done {
        rows: u64,
    },
    Failed {
        code: ErrorCode,
        message: String,
    },
}

impl From<SnapshotItem> for PhaseMsg {
    fn from(i: SnapshotItem) -> Self {
        PhaseMsg::Item(i)
    }
}

/// The rows part: a running reader task.
pub(super) struct SnapshotPhase {
    pub rx: mpsc::Receiver<PhaseMsg>,
    task: tokio::task::JoinHandle<()>,
    pub started: Option<(Box<Cursor>, TxSnapshot, u64)>,
    pub rows: u64,
}

impl Drop for SnapshotPhase {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The catch-up part: streaming from the cursor until `SnapshotEnd`.
pub(super) struct Catchup {
    pub snapshot: TxSnapshot,
    pub wal_lsn: u64,
    pub rows: u64,
    pub passed: watch::Receiver<u64>,
}

/// Which rows of a table a session may read, as `View::where_sql` of the
/// read rules answers: `None` = none (the table is left out: no Relation, no
/// rows), `Some(sql)` = the rows where the SQL boolean expression `sql`
/// holds (`"true"`: every row).
pub type RowFilter = Box<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// Every row of every table (no read rules).
pub fn all_rows() -> RowFilter {
    Box::new(|_, _| Some("true".to_owned()))
}

/// Starts reading a snapshot of `tables` (empty: every published table),
/// narrowed by `filter`, for one session.
pub(super) fn start(ctx: &Arc<ServerCtx>, tables: Vec<String>, filter: RowFilter) -> SnapshotPhase {
    let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
    let ctx = ctx.clone();
    let task = tokio::spawn(async move {
        if let Err((code, message)) = read(&ctx, &tables, &filter, &tx).await {
            let _ = tx.send(PhaseMsg::Failed { code, message }).await;
        }
    });
    SnapshotPhase {
        rx,
        task,
        started: None,
        rows: 0,
    }
}

async fn read(
    ctx: &Arc<ServerCtx>,
    tables: &[String],
    filter: &RowFilter,
    tx: &mpsc::Sender<PhaseMsg>,
) -> Result<(), (ErrorCode, String)> {
    let internal = |e: SnapshotError| match e {
        SnapshotError::NotPublished(t) => (
            ErrorCode::TableNotReadable,
            format!("table {t:?} is not published"),
        ),
        SnapshotError::Cancelled => (ErrorCode::Internal, e.to_string()),
        e => {
            tracing::warn!(error = %e, "snapshot failed");
            (ErrorCode::Internal, e.to_string())
        }
    };
    let permit = tokio::select! {
        p = permits().acquire_owned() => p.map_err(|e| (ErrorCode::Internal, e.to_string()))?,
        _ = tx.closed() => return Ok(()),
    };
    let mut conn = SnapshotConn::connect(ctx.sql.clone())
        .await
        .map_err(internal)?;
    // The cursor first (point 1 above), then the snapshot.
    let from = ctx
        .log
        .lsn_before_time(now_micros() - LOOKBACK.as_micros() as i64);
    let cursor = ctx.log.cursor(from).map_err(|e| {
        (
            ErrorCode::Internal,
            format!("cannot open the log for the snapshot: {e}"),
        )
    })?;
    // Tables locked first: a concurrent TRUNCATE must not empty them
    // under the snapshot (SnapshotConn::begin_locked).
    let (snapshot, wal_lsn) = conn
        .begin_locked(&ctx.config.publication, tables, &|s, t| {
            filter(s, t).is_some()
        })
        .await
        .map_err(internal)?;
    tracing::debug!(xmin = snapshot.xmin, xmax = snapshot.xmax, in_progress = snapshot.xip.len(), wal = %crate::pg::lsn::Lsn(wal_lsn), "snapshot taken");
    let mut list = conn
        .tables(&ctx.config.publication, tables)
        .await
        .map_err(internal)?;
    // Tables the session may not read are left out entirely.
    let mut filters = Vec::with_capacity(list.len());
    list.retain(|t| match filter(&t.schema, &t.name) {
        Some(f) => {
            filters.push(f);
            true
        }
        None => false,
    });
    let closed = |_| (ErrorCode::Internal, "session gone".to_owned());
    tx.send(PhaseMsg::Started {
        cursor: Box::new(cursor),
        snapshot,
        wal_lsn,
    })
    .await
    .map_err(closed)?;
    for t in &list {
        tx.send(PhaseMsg::Item(SnapshotItem::Relation {
            relation_id: t.relation_id,
            frame: t.relation_frame.clone(),
        }))
        .await
        .map_err(closed)?;
    }
    let mut rows = 0u64;
    for (t, f) in list.iter().zip(&filters) {
        let f = (f.trim() != "true").then_some(f.as_str());
        rows += conn.copy_rows(t, f, tx).await.map_err(internal)?;
    }
    conn.finish().await.map_err(internal)?;
    drop(permit);
    tx.send(PhaseMsg::Done { rows }).await.map_err(closed)?;
    Ok(())
}
