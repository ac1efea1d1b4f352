//! The client against an in-process fake server built on the protocol
//! codecs (in-memory pipes, or real TCP/WebSocket sockets on port 0). The
//! real server is tested against this client elsewhere.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_micros;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::codec::Framed;

use super::config::BoxFuture;
use super::*;
use crate::protocol::fixtures::{text_relation, text_row};
use crate::protocol::pb::trans_op::Op as PbOp;
use crate::protocol::pb::{self, ErrorCode};
use crate::protocol::{ws_payload, ClientMessage, Frame, FrameDecoder, ServerMessage};

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- fake server

enum FakeIo {
    Stream(Framed<Box<dyn connection::Io>, FrameDecoder>),
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>),
}

/// The server end of one connection. `wait` bounds every wait for the
/// client (a stuck test fails instead of hanging).
struct FakeConn {
    io: FakeIo,
    wait: Duration,
}

impl FakeConn {
    fn new(io: FakeIo) -> Self {
        FakeConn { io, wait: WAIT }
    }

    fn pipe(io: DuplexStream) -> Self {
        let io: Box<dyn connection::Io> = Box::new(io);
        Self::new(FakeIo::Stream(Framed::new(io, FrameDecoder::new(1 << 20))))
    }

    async fn send(&mut self, m: ServerMessage) {
        let frame = m.to_frame();
        match &mut self.io {
            FakeIo::Stream(f) => f.send(frame).await.unwrap(),
            FakeIo::Ws(ws) => ws
                .send(WsMessage::Binary(ws_payload(&frame)))
                .await
                .unwrap(),
        }
    }

    /// The next client message; `None` once the client closed.
    async fn try_recv(&mut self) -> Option<ClientMessage> {
        let frame = match &mut self.io {
            FakeIo::Stream(f) => timeout(self.wait, f.next())
                .await
                .expect("client silent")?
                .ok()?,
            FakeIo::Ws(ws) => loop {
                match timeout(self.wait, ws.next())
                    .await
                    .expect("client silent")?
                {
                    Ok(WsMessage::Binary(b)) => break Frame::from_ws(b, 1 << 20).unwrap(),
                    Ok(WsMessage::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            },
        };
        Some(ClientMessage::decode(frame.ty, frame.body).unwrap())
    }

    /// The next client message that is not an AckReq.
    async fn recv(&mut self) -> ClientMessage {
        loop {
            match self.try_recv().await.expect("client closed") {
                ClientMessage::Ack(_) => continue,
                m => return m,
            }
        }
    }

    /// Answers AuthReq and StartReplicationReq; returns both requests.
    async fn handshake(
        &mut self,
        start_lsn: u64,
        expires_at: i64,
    ) -> (pb::AuthReq, pb::StartReplicationReq) {
        let ClientMessage::Auth(auth) = self.recv().await else {
            panic!("expected AuthReq first")
        };
        self.send(ServerMessage::Auth(pb::AuthResp {
            id: auth.id.clone(),
            user_id: "u1".into(),
            server_id: "fake".into(),
            expires_at,
        }))
        .await;
        let ClientMessage::StartReplication(start) = self.recv().await else {
            panic!("expected StartReplicationReq")
        };
        self.send(ServerMessage::StartReplication(pb::StartReplicationResp {
            lsn: start_lsn,
            view_id: String::new(),
        }))
        .await;
        (auth, start)
    }

    async fn error(&mut self, code: ErrorCode, message: &str) {
        self.send(ServerMessage::Error(pb::ErrorResp {
            code: code as i32,
            message: message.into(),
            request_id: String::new(),
        }))
        .await;
    }
}

/// Hands the client one end of an in-memory pipe per connect and the test
/// the other end.
struct PipeConnector {
    tx: mpsc::UnboundedSender<FakeConn>,
    connects: AtomicU32,
}

impl Connector for PipeConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ClientError>> {
        Box::pin(async move {
            self.connects.fetch_add(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(64 * 1024);
            self.tx
                .send(FakeConn::pipe(server))
                .map_err(|_| ClientError::Transport("fake server gone".into()))?;
            Ok(Connection::tcp(client, 1 << 20))
        })
    }
}

fn pipe() -> (Arc<PipeConnector>, mpsc::UnboundedReceiver<FakeConn>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(PipeConnector {
            tx,
            connects: AtomicU32::new(0),
        }),
        rx,
    )
}

async fn next_conn(rx: &mut mpsc::UnboundedReceiver<FakeConn>) -> FakeConn {
    timeout(WAIT, rx.recv())
        .await
        .expect("no connect")
        .expect("connector gone")
}

fn config() -> ClientConfig {
    let mut c = ClientConfig::with_token("tcp://fake:1", "tok");
    c.reconnect = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        multiplier: 2.0,
        max_retries: Some(3),
    };
    c.ping_interval = None;
    c.ack_interval = Duration::ZERO;
    c
}

// ---------------------------------------------------------------- messages

fn relation(id: u32, table: &str, cols: &[&str]) -> ServerMessage {
    ServerMessage::Relation(text_relation(id, table, cols))
}

fn row(vals: &[Option<&str>]) -> pb::Row {
    text_row(vals)
}

fn oplog(ops: Vec<PbOp>) -> ServerMessage {
    ServerMessage::OpLog(pb::OpLog {
        ops: ops
            .into_iter()
            .map(|o| pb::TransOp { op: Some(o) })
            .collect(),
    })
}

fn begin(xid: u32) -> PbOp {
    PbOp::Begin(pb::Begin {
        xid,
        commit_lsn: 0,
        commit_time: 0,
    })
}

fn commit(lsn: u64) -> PbOp {
    PbOp::Commit(pb::Commit {
        lsn,
        commit_time: 1_700_000_000_000_000 + lsn as i64,
    })
}

fn insert(rel: u32, vals: &[Option<&str>]) -> PbOp {
    PbOp::Insert(pb::Insert {
        relation_id: rel,
        row: Some(row(vals)),
    })
}

/// One whole transaction in one OpLog message: a single insert of `id`.
fn txn(xid: u32, lsn: u64, id: &str) -> ServerMessage {
    oplog(vec![
        begin(xid),
        insert(1, &[Some(id), Some("t")]),
        commit(lsn),
    ])
}

async fn next_txn(c: &mut Client) -> Transaction {
    match timeout(WAIT, c.next_event()).await.expect("no event") {
        Ok(Event::Transaction(t)) => t,
        other => panic!("expected a transaction, got {other:?}"),
    }
}

fn text(v: &str) -> Value {
    Value::Text(v.into())
}

fn ids(t: &Transaction) -> Vec<String> {
    t.changes
        .iter()
        .map(|c| c.row.as_ref().unwrap()[0].1.as_text().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn auth_start_relation_and_a_transaction_over_several_oplogs() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        let (auth, start) = s.handshake(50, 0).await;
        assert_eq!(auth.token, "tok");
        assert!(!auth.id.is_empty());
        assert_eq!(start.lsn, 0);
        assert_eq!(start.tables, vec!["todos".to_string()]);
        assert!(!start.snapshot);
        s.send(relation(7, "todos", &["id", "title", "done"])).await;
        s.send(oplog(vec![begin(9)])).await;
        s.send(oplog(vec![PbOp::Insert(pb::Insert {
            relation_id: 7,
            row: Some(row(&[Some("1"), Some("a \"b\" ü"), None])),
        })]))
        .await;
        s.send(oplog(vec![
            PbOp::Update(pb::Update {
                relation_id: 7,
                row: Some(pb::Row {
                    unchanged: Bytes::from_static(&[0b0100_0000]),
                    ..row(&[Some("1"), Some(""), Some("t")])
                }),
                old_row: Some(row(&[Some("1"), None, None])),
            }),
            PbOp::Delete(pb::Delete {
                relation_id: 7,
                old_row: Some(row(&[Some("2"), None, None])),
            }),
        ]))
        .await;
        s.send(oplog(vec![commit(100)])).await;
        // Two transactions in one message.
        s.send(oplog(vec![
            begin(10),
            PbOp::Truncate(pb::Truncate {
                relation_ids: vec![7],
            }),
            commit(120),
            begin(11),
            insert(7, &[Some("3"), None, None]),
            commit(130),
        ]))
        .await;
        s
    });
    let mut cfg = config();
    cfg.tables = vec!["todos".into()];
    let mut c = Client::connect_with(cfg, connector.clone()).await.unwrap();
    assert_eq!(c.session().user_id, "u1");
    assert_eq!(
        c.position(),
        50,
        "from the head: resumes after StartReplicationResp.lsn"
    );

    let t = next_txn(&mut c).await;
    assert_eq!(
        (t.lsn, t.xid, t.commit_time),
        (100, 9, 1_700_000_000_000_100)
    );
    assert_eq!(t.changes.len(), 3);
    let ins = &t.changes[0];
    assert_eq!(
        (ins.op, &*ins.schema, &*ins.table),
        (Op::Insert, "public", "todos")
    );
    let r = ins.row.as_ref().unwrap();
    assert_eq!(&*r[1].0, "title");
    assert_eq!(r[1].1, text("a \"b\" ü"));
    assert_eq!(r[2].1, Value::Null);
    assert!(ins.old.is_none());
    let upd = &t.changes[1];
    assert_eq!(upd.op, Op::Update);
    assert_eq!(upd.row.as_ref().unwrap()[1].1, Value::Unchanged);
    assert_eq!(upd.old.as_ref().unwrap()[0].1, text("1"));
    let del = &t.changes[2];
    assert_eq!(del.op, Op::Delete);
    assert!(del.row.is_none());
    assert_eq!(del.old.as_ref().unwrap()[0].1, text("2"));

    let t = next_txn(&mut c).await;
    assert_eq!(t.lsn, 120);
    assert_eq!(t.changes.len(), 1);
    assert_eq!(t.changes[0].op, Op::Truncate);
    assert_eq!(&*t.changes[0].table, "todos");
    let t = next_txn(&mut c).await;
    assert_eq!((t.lsn, ids(&t)), (130, vec!["3".to_string()]));
    assert_eq!(c.position(), 130);
    server.await.unwrap();
    assert_eq!(connector.connects.load(Ordering::SeqCst), 1);
}

/// The connection drops in the middle of a transaction, then the server
/// says SLOW_CONSUMER: each time the client resumes from the last Commit.lsn
/// it handed out; the cut transaction comes again whole, once.
#[tokio::test]
async fn reconnect_resumes_from_last_commit_lsn_and_discards_partial_txn() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(10, 0).await;
        assert_eq!(start.lsn, 10);
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(1, 100, "a")).await;
        s.send(oplog(vec![begin(2), insert(1, &[Some("b-partial"), None])]))
            .await;
        drop(s); // transport drop mid-transaction

        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(100, 0).await;
        assert_eq!(start.lsn, 100, "resume from the last whole transaction");
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(oplog(vec![begin(2), insert(1, &[Some("b"), None])]))
            .await;
        s.send(oplog(vec![commit(200)])).await;
        s.error(ErrorCode::SlowConsumer, "too far behind").await;

        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(200, 0).await;
        assert_eq!(start.lsn, 200);
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(3, 300, "c")).await;
        s
    });
    let mut cfg = config();
    cfg.from_lsn = 10;
    let mut c = Client::connect_with(cfg, connector.clone()).await.unwrap();
    let got: Vec<(u64, Vec<String>)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = next_txn(&mut c).await;
            v.push((t.lsn, ids(&t)));
        }
        v
    };
    assert_eq!(
        got,
        vec![
            (100, vec!["a".to_string()]),
            (200, vec!["b".to_string()]),
            (300, vec!["c".to_string()])
        ]
    );
    server.await.unwrap();
    assert_eq!(connector.connects.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn acks_after_hand_out_and_answers_ping_with_position() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.handshake(10, 0).await;
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(1, 100, "a")).await;
        // Handed out, then the client asks for more: it acknowledges 100.
        assert_eq!(
            s.try_recv().await,
            Some(ClientMessage::Ack(pb::AckReq { lsn: 100 }))
        );
        s.send(ServerMessage::PingReq).await;
        assert_eq!(
            s.recv().await,
            ClientMessage::PingResp(pb::PingResp { lsn: 100 })
        );
        s.send(txn(2, 200, "b")).await;
        s
    });
    let mut c = Client::connect_with(config(), connector).await.unwrap();
    assert_eq!(next_txn(&mut c).await.lsn, 100);
    assert_eq!(next_txn(&mut c).await.lsn, 200);
    server.await.unwrap();
}

#[tokio::test]
async fn client_pings_an_idle_server_and_reconnects_when_it_is_silent() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.handshake(10, 0).await;
        assert_eq!(s.recv().await, ClientMessage::PingReq);
        s.send(ServerMessage::PingResp(pb::PingResp { lsn: 10 }))
            .await;
        assert_eq!(s.recv().await, ClientMessage::PingReq);
        // Silent now: the client gives up on this connection and resumes.
        let mut s2 = next_conn(&mut rx).await;
        let (_, start) = s2.handshake(10, 0).await;
        assert_eq!(start.lsn, 10);
        s2.send(relation(1, "t", &["id", "v"])).await;
        s2.send(txn(1, 100, "a")).await;
        (s, s2)
    });
    let mut cfg = config();
    cfg.ping_interval = Some(Duration::from_millis(50));
    let mut c = Client::connect_with(cfg, connector).await.unwrap();
    assert_eq!(next_txn(&mut c).await.lsn, 100);
    server.await.unwrap();
}

struct CountingToken(AtomicU32);

impl TokenSource for CountingToken {
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move { Ok(format!("tok-{n}")) })
    }
}

/// With the clock paused, the client sends a fresh AuthReq on the live
/// connection before the token's expiry, and keeps streaming.
#[tokio::test(start_paused = true)]
async fn refreshes_token_in_band_before_expiry() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.wait = Duration::from_secs(600); // virtual time
        let t0 = tokio::time::Instant::now();
        let (auth, _) = s.handshake(10, unix_micros() + 120_000_000).await;
        assert_eq!(auth.token, "tok-1");
        let ClientMessage::Auth(refresh) = s.recv().await else {
            panic!("expected an in-band AuthReq")
        };
        let waited = t0.elapsed();
        assert_eq!(refresh.token, "tok-2");
        assert_ne!(refresh.id, auth.id);
        assert!(
            waited >= Duration::from_secs(80) && waited < Duration::from_secs(120),
            "refresh sent after {waited:?}; the token lives 120 s, margin 30 s"
        );
        s.send(ServerMessage::Auth(pb::AuthResp {
            id: refresh.id,
            user_id: "u1".into(),
            server_id: "fake".into(),
            expires_at: 0,
        }))
        .await;
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(1, 100, "a")).await;
        s
    });
    let mut cfg = config();
    cfg.token = Arc::new(CountingToken(AtomicU32::new(0)));
    let mut c = Client::connect_with(cfg, connector.clone()).await.unwrap();
    let ev = timeout(Duration::from_secs(600), c.next_event()).await;
    assert!(
        matches!(ev, Ok(Ok(Event::Transaction(ref t))) if t.lsn == 100),
        "{ev:?}"
    );
    assert_eq!(c.session().expires_at, 0);
    server.await.unwrap();
    assert_eq!(connector.connects.load(Ordering::SeqCst), 1, "no reconnect");
}

#[tokio::test]
async fn token_expired_in_band_is_answered_with_a_new_token() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.handshake(10, 0).await;
        s.error(ErrorCode::TokenExpired, "token expired; refresh within 30s")
            .await;
        let ClientMessage::Auth(a) = s.recv().await else {
            panic!("expected AuthReq")
        };
        assert_eq!(a.token, "tok-2");
        s.send(ServerMessage::Auth(pb::AuthResp {
            id: a.id,
            user_id: "u1".into(),
            server_id: "fake".into(),
            expires_at: 0,
        }))
        .await;
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(1, 100, "a")).await;
        s
    });
    let mut cfg = config();
    cfg.token = Arc::new(CountingToken(AtomicU32::new(0)));
    let mut c = Client::connect_with(cfg, connector.clone()).await.unwrap();
    assert_eq!(next_txn(&mut c).await.lsn, 100);
    server.await.unwrap();
    assert_eq!(connector.connects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn fatal_codes_are_returned_with_code_and_message() {
    for code in [
        ErrorCode::AuthFailed,
        ErrorCode::UserNotFound,
        ErrorCode::BehindWindow,
        ErrorCode::TableNotReadable,
    ] {
        let (connector, mut rx) = pipe();
        let server = tokio::spawn(async move {
            let mut s = next_conn(&mut rx).await;
            let ClientMessage::Auth(a) = s.recv().await else {
                panic!()
            };
            if code != ErrorCode::AuthFailed && code != ErrorCode::UserNotFound {
                s.send(ServerMessage::Auth(pb::AuthResp {
                    id: a.id,
                    ..Default::default()
                }))
                .await;
                let _start = s.recv().await;
            }
            s.error(code, "the reason").await;
            s
        });
        let e = match Client::connect_with(config(), connector.clone()).await {
            Err(e) => e,
            Ok(_) => panic!("{code:?}: connected"),
        };
        assert_eq!(e.code(), Some(code));
        assert!(e.to_string().contains("the reason"), "{e}");
        assert!(e.to_string().contains(code.as_str_name()), "{e}");
        server.await.unwrap();
        assert_eq!(
            connector.connects.load(Ordering::SeqCst),
            1,
            "{code:?}: no retry"
        );
    }
}

/// A fatal error mid-stream (USER_DELETED) comes after the complete
/// transactions received before it.
#[tokio::test]
async fn fatal_error_mid_stream_comes_after_received_transactions() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.handshake(10, 0).await;
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(1, 100, "a")).await;
        s.error(ErrorCode::UserDeleted, "user u1 was deleted").await;
        s
    });
    let mut c = Client::connect_with(config(), connector).await.unwrap();
    let s = server.await.unwrap();
    assert_eq!(next_txn(&mut c).await.lsn, 100);
    let e = c.next_event().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UserDeleted));
    drop(s);
}

#[tokio::test]
async fn op_on_unknown_relation_is_a_protocol_error() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.handshake(10, 0).await;
        s.send(oplog(vec![begin(1), insert(42, &[Some("x")]), commit(100)]))
            .await;
        s
    });
    let mut c = Client::connect_with(config(), connector).await.unwrap();
    let e = c.next_event().await.unwrap_err();
    assert!(matches!(e, ClientError::Protocol(_)), "{e}");
    assert!(e.to_string().contains("relation 42"), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_transaction_not_after_the_resume_point_is_a_protocol_error() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.handshake(100, 0).await;
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(1, 100, "dup")).await;
        s
    });
    let mut cfg = config();
    cfg.from_lsn = 100;
    let mut c = Client::connect_with(cfg, connector).await.unwrap();
    let e = c.next_event().await.unwrap_err();
    assert!(e.to_string().contains("not after lsn 100"), "{e}");
    server.await.unwrap();
}

/// Snapshot cut before SnapshotEnd: the client says so and starts over with
/// a snapshot; after SnapshotEnd it resumes from SnapshotEnd.lsn with the
/// view id it got.
#[tokio::test]
async fn snapshot_restart_then_resume_from_snapshot_end() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(0, 0).await;
        assert!(start.snapshot);
        assert_eq!(start.lsn, 0);
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(ServerMessage::SnapshotRows(pb::SnapshotRows {
            relation_id: 1,
            rows: vec![row(&[Some("1"), None])],
        }))
        .await;
        drop(s);

        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(0, 0).await;
        assert!(start.snapshot, "snapshot again");
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(ServerMessage::SnapshotRows(pb::SnapshotRows {
            relation_id: 1,
            rows: vec![row(&[Some("1"), None]), row(&[Some("2"), Some("x")])],
        }))
        .await;
        s.send(txn(5, 250, "during")).await;
        s.send(ServerMessage::SnapshotEnd(pb::SnapshotEnd {
            lsn: 300,
            rows: 2,
            view_id: "view-7".into(),
        }))
        .await;
        drop(s);

        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(300, 0).await;
        assert!(!start.snapshot);
        assert_eq!(start.lsn, 300);
        assert_eq!(start.view_id, "view-7");
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(6, 400, "after")).await;
        s
    });
    let mut cfg = config();
    cfg.snapshot = true;
    let mut c = Client::connect_with(cfg, connector).await.unwrap();
    let mut events = Vec::new();
    loop {
        let ev = timeout(WAIT, c.next_event()).await.unwrap().unwrap();
        let last = matches!(&ev, Event::Transaction(t) if t.lsn == 400);
        events.push(ev);
        if last {
            break;
        }
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Transaction(t) => format!("txn {}", t.lsn),
            Event::SnapshotRows { rows, .. } => format!("rows {}", rows.len()),
            Event::SnapshotEnd { lsn, .. } => format!("end {lsn}"),
            Event::SnapshotRestart => "restart".into(),
            Event::Resync { .. } => "resync".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["rows 1", "restart", "rows 2", "txn 250", "end 300", "txn 400"]
    );
    assert_eq!(c.view_id(), Some("view-7"));
    server.await.unwrap();
}

#[tokio::test]
async fn gives_up_after_max_retries() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        for _ in 0..4 {
            drop(next_conn(&mut rx).await);
        }
    });
    let e = match Client::connect_with(config(), connector.clone()).await {
        Err(e) => e,
        Ok(_) => panic!("connected"),
    };
    assert!(
        matches!(e, ClientError::RetriesExhausted { attempts: 4, .. }),
        "{e}"
    );
    server.await.unwrap();
}

// ------------------------------------------------- real sockets: TCP and WS

async fn serve_one_txn(mut s: FakeConn) {
    let (auth, start) = s.handshake(10, 0).await;
    assert_eq!(auth.token, "tok");
    assert_eq!(start.lsn, 10);
    s.send(relation(1, "t", &["id", "v"])).await;
    s.send(oplog(vec![begin(1), insert(1, &[Some("a"), None])]))
        .await;
    s.send(oplog(vec![commit(100)])).await;
    // Wait for the client to close (drop) before dropping our end.
    while s.try_recv().await.is_some() {}
}

#[tokio::test]
async fn over_real_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let io: Box<dyn connection::Io> = Box::new(sock);
        serve_one_txn(FakeConn::new(FakeIo::Stream(Framed::new(
            io,
            FrameDecoder::new(1 << 20),
        ))))
        .await;
    });
    let mut cfg = config();
    cfg.url = format!("tcp://127.0.0.1:{port}");
    cfg.from_lsn = 10;
    let mut c = Client::connect(cfg).await.unwrap();
    let t = next_txn(&mut c).await;
    assert_eq!((t.lsn, ids(&t)), (100, vec!["a".to_string()]));
    drop(c);
    server.await.unwrap();
}

#[tokio::test]
async fn over_real_websocket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(sock).await.unwrap();
        serve_one_txn(FakeConn::new(FakeIo::Ws(Box::new(ws)))).await;
    });
    let mut cfg = config();
    cfg.url = format!("ws://127.0.0.1:{port}/ws");
    cfg.from_lsn = 10;
    let mut c = Client::connect(cfg).await.unwrap();
    let t = next_txn(&mut c).await;
    assert_eq!((t.lsn, ids(&t)), (100, vec!["a".to_string()]));
    drop(c);
    server.await.unwrap();
}

#[tokio::test]
async fn refused_connection_is_retried_then_reported() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut cfg = config();
    cfg.url = format!("tcp://127.0.0.1:{port}");
    let e = match Client::connect(cfg).await {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(matches!(e, ClientError::RetriesExhausted { .. }), "{e}");
    let mut cfg = config();
    cfg.url = "http://x:1".into();
    assert!(matches!(
        Client::connect(cfg).await,
        Err(ClientError::InvalidUrl { .. })
    ));
}

/// Callers spawn the client on a multi-threaded runtime.
#[allow(dead_code)]
fn client_futures_are_send(c: &mut Client, cfg: ClientConfig) {
    fn send<T: Send>(_: &T) {}
    send(&c.next_event());
    send(&Client::connect(cfg));
    send(&tail::run(tail::TailArgs {
        url: String::new(),
        ca_file: None,
        token: String::new(),
        from_lsn: 0,
        tables: vec![],
        snapshot: false,
    }));
}

/// TOKEN_EXPIRED answering the first AuthReq (the server then closes): the
/// client reconnects with a fresh token; a token source that only has the
/// expired token is a final error, not a retry loop.
#[tokio::test]
async fn token_expired_at_auth_reconnects_with_a_fresh_token_or_gives_up() {
    async fn expire_first_auth(s: &mut FakeConn) -> pb::AuthReq {
        let ClientMessage::Auth(a) = s.recv().await else {
            panic!()
        };
        s.error(ErrorCode::TokenExpired, "token expired").await;
        a
    }
    // Fresh token on reconnect.
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        assert_eq!(expire_first_auth(&mut s).await.token, "tok-1");
        drop(s);
        let mut s = next_conn(&mut rx).await;
        let (auth, _) = s.handshake(10, 0).await;
        assert_eq!(auth.token, "tok-2");
        s
    });
    let mut cfg = config();
    cfg.token = Arc::new(CountingToken(AtomicU32::new(0)));
    Client::connect_with(cfg, connector).await.unwrap();
    server.await.unwrap();

    // Only the expired token.
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        expire_first_auth(&mut s).await;
        // The second connection is opened, then abandoned before AuthReq.
        let s2 = next_conn(&mut rx).await;
        (s, s2, rx)
    });
    let e = match Client::connect_with(config(), connector.clone()).await {
        Err(e) => e,
        Ok(_) => panic!("connected with an expired token"),
    };
    assert!(matches!(e, ClientError::Token(_)), "{e}");
    let _s = server.await.unwrap();
    assert_eq!(connector.connects.load(Ordering::SeqCst), 2);
}

/// `pgsat tail --snapshot`: BEHIND_WINDOW restarts with a snapshot (a
/// resync line first); every event is printed as whole JSON lines; a final
/// error ends the command.
#[tokio::test]
async fn tail_prints_lines_and_resyncs_with_a_snapshot() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let accept = || async {
            let (sock, _) = listener.accept().await.unwrap();
            let io: Box<dyn connection::Io> = Box::new(sock);
            FakeConn::new(FakeIo::Stream(Framed::new(io, FrameDecoder::new(1 << 20))))
        };
        let mut s = accept().await;
        let (_, start) = s.handshake(5, 0).await;
        assert_eq!(start.lsn, 5);
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(txn(1, 100, "a")).await;
        s.error(ErrorCode::BehindWindow, "lsn 100 is older than the window")
            .await;
        let mut s2 = accept().await;
        let (_, start) = s2.handshake(0, 0).await;
        assert!(start.snapshot);
        assert_eq!(start.lsn, 0);
        s2.send(relation(1, "t", &["id", "v"])).await;
        s2.send(ServerMessage::SnapshotRows(pb::SnapshotRows {
            relation_id: 1,
            rows: vec![row(&[Some("a"), None])],
        }))
        .await;
        s2.send(ServerMessage::SnapshotEnd(pb::SnapshotEnd {
            lsn: 400,
            rows: 1,
            view_id: String::new(),
        }))
        .await;
        s2.send(txn(2, 500, "b")).await;
        s2.error(ErrorCode::UserDeleted, "gone").await;
        (s, s2)
    });
    let mut cfg = config();
    cfg.url = format!("tcp://127.0.0.1:{port}");
    cfg.from_lsn = 5;
    let mut out = Vec::new();
    let r = timeout(WAIT, tail::tail_loop(cfg, true, &mut out))
        .await
        .unwrap();
    let e = r.unwrap_err();
    assert!(format!("{e:#}").contains("USER_DELETED"), "{e:#}");
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            r#"{"lsn":100,"xid":1,"commit_time":1700000000000100,"changes":[{"op":"insert","schema":"public","table":"t","row":{"id":"a","v":"t"}}]}"#,
            r#"{"op":"resync","reason":"BEHIND_WINDOW"}"#,
            r#"{"op":"snapshot","schema":"public","table":"t","row":{"id":"a","v":null}}"#,
            r#"{"op":"snapshot_end","lsn":400,"rows":1,"view_id":""}"#,
            r#"{"lsn":500,"xid":2,"commit_time":1700000000000500,"changes":[{"op":"insert","schema":"public","table":"t","row":{"id":"b","v":"t"}}]}"#,
        ]
    );
    server.await.unwrap();
}

/// RESYNC_REQUIRED (issue 10: clients restart with a snapshot): refused on
/// resume with a stale view id, and mid-stream (a refresh changed a used
/// claim) — each time the client hands out Event::Resync after what it had
/// received, then starts a snapshot with lsn 0 and no view id, and keeps
/// the new view id from SnapshotEnd.
#[tokio::test]
async fn resync_required_restarts_with_a_snapshot() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        // Resume with a stale view id: refused.
        let mut s = next_conn(&mut rx).await;
        let ClientMessage::Auth(auth) = s.recv().await else {
            panic!("expected AuthReq")
        };
        s.send(ServerMessage::Auth(pb::AuthResp {
            id: auth.id,
            user_id: "u1".into(),
            server_id: "fake".into(),
            expires_at: 0,
        }))
        .await;
        let ClientMessage::StartReplication(start) = s.recv().await else {
            panic!("expected StartReplicationReq")
        };
        assert_eq!((start.lsn, start.snapshot), (100, false));
        assert_eq!(start.view_id, "view-old");
        s.error(ErrorCode::ResyncRequired, "view changed").await;

        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(0, 0).await;
        assert!(start.snapshot, "a snapshot after RESYNC_REQUIRED");
        assert_eq!((start.lsn, start.view_id.as_str()), (0, ""));
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(ServerMessage::SnapshotRows(pb::SnapshotRows {
            relation_id: 1,
            rows: vec![row(&[Some("1"), None])],
        }))
        .await;
        s.send(ServerMessage::SnapshotEnd(pb::SnapshotEnd {
            lsn: 300,
            rows: 1,
            view_id: "view-2".into(),
        }))
        .await;
        s.send(txn(7, 400, "after")).await;
        // Mid-stream (a token refresh changed a claim the rules use).
        s.error(ErrorCode::ResyncRequired, "claims changed").await;

        let mut s = next_conn(&mut rx).await;
        let (_, start) = s.handshake(0, 0).await;
        assert!(start.snapshot, "a snapshot again");
        assert_eq!((start.lsn, start.view_id.as_str()), (0, ""));
        s.send(relation(1, "t", &["id", "v"])).await;
        s.send(ServerMessage::SnapshotEnd(pb::SnapshotEnd {
            lsn: 500,
            rows: 0,
            view_id: "view-3".into(),
        }))
        .await;
        s
    });
    let mut cfg = config();
    cfg.from_lsn = 100;
    cfg.view_id = Some("view-old".into());
    let mut c = Client::connect_with(cfg, connector).await.unwrap();
    let mut kinds = Vec::new();
    loop {
        let ev = timeout(WAIT, c.next_event()).await.unwrap().unwrap();
        let last = matches!(&ev, Event::SnapshotEnd { lsn: 500, .. });
        kinds.push(match ev {
            Event::Transaction(t) => format!("txn {}", t.lsn),
            Event::SnapshotRows { rows, .. } => format!("rows {}", rows.len()),
            Event::SnapshotEnd { lsn, .. } => format!("end {lsn}"),
            Event::SnapshotRestart => "restart".into(),
            Event::Resync { message } => format!("resync {message}"),
        });
        if last {
            break;
        }
    }
    assert_eq!(
        kinds,
        vec![
            "resync view changed",
            "rows 1",
            "end 300",
            "txn 400",
            "resync claims changed",
            "end 500"
        ]
    );
    assert_eq!(c.view_id(), Some("view-3"));
    assert_eq!(c.position(), 500);
    server.await.unwrap();
}

/// With `resync_with_snapshot = false`, RESYNC_REQUIRED stays a final
/// error (`pgsat tail` without `--snapshot`).
#[tokio::test]
async fn resync_required_is_final_when_not_asked_to_resync() {
    let (connector, mut rx) = pipe();
    let server = tokio::spawn(async move {
        let mut s = next_conn(&mut rx).await;
        s.handshake(100, 0).await;
        s.error(ErrorCode::ResyncRequired, "claims changed").await;
        s
    });
    let mut cfg = config();
    cfg.from_lsn = 100;
    cfg.resync_with_snapshot = false;
    let mut c = Client::connect_with(cfg, connector).await.unwrap();
    let e = timeout(WAIT, c.next_event()).await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ResyncRequired));
    server.await.unwrap();
}
