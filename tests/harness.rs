//! The test harness itself: servers start in parallel on distinct ports with
//! logical WAL, survive stop/start, and leave nothing behind.

mod support;

use std::time::Duration;
use support::{wait_until, HostAuth, PgServer, StopMode};

async fn wal_level(pg: &PgServer) -> String {
    let client = pg.client().await;
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    row.get::<_, String>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_parallel_stop_and_restart() {
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking(PgServer::start),
        tokio::task::spawn_blocking(|| PgServer::builder().auth(HostAuth::Md5).start()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    assert_eq!(wal_level(&a).await, "logical");
    assert_eq!(wal_level(&b).await, "logical");
    assert_eq!(a.execute("SELECT 1 + 1").trim(), "2");

    // Data survives a fast stop and a start on the same port.
    a.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    let port = a.port();
    a.stop(StopMode::Fast);
    assert!(!a.is_running());
    assert!(
        a.try_execute("SELECT 1").is_err(),
        "a stopped server must not answer"
    );
    // The other server is unaffected.
    assert_eq!(b.execute("SELECT 'up'").trim(), "up");
    a.start_again();
    assert_eq!(a.port(), port);
    let client = a.client().await;
    let x: i32 = client
        .query_one("SELECT x FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);

    b.restart();
    assert_eq!(wal_level(&b).await, "logical");
    assert!(b.url().contains(&format!(":{}/postgres", b.port())));
    assert!(b.bin_dir().join("pg_recvlogical").is_file());
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_dir() {
    let pg = PgServer::builder().conf("wal_level = replica").start();
    let client = pg.client().await;
    let lvl: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        lvl, "replica",
        "extra conf lines override the harness defaults"
    );
    drop(client);
    pg.create_database("other db");
    let other = pg.client_for_db("other db").await;
    other.simple_query("SELECT 1").await.unwrap();
    drop(other);

    let root = pg.socket_dir().to_path_buf();
    let port = pg.port();
    drop(pg);
    assert!(!root.exists(), "temp dir removed");
    // Nothing listens on the port any more.
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        })
        .await,
        "server still accepting connections after drop"
    );
}

#[tokio::test]
async fn panicking_test_still_cleans_up() {
    let root = std::sync::Arc::new(std::sync::Mutex::new(None));
    let r2 = root.clone();
    let res = std::thread::spawn(move || {
        let pg = PgServer::start();
        *r2.lock().unwrap() = Some((pg.socket_dir().to_path_buf(), pg.data_dir()));
        panic!("deliberate panic while a server runs");
    })
    .join();
    assert!(res.is_err());
    let (root, _) = root.lock().unwrap().clone().expect("server started");
    assert!(!root.exists(), "temp dir removed after the panic");
}
