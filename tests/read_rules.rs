//! Read rules (protocol.md "Version 1.1", issue 10) against a real Postgres
//! and the real binary: who gets which rows, subscriptions, view_id and
//! RESYNC_REQUIRED, start-up errors, and a random concurrent workload whose
//! every client ends with exactly the rows its rule allows.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgsat::protocol::pb;
use pgsat::protocol::pb::trans_op::Op;
use prost::Message;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::pgsat::{cell, run_to_exit, Decoded, Pgsat, RawClient, RawFrame, Txn, TxnReader};
use support::{wait_until, PgServer};

const T: Duration = Duration::from_secs(15);

/// An unsigned (alg none) JWT with `user_id` and `extra` claims.
fn token(user: &str, extra: Value) -> String {
    support::pgsat::insecure_token_with(user, 3600, extra)
}

/// A fresh directory `name` under `dir`.
fn subdir(dir: &Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn write_rules(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("rules file");
    p.display().to_string()
}

async fn connect(p: &Pgsat, tok: &str) -> RawClient {
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(tok).await;
    c
}

/// Commit LSN of the newest transaction (as PingResp reports it).
async fn head(c: &mut RawClient, r: &mut TxnReader, seen: &mut Vec<Txn>) -> u64 {
    c.send(7, &pb::PingReq {}).await;
    loop {
        let f: RawFrame = c.recv_timeout(T).await.expect("PingResp");
        if f.ty == 8 {
            return pb::PingResp::decode(f.body).expect("PingResp").lsn;
        }
        assert!(
            f.ty == 9 || f.ty == 10,
            "unexpected frame {} {:?}",
            f.ty,
            f.error()
        );
        seen.extend(r.feed(&f));
    }
}

fn table_of(r: &TxnReader, id: u32) -> String {
    r.relations
        .get(&id)
        .map(|x| x.table.clone())
        .unwrap_or_default()
}

/// (table, op, cells) of a transaction's row ops.
/// (table, op, cells).
type RowOp = (String, &'static str, Vec<Option<String>>);

fn rows(r: &TxnReader, t: &Txn) -> Vec<RowOp> {
    let mut out = Vec::new();
    for op in &t.ops {
        let (rel, what, row) = match op {
            Op::Insert(i) => (i.relation_id, "insert", i.row.as_ref()),
            Op::Update(u) => (u.relation_id, "update", u.row.as_ref()),
            Op::Delete(d) => (d.relation_id, "delete", d.old_row.as_ref()),
            Op::Truncate(tr) => {
                for id in &tr.relation_ids {
                    out.push((table_of(r, *id), "truncate", Vec::new()));
                }
                continue;
            }
            _ => continue,
        };
        let row = row.expect("row");
        let n = row.values.len();
        out.push((
            table_of(r, rel),
            what,
            (0..n).map(|i| cell(row, i)).collect(),
        ));
    }
    out
}

const SCHEMA: &str = "
    CREATE TABLE users (id text PRIMARY KEY);
    INSERT INTO users VALUES ('alice'), ('bob'), ('carol'), ('zoë 🚀'), ('writer');
    CREATE TABLE todos (id int PRIMARY KEY, owner text, title text);
    ALTER TABLE todos REPLICA IDENTITY FULL;
    CREATE TABLE projects (id int PRIMARY KEY, team text, public boolean);
    ALTER TABLE projects REPLICA IDENTITY FULL;
    CREATE TABLE news (id int PRIMARY KEY, body text);
    CREATE TABLE secrets (id int PRIMARY KEY, owner text);
    CREATE TABLE levels (id int PRIMARY KEY, n int);
    ALTER TABLE levels REPLICA IDENTITY FULL;
    CREATE TABLE keyed (owner text, k int, v text, PRIMARY KEY (owner, k));
";

const RULES: &str = r#"
[[table]]
name = "public.todos"
read = "owner = auth.user_id"

[[table]]
name = "projects"
read = "team IN auth.teams OR public = true"

[[table]]
name = "public.news"
read = "true"

[[table]]
name = "public.levels"
read = "n = auth.level"

[[table]]
name = "public.keyed"
read = "owner = auth.user_id AND (k = 1 OR k = 2)"
"#;

async fn setup(rules: &str) -> (PgServer, tempfile::TempDir, Pgsat, String) {
    setup_env(rules, &[]).await
}

/// [`setup`] with more environment for pgsat.
async fn setup_env(
    rules: &str,
    env: &[(&str, &str)],
) -> (PgServer, tempfile::TempDir, Pgsat, String) {
    let pg = PgServer::start();
    pg.client()
        .await
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_rules(dir.path(), "rules.toml", rules);
    let mut all = vec![("RULES_FILE", path.as_str())];
    all.extend_from_slice(env);
    let p = Pgsat::start(&pg, &subdir(dir.path(), "data"), &all);
    (pg, dir, p, path)
}

/// What each user receives of a scripted workload: deny by default,
/// `true` rules, IN with an array claim, missing and non-string claims,
/// NULL columns, unicode values, numeric claims against int columns, moves
/// in and out by UPDATE, truncate, a transaction with nothing readable, and
/// subscriptions (`tables`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_gets_what() {
    let (pg, _dir, p, _) = setup(RULES).await;
    assert!(
        p.metrics().contains("pgsat_read_rules_enabled 1"),
        "{}",
        p.metrics()
    );
    let db = pg.client().await;

    let alice_tok = token("alice", json!({"teams": ["red", 7], "level": 3}));
    let bob_tok = token("bob", json!({"teams": "red", "level": "3"}));
    let carol_tok = token("carol", json!({"level": {"n": 3}}));
    let zoe_tok = token("zoë 🚀", json!({"teams": ["blue"], "level": 3.5}));

    let mut clients = Vec::new();
    for tok in [&alice_tok, &bob_tok, &carol_tok, &zoe_tok] {
        let mut c = connect(&p, tok).await;
        let resp = c
            .start_req(pb::StartReplicationReq::default())
            .await
            .expect("start");
        assert!(resp.view_id.starts_with("v1-"), "{resp:?}");
        clients.push((c, TxnReader::default()));
    }
    // Alice only on projects.
    let mut alice_projects = connect(&p, &alice_tok).await;
    alice_projects
        .start_req(pb::StartReplicationReq {
            tables: vec!["projects".into()],
            ..Default::default()
        })
        .await
        .expect("start on projects");
    let mut ap_reader = TxnReader::default();

    let script = [
        "INSERT INTO todos VALUES (1, 'alice', 'a1'), (2, 'bob', 'b1'), (3, NULL, 'nobody'), (4, 'zoë 🚀', 'ünï')",
        "INSERT INTO secrets VALUES (1, 'alice')",
        "INSERT INTO news VALUES (1, 'hello')",
        "INSERT INTO projects VALUES (1, 'red', false), (2, '7', NULL), (3, NULL, true), (4, 'blue', NULL), (5, NULL, NULL)",
        "INSERT INTO levels VALUES (1, 3), (2, NULL), (3, 4)",
        "UPDATE todos SET owner = 'alice', title = 'moved in' WHERE id = 2",
        "UPDATE todos SET owner = 'bob', title = 'moved out' WHERE id = 1",
        "UPDATE todos SET title = 'still bobs' WHERE id = 1",
        "UPDATE todos SET title = 'alice edit' WHERE id = 2",
        "DELETE FROM todos WHERE id IN (1, 2)",
        "INSERT INTO keyed VALUES ('alice', 1, 'x'), ('alice', 3, 'y'), ('bob', 1, 'z')",
        "TRUNCATE projects",
        "UPDATE secrets SET owner = 'bob'",
        // keyed: rule columns in the primary key (replica identity DEFAULT):
        // old keys come only when the key changes.
        "BEGIN; UPDATE keyed SET k = 2 WHERE owner = 'alice' AND k = 3; \
         UPDATE keyed SET k = 5 WHERE owner = 'alice' AND k = 1; \
         UPDATE keyed SET v = 'same' WHERE owner = 'alice' AND k = 2; COMMIT",
        "INSERT INTO news VALUES (2, 'last')",
    ];
    for sql in script {
        db.batch_execute(sql).await.expect(sql);
    }

    // Everyone reads `news` (a `true` rule): wait for the last insert.
    let mut got: Vec<Vec<RowOp>> = Vec::new();
    let mut txn_counts = Vec::new();
    for (c, r) in clients.iter_mut() {
        let mut seen = Vec::new();
        loop {
            let f = c.recv_timeout(T).await.expect("frame");
            assert!(
                f.ty == 9 || f.ty == 10,
                "unexpected frame {} {:?}",
                f.ty,
                f.error()
            );
            seen.extend(r.feed(&f));
            if seen.last().is_some_and(|t| {
                rows(r, t)
                    .iter()
                    .any(|(tb, _, v)| tb == "news" && v.get(1) == Some(&Some("last".into())))
            }) {
                break;
            }
        }
        for rel in r.relations.values() {
            assert_ne!(
                rel.table, "secrets",
                "a Relation of an unreadable table was sent"
            );
        }
        txn_counts.push(seen.len());
        got.push(seen.iter().flat_map(|t| rows(r, t)).collect());
    }
    let s = |v: &str| Some(v.to_string());
    let alice = &got[0];
    let expect_alice = vec![
        (
            "todos".to_string(),
            "insert",
            vec![s("1"), s("alice"), s("a1")],
        ),
        ("news".into(), "insert", vec![s("1"), s("hello")]),
        ("projects".into(), "insert", vec![s("1"), s("red"), s("f")]),
        ("projects".into(), "insert", vec![s("2"), s("7"), None]),
        ("projects".into(), "insert", vec![s("3"), None, s("t")]),
        ("levels".into(), "insert", vec![s("1"), s("3")]),
        (
            "todos".into(),
            "insert",
            vec![s("2"), s("alice"), s("moved in")],
        ),
        ("todos".into(), "delete", vec![s("1"), s("alice"), s("a1")]),
        (
            "todos".into(),
            "update",
            vec![s("2"), s("alice"), s("alice edit")],
        ),
        (
            "todos".into(),
            "delete",
            vec![s("2"), s("alice"), s("alice edit")],
        ),
        ("keyed".into(), "insert", vec![s("alice"), s("1"), s("x")]),
        ("projects".into(), "truncate", vec![]),
        ("keyed".into(), "insert", vec![s("alice"), s("2"), s("y")]),
        ("keyed".into(), "delete", vec![s("alice"), s("1"), None]),
        (
            "keyed".into(),
            "update",
            vec![s("alice"), s("2"), s("same")],
        ),
        ("news".into(), "insert", vec![s("2"), s("last")]),
    ];
    assert_eq!(alice, &expect_alice);
    // 15 transactions; alice reads 12 (not: secrets ×2, the bob-only update).
    assert_eq!(txn_counts[0], 12);

    // Bob: `teams` is not an array (IN matches nothing); level "3" equals n = 3.
    let expect_bob = vec![
        (
            "todos".to_string(),
            "insert",
            vec![s("2"), s("bob"), s("b1")],
        ),
        ("news".into(), "insert", vec![s("1"), s("hello")]),
        ("projects".into(), "insert", vec![s("3"), None, s("t")]),
        ("levels".into(), "insert", vec![s("1"), s("3")]),
        ("todos".into(), "delete", vec![s("2"), s("bob"), s("b1")]),
        (
            "todos".into(),
            "insert",
            vec![s("1"), s("bob"), s("moved out")],
        ),
        (
            "todos".into(),
            "update",
            vec![s("1"), s("bob"), s("still bobs")],
        ),
        (
            "todos".into(),
            "delete",
            vec![s("1"), s("bob"), s("still bobs")],
        ),
        ("keyed".into(), "insert", vec![s("bob"), s("1"), s("z")]),
        ("projects".into(), "truncate", vec![]),
        ("news".into(), "insert", vec![s("2"), s("last")]),
    ];
    assert_eq!(&got[1], &expect_bob);

    // Carol: no teams claim, an object level: only news, public projects, truncate.
    let expect_carol = vec![
        ("news".to_string(), "insert", vec![s("1"), s("hello")]),
        ("projects".into(), "insert", vec![s("3"), None, s("t")]),
        ("projects".into(), "truncate", vec![]),
        ("news".into(), "insert", vec![s("2"), s("last")]),
    ];
    assert_eq!(&got[2], &expect_carol);

    // Zoë: a unicode user id; level 3.5 matches no int.
    let expect_zoe = vec![
        (
            "todos".to_string(),
            "insert",
            vec![s("4"), s("zoë 🚀"), s("ünï")],
        ),
        ("news".into(), "insert", vec![s("1"), s("hello")]),
        ("projects".into(), "insert", vec![s("3"), None, s("t")]),
        ("projects".into(), "insert", vec![s("4"), s("blue"), None]),
        ("projects".into(), "truncate", vec![]),
        ("news".into(), "insert", vec![s("2"), s("last")]),
    ];
    assert_eq!(&got[3], &expect_zoe);

    // Alice on `projects` only: its rows and the truncate; then PingResp
    // shows her position past the transactions she was not sent.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|t: &Txn| t.ops.iter().any(|o| matches!(o, Op::Truncate(_))))
    {
        let f = alice_projects.recv_timeout(T).await.expect("frame");
        seen.extend(ap_reader.feed(&f));
    }
    let tables: Vec<String> = ap_reader
        .relations
        .values()
        .map(|r| r.table.clone())
        .collect();
    assert_eq!(tables, vec!["projects".to_string()]);
    assert_eq!(seen.iter().flat_map(|t| rows(&ap_reader, t)).count(), 4);
    let last_seen = seen.last().map(|t| t.lsn).unwrap_or(0);
    let deadline = std::time::Instant::now() + T;
    while head(&mut alice_projects, &mut ap_reader, &mut seen).await <= last_seen {
        assert!(
            std::time::Instant::now() < deadline,
            "PingResp.lsn did not move past the transactions not sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Subscriptions to unreadable or unknown tables.
    for name in [
        "secrets",
        "public.secrets",
        "nope",
        "other.todos",
        "a.b.c",
        "",
    ] {
        let mut c = connect(&p, &alice_tok).await;
        let e = c
            .start_req(pb::StartReplicationReq {
                tables: vec!["todos".into(), name.into()],
                ..Default::default()
            })
            .await
            .expect_err(name);
        assert_eq!(
            e.code,
            pb::ErrorCode::TableNotReadable as i32,
            "{name}: {e:?}"
        );
        assert!(c.closed_within(T).await);
    }
}

/// view_id: stable across restarts and for the same claims; a different one
/// on resume (rules or claims changed) and a refresh changing a used claim
/// are RESYNC_REQUIRED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_id_and_resync() {
    let (pg, dir, mut p, path) = setup(RULES).await;
    let db = pg.client().await;
    let tok = token("alice", json!({"teams": ["red"], "level": 3, "unused": 1}));
    let mut c = connect(&p, &tok).await;
    let resp = c
        .start_req(pb::StartReplicationReq::default())
        .await
        .expect("start");
    let view = resp.view_id.clone();
    db.batch_execute("INSERT INTO todos VALUES (1, 'alice', 'x')")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let t = c.read_txns_within(&mut r, 1, T).await;
    let lsn = t[0].lsn;
    drop(c);

    // Same claims (an unused one differs) → same id, resume accepted.
    let tok2 = token("alice", json!({"level": 3, "teams": ["red"], "unused": 2}));
    let mut c = connect(&p, &tok2).await;
    let resp = c
        .start_req(pb::StartReplicationReq {
            lsn,
            view_id: view.clone(),
            ..Default::default()
        })
        .await
        .expect("resume");
    assert_eq!(resp.view_id, view);

    // A refresh that changes only an unused claim is fine …
    c.send(
        1,
        &pb::AuthReq {
            id: "r1".into(),
            token: token("alice", json!({"teams": ["red"], "level": 3, "unused": 3})),
        },
    )
    .await;
    let f = c.recv_timeout(T).await.expect("AuthResp");
    assert_eq!(f.ty, 2, "{:?}", f.error());
    // … one that changes a used claim ends the session.
    c.send(
        1,
        &pb::AuthReq {
            id: "r2".into(),
            token: token("alice", json!({"teams": ["red", "blue"], "level": 3})),
        },
    )
    .await;
    let f = c.recv_timeout(T).await.expect("ErrorResp");
    let e = f.error().expect("an error");
    assert_eq!(e.code, pb::ErrorCode::ResyncRequired as i32, "{e:?}");
    assert!(c.closed_within(T).await);

    // Other claims → another view_id → RESYNC_REQUIRED on resume.
    let mut c = connect(&p, &token("alice", json!({"teams": ["blue"], "level": 3}))).await;
    let e = c
        .start_req(pb::StartReplicationReq {
            lsn,
            view_id: view.clone(),
            ..Default::default()
        })
        .await
        .expect_err("claims changed");
    assert_eq!(e.code, pb::ErrorCode::ResyncRequired as i32);
    assert!(c.closed_within(T).await);
    // Empty view_id (version 1 client): not checked.
    let mut c = connect(&p, &token("alice", json!({"teams": ["blue"]}))).await;
    c.start_req(pb::StartReplicationReq {
        lsn,
        ..Default::default()
    })
    .await
    .expect("v1 resume");
    drop(c);

    // Restart with the same rules (reformatted): same id.
    std::fs::write(
        &path,
        RULES.replace("owner = auth.user_id", "(OWNER = auth.user_id)"),
    )
    .expect("rewrite");
    p.restart();
    let mut c = connect(&p, &tok).await;
    let resp = c
        .start_req(pb::StartReplicationReq {
            lsn,
            view_id: view.clone(),
            ..Default::default()
        })
        .await
        .expect("resume after restart");
    assert_eq!(resp.view_id, view, "view_id stable across restarts");
    drop(c);

    // Changed rules → RESYNC_REQUIRED.
    std::fs::write(&path, RULES.replace("public = true", "public = false")).expect("rewrite");
    p.restart();
    let mut c = connect(&p, &tok).await;
    let e = c
        .start_req(pb::StartReplicationReq {
            lsn,
            view_id: view.clone(),
            ..Default::default()
        })
        .await
        .expect_err("rules changed");
    assert_eq!(e.code, pb::ErrorCode::ResyncRequired as i32);
    drop(dir);
}

/// Bad rules stop start-up with exit code 2 and one line naming the file,
/// line (and column) and reason; without RULES_FILE a warning and gauge 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors() {
    let pg = PgServer::start();
    pg.client()
        .await
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str)] = &[
        (
            "[[table]]\nname = \"todos\"\nread = \"owner = auth.user_id AND\"\n",
            "bad.toml:3:33: read rule of public.todos: expected a column name",
        ),
        (
            "[[table]]\nname = \"todos\"\nread = \"owner == auth.user_id\"\n",
            "bad.toml:3:16:",
        ),
        ("[[table]]\nname = \"todos\"\n\n[[table]]\nname = \"nope\"\nread = \"true\"\n", "invalid TOML: missing field `read`"),
        (
            "[[table]]\nname = \"todos\"\nread = \"true\"\n\n[[table]]\nname = \"public.nope\"\nread = \"true\"\n",
            "bad.toml:6: table public.nope: no such table",
        ),
        (
            "[[table]]\nname = \"todos\"\nread = \"ownr = auth.user_id\"\n",
            "bad.toml:2: table public.todos: read rule names unknown column \"ownr\"",
        ),
        (
            "[[table]]\nname = \"secrets\"\nread = \"owner = auth.user_id\"\n",
            "bad.toml:2: table public.secrets: updates and deletes would not carry the old value of rule column(s) owner",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = write_rules(dir.path(), "bad.toml", text);
        let (code, err) = run_to_exit(
            &pg,
            &subdir(dir.path(), &format!("d{i}")),
            &[("RULES_FILE", &path)],
        );
        assert_eq!(code, Some(2), "case {i}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("RULES_FILE"))
            .unwrap_or_default();
        assert!(line.contains(want), "case {i}: want {want:?} in:\n{err}");
        assert!(line.contains(&path), "names the file: {line}");
    }
    // Key columns in the replica identity are enough; `true` needs nothing.
    let ok = write_rules(
        dir.path(),
        "ok.toml",
        "[[table]]\nname = \"secrets\"\nread = \"id = auth.n OR true\"\n[[table]]\nname = \"keyed\"\nread = \"owner = auth.user_id AND k = auth.org.k\"\n",
    );
    // Claims under AUTH_JWT_NAMESPACE, a dotted claim path.
    let ns = "https://example.com/jwt";
    let p = Pgsat::start(
        &pg,
        &subdir(dir.path(), "ok"),
        &[("RULES_FILE", &ok), ("AUTH_JWT_NAMESPACE", ns)],
    );
    assert!(p.metrics().contains("pgsat_read_rules_enabled 1"));
    let tok = token(
        "ignored",
        json!({ns: {"user_id": "alice", "org": {"k": 2}}}),
    );
    let mut c = connect(&p, &tok).await;
    c.start_req(pb::StartReplicationReq::default())
        .await
        .expect("start");
    let db = pg.client().await;
    db.batch_execute(
        "INSERT INTO keyed VALUES ('alice', 1, 'a'), ('alice', 2, 'b'), ('bob', 2, 'c')",
    )
    .await
    .expect("insert");
    db.batch_execute("INSERT INTO secrets VALUES (7, 'x')")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let f = c.recv_timeout(T).await.expect("frame");
        assert!(f.ty == 9 || f.ty == 10, "{:?}", f.error());
        seen.extend(r.feed(&f));
    }
    let s = |v: &str| Some(v.to_string());
    let got: Vec<RowOp> = seen.iter().flat_map(|t| rows(&r, t)).collect();
    assert_eq!(
        got,
        vec![
            (
                "keyed".to_string(),
                "insert",
                vec![s("alice"), s("2"), s("b")]
            ),
            ("secrets".to_string(), "insert", vec![s("7"), s("x")]),
        ]
    );
    drop(p);

    // Without RULES_FILE: a warning, gauge 0, every row; `tables` still
    // limits the stream, and an unpublished name is TABLE_NOT_READABLE.
    let p = Pgsat::start(&pg, &subdir(dir.path(), "none"), &[]);
    assert!(p.metrics().contains("pgsat_read_rules_enabled 0"));
    assert!(
        p.output().contains("RULES_FILE is not set"),
        "{}",
        p.output()
    );
    let mut c = connect(&p, &token("bob", json!({}))).await;
    let resp = c
        .start_req(pb::StartReplicationReq {
            tables: vec!["public.news".into()],
            ..Default::default()
        })
        .await
        .expect("start on news");
    assert_eq!(resp.view_id, "");
    db.batch_execute("INSERT INTO secrets VALUES (8, 'y'); INSERT INTO news VALUES (1, 'n')")
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let t = c.read_txns_within(&mut r, 1, T).await;
    assert_eq!(
        rows(&r, &t[0]),
        vec![("news".to_string(), "insert", vec![s("1"), s("n")])]
    );
    assert_eq!(r.relations.len(), 1);
    let mut c = connect(&p, &token("bob", json!({}))).await;
    let e = c
        .start_req(pb::StartReplicationReq {
            tables: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .expect_err("unpublished");
    assert_eq!(e.code, pb::ErrorCode::TableNotReadable as i32);
}

/// One client of the random workload: its replica, what it may read.
struct Replica {
    user: String,
    teams: Vec<String>,
    rows: BTreeMap<i32, (Option<String>, Option<String>, String)>,
    violations: Vec<String>,
    position: u64,
    view_id: String,
    reconnects: usize,
}

impl Replica {
    fn allows(&self, owner: &Option<String>, team: &Option<String>) -> bool {
        owner.as_deref() == Some(self.user.as_str())
            || team.as_ref().is_some_and(|t| self.teams.contains(t))
    }

    fn apply(&mut self, t: &Txn) {
        for op in &t.ops {
            let parse = |row: &pb::Row| {
                let id: i32 = cell(row, 0).expect("id").parse().expect("int id");
                (
                    id,
                    (cell(row, 1), cell(row, 2), cell(row, 3).unwrap_or_default()),
                )
            };
            match op {
                Op::Insert(i) => {
                    let (id, v) = parse(i.row.as_ref().expect("row"));
                    if !self.allows(&v.0, &v.1) {
                        self.violations
                            .push(format!("insert {id} {v:?} at {}", t.lsn));
                    }
                    if self.rows.insert(id, v).is_some() {
                        self.violations
                            .push(format!("insert of present row {id} at {}", t.lsn));
                    }
                }
                Op::Update(u) => {
                    let (id, v) = parse(u.row.as_ref().expect("row"));
                    if !self.allows(&v.0, &v.1) {
                        self.violations
                            .push(format!("update to {id} {v:?} at {}", t.lsn));
                    }
                    if let Some(old) = u.old_row.as_ref() {
                        let (oid, ov) = parse(old);
                        if !self.allows(&ov.0, &ov.1) {
                            self.violations.push(format!("update from {oid} {ov:?}"));
                        }
                        self.rows.remove(&oid);
                    }
                    self.rows.insert(id, v);
                }
                Op::Delete(d) => {
                    let (id, v) = parse(d.old_row.as_ref().expect("row"));
                    if !self.allows(&v.0, &v.1) {
                        self.violations.push(format!("delete of {id} {v:?}"));
                    }
                    if self.rows.remove(&id).is_none() {
                        self.violations
                            .push(format!("delete of absent row {id} at {}", t.lsn));
                    }
                }
                Op::Truncate(_) => self.rows.clear(),
                _ => {}
            }
        }
        self.position = t.lsn;
    }
}

/// Drives one client: connects, reads, and (when `flaky`) disconnects now
/// and then and resumes from its last Commit.lsn with its view_id.
async fn client_task(
    addr: std::net::SocketAddr,
    tok: String,
    rep: Arc<Mutex<Replica>>,
    flaky: bool,
    seed: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut c = RawClient::connect(addr).await;
        c.auth(&tok).await;
        let (lsn, view_id) = {
            let r = rep.lock().expect("replica");
            (r.position, r.view_id.clone())
        };
        let resp = c
            .start_req(pb::StartReplicationReq {
                lsn,
                view_id: view_id.clone(),
                ..Default::default()
            })
            .await
            .expect("start/resume");
        {
            let mut r = rep.lock().expect("replica");
            if view_id.is_empty() {
                r.view_id = resp.view_id.clone();
            } else {
                assert_eq!(resp.view_id, view_id);
            }
            if r.position == 0 {
                r.position = resp.lsn;
            }
        }
        let mut reader = TxnReader::default();
        let budget = if flaky {
            rng.random_range(3..40)
        } else {
            usize::MAX
        };
        let mut got = 0usize;
        loop {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let f = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
                Err(_) => continue,
                Ok(None) => panic!("server closed the stream"),
                Ok(Some(f)) => f,
            };
            assert!(
                f.ty == 9 || f.ty == 10,
                "unexpected frame {} {:?}",
                f.ty,
                f.error()
            );
            for t in reader.feed(&f) {
                rep.lock().expect("replica").apply(&t);
                got += 1;
            }
            if got >= budget && !reader.in_transaction() {
                break;
            }
        }
        rep.lock().expect("replica").reconnects += 1;
    }
}

/// 14 clients of 6 users with team claims (some a single team, some
/// several, one none), half disconnecting and resuming, while two writers
/// insert, move rows between owners and teams, delete, and one truncates:
/// each replica ends equal to SELECT of the rows its rule allows, and no
/// client ever got a row its rule forbids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload() {
    let pg = PgServer::start();
    let db = pg.client().await;
    db.batch_execute(
        "CREATE TABLE users (id text PRIMARY KEY);
         INSERT INTO users SELECT 'u' || g FROM generate_series(0, 5) g;
         CREATE TABLE items (id int PRIMARY KEY, owner text, team text, title text NOT NULL);
         ALTER TABLE items REPLICA IDENTITY FULL;
         CREATE TABLE other (id int PRIMARY KEY, v text);",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write_rules(
        dir.path(),
        "rules.toml",
        "[[table]]\nname = \"items\"\nread = \"owner = auth.user_id OR team IN auth.teams\"\n",
    );
    let p = Pgsat::start(&pg, &subdir(dir.path(), "data"), &[("RULES_FILE", &rules)]);

    let teams_of = |i: usize| -> Vec<String> {
        match i % 4 {
            0 => vec![],
            1 => vec![format!("t{}", i % 3)],
            2 => vec!["t0".into(), "t2".into()],
            _ => vec!["t1".into(), "t2".into(), "t9".into()],
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut reps = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..14usize {
        let user = format!("u{}", i % 6);
        let teams = teams_of(i);
        let rep = Arc::new(Mutex::new(Replica {
            user: user.clone(),
            teams: teams.clone(),
            rows: BTreeMap::new(),
            violations: Vec::new(),
            position: 0,
            view_id: String::new(),
            reconnects: 0,
        }));
        let tok = token(&user, json!({"teams": teams}));
        tasks.push(tokio::spawn(client_task(
            p.tcp,
            tok,
            rep.clone(),
            i % 2 == 1,
            i as u64,
            stop.clone(),
        )));
        reps.push(rep);
    }
    // Every client has started (position set) before writes begin.
    assert!(
        wait_until(T, || {
            let reps = reps.clone();
            async move { reps.iter().all(|r| r.lock().expect("replica").position > 0) }
        })
        .await,
        "clients did not start"
    );

    let writer = |base: i32, seed: u64, truncate_at: Option<usize>| {
        let url = pg.url();
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut ids: Vec<i32> = Vec::new();
            let mut next = base;
            let pick = |rng: &mut rand::rngs::StdRng, n: u32| -> String {
                if rng.random_range(0..10) == 0 {
                    "NULL".into()
                } else {
                    format!(
                        "'{}{}'",
                        if n == 6 { "u" } else { "t" },
                        rng.random_range(0..n)
                    )
                }
            };
            for step in 0..150usize {
                if Some(step) == truncate_at {
                    c.batch_execute("TRUNCATE items").await.expect("truncate");
                    ids.clear();
                    continue;
                }
                let mut sql = String::from("BEGIN;");
                for _ in 0..rng.random_range(1..4) {
                    let k = rng.random_range(0..10);
                    if ids.is_empty() || k < 4 {
                        let (o, t) = (pick(&mut rng, 6), pick(&mut rng, 4));
                        sql.push_str(&format!(
                            "INSERT INTO items VALUES ({next}, {o}, {t}, 'i{next}');"
                        ));
                        ids.push(next);
                        next += 1;
                    } else {
                        let id = ids[rng.random_range(0..ids.len())];
                        match k {
                            4 | 5 => sql.push_str(&format!(
                                "UPDATE items SET owner = {} WHERE id = {id};",
                                pick(&mut rng, 6)
                            )),
                            6 | 7 => sql.push_str(&format!(
                                "UPDATE items SET team = {}, title = title || '+' WHERE id = {id};",
                                pick(&mut rng, 4)
                            )),
                            8 => sql.push_str(&format!(
                                "UPDATE items SET title = 'ü' || title WHERE id = {id};"
                            )),
                            _ => {
                                sql.push_str(&format!("DELETE FROM items WHERE id = {id};"));
                                ids.retain(|x| *x != id);
                            }
                        }
                    }
                }
                if rng.random_range(0..8) == 0 {
                    sql.push_str(&format!("INSERT INTO other VALUES ({next}, 'x');"));
                    next += 1;
                }
                sql.push_str("COMMIT;");
                // A truncate by the other writer may have removed our rows: fine.
                c.batch_execute(&sql).await.expect("workload txn");
            }
        }
    };
    tokio::join!(writer(0, 1, None), writer(1_000_000, 2, Some(60)));

    // Each replica converges to exactly the rows its rule allows.
    let expected_of = |user: String, teams: Vec<String>| {
        let db = &db;
        async move {
            let rows = db
                .query(
                    "SELECT id, owner, team, title FROM items WHERE owner = $1 OR team = ANY($2) ORDER BY id",
                    &[&user, &teams],
                )
                .await
                .expect("select");
            rows.iter()
                .map(|r| (r.get::<_, i32>(0), (r.get(1), r.get(2), r.get(3))))
                .collect::<BTreeMap<i32, (Option<String>, Option<String>, String)>>()
        }
    };
    for rep in &reps {
        let (user, teams) = {
            let r = rep.lock().expect("replica");
            (r.user.clone(), r.teams.clone())
        };
        let expected = expected_of(user.clone(), teams.clone()).await;
        let converged = wait_until(Duration::from_secs(60), || {
            let rep = rep.clone();
            let expected = expected.clone();
            async move { rep.lock().expect("replica").rows == expected }
        })
        .await;
        let r = rep.lock().expect("replica");
        assert!(
            r.violations.is_empty(),
            "{user} {teams:?}: {:?}",
            r.violations
        );
        assert!(
            converged,
            "{user} {teams:?}: replica {:?}\nexpected {:?}",
            r.rows, expected
        );
    }
    // The clients that never disconnect (7) are at the live end: routed.
    assert!(
        wait_until(T, || async { p.metric("pgsat_routed_sessions") >= 7.0 }).await,
        "live filtered sessions are routed: {}",
        p.metric("pgsat_routed_sessions")
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.expect("client task");
    }
    let resumed: usize = reps
        .iter()
        .map(|r| r.lock().expect("replica").reconnects)
        .sum();
    assert!(resumed > 0, "some clients resumed");
}

/// `View::where_sql` (for snapshots) selects in Postgres exactly the rows
/// the stream's rule accepts: booleans as `t`/`f`, numbers in JSON form,
/// NULL matching nothing, unicode, quotes and backslashes in claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_sql_matches_the_rules() {
    use pgsat::rules::{Rules, RulesFile, View};
    let pg = PgServer::start();
    let db = pg.client().await;
    db.batch_execute(SCHEMA).await.expect("schema");
    db.batch_execute(
        "INSERT INTO projects VALUES (10, 'red', false), (11, '7', NULL), (12, NULL, true), (13, 'blue', NULL), (14, NULL, false), (15, 'o''q\\z', false);
         INSERT INTO levels VALUES (1, 3), (2, NULL), (3, 4);
         INSERT INTO todos VALUES (1, 'zoë 🚀', 'x'), (2, NULL, 'y'), (3, 'alice', 'z');
         INSERT INTO keyed VALUES ('alice', 1, 'a'), ('alice', 3, 'b'), ('bob', 2, 'c');",
    )
    .await
    .expect("rows");
    let rules = Rules::from_file(RulesFile::parse("rules.toml", RULES).expect("rules"));
    let ids = |claims: Value, table: &'static str| {
        let db = &db;
        let view = View::new(&rules, &claims);
        async move {
            let cond = view.where_sql("public", table).expect("readable");
            let key = if table == "keyed" { "k" } else { "id" };
            let sql = format!("SELECT {key}::text FROM public.{table} WHERE {cond} ORDER BY 1");
            let rows = db
                .query(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<String>>()
        }
    };
    let alice = json!({"user_id": "alice", "teams": ["red", 7, "o'q\\z"], "level": 3});
    let bob = json!({"user_id": "bob", "teams": "red", "level": "3"});
    let carol = json!({"user_id": "carol", "level": {"n": 3}});
    let zoe = json!({"user_id": "zoë 🚀", "teams": ["blue"], "level": 3.5});
    assert_eq!(
        ids(alice.clone(), "projects").await,
        ["10", "11", "12", "15"]
    );
    assert_eq!(ids(bob.clone(), "projects").await, ["12"]);
    assert_eq!(ids(carol.clone(), "projects").await, ["12"]);
    assert_eq!(ids(zoe.clone(), "projects").await, ["12", "13"]);
    assert_eq!(ids(alice.clone(), "levels").await, ["1"]);
    assert_eq!(ids(bob.clone(), "levels").await, ["1"]);
    assert!(ids(carol.clone(), "levels").await.is_empty());
    assert!(ids(zoe.clone(), "levels").await.is_empty());
    assert_eq!(ids(alice.clone(), "todos").await, ["3"]);
    assert_eq!(ids(zoe.clone(), "todos").await, ["1"]);
    assert!(ids(carol.clone(), "todos").await.is_empty());
    assert_eq!(ids(alice.clone(), "keyed").await, ["1"]);
    assert_eq!(ids(bob.clone(), "keyed").await, ["2"]);
    assert_eq!(ids(carol.clone(), "news").await, Vec::<String>::new());
    let view = View::new(&rules, &alice);
    assert!(view.readable("public", "todos"));
    assert!(!view.readable("public", "secrets"));
    assert_eq!(view.where_sql("public", "secrets"), None);
    assert_eq!(view.where_sql("public", "news").as_deref(), Some("true"));
}

/// Next WebSocket message as a frame (type byte + body).
async fn ws_next<S>(ws: &mut S) -> RawFrame
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures::StreamExt;
    let m = tokio::time::timeout(T, ws.next())
        .await
        .expect("in time")
        .expect("msg")
        .expect("ok");
    let tokio_tungstenite::tungstenite::Message::Binary(b) = m else {
        panic!("expected a binary message, got {m:?}")
    };
    RawFrame {
        ty: b[0],
        body: b.slice(1..),
    }
}

/// A filtered transaction larger than one frame (> 256 KiB of readable rows)
/// arrives whole over WebSocket, one message per frame, without the rows
/// the rule forbids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_filtered_transaction_over_websocket() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let (pg, _dir, p, _) = setup(RULES).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.ws))
        .await
        .expect("ws connect");
    let msg = |ty: u8, body: Vec<u8>| {
        let mut m = vec![ty];
        m.extend(body);
        WsMessage::Binary(m.into())
    };
    let auth = pb::AuthReq {
        id: "w".into(),
        token: token("alice", json!({})),
    };
    ws.send(msg(1, auth.encode_to_vec())).await.expect("send");
    assert_eq!(ws_next(&mut ws).await.ty, 2);
    ws.send(msg(3, pb::StartReplicationReq::default().encode_to_vec()))
        .await
        .expect("send");
    assert_eq!(ws_next(&mut ws).await.ty, 4);
    pg.client()
        .await
        .batch_execute(
            "INSERT INTO todos SELECT g, CASE WHEN g % 2 = 0 THEN 'alice' ELSE 'bob' END, repeat('x', 2000) \
             FROM generate_series(1, 600) g",
        )
        .await
        .expect("insert");
    let mut r = TxnReader::default();
    let mut frames = 0;
    let txn = loop {
        let f = ws_next(&mut ws).await;
        assert!(
            f.ty == 9 || f.ty == 10,
            "unexpected frame {} {:?}",
            f.ty,
            f.error()
        );
        frames += usize::from(f.ty == 10);
        if let Some(t) = r.feed(&f).pop() {
            break t;
        }
    };
    assert!(frames >= 3, "{frames} OpLog frames");
    let got = rows(&r, &txn);
    assert_eq!(got.len(), 300);
    assert!(got
        .iter()
        .all(|(t, op, v)| t == "todos" && *op == "insert" && v[1].as_deref() == Some("alice")));
}

/// `pgsat tail --tables todos` with a token whose rules allow alice's rows:
/// prints alice's todos only (not bob's, not another table's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_tables_prints_only_readable_rows() {
    use std::io::BufRead;
    let (pg, _dir, p, _) = setup(RULES).await;
    let mut tail = Command::new(env!("CARGO_BIN_EXE_pgsat"))
        .args([
            "tail",
            "--url",
            &format!("tcp://{}", p.tcp),
            "--token",
            &token("alice", json!({})),
            "--tables",
            "todos",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tail");
    let out = tail.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let db = pg.client().await;
    // Until tail has connected, writes go unseen: write until one shows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = 0;
    let line = loop {
        assert!(Instant::now() < deadline, "tail printed nothing");
        id += 2;
        db.batch_execute(&format!(
            "INSERT INTO news VALUES ({id}, 'n'); INSERT INTO todos VALUES ({}, 'bob', 'b'); \
             BEGIN; INSERT INTO todos VALUES ({id}, 'alice', 'a'); INSERT INTO todos VALUES ({}, 'bob', 'b'); COMMIT;",
            id + 100_000,
            id + 200_000
        ))
        .await
        .expect("insert");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            break l;
        }
    };
    let _ = tail.kill();
    let _ = tail.wait();
    let v: Value = serde_json::from_str(&line).expect("JSON line");
    let changes = v["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{line}");
    assert_eq!(changes[0]["table"], "todos", "{line}");
    assert_eq!(changes[0]["row"]["owner"], "alice", "{line}");
}

/// Filtered sessions at the live end are routed (woken only for their
/// rows). One that stops reading while its rows keep coming is evicted back
/// to reading the log itself, and when it reads again it gets every one of
/// its transactions exactly once, in order, then joins the router again;
/// another session of the same view and one of another user never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_session_that_stops_reading_catches_up_exactly() {
    let (pg, _dir, p, _) = setup_env(RULES, &[("CLIENT_MAX_LAG_BYTES", "512MiB")]).await;
    let db = pg.client().await;
    let start = |user: &'static str| {
        let p = &p;
        async move {
            let mut c = connect(p, &token(user, json!({}))).await;
            c.start_req(pb::StartReplicationReq::default())
                .await
                .expect("start");
            c
        }
    };
    let mut stalled = start("alice").await;
    let mut alice = start("alice").await;
    let mut bob = start("bob").await;
    assert!(
        wait_until(T, || async { p.metric("pgsat_routed_sessions") == 3.0 }).await,
        "the three sessions were never routed"
    );

    // 40 transactions, each 100 rows of alice (~4 KB each: 16 MB in all,
    // more than socket buffers, queue and mailbox hold) and 100 of bob.
    const TXNS: i32 = 40;
    let write = |round: i32| {
        let db = &db;
        async move {
            db.batch_execute(&format!(
                "INSERT INTO todos SELECT g, CASE WHEN g % 2 = 0 THEN 'alice' ELSE 'bob' END, repeat('r', 4000) \
                 FROM generate_series({}, {}) g",
                round * 1000,
                round * 1000 + 199
            ))
            .await
            .expect("insert");
        }
    };
    // The readers keep up while the writes run; `stalled` reads nothing.
    let mut got: BTreeMap<&str, Vec<Txn>> = BTreeMap::new();
    let (mut ra, mut rb) = (TxnReader::default(), TxnReader::default());
    for round in 0..TXNS {
        write(round).await;
        got.entry("alice")
            .or_default()
            .extend(alice.read_txns_within(&mut ra, 1, T).await);
        got.entry("bob")
            .or_default()
            .extend(bob.read_txns_within(&mut rb, 1, T).await);
    }
    assert!(
        wait_until(T, || async {
            p.metric("pgsat_router_evictions_total") >= 1.0
        })
        .await,
        "the stalled session was never evicted"
    );
    // It reads again: all 40 transactions, once each, in order.
    let mut rs = TxnReader::default();
    let mut seen = stalled.read_txns_within(&mut rs, TXNS as usize, T).await;
    // And joins the router again once caught up; a last transaction reaches all.
    assert!(
        wait_until(T, || async { p.metric("pgsat_routed_sessions") == 3.0 }).await,
        "the caught-up session did not rejoin"
    );
    write(TXNS).await;
    seen.extend(stalled.read_txns_within(&mut rs, 1, T).await);
    got.entry("alice")
        .or_default()
        .extend(alice.read_txns_within(&mut ra, 1, T).await);
    got.entry("bob")
        .or_default()
        .extend(bob.read_txns_within(&mut rb, 1, T).await);

    let check = |who: &str, txns: &[Txn], r: &TxnReader| {
        assert_eq!(txns.len(), TXNS as usize + 1, "{who}: transactions");
        assert!(
            txns.windows(2).all(|w| w[0].lsn < w[1].lsn),
            "{who}: commit order, no duplicate"
        );
        let owner = if who == "bob" { "bob" } else { "alice" };
        for (i, t) in txns.iter().enumerate() {
            let rs = rows(r, t);
            assert_eq!(rs.len(), 100, "{who}: rows of transaction {i}");
            assert!(
                rs.iter().all(|(table, op, v)| table == "todos"
                    && *op == "insert"
                    && v[1].as_deref() == Some(owner)),
                "{who}: only {owner}'s rows"
            );
        }
    };
    check("stalled alice", &seen, &rs);
    check("alice", &got["alice"], &ra);
    check("bob", &got["bob"], &rb);
    assert_eq!(
        seen.iter().map(|t| t.lsn).collect::<Vec<_>>(),
        got["alice"].iter().map(|t| t.lsn).collect::<Vec<_>>(),
        "the stalled session got the same transactions as the live one"
    );
    drop((stalled, alice, bob));
    assert!(
        wait_until(T, || async { p.metric("pgsat_routed_sessions") == 0.0 }).await,
        "closed sessions leave the router"
    );
}

/// Schema changes while sessions are routed: the router recomputes each
/// view's column positions from the new Relation (a dropped column moves
/// the rule's column), every session gets the new definition before rows
/// that use it, and only its own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_sessions_follow_schema_changes() {
    let pg = PgServer::start();
    let db = pg.client().await;
    db.batch_execute(
        "CREATE TABLE users (id text PRIMARY KEY);
         INSERT INTO users VALUES ('alice'), ('bob');
         CREATE TABLE shifty (junk text, owner text, id int PRIMARY KEY);
         ALTER TABLE shifty REPLICA IDENTITY FULL;",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write_rules(
        dir.path(),
        "rules.toml",
        "[[table]]\nname = \"shifty\"\nread = \"owner = auth.user_id\"\n",
    );
    let p = Pgsat::start(&pg, &subdir(dir.path(), "data"), &[("RULES_FILE", &rules)]);
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let mut c = connect(&p, &token(user, json!({}))).await;
        c.start_req(pb::StartReplicationReq::default())
            .await
            .expect("start");
        clients.push((user, c, TxnReader::default()));
    }
    assert!(
        wait_until(T, || async { p.metric("pgsat_routed_sessions") == 2.0 }).await,
        "both sessions routed"
    );
    let steps = [
        "INSERT INTO shifty VALUES ('j', 'alice', 1), ('j', 'bob', 2)",
        "ALTER TABLE shifty DROP COLUMN junk; INSERT INTO shifty VALUES ('alice', 3), ('bob', 4)",
        "ALTER TABLE shifty ADD COLUMN extra text; INSERT INTO shifty VALUES ('bob', 5, 'e'), ('alice', 6, 'e')",
        "UPDATE shifty SET owner = 'bob' WHERE id = 3",
    ];
    // (user, step) → ids inserted (+) or moved out (-) for that user.
    let expected: [[&[i64]; 4]; 2] = [[&[1], &[3], &[6], &[-3]], [&[2], &[4], &[5], &[3]]];
    for (step, sql) in steps.iter().enumerate() {
        db.batch_execute(sql).await.expect("step");
        for (k, (user, c, r)) in clients.iter_mut().enumerate() {
            let txns = c.read_txns_within(r, 1, T).await;
            assert_eq!(txns.len(), 1, "{user} step {step}");
            let mut got: Vec<i64> = Vec::new();
            for (table, op, cells) in rows(r, &txns[0]) {
                assert_eq!(table, "shifty");
                let rel = r
                    .relations
                    .values()
                    .find(|x| x.table == "shifty")
                    .expect("relation");
                let col = |name: &str| {
                    rel.columns
                        .iter()
                        .position(|c| c.name == name)
                        .and_then(|i| cells.get(i).cloned().flatten())
                };
                let id: i64 = col("id").expect("id").parse().expect("int");
                match op {
                    "insert" => {
                        assert_eq!(col("owner").as_deref(), Some(*user), "{user} step {step}");
                        got.push(id);
                    }
                    "delete" => got.push(-id),
                    other => panic!("{user} step {step}: unexpected {other}"),
                }
            }
            assert_eq!(got, expected[k][step], "{user} step {step}");
            let names: Vec<&str> = r
                .relations
                .values()
                .flat_map(|x| x.columns.iter().map(|c| c.name.as_str()))
                .collect();
            let want: &[&str] = match step {
                0 => &["junk", "owner", "id"],
                1 => &["owner", "id"],
                _ => &["owner", "id", "extra"],
            };
            assert_eq!(names, want, "{user} step {step}: definition in force");
        }
    }
}

/// A row moving into a view by UPDATE must arrive whole. Under REPLICA
/// IDENTITY FULL pgsat fills an unchanged TOASTed column from the old row;
/// without it the value is not in the stream, so the session is ended with
/// RESYNC_REQUIRED and a new snapshot brings the row whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_moving_in_without_its_toasted_value_requires_a_resync() {
    const TOAST_RULES: &str = r#"
[[table]]
name = "public.todos"
read = "owner = auth.user_id"

[[table]]
name = "public.keyed"
read = "owner = auth.user_id"
"#;
    let (pg, _dir, p, _) = setup(TOAST_RULES).await;
    let db = pg.client().await;
    // Out of line, uncompressed, for values over ~2 KB.
    db.batch_execute(
        "ALTER TABLE todos ALTER COLUMN title SET STORAGE EXTERNAL;
         ALTER TABLE keyed ALTER COLUMN v SET STORAGE EXTERNAL;
         INSERT INTO todos VALUES (1, 'bob', repeat('t', 5000));
         INSERT INTO keyed VALUES ('bob', 1, repeat('v', 5000));",
    )
    .await
    .expect("rows");
    let mut alice = connect(&p, &token("alice", json!({}))).await;
    alice.start(0).await;
    let mut r = TxnReader::default();

    // todos is REPLICA IDENTITY FULL: the moved-in row comes whole.
    db.batch_execute("UPDATE todos SET owner = 'alice' WHERE id = 1")
        .await
        .expect("move todos");
    let txns = alice.read_txns_within(&mut r, 1, T).await;
    match txns.first().and_then(|t| t.ops.first()) {
        Some(Op::Insert(i)) => {
            let row = i.row.as_ref().expect("row");
            assert_eq!(
                cell(row, 2).map(|v| v.len()),
                Some(5000),
                "the TOASTed title"
            );
            assert!(row.unchanged.iter().all(|&b| b == 0), "no unchanged bit");
        }
        other => panic!("expected the moved-in Insert, got {other:?}"),
    }

    // keyed is REPLICA IDENTITY DEFAULT (owner is in the key): the new row
    // has `v` unchanged and unsent → RESYNC_REQUIRED, nothing of it sent.
    db.batch_execute("UPDATE keyed SET owner = 'alice' WHERE k = 1")
        .await
        .expect("move keyed");
    loop {
        let f = alice.recv_timeout(T).await.expect("RESYNC_REQUIRED");
        if let Some(e) = f.error() {
            assert_eq!(
                e.code,
                pb::ErrorCode::ResyncRequired as i32,
                "{}",
                e.message
            );
            break;
        }
        assert!(r.feed(&f).is_empty(), "no transaction before the error");
    }
    assert!(alice.closed_within(T).await);

    // A snapshot reads the row whole.
    let mut alice = connect(&p, &token("alice", json!({}))).await;
    alice
        .start_req(pb::StartReplicationReq {
            snapshot: true,
            ..Default::default()
        })
        .await
        .expect("snapshot start");
    let mut rels: BTreeMap<u32, String> = BTreeMap::new();
    let mut v_len = None;
    loop {
        let f = alice.recv_timeout(T).await.expect("snapshot frame");
        match f.decoded() {
            Decoded::Relation(rel) => {
                rels.insert(rel.relation_id, rel.table);
            }
            Decoded::SnapshotRows(s) => {
                if rels.get(&s.relation_id).map(String::as_str) == Some("keyed") {
                    v_len = s.rows.first().and_then(|row| cell(row, 2)).map(|v| v.len());
                }
            }
            Decoded::SnapshotEnd(_) => break,
            _ => panic!("unexpected frame {} {:?}", f.ty, f.error()),
        }
    }
    assert_eq!(v_len, Some(5000), "the snapshot has keyed's row whole");
}
