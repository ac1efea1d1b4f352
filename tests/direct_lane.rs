//! The direct lane (server/direct.rs): the replication task writes new
//! transactions straight to sessions waiting at the log's end. What those
//! sessions receive must be exactly what the others (a WebSocket session,
//! which never takes a seat) receive: each transaction once, in order,
//! Relations before use — and nothing for a user whose row was deleted.

mod support;

use std::time::Duration;

use pgsat::protocol::pb;
use support::pgsat::{insecure_token, start_with_schema, Pgsat, RawClient, Txn, TxnReader};
use support::PgServer;

const T: Duration = Duration::from_secs(20);

const SCHEMA: &str = "
    CREATE TABLE users (id text PRIMARY KEY);
    INSERT INTO users VALUES ('alice'), ('bob');
    CREATE TABLE todos (id serial PRIMARY KEY, owner text, title text);
    CREATE TABLE notes (id serial PRIMARY KEY, body text);
";

async fn setup(extra: &[(&str, &str)]) -> (PgServer, tempfile::TempDir, Pgsat) {
    start_with_schema(SCHEMA, extra).await
}

struct Reader {
    name: &'static str,
    c: RawClient,
    r: TxnReader,
    got: Vec<Txn>,
}

impl Reader {
    async fn new(p: &Pgsat, ws: bool, user: &str, name: &'static str) -> Reader {
        let mut c = if ws {
            RawClient::connect_ws(p.ws).await
        } else {
            RawClient::connect(p.tcp).await
        };
        c.auth(&insecure_token(user, 3600)).await;
        c.start(0).await;
        Reader {
            name,
            c,
            r: TxnReader::default(),
            got: Vec::new(),
        }
    }

    /// Reads `n` more transactions (each frame within 10 s).
    async fn read(&mut self, n: usize) {
        let want = self.got.len() + n;
        while self.got.len() < want {
            let f = tokio::time::timeout(T, self.c.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: {} of {want} transactions, then nothing",
                        self.name,
                        self.got.len()
                    )
                })
                .expect("connection open");
            assert!(f.ty == 9 || f.ty == 10, "{}: frame {}", self.name, f.ty);
            self.got.extend(self.r.feed(&f));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_served_by_the_lane_get_what_the_others_get() {
    lane_serves_what_the_others_get(&[]).await;
}

/// The same with the replication task and the sessions on several threads:
/// the lane and a session's own wake-up run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_four_worker_threads() {
    lane_serves_what_the_others_get(&[("WORKER_THREADS", "4")]).await;
}

async fn lane_serves_what_the_others_get(extra: &[(&str, &str)]) {
    let (pg, _dir, p) = setup(extra).await;
    let db = pg.client().await;
    // Two plain TCP sessions (seats) and a WebSocket one (no seat).
    let mut readers = [
        Reader::new(&p, false, "alice", "tcp alice").await,
        Reader::new(&p, false, "bob", "tcp bob").await,
        Reader::new(&p, true, "alice", "ws alice").await,
    ];
    let before = p.metric("pgsat_direct_transactions_total");

    // One at a time, each read by everyone before the next: the sessions
    // wait at the end when each commit arrives. The first of each table
    // needs its Relation, which only the session itself sends.
    let mut expected = 0;
    for i in 0..30 {
        let table = if i % 10 == 9 { "notes" } else { "todos" };
        let sql = if table == "notes" {
            format!("INSERT INTO notes (body) VALUES ('n{i}')")
        } else {
            format!("INSERT INTO todos (owner, title) VALUES ('alice', 't{i}')")
        };
        db.batch_execute(&sql).await.expect("insert");
        expected += 1;
        for r in readers.iter_mut() {
            r.read(1).await;
        }
    }
    // A burst (pipelined on one connection: each statement its own
    // transaction, committed back to back), with a definition change in
    // the middle: the lane stops at the new Relation, the sessions send
    // it, then the lane takes over again.
    let mut burst = Vec::new();
    for i in 0..100 {
        if i == 50 {
            burst.push("ALTER TABLE todos ADD COLUMN done boolean DEFAULT false".to_string());
        }
        burst.push(format!(
            "INSERT INTO todos (owner, title) VALUES ('bob', 'b{i}')"
        ));
    }
    for res in futures::future::join_all(burst.iter().map(|q| db.batch_execute(q))).await {
        res.expect("burst");
    }
    expected += 100;
    for r in readers.iter_mut() {
        let n = expected - r.got.len();
        r.read(n).await;
    }
    // And one at a time again, after the change.
    for i in 0..10 {
        db.batch_execute(&format!(
            "INSERT INTO todos (owner, title, done) VALUES ('bob', 'a{i}', true)"
        ))
        .await
        .expect("insert");
        expected += 1;
        for r in readers.iter_mut() {
            r.read(1).await;
        }
    }

    let reference = &readers[2].got;
    assert_eq!(reference.len(), expected);
    assert!(
        reference.windows(2).all(|w| w[0].lsn < w[1].lsn),
        "commit order"
    );
    for (i, r) in readers.iter().enumerate() {
        assert_eq!(
            &r.got, reference,
            "reader {i} differs from the WebSocket one"
        );
        // Each definition once per session, and again after the change:
        // users is never used, todos twice, notes once.
        assert_eq!(r.r.relation_frames, 3, "reader {i}: Relation frames");
    }
    // Nothing else is pending: a ping comes back next.
    for r in readers.iter_mut() {
        r.c.send(7, &pb::PingReq {}).await;
        let f = r.c.recv_timeout(T).await.expect("PingResp");
        assert_eq!(f.ty, 8, "a PingResp, nothing else, after the last txn");
    }
    // The lane did serve (each sequential commit found two sessions waiting
    // in all but the rarest schedules; one is enough to show it works).
    let direct = p.metric("pgsat_direct_transactions_total") - before;
    eprintln!("direct transactions: {direct}");
    assert!(direct >= 1.0, "the direct lane was never used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reaches_a_deleted_user_after_the_deleting_transaction() {
    let (pg, _dir, p) = setup(&[]).await;
    let db = pg.client().await;
    let mut bob = Reader::new(&p, false, "bob", "bob").await;
    // Bob's session has sent the users and todos definitions: the lane may
    // write the deletion and the next todos transaction to it.
    db.batch_execute("INSERT INTO users VALUES ('carol')")
        .await
        .expect("insert user");
    bob.read(1).await;
    for i in 0..5 {
        db.batch_execute(&format!(
            "INSERT INTO todos (owner, title) VALUES ('bob', 'before {i}')"
        ))
        .await
        .expect("insert");
        bob.read(1).await;
    }
    // The deletion and, right behind it (pipelined), another transaction.
    let (deleted, after) = tokio::join!(
        db.batch_execute("DELETE FROM users WHERE id = 'bob'"),
        db.batch_execute("INSERT INTO todos (owner, title) VALUES ('bob', 'after')"),
    );
    deleted.expect("delete");
    after.expect("insert");
    loop {
        let f = bob.c.recv_timeout(T).await.expect("USER_DELETED");
        if let Some(e) = f.error() {
            assert_eq!(e.code, pb::ErrorCode::UserDeleted as i32, "{}", e.message);
            break;
        }
        for t in bob.r.feed(&f) {
            assert!(
                !t.ops
                    .iter()
                    .any(|op| matches!(op, pb::trans_op::Op::Insert(_))),
                "a transaction after the deletion reached the deleted user"
            );
        }
    }
    assert!(bob.c.closed_within(T).await);
}

/// Seats go to sessions waiting at the end: a fifth session gets none
/// while four hold them, and takes one when they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_seat_goes_to_a_session_that_had_none() {
    let (pg, _dir, p) = setup(&[]).await;
    let db = pg.client().await;
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(Reader::new(&p, false, "alice", "seated").await);
    }
    let mut fifth = Reader::new(&p, false, "bob", "fifth").await;
    let insert = |i: usize| format!("INSERT INTO todos (owner, title) VALUES ('bob', 'f{i}')");
    for i in 0..5 {
        db.batch_execute(&insert(i)).await.expect("insert");
        for r in first.iter_mut() {
            r.read(1).await;
        }
        fifth.read(1).await;
    }
    drop(first);
    // Everyone else gone (closed sessions leave their seats).
    assert!(
        support::wait_until(T, || async {
            p.metric("pgsat_sessions{state=\"streaming\"}") == 1.0
        })
        .await,
        "the four sessions did not close"
    );
    let before = p.metric("pgsat_direct_transactions_total");
    for i in 5..25 {
        db.batch_execute(&insert(i)).await.expect("insert");
        fifth.read(1).await;
    }
    assert_eq!(fifth.got.len(), 25);
    assert!(fifth.got.windows(2).all(|w| w[0].lsn < w[1].lsn));
    let direct = p.metric("pgsat_direct_transactions_total") - before;
    assert!(direct >= 1.0, "the fifth session never took a seat");
}
