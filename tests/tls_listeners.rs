//! TLS on pgsat's own listeners (`TLS_CERT_FILE`, `TLS_KEY_FILE`): the Rust
//! client over `tls://` and `wss://` against the real server, what a plain
//! or wrongly trusting client gets, certificate rotation without a restart,
//! and the start-up errors.
//!
//! Certificates are made per test with rcgen: a CA, and a server certificate
//! it signed for the name `localhost` only (so `127.0.0.1` is the wrong name).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use pgsat::client::{Client, ClientConfig, ClientError, Event};
use pgsat::protocol::pb;
use support::ca::Ca;
use support::pgsat::{insecure_token, run_to_exit, Pgsat};
use support::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(15);

/// A database with a users row for alice and a table to change.
fn database() -> PgServer {
    let pg = PgServer::start();
    pg.execute("CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('alice')");
    pg.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)");
    pg
}

/// pgsat with TLS from these files, its data in `dir/data`; AUTH_TIMEOUT
/// 2 s (the handshake's bound too).
fn start_tls(pg: &PgServer, dir: &Path, cert: &Path, key: &Path) -> Pgsat {
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("data dir");
    Pgsat::start(
        pg,
        &data,
        &[
            ("TLS_CERT_FILE", cert.to_str().expect("utf-8 path")),
            ("TLS_KEY_FILE", key.to_str().expect("utf-8 path")),
            ("AUTH_TIMEOUT", "2s"),
        ],
    )
}

fn client_config(url: String, ca: &Path) -> ClientConfig {
    let mut c = ClientConfig::with_token(url, insecure_token("alice", 3600));
    c.tls_ca_file = Some(ca.to_path_buf());
    c.handshake_timeout = Duration::from_secs(5);
    c.reconnect.max_retries = Some(0);
    c
}

/// Connects, commits one row and waits for its transaction.
async fn receives_a_transaction(pg: &PgServer, config: ClientConfig, body: &str) {
    let mut c = tokio::time::timeout(T, Client::connect(config))
        .await
        .expect("connect in time")
        .expect("connect");
    pg.execute(&format!("INSERT INTO notes (body) VALUES ('{body}')"));
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, c.next_event())
            .await
            .expect("a transaction in time")
            .expect("event");
        if let Event::Transaction(t) = ev {
            let text = format!("{:?}", t.changes);
            if text.contains(body) {
                return;
            }
        }
    }
}

/// The error a connection attempt ends with.
async fn connect_error(config: ClientConfig) -> ClientError {
    match tokio::time::timeout(T, Client::connect(config))
        .await
        .expect("an answer in time")
    {
        Ok(_) => panic!("connected, but should not have"),
        Err(e) => e,
    }
}

fn is_tls_error(e: &ClientError) -> bool {
    match e {
        ClientError::Tls(_) => true,
        ClientError::RetriesExhausted { last, .. } => is_tls_error(last),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_listeners_and_nothing_in_clear_text() {
    let pg = database();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("pgsat test CA");
    let (cert, key) = ca.server_cert(&["localhost"]);
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let ca_file = ca.write(dir.path(), "ca.pem");
    let other_ca = Ca::new("someone else").write(dir.path(), "other-ca.pem");
    let p = start_tls(&pg, dir.path(), &cert_file, &key_file);
    let tls_url = format!("tls://localhost:{}", p.tcp.port());
    let wss_url = format!("wss://localhost:{}/ws", p.ws.port());

    receives_a_transaction(&pg, client_config(tls_url.clone(), &ca_file), "over tls").await;
    receives_a_transaction(&pg, client_config(wss_url.clone(), &ca_file), "over wss").await;

    // A certificate of another CA, or issued for another name: a final TLS
    // error, not a retried transport error.
    for (url, ca) in [
        (tls_url.clone(), &other_ca),
        (wss_url.clone(), &other_ca),
        (format!("tls://127.0.0.1:{}", p.tcp.port()), &ca_file),
    ] {
        let e = connect_error(client_config(url.clone(), ca)).await;
        assert!(is_tls_error(&e), "{url}: {e}");
        assert!(!e.is_retryable(), "{url}: {e}");
    }

    // A plain client's AuthReq is not a TLS handshake: the connection is
    // dropped without a protocol answer (at most a TLS alert), on both
    // listeners.
    let before = p.metric("pgsat_tls_handshake_failures_total");
    let auth = pb::AuthReq {
        token: insecure_token("alice", 3600),
        ..Default::default()
    };
    let frame = pgsat::protocol::encode_frame(pgsat::protocol::MsgType::AuthReq, &auth);
    for addr in [p.tcp, p.ws] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(&frame).await.expect("write");
        let mut got = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .ok();
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{addr}: a plain client got {got:02x?}"
        );
    }
    let deadline = Instant::now() + T;
    while p.metric("pgsat_tls_handshake_failures_total") < before + 2.0 {
        assert!(Instant::now() < deadline, "handshake failures not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A plain WebSocket client fails its upgrade the same way.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", p.ws))
            .await
            .is_err()
    );

    // A connection that never starts a handshake holds its slot only until
    // AUTH_TIMEOUT, and is counted.
    let before = p.metric("pgsat_tls_handshake_failures_total");
    let mut idle = tokio::net::TcpStream::connect(p.tcp)
        .await
        .expect("connect");
    let t0 = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(T, idle.read_to_end(&mut got))
        .await
        .expect("closed in time")
        .ok();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && got.is_empty(),
        "closed after {waited:?} with {got:02x?}"
    );
    let deadline = Instant::now() + T;
    while p.metric("pgsat_tls_handshake_failures_total") < before + 1.0 {
        assert!(Instant::now() < deadline, "timed-out handshake not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The server still serves TLS clients after all that.
    receives_a_transaction(&pg, client_config(tls_url, &ca_file), "still served").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_without_a_restart() {
    let pg = database();
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let old_ca_file = old_ca.write(dir.path(), "old-ca.pem");
    let new_ca_file = new_ca.write(dir.path(), "new-ca.pem");
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    let (cert, key) = old_ca.server_cert(&["localhost"]);
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let p = start_tls(&pg, dir.path(), &cert_file, &key_file);
    let url = format!("tls://localhost:{}", p.tcp.port());
    receives_a_transaction(&pg, client_config(url.clone(), &old_ca_file), "old").await;

    // A half-done rotation (new certificate, old key) is refused and the
    // old pair stays in use.
    let (new_cert, new_key) = new_ca.server_cert(&["localhost"]);
    std::fs::write(&cert_file, &new_cert).unwrap();
    tokio::time::sleep(pgsat::server::tls::RECHECK + Duration::from_millis(500)).await;
    receives_a_transaction(&pg, client_config(url.clone(), &old_ca_file), "kept").await;
    assert!(
        p.output().contains("new TLS certificate not loaded"),
        "{}",
        p.output()
    );

    // The key follows: the new pair is served from the next look on.
    std::fs::write(&key_file, &new_key).unwrap();
    let deadline = Instant::now() + pgsat::server::tls::RECHECK * 3;
    loop {
        let mut c = client_config(url.clone(), &new_ca_file);
        c.reconnect.max_retries = Some(0);
        match tokio::time::timeout(T, Client::connect(c)).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => assert!(is_tls_error(&e), "{e}"),
            Err(_) => panic!("no answer"),
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    receives_a_transaction(&pg, client_config(url.clone(), &new_ca_file), "new").await;
    let e = connect_error(client_config(url, &old_ca_file)).await;
    assert!(is_tls_error(&e), "{e}");
}

#[test]
fn bad_tls_settings_stop_start_up_naming_the_variable() {
    let pg = database();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("pgsat test CA");
    let (cert, key) = ca.server_cert(&["localhost"]);
    let (_, other_key) = ca.server_cert(&["localhost"]);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cert = write("server.crt", &cert);
    let key = write("server.key", &key);
    let other_key = write("other.key", &other_key);
    let junk = write("junk.pem", "not a certificate\n");
    let missing = dir.path().join("missing.pem").to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("TLS_KEY_FILE", vec![("TLS_CERT_FILE", &cert)]),
        ("TLS_CERT_FILE", vec![("TLS_KEY_FILE", &key)]),
        (
            "TLS_CERT_FILE",
            vec![("TLS_CERT_FILE", &missing), ("TLS_KEY_FILE", &key)],
        ),
        (
            "TLS_CERT_FILE",
            vec![("TLS_CERT_FILE", &junk), ("TLS_KEY_FILE", &key)],
        ),
        (
            "TLS_KEY_FILE",
            vec![("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &junk)],
        ),
        (
            "TLS_KEY_FILE",
            vec![("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &other_key)],
        ),
    ];
    for (var, env) in cases {
        let data = tempfile::tempdir().expect("data");
        let (code, stderr) = run_to_exit(&pg, data.path(), &env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.contains(var), "{env:?}: {stderr}");
        // Nothing was created in the database for a server that never ran.
        assert_eq!(
            pg.execute("SELECT count(*) FROM pg_replication_slots")
                .trim(),
            "0",
            "{env:?}"
        );
    }
}
