//! One client's session: the state machine of protocol.md "Session".
//!
//! `AwaitingAuth` → (AuthReq ok) → `Authenticated` → (StartReplicationReq) →
//! streaming from a log cursor; `paused` while the token is expired; ended
//! by a fatal error, the client, user deletion or shutdown.
//!
//! Invariants:
//! - nothing but `ErrorResp` is ever sent before a successful AuthReq;
//! - transactions go out whole (all their OpLog frames are queued at once),
//!   in log order, each once; a Relation goes out before the first
//!   transaction that uses it and again when its definition changes;
//! - the session never awaits a socket write in its logic (see transport.rs):
//!   a client that stops reading only stops its own cursor, and is closed with
//!   SLOW_CONSUMER once the log's head is more than `CLIENT_MAX_LAG_BYTES`
//!   ahead of it;
//! - with a seat in the direct lane (direct.rs), the session arms it only
//!   right before it waits and disarms it first thing after: the lane's
//!   writes and the session's never overlap, and what the lane left
//!   unwritten goes out before anything else.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::time::{sleep_until, Sleep};

use super::direct::{Armed, Seat};
use super::router::{Member, Routed};
use super::snapshot_phase::{self, Catchup, PhaseMsg, SnapshotPhase};
use super::transport::{Incoming, OutQueue, Reader, Writer};
use super::ServerCtx;
use crate::auth::Principal;
use crate::log::{Cursor, Entry, LogError, RelationEntry, TxnEntry};
use crate::metrics::{AuthResult, CloseReason, SessionState};
use crate::protocol::frame::encode_frame;
use crate::protocol::message::ClientMessage;
use crate::protocol::msg_type::MsgType;
use crate::protocol::pb;
use crate::protocol::pb::ErrorCode;
use crate::rules::snapshot::SnapshotItem;
use crate::rules::{Filtered, RelFilter, Subscription, View};

/// Queue size above which the session stops pulling from its cursor until the
/// socket drains.
const QUEUE_HIGH_WATER: usize = 256 * 1024;
/// How often a session whose socket is blocked re-checks its lag.
const BLOCKED_LAG_CHECK: Duration = Duration::from_millis(200);
/// Time given to flush the last frames (an error, SHUTTING_DOWN) before close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Where a stream's transactions come from.
enum Source {
    /// The session reads the log itself (every session at first; filtered
    /// ones until their cursor has caught up with the router).
    Cursor(Box<Cursor>),
    /// A filtered session at the live end: the router hands it only the
    /// transactions it may read (see router.rs). `lsn`: the last commit
    /// taken (older ones redelivered after a join are dropped).
    Routed { member: Member, lsn: u64 },
}

struct Stream {
    source: Source,
    /// Relation definitions in force at the cursor (from the log).
    in_force: HashMap<u32, Bytes>,
    /// Once the session has been within CLIENT_MAX_LAG_BYTES of the head, it
    /// is live and falling behind again is SLOW_CONSUMER. A client catching up
    /// from far back reads at its own pace from disk until then.
    live: bool,
    /// Read rules and/or a table subscription; `None`: every transaction
    /// goes out as stored (version 1).
    filter: Option<StreamFilter>,
    /// The session's seat in the direct lane, if it has one (see direct.rs).
    seat: Option<Seat>,
    /// Commit LSN of the last transaction the lane wrote for this stream:
    /// the cursor's entries up to it were sent.
    direct_lsn: u64,
}

/// How a filtered session's transactions are chosen (see rules::filter).
struct StreamFilter {
    view: Arc<View>,
    sub: Subscription,
    /// view_id + subscription: sessions with the same key share filtered
    /// transactions through `ServerCtx::filter_cache`.
    key: Arc<str>,
    /// What this session does with each relation in force.
    rels: HashMap<u32, Arc<RelFilter>>,
}

struct Session {
    ctx: Arc<ServerCtx>,
    peer: SocketAddr,
    writer: Writer,
    out: OutQueue,
    principal: Option<Principal>,
    /// What the session may read (from the first token's claims).
    view: Arc<View>,
    /// Set by the registry when the user's row is deleted (the direct lane
    /// checks it); `None` before authentication.
    revoked: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Relation frames this session has sent, by relation id.
    sent_relations: HashMap<u32, Bytes>,
    /// The relations whose definition in force was sent, for the direct
    /// lane; `None` when `sent_relations` or the definitions in force changed.
    sent_in_force: Option<Arc<HashSet<u32>>>,
    stream: Option<Stream>,
    /// Initial sync, rows part: the reader task (protocol 1.1).
    snapshot: Option<SnapshotPhase>,
    /// Initial sync, catch-up part: filters the stream until SnapshotEnd.
    catchup: Option<Catchup>,
    /// The read-rules filter of the stream that follows a running snapshot.
    snapshot_filter: Option<StreamFilter>,
    /// Set when the token expired: the stream is paused until a refresh.
    paused_until: Option<Instant>,
    expiry: Option<Pin<Box<Sleep>>>,
    closing: Option<CloseReason>,
    last_ack: u64,
    state: Option<SessionState>,
}

/// Runs one connection to its end.
pub async fn run(ctx: Arc<ServerCtx>, mut reader: Reader, writer: Writer, peer: SocketAddr) {
    let opened = Instant::now();
    ctx.metrics.sessions_opened.inc();
    let mut s = Session {
        ctx: ctx.clone(),
        peer,
        writer,
        out: OutQueue::default(),
        principal: None,
        view: Arc::new(View::unrestricted()),
        revoked: None,
        sent_relations: HashMap::new(),
        sent_in_force: None,
        stream: None,
        snapshot: None,
        catchup: None,
        snapshot_filter: None,
        paused_until: None,
        expiry: None,
        closing: None,
        last_ack: 0,
        state: None,
    };
    let reason = s.run(&mut reader).await;
    let user = s
        .principal
        .as_ref()
        .map(|p| p.user_id.as_str())
        .unwrap_or("");
    tracing::info!(
        peer = %peer,
        user_id = user,
        reason = close_label(reason),
        duration_ms = opened.elapsed().as_millis() as u64,
        "session closed"
    );
    ctx.metrics.session_closed(reason);
}

impl Session {
    async fn run(&mut self, reader: &mut Reader) -> CloseReason {
        let reason = match self.authenticate(reader).await {
            Ok(registration) => {
                tracing::info!(
                    peer = %self.peer,
                    user_id = self.user_id(),
                    "session authenticated"
                );
                let deleted = registration.deleted.clone();
                self.revoked = Some(registration.revoked.clone());
                let r = self.serve(reader, &deleted).await;
                drop(registration);
                r
            }
            Err(reason) => reason,
        };
        self.set_state(None);
        // Flush what is queued (the closing error), then close.
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.writer.drain(&mut self.out)).await;
        self.writer.close().await;
        reason
    }

    fn user_id(&self) -> &str {
        self.principal
            .as_ref()
            .map(|p| p.user_id.as_str())
            .unwrap_or("")
    }

    /// Step 1: the first frame must be an AuthReq within AUTH_TIMEOUT.
    async fn authenticate(
        &mut self,
        reader: &mut Reader,
    ) -> Result<super::registry::Registration, CloseReason> {
        self.set_state(Some(SessionState::Authenticating));
        let deadline = tokio::time::Instant::now() + self.ctx.config.auth.auth_timeout;
        let first = tokio::select! {
            incoming = reader.next() => incoming,
            _ = sleep_until(deadline) => {
                return Err(self.fail(ErrorCode::AuthTimeout, format!(
                    "no AuthReq within AUTH_TIMEOUT ({} ms)",
                    self.ctx.config.auth.auth_timeout.as_millis()
                )));
            }
            _ = self.ctx.shutdown.cancelled() => {
                return Err(self.fail(ErrorCode::ShuttingDown, "server is shutting down".into()));
            }
        };
        let frame = match first {
            Incoming::Frame(f) => f,
            Incoming::Invalid { code, message } => return Err(self.fail(code, message)),
            Incoming::Closed => return Err(CloseReason::ClientClosed),
        };
        let req = match ClientMessage::decode(frame.ty, frame.body) {
            Ok(ClientMessage::Auth(req)) => req,
            Ok(_) => {
                return Err(self.fail(
                    ErrorCode::AuthRequired,
                    "the first frame must be AuthReq".into(),
                ))
            }
            Err(e) => return Err(self.fail(ErrorCode::InvalidRequest, e.to_string())),
        };
        // Registered for deletion notices before the users-row lookup: a row
        // deleted after the lookup found it still reaches this session.
        let verified = async {
            let v = self.ctx.auth.verify(&req.token, SystemTime::now()).await?;
            let registration = self.ctx.registry.register(&v.principal.user_id);
            self.ctx.auth.check_user(&v.principal.user_id).await?;
            Ok::<_, crate::auth::AuthError>((v.principal, registration))
        };
        match verified.await {
            Ok((principal, registration)) => {
                self.ctx.metrics.auth_attempt(AuthResult::Ok);
                if let Some(rules) = &self.ctx.rules {
                    self.view = Arc::new(View::new(rules, &principal.claims));
                }
                self.accept_principal(req.id, principal);
                Ok(registration)
            }
            Err(e) => {
                self.ctx.metrics.auth_attempt(AuthResult::of_error(&e));
                tracing::info!(peer = %self.peer, check = e.metric_label(), "authentication failed");
                Err(self.fail(e.code(), e.message()))
            }
        }
    }

    fn accept_principal(&mut self, id: String, principal: Principal) {
        let expires_at = principal.expires_at.unwrap_or(0);
        self.set_expiry(principal.expires_at);
        self.push(
            MsgType::AuthResp,
            &pb::AuthResp {
                id,
                user_id: principal.user_id.clone(),
                server_id: self.ctx.config.server_id.clone(),
                expires_at,
            },
        );
        self.principal = Some(principal);
    }

    /// Arms the expiry timer: the token expires for the session when it
    /// would be refused as expired, i.e. at `exp` + `AUTH_JWT_LEEWAY` (a
    /// token accepted within the leeway is not paused at once).
    fn set_expiry(&mut self, expires_at_micros: Option<i64>) {
        let leeway = self.ctx.config.auth.leeway.as_micros() as i64;
        self.expiry = expires_at_micros.map(|at| {
            let now = crate::clock::unix_micros();
            let left =
                Duration::from_micros(at.saturating_add(leeway).saturating_sub(now).max(0) as u64);
            Box::pin(tokio::time::sleep(left))
        });
    }

    /// Steps 2–5, after a successful AuthReq.
    async fn serve(&mut self, reader: &mut Reader, deleted: &tokio::sync::Notify) -> CloseReason {
        self.set_state(Some(SessionState::Authenticating));
        let mut lag_check = tokio::time::interval(BLOCKED_LAG_CHECK);
        lag_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Made once, not per loop turn: registering a waiter costs a lock.
        let ctx = self.ctx.clone();
        let shutdown = ctx.shutdown.cancelled();
        let deleted = deleted.notified();
        tokio::pin!(shutdown, deleted);
        loop {
            if let Some(reason) = self.closing.take() {
                return reason;
            }
            self.maybe_route();
            let paused = self.paused_until.is_some();
            let can_pull =
                self.stream.is_some() && !paused && self.out.len_bytes() < QUEUE_HIGH_WATER;
            let blocked = self.stream.is_some() && !paused && !can_pull;
            let grace_deadline = self.paused_until;
            self.arm_direct();
            let event = tokio::select! {
                biased;
                _ = &mut shutdown => Event::Shutdown,
                _ = &mut deleted => Event::UserDeleted,
                incoming = reader.next() => Event::Incoming(incoming),
                // Also when the queue is empty but a WebSocket flush is not
                // done: the last messages would wait for the next one.
                res = self.writer.drain(&mut self.out), if self.writer.has_pending(&self.out) => Event::Drained(res),
                next = next_entry(&mut self.stream), if can_pull => Event::Next(next),
                msg = next_snapshot_msg(&mut self.snapshot), if self.snapshot.is_some() && !paused && self.out.len_bytes() < QUEUE_HIGH_WATER => Event::Snapshot(msg),
                _ = wait_passed(&mut self.catchup) => Event::Passed,
                _ = lag_check.tick(), if blocked => Event::LagCheck,
                _ = wait_expiry(&mut self.expiry), if !paused => Event::Expired,
                _ = sleep_until(grace_deadline.map(tokio::time::Instant::from_std).unwrap_or_else(tokio::time::Instant::now)), if grace_deadline.is_some() => Event::GraceOver,
            };
            // Before anything else: what the direct lane wrote comes first.
            self.disarm_direct();
            match event {
                Event::Shutdown => {
                    // Only whole transactions are ever queued, so this error
                    // follows the last whole transaction.
                    return self.fail(
                        ErrorCode::ShuttingDown,
                        "server is shutting down; resume elsewhere from your last Commit.lsn"
                            .into(),
                    );
                }
                Event::UserDeleted => {
                    return self.fail(
                        ErrorCode::UserDeleted,
                        format!("user {:?} was deleted", self.user_id()),
                    );
                }
                Event::Incoming(incoming) => match incoming {
                    Incoming::Frame(frame) => self.on_frame(frame.ty, frame.body).await,
                    Incoming::Invalid { code, message } => return self.fail(code, message),
                    Incoming::Closed => return CloseReason::ClientClosed,
                },
                Event::Drained(res) => {
                    if res.is_err() {
                        return CloseReason::ClientClosed;
                    }
                }
                Event::Next(next) => match next {
                    Ok(Next::Entry(Entry::Relation(rel))) => self.on_relation(&rel),
                    Ok(Next::Entry(Entry::Txn(txn))) => self.on_txn(&txn),
                    Ok(Next::Routed(Routed::Relation(rel))) => self.on_relation(&rel),
                    Ok(Next::Routed(Routed::Txn {
                        commit_lsn,
                        filtered,
                    })) => self.on_routed(commit_lsn, &filtered),
                    Ok(Next::Routed(Routed::Evicted { after })) => self.unroute(after),
                    Err(LogError::BehindWindow { .. }) => {
                        return self.fail_behind_window();
                    }
                    Err(e) => {
                        tracing::error!(peer = %self.peer, error = %e, "log read failed");
                        return self.fail(ErrorCode::Internal, format!("log read failed: {e}"));
                    }
                },
                Event::Snapshot(msg) => self.on_snapshot_msg(msg),
                Event::Passed => self.check_snapshot_end(),
                Event::LagCheck => {
                    // The client stopped reading: its seat goes to a live one.
                    if let Some(stream) = self.stream.as_mut() {
                        stream.seat = None;
                    }
                    self.check_lag();
                }
                Event::Expired => {
                    self.expiry = None;
                    let grace = self.ctx.config.auth.refresh_grace;
                    self.paused_until = Some(Instant::now() + grace);
                    self.set_state(Some(SessionState::Paused));
                    self.push_error(ErrorCode::TokenExpired, format!(
                        "token expired; stream paused: send a new AuthReq within AUTH_REFRESH_GRACE ({} s) to resume", grace.as_secs()));
                }
                Event::GraceOver => {
                    return self.fail(
                        ErrorCode::TokenExpired,
                        "token expired and was not refreshed within AUTH_REFRESH_GRACE".into(),
                    );
                }
            }
        }
    }

    /// Lets the direct lane write the next transaction to the socket when
    /// the session would just send it as stored: streaming everything from
    /// its own cursor, which has yielded every entry it fetched, nothing
    /// queued or unflushed, no snapshot, not paused or closing.
    fn arm_direct(&mut self) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        let Source::Cursor(cursor) = &stream.source else {
            return;
        };
        if stream.filter.is_some()
            || !self.writer.is_plain_tcp()
            || self.catchup.is_some()
            || self.snapshot.is_some()
            || self.paused_until.is_some()
            || self.closing.is_some()
            || self.writer.has_pending(&self.out)
        {
            return;
        }
        let Some(next_index) = cursor.idle_index() else {
            return;
        };
        if stream.seat.is_none() {
            // Waiting at the end without a seat: take one if one is free.
            let seat = self.direct_seat();
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            stream.seat = seat;
        }
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        let Some(seat) = stream.seat.as_ref() else {
            return;
        };
        let relations = self
            .sent_in_force
            .get_or_insert_with(|| {
                Arc::new(
                    stream
                        .in_force
                        .iter()
                        .filter(|(id, def)| self.sent_relations.get(id) == Some(def))
                        .map(|(id, _)| *id)
                        .collect(),
                )
            })
            .clone();
        let until = self
            .expiry
            .as_ref()
            .map(|sleep| sleep.deadline().into_std());
        seat.arm(Armed {
            next_index,
            until,
            relations,
        });
    }

    /// Takes back the socket from the direct lane: queues the unwritten
    /// tail of its last transaction first, notes what it wrote.
    fn disarm_direct(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let Some(seat) = stream.seat.as_ref() else {
            return;
        };
        let taken = seat.disarm();
        if taken.written_lsn > stream.direct_lsn {
            stream.direct_lsn = taken.written_lsn;
        }
        if let Some(rest) = taken.rest {
            self.out.push_front(rest);
        }
    }

    async fn on_frame(&mut self, ty: u8, body: Bytes) {
        let msg = match ClientMessage::decode(ty, body) {
            Ok(m) => m,
            Err(e) => {
                self.fail(ErrorCode::InvalidRequest, e.to_string());
                return;
            }
        };
        match msg {
            ClientMessage::Auth(req) => self.on_refresh(req).await,
            ClientMessage::StartReplication(req) => self.on_start(req).await,
            ClientMessage::StopReplication => {
                let snapshot = self.snapshot.take().is_some();
                self.catchup = None;
                self.snapshot_filter = None;
                if self.stream.take().is_some() || snapshot {
                    self.set_state_unless_paused(SessionState::Authenticating);
                    self.push(MsgType::StopReplicationResp, &pb::StopReplicationResp {});
                } else {
                    self.push_error(
                        ErrorCode::ReplicationNotStarted,
                        "StopReplicationReq without a started replication".into(),
                    );
                }
            }
            ClientMessage::PingReq => {
                let lsn = self.position();
                self.push(MsgType::PingResp, &pb::PingResp { lsn });
            }
            ClientMessage::PingResp(_) => {}
            ClientMessage::Ack(ack) => {
                if ack.lsn > self.last_ack {
                    self.last_ack = ack.lsn;
                }
                let lag = self.ctx.log.end_lsn().saturating_sub(self.last_ack);
                self.ctx.metrics.client_ack_lag_bytes.observe(lag as f64);
            }
        }
    }

    /// What PingResp says: while streaming, the session's own position —
    /// the last commit queued to the client or passed over as unreadable,
    /// so that resuming from it loses nothing (the newest commit the server
    /// has, once the session has caught up); otherwise (not started, or in
    /// a snapshot) the newest commit the server has.
    fn position(&self) -> u64 {
        let head = self.ctx.log.end_lsn();
        match self.stream.as_ref() {
            Some(stream) if self.snapshot.is_none() && self.catchup.is_none() => {
                match &stream.source {
                    Source::Cursor(c) => c.lsn().max(stream.direct_lsn).min(head),
                    Source::Routed { member, lsn } => member.position(*lsn).min(head),
                }
            }
            _ => head,
        }
    }

    /// Step 4: a new AuthReq on a live session.
    async fn on_refresh(&mut self, req: pb::AuthReq) {
        let principal = match self.ctx.auth.authenticate(&req.token).await {
            Ok(p) => p,
            Err(e) => {
                self.ctx.metrics.auth_attempt(AuthResult::of_error(&e));
                tracing::info!(peer = %self.peer, user_id = self.user_id(), check = e.metric_label(), "token refresh failed");
                self.fail(e.code(), format!("token refresh failed: {}", e.message()));
                return;
            }
        };
        if principal.user_id != self.user_id() {
            // One attempt, one outcome: not also counted as `ok`.
            self.ctx.metrics.auth_attempt(AuthResult::PrincipalChanged);
            self.fail(
                ErrorCode::PrincipalChanged,
                "token refresh names another user_id; a session belongs to one user".into(),
            );
            return;
        }
        if let (Some(rules), Some(old)) = (&self.ctx.rules, &self.principal) {
            if !rules.same_used_claims(&old.claims, &principal.claims) {
                self.fail(
                    ErrorCode::ResyncRequired,
                    "token refresh changed a claim the read rules use: what this session may read changed; discard your copy and start again with a snapshot".into(),
                );
                return;
            }
        }
        self.ctx.metrics.auth_attempt(AuthResult::Ok);
        if self.paused_until.take().is_some() {
            let state = if self.stream.is_some() {
                SessionState::Streaming
            } else {
                SessionState::Authenticating
            };
            self.set_state(Some(state));
        }
        self.accept_principal(req.id, principal);
    }

    /// Step 2: StartReplicationReq.
    async fn on_start(&mut self, req: pb::StartReplicationReq) {
        if self.stream.is_some() || self.snapshot.is_some() {
            self.push_error(
                ErrorCode::ReplicationAlreadyStarted,
                "replication is already started on this session".into(),
            );
            return;
        }
        if req.snapshot && req.lsn != 0 {
            self.fail(
                ErrorCode::InvalidRequest,
                "a snapshot starts from nothing: send lsn = 0 with snapshot = true".into(),
            );
            return;
        }
        // A resume must be of the same view; a snapshot starts a new copy.
        if !req.snapshot && !req.view_id.is_empty() && req.view_id != self.view.id() {
            self.fail(
                ErrorCode::ResyncRequired,
                format!(
                    "view_id {:?} is not this session's view ({:?}): the read rules or your claims changed; discard your copy and start again with a snapshot",
                    req.view_id,
                    self.view.id()
                ),
            );
            return;
        }
        let Some(filter) = self.stream_filter(&req.tables).await else {
            return;
        };
        if req.snapshot {
            // No resumable position until SnapshotEnd: lsn 0.
            self.push(
                MsgType::StartReplicationResp,
                &pb::StartReplicationResp {
                    lsn: 0,
                    view_id: self.view.id().to_string(),
                },
            );
            self.set_state_unless_paused(SessionState::Streaming);
            // Rows: the session's tables, each filtered by its read rule.
            // (No stream filter: no rules and every table.)
            let view = self.view.clone();
            let sub = filter.as_ref().map(|f| f.sub.clone());
            let rows: snapshot_phase::RowFilter = Box::new(move |schema: &str, table: &str| {
                if sub.as_ref().is_some_and(|s| !s.includes(schema, table)) {
                    return None;
                }
                view.where_sql(schema, table)
            });
            self.snapshot = Some(snapshot_phase::start(&self.ctx, req.tables, rows));
            self.snapshot_filter = filter;
            return;
        }
        let log = &self.ctx.log;
        let after = if req.lsn == 0 { log.end_lsn() } else { req.lsn };
        match log.cursor(after) {
            Ok(cursor) => {
                self.sent_in_force = None;
                self.stream = Some(Stream {
                    source: Source::Cursor(Box::new(cursor)),
                    in_force: HashMap::new(),
                    live: false,
                    filter,
                    seat: None,
                    direct_lsn: 0,
                });
                self.set_state_unless_paused(SessionState::Streaming);
                self.push(
                    MsgType::StartReplicationResp,
                    &pb::StartReplicationResp {
                        lsn: after,
                        view_id: self.view.id().to_string(),
                    },
                );
            }
            Err(LogError::BehindWindow { start_lsn, .. }) => {
                self.fail(
                    ErrorCode::BehindWindow,
                    format!(
                        "lsn {} is older than the oldest position the server retains ({}); resynchronise from scratch",
                        crate::pg::lsn::Lsn(req.lsn),
                        crate::pg::lsn::Lsn(start_lsn)
                    ),
                );
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "cursor open failed");
                self.fail(ErrorCode::Internal, format!("cannot open the log: {e}"));
            }
        }
    }

    /// A seat in the direct lane, if one is free.
    fn direct_seat(&self) -> Option<Seat> {
        if !self.ctx.direct.has_room() {
            return None;
        }
        let revoked = self.revoked.clone()?;
        let socket = self.writer.direct_socket()?;
        self.ctx.direct.join(revoked, socket)
    }

    fn on_relation(&mut self, rel: &RelationEntry) {
        self.sent_in_force = None;
        if let Some(stream) = self.stream.as_mut() {
            stream.in_force.insert(rel.relation_id, rel.frame.clone());
            if let Some(f) = stream.filter.as_mut() {
                match RelFilter::from_frame(&rel.frame, &f.view, &f.sub) {
                    Some(r) => f.rels.insert(rel.relation_id, Arc::new(r)),
                    None => f.rels.remove(&rel.relation_id),
                };
            }
        }
    }

    /// A transaction from the session's own cursor.
    fn on_txn(&mut self, txn: &TxnEntry) {
        if self
            .stream
            .as_ref()
            .is_some_and(|s| txn.commit_lsn <= s.direct_lsn)
        {
            // The direct lane wrote it.
            return;
        }
        if let Some(c) = &self.catchup {
            if txn.commit_lsn > c.wal_lsn {
                // Everything from here on is unseen by the snapshot.
                self.end_snapshot();
            } else if c.snapshot.saw(txn.xid) {
                // Already in the snapshot rows.
                self.check_snapshot_end();
                return;
            }
        }
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        match stream.filter.as_ref() {
            None => {
                self.send_txn(&txn.relation_ids, txn.frames.clone(), txn.frame_count());
            }
            Some(f) => {
                let filtered = self
                    .ctx
                    .filter_cache
                    .get(txn, &f.key, &|id| f.rels.get(&id).cloned());
                if filtered.incomplete {
                    self.fail_incomplete();
                    return;
                }
                match &filtered.frames {
                    // Nothing readable: nothing sent; the position still
                    // moves past it (the next Commit).
                    None => self.check_snapshot_end(),
                    Some(b) => {
                        self.send_txn(&filtered.relation_ids, b.clone(), filtered.frame_count)
                    }
                }
            }
        }
    }

    /// A transaction the router found readable by this session.
    fn on_routed(&mut self, commit_lsn: u64, filtered: &Filtered) {
        let Some(Stream {
            source: Source::Routed { lsn, .. },
            ..
        }) = self.stream.as_mut()
        else {
            return;
        };
        if commit_lsn <= *lsn {
            // Joined behind the router: already sent from the cursor.
            return;
        }
        if filtered.incomplete {
            self.fail_incomplete();
            return;
        }
        *lsn = commit_lsn;
        if let Some(b) = &filtered.frames {
            self.send_txn(&filtered.relation_ids, b.clone(), filtered.frame_count);
        }
    }

    /// Queues one transaction's frames, preceded by the definitions of its
    /// relations this session has not sent in their current form.
    fn send_txn(&mut self, relation_ids: &[u32], frames: Bytes, frame_count: usize) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        for rel_id in relation_ids {
            let Some(def) = stream.in_force.get(rel_id) else {
                continue;
            };
            if self.sent_relations.get(rel_id) != Some(def) {
                self.sent_relations.insert(*rel_id, def.clone());
                self.sent_in_force = None;
                self.out.push(def.clone());
                self.ctx.metrics.count_sent(1, def.len());
            }
        }
        let len = frames.len();
        if frame_count > 1 && matches!(self.writer, Writer::Ws { .. }) {
            // One queue entry per frame: WebSocket sends each as its
            // own message (minus the length prefix).
            for f in crate::protocol::frame::split_frames(&frames) {
                self.out.push(f);
            }
        } else {
            self.out.push(frames);
        }
        // The session loop drains too (and waits for room); a registration
        // made here with a no-op waker is replaced by its poll. Counted
        // first: a client may read the bytes before try_drain returns.
        self.ctx.metrics.count_sent(frame_count as u64, len);
        self.writer.try_drain(&mut self.out);
        self.check_snapshot_end();
        self.check_lag();
    }

    /// A filtered stream whose cursor has caught up joins the router (no
    /// snapshot catch-up running: that one needs every transaction).
    fn maybe_route(&mut self) {
        if self.catchup.is_some() {
            return;
        }
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let (Some(f), Source::Cursor(cursor)) = (stream.filter.as_ref(), &stream.source) else {
            return;
        };
        let Some(at) = cursor.idle_index() else {
            return;
        };
        let lsn = cursor.lsn();
        if let Some(member) = self.ctx.router.join(at, lsn, &f.key, &f.view, &f.sub) {
            stream.source = Source::Routed { member, lsn };
        }
    }

    /// Evicted by the router (mailbox full): read the log again from the
    /// eviction position.
    fn unroute(&mut self, after: u64) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let Source::Routed { lsn, .. } = &stream.source else {
            return;
        };
        let from = after.max(*lsn);
        match self.ctx.log.cursor(from) {
            Ok(c) => stream.source = Source::Cursor(Box::new(c)),
            Err(LogError::BehindWindow { .. }) => {
                self.fail_behind_window();
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "cursor open failed");
                self.fail(ErrorCode::Internal, format!("cannot open the log: {e}"));
            }
        }
    }

    /// Initial sync: one message from the reader task.
    fn on_snapshot_msg(&mut self, msg: Option<PhaseMsg>) {
        let Some(phase) = self.snapshot.as_mut() else {
            return;
        };
        match msg {
            Some(PhaseMsg::Started {
                cursor,
                snapshot,
                wal_lsn,
            }) => phase.started = Some((cursor, snapshot, wal_lsn)),
            Some(PhaseMsg::Item(SnapshotItem::Relation { relation_id, frame })) => {
                self.sent_relations.insert(relation_id, frame.clone());
                self.sent_in_force = None;
                self.ctx.metrics.count_sent(1, frame.len());
                self.out.push(frame);
            }
            Some(PhaseMsg::Item(SnapshotItem::Rows { frame, rows })) => {
                phase.rows += rows;
                self.ctx.metrics.count_sent(1, frame.len());
                self.out.push(frame);
            }
            Some(PhaseMsg::Done { rows }) => {
                let started = phase.started.take();
                self.snapshot = None;
                let Some((cursor, snapshot, wal_lsn)) = started else {
                    self.fail(
                        ErrorCode::Internal,
                        "snapshot ended before it started".into(),
                    );
                    return;
                };
                let filter = self.snapshot_filter.take();
                self.sent_in_force = None;
                self.stream = Some(Stream {
                    source: Source::Cursor(cursor),
                    in_force: HashMap::new(),
                    live: false,
                    filter,
                    seat: None,
                    direct_lsn: 0,
                });
                self.catchup = Some(Catchup {
                    snapshot,
                    wal_lsn,
                    rows,
                    passed: self.ctx.log.watch_passed(),
                });
                self.check_snapshot_end();
            }
            Some(PhaseMsg::Failed { code, message }) => {
                self.fail(code, format!("snapshot failed: {message}"));
            }
            None => {
                self.fail(ErrorCode::Internal, "snapshot reader stopped".into());
            }
        }
    }

    /// Sends SnapshotEnd once no transaction at or before the snapshot's
    /// WAL position can still come: the cursor is past it, or the
    /// replication stream has passed it and the cursor holds all of the log.
    fn check_snapshot_end(&mut self) {
        let (Some(c), Some(stream)) = (&self.catchup, &self.stream) else {
            return;
        };
        // `passed` first: once it is ≥ W every commit ≤ W is in the log, so
        // an end read after it covers them all.
        let passed = self.ctx.log.passed_lsn();
        let end = self.ctx.log.end_lsn();
        let at = stream.lsn();
        if at >= c.wal_lsn || (passed >= c.wal_lsn && at >= end) {
            self.end_snapshot();
        }
    }

    fn end_snapshot(&mut self) {
        let Some(c) = self.catchup.take() else {
            return;
        };
        self.push(
            MsgType::SnapshotEnd,
            &pb::SnapshotEnd {
                lsn: c.wal_lsn,
                rows: c.rows,
                view_id: self.view.id().to_string(),
            },
        );
    }

    /// The filter for a stream of `tables` (empty: every readable table),
    /// or `None` after failing the session with TABLE_NOT_READABLE.
    async fn stream_filter(&mut self, tables: &[String]) -> Option<Option<StreamFilter>> {
        let sub = match Subscription::from_names(tables) {
            Ok(s) => s,
            Err(name) => {
                self.fail(
                    ErrorCode::TableNotReadable,
                    format!("table {name:?} is not `schema.table` or `table`"),
                );
                return None;
            }
        };
        for (schema, table) in sub.names() {
            let published = match self.ctx.published.contains(&schema, &table).await {
                Ok(p) => p,
                Err(e) => {
                    self.fail(
                        ErrorCode::Internal,
                        format!("cannot check the publication: {e}"),
                    );
                    return None;
                }
            };
            if !published || !self.view.readable(&schema, &table) {
                let why = if published {
                    "not readable under the read rules"
                } else {
                    "not published"
                };
                self.fail(
                    ErrorCode::TableNotReadable,
                    format!("table {schema}.{table} is {why}"),
                );
                return None;
            }
        }
        if !self.view.is_restricted() && sub.is_all() {
            return Some(None);
        }
        let key: Arc<str> = Arc::from(format!("{}|{}", self.view.id(), sub.key()));
        Some(Some(StreamFilter {
            view: self.view.clone(),
            sub,
            key,
            rels: HashMap::new(),
        }))
    }

    fn check_lag(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let head = self.ctx.log.head_offset();
        let behind = match &stream.source {
            Source::Cursor(c) => head.saturating_sub(c.offset()),
            // Only what is waiting for this session.
            Source::Routed { member, .. } => member.mailbox.bytes() as u64,
        };
        let lag = behind + self.out.len_bytes() as u64;
        let max = self.ctx.config.client_max_lag_bytes;
        self.ctx.metrics.session_lag_bytes.observe(lag as f64);
        if lag <= max {
            stream.live = true;
        } else if stream.live {
            self.fail(
                ErrorCode::SlowConsumer,
                format!("client fell {lag} bytes behind (CLIENT_MAX_LAG_BYTES = {max}); reconnect and resume from your last Commit.lsn"),
            );
        }
    }

    /// A paused session stays `paused` (in `pgsat_sessions{state}`) whatever
    /// it starts or stops until a refresh resumes it.
    fn set_state_unless_paused(&mut self, to: SessionState) {
        if self.paused_until.is_none() {
            self.set_state(Some(to));
        }
    }

    fn set_state(&mut self, to: Option<SessionState>) {
        if self.state != to {
            self.ctx.metrics.session_state(self.state, to);
            self.state = to;
        }
    }

    fn push<M: prost::Message>(&mut self, ty: MsgType, msg: &M) {
        let frame = encode_frame(ty, msg);
        self.ctx.metrics.count_sent(1, frame.len());
        self.out.push(frame);
    }

    fn push_error(&mut self, code: ErrorCode, message: String) {
        self.push(
            MsgType::ErrorResp,
            &pb::ErrorResp {
                code: code as i32,
                message,
                request_id: String::new(),
            },
        );
    }

    /// The log's retention passed this session's position mid-stream.
    fn fail_behind_window(&mut self) -> CloseReason {
        self.fail(
            ErrorCode::BehindWindow,
            "the log no longer holds this session's position (retention); resynchronise from scratch".into(),
        )
    }

    /// A row moved into the view without all its values (see
    /// `Filtered::incomplete`): the client must start over with a snapshot,
    /// which reads the row whole.
    fn fail_incomplete(&mut self) {
        self.fail(
            ErrorCode::ResyncRequired,
            "a row moved into your view by an UPDATE that did not carry all its values \
             (an unchanged TOASTed column of a table without REPLICA IDENTITY FULL): \
             start over with a snapshot"
                .into(),
        );
    }

    /// Queues the error and marks the session closing.
    fn fail(&mut self, code: ErrorCode, message: String) -> CloseReason {
        // A fatal error stops the stream at once: nothing after it.
        self.stream = None;
        self.snapshot = None;
        self.catchup = None;
        self.push_error(code, message);
        let reason = CloseReason::Error(code);
        self.closing = Some(reason);
        reason
    }
}

impl Stream {
    /// Commit LSN of the last transaction taken (or the start position).
    fn lsn(&self) -> u64 {
        match &self.source {
            Source::Cursor(c) => c.lsn().max(self.direct_lsn),
            Source::Routed { lsn, .. } => *lsn,
        }
    }
}

enum Next {
    Entry(Entry),
    Routed(Routed),
}

/// What woke the session.
enum Event {
    Shutdown,
    UserDeleted,
    Incoming(Incoming),
    Drained(std::io::Result<()>),
    Next(Result<Next, LogError>),
    Snapshot(Option<PhaseMsg>),
    Passed,
    LagCheck,
    Expired,
    GraceOver,
}

async fn next_entry(stream: &mut Option<Stream>) -> Result<Next, LogError> {
    match stream.as_mut().map(|s| &mut s.source) {
        Some(Source::Cursor(c)) => c.next().await.map(Next::Entry),
        Some(Source::Routed { member, .. }) => Ok(Next::Routed(member.mailbox.next().await)),
        None => std::future::pending().await,
    }
}

async fn next_snapshot_msg(phase: &mut Option<SnapshotPhase>) -> Option<PhaseMsg> {
    match phase {
        Some(p) => p.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the replication stream reports a new passed position
/// during a catch-up.
async fn wait_passed(catchup: &mut Option<Catchup>) {
    match catchup {
        Some(c) => {
            if c.passed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn wait_expiry(expiry: &mut Option<Pin<Box<Sleep>>>) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

fn close_label(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::ClientClosed => "client_closed",
        CloseReason::Error(code) => code.as_str_name(),
    }
}
