//! The users-row check against a real Postgres: found / USER_NOT_FOUND /
//! INTERNAL (never USER_NOT_FOUND on a database failure), key types, quoting,
//! and start-up errors naming AUTH_USERS_TABLE / AUTH_USERS_ID_COLUMN.

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use pgsat::auth::{mint_token, AuthError, AuthInitError, Authenticator};
use pgsat::config::{AuthMode, AuthSettings};
use pgsat::protocol::pb::ErrorCode;
use support::{PgServer, StopMode};

const SECRET: &str = "users-test-secret";

fn settings(table: &str, column: &str) -> AuthSettings {
    AuthSettings {
        mode: AuthMode::Secure,
        alg: Some(Algorithm::HS256),
        key: Some(SECRET.into()),
        jwks_url: None,
        iss: None,
        aud: None,
        namespace: None,
        leeway: Duration::ZERO,
        users_table: table.into(),
        users_id_column: column.into(),
        auth_timeout: Duration::from_secs(5),
        refresh_grace: Duration::from_secs(30),
    }
}

fn tok(user_id: &str) -> String {
    mint_token(
        user_id,
        Duration::from_secs(3600),
        Some(Algorithm::HS256),
        Some(SECRET),
        Default::default(),
    )
    .unwrap()
}

fn pg_config(pg: &PgServer) -> tokio_postgres::Config {
    pg.url().parse().unwrap()
}

async fn start(pg: &PgServer, table: &str, column: &str) -> Result<Authenticator, AuthInitError> {
    Authenticator::new(&settings(table, column), pg_config(pg).into()).await
}

async fn code(a: &Authenticator, user_id: &str) -> Option<ErrorCode> {
    a.authenticate(&tok(user_id)).await.err().map(|e| e.code())
}

const UUID1: &str = "550e8400-e29b-41d4-a716-446655440000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_key_found_missing_invalid_and_deleted() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    pg.execute(&format!(
        "CREATE TABLE users (id uuid PRIMARY KEY, name text); INSERT INTO users VALUES ('{UUID1}', 'a')"
    ));
    let a = start(&pg, "users", "id").await.unwrap();

    let p = a.authenticate(&tok(UUID1)).await.unwrap();
    assert_eq!(p.user_id, UUID1);
    assert!(p.expires_at.unwrap() > 0);
    // Same uuid, other spelling: not the key's text, so not this user (the
    // rules and deletion notices compare the key's text).
    assert_eq!(
        code(&a, &UUID1.to_uppercase()).await,
        Some(ErrorCode::UserNotFound)
    );

    assert_eq!(
        code(&a, "00000000-0000-0000-0000-000000000000").await,
        Some(ErrorCode::UserNotFound)
    );
    // Not a uuid at all: no row can have it; not a database error.
    for bad in [
        "abc",
        "' OR 1=1 --",
        "1; DROP TABLE users",
        &"9".repeat(1000),
    ] {
        assert_eq!(code(&a, bad).await, Some(ErrorCode::UserNotFound), "{bad}");
    }
    assert_eq!(pg.execute("SELECT count(*) FROM users").trim(), "1");

    pg.execute(&format!("DELETE FROM users WHERE id = '{UUID1}'"));
    assert_eq!(code(&a, UUID1).await, Some(ErrorCode::UserNotFound));

    // Token checks come before the database.
    let expired = mint_token(
        UUID1,
        Duration::from_secs(60),
        Some(Algorithm::HS256),
        Some(SECRET),
        serde_json::json!({"exp": 1000})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    assert_eq!(
        a.authenticate(&expired).await.unwrap_err(),
        AuthError::Expired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_schema_qualified_text_and_integer_keys() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    pg.execute(
        r#"CREATE SCHEMA app;
           CREATE TABLE app."Accounts" ("UserKey" text PRIMARY KEY);
           INSERT INTO app."Accounts" VALUES ('alice'), ('o''brien'), ('Bob');
           CREATE TABLE nums (id bigint PRIMARY KEY); INSERT INTO nums VALUES (42);"#,
    );
    let a = start(&pg, r#"app."Accounts""#, r#""UserKey""#)
        .await
        .unwrap();
    assert_eq!(code(&a, "alice").await, None);
    assert_eq!(code(&a, "o'brien").await, None);
    assert_eq!(code(&a, "Bob").await, None);
    assert_eq!(code(&a, "bob").await, Some(ErrorCode::UserNotFound));
    assert_eq!(code(&a, "alice ").await, Some(ErrorCode::UserNotFound));

    let n = start(&pg, "public.nums", "ID").await.unwrap();
    assert_eq!(code(&n, "42").await, None);
    assert_eq!(code(&n, "43").await, Some(ErrorCode::UserNotFound));
    assert_eq!(code(&n, "4x2").await, Some(ErrorCode::UserNotFound));
    assert_eq!(code(&n, "042").await, Some(ErrorCode::UserNotFound));
    assert_eq!(code(&n, "+42").await, Some(ErrorCode::UserNotFound));
    assert_eq!(
        code(&n, "99999999999999999999999").await,
        Some(ErrorCode::UserNotFound)
    );

    // Many concurrent lookups over the small pool.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let user = if i % 2 == 0 { "alice" } else { "nobody" };
            (i, code(&a, user).await)
        }));
    }
    for t in tasks {
        let (i, c) = t.await.unwrap();
        let want = if i % 2 == 0 {
            None
        } else {
            Some(ErrorCode::UserNotFound)
        };
        assert_eq!(c, want, "lookup {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_or_column_is_a_startup_error() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    pg.execute("CREATE TABLE users (id text PRIMARY KEY)");

    let e = start(&pg, "members", "id").await.unwrap_err();
    assert!(
        matches!(e, AuthInitError::UsersTableMissing { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("AUTH_USERS_TABLE"), "{e}");

    let e = start(&pg, "nope.users", "id").await.unwrap_err();
    assert!(e.to_string().contains("AUTH_USERS_TABLE"), "{e}");

    let e = start(&pg, "a.b.c.d", "id").await.unwrap_err();
    assert!(e.to_string().contains("AUTH_USERS_TABLE"), "{e}");

    let e = start(&pg, "users", "user_id").await.unwrap_err();
    assert!(
        matches!(e, AuthInitError::UsersColumnMissing { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("AUTH_USERS_ID_COLUMN"), "{e}");

    // System columns are not keys.
    let e = start(&pg, "users", "ctid").await.unwrap_err();
    assert!(e.to_string().contains("AUTH_USERS_ID_COLUMN"), "{e}");

    assert!(start(&pg, "users", "id").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failure_is_internal_never_user_not_found() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    pg.execute("CREATE TABLE users (id text PRIMARY KEY); INSERT INTO users VALUES ('u1')");
    let a = start(&pg, "users", "id").await.unwrap();
    assert_eq!(code(&a, "u1").await, None);

    // The table disappears under a prepared statement: an error, not "no row".
    pg.execute("ALTER TABLE users RENAME TO users_old");
    for _ in 0..4 {
        // every pool slot
        assert_eq!(code(&a, "u1").await, Some(ErrorCode::Internal));
    }
    pg.execute("ALTER TABLE users_old RENAME TO users");
    assert_eq!(code(&a, "u1").await, None);

    // The server is gone.
    pg.stop_async(StopMode::Immediate).await;
    for _ in 0..4 {
        assert_eq!(code(&a, "u1").await, Some(ErrorCode::Internal));
        assert_eq!(code(&a, "nobody").await, Some(ErrorCode::Internal));
    }
}
