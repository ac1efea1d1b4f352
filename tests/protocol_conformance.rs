//! Conformance with ../shared/design/protocol.md, one test per promise, over
//! TCP and WebSocket, against the real binary and a real Postgres.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgsat::protocol::pb;
use prost::Message;
use support::pgsat::{cell, insecure_token, Pgsat, RawClient, RawFrame, TxnReader};
use support::PgServer;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const T: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
    CREATE TABLE users (id text PRIMARY KEY);
    INSERT INTO users VALUES ('alice'), ('bob');
    CREATE TABLE todos (id serial PRIMARY KEY, owner text, title text, done boolean);
";

async fn setup(extra: &[(&str, &str)]) -> (PgServer, tempfile::TempDir, Pgsat) {
    support::pgsat::start_with_schema(SCHEMA, extra).await
}

async fn expect_error(c: &mut RawClient, code: pb::ErrorCode) -> pb::ErrorResp {
    let f = c.recv_timeout(T).await.expect("an ErrorResp");
    let e = f
        .error()
        .unwrap_or_else(|| panic!("expected ErrorResp {code:?}, got type {}", f.ty));
    assert_eq!(e.code, code as i32, "error code (message: {})", e.message);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_step1_auth_rules() {
    let (_pg, _dir, p) = setup(&[("AUTH_TIMEOUT", "300ms"), ("SERVER_ID", "conf-1")]).await;
    for ws in [false, true] {
        step1_auth_rules(&p, ws).await;
    }
}

/// Step 1 on one listener (TCP, or WebSocket when `ws`).
async fn step1_auth_rules(p: &Pgsat, ws: bool) {
    let connect = || async {
        if ws {
            RawClient::connect_ws(p.ws).await
        } else {
            RawClient::connect(p.tcp).await
        }
    };

    // No AuthReq within AUTH_TIMEOUT → AUTH_TIMEOUT and close.
    let mut c = connect().await;
    expect_error(&mut c, pb::ErrorCode::AuthTimeout).await;
    assert!(c.closed_within(T).await);

    // Any other first frame → AUTH_REQUIRED and close.
    let mut c = connect().await;
    c.send(7, &pb::PingReq {}).await;
    expect_error(&mut c, pb::ErrorCode::AuthRequired).await;
    assert!(c.closed_within(T).await);

    // A valid token → AuthResp echoing id, with user_id, server_id, expires_at.
    let mut c = connect().await;
    c.send(
        1,
        &pb::AuthReq {
            id: "req-42".into(),
            token: insecure_token("alice", 3600),
        },
    )
    .await;
    let f = c.recv_timeout(T).await.expect("AuthResp");
    assert_eq!(f.ty, 2);
    let resp = pb::AuthResp::decode(f.body).expect("AuthResp");
    assert_eq!(resp.id, "req-42");
    assert_eq!(resp.user_id, "alice");
    assert_eq!(resp.server_id, "conf-1");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    assert!(resp.expires_at > now_us && resp.expires_at < now_us + 3_700_000_000);

    // A user without a row → USER_NOT_FOUND and close.
    let mut c = connect().await;
    c.send(
        1,
        &pb::AuthReq {
            id: "x".into(),
            token: insecure_token("mallory", 3600),
        },
    )
    .await;
    expect_error(&mut c, pb::ErrorCode::UserNotFound).await;
    assert!(c.closed_within(T).await);

    // Malformed token → AUTH_FAILED, and the message never echoes the token.
    let mut c = connect().await;
    let bad = "not-a-jwt-SECRETSTUFF";
    c.send(
        1,
        &pb::AuthReq {
            id: "x".into(),
            token: bad.into(),
        },
    )
    .await;
    let e = expect_error(&mut c, pb::ErrorCode::AuthFailed).await;
    assert!(
        !e.message.contains("SECRETSTUFF"),
        "message echoes the token: {}",
        e.message
    );
    assert!(c.closed_within(T).await);

    // Expired token → TOKEN_EXPIRED and close.
    let mut c = connect().await;
    c.send(
        1,
        &pb::AuthReq {
            id: "x".into(),
            token: insecure_token("alice", -10),
        },
    )
    .await;
    expect_error(&mut c, pb::ErrorCode::TokenExpired).await;
    assert!(c.closed_within(T).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_close_the_connection_and_the_server_survives() {
    let (_pg, _dir, p) = setup(&[("MAX_FRAME_BYTES", "1KiB")]).await;
    let cases: Vec<(&str, Vec<u8>, pb::ErrorCode)> = vec![
        ("length 0", vec![0, 0, 0, 0], pb::ErrorCode::InvalidRequest),
        // Declared 2 GiB, no body sent: answered at once, nothing allocated.
        (
            "oversized",
            vec![0x80, 0, 0, 0, 1],
            pb::ErrorCode::FrameTooLarge,
        ),
        (
            "just over max",
            vec![0, 0, 4, 1, 1],
            pb::ErrorCode::FrameTooLarge,
        ),
        (
            "unknown type",
            vec![0, 0, 0, 1, 99],
            pb::ErrorCode::InvalidRequest,
        ),
        (
            "reserved type",
            vec![0, 0, 0, 1, 14],
            pb::ErrorCode::InvalidRequest,
        ),
        (
            "server-only type",
            vec![0, 0, 0, 1, 2],
            pb::ErrorCode::InvalidRequest,
        ),
        (
            "undecodable body",
            vec![0, 0, 0, 4, 1, 0x0a, 0xff, 0xff],
            pb::ErrorCode::InvalidRequest,
        ),
    ];
    for (name, bytes, code) in cases {
        // Before auth and after auth alike.
        for authed in [false, true] {
            let mut c = RawClient::connect(p.tcp).await;
            if authed {
                c.auth(&insecure_token("alice", 3600)).await;
            }
            c.send_bytes(&bytes).await;
            let f = c
                .recv_timeout(T)
                .await
                .unwrap_or_else(|| panic!("{name}: closed without error"));
            let e = f
                .error()
                .unwrap_or_else(|| panic!("{name}: got type {}", f.ty));
            // Before auth an invalid frame may also be reported as AUTH_REQUIRED
            // only when it is a well-formed non-auth frame; malformed ones are
            // framing errors.
            assert_eq!(
                e.code, code as i32,
                "{name} (authed={authed}): {}",
                e.message
            );
            assert!(c.closed_within(T).await, "{name}: connection stays open");
        }
    }
    // Random byte soup never brings the server down.
    for seed in 0..50u64 {
        let mut c = RawClient::connect(p.tcp).await;
        let junk: Vec<u8> = (0..(seed * 37 % 300))
            .map(|i| (i * 31 + seed * 7) as u8)
            .collect();
        c.send_bytes(&junk).await;
        drop(c);
    }
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("bob", 3600)).await;
    c.send(7, &pb::PingReq {}).await;
    assert_eq!(c.recv_timeout(T).await.expect("PingResp").ty, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_step2_replication_and_exact_resume() {
    let (pg, _dir, p) = setup(&[]).await;
    let db = pg.client().await;
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;

    // StopReplication before start → REPLICATION_NOT_STARTED, session goes on.
    c.send(5, &pb::StopReplicationReq {}).await;
    expect_error(&mut c, pb::ErrorCode::ReplicationNotStarted).await;

    let start = c.start(0).await;
    // A second start → REPLICATION_ALREADY_STARTED, session goes on.
    c.send(3, &pb::StartReplicationReq::default()).await;
    expect_error(&mut c, pb::ErrorCode::ReplicationAlreadyStarted).await;

    // Two transactions (one simple-query batch would be one implicit transaction).
    db.batch_execute(
        "INSERT INTO todos (owner, title, done) VALUES ('alice', 'one', false), ('bob', NULL, true)",
    )
    .await
    .expect("insert");
    db.batch_execute(
        "BEGIN; UPDATE todos SET done = true WHERE title = 'one'; DELETE FROM todos WHERE owner = 'bob'; COMMIT;",
    )
    .await
    .expect("update and delete");
    let mut r = TxnReader::default();
    let txns = c.read_txns(&mut r, 2).await;
    assert!(
        txns[0].lsn > start.lsn && txns[1].lsn > txns[0].lsn,
        "commit order"
    );
    let rel = r
        .relations
        .values()
        .find(|r| r.table == "todos")
        .expect("todos Relation");
    assert_eq!(rel.schema, "public");
    let names: Vec<_> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "owner", "title", "done"]);
    assert!(rel.columns[0].primary_key && !rel.columns[0].nullable);
    assert_eq!(rel.columns[3].type_name, "boolean");
    match &txns[0].ops[1] {
        pb::trans_op::Op::Insert(i) => {
            let row = i.row.as_ref().expect("row");
            assert_eq!(cell(row, 1).as_deref(), Some("bob"));
            assert_eq!(cell(row, 2), None, "NULL title");
            assert_eq!(cell(row, 3).as_deref(), Some("t"));
        }
        other => panic!("expected insert, got {other:?}"),
    }
    assert!(matches!(txns[1].ops[0], pb::trans_op::Op::Update(_)));
    assert!(matches!(txns[1].ops[1], pb::trans_op::Op::Delete(_)));

    // PingReq → PingResp with the newest commit LSN.
    c.send(7, &pb::PingReq {}).await;
    let f = c.recv_timeout(T).await.expect("PingResp");
    assert_eq!(f.ty, 8);
    assert!(pb::PingResp::decode(f.body).expect("PingResp").lsn >= txns[1].lsn);

    // AckReq is accepted silently, and measured.
    c.send(11, &pb::AckReq { lsn: txns[1].lsn }).await;
    assert!(
        support::wait_until(T, || async {
            p.metric("pgsat_client_ack_lag_bytes_count") >= 1.0
        })
        .await,
        "AckReq not in pgsat_client_ack_lag_bytes"
    );
    // Stop → StopReplicationResp.
    c.send(5, &pb::StopReplicationReq {}).await;
    assert_eq!(c.recv_timeout(T).await.expect("StopReplicationResp").ty, 6);

    // Resume with the first Commit.lsn: exactly the second transaction, then new ones.
    db.batch_execute("INSERT INTO todos (owner, title) VALUES ('alice', 'three')")
        .await
        .expect("insert");
    let mut c2 = RawClient::connect(p.tcp).await;
    c2.auth(&insecure_token("bob", 3600)).await;
    let resp = c2.start(txns[0].lsn).await;
    assert_eq!(resp.lsn, txns[0].lsn);
    let mut r2 = TxnReader::default();
    let again = c2.read_txns(&mut r2, 2).await;
    assert_eq!(again[0], txns[1], "the same transaction, byte for byte");
    assert!(again[1].lsn > txns[1].lsn);
    assert_eq!(r2.relation_frames, 1, "each relation once per session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_transport_speaks_the_same_protocol() {
    let (pg, _dir, p) = setup(&[]).await;
    let url = format!("ws://{}/ws", p.ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("ws connect");
    let send = |ty: u8, body: Vec<u8>| {
        let mut m = vec![ty];
        m.extend(body);
        WsMessage::Binary(m.into())
    };
    ws.send(send(
        1,
        pb::AuthReq {
            id: "w".into(),
            token: insecure_token("alice", 3600),
        }
        .encode_to_vec(),
    ))
    .await
    .expect("send");
    let next = |m: WsMessage| -> RawFrame {
        let WsMessage::Binary(b) = m else {
            panic!("expected a binary message, got {m:?}")
        };
        RawFrame {
            ty: b[0],
            body: b.slice(1..),
        }
    };
    let f = next(ws.next().await.expect("msg").expect("ok"));
    assert_eq!(f.ty, 2, "AuthResp over WS");
    ws.send(send(3, pb::StartReplicationReq::default().encode_to_vec()))
        .await
        .expect("send");
    assert_eq!(next(ws.next().await.expect("msg").expect("ok")).ty, 4);
    pg.client()
        .await
        .batch_execute("INSERT INTO todos (owner, title) VALUES ('alice', 'ws')")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let mut got = Vec::new();
    while got.is_empty() {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("in time")
            .expect("msg")
            .expect("ok");
        got.extend(r.feed(&next(m)));
    }
    assert_eq!(got.len(), 1);

    // A text message is a protocol error: INVALID_REQUEST and close.
    ws.send(WsMessage::Text("hello".into()))
        .await
        .expect("send");
    let f = next(ws.next().await.expect("msg").expect("ok"));
    assert_eq!(
        f.error().expect("ErrorResp").code,
        pb::ErrorCode::InvalidRequest as i32
    );

    // Wrong path: no WebSocket.
    let wrong = format!("ws://{}/nope", p.ws);
    assert!(tokio_tungstenite::connect_async(&wrong).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_deleted_and_principal_changed_close_the_session() {
    let (pg, _dir, p) = setup(&[]).await;
    let db = pg.client().await;

    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("bob", 3600)).await;
    c.start(0).await;
    // Refresh with another user → PRINCIPAL_CHANGED.
    let mut other = RawClient::connect(p.tcp).await;
    other.auth(&insecure_token("alice", 3600)).await;
    other
        .send(
            1,
            &pb::AuthReq {
                id: "r".into(),
                token: insecure_token("bob", 3600),
            },
        )
        .await;
    expect_error(&mut other, pb::ErrorCode::PrincipalChanged).await;
    assert!(other.closed_within(T).await);

    // Deleting bob's row ends bob's session with USER_DELETED.
    db.batch_execute("DELETE FROM users WHERE id = 'bob'")
        .await
        .expect("delete");
    loop {
        let f = c.recv_timeout(T).await.expect("USER_DELETED");
        if let Some(e) = f.error() {
            assert_eq!(e.code, pb::ErrorCode::UserDeleted as i32, "{}", e.message);
            break;
        }
    }
    assert!(c.closed_within(T).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_step4_expiry_pauses_and_refresh_resumes_without_gap() {
    let (pg, _dir, p) = setup(&[("AUTH_REFRESH_GRACE", "20s")]).await;
    let db = pg.client().await;
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 2)).await;
    c.start(0).await;
    db.batch_execute("INSERT INTO todos (owner, title) VALUES ('alice', 'before')")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let first = c.read_txns(&mut r, 1).await;
    // Expiry → TOKEN_EXPIRED, stream paused.
    expect_error(&mut c, pb::ErrorCode::TokenExpired).await;
    db.batch_execute("INSERT INTO todos (owner, title) VALUES ('alice', 'while paused')")
        .await
        .expect("insert");
    // Nothing flows while paused.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.recv())
            .await
            .is_err(),
        "frames sent while paused"
    );
    // A valid refresh resumes exactly where it paused.
    let resp = c.auth(&insecure_token("alice", 3600)).await;
    assert_eq!(resp.user_id, "alice");
    let after = c.read_txns(&mut r, 1).await;
    assert!(after[0].lsn > first[0].lsn);

    // Without a refresh within the grace the connection closes.
    let p2 = {
        drop(c);
        let mut c = RawClient::connect(p.tcp).await;
        c.auth(&insecure_token("alice", 1)).await;
        c.start(0).await;
        c
    };
    let mut c = p2;
    expect_error(&mut c, pb::ErrorCode::TokenExpired).await;
    // Grace is 20 s in this test: still open after 1 s.
    assert!(!c.closed_within(Duration::from_secs(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_window_when_the_log_no_longer_holds_the_position() {
    let (pg, _dir, p) = setup(&[("WINDOW_MAX_BYTES", "64KiB")]).await;
    let db = pg.client().await;
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    let start = c.start(0).await;
    db.batch_execute(
        "INSERT INTO todos (owner, title) SELECT 'alice', repeat('x', 200) FROM generate_series(1, 10);",
    )
    .await
    .expect("first");
    let mut r = TxnReader::default();
    let first = c.read_txns(&mut r, 1).await;
    for _ in 0..40 {
        db.batch_execute(
            "INSERT INTO todos (owner, title) SELECT 'alice', repeat('y', 200) FROM generate_series(1, 20);",
        )
        .await
        .expect("more");
    }
    // Retention has moved past `first` once the oldest retained commit is
    // later than it. (The reading client is dropped: with a 64 KiB window a
    // reader slower than the writer is itself behind the window.)
    drop(c);
    let first_lsn = first[0].lsn;
    // All 41 transactions in the log, the window holding far fewer: the one
    // after `first` is gone too.
    let moved = support::wait_until(T, || async {
        p.metric("pgsat_replication_transactions_total") >= 41.0
            && p.metric("pgsat_window_oldest_lsn") > first_lsn as f64
            && p.metric("pgsat_window_transactions") < 30.0
    })
    .await;
    assert!(moved, "retention never moved past the first transaction");
    let mut late = RawClient::connect(p.tcp).await;
    late.auth(&insecure_token("bob", 3600)).await;
    late.send(
        3,
        &pb::StartReplicationReq {
            lsn: first[0].lsn.max(start.lsn),
            ..Default::default()
        },
    )
    .await;
    expect_error(&mut late, pb::ErrorCode::BehindWindow).await;
    assert!(late.closed_within(T).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_while_others_keep_receiving() {
    // Transactions are ~320 KB: readers get a few transactions of headroom.
    let (pg, _dir, p) = setup(&[("CLIENT_MAX_LAG_BYTES", "2MiB")]).await;
    let db = pg.client().await;
    // The stuck client: authenticates, starts, never reads again.
    let mut stuck = RawClient::connect_small_buffer(p.tcp).await;
    stuck.auth(&insecure_token("alice", 3600)).await;
    stuck.start(0).await;
    // Ten readers, each reporting how many transactions it has; the writer
    // keeps at most a few transactions (~1 MB, under the 2 MiB limit) ahead
    // of the slowest one, so they stay live however loaded the machine is.
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..10 {
        let mut c = RawClient::connect(p.tcp).await;
        c.auth(&insecure_token("bob", 3600)).await;
        c.start(0).await;
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        progress.push(rx);
        readers.push(tokio::spawn(async move {
            let mut r = TxnReader::default();
            let mut n = 0;
            while n < 100 {
                let f = c.recv_timeout(T).await.expect("stream frame");
                assert!(
                    f.ty == 9 || f.ty == 10,
                    "unexpected frame {} {:?}",
                    f.ty,
                    f.error()
                );
                n += r.feed(&f).len();
                tx.send_replace(n);
            }
            n
        }));
    }
    for i in 0..100usize {
        db.batch_execute(
            "INSERT INTO todos (owner, title) SELECT 'bob', repeat(md5(g::text), 100) FROM generate_series(1, 100) g",
        )
        .await
        .expect("write");
        for rx in &mut progress {
            let want = (i + 1).saturating_sub(3);
            tokio::time::timeout(T, rx.wait_for(|n| *n >= want))
                .await
                .expect("a reader kept up")
                .expect("reader alive");
        }
    }
    for r in readers {
        assert_eq!(r.await.expect("reader"), 100, "every reader got everything");
    }
    // Now drain the stuck client: somewhere in its stream is SLOW_CONSUMER, then close.
    let mut saw = false;
    while let Some(f) = stuck.recv_timeout(Duration::from_secs(30)).await {
        if let Some(e) = f.error() {
            assert_eq!(e.code, pb::ErrorCode::SlowConsumer as i32, "{}", e.message);
            saw = true;
        }
    }
    assert!(saw, "the stuck client was sent SLOW_CONSUMER before close");
    assert!(
        p.metrics().contains("pgsat_slow_consumer"),
        "metric exported"
    );
}

/// PingResp.lsn is a position to resume from: for a session behind the head
/// (a client that stopped reading while transactions kept coming) it is the
/// last Commit.lsn sent before the PingResp, not the newest commit, so a
/// client that stores it and reconnects loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_resp_lsn_is_the_sessions_position_when_behind() {
    let (pg, _dir, p) = setup(&[("CLIENT_MAX_LAG_BYTES", "256MiB")]).await;
    let db = pg.client().await;
    let mut c = RawClient::connect_small_buffer(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    c.start(0).await;
    // ~320 KB per transaction, 40 of them: far more than the socket buffers
    // and the session's queue hold while the client does not read.
    for _ in 0..40 {
        db.batch_execute(
            "INSERT INTO todos (owner, title) SELECT 'bob', repeat(md5(g::text), 100) FROM generate_series(1, 100) g",
        )
        .await
        .expect("write");
    }
    let head: u64 = {
        let r = db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("lsn");
        r.get::<_, String>(0)
            .parse::<pgsat::pg::lsn::Lsn>()
            .expect("lsn")
            .0
    };
    // The log has them all before the client says anything.
    assert!(
        support::wait_until(T, || async {
            p.metric("pgsat_log_durable_lsn") >= head as f64
        })
        .await,
        "pgsat did not log the writes"
    );
    c.send(7, &pb::PingReq {}).await;
    let mut r = TxnReader::default();
    let mut before: Vec<u64> = Vec::new();
    let ping = loop {
        let f = c.recv_timeout(T).await.expect("frame");
        if f.ty == 8 {
            break pb::PingResp::decode(f.body).expect("PingResp").lsn;
        }
        assert!(
            f.ty == 9 || f.ty == 10,
            "unexpected frame {} {:?}",
            f.ty,
            f.error()
        );
        before.extend(r.feed(&f).iter().map(|t| t.lsn));
    };
    let mut after: Vec<u64> = Vec::new();
    while before.len() + after.len() < 40 {
        let f = c.recv_timeout(T).await.expect("frame");
        after.extend(r.feed(&f).iter().map(|t| t.lsn));
    }
    assert!(
        !after.is_empty(),
        "the client was not behind when it pinged ({} before)",
        before.len()
    );
    assert_eq!(
        Some(ping),
        before.last().copied(),
        "PingResp.lsn is the last Commit.lsn sent before it"
    );
    assert!(after.iter().all(|&l| l > ping));
}

/// MAX_CONNECTIONS: a connection over the limit gets ErrorResp{INTERNAL}
/// naming it and is closed, on TCP and WebSocket alike; a closed session
/// frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_refused() {
    let (_pg, _dir, p) = setup(&[("MAX_CONNECTIONS", "2")]).await;
    let mut a = RawClient::connect(p.tcp).await;
    a.auth(&insecure_token("alice", 3600)).await;
    let mut b = RawClient::connect(p.tcp).await;
    b.auth(&insecure_token("bob", 3600)).await;

    let mut over = RawClient::connect(p.tcp).await;
    let e = expect_error(&mut over, pb::ErrorCode::Internal).await;
    assert!(e.message.contains("MAX_CONNECTIONS = 2"), "{}", e.message);
    assert!(over.closed_within(T).await);

    let url = format!("ws://{}/ws", p.ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("the WebSocket handshake completes");
    match ws.next().await {
        Some(Ok(WsMessage::Binary(m))) => {
            assert_eq!(m[0], 0, "ErrorResp");
            let e = pb::ErrorResp::decode(m.slice(1..)).expect("ErrorResp");
            assert_eq!(e.code, pb::ErrorCode::Internal as i32);
            assert!(e.message.contains("MAX_CONNECTIONS = 2"), "{}", e.message);
        }
        other => panic!("expected a binary ErrorResp, got {other:?}"),
    }
    assert!(
        !matches!(ws.next().await, Some(Ok(WsMessage::Binary(_)))),
        "nothing after the error"
    );

    // A place is freed when a session ends.
    drop(a);
    let deadline = std::time::Instant::now() + T;
    loop {
        let mut c = RawClient::connect(p.tcp).await;
        c.send(
            1,
            &pb::AuthReq {
                id: "c".into(),
                token: insecure_token("alice", 3600),
            },
        )
        .await;
        let f = c.recv_timeout(T).await.expect("answer");
        if f.ty == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed session's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
}
