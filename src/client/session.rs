//! The client: connect, authenticate, start replication, and hand out whole
//! transactions; reconnect and resume by itself.
//!
//! Invariants:
//! - `position` is the Commit.lsn of the last complete transaction received
//!   (or SnapshotEnd.lsn, or where the server said the stream starts), and
//!   every reconnect resumes from it: a transaction is never handed out
//!   twice, never skipped. A transaction cut by a dropped connection is
//!   discarded; the server sends it again whole.
//! - Complete events already received are handed out before any error.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{sleep, timeout, Instant, Sleep};

use super::config::ClientConfig;
use super::connection::{Connection, Connector, UrlConnector};
use super::error::ClientError;
use super::event::{Assembler, Event};
use crate::clock::unix_micros as unix_micros_now;
use crate::protocol::pb::{self, ErrorCode};
use crate::protocol::{ClientMessage, ServerMessage};

/// What the server said about the current session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub user_id: String,
    pub server_id: String,
    /// Token expiry, µs since the Unix epoch; 0 = none.
    pub expires_at: i64,
}

enum Wake {
    Msg(Result<Option<ServerMessage>, ClientError>),
    Timer,
}

/// A replication client. See the module documentation.
pub struct Client {
    config: ClientConfig,
    connector: Arc<dyn Connector>,
    conn: Option<Connection>,
    asm: Assembler,
    queue: VecDeque<Event>,
    fatal: Option<ClientError>,

    position: u64,
    /// Greatest Commit.lsn seen on this session (order check).
    last_txn_lsn: u64,
    /// A snapshot is wanted and its SnapshotEnd not yet received.
    snapshot_pending: bool,
    /// The current session is streaming a snapshot.
    in_snapshot: bool,
    view_id: Option<String>,

    handed_out: Option<u64>,
    applied: u64,
    acked: u64,
    last_ack: Option<Instant>,

    auth_seq: u64,
    refresh_at: Option<Instant>,
    expired_token: Option<String>,
    session: SessionInfo,

    last_rx: Instant,
    ping_sent: bool,
    /// One timer for the token refresh, the next AckReq and the idle
    /// PingReq, armed lazily: set again only when an earlier deadline
    /// appears or it fired, not on every message (a timer registration per
    /// message and per deadline cost microseconds on the receive path).
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,

    attempts: u32,
    delay_next: bool,
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn server_error(e: pb::ErrorResp) -> ClientError {
    ClientError::Server {
        code: e.code,
        message: e.message,
    }
}

impl Client {
    /// Connects to `config.url`, authenticates and starts replication
    /// (retrying as `config.reconnect` says).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let connector =
            UrlConnector::new(&config.url, config.max_frame, config.tls_ca_file.as_deref())?;
        Self::connect_with(config, Arc::new(connector)).await
    }

    /// As [`connect`](Self::connect), over connections from `connector`
    /// (`config.url` is then only informative).
    pub async fn connect_with(
        config: ClientConfig,
        connector: Arc<dyn Connector>,
    ) -> Result<Client, ClientError> {
        let mut c = Client {
            position: config.from_lsn,
            snapshot_pending: config.snapshot,
            view_id: config.view_id.clone().filter(|v| !v.is_empty()),
            config,
            connector,
            conn: None,
            asm: Assembler::default(),
            queue: VecDeque::new(),
            fatal: None,
            last_txn_lsn: 0,
            in_snapshot: false,
            handed_out: None,
            applied: 0,
            acked: 0,
            last_ack: None,
            auth_seq: 0,
            refresh_at: None,
            expired_token: None,
            session: SessionInfo::default(),
            last_rx: Instant::now(),
            ping_sent: false,
            timer: Box::pin(sleep(Duration::ZERO)),
            armed: None,
            attempts: 0,
            delay_next: false,
        };
        c.reconnect().await?;
        Ok(c)
    }

    /// Where the stream is: a reconnect resumes after this LSN.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The view id the server gave (protocol 1.1), if any.
    pub fn view_id(&self) -> Option<&str> {
        self.view_id.as_deref()
    }

    /// The current (or last) session's AuthResp.
    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    /// Stops replication politely and closes the connection.
    pub async fn close(mut self) {
        if let Some(conn) = self.conn.as_mut() {
            let _ = conn.send(&ClientMessage::StopReplication).await;
        }
    }

    /// The next event. Handing out an event marks the one before as applied
    /// (acknowledged to the server with AckReq, throttled). Retryable
    /// failures reconnect and resume inside this call; a final error is
    /// returned after the complete events received before it. Calling again
    /// after an error reconnects.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(lsn) = self.handed_out.take() {
            self.applied = self.applied.max(lsn);
        }
        loop {
            if let Some(ev) = self.queue.pop_front() {
                match &ev {
                    Event::Transaction(t) => self.handed_out = Some(t.lsn),
                    Event::SnapshotEnd { lsn, .. } => self.handed_out = Some(*lsn),
                    _ => {}
                }
                return Ok(ev);
            }
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
            if self.conn.is_none() {
                self.reconnect().await?;
                continue;
            }
            if let Err(e) = self.step().await {
                self.drop_session();
                if e.is_retryable() {
                    tracing::warn!(error = %e, position = self.position, "connection lost; resuming");
                } else if self.start_resync(&e) {
                    // Event::Resync queued; the next connect takes a snapshot.
                } else {
                    self.fatal = Some(e);
                }
            }
        }
    }

    /// RESYNC_REQUIRED with `resync_with_snapshot`: queue Event::Resync and
    /// make the next session start from a snapshot with no view id. False
    /// for any other error.
    fn start_resync(&mut self, e: &ClientError) -> bool {
        if !self.config.resync_with_snapshot || e.code() != Some(ErrorCode::ResyncRequired) {
            return false;
        }
        tracing::warn!(error = %e, "what this session may read changed; starting over with a snapshot");
        let message = match e {
            ClientError::Server { message, .. } => message.clone(),
            other => other.to_string(),
        };
        self.queue.push_back(Event::Resync { message });
        self.snapshot_pending = true;
        self.position = 0;
        self.last_txn_lsn = 0;
        self.view_id = None;
        self.handed_out = None;
        self.applied = 0;
        self.acked = 0;
        true
    }

    fn drop_session(&mut self) {
        self.conn = None;
        self.asm.reset();
        self.refresh_at = None;
        self.delay_next = true;
        if self.in_snapshot {
            self.in_snapshot = false;
            self.queue.clear();
            self.queue.push_back(Event::SnapshotRestart);
        }
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        loop {
            if self.delay_next {
                let d = self.config.reconnect.delay(self.attempts, random_u64());
                sleep(d).await;
            }
            self.delay_next = true;
            match self.open_session().await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.attempts = 0;
                    self.delay_next = false;
                    return Ok(());
                }
                Err(e) if e.is_retryable() || e.code() == Some(ErrorCode::TokenExpired) => {
                    self.attempts += 1;
                    tracing::warn!(error = %e, attempt = self.attempts, url = %self.config.url, "connect failed");
                    if let Some(max) = self.config.reconnect.max_retries {
                        if self.attempts > max {
                            return Err(ClientError::RetriesExhausted {
                                attempts: self.attempts,
                                last: Box::new(e),
                            });
                        }
                    }
                }
                // A resume refused: start over with a snapshot. (A snapshot
                // start refused the same way is final: no loop.)
                Err(e) if !self.snapshot_pending && self.start_resync(&e) => {
                    self.delay_next = false;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_token(&self) -> Result<String, ClientError> {
        self.config.token.token().await.map_err(ClientError::Token)
    }

    fn next_auth_id(&mut self) -> String {
        self.auth_seq += 1;
        format!("auth-{}", self.auth_seq)
    }

    /// Waits for the handshake answer, answering pings meanwhile.
    async fn handshake_recv(
        &self,
        conn: &mut Connection,
        what: &'static str,
    ) -> Result<ServerMessage, ClientError> {
        loop {
            let m = timeout(self.config.handshake_timeout, conn.recv())
                .await
                .map_err(|_| ClientError::Timeout(what))??;
            match m {
                None => return Err(ClientError::Closed),
                Some(ServerMessage::Error(e)) => return Err(server_error(e)),
                Some(ServerMessage::PingReq) => {
                    conn.send(&ClientMessage::PingResp(pb::PingResp {
                        lsn: self.position,
                    }))
                    .await?
                }
                Some(m) => return Ok(m),
            }
        }
    }

    async fn open_session(&mut self) -> Result<Connection, ClientError> {
        let mut conn = timeout(self.config.handshake_timeout, self.connector.connect())
            .await
            .map_err(|_| ClientError::Timeout("connect"))??;

        let token = self.fetch_token().await?;
        if self.expired_token.as_deref() == Some(token.as_str()) {
            return Err(ClientError::Token(
                "the server says the token has expired and the token source has no newer one"
                    .into(),
            ));
        }
        let id = self.next_auth_id();
        conn.send(&ClientMessage::Auth(pb::AuthReq {
            id: id.clone(),
            token: token.clone(),
        }))
        .await?;
        let auth = match self.handshake_recv(&mut conn, "waiting for AuthResp").await {
            Ok(ServerMessage::Auth(a)) => a,
            Ok(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected AuthResp, got {}",
                    other.msg_type()
                )))
            }
            Err(e) => {
                if e.code() == Some(ErrorCode::TokenExpired) {
                    self.expired_token = Some(token);
                }
                return Err(e);
            }
        };
        if auth.id != id {
            return Err(ClientError::Protocol(format!(
                "AuthResp id {:?} does not echo AuthReq id {id:?}",
                auth.id
            )));
        }
        self.expired_token = None;
        self.on_auth_resp(auth);

        let snapshot = self.snapshot_pending;
        let lsn = if snapshot { 0 } else { self.position };
        conn.send(&ClientMessage::StartReplication(pb::StartReplicationReq {
            lsn,
            tables: self.config.tables.clone(),
            snapshot,
            view_id: self.view_id.clone().unwrap_or_default(),
        }))
        .await?;
        let resp = match self
            .handshake_recv(&mut conn, "waiting for StartReplicationResp")
            .await?
        {
            ServerMessage::StartReplication(r) => r,
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected StartReplicationResp, got {}",
                    other.msg_type()
                )))
            }
        };
        if !snapshot && self.position == 0 {
            // From the head: the stream starts after resp.lsn; resuming from
            // there misses nothing.
            self.position = resp.lsn;
        }
        if !resp.view_id.is_empty() {
            self.view_id = Some(resp.view_id);
        }
        self.in_snapshot = snapshot;
        self.last_txn_lsn = lsn;
        self.asm.reset();
        self.acked = 0;
        self.last_ack = None;
        self.last_rx = Instant::now();
        self.ping_sent = false;
        tracing::debug!(lsn, snapshot, user = %self.session.user_id, "replication started");
        Ok(conn)
    }

    fn on_auth_resp(&mut self, a: pb::AuthResp) {
        self.session = SessionInfo {
            user_id: a.user_id,
            server_id: a.server_id,
            expires_at: a.expires_at,
        };
        self.refresh_at = if a.expires_at > 0 {
            let remaining = Duration::from_micros((a.expires_at - unix_micros_now()).max(0) as u64);
            let lead = self.config.refresh_margin.min(remaining / 2);
            let delay = remaining.saturating_sub(lead).max(Duration::from_secs(1));
            Some(Instant::now() + delay)
        } else {
            None
        };
    }

    fn ack_at(&self) -> Option<Instant> {
        if self.applied <= self.acked {
            return None;
        }
        Some(match self.last_ack {
            Some(t) => t + self.config.ack_interval,
            None => Instant::now(),
        })
    }

    fn ping_at(&self) -> Option<Instant> {
        let p = self.config.ping_interval?;
        Some(self.last_rx + if self.ping_sent { p * 2 } else { p })
    }

    async fn step(&mut self) -> Result<(), ClientError> {
        let (refresh_at, ack_at, ping_at) = (self.refresh_at, self.ack_at(), self.ping_at());
        let due = [refresh_at, ack_at, ping_at].into_iter().flatten().min();
        if let Some(at) = due {
            if self.armed.is_none_or(|armed| at < armed) {
                self.timer.as_mut().reset(at);
                self.armed = Some(at);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        let wake = tokio::select! {
            r = conn.recv() => Wake::Msg(r),
            _ = &mut self.timer, if self.armed.is_some() => Wake::Timer,
        };
        match wake {
            Wake::Msg(r) => {
                self.last_rx = Instant::now();
                self.ping_sent = false;
                match r? {
                    None => Err(ClientError::Closed),
                    Some(m) => self.handle(m).await,
                }
            }
            Wake::Timer => {
                // Whatever is due now; an early firing (the deadline moved
                // later, e.g. a message came since) does nothing, and the
                // next step arms the timer again.
                self.armed = None;
                let now = Instant::now();
                let is_due = |at: Option<Instant>| at.is_some_and(|t| t <= now);
                if is_due(refresh_at) {
                    self.refresh_token().await
                } else if is_due(ack_at) {
                    let lsn = self.applied;
                    self.send(ClientMessage::Ack(pb::AckReq { lsn })).await?;
                    self.acked = lsn;
                    self.last_ack = Some(Instant::now());
                    Ok(())
                } else if is_due(ping_at) {
                    if self.ping_sent {
                        return Err(ClientError::Timeout("no answer from the server to PingReq"));
                    }
                    self.ping_sent = true;
                    self.send(ClientMessage::PingReq).await
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn send(&mut self, m: ClientMessage) -> Result<(), ClientError> {
        match self.conn.as_mut() {
            Some(c) => c.send(&m).await,
            None => Err(ClientError::Closed),
        }
    }

    /// In-band refresh: a new AuthReq on the live connection.
    async fn refresh_token(&mut self) -> Result<(), ClientError> {
        self.refresh_at = None;
        let token = self.fetch_token().await?;
        let id = self.next_auth_id();
        tracing::debug!(%id, "refreshing the token in band");
        self.send(ClientMessage::Auth(pb::AuthReq { id, token }))
            .await
    }

    async fn handle(&mut self, m: ServerMessage) -> Result<(), ClientError> {
        match m {
            ServerMessage::Error(e) if e.code == ErrorCode::TokenExpired as i32 => {
                tracing::info!(message = %e.message, "token expired; refreshing");
                self.refresh_token().await
            }
            ServerMessage::Error(e) => Err(server_error(e)),
            ServerMessage::Auth(a) => {
                self.on_auth_resp(a);
                Ok(())
            }
            ServerMessage::PingReq => {
                let lsn = self.position;
                self.send(ClientMessage::PingResp(pb::PingResp { lsn }))
                    .await
            }
            ServerMessage::PingResp(_) => Ok(()),
            ServerMessage::Relation(r) => {
                self.asm.relation(r);
                Ok(())
            }
            ServerMessage::OpLog(log) => {
                let mut done = VecDeque::new();
                self.asm.oplog(log, &mut done)?;
                for ev in done {
                    if let Event::Transaction(t) = &ev {
                        if t.lsn <= self.last_txn_lsn {
                            return Err(ClientError::Protocol(format!(
                                "transaction at lsn {} is not after lsn {} (already delivered or out of order)",
                                t.lsn, self.last_txn_lsn
                            )));
                        }
                        self.last_txn_lsn = t.lsn;
                        if !self.in_snapshot {
                            self.position = t.lsn;
                        }
                    }
                    self.queue.push_back(ev);
                }
                Ok(())
            }
            ServerMessage::SnapshotRows(s) => {
                if !self.in_snapshot {
                    return Err(ClientError::Protocol(
                        "SnapshotRows outside a snapshot".into(),
                    ));
                }
                let ev = self.asm.snapshot_rows(s)?;
                self.queue.push_back(ev);
                Ok(())
            }
            ServerMessage::SnapshotEnd(e) => {
                if !self.in_snapshot {
                    return Err(ClientError::Protocol(
                        "SnapshotEnd outside a snapshot".into(),
                    ));
                }
                self.in_snapshot = false;
                self.snapshot_pending = false;
                self.position = e.lsn;
                self.last_txn_lsn = self.last_txn_lsn.max(e.lsn);
                if !e.view_id.is_empty() {
                    self.view_id = Some(e.view_id.clone());
                }
                self.queue.push_back(Event::SnapshotEnd {
                    lsn: e.lsn,
                    rows: e.rows,
                    view_id: e.view_id,
                });
                Ok(())
            }
            other @ (ServerMessage::StartReplication(_) | ServerMessage::StopReplication) => Err(
                ClientError::Protocol(format!("unexpected {}", other.msg_type())),
            ),
        }
    }
}
