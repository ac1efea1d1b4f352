//! Read rules and initial sync together (protocol 1.1, issue 10), against a
//! real Postgres and the real binary: a snapshot under read rules holds
//! exactly the rows the session's rule allows (and its `tables`), the stream
//! after it stays filtered, `view_id` is the same in StartReplicationResp,
//! SnapshotEnd and on resume; and a random concurrent workload where clients
//! snapshot while writers run, disconnect and resume, and one restarts with
//! a snapshot after RESYNC_REQUIRED.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgsat::protocol::pb;
use pgsat::protocol::pb::trans_op::Op;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::pgsat::{cell, Decoded, Pgsat, RawClient, Txn, TxnReader};
use support::{wait_until, PgServer};

const T: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
    CREATE TABLE users (id text PRIMARY KEY);
    INSERT INTO users VALUES ('alice'), ('bob'), ('carol'), ('zoë 🚀'), ('dave'), ('writer');
    CREATE TABLE todos (id int PRIMARY KEY, owner text, title text);
    ALTER TABLE todos REPLICA IDENTITY FULL;
    CREATE TABLE projects (id int PRIMARY KEY, team text, public boolean);
    ALTER TABLE projects REPLICA IDENTITY FULL;
    CREATE TABLE levels (id int PRIMARY KEY, n int);
    ALTER TABLE levels REPLICA IDENTITY FULL;
    CREATE TABLE news (id int PRIMARY KEY, body text);
    CREATE TABLE secrets (id int PRIMARY KEY, owner text);
";

const RULES: &str = r#"
[[table]]
name = "public.todos"
read = "owner = auth.user_id"

[[table]]
name = "projects"
read = "team IN auth.teams OR public = true"

[[table]]
name = "public.levels"
read = "n = auth.level"

[[table]]
name = "public.news"
read = "true"
"#;

/// An unsigned (alg none) JWT with `user_id` and `extra` claims.
fn token(user: &str, extra: Value) -> String {
    support::pgsat::insecure_token_with(user, 3600, extra)
}

async fn setup(extra_sql: &str) -> (PgServer, tempfile::TempDir, Pgsat) {
    let pg = PgServer::start();
    let db = pg.client().await;
    db.batch_execute(SCHEMA).await.expect("schema");
    db.batch_execute(extra_sql).await.expect("data");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).expect("rules file");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let p = Pgsat::start(
        &pg,
        Path::new(&data),
        &[("RULES_FILE", &rules.display().to_string())],
    );
    (pg, dir, p)
}

async fn connect(p: &Pgsat, tok: &str) -> RawClient {
    let mut c = RawClient::connect(p.tcp).await;
    c.auth(tok).await;
    c
}

/// What one session may read: the rules of RULES resolved by hand for a
/// user's claims (the test's own model, independent of the server's).
#[derive(Clone, Debug)]
struct Who {
    user: String,
    teams: Vec<String>,
    /// `auth.level` as text (a JSON number in its JSON form), if any.
    level: Option<String>,
    /// `tables` of the subscription; empty = every readable table.
    tables: Vec<&'static str>,
}

impl Who {
    fn new(user: &str, teams: &[&str], level: Option<&str>) -> Who {
        Who {
            user: user.into(),
            teams: teams.iter().map(|t| t.to_string()).collect(),
            level: level.map(str::to_string),
            tables: Vec::new(),
        }
    }

    fn claims(&self) -> Value {
        // Team names that are numbers go as JSON numbers (they compare in
        // their JSON form).
        let teams: Vec<Value> = self
            .teams
            .iter()
            .map(|t| {
                t.parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| t.as_str().into())
            })
            .collect();
        let mut c = json!({ "teams": teams });
        if let Some(l) = &self.level {
            c["level"] = serde_json::from_str(l).expect("level is JSON");
        }
        c
    }

    fn token(&self) -> String {
        token(&self.user, self.claims())
    }

    fn subscribed(&self, table: &str) -> bool {
        self.tables.is_empty()
            || self
                .tables
                .iter()
                .any(|t| t.strip_prefix("public.").unwrap_or(t) == table)
    }

    fn table_readable(&self, table: &str) -> bool {
        matches!(table, "todos" | "projects" | "levels" | "news") && self.subscribed(table)
    }

    /// Whether the rule lets this user read `row` of `table`.
    fn allows(&self, table: &str, row: &[Option<String>]) -> bool {
        if !self.table_readable(table) {
            return false;
        }
        match table {
            "todos" => row[1].as_deref() == Some(self.user.as_str()),
            "projects" => {
                row[1].as_ref().is_some_and(|t| self.teams.contains(t))
                    || row[2].as_deref() == Some("t")
            }
            "levels" => row[1].is_some() && row[1] == self.level,
            "news" => true,
            _ => false,
        }
    }

    /// SELECT of the rows this user may read, as text the way pgoutput
    /// writes it (booleans `t`/`f`).
    async fn expected(&self, db: &tokio_postgres::Client) -> Rows {
        let mut out = Rows::new();
        let mut put = |table: &str, rows: Vec<tokio_postgres::Row>| {
            for r in rows {
                let cells: Vec<Option<String>> = (0..r.len()).map(|i| r.get(i)).collect();
                out.insert((table.to_string(), cells[0].clone().expect("id")), cells);
            }
        };
        if self.subscribed("todos") {
            let rows = db
                .query(
                    "SELECT id::text, owner, title FROM todos WHERE owner = $1",
                    &[&self.user],
                )
                .await
                .expect("select todos");
            put("todos", rows);
        }
        if self.subscribed("projects") {
            let rows = db
                .query(
                    "SELECT id::text, team, CASE public WHEN true THEN 't' WHEN false THEN 'f' END
                     FROM projects WHERE team = ANY($1) OR public",
                    &[&self.teams],
                )
                .await
                .expect("select projects");
            put("projects", rows);
        }
        if self.subscribed("levels") {
            let rows = db
                .query(
                    "SELECT id::text, n::text FROM levels WHERE n::text = $1",
                    &[&self.level],
                )
                .await
                .expect("select levels");
            put("levels", rows);
        }
        if self.subscribed("news") {
            let rows = db
                .query("SELECT id::text, body FROM news", &[])
                .await
                .expect("select news");
            put("news", rows);
        }
        out
    }
}

/// (table, id) → cells.
type Rows = BTreeMap<(String, String), Vec<Option<String>>>;

fn cells(row: &pb::Row) -> Vec<Option<String>> {
    (0..row.values.len()).map(|i| cell(row, i)).collect()
}

fn key(table: &str, row: &[Option<String>]) -> (String, String) {
    (table.to_string(), row[0].clone().expect("id"))
}

/// A client's copy of what it may read, with every rule violation noted.
#[derive(Default)]
struct Replica {
    rows: Rows,
    violations: Vec<String>,
}

impl Replica {
    fn check(&mut self, who: &Who, table: &str, row: &[Option<String>], what: &str) {
        if !who.allows(table, row) {
            self.violations
                .push(format!("{}: {what} {table} {row:?}", who.user));
        }
    }

    fn snapshot_rows(&mut self, who: &Who, reader: &TxnReader, m: pb::SnapshotRows) {
        let table = table_of(reader, m.relation_id);
        for r in &m.rows {
            let row = cells(r);
            self.check(who, &table, &row, "snapshot row");
            if self.rows.insert(key(&table, &row), row.clone()).is_some() {
                self.violations
                    .push(format!("{}: snapshot row twice {table} {row:?}", who.user));
            }
        }
    }

    fn apply(&mut self, who: &Who, reader: &TxnReader, t: &Txn) {
        for op in &t.ops {
            match op {
                Op::Insert(i) => {
                    let table = table_of(reader, i.relation_id);
                    let row = cells(i.row.as_ref().expect("row"));
                    self.check(who, &table, &row, "insert");
                    if self.rows.insert(key(&table, &row), row.clone()).is_some() {
                        self.violations.push(format!(
                            "{}: insert of a present row {table} {row:?} at {}",
                            who.user, t.lsn
                        ));
                    }
                }
                Op::Update(u) => {
                    let table = table_of(reader, u.relation_id);
                    let row = cells(u.row.as_ref().expect("row"));
                    self.check(who, &table, &row, "update to");
                    let old = u.old_row.as_ref().map(cells).unwrap_or_else(|| row.clone());
                    self.check(who, &table, &old, "update from");
                    if self.rows.remove(&key(&table, &old)).is_none() {
                        self.violations.push(format!(
                            "{}: update of an absent row {table} {old:?} at {}",
                            who.user, t.lsn
                        ));
                    }
                    self.rows.insert(key(&table, &row), row);
                }
                Op::Delete(d) => {
                    let table = table_of(reader, d.relation_id);
                    let old = cells(d.old_row.as_ref().expect("old row"));
                    self.check(who, &table, &old, "delete of");
                    if self.rows.remove(&key(&table, &old)).is_none() {
                        self.violations.push(format!(
                            "{}: delete of an absent row {table} {old:?} at {}",
                            who.user, t.lsn
                        ));
                    }
                }
                Op::Truncate(tr) => {
                    for id in &tr.relation_ids {
                        let table = table_of(reader, *id);
                        if !who.table_readable(&table) {
                            self.violations
                                .push(format!("{}: truncate of {table}", who.user));
                        }
                        self.rows.retain(|(t, _), _| *t != table);
                    }
                }
                _ => {}
            }
        }
    }
}

fn table_of(r: &TxnReader, id: u32) -> String {
    r.relations
        .get(&id)
        .map(|x| x.table.clone())
        .unwrap_or_else(|| panic!("relation {id} without its Relation"))
}

/// Checks a Relation names a table `who` may read.
fn check_relation(who: &Who, r: &pb::Relation) {
    assert!(
        r.schema == "public" && who.table_readable(&r.table),
        "{}: Relation of {}.{} (unreadable or not subscribed)",
        who.user,
        r.schema,
        r.table
    );
}

/// Reads a snapshot through SnapshotEnd into `rep`.
async fn read_snapshot(
    c: &mut RawClient,
    who: &Who,
    reader: &mut TxnReader,
    rep: &mut Replica,
) -> pb::SnapshotEnd {
    loop {
        let f = c.recv_timeout(T).await.expect("snapshot frame");
        match f.decoded() {
            Decoded::Relation(r) => {
                check_relation(who, &r);
                reader.feed(&f);
            }
            Decoded::SnapshotRows(m) => rep.snapshot_rows(who, reader, m),
            Decoded::OpLog => {
                for t in reader.feed(&f) {
                    rep.apply(who, reader, &t);
                }
            }
            Decoded::SnapshotEnd(end) => {
                assert!(!reader.in_transaction(), "SnapshotEnd inside a transaction");
                return end;
            }
            _ => panic!("unexpected frame {}: {:?}", f.ty, f.error()),
        }
    }
}

/// Reads the stream into `rep` until a `news` row with body `marker`
/// arrived (every test user reads `news`).
async fn read_until_marker(
    c: &mut RawClient,
    who: &Who,
    reader: &mut TxnReader,
    rep: &mut Replica,
    marker: &str,
) {
    loop {
        let f = c.recv_timeout(T).await.expect("stream frame");
        match f.decoded() {
            Decoded::Relation(r) => {
                check_relation(who, &r);
                reader.feed(&f);
            }
            Decoded::OpLog => {
                for t in reader.feed(&f) {
                    rep.apply(who, reader, &t);
                    let seen = t.ops.iter().any(|op| match op {
                        Op::Insert(i) => {
                            table_of(reader, i.relation_id) == "news"
                                && cell(i.row.as_ref().expect("row"), 1).as_deref() == Some(marker)
                        }
                        _ => false,
                    });
                    if seen {
                        return;
                    }
                }
            }
            _ => panic!("unexpected frame {}: {:?}", f.ty, f.error()),
        }
    }
}

/// Changes after each snapshot in `snapshot_under_rules`: moves rows in
/// and out of each user's view, NULLs, unicode, a truncate, unreadable
/// tables, then the `news` marker.
fn writes(round: i32) -> String {
    let b = 1000 * (round + 1);
    format!(
        "INSERT INTO todos VALUES ({b}, 'alice', 'new ✓'), ({b1}, 'zoë 🚀', 'née'), ({b2}, NULL, 'orphan'), ({b3}, 'bob', 'b');
         UPDATE todos SET owner = 'zoë 🚀' WHERE id = {b};
         UPDATE todos SET owner = 'alice', title = title || '!' WHERE id = {b3};
         UPDATE todos SET owner = NULL WHERE id = 2;
         UPDATE todos SET owner = 'bob' WHERE id = 3;
         DELETE FROM todos WHERE id = {b1};
         INSERT INTO projects VALUES ({b}, 'red', NULL), ({b1}, 'grün 🌿', false), ({b2}, NULL, true), ({b3}, '7', false);
         UPDATE projects SET team = 'blue' WHERE id = {b};
         UPDATE projects SET public = true WHERE id = {b1};
         UPDATE projects SET public = NULL WHERE id = 4;
         INSERT INTO secrets VALUES ({b}, 'alice');
         INSERT INTO levels VALUES ({b}, 3), ({b1}, 10), ({b2}, NULL);
         UPDATE levels SET n = 10 WHERE id = {b};
         {trunc}
         INSERT INTO news VALUES ({b}, 'marker {round}');",
        b1 = b + 1,
        b2 = b + 2,
        b3 = b + 3,
        trunc = if round == 2 { "TRUNCATE levels;" } else { "" },
    )
}

/// Users with different claims (an array team claim with a number in it,
/// a numeric claim against an int column, a missing claim, unicode ids and
/// teams) take snapshots with and without `tables`: snapshot + catch-up +
/// the stream after it equals SELECT of the allowed rows; no Relation or
/// row of an unreadable or unsubscribed table arrives; view_id is the same
/// in StartReplicationResp, SnapshotEnd and a plain start, and resuming
/// from SnapshotEnd.lsn with it continues exactly; `tables` naming an
/// unreadable table with a snapshot is TABLE_NOT_READABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_rules() {
    let (pg, _dir, p) = setup(
        "INSERT INTO todos VALUES (1, 'alice', 'a'), (2, 'alice', 'a2'), (3, 'zoë 🚀', 'ü'),
                                  (4, NULL, 'none'), (5, 'Alice', 'case'), (6, 'bob', 'b');
         INSERT INTO projects VALUES (1, 'red', false), (2, '7', NULL), (3, NULL, true),
                                     (4, 'grün 🌿', true), (5, NULL, NULL), (6, 'blue', false);
         INSERT INTO levels VALUES (1, 3), (2, NULL), (3, 10), (4, 30);
         INSERT INTO news VALUES (1, 'hello');
         INSERT INTO secrets VALUES (1, 'alice'), (2, 'bob');",
    )
    .await;
    let db = pg.client().await;

    let mut alice_todos_news = Who::new("alice", &["red", "7"], Some("3"));
    alice_todos_news.tables = vec!["todos", "public.news"];
    let cases = [
        // `teams` with a number in it (7 matches the text '7').
        Who::new("alice", &["red", "7"], Some("3")),
        // Unicode user and team; no `level` claim: no levels row.
        Who::new("zoë 🚀", &["grün 🌿"], None),
        // No teams; a numeric claim against an int column.
        Who::new("bob", &[], Some("10")),
        alice_todos_news,
    ];
    for (round, who) in cases.iter().enumerate() {
        let tok = who.token();
        let tables: Vec<String> = who.tables.iter().map(|t| t.to_string()).collect();
        // The view id as a plain start reports it.
        let view_id = {
            let mut c = connect(&p, &tok).await;
            c.start_req(pb::StartReplicationReq::default())
                .await
                .expect("plain start")
                .view_id
        };
        assert!(view_id.starts_with("v1-"), "{view_id:?}");

        let mut c = connect(&p, &tok).await;
        let resp = c
            .start_req(pb::StartReplicationReq {
                snapshot: true,
                tables: tables.clone(),
                ..Default::default()
            })
            .await
            .expect("snapshot start");
        assert_eq!(
            resp.view_id, view_id,
            "{}: StartReplicationResp.view_id",
            who.user
        );
        let mut reader = TxnReader::default();
        let mut rep = Replica::default();
        let end = read_snapshot(&mut c, who, &mut reader, &mut rep).await;
        assert_eq!(end.view_id, view_id, "{}: SnapshotEnd.view_id", who.user);
        assert!(end.lsn > 0);
        assert_eq!(
            rep.rows,
            who.expected(&db).await,
            "{} {:?}: snapshot",
            who.user,
            who.tables
        );
        let at_end = rep.rows.clone();

        db.batch_execute(&writes(round as i32))
            .await
            .expect("writes");
        let marker = format!("marker {round}");
        read_until_marker(&mut c, who, &mut reader, &mut rep, &marker).await;
        let expected = who.expected(&db).await;
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
        assert_eq!(
            rep.rows, expected,
            "{} {:?}: after the snapshot",
            who.user, who.tables
        );
        drop(c);

        // Resume from SnapshotEnd.lsn with the view id: the same changes.
        let mut c = connect(&p, &tok).await;
        let resp = c
            .start_req(pb::StartReplicationReq {
                lsn: end.lsn,
                tables,
                view_id: view_id.clone(),
                ..Default::default()
            })
            .await
            .expect("resume from SnapshotEnd.lsn");
        assert_eq!(resp.view_id, view_id);
        let mut resumed = Replica {
            rows: at_end,
            violations: Vec::new(),
        };
        let mut reader = TxnReader::default();
        read_until_marker(&mut c, who, &mut reader, &mut resumed, &marker).await;
        assert!(resumed.violations.is_empty(), "{:?}", resumed.violations);
        assert_eq!(resumed.rows, expected, "{}: resumed", who.user);
    }

    // `tables` naming an unreadable (unlisted) table with a snapshot.
    let alice = Who::new("alice", &["red"], None).token();
    for tables in [vec!["secrets"], vec!["todos", "public.secrets"]] {
        let mut c = connect(&p, &alice).await;
        let e = c
            .start_req(pb::StartReplicationReq {
                snapshot: true,
                tables: tables.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect_err("unreadable table");
        assert_eq!(
            e.code,
            pb::ErrorCode::TableNotReadable as i32,
            "{tables:?}: {e:?}"
        );
        assert!(c.closed_within(T).await, "closed after TABLE_NOT_READABLE");
    }
}

/// One client of the random workload.
struct State {
    who: Who,
    rep: Replica,
    /// Last Commit.lsn or SnapshotEnd.lsn; 0 = start with a snapshot.
    position: u64,
    view_id: String,
    reconnects: usize,
    snapshots: usize,
    resyncs: usize,
}

/// Drives one client: a snapshot first (again after a cut snapshot or a
/// RESYNC_REQUIRED), then the stream; when `flaky`, disconnects now and
/// then (mid-snapshot too) and resumes with (lsn, view_id). With
/// `resync_to`, refreshes its token in band with those (changed) claims once
/// its first snapshot is done, expects RESYNC_REQUIRED, and starts over
/// with a snapshot under the new claims.
async fn workload_client(
    addr: std::net::SocketAddr,
    st: Arc<Mutex<State>>,
    flaky: bool,
    mut resync_to: Option<Who>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    'session: while !stop.load(Ordering::SeqCst) {
        let (tok, position, view_id, tables) = {
            let s = st.lock().expect("state");
            let tables: Vec<String> = s.who.tables.iter().map(|t| t.to_string()).collect();
            (s.who.token(), s.position, s.view_id.clone(), tables)
        };
        let mut c = RawClient::connect(addr).await;
        c.auth(&tok).await;
        let snapshot = position == 0;
        let resp = c
            .start_req(pb::StartReplicationReq {
                lsn: position,
                tables,
                snapshot,
                view_id: if snapshot { String::new() } else { view_id },
            })
            .await
            .expect("start or resume");
        {
            let mut s = st.lock().expect("state");
            if snapshot {
                s.rep.rows.clear();
                s.view_id = resp.view_id;
                s.snapshots += 1;
            } else {
                assert_eq!(resp.view_id, s.view_id, "{}: resumed view_id", s.who.user);
            }
        }
        let mut reader = TxnReader::default();
        let mut in_snapshot = snapshot;
        let budget = if flaky {
            rng.random_range(3..40)
        } else {
            usize::MAX
        };
        let (mut got, mut after_end, mut refreshed) = (0usize, 0usize, false);
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let (f, idle) = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
                Err(_) => (None, true),
                Ok(None) => panic!("server closed the stream"),
                Ok(Some(f)) => (Some(f), false),
            };
            if let Some(f) = f {
                let mut s = st.lock().expect("state");
                let s = &mut *s;
                match f.decoded() {
                    Decoded::Relation(r) => {
                        check_relation(&s.who, &r);
                        reader.feed(&f);
                    }
                    Decoded::SnapshotRows(m) => {
                        assert!(in_snapshot, "SnapshotRows after SnapshotEnd");
                        s.rep.snapshot_rows(&s.who, &reader, m);
                        got += 1;
                    }
                    Decoded::OpLog => {
                        for t in reader.feed(&f) {
                            s.rep.apply(&s.who, &reader, &t);
                            if !in_snapshot {
                                s.position = t.lsn;
                                after_end += 1;
                            }
                            got += 1;
                        }
                    }
                    Decoded::SnapshotEnd(end) => {
                        assert!(in_snapshot && !reader.in_transaction());
                        assert_eq!(
                            end.view_id, s.view_id,
                            "{}: SnapshotEnd.view_id",
                            s.who.user
                        );
                        s.position = end.lsn;
                        in_snapshot = false;
                    }
                    Decoded::Error(e) => {
                        assert!(
                            refreshed && e.code == pb::ErrorCode::ResyncRequired as i32,
                            "{}: unexpected error {e:?}",
                            s.who.user
                        );
                        s.who = resync_to.take().expect("resync claims");
                        s.position = 0;
                        s.view_id.clear();
                        s.resyncs += 1;
                        continue 'session;
                    }
                    Decoded::Other(ty) => panic!("unexpected frame {ty}"),
                }
            }
            if let Some(new) = &resync_to {
                if !refreshed && !in_snapshot && (after_end >= 3 || idle) {
                    let req = pb::AuthReq {
                        id: "refresh".into(),
                        token: new.token(),
                    };
                    c.send(1, &req).await;
                    refreshed = true;
                }
            }
            if got >= budget && !reader.in_transaction() && !refreshed {
                break;
            }
        }
        let mut s = st.lock().expect("state");
        s.reconnects += 1;
        if in_snapshot {
            // Cut before SnapshotEnd: discard and start over.
            s.position = 0;
        }
    }
}

/// The issue's combined workload: two writers insert, move rows between
/// owners and teams (NULLs and unicode included), delete, and one
/// truncates, while 20 clients of different users and claims (some with
/// `tables`) run: all start with snapshots, four of them only once the
/// writes are under way; half disconnect now and then (mid-snapshot too)
/// and resume with (lsn, view_id); one refreshes its token with changed
/// teams, gets RESYNC_REQUIRED and starts over with a snapshot. At the end
/// each replica equals SELECT of its allowed rows, and no client ever got a
/// row (or Relation, or Truncate) its rule forbade at that row's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_resumes_and_resync_under_concurrent_writes() {
    let (pg, _dir, p) = setup(
        "INSERT INTO todos SELECT g, (ARRAY['alice','bob','carol','zoë 🚀','dave',NULL])[1 + g % 6], 't' || g
           FROM generate_series(1, 120) g;
         INSERT INTO projects SELECT g, (ARRAY['t0','t1','t2','t3','grün 🌿',NULL])[1 + g % 6],
                (ARRAY[true,false,NULL])[1 + g % 3]
           FROM generate_series(1, 60) g;
         INSERT INTO news VALUES (1, 'hello');",
    )
    .await;
    let db = pg.client().await;

    let mut plans: Vec<(Who, bool, Option<Who>, bool)> = vec![
        (Who::new("alice", &["t0"], None), false, None, false),
        (Who::new("bob", &["t1", "t2"], None), true, None, false),
        (Who::new("carol", &[], None), true, None, false),
        (
            Who::new("zoë 🚀", &["grün 🌿", "t3"], None),
            false,
            None,
            false,
        ),
        (
            Who::new("dave", &["t0", "t1", "t2", "t3"], None),
            true,
            None,
            false,
        ),
        (Who::new("alice", &["t2"], None), true, None, false),
        (Who::new("bob", &["t3"], None), false, None, true),
        (Who::new("carol", &["t1"], None), true, None, true),
        (Who::new("zoë 🚀", &[], None), false, None, true),
        (
            Who::new("dave", &["t2"], None),
            false,
            Some(Who::new("dave", &["t0", "grün 🌿"], None)),
            false,
        ),
    ];
    // Ten more: the same users with other claims and subscriptions, so
    // that views are shared by some sessions and not by others.
    plans.extend([
        (Who::new("alice", &["t0"], None), true, None, true),
        (Who::new("bob", &["t1", "t2"], None), false, None, false),
        (Who::new("carol", &["grün 🌿"], None), true, None, false),
        (Who::new("zoë 🚀", &["t1"], None), true, None, true),
        (Who::new("dave", &["t3", "t9"], None), false, None, true),
        (Who::new("alice", &[], None), false, None, false),
        (
            Who::new("bob", &["t0", "t1", "t2", "t3"], None),
            true,
            None,
            true,
        ),
        (Who::new("carol", &["t2", "t3"], None), false, None, false),
        (Who::new("zoë 🚀", &["grün 🌿"], None), true, None, false),
        (Who::new("dave", &[], None), true, None, true),
    ]);
    plans[4].0.tables = vec!["todos"];
    plans[5].0.tables = vec!["projects", "public.news"];
    plans[12].0.tables = vec!["public.todos"];
    plans[16].0.tables = vec!["projects"];

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let mut states = Vec::new();
    let mut tasks = Vec::new();
    for (i, (who, flaky, resync_to, delayed)) in plans.into_iter().enumerate() {
        let st = Arc::new(Mutex::new(State {
            who,
            rep: Replica::default(),
            position: 0,
            view_id: String::new(),
            reconnects: 0,
            snapshots: 0,
            resyncs: 0,
        }));
        states.push(st.clone());
        let (stop, progress, addr) = (stop.clone(), progress.clone(), p.tcp);
        tasks.push(tokio::spawn(async move {
            if delayed {
                // Snapshot while the writers are under way.
                let p = progress.clone();
                assert!(
                    wait_until(Duration::from_secs(120), || {
                        let p = p.clone();
                        async move { p.load(Ordering::SeqCst) >= 40 }
                    })
                    .await,
                    "writers did not progress"
                );
            }
            workload_client(addr, st, flaky, resync_to, i as u64, stop).await
        }));
    }

    let writer = |base: i32, seed: u64, truncate_at: Option<usize>| {
        let url = pg.url();
        let progress = progress.clone();
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let owners = ["'alice'", "'bob'", "'carol'", "'zoë 🚀'", "'dave'", "NULL"];
            let teams = ["'t0'", "'t1'", "'t2'", "'t3'", "'grün 🌿'", "NULL"];
            let publics = ["true", "false", "NULL"];
            let mut next = base;
            for step in 0..150usize {
                progress.fetch_add(1, Ordering::SeqCst);
                if Some(step) == truncate_at {
                    c.batch_execute("TRUNCATE todos").await.expect("truncate");
                    continue;
                }
                let mut sql = String::from("BEGIN;");
                for _ in 0..rng.random_range(1..4) {
                    let id = rng.random_range(1..(next - base + 120).max(2));
                    let id = if id > 120 { base + id - 120 } else { id };
                    let o = owners[rng.random_range(0..owners.len())];
                    let t = teams[rng.random_range(0..teams.len())];
                    let pu = publics[rng.random_range(0..publics.len())];
                    sql.push_str(&match rng.random_range(0..10) {
                        0 | 1 => {
                            next += 1;
                            format!("INSERT INTO todos VALUES ({next}, {o}, 'n{next}');")
                        }
                        2 => {
                            next += 1;
                            format!("INSERT INTO projects VALUES ({next}, {t}, {pu});")
                        }
                        3 | 4 => format!("UPDATE todos SET owner = {o} WHERE id = {id};"),
                        5 => format!("UPDATE todos SET title = title || 'ü' WHERE id = {id};"),
                        6 => format!("UPDATE projects SET team = {t} WHERE id = {id};"),
                        7 => format!("UPDATE projects SET public = {pu} WHERE id = {id};"),
                        8 => format!("DELETE FROM todos WHERE id = {id};"),
                        _ => format!("DELETE FROM projects WHERE id = {id};"),
                    });
                }
                if rng.random_range(0..3) == 0 {
                    next += 1;
                    sql.push_str(&format!("INSERT INTO news VALUES ({next}, 'n');"));
                }
                sql.push_str("COMMIT;");
                c.batch_execute(&sql).await.expect("workload txn");
            }
        }
    };
    tokio::join!(writer(10_000, 1, None), writer(1_000_000, 2, Some(60)));

    // The resyncing client (the tenth) is under its new claims before comparing.
    let last = states[9].clone();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let last = last.clone();
            async move { last.lock().expect("state").resyncs == 1 }
        })
        .await,
        "RESYNC_REQUIRED after the refresh with changed teams"
    );
    for st in &states {
        let who = st.lock().expect("state").who.clone();
        let expected = who.expected(&db).await;
        let converged = wait_until(Duration::from_secs(60), || {
            let st = st.clone();
            let expected = expected.clone();
            async move { st.lock().expect("state").rep.rows == expected }
        })
        .await;
        let s = st.lock().expect("state");
        assert!(s.rep.violations.is_empty(), "{:?}", s.rep.violations);
        assert!(
            converged,
            "{} {:?} {:?}: replica {:?}\nexpected {:?}",
            s.who.user, s.who.teams, s.who.tables, s.rep.rows, expected
        );
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("client task");
    }
    let count = |f: fn(&State) -> usize| -> usize {
        states.iter().map(|s| f(&s.lock().expect("state"))).sum()
    };
    assert_eq!(count(|s| s.resyncs), 1, "one client resynced");
    assert!(count(|s| s.reconnects) > 0, "some clients resumed");
    assert!(
        count(|s| s.snapshots) >= 21,
        "every client took a snapshot, the resynced one twice"
    );
}
