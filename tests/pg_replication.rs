//! The replication connection, slot and publication management against a
//! real Postgres started by the harness.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pgsat::pg::conn::{ConnParams, PgError, ReplicationConn};
use pgsat::pg::lsn::Lsn;
use pgsat::pg::replication::{ReplMessage, ReplicationStream};
use pgsat::pg::slot;
use support::{wait_until, HostAuth, PgServer, StopMode};

const T: Duration = Duration::from_secs(20);

fn params(pg: &PgServer) -> ConnParams {
    ConnParams::from_url(&pg.url()).unwrap()
}

async fn auth_roundtrip(auth: HostAuth) {
    let pg = PgServer::builder().auth(auth).start();
    let mut conn = ReplicationConn::connect(&params(&pg))
        .await
        .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
    let id = conn.identify_system().await.unwrap();
    assert_eq!(id.dbname.as_deref(), Some("postgres"));
    conn.close().await.unwrap();

    if auth != HostAuth::Trust {
        let mut p = params(&pg);
        p.set_password(Some("wrong".into()));
        let err = ReplicationConn::connect(&p).await.unwrap_err();
        assert!(matches!(err, PgError::Auth(_)), "{auth:?}: {err:?}");
        assert!(!err.is_transient());
        assert!(!err.to_string().contains(pg.password()));

        p.set_password(None);
        let err = ReplicationConn::connect(&p).await.unwrap_err();
        assert!(
            matches!(err, PgError::Auth(_)),
            "{auth:?} without password: {err:?}"
        );
    }
}

#[tokio::test]
async fn auth_trust() {
    auth_roundtrip(HostAuth::Trust).await;
}

#[tokio::test]
async fn auth_cleartext_password() {
    auth_roundtrip(HostAuth::Password).await;
}

#[tokio::test]
async fn auth_md5() {
    auth_roundtrip(HostAuth::Md5).await;
}

#[tokio::test]
async fn auth_scram_sha_256() {
    auth_roundtrip(HostAuth::ScramSha256).await;
}

#[tokio::test]
async fn connect_errors_are_clear() {
    let pg = PgServer::start();
    // Unknown database: a server error with its SQLSTATE.
    let p = ConnParams::from_url(&pg.url_for_db("nope")).unwrap();
    let err = ReplicationConn::connect(&p).await.unwrap_err();
    assert_eq!(err.code(), Some("3D000"), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    // Nothing listening: a transient connect error.
    let port = pg.port();
    drop(pg);
    let p =
        ConnParams::from_url(&format!("postgres://postgres:x@127.0.0.1:{port}/postgres")).unwrap();
    let err = ReplicationConn::connect(&p).await.unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn identify_system_and_unix_socket() {
    let pg = PgServer::start();
    pg.create_database("app");
    let client = pg.client().await;
    let sysid: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let mut conn = ReplicationConn::connect(&ConnParams::from_url(&pg.url_for_db("app")).unwrap())
        .await
        .unwrap();
    assert!(conn.backend_pid().is_some());
    assert_eq!(conn.server_param("TimeZone"), Some("UTC"));
    assert_eq!(conn.server_param("DateStyle"), Some("ISO, MDY"));
    assert_eq!(conn.server_param("IntervalStyle"), Some("postgres"));
    let id = conn.identify_system().await.unwrap();
    let current: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(id.system_id, sysid);
    assert_eq!(id.timeline, 1);
    assert_eq!(id.dbname.as_deref(), Some("app"));
    assert!(id.xlogpos > 0 && id.xlogpos <= current.parse::<Lsn>().unwrap().0);

    // simple_query: rows in text, NULLs, and errors with SQLSTATE that leave
    // the connection usable.
    let rows = conn
        .simple_query("SELECT 1::int, NULL::text, 'x''y'::text")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![Some("1".into()), None, Some("x'y".into())]]);
    let err = conn
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42P01"));
    assert_eq!(conn.identify_system().await.unwrap().system_id, sysid);

    // Over the unix socket (trust for local connections).
    let url = format!(
        "postgres://postgres@/postgres?host={}&port={}",
        pg.socket_dir().display(),
        pg.port()
    );
    let mut conn = ReplicationConn::connect(&ConnParams::from_url(&url).unwrap())
        .await
        .unwrap();
    assert_eq!(conn.identify_system().await.unwrap().system_id, sysid);
}

#[tokio::test]
async fn slot_and_publication_are_idempotent_and_checked() {
    let pg = PgServer::start();
    let client = pg.client().await;
    let info = slot::check_server(&client).await.unwrap();
    assert!(info.is_superuser);

    assert!(slot::ensure_publication(&client, "pgsat").await.unwrap());
    assert!(!slot::ensure_publication(&client, "pgsat").await.unwrap());
    let all: bool = client
        .query_one(
            "SELECT puballtables FROM pg_publication WHERE pubname = 'pgsat'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(all);

    let a = slot::ensure_slot(&client, "pgsat").await.unwrap();
    assert!(a.created);
    assert!(a.confirmed_flush_lsn > 0);
    let b = slot::ensure_slot(&client, "pgsat").await.unwrap();
    assert!(!b.created);
    assert_eq!(a.confirmed_flush_lsn, b.confirmed_flush_lsn);
    let stats = slot::slot_stats(&client, "pgsat").await.unwrap().unwrap();
    assert_eq!(stats.confirmed_flush_lsn, a.confirmed_flush_lsn);
    assert!(stats.current_wal_lsn >= stats.restart_lsn);
    assert!(!stats.active);
    assert!(slot::slot_stats(&client, "none").await.unwrap().is_none());

    // Concurrent creators: exactly one creates, all succeed.
    let c2 = pg.client().await;
    let c3 = pg.client().await;
    let (x, y) = tokio::join!(
        slot::ensure_slot(&c2, "race"),
        slot::ensure_slot(&c3, "race")
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x.created ^ y.created, "{x:?} {y:?}");
    let (x, y) = tokio::join!(
        slot::ensure_publication(&c2, "racepub"),
        slot::ensure_publication(&c3, "racepub")
    );
    assert!(x.unwrap() ^ y.unwrap());

    // Another plugin.
    pg.execute("SELECT pg_create_logical_replication_slot('td', 'test_decoding')");
    let err = slot::ensure_slot(&client, "td").await.unwrap_err();
    assert!(err.to_string().contains("test_decoding"), "{err}");
    assert!(
        err.to_string().contains("pg_drop_replication_slot"),
        "{err}"
    );
    // A physical slot.
    pg.execute("SELECT pg_create_physical_replication_slot('phys')");
    let err = slot::ensure_slot(&client, "phys").await.unwrap_err();
    assert!(err.to_string().contains("physical"), "{err}");
    // Another database's slot.
    pg.create_database("other");
    pg.execute_in(
        "other",
        "SELECT pg_create_logical_replication_slot('elsewhere', 'pgoutput')",
    );
    let err = slot::ensure_slot(&client, "elsewhere").await.unwrap_err();
    assert!(err.to_string().contains("\"other\""), "{err}");

    // Active in another process: transient object_in_use.
    let conn = ReplicationConn::connect(&params(&pg)).await.unwrap();
    let mut stream = conn.start_logical("pgsat", 0, "pgsat").await.unwrap();
    assert!(
        wait_until(T, || async {
            slot::slot_stats(&client, "pgsat")
                .await
                .unwrap()
                .unwrap()
                .active
        })
        .await
    );
    let err = slot::ensure_slot(&client, "pgsat").await.unwrap_err();
    assert_eq!(err.code(), Some("55006"), "{err}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("PID"), "{err}");
    // A second stream on the same slot is refused by Postgres the same way.
    let conn = ReplicationConn::connect(&params(&pg)).await.unwrap();
    let err = conn.start_logical("pgsat", 0, "pgsat").await.unwrap_err();
    assert_eq!(err.code(), Some("55006"), "{err}");
    let _ = stream.send_status(0, 0, 0, false).await;
    stream.close().await.unwrap();
    assert!(
        wait_until(T, || async {
            !slot::slot_stats(&client, "pgsat")
                .await
                .unwrap()
                .unwrap()
                .active
        })
        .await
    );
    assert!(slot::drop_slot(&client, "pgsat").await.unwrap());
    assert!(!slot::drop_slot(&client, "pgsat").await.unwrap());
}

#[tokio::test]
async fn non_replication_role_is_refused() {
    let pg = PgServer::start();
    pg.execute("CREATE ROLE app LOGIN PASSWORD 'apppw'");
    let (client, conn) = tokio_postgres::connect(
        &format!("postgres://app:apppw@127.0.0.1:{}/postgres", pg.port()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let err = slot::check_server(&client).await.unwrap_err();
    assert!(err.to_string().contains("REPLICATION"), "{err}");
    let err = slot::ensure_publication(&client, "p").await.unwrap_err();
    assert!(err.to_string().contains("superuser"), "{err}");
    let err = slot::ensure_slot(&client, "s").await.unwrap_err();
    assert!(err.to_string().contains("REPLICATION"), "{err}");
}

#[tokio::test]
async fn wal_level_replica_is_a_clear_error() {
    let pg = PgServer::builder().conf("wal_level = replica").start();
    let client = pg.client().await;
    let err = slot::check_server(&client).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("wal_level = logical") && msg.contains("restart"),
        "{msg}"
    );
    let err = slot::ensure_slot(&client, "pgsat").await.unwrap_err();
    assert!(err.to_string().contains("wal_level"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn invalidated_slot_is_a_clear_error() {
    let pg = PgServer::builder()
        .conf("max_slot_wal_keep_size = 1MB")
        .conf("wal_keep_size = 0")
        .conf("min_wal_size = 32MB")
        .conf("max_wal_size = 64MB")
        .start();
    let client = pg.client().await;
    slot::ensure_slot(&client, "old").await.unwrap();
    pg.execute("CREATE TABLE filler (x text)");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            pg.execute(
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000); \
                 SELECT pg_switch_wal(); CHECKPOINT;",
            );
            let st = slot::slot_stats(&client, "old").await.unwrap().unwrap();
            st.wal_status.as_deref() == Some("lost")
        })
        .await,
        "slot never invalidated"
    );
    let err = slot::ensure_slot(&client, "old").await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("invalidated"), "{msg}");
    assert!(msg.contains("max_slot_wal_keep_size"), "{msg}");
    assert!(msg.contains("pg_drop_replication_slot('old')"), "{msg}");
    assert!(msg.contains("BEHIND_WINDOW"), "{msg}");
    // The documented way out works.
    assert!(slot::drop_slot(&client, "old").await.unwrap());
    assert!(slot::ensure_slot(&client, "old").await.unwrap().created);
}

/// Receives until a pgoutput Commit arrives; returns the message types seen
/// and the highest WAL end. Answers keepalives that ask for a reply.
async fn recv_txn(stream: &mut ReplicationStream, flushed: u64) -> (Vec<u8>, u64) {
    let mut kinds = Vec::new();
    let mut end = 0;
    loop {
        match tokio::time::timeout(T, stream.recv())
            .await
            .expect("stream stalled")
        {
            Ok(Some(ReplMessage::XLogData { wal_end, data, .. })) => {
                end = end.max(wal_end);
                let k = *data.first().expect("empty XLogData");
                kinds.push(k);
                if k == b'C' {
                    return (kinds, end);
                }
            }
            Ok(Some(ReplMessage::Keepalive {
                reply_requested: true,
                ..
            })) => stream
                .send_status(flushed, flushed, flushed, false)
                .await
                .unwrap(),
            Ok(Some(ReplMessage::Keepalive { .. })) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn stream_transactions_and_confirm_flush() {
    let pg = PgServer::start();
    let client = pg.client().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    slot::ensure_publication(&client, "pgsat").await.unwrap();
    let info = slot::ensure_slot(&client, "pgsat").await.unwrap();

    let conn = ReplicationConn::connect(&params(&pg)).await.unwrap();
    let mut stream = conn.start_logical("pgsat", 0, "pgsat").await.unwrap();

    client
        .batch_execute("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        .await
        .unwrap();
    let (kinds, end) = recv_txn(&mut stream, 0).await;
    assert_eq!(
        kinds,
        b"BRIIIC".to_vec(),
        "{}",
        String::from_utf8_lossy(&kinds)
    );
    assert!(end > info.confirmed_flush_lsn);

    client
        .batch_execute("BEGIN; UPDATE items SET name = 'z' WHERE id = 1; DELETE FROM items WHERE id = 2; COMMIT")
        .await
        .unwrap();
    let (kinds, end) = recv_txn(&mut stream, 0).await;
    assert_eq!(
        kinds,
        b"BUDC".to_vec(),
        "{}",
        String::from_utf8_lossy(&kinds)
    );

    // Confirm up to the commit: the slot follows.
    stream.send_status(end, end, end, false).await.unwrap();
    assert!(
        wait_until(T, || async {
            slot::slot_stats(&client, "pgsat")
                .await
                .unwrap()
                .unwrap()
                .confirmed_flush_lsn
                >= end
        })
        .await,
        "confirmed_flush_lsn did not reach {}",
        Lsn(end)
    );

    // A status update that asks for a reply gets a keepalive back
    // (recv stays cancel-safe across the timeouts in between).
    stream.send_status(end, end, end, true).await.unwrap();
    let mut got_keepalive = false;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_millis(200), stream.recv()).await {
            Ok(Ok(Some(ReplMessage::Keepalive { wal_end, .. }))) => {
                assert!(wal_end >= end);
                got_keepalive = true;
                break;
            }
            Ok(Ok(Some(other))) => panic!("unexpected {other:?}"),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => {}
        }
    }
    assert!(got_keepalive);

    // Resuming from the confirmed position does not repeat the transactions.
    stream.close().await.unwrap();
    client
        .batch_execute("INSERT INTO items VALUES (4, 'd')")
        .await
        .unwrap();
    let conn = ReplicationConn::connect(&params(&pg)).await.unwrap();
    let mut stream = conn.start_logical("pgsat", 0, "pgsat").await.unwrap();
    let (kinds, _) = recv_txn(&mut stream, 0).await;
    assert_eq!(
        kinds,
        b"BRIC".to_vec(),
        "{}",
        String::from_utf8_lossy(&kinds)
    );

    // An unknown publication surfaces as a server error with SQLSTATE.
    let conn = ReplicationConn::connect(&params(&pg)).await.unwrap();
    slot::ensure_slot(&client, "other").await.unwrap();
    let mut s2 = conn.start_logical("other", 0, "no_such_pub").await.unwrap();
    client
        .batch_execute("INSERT INTO items VALUES (5, 'e')")
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(T, s2.recv()).await.expect("stalled") {
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(err.to_string().contains("no_such_pub"), "{err}");
}

/// Newer Postgres (17+) makes a logical walsender wait at shutdown until the
/// client confirms everything sent; a client that keeps the confirmed
/// position behind then holds `pg_ctl stop -m fast` up. On Postgres 15 the
/// walsender exits without waiting (checked by hand: a client that never
/// confirms does not delay it), so there this guards only the stream's own
/// end-of-stream handling (CommandComplete without CopyDone at shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_shutdown_completes_with_a_caught_up_stream() {
    let pg = Arc::new(PgServer::start());
    let client = pg.client().await;
    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    slot::ensure_publication(&client, "pgsat").await.unwrap();
    slot::ensure_slot(&client, "pgsat").await.unwrap();
    let conn = ReplicationConn::connect(&params(&pg)).await.unwrap();
    let stream = conn.start_logical("pgsat", 0, "pgsat").await.unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(client);

    // A reader that confirms everything it receives, with the halves split:
    // one task reads, the other answers.
    let (mut reader, mut writer) = stream.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    let read_task = tokio::spawn(async move {
        loop {
            match reader.recv().await {
                Ok(Some(ReplMessage::XLogData { wal_end, .. })) => {
                    let _ = tx.send((wal_end, false));
                }
                Ok(Some(ReplMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                })) => {
                    let _ = tx.send((wal_end, reply_requested));
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let write_task = tokio::spawn(async move {
        let mut confirmed = 0;
        while let Some((end, reply)) = rx.recv().await {
            if end > confirmed || reply {
                confirmed = confirmed.max(end);
                if writer
                    .send_status(confirmed, confirmed, confirmed, false)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    });

    let c2 = pg.client().await;
    assert!(
        wait_until(T, || async {
            let row = c2
                .query_one(
                    "SELECT confirmed_flush_lsn >= pg_current_wal_lsn() FROM pg_replication_slots \
                     WHERE slot_name = 'pgsat'",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, bool>(0)
        })
        .await,
        "stream never caught up"
    );
    drop(c2);

    let stopped =
        tokio::time::timeout(Duration::from_secs(15), pg.stop_async(StopMode::Fast)).await;
    assert!(
        stopped.is_ok(),
        "pg_ctl stop -m fast did not finish within 15 s with a caught-up stream"
    );
    // The stream ends: cleanly (CopyDone) or with the shutdown error/closed.
    let res = tokio::time::timeout(T, read_task)
        .await
        .expect("reader hung")
        .unwrap();
    match res {
        Ok(()) => {}
        Err(e) => assert!(e.is_transient(), "{e:?}"),
    }
    let _ = tokio::time::timeout(T, write_task).await;
}
