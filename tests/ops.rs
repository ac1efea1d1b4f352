//! Running pgsat as a service (issue 6), against the real binary and a real
//! Postgres: `/metrics` is Prometheus text whose counters follow a workload,
//! `/healthz` and `/readyz` as interface.md says while Postgres goes away and
//! comes back, one line and exit code 2 for each bad variable, and the
//! session log lines (JSON) with user_id, peer, reason and duration and never
//! a token or the key.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use pgsat::metrics::exposition;
use pgsat::protocol::pb;
use prost::Message;
use serde_json::{json, Value};
use support::pgsat::{http_get, insecure_token, Pgsat, RawClient, RawFrame, TxnReader};
use support::{wait_until, PgServer, StopMode};

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "ops-test-hmac-secret-0123456789-abcdefghijklmnopqrstuvwxyz";

const SCHEMA: &str = "
    CREATE TABLE users (id text PRIMARY KEY);
    INSERT INTO users VALUES ('alice'), ('bob');
    CREATE TABLE todos (id serial PRIMARY KEY, owner text, title text);
    CREATE TABLE scratch (id int PRIMARY KEY);
";

async fn start_pg() -> PgServer {
    support::pg_with_schema(SCHEMA).await
}

/// Every sample of `/metrics`, keyed `name{k="v",…}` (labels sorted), after
/// checking the text parses and every family is prefixed `pgsat_`.
fn scrape(p: &Pgsat) -> BTreeMap<String, f64> {
    let text = p.metrics();
    let samples = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(!samples.is_empty(), "empty /metrics");
    let mut out = BTreeMap::new();
    for s in samples {
        assert!(s.name.starts_with("pgsat_"), "{}", s.name);
        let mut labels = s.labels.clone();
        labels.sort();
        let key = if labels.is_empty() {
            s.name.clone()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{}{{{}}}", s.name, l.join(","))
        };
        out.insert(key, s.value);
    }
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(line["# TYPE ".len()..].starts_with("pgsat_"), "{line}");
    }
    out
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

async fn read_txns(
    c: &mut RawClient,
    r: &mut TxnReader,
    n: usize,
    got: &mut (u64, u64),
) -> Vec<support::pgsat::Txn> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = c.recv_timeout(T).await.expect("stream frame");
        got.0 += 1;
        got.1 += 5 + f.body.len() as u64;
        assert!(f.ty == 9 || f.ty == 10, "frame {} {:?}", f.ty, f.error());
        out.extend(r.feed(&f));
    }
    out
}

/// `/metrics` parses, and its counters and gauges follow a workload: the
/// transactions and changes received (by op), the bytes and frames sent
/// (exactly what the client got), the window, sessions by state, sessions
/// opened/closed, auth attempts, per-session lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_follow_a_workload() {
    let pg = start_pg().await;
    let db = pg.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(&pg, dir.path(), &[]);
    let m0 = scrape(&p);
    assert_eq!(
        get(
            &m0,
            &format!(
                "pgsat_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert_eq!(get(&m0, "pgsat_replication_connected"), 1.0);
    assert_eq!(get(&m0, "pgsat_auth_insecure_mode"), 1.0);
    assert_eq!(get(&m0, "pgsat_sessions{state=\"streaming\"}"), 0.0);

    let mut c = RawClient::connect(p.tcp).await;
    let mut bytes = 0u64;
    c.send(
        1,
        &pb::AuthReq {
            id: "a".into(),
            token: insecure_token("alice", 3600),
        },
    )
    .await;
    let f = c.recv_timeout(T).await.expect("AuthResp");
    assert_eq!(f.ty, 2);
    bytes += 5 + f.body.len() as u64;
    c.send(3, &pb::StartReplicationReq::default()).await;
    let f = c.recv_timeout(T).await.expect("StartReplicationResp");
    assert_eq!(f.ty, 4);
    let start = pb::StartReplicationResp::decode(f.body.clone()).expect("resp");
    bytes += 5 + f.body.len() as u64;
    assert!(
        wait_until(T, || async {
            get(&scrape(&p), "pgsat_sessions{state=\"streaming\"}") == 1.0
        })
        .await,
        "sessions{{state=streaming}} is not 1 while streaming"
    );

    // The workload: 20 transactions of 3 inserts, 5 updates, 2 deletes, 1
    // truncate (28 transactions).
    for i in 0..20 {
        db.batch_execute(&format!(
            "BEGIN; INSERT INTO todos (owner, title) VALUES ('alice', 'a{i}'), ('alice', 'b{i}'), ('bob', 'c{i}'); COMMIT;"
        ))
        .await
        .expect("insert");
    }
    for i in 1..=5 {
        db.batch_execute(&format!("UPDATE todos SET title = 'u' WHERE id = {i}"))
            .await
            .expect("update");
    }
    db.batch_execute("DELETE FROM todos WHERE id IN (6, 7)")
        .await
        .expect("delete");
    db.batch_execute("INSERT INTO scratch VALUES (1); TRUNCATE scratch")
        .await
        .expect("truncate");
    let mut r = TxnReader::default();
    let mut got = (0u64, 0u64);
    let txns = read_txns(&mut c, &mut r, 27, &mut got).await;
    let last_lsn = txns.last().expect("txns").lsn;
    assert!(last_lsn > start.lsn);
    bytes += got.1;

    let moved = |m: &BTreeMap<String, f64>, s: &str| get(m, s) - get(&m0, s);
    let m1 = scrape(&p);
    assert_eq!(moved(&m1, "pgsat_replication_transactions_total"), 27.0);
    // Every appended transaction's commit → append time, well under the
    // minute (same machine, same clock).
    assert_eq!(
        moved(&m1, "pgsat_replication_commit_lag_seconds_count"),
        27.0
    );
    let lag_sum = moved(&m1, "pgsat_replication_commit_lag_seconds_sum");
    assert!(lag_sum > 0.0 && lag_sum < 27.0 * 60.0, "lag sum {lag_sum}");
    assert!(
        moved(
            &m1,
            "pgsat_replication_commit_lag_seconds_bucket{le=\"60\"}"
        ) == 27.0
    );
    assert_eq!(
        moved(&m1, "pgsat_replication_changes_total{op=\"insert\"}"),
        61.0
    );
    assert_eq!(
        moved(&m1, "pgsat_replication_changes_total{op=\"update\"}"),
        5.0
    );
    assert_eq!(
        moved(&m1, "pgsat_replication_changes_total{op=\"delete\"}"),
        2.0
    );
    assert_eq!(
        moved(&m1, "pgsat_replication_changes_total{op=\"truncate\"}"),
        1.0
    );
    assert_eq!(moved(&m1, "pgsat_replication_decode_errors_total"), 0.0);
    assert!(get(&m1, "pgsat_replication_received_lsn") >= last_lsn as f64);
    // The log and window gauges are refreshed periodically.
    let first_lsn = txns[0].lsn as f64;
    let log_gauges = |m: &BTreeMap<String, f64>| {
        get(m, "pgsat_log_durable_lsn") >= last_lsn as f64
            && get(m, "pgsat_window_transactions") >= 27.0
            && get(m, "pgsat_window_bytes") > 0.0
            && get(m, "pgsat_window_oldest_lsn") > 0.0
            && get(m, "pgsat_window_oldest_lsn") <= first_lsn
            && get(m, "pgsat_log_disk_bytes") > 0.0
    };
    assert!(
        wait_until(T, || async { log_gauges(&scrape(&p)) }).await,
        "log/window gauges do not follow the workload: {:?}",
        scrape(&p)
            .into_iter()
            .filter(|(k, _)| k.starts_with("pgsat_log") || k.starts_with("pgsat_window"))
            .collect::<Vec<_>>()
    );
    // Sent: exactly the frames and bytes this (only) client received.
    let frames_got = 2 + got.0;
    assert_eq!(moved(&m1, "pgsat_sent_bytes_total"), bytes as f64);
    assert_eq!(moved(&m1, "pgsat_sent_frames_total"), frames_got as f64);
    assert!(moved(&m1, "pgsat_session_lag_bytes_count") > 0.0);
    assert_eq!(moved(&m1, "pgsat_sessions_opened_total"), 1.0);
    assert_eq!(
        moved(
            &m1,
            "pgsat_auth_attempts_total{reason=\"ok\",result=\"ok\"}"
        ),
        1.0
    );

    // The client leaves: the session is counted closed, no longer streaming.
    drop(c);
    assert!(
        wait_until(T, || async {
            let m = scrape(&p);
            get(&m, "pgsat_sessions{state=\"streaming\"}") == 0.0
                && moved(&m, "pgsat_sessions_closed_total{reason=\"client_closed\"}") == 1.0
        })
        .await,
        "the closed session is not counted"
    );
    // A refused AuthReq counts as closed by its error code.
    let mut c = RawClient::connect(p.tcp).await;
    c.send(
        1,
        &pb::AuthReq {
            id: "x".into(),
            token: insecure_token("mallory", 60),
        },
    )
    .await;
    assert!(c.closed_within(T).await);
    assert!(
        wait_until(T, || async {
            moved(
                &scrape(&p),
                "pgsat_sessions_closed_total{reason=\"user_not_found\"}",
            ) == 1.0
        })
        .await
    );
    let m2 = scrape(&p);
    assert_eq!(
        moved(
            &m2,
            "pgsat_auth_attempts_total{reason=\"user_not_found\",result=\"user_not_found\"}"
        ),
        1.0
    );
    assert_eq!(
        get(&m2, "pgsat_sessions{state=\"authenticating\"}")
            + get(&m2, "pgsat_sessions{state=\"streaming\"}")
            + get(&m2, "pgsat_sessions{state=\"paused\"}"),
        0.0
    );
}

/// `/healthz` answers 200 while the process runs; `/readyz` 200 only while
/// replication is connected: 503 (naming what is missing) while Postgres is
/// down, 200 again after it returns, and streaming goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_postgres_and_healthz_stays_up() {
    let pg = start_pg().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(&pg, dir.path(), &[]);
    assert_eq!(http_get(p.http, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(p.http, "/readyz").map(|r| r.0), Some(200));

    pg.stop_async(StopMode::Fast).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            matches!(http_get(p.http, "/readyz"), Some((503, _)))
        })
        .await,
        "/readyz is not 503 while Postgres is down"
    );
    let (_, body) = http_get(p.http, "/readyz").expect("readyz");
    assert!(body.contains("replication"), "{body}");
    assert_eq!(http_get(p.http, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(&scrape(&p), "pgsat_replication_connected"), 0.0);

    pg.start_again();
    assert!(
        wait_until(Duration::from_secs(60), || async {
            matches!(http_get(p.http, "/readyz"), Some((200, _)))
        })
        .await,
        "/readyz is not 200 after Postgres returned:\n{}",
        p.output()
    );
    assert_eq!(get(&scrape(&p), "pgsat_replication_connected"), 1.0);
    assert!(get(&scrape(&p), "pgsat_replication_reconnects_total") >= 1.0);

    // And it streams again.
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    c.start(0).await;
    pg.client()
        .await
        .batch_execute("INSERT INTO todos (owner, title) VALUES ('alice', 'back')")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let mut got = (0, 0);
    assert_eq!(read_txns(&mut c, &mut r, 1, &mut got).await.len(), 1);
}

/// Runs `pgsat serve` with exactly `env` (plus PATH); returns (exit code,
/// stderr lines).
fn run_serve(env: &[(&str, &str)]) -> (Option<i32>, Vec<String>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgsat"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run pgsat");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Each bad or missing variable: exit code 2 and one line on stderr naming
/// it (and never the key's value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_variable_is_one_line_and_exit_code_2() {
    let pg = start_pg().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = pg.url();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let free = support::pgsat::free_addr().to_string();
    let free2 = support::pgsat::free_addr().to_string();
    let free3 = support::pgsat::free_addr().to_string();
    let base: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", url.as_str()),
        ("AUTH_MODE", "insecure"),
        ("DATA_DIR", data.as_str()),
        ("LISTEN_ADDR", free.as_str()),
        ("WS_LISTEN_ADDR", free2.as_str()),
        ("HTTP_LISTEN_ADDR", free3.as_str()),
    ];
    let secret_pem = "-----BEGIN PUBLIC KEY-----\nTOPSECRETVALUE\n-----END PUBLIC KEY-----\n";
    // (variable named in the line, changes to the base environment)
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("DATABASE_URL", vec![("DATABASE_URL", "")]),
        ("DATABASE_URL", vec![("DATABASE_URL", "mysql://u@h/db")]),
        ("AUTH_MODE", vec![("AUTH_MODE", "maybe")]),
        ("AUTH_JWT_ALG", vec![("AUTH_MODE", "secure")]),
        (
            "AUTH_JWT_ALG",
            vec![
                ("AUTH_MODE", "secure"),
                ("AUTH_JWT_ALG", "HS999"),
                ("AUTH_JWT_KEY", "k"),
            ],
        ),
        (
            "AUTH_JWT_KEY",
            vec![("AUTH_MODE", "secure"), ("AUTH_JWT_ALG", "HS256")],
        ),
        (
            "AUTH_JWT_KEY",
            vec![
                ("AUTH_MODE", "secure"),
                ("AUTH_JWT_ALG", "RS256"),
                ("AUTH_JWT_KEY", secret_pem),
            ],
        ),
        (
            "AUTH_JWT_JWKS_URL",
            vec![
                ("AUTH_MODE", "secure"),
                ("AUTH_JWT_JWKS_URL", "ftp://keys.example/jwks"),
            ],
        ),
        ("AUTH_JWT_LEEWAY", vec![("AUTH_JWT_LEEWAY", "soon")]),
        ("AUTH_TIMEOUT", vec![("AUTH_TIMEOUT", "5 parsecs")]),
        ("AUTH_REFRESH_GRACE", vec![("AUTH_REFRESH_GRACE", "-1s")]),
        ("AUTH_USERS_TABLE", vec![("AUTH_USERS_TABLE", "members")]),
        (
            "AUTH_USERS_ID_COLUMN",
            vec![("AUTH_USERS_ID_COLUMN", "user_key")],
        ),
        (
            "RULES_FILE",
            vec![("RULES_FILE", "/nonexistent/rules.toml")],
        ),
        ("LISTEN_ADDR", vec![("LISTEN_ADDR", "nowhere")]),
        ("WS_LISTEN_ADDR", vec![("WS_LISTEN_ADDR", "1.2.3.4")]),
        (
            "HTTP_LISTEN_ADDR",
            vec![("HTTP_LISTEN_ADDR", "localhost:99999")],
        ),
        ("REPLICATION_SLOT", vec![("REPLICATION_SLOT", "Bad-Slot!")]),
        ("PUBLICATION", vec![("PUBLICATION", "bad\"pub")]),
        ("DATA_DIR", vec![("DATA_DIR", not_a_dir.to_str().unwrap())]),
        ("WINDOW_MAX_BYTES", vec![("WINDOW_MAX_BYTES", "lots")]),
        ("WINDOW_MAX_AGE", vec![("WINDOW_MAX_AGE", "forever")]),
        ("CACHE_MAX_BYTES", vec![("CACHE_MAX_BYTES", "64 MB")]),
        ("CLIENT_MAX_LAG_BYTES", vec![("CLIENT_MAX_LAG_BYTES", "-5")]),
        ("MAX_FRAME_BYTES", vec![("MAX_FRAME_BYTES", "10")]),
        ("MAX_CONNECTIONS", vec![("MAX_CONNECTIONS", "0")]),
        ("LOG_LEVEL", vec![("LOG_LEVEL", "pgsat=loud")]),
        ("LOG_FORMAT", vec![("LOG_FORMAT", "xml")]),
    ];
    let mut failures = Vec::new();
    for (var, changes) in &cases {
        let mut env = base.clone();
        for (k, v) in changes {
            env.retain(|(name, _)| name != k);
            if !v.is_empty() {
                env.push((k, v));
            }
        }
        let (code, lines, _) = tokio::task::spawn_blocking({
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run_serve(&env)
            }
        })
        .await
        .expect("join");
        let error_lines: Vec<&String> = lines.iter().filter(|l| l.starts_with("pgsat: ")).collect();
        let ok = code == Some(2)
            && error_lines.len() == 1
            && error_lines[0].contains(var)
            && !lines.iter().any(|l| l.contains("TOPSECRETVALUE"));
        if !ok {
            failures.push(format!(
                "{var} {changes:?}: exit {code:?}, stderr {lines:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// LOG_FORMAT=json: every line is a JSON object; one line per session open
/// (authenticated: user_id, peer) and close (user_id, peer, reason,
/// duration); no line holds a token, a piece of one, or the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_one_line_per_session_and_never_a_token() {
    let pg = start_pg().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(
        &pg,
        dir.path(),
        &[
            ("AUTH_MODE", "secure"),
            ("AUTH_JWT_ALG", "HS256"),
            ("AUTH_JWT_KEY", SECRET),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "debug"),
        ],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = hs256(&json!({"user_id": "alice", "exp": now + 3600}));
    let refresh = hs256(&json!({"user_id": "alice", "exp": now + 7200}));
    let forged = {
        let parts: Vec<&str> = good.split('.').collect();
        format!("{}.{}.{}", parts[0], parts[1], "A".repeat(43))
    };
    let other = hs256(&json!({"user_id": "bob", "exp": now + 3600}));
    let tokens = [&good, &refresh, &forged, &other];

    // alice: auth, stream, refresh, client closes.
    let mut c = RawClient::connect(p.tcp).await;
    let alice_peer = c.local_addr().to_string();
    c.auth(&good).await;
    c.start(0).await;
    c.send(
        1,
        &pb::AuthReq {
            id: "r".into(),
            token: refresh.clone(),
        },
    )
    .await;
    let f = c.recv_timeout(T).await.expect("AuthResp");
    assert_eq!(f.ty, 2);
    drop(c);
    // A forged token: refused.
    let mut c = RawClient::connect(p.tcp).await;
    c.send(
        1,
        &pb::AuthReq {
            id: "x".into(),
            token: forged.clone(),
        },
    )
    .await;
    assert!(c.closed_within(T).await);
    // bob: refresh as alice → PRINCIPAL_CHANGED.
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&other).await;
    c.send(
        1,
        &pb::AuthReq {
            id: "y".into(),
            token: good.clone(),
        },
    )
    .await;
    let frames: Vec<RawFrame> = {
        let mut v = Vec::new();
        while let Some(f) = c.recv_timeout(T).await {
            v.push(f);
        }
        v
    };
    assert_eq!(
        frames.last().and_then(RawFrame::error).map(|e| e.code),
        Some(pb::ErrorCode::PrincipalChanged as i32)
    );

    let closed_lines = |out: &str| {
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "session closed")
            .count()
    };
    assert!(
        wait_until(T, || async { closed_lines(&p.output()) >= 3 }).await,
        "three session closed lines:\n{}",
        p.output()
    );
    let out = p.output();
    let mut lines = Vec::new();
    for l in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.is_object(), "{l}");
        lines.push(v);
    }
    for l in out.lines() {
        assert!(!l.contains(SECRET), "the key in the log: {l}");
        for t in tokens {
            for seg in t.split('.').filter(|s| s.len() >= 16) {
                assert!(!l.contains(seg), "a token piece in the log: {l}");
            }
        }
    }
    let opened: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "session authenticated")
        .collect();
    let closed: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "session closed")
        .collect();
    assert_eq!(opened.len(), 2, "alice and bob authenticated: {opened:?}");
    assert_eq!(closed.len(), 3, "{closed:?}");
    for v in opened.iter().chain(&closed) {
        assert!(
            v["peer"].as_str().is_some_and(|s| s.contains("127.0.0.1")),
            "{v}"
        );
        assert!(v["user_id"].is_string(), "{v}");
    }
    for v in &closed {
        assert!(v["reason"].is_string(), "{v}");
        assert!(v["duration_ms"].is_u64(), "{v}");
    }
    let reasons: Vec<(&str, &str)> = closed
        .iter()
        .map(|v| {
            (
                v["user_id"].as_str().unwrap(),
                v["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(reasons.contains(&("alice", "client_closed")), "{reasons:?}");
    assert!(reasons.contains(&("", "AUTH_FAILED")), "{reasons:?}");
    assert!(
        reasons.contains(&("bob", "PRINCIPAL_CHANGED")),
        "{reasons:?}"
    );
    assert!(
        closed.iter().any(|v| v["peer"] == alice_peer.as_str()),
        "alice's peer address {alice_peer} not logged"
    );
}

/// The README's configuration table lists every variable pgsat reads, its
/// metrics table exactly the exported families, and the alerts it names
/// exist in deploy/prometheus/alerts.yml.
#[test]
fn readme_tables_match_the_code() {
    let readme = include_str!("../README.md");
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    for var in pgsat::config::known_variables() {
        assert!(
            rows.iter().any(|r| r
                .split('|')
                .nth(1)
                .is_some_and(|c| c.contains(&format!("`{var}`")))),
            "README configuration table lacks {var}"
        );
    }
    let text = pgsat::metrics::Metrics::new().expect("metrics").encode();
    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let documented: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.strip_prefix("| `pgsat_"))
        .filter_map(|r| r.split(['`', '{']).next())
        .map(|n| format!("pgsat_{n}"))
        .collect();
    assert_eq!(documented, exported, "README metrics table vs /metrics");
    let alerts = include_str!("../deploy/prometheus/alerts.yml");
    for name in readme
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert: "))
    {
        assert!(
            alerts.contains(&format!("alert: {name}")),
            "README alert {name} is not in alerts.yml"
        );
    }
}

/// While a SIGTERM drains the sessions, /healthz still answers 200 (the
/// process runs) and /readyz answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_shutdown_drains() {
    let pg = start_pg().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = Pgsat::start(&pg, dir.path(), &[("CLIENT_MAX_LAG_BYTES", "1GiB")]);
    // A client that stops reading holds the drain up (its queue cannot flush).
    let mut stuck = RawClient::connect_small_buffer(p.tcp).await;
    stuck.auth(&insecure_token("alice", 3600)).await;
    stuck.start(0).await;
    let db = pg.client().await;
    for _ in 0..20 {
        db.batch_execute(
            "INSERT INTO todos (owner, title) SELECT 'bob', repeat(md5(g::text), 100) FROM generate_series(1, 100) g",
        )
        .await
        .expect("write");
    }
    unsafe {
        libc::kill(p.pid() as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + T;
    let mut draining = false;
    while std::time::Instant::now() < deadline {
        let ready = http_get(p.http, "/readyz").map(|(s, _)| s);
        let health = http_get(p.http, "/healthz").map(|(s, _)| s);
        if ready == Some(503) && health == Some(200) {
            draining = true;
            break;
        }
        assert!(
            ready.is_some() && health.is_some(),
            "the HTTP endpoint stopped answering before the process ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        draining,
        "never saw /healthz 200 with /readyz 503 during the drain"
    );
    let status = tokio::task::spawn_blocking(move || p.terminate(T))
        .await
        .expect("exit");
    assert!(status.success(), "{status}");
    drop(stuck);
}

/// A users table the stream does not carry as USER_DELETED needs it (not
/// published, or its key column outside the replica identity) is named in
/// a start-up warning with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_table_outside_the_stream_is_warned_about() {
    let pg = start_pg().await;
    pg.execute(
        "CREATE PUBLICATION nousers FOR TABLE todos;
         CREATE TABLE members (id serial PRIMARY KEY, name text UNIQUE);
         INSERT INTO members (name) VALUES ('alice');",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["a", "b", "c"] {
        std::fs::create_dir(dir.path().join(sub)).expect("data dir");
    }
    let p = Pgsat::start(
        &pg,
        &dir.path().join("a"),
        &[("PUBLICATION", "nousers"), ("REPLICATION_SLOT", "a")],
    );
    let out = p.output();
    assert!(
        out.contains("public.users is not in publication \"nousers\"")
            && out.contains("ALTER PUBLICATION nousers ADD TABLE public.users"),
        "{out}"
    );
    drop(p);
    let p = Pgsat::start(
        &pg,
        &dir.path().join("b"),
        &[
            ("AUTH_USERS_TABLE", "members"),
            ("AUTH_USERS_ID_COLUMN", "name"),
            ("REPLICATION_SLOT", "b"),
        ],
    );
    let out = p.output();
    assert!(
        out.contains("\"name\" is not in the replica identity of public.members")
            && out.contains("REPLICA IDENTITY FULL"),
        "{out}"
    );
    // The defaults (users in FOR ALL TABLES, keyed by id): no warning.
    drop(p);
    let p = Pgsat::start(&pg, &dir.path().join("c"), &[("REPLICATION_SLOT", "c")]);
    assert!(!p.output().contains("USER_DELETED"), "{}", p.output());
}

/// `WORKER_THREADS` sets how many threads serve the runtime: pgsat started
/// with 3 reports three (`pgsat_runtime_worker_threads`, the runtime's own
/// count) and has at least three `tokio-rt-worker` threads (the blocking
/// pool's threads share the name); unset, the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_the_runtime_threads() {
    let pg = start_pg().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(&pg, dir.path(), &[("WORKER_THREADS", "3")]);
    let named = |pid: u32| -> usize {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc/<pid>/task")
            .filter_map(|t| t.ok())
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .map(|c| c.trim() == "tokio-rt-worker")
                    .unwrap_or(false)
            })
            .count()
    };
    assert_eq!(get(&scrape(&p), "pgsat_runtime_worker_threads"), 3.0);
    assert!(named(p.pid()) >= 3, "WORKER_THREADS=3: {}", named(p.pid()));
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(&insecure_token("alice", 3600)).await;
    drop(p);

    let dir = tempfile::tempdir().expect("tempdir");
    let p = Pgsat::start(&pg, dir.path(), &[]);
    assert_eq!(
        get(&scrape(&p), "pgsat_runtime_worker_threads"),
        pgsat::config::default_worker_threads() as f64,
        "the default"
    );
}
