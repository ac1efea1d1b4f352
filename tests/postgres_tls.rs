//! TLS to Postgres (`sslmode`, `sslrootcert` in DATABASE_URL) against a real
//! server with `ssl = on` whose pg_hba.conf refuses every connection over
//! TCP that is not TLS: what connects at all went over TLS.
//!
//! Certificates are made per test with rcgen: a CA, and a server certificate
//! it signed for the name `localhost` only (so `127.0.0.1` is the wrong name).
//! The server trusts the same CA for client certificates (`ssl_ca_file`):
//! the role `pgsat_cert` may only log in with one (`cert` in pg_hba).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgsat::pg::conn::{ConnParams, ReplicationConn};
use pgsat::pg::sql::SqlConfig;
use pgsat::pg::PgError;
use support::ca::Ca;
use support::pgsat::{insecure_token, Pgsat, RawClient, TxnReader};
use support::PgServer;

const T: Duration = Duration::from_secs(10);

/// Installs `cert`/`key` in the data dir, turns `ssl` on, trusts
/// `client_ca` for client certificates and lets TCP connections in only
/// over TLS; reloads the configuration.
fn enable_tls(pg: &PgServer, cert: &str, key: &str, client_ca: &str) {
    let data = pg.data_dir();
    // The server's files belong to the user it runs as (the data dir's owner).
    let meta = std::fs::metadata(&data).expect("data dir");
    let (uid, gid) = {
        use std::os::unix::fs::MetadataExt;
        (meta.uid(), meta.gid())
    };
    let write = |name: &str, text: &str| {
        let path = data.join(name);
        std::fs::write(&path, text).expect("write");
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    write("server.crt", cert);
    write("server.key", key);
    write("root.crt", client_ca);
    write(
        "pg_hba.conf",
        "local all all trust\n\
         local replication all trust\n\
         hostssl all pgsat_cert 127.0.0.1/32 cert\n\
         hostssl replication pgsat_cert 127.0.0.1/32 cert\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostssl replication all 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 127.0.0.1/32 reject\n\
         hostnossl replication all 127.0.0.1/32 reject\n",
    );
    pg.execute("ALTER SYSTEM SET ssl_ca_file = 'root.crt'");
    pg.execute("ALTER SYSTEM SET ssl = on");
    pg.execute("SELECT pg_reload_conf()");
    let deadline = std::time::Instant::now() + T;
    while pg.execute("SHOW ssl").trim() != "on" {
        assert!(std::time::Instant::now() < deadline, "ssl did not turn on");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Postgres with TLS on, the CA that signed its certificate (for
/// `localhost`), and the CA's file.
struct TlsPg {
    pg: PgServer,
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
}

impl TlsPg {
    fn start() -> TlsPg {
        let pg = PgServer::start();
        pg.execute("CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('alice');");
        pg.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)");
        // Logs in only with a client certificate (pg_hba: cert).
        pg.execute("CREATE ROLE pgsat_cert LOGIN SUPERUSER");
        let ca = Ca::new("pgsat test CA");
        let (cert, key) = ca.server_cert(&["localhost"]);
        enable_tls(&pg, &cert, &key, &ca.pem());
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("ca.pem");
        let other_ca_file = dir.path().join("other-ca.pem");
        std::fs::write(&other_ca_file, Ca::new("someone else").pem()).expect("other-ca.pem");
        TlsPg {
            pg,
            dir,
            ca,
            ca_file,
            other_ca_file,
        }
    }

    /// DATABASE_URL for `host` with these query parameters.
    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://postgres:{}@{host}:{}/postgres?{query}",
            self.pg.password(),
            self.pg.port()
        )
    }
}

/// Connects both ways pgsat does (replication, ordinary SQL).
async fn connect_both(url: &str) -> (Result<(), PgError>, Result<(), PgError>) {
    let params = ConnParams::from_url(url).expect("url");
    let repl = ReplicationConn::connect(&params).await.map(drop);
    let sql = async {
        let (client, _task) = SqlConfig::new(&params)?.connect("test", false).await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(PgError::from)?;
        Ok(())
    }
    .await;
    (repl, sql)
}

fn assert_tls_error(r: Result<(), PgError>, what: &str, expect: &str) {
    match r {
        Err(e @ PgError::Tls(_)) => {
            assert!(!e.is_transient(), "{what}: a TLS failure is not transient");
            assert!(e.to_string().contains(expect), "{what}: {e}");
        }
        other => panic!("{what}: expected a TLS error containing {expect:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_checks_what_it_promises() {
    let s = tokio::task::spawn_blocking(TlsPg::start)
        .await
        .expect("start");
    let ca = s.ca_file.display().to_string();
    let other = s.other_ca_file.display().to_string();

    // Accepted: encrypt-only modes, and the checks the certificate passes.
    for (host, query) in [
        ("127.0.0.1", "sslmode=prefer".to_string()),
        ("127.0.0.1", "sslmode=require".to_string()),
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        // verify-ca does not compare the name.
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
        ("127.0.0.1", format!("sslmode=require&sslrootcert={ca}")),
    ] {
        let (repl, sql) = connect_both(&s.url(host, &query)).await;
        repl.unwrap_or_else(|e| panic!("replication, {host}?{query}: {e}"));
        sql.unwrap_or_else(|e| panic!("SQL, {host}?{query}: {e}"));
    }

    // Refused by pg_hba (no TLS): proves the accepted ones used it.
    let (repl, sql) = connect_both(&s.url("127.0.0.1", "sslmode=disable")).await;
    assert!(
        repl.is_err() && sql.is_err(),
        "plain connections must be refused"
    );

    // Refused by pgsat: the wrong CA, the wrong name.
    for (host, query, expect) in [
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other}"),
            "UnknownIssuer",
        ),
        (
            "localhost",
            format!("sslmode=verify-ca&sslrootcert={other}"),
            "UnknownIssuer",
        ),
        (
            "localhost",
            format!("sslmode=require&sslrootcert={other}"),
            "UnknownIssuer",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "not valid for name",
        ),
    ] {
        let what = format!("{host}?{query}");
        let (repl, sql) = connect_both(&s.url(host, &query)).await;
        assert_tls_error(repl, &format!("replication, {what}"), expect);
        assert_tls_error(sql, &format!("SQL, {what}"), expect);
    }

    // A server without TLS: `require` refuses it, `prefer` goes plain.
    s.pg.execute("ALTER SYSTEM SET ssl = off");
    std::fs::write(
        s.pg.data_dir().join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n\
         host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("pg_hba.conf");
    s.pg.execute("SELECT pg_reload_conf()");
    assert!(
        support::wait_until(T, || async { s.pg.execute("SHOW ssl").trim() == "off" }).await,
        "ssl did not turn off"
    );
    let (repl, sql) = connect_both(&s.url("127.0.0.1", "sslmode=require")).await;
    assert_tls_error(repl, "replication, require, no TLS", "does not accept TLS");
    assert_tls_error(sql, "SQL, require, no TLS", "does not support TLS");
    let (repl, sql) = connect_both(&s.url("127.0.0.1", "sslmode=prefer")).await;
    repl.expect("prefer falls back to plain (replication)");
    sql.expect("prefer falls back to plain (SQL)");
}

/// pgsat serving over a verified TLS connection: the slot stream, the users
/// lookup and the catalog all connect over TLS (pg_stat_ssl), and a change
/// reaches a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgsat_streams_over_verified_tls() {
    let s = tokio::task::spawn_blocking(TlsPg::start)
        .await
        .expect("start");
    let url = s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", s.ca_file.display()),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(&s.pg, dir.path(), &[("DATABASE_URL", &url)]);

    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await; // users lookup
    c.start(0).await;
    s.pg.execute("INSERT INTO notes (body) VALUES ('over tls')");
    let mut r = TxnReader::default();
    let txns = c.read_txns_within(&mut r, 1, T).await;
    assert_eq!(txns.len(), 1, "one transaction over TLS");

    let plain: i64 =
        s.pg.execute(
            "SELECT count(*) FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'pgsat%' AND NOT coalesce(s.ssl, false)",
        )
        .trim()
        .parse()
        .expect("count");
    let tls: i64 =
        s.pg.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name LIKE 'pgsat%' AND s.ssl",
        )
        .trim()
        .parse()
        .expect("count");
    let walsender_tls: i64 =
        s.pg.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.backend_type = 'walsender' AND s.ssl",
        )
        .trim()
        .parse()
        .expect("count");
    assert_eq!(plain, 0, "a pgsat connection without TLS");
    assert!(tls >= 2, "pgsat's connections over TLS: {tls}");
    assert_eq!(walsender_tls, 1, "the slot's walsender over TLS");
}

/// A certificate pgsat must not trust stops the start with one clear line
/// (and a bad sslrootcert is a bad DATABASE_URL: exit code 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_stops_the_start_clearly() {
    let s = tokio::task::spawn_blocking(TlsPg::start)
        .await
        .expect("start");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let run = |url: String| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsat"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .env("AUTH_MODE", "insecure")
            .env("DATA_DIR", &data)
            .env("LISTEN_ADDR", support::pgsat::free_addr().to_string())
            .env("WS_LISTEN_ADDR", support::pgsat::free_addr().to_string())
            .env("HTTP_LISTEN_ADDR", support::pgsat::free_addr().to_string())
            .output()
            .expect("run pgsat");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stderr) = run(s.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            s.other_ca_file.display()
        ),
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("TLS") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(s.pg.password()),
        "the password leaked: {stderr}"
    );

    let missing: &Path = &dir.path().join("nope.pem");
    let (code, stderr) = run(s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", missing.display()),
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("nope.pem"),
        "{stderr}"
    );

    // A client certificate that is not there: the same, naming sslcert.
    let (code, stderr) = run(s.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            s.ca_file.display(),
            missing.display(),
            missing.display()
        ),
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL")
            && stderr.contains("sslcert")
            && stderr.contains("nope.pem"),
        "{stderr}"
    );
}

/// Writes a PEM file with the given permissions.
fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `sslcert` + `sslkey`: pgsat logs in as a role that only a client
/// certificate lets in (pg_hba `cert`, the certificate's CN is the role),
/// on the replication connection and the ordinary ones alike; without the
/// certificate, with one for another name, with a key anyone may read or
/// with another certificate's key it does not get in, each with a clear
/// error; a replaced certificate is used by the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_logs_pgsat_in() {
    let s = tokio::task::spawn_blocking(TlsPg::start)
        .await
        .expect("start");
    let files = s.dir.path();
    let (cert_file, key_file) = (files.join("client.crt"), files.join("client.key"));
    let (cert, key) = s.ca.client_cert("pgsat_cert");
    write_mode(&cert_file, &cert, 0o644);
    write_mode(&key_file, &key, 0o600);
    let url = |query: &str| {
        format!(
            "postgres://pgsat_cert@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}{query}",
            s.pg.port(),
            s.ca_file.display()
        )
    };
    let with_cert = url(&format!(
        "&sslcert={}&sslkey={}",
        cert_file.display(),
        key_file.display()
    ));

    let (repl, sql) = connect_both(&with_cert).await;
    repl.expect("replication with the client certificate");
    sql.expect("SQL with the client certificate");

    // No certificate: Postgres refuses (pg_hba cert).
    let (repl, sql) = connect_both(&url("")).await;
    for (what, r) in [("replication", repl), ("SQL", sql)] {
        let e = r.expect_err(what);
        assert!(
            e.to_string().contains("certificate"),
            "{what} without a certificate: {e}"
        );
    }

    // A key others may read is refused before connecting, as libpq does.
    write_mode(&key_file, &key, 0o644);
    let (repl, sql) = connect_both(&with_cert).await;
    for (what, r) in [("replication", repl), ("SQL", sql)] {
        match r {
            Err(e @ PgError::Config(_)) => {
                assert!(
                    e.to_string().contains("group or world access"),
                    "{what}: {e}"
                );
                assert!(e.to_string().contains("client.key"), "{what}: {e}");
            }
            other => panic!("{what} with a readable key: {other:?}"),
        }
    }
    write_mode(&key_file, &key, 0o600);

    // Another certificate's key.
    let (_, other_key) = s.ca.client_cert("pgsat_cert");
    write_mode(&key_file, &other_key, 0o600);
    let (repl, _) = connect_both(&with_cert).await;
    match repl {
        Err(e @ PgError::Config(_)) => {
            assert!(
                e.to_string().contains("sslkey") && e.to_string().contains("not the key"),
                "{e}"
            )
        }
        other => panic!("a mismatched key: {other:?}"),
    }

    // Replaced by a certificate for another role: read again, refused.
    let (cert2, key2) = s.ca.client_cert("someone_else");
    write_mode(&cert_file, &cert2, 0o644);
    write_mode(&key_file, &key2, 0o600);
    let (repl, sql) = connect_both(&with_cert).await;
    assert!(
        repl.is_err() && sql.is_err(),
        "a certificate for someone else must not log in as pgsat_cert"
    );
    // And back: the next connections use the good pair again.
    write_mode(&cert_file, &cert, 0o644);
    write_mode(&key_file, &key, 0o600);
    let (repl, sql) = connect_both(&with_cert).await;
    repl.expect("replication after the certificate came back");
    sql.expect("SQL after the certificate came back");

    // pgsat itself on the certificate: every connection it opens presents it.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(&s.pg, dir.path(), &[("DATABASE_URL", &with_cert)]);
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    c.start(0).await;
    s.pg.execute("INSERT INTO notes (body) VALUES ('signed in by certificate')");
    let mut r = TxnReader::default();
    let txns = c.read_txns_within(&mut r, 1, T).await;
    assert_eq!(txns.len(), 1, "one transaction");
    let rows = s.pg.execute(
        "SELECT count(*) FILTER (WHERE s.client_dn = '/CN=pgsat_cert'), count(*)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.usename = 'pgsat_cert'",
    );
    let counts: Vec<i64> = rows
        .trim()
        .split('|')
        .map(|n| n.trim().parse().expect("count"))
        .collect();
    assert!(counts[1] >= 2, "pgsat's connections as pgsat_cert: {rows}");
    assert_eq!(
        counts[0], counts[1],
        "each presented the certificate: {rows}"
    );
}
