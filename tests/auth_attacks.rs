//! The attack suite of issue 5 against the real server: the `pgsat` binary as
//! a subprocess beside a real Postgres, each case a token built byte by byte,
//! sent in an `AuthReq` on its own TCP connection. Every refused case asserts
//! the exact `ErrorCode` on the wire, that it was the only frame the
//! connection ever got (no AuthResp, Relation or OpLog), that the connection
//! was closed, that the message names the failed check and never echoes the
//! token. Every accepted case streams a transaction. Each server's
//! `pgsat_auth_attempts_total{result,reason}` must equal, series by series,
//! what its connections were told.
//!
//! Claim, user_id, size and garbage cases run in secure and insecure mode;
//! signature and algorithm cases in secure mode (insecure mode must accept
//! them, which is checked too). Exact ±1 s leeway edges with a fixed clock
//! are in `src/auth/tests.rs`; here, against the wall clock, each edge is
//! taken on the side where time passing cannot change the answer.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use pgsat::metrics::exposition;
use pgsat::protocol::pb;
use pgsat::protocol::pb::ErrorCode;
use prost::Message;
use serde_json::{json, Value};
use support::pgsat::{Pgsat, RawClient, RawFrame, TxnReader};
use support::{wait_until, PgServer};

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "attack-suite-hmac-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH";
const ISS: &str = "https://issuer.pgsat.test/";
const AUD: &str = "pgsat-clients";
const NS: &str = "https://pgsat.test/jwt";
const LEEWAY: i64 = 60;

const SCHEMA: &str = "
    CREATE TABLE users (id text PRIMARY KEY);
    INSERT INTO users VALUES ('alice'), ('bob'), ('dave');
    DELETE FROM users WHERE id = 'dave';
    CREATE TABLE todos (id serial PRIMARY KEY, owner text, title text);
";

// ------------------------------------------------------------------ tokens

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn alg_name(alg: Algorithm) -> &'static str {
    pgsat::auth::jwt::alg_name(alg)
}

/// `b64(header).b64(claims).signature`, signed over exactly those bytes.
fn jwt(header: &Value, claims: &Value, key: Option<(Algorithm, &EncodingKey)>) -> String {
    jwt_text(&header.to_string(), &claims.to_string(), key)
}

fn jwt_text(header: &str, claims: &str, key: Option<(Algorithm, &EncodingKey)>) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = match key {
        Some((alg, k)) => jsonwebtoken::crypto::sign(input.as_bytes(), k, alg).expect("sign"),
        None => String::new(),
    };
    format!("{input}.{sig}")
}

fn hs(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}

/// (configured verification key, signing key, foreign signing key of the
/// same algorithm when the fixtures have one).
fn keys_for(alg: Algorithm) -> (String, EncodingKey, Option<EncodingKey>) {
    use Algorithm::*;
    let rsa = |f: &str| EncodingKey::from_rsa_pem(fixture(f).as_bytes()).expect("rsa pem");
    match alg {
        HS256 | HS384 | HS512 => (SECRET.into(), hs(SECRET), Some(hs("another-secret"))),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => (
            fixture("rsa_public.pem"),
            rsa("rsa_private.pem"),
            Some(rsa("rsa2_private.pem")),
        ),
        ES256 => (
            fixture("ec256_public.pem"),
            EncodingKey::from_ec_pem(fixture("ec256_private.pem").as_bytes()).unwrap(),
            None,
        ),
        ES384 => (
            fixture("ec384_public.pem"),
            EncodingKey::from_ec_pem(fixture("ec384_private.pem").as_bytes()).unwrap(),
            None,
        ),
        EdDSA => (
            fixture("ed25519_public.pem"),
            EncodingKey::from_ed_pem(fixture("ed25519_private.pem").as_bytes()).unwrap(),
            None,
        ),
    }
}

const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Another algorithm of the same key family (or, for EdDSA, any other).
fn sibling(alg: Algorithm) -> Algorithm {
    use Algorithm::*;
    match alg {
        HS256 => HS384,
        HS384 | HS512 => HS256,
        RS256 => RS384,
        RS384 | RS512 => RS256,
        PS256 => PS384,
        PS384 | PS512 => PS256,
        ES256 => ES384,
        ES384 => ES256,
        EdDSA => ES256,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Secure,
    Insecure,
}

/// What a case must get.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// AuthResp for this user, then the stream.
    Ok(&'static str),
    /// AUTH_FAILED naming this check.
    Failed(&'static str),
    Expired,
    NotFound,
    /// INTERNAL: the check could not be made.
    Internal,
}

/// `pgsat token ARGS…` (the binary): the token it prints.
fn pgsat_token(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsat"))
        .arg("token")
        .args(args)
        .output()
        .expect("run pgsat token");
    assert!(
        out.status.success(),
        "pgsat token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// The fixture file of the private key for `alg` (None for HMAC).
fn private_key_file(alg: Algorithm) -> Option<String> {
    use Algorithm::*;
    let name = match alg {
        HS256 | HS384 | HS512 => return None,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => "rsa_private.pem",
        ES256 => "ec256_private.pem",
        ES384 => "ec384_private.pem",
        EdDSA => "ed25519_private.pem",
    };
    Some(format!(
        "{}/tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

// ------------------------------------------------------------------ server

/// One pgsat process, the position its seed transaction follows, and the
/// auth outcomes its connections were told (for the metrics check).
struct Server {
    p: Pgsat,
    base: u64,
    told: BTreeMap<(String, String), u64>,
    name: String,
}

fn env_for(mode: Mode, alg: Algorithm, key: &str) -> Vec<(String, String)> {
    match mode {
        Mode::Secure => vec![
            ("AUTH_MODE".into(), "secure".into()),
            ("AUTH_JWT_ALG".into(), alg_name(alg).into()),
            ("AUTH_JWT_KEY".into(), key.into()),
        ],
        Mode::Insecure => vec![("AUTH_MODE".into(), "insecure".into())],
    }
}

impl Server {
    /// Starts pgsat (own slot and data dir) and streams one seed
    /// transaction with `seed_token` so later cases have something to get.
    async fn start(
        pg: &PgServer,
        root: &Path,
        name: &str,
        env: &[(String, String)],
        seed_token: &str,
    ) -> Server {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("data dir");
        let mut all: Vec<(&str, &str)> = vec![("REPLICATION_SLOT", name)];
        all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let p = Pgsat::start(pg, &dir, &all);
        let mut s = Server {
            p,
            base: 0,
            told: BTreeMap::new(),
            name: name.to_string(),
        };
        let mut c = RawClient::connect(s.p.tcp).await;
        let resp = c.auth(seed_token).await;
        s.tell("ok", "ok");
        s.base = c.start(0).await.lsn;
        pg.client()
            .await
            .batch_execute(&format!(
                "INSERT INTO todos (owner, title) VALUES ('{}', 'seed {name}')",
                resp.user_id
            ))
            .await
            .expect("seed insert");
        let mut r = TxnReader::default();
        c.read_txns(&mut r, 1).await;
        s
    }

    fn tell(&mut self, result: &str, reason: &str) {
        *self
            .told
            .entry((result.to_string(), reason.to_string()))
            .or_default() += 1;
    }

    /// One case on a fresh connection to each listener: TCP and WebSocket
    /// share the session code, and must answer alike.
    async fn case(&mut self, case: &str, token: &str, want: Expect) {
        for via in [Listener::Tcp(self.p.tcp), Listener::Ws(self.p.ws)] {
            let case = format!("{case} ({via:?})");
            let got = attempt(via, self.base, token, &case).await;
            self.judge(&case, &want, got);
        }
    }

    fn judge(&mut self, case: &str, want: &Expect, got: Result<pb::AuthResp, pb::ErrorResp>) {
        match (want, got) {
            (Expect::Ok(user), Ok(resp)) => {
                assert_eq!(resp.user_id, *user, "{}/{case}: user_id", self.name);
                self.tell("ok", "ok");
            }
            (_, Ok(resp)) => panic!(
                "{}/{case}: expected {want:?}, got AuthResp for {:?}",
                self.name, resp.user_id
            ),
            (want, Err(e)) => {
                let (code, result, reason) = match want {
                    Expect::Ok(_) => panic!(
                        "{}/{case}: expected success, got {:?}: {}",
                        self.name,
                        ErrorCode::try_from(e.code),
                        e.message
                    ),
                    Expect::Failed(check) => (ErrorCode::AuthFailed, "auth_failed", *check),
                    Expect::Expired => (ErrorCode::TokenExpired, "token_expired", "token_expired"),
                    Expect::NotFound => {
                        (ErrorCode::UserNotFound, "user_not_found", "user_not_found")
                    }
                    Expect::Internal => (ErrorCode::Internal, "internal", "internal"),
                };
                assert_eq!(
                    e.code, code as i32,
                    "{}/{case}: code (message: {})",
                    self.name, e.message
                );
                if code == ErrorCode::AuthFailed {
                    assert!(
                        e.message.contains(&format!("({reason})")),
                        "{}/{case}: the message does not name the check {reason}: {}",
                        self.name,
                        e.message
                    );
                }
                self.tell(result, reason);
            }
        }
    }

    /// `pgsat_auth_attempts_total` equals, series by series, what was told.
    fn check_metrics(&self) {
        let text = self.p.metrics();
        let samples = exposition::parse(&text).expect("/metrics parses");
        let mut seen = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == "pgsat_auth_attempts_total")
        {
            let key = (
                s.label("result").expect("result label").to_string(),
                s.label("reason").expect("reason label").to_string(),
            );
            seen.insert(key, s.value as u64);
        }
        for (key, n) in &self.told {
            assert!(
                seen.contains_key(key),
                "{}: no series for {key:?} in /metrics",
                self.name
            );
            assert_eq!(
                seen[key], *n,
                "{}: pgsat_auth_attempts_total{key:?}",
                self.name
            );
        }
        for (key, n) in &seen {
            if !self.told.contains_key(key) {
                assert_eq!(*n, 0, "{}: unexpected count for {key:?}", self.name);
            }
        }
    }
}

/// Asserts `message` contains neither the token nor any of its segments.
fn assert_no_echo(message: &str, token: &str, case: &str) {
    if token.len() >= 8 {
        assert!(!message.contains(token), "{case}: echoes the token");
    }
    for seg in token.split('.').filter(|s| s.len() >= 8) {
        assert!(
            !message.contains(seg),
            "{case}: message echoes part of the token: {message}"
        );
    }
}

/// Which of pgsat's listeners a case connects to.
#[derive(Clone, Copy)]
enum Listener {
    Tcp(SocketAddr),
    Ws(SocketAddr),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listener::Tcp(_) => "tcp",
            Listener::Ws(_) => "ws",
        })
    }
}

/// Sends `token` in an AuthReq on a new connection. Accepted: the AuthResp,
/// after checking that StartReplicationReq{base} streams a transaction.
/// Refused: the ErrorResp, after checking it was the only frame and the
/// server closed the connection.
async fn attempt(
    via: Listener,
    base: u64,
    token: &str,
    case: &str,
) -> Result<pb::AuthResp, pb::ErrorResp> {
    let mut c = match via {
        Listener::Tcp(addr) => RawClient::connect(addr).await,
        Listener::Ws(addr) => RawClient::connect_ws(addr).await,
    };
    c.send(
        1,
        &pb::AuthReq {
            id: "attack".into(),
            token: token.into(),
        },
    )
    .await;
    let first = c
        .recv_timeout(T)
        .await
        .unwrap_or_else(|| panic!("{case}: closed without an answer"));
    if first.ty == 2 {
        let resp = pb::AuthResp::decode(first.body).expect("AuthResp");
        assert_eq!(resp.id, "attack", "{case}");
        c.start(base).await;
        let mut r = TxnReader::default();
        let txns = c.read_txns(&mut r, 1).await;
        assert!(!txns[0].ops.is_empty(), "{case}: empty transaction");
        assert!(r.relation_frames >= 1, "{case}: no Relation");
        // Nothing else was queued (e.g. an immediate TOKEN_EXPIRED for a
        // token accepted within the leeway): the Ping is answered next.
        c.send(7, &pb::PingReq {}).await;
        let f = c.recv_timeout(T).await.expect("PingResp");
        assert_eq!(
            f.ty,
            8,
            "{case}: got {} {:?} instead of PingResp",
            f.ty,
            f.error()
        );
        return Ok(resp);
    }
    let mut frames: Vec<RawFrame> = vec![first];
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(_) => panic!("{case}: the server did not close the connection"),
        }
    }
    let types: Vec<u8> = frames.iter().map(|f| f.ty).collect();
    assert!(
        !types.iter().any(|t| matches!(t, 2 | 4 | 9 | 10)),
        "{case}: a refused connection got {types:?}"
    );
    assert_eq!(
        types,
        vec![0],
        "{case}: exactly one ErrorResp, got {types:?}"
    );
    let e = frames[0].error().expect("ErrorResp");
    assert!(!e.message.is_empty(), "{case}: empty message");
    assert_no_echo(&e.message, token, case);
    Err(e)
}

// ------------------------------------------------------------------ cases

fn base_claims(user: Value) -> Value {
    let n = now();
    json!({"iss": ISS, "aud": AUD, "exp": n + 3600, "iat": n, NS: {"user_id": user}})
}

fn set(mut v: Value, k: &str, x: Value) -> Value {
    v[k] = x;
    v
}

fn unset(mut v: Value, k: &str) -> Value {
    v.as_object_mut().expect("object").remove(k);
    v
}

/// Claim cases for a server with ISS, AUD, NS and a 60 s leeway: identical
/// expectations in both modes.
fn claim_cases() -> Vec<(&'static str, Value, Expect)> {
    use Expect::*;
    let n = now();
    let c = || base_claims(json!("alice"));
    let uid = |v: Value| base_claims(v);
    vec![
        ("valid", c(), Ok("alice")),
        ("expired", set(c(), "exp", json!(n - 3600)), Expired),
        ("exp missing", unset(c(), "exp"), Failed("exp")),
        (
            "exp as string",
            set(c(), "exp", json!((n + 3600).to_string())),
            Failed("exp"),
        ),
        ("exp null", set(c(), "exp", Value::Null), Failed("exp")),
        (
            "nbf in the future",
            set(c(), "nbf", json!(n + 3600)),
            Failed("nbf"),
        ),
        (
            "iat in the future",
            set(c(), "iat", json!(n + 3600)),
            Failed("iat"),
        ),
        ("iat as string", set(c(), "iat", json!("0")), Failed("iat")),
        // Leeway 60 s: exp 61 s ago is expired however long the test takes.
        (
            "exp leeway+1 s ago",
            set(c(), "exp", json!(n - LEEWAY - 1)),
            Expired,
        ),
        (
            "exp inside leeway",
            set(c(), "exp", json!(n - LEEWAY + 30)),
            Ok("alice"),
        ),
        // nbf/iat exactly leeway ahead are accepted however long it takes.
        (
            "nbf at +leeway",
            set(c(), "nbf", json!(n + LEEWAY)),
            Ok("alice"),
        ),
        (
            "iat at +leeway",
            set(c(), "iat", json!(n + LEEWAY)),
            Ok("alice"),
        ),
        (
            "nbf beyond leeway",
            set(c(), "nbf", json!(n + LEEWAY + 30)),
            Failed("nbf"),
        ),
        (
            "iat beyond leeway",
            set(c(), "iat", json!(n + LEEWAY + 30)),
            Failed("iat"),
        ),
        (
            "iss wrong",
            set(c(), "iss", json!("https://evil.test/")),
            Failed("iss"),
        ),
        (
            "iss prefix",
            set(c(), "iss", json!(&ISS[..ISS.len() - 1])),
            Failed("iss"),
        ),
        ("iss missing", unset(c(), "iss"), Failed("iss")),
        ("iss array", set(c(), "iss", json!([ISS])), Failed("iss")),
        ("aud wrong", set(c(), "aud", json!("other")), Failed("aud")),
        ("aud missing", unset(c(), "aud"), Failed("aud")),
        (
            "aud array with",
            set(c(), "aud", json!(["x", AUD])),
            Ok("alice"),
        ),
        (
            "aud array without",
            set(c(), "aud", json!(["x", "y"])),
            Failed("aud"),
        ),
        ("aud number", set(c(), "aud", json!(1)), Failed("aud")),
        (
            "user_id missing",
            set(c(), NS, json!({})),
            Failed("user_id"),
        ),
        ("user_id empty", uid(json!("")), Failed("user_id")),
        (
            "user_id whitespace",
            uid(json!(" \t\n ")),
            Failed("user_id"),
        ),
        ("user_id number", uid(json!(42)), Failed("user_id")),
        ("user_id array", uid(json!(["alice"])), Failed("user_id")),
        (
            "user_id object",
            uid(json!({"id": "alice"})),
            Failed("user_id"),
        ),
        ("user_id null", uid(Value::Null), Failed("user_id")),
        ("user_id bool", uid(json!(true)), Failed("user_id")),
        ("user_id NUL", uid(json!("ali\u{0}ce")), Failed("user_id")),
        (
            "user_id too long",
            uid(json!("a".repeat(2000))),
            Failed("user_id"),
        ),
        ("nonexistent user", uid(json!("mallory")), NotFound),
        ("deleted user", uid(json!("dave")), NotFound),
        ("user_id other case", uid(json!("Alice")), NotFound),
        ("user_id trailing space", uid(json!("alice ")), NotFound),
        ("user_id sql", uid(json!("alice' OR '1'='1")), NotFound),
        // AUTH_JWT_NAMESPACE: only the namespaced claim counts.
        (
            "namespace absent, top-level user_id",
            json!({"iss": ISS, "aud": AUD, "exp": n + 3600, "user_id": "alice"}),
            Failed("user_id"),
        ),
        (
            "namespace not an object",
            set(c(), NS, json!("alice")),
            Failed("user_id"),
        ),
        (
            "namespaced wins over top level",
            set(c(), "user_id", json!("bob")),
            Ok("alice"),
        ),
    ]
}

/// A token of exactly `len` bytes carrying `claims` (+ a padding claim).
fn token_of_len(len: usize, claims: &Value, sign: &dyn Fn(&Value) -> String) -> String {
    for pad in 0..len {
        let t = sign(&set(claims.clone(), "pad", json!("p".repeat(pad))));
        if t.len() == len {
            return t;
        }
        if t.len() > len {
            // base64 skips a length now and then: nudge with a 1-char claim.
            let t = sign(&set(
                set(
                    claims.clone(),
                    "pad",
                    json!("p".repeat(pad.saturating_sub(1))),
                ),
                "q",
                json!(1),
            ));
            if t.len() == len {
                return t;
            }
        }
    }
    panic!("no token of {len} bytes")
}

/// Size and garbage cases (both modes); `valid` is an accepted token.
fn garbage_cases(valid: &str, sign: &dyn Fn(&Value) -> String) -> Vec<(String, String, Expect)> {
    use Expect::*;
    let c = base_claims(json!("alice"));
    let parts: Vec<&str> = valid.split('.').collect();
    let (h, cl) = (parts[0], parts[1]);
    let padded_header = URL_SAFE.encode(r#"{"alg":"none"}"#); // 14 bytes → '=' padding
    assert!(padded_header.ends_with('='));
    // Claims whose base64 needs '+' or '/' in the standard alphabet.
    let std_claims = (0..64)
        .map(|i| set(c.clone(), "pad", json!("?".repeat(i))).to_string())
        .find(|t| b64(t).contains(['-', '_']))
        .map(|t| STANDARD.encode(t).replace('=', ""))
        .expect("a claims text with + or / in base64");
    let mut v: Vec<(String, String, Expect)> = vec![
        (
            "exactly 8 KiB".into(),
            token_of_len(8192, &c, sign),
            Ok("alice"),
        ),
        (
            "8 KiB + 1".into(),
            token_of_len(8193, &c, sign),
            Failed("too_large"),
        ),
        (
            "100 KiB".into(),
            format!("{h}.{}.", "A".repeat(100 * 1024)),
            Failed("too_large"),
        ),
        ("empty".into(), String::new(), Failed("malformed")),
        (
            "one segment".into(),
            "SECRETSTUFF-not-a-jwt".into(),
            Failed("malformed"),
        ),
        (
            "two segments".into(),
            format!("{h}.{cl}"),
            Failed("malformed"),
        ),
        (
            "four segments".into(),
            format!("{valid}.x"),
            Failed("malformed"),
        ),
        ("dots only".into(), "..".into(), Failed("malformed")),
        (
            "padded header".into(),
            format!("{padded_header}.{cl}."),
            Failed("malformed"),
        ),
        (
            "padded claims".into(),
            format!("{h}.{cl}==."),
            Failed("malformed"),
        ),
        (
            "standard base64 alphabet".into(),
            format!("{h}.{std_claims}."),
            Failed("malformed"),
        ),
        (
            "bad base64 char".into(),
            format!("{h}.{cl}*."),
            Failed("malformed"),
        ),
        (
            "whitespace inside".into(),
            format!("{h}.{cl} ."),
            Failed("malformed"),
        ),
        (
            "header not JSON".into(),
            format!("{}.{cl}.", b64("not json")),
            Failed("malformed"),
        ),
        (
            "header JSON array".into(),
            format!("{}.{cl}.", b64(r#"["alg","none"]"#)),
            Failed("malformed"),
        ),
        (
            "claims not JSON".into(),
            format!("{h}.{}.", b64("{\"user_id\":")),
            Failed("malformed"),
        ),
        (
            "claims JSON string".into(),
            format!("{h}.{}.", b64("\"alice\"")),
            Failed("malformed"),
        ),
        (
            "trailing bytes after claims".into(),
            format!("{h}.{}.", b64(format!("{c} x"))),
            Failed("malformed"),
        ),
        (
            "duplicate key in header".into(),
            format!("{}.{cl}.", b64(r#"{"alg":"none","alg":"HS256"}"#)),
            Failed("malformed"),
        ),
        (
            "header without alg".into(),
            format!("{}.{cl}.", b64(r#"{"typ":"JWT"}"#)),
            Failed("alg"),
        ),
        (
            "header alg number".into(),
            format!("{}.{cl}.", b64(r#"{"alg":256}"#)),
            Failed("alg"),
        ),
        (
            "binary header".into(),
            format!("{}.{cl}.", b64([0xffu8, 0xfe, 0x00, 0x7b])),
            Failed("malformed"),
        ),
    ];
    // Duplicate user_id in the claims: two parsers could disagree on the user.
    let ns_dup = format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{},"{NS}":{{"user_id":"mallory","user_id":"alice"}}}}"#,
        now() + 3600
    );
    let top_dup = format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{},"exp":1,"{NS}":{{"user_id":"alice"}}}}"#,
        now() + 3600
    );
    for (name, text) in [("duplicate user_id", ns_dup), ("duplicate exp", top_dup)] {
        let t = sign_text(valid, &text);
        v.push((name.into(), t, Failed("malformed")));
    }
    v
}

/// Signs raw claims text like `valid` is signed (HS256 in secure mode,
/// unsigned in insecure mode), with `valid`'s header.
fn sign_text(valid: &str, claims_text: &str) -> String {
    let header_b64 = valid.split('.').next().expect("header");
    let header = String::from_utf8(URL_SAFE_NO_PAD.decode(header_b64).expect("b64")).unwrap();
    if header.contains("HS256") {
        jwt_text(&header, claims_text, Some((Algorithm::HS256, &hs(SECRET))))
    } else {
        jwt_text(&header, claims_text, None)
    }
}

fn secure_sign(c: &Value) -> String {
    jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        c,
        Some((Algorithm::HS256, &hs(SECRET))),
    )
}

fn insecure_sign(c: &Value) -> String {
    jwt(&json!({"alg": "none", "typ": "JWT"}), c, None)
}

/// Header cases for the HS256 main server: expectation in secure mode, and
/// whether insecure mode accepts it (signature-only cases) or refuses it
/// the same way (structure, forbidden headers).
fn header_cases() -> Vec<(String, String, Expect, Expect)> {
    use Expect::*;
    let c = base_claims(json!("alice"));
    let key = hs(SECRET);
    let hs256 = Some((Algorithm::HS256, &key));
    let h = |v: Value| v;
    let valid = jwt(&json!({"alg": "HS256"}), &c, hs256);
    let (vh, vc, vs) = {
        let p: Vec<&str> = valid.split('.').collect();
        (p[0].to_string(), p[1].to_string(), p[2].to_string())
    };
    let tampered_claims = b64(base_claims(json!("bob")).to_string());
    let attacker_jwk = json!({"kty": "oct", "k": b64("attacker"), "alg": "HS256"});
    let long_kid = "k".repeat(300);
    let mut v: Vec<(String, String, Expect, Expect)> = vec![
        (
            "alg none".into(),
            jwt(&h(json!({"alg": "none"})), &c, None),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "alg NONE".into(),
            jwt(&json!({"alg": "NONE"}), &c, None),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "alg nOnE".into(),
            jwt(&json!({"alg": "nOnE"}), &c, None),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "alg none with a signature".into(),
            format!("{}.{vc}.{vs}", b64(r#"{"alg":"none"}"#)),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "empty signature".into(),
            format!("{vh}.{vc}."),
            Failed("signature"),
            Ok("alice"),
        ),
        (
            "signature stripped".into(),
            format!("{vh}.{vc}"),
            Failed("malformed"),
            Failed("malformed"),
        ),
        (
            "signature of another token".into(),
            format!("{vh}.{tampered_claims}.{vs}"),
            Failed("signature"),
            Ok("bob"),
        ),
        (
            "truncated signature".into(),
            format!("{vh}.{vc}.{}", &vs[4..]),
            Failed("signature"),
            Ok("alice"),
        ),
        (
            "other secret".into(),
            jwt(
                &json!({"alg": "HS256"}),
                &c,
                Some((Algorithm::HS256, &hs("wrong"))),
            ),
            Failed("signature"),
            Ok("alice"),
        ),
        (
            "alg differs (HS512, same secret)".into(),
            jwt(&json!({"alg": "HS512"}), &c, Some((Algorithm::HS512, &key))),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "alg differs (RS256 header)".into(),
            jwt_text(r#"{"alg":"RS256"}"#, &c.to_string(), hs256),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "alg lowercase hs256".into(),
            jwt(&json!({"alg": "hs256"}), &c, hs256),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "alg unknown".into(),
            jwt(&json!({"alg": "HS1024"}), &c, hs256),
            Failed("alg"),
            Ok("alice"),
        ),
        (
            "embedded jwk".into(),
            jwt(
                &json!({"alg": "HS256", "jwk": attacker_jwk}),
                &c,
                Some((Algorithm::HS256, &hs("attacker"))),
            ),
            Failed("header"),
            Failed("header"),
        ),
        (
            "jku".into(),
            jwt(
                &json!({"alg": "HS256", "jku": "http://127.0.0.1:1/jwks.json"}),
                &c,
                hs256,
            ),
            Failed("header"),
            Failed("header"),
        ),
        (
            "x5u".into(),
            jwt(
                &json!({"alg": "HS256", "x5u": "http://127.0.0.1:1/cert.pem"}),
                &c,
                hs256,
            ),
            Failed("header"),
            Failed("header"),
        ),
        (
            "x5c".into(),
            jwt(&json!({"alg": "HS256", "x5c": ["MIIB"]}), &c, hs256),
            Failed("header"),
            Failed("header"),
        ),
        (
            "crit".into(),
            jwt(
                &json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
                &c,
                hs256,
            ),
            Failed("header"),
            Failed("header"),
        ),
        (
            "crit empty".into(),
            jwt(&json!({"alg": "HS256", "crit": []}), &c, hs256),
            Failed("header"),
            Failed("header"),
        ),
        (
            "kid number".into(),
            jwt(&json!({"alg": "HS256", "kid": 1}), &c, hs256),
            Failed("kid"),
            Failed("kid"),
        ),
        (
            "kid too long".into(),
            jwt(&json!({"alg": "HS256", "kid": long_kid}), &c, hs256),
            Failed("kid"),
            Failed("kid"),
        ),
        // With a configured key, kid selects nothing: a valid signature is
        // enough, and a kid naming a file or SQL cannot change the key.
        (
            "kid ignored with a static key".into(),
            jwt(&json!({"alg": "HS256", "kid": "any"}), &c, hs256),
            Ok("alice"),
            Ok("alice"),
        ),
        (
            "kid path injection, empty-key signature".into(),
            jwt(
                &json!({"alg": "HS256", "kid": "../../../../../../dev/null"}),
                &c,
                Some((Algorithm::HS256, &hs(""))),
            ),
            Failed("signature"),
            Ok("alice"),
        ),
        (
            "kid sql injection".into(),
            jwt(
                &json!({"alg": "HS256", "kid": "x' UNION SELECT 'k' --"}),
                &c,
                Some((Algorithm::HS256, &hs("k"))),
            ),
            Failed("signature"),
            Ok("alice"),
        ),
    ];
    v.push(("valid".into(), valid, Ok("alice"), Ok("alice")));
    v
}

// ------------------------------------------------------------------ tests

async fn start_pg() -> PgServer {
    support::pg_with_schema(SCHEMA).await
}

fn main_env(mode: Mode) -> Vec<(String, String)> {
    let mut env = env_for(mode, Algorithm::HS256, SECRET);
    env.extend([
        ("AUTH_JWT_ISS".to_string(), ISS.to_string()),
        ("AUTH_JWT_AUD".to_string(), AUD.to_string()),
        ("AUTH_JWT_NAMESPACE".to_string(), NS.to_string()),
        ("AUTH_JWT_LEEWAY".to_string(), format!("{LEEWAY}s")),
    ]);
    env
}

/// Claims, user_id, size, garbage and header cases, in one mode.
async fn run_main_table(mode: Mode) {
    let pg = start_pg().await;
    let root = tempfile::tempdir().expect("tempdir");
    let sign: &dyn Fn(&Value) -> String = match mode {
        Mode::Secure => &secure_sign,
        Mode::Insecure => &insecure_sign,
    };
    let seed = sign(&base_claims(json!("alice")));
    let name = match mode {
        Mode::Secure => "main_secure",
        Mode::Insecure => "main_insecure",
    };
    let mut s = Server::start(&pg, root.path(), name, &main_env(mode), &seed).await;

    // `pgsat token` (the binary) with this server's namespace, iss and aud.
    let mut args = vec!["--user-id", "alice", "--claim"];
    let ns_claim = format!("{NS}={{\"user_id\":\"alice\"}}");
    let iss_claim = format!("iss=\"{ISS}\"");
    let aud_claim = format!("aud=\"{AUD}\"");
    args.extend([
        ns_claim.as_str(),
        "--claim",
        &iss_claim,
        "--claim",
        &aud_claim,
    ]);
    match mode {
        Mode::Secure => args.extend(["--alg", "HS256", "--key", SECRET]),
        Mode::Insecure => args.push("--insecure"),
    }
    s.case("pgsat token", &pgsat_token(&args), Expect::Ok("alice"))
        .await;
    for (case, claims, want) in claim_cases() {
        s.case(case, &sign(&claims), want).await;
    }
    for (case, token, want) in garbage_cases(&seed, sign) {
        s.case(&case, &token, want).await;
    }
    for (case, token, secure, insecure) in header_cases() {
        let want = if mode == Mode::Secure {
            secure
        } else {
            insecure
        };
        s.case(&case, &token, want).await;
    }
    // A database error during the users lookup is INTERNAL, never
    // USER_NOT_FOUND, and is logged; the lookup recovers with the table.
    pg.execute("ALTER TABLE users RENAME TO users_gone");
    for i in 0..4 {
        // every connection of the lookup pool
        let t = sign(&base_claims(json!("alice")));
        s.case(&format!("users table gone {i}"), &t, Expect::Internal)
            .await;
    }
    pg.execute("ALTER TABLE users_gone RENAME TO users");
    s.case(
        "users table back",
        &sign(&base_claims(json!("alice"))),
        Expect::Ok("alice"),
    )
    .await;
    s.check_metrics();
    let out = s.p.output();
    assert!(
        out.contains("users lookup failed"),
        "the lookup error is not logged:\n{out}"
    );
    assert!(!out.contains(SECRET), "the log shows AUTH_JWT_KEY");
    if mode == Mode::Insecure {
        assert!(
            out.contains("AUTH_MODE=insecure") && out.contains("WARN"),
            "no start-up warning in insecure mode:\n{out}"
        );
        let m = s.p.metrics();
        assert!(m.lines().any(|l| l == "pgsat_auth_insecure_mode 1"), "{m}");
    } else {
        let m = s.p.metrics();
        assert!(m.lines().any(|l| l == "pgsat_auth_insecure_mode 0"), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_table_secure_mode() {
    run_main_table(Mode::Secure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_table_insecure_mode() {
    run_main_table(Mode::Insecure).await;
}

/// Every algorithm: a valid token streams; alg none, empty signature,
/// tampered claims, a sibling algorithm, a foreign key and (for public-key
/// algorithms) HS256 keyed with the public key PEM are refused. The
/// top-level user_id checks run on the HS256 server (no namespace there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_end_to_end() {
    use Expect::*;
    let pg = start_pg().await;
    let root = tempfile::tempdir().expect("tempdir");
    for alg in ALL_ALGS {
        let (vk, sk, foreign) = keys_for(alg);
        let name = format!("alg_{}", alg_name(alg).to_ascii_lowercase());
        let n = now();
        let c = json!({"user_id": "alice", "exp": n + 3600, "iat": n});
        let header = json!({"alg": alg_name(alg), "typ": "JWT"});
        let valid = jwt(&header, &c, Some((alg, &sk)));
        let mut s = Server::start(
            &pg,
            root.path(),
            &name,
            &env_for(Mode::Secure, alg, &vk),
            &valid,
        )
        .await;
        s.case("valid", &valid, Ok("alice")).await;
        // `pgsat token` mints tokens this server accepts (key file or secret).
        let key = private_key_file(alg).unwrap_or_else(|| SECRET.to_string());
        let minted = pgsat_token(&["--user-id", "alice", "--alg", alg_name(alg), "--key", &key]);
        s.case("pgsat token", &minted, Ok("alice")).await;
        let unsigned = pgsat_token(&["--user-id", "alice", "--insecure"]);
        s.case("pgsat token --insecure", &unsigned, Failed("alg"))
            .await;
        let p: Vec<&str> = valid.split('.').collect();
        let bob = b64(json!({"user_id": "bob", "exp": n + 3600, "iat": n}).to_string());
        s.case(
            "tampered claims",
            &format!("{}.{bob}.{}", p[0], p[2]),
            Failed("signature"),
        )
        .await;
        s.case(
            "empty signature",
            &format!("{}.{}.", p[0], p[1]),
            Failed("signature"),
        )
        .await;
        s.case(
            "alg none",
            &jwt(&json!({"alg": "none"}), &c, None),
            Failed("alg"),
        )
        .await;
        let sib = sibling(alg);
        let (_, sib_key, _) = keys_for(sib);
        s.case(
            &format!("sibling alg {}", alg_name(sib)),
            &jwt(&json!({"alg": alg_name(sib)}), &c, Some((sib, &sib_key))),
            Failed("alg"),
        )
        .await;
        if let Some(f) = foreign {
            s.case(
                "foreign key",
                &jwt(&header, &c, Some((alg, &f))),
                Failed("signature"),
            )
            .await;
        }
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            // The classic confusion: the public key PEM used as an HMAC secret.
            s.case(
                "HS256 keyed with the public key PEM",
                &jwt(
                    &json!({"alg": "HS256"}),
                    &c,
                    Some((Algorithm::HS256, &hs(&vk))),
                ),
                Failed("alg"),
            )
            .await;
        }
        if alg == Algorithm::HS256 {
            let uid = |u: Value| {
                jwt(
                    &header,
                    &json!({"user_id": u, "exp": n + 3600}),
                    Some((alg, &sk)),
                )
            };
            s.case(
                "user_id missing",
                &jwt(&header, &json!({"exp": n + 3600}), Some((alg, &sk))),
                Failed("user_id"),
            )
            .await;
            s.case("user_id empty", &uid(json!("")), Failed("user_id"))
                .await;
            s.case("user_id whitespace", &uid(json!("  ")), Failed("user_id"))
                .await;
            s.case("user_id number", &uid(json!(7)), Failed("user_id"))
                .await;
            s.case("user_id array", &uid(json!(["alice"])), Failed("user_id"))
                .await;
            s.case(
                "user_id object",
                &uid(json!({"user_id": "alice"})),
                Failed("user_id"),
            )
            .await;
            s.case("user_id null", &uid(Value::Null), Failed("user_id"))
                .await;
            s.case("nonexistent user", &uid(json!("mallory")), NotFound)
                .await;
            s.case("deleted user", &uid(json!("dave")), NotFound).await;
            s.case("other user", &uid(json!("bob")), Ok("bob")).await;
            s.case(
                "expired",
                &jwt(
                    &header,
                    &json!({"user_id": "alice", "exp": n - 1}),
                    Some((alg, &sk)),
                ),
                Expired,
            )
            .await;
        }
        s.check_metrics();
        assert!(
            !s.p.output().contains(SECRET),
            "{name}: the log shows the key"
        );
    }
}

// ------------------------------------------------------------------ JWKS

use support::jwks::JwksServer;

/// What the attack tests check of the JWKS server.
trait JwksChecks {
    fn assert_rate_limited(&self);
}

impl JwksChecks for JwksServer {
    /// The rate limit: fetches at least 30 s apart (a few ms of slack for
    /// the two clocks: the server's Instant is taken before the request).
    fn assert_rate_limited(&self) {
        let hits = self.hits();
        for w in hits.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(29_900),
                "JWKS fetched twice within {gap:?} (hits: {})",
                hits.len()
            );
        }
    }
}

fn rsa_key(n: u8) -> EncodingKey {
    let f = if n == 1 {
        "rsa_private.pem"
    } else {
        "rsa2_private.pem"
    };
    EncodingKey::from_rsa_pem(fixture(f).as_bytes()).unwrap()
}

fn jwk(sk: &EncodingKey, kid: &str) -> Value {
    let mut v = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(sk, Algorithm::RS256).unwrap(),
    )
    .unwrap();
    v["kid"] = json!(kid);
    v["use"] = json!("sig");
    v["alg"] = json!("RS256");
    v
}

fn kid_token(kid: &str, sk: &EncodingKey) -> String {
    let n = now();
    jwt(
        &json!({"alg": "RS256", "kid": kid}),
        &json!({"user_id": "alice", "exp": n + 3600, "iat": n}),
        Some((Algorithm::RS256, sk)),
    )
}

/// Polls `case` once a second until it gets `until` (other outcomes must
/// be `meanwhile`), within 90 s (three refetch intervals). `nudge`, when
/// given, is a token with an unknown kid sent first each time: it is what
/// makes the server refetch (rate-limited) when `token`'s kid is cached.
async fn poll_until(
    s: &mut Server,
    case: &str,
    token: &dyn Fn() -> String,
    nudge: Option<&dyn Fn() -> String>,
    until: Expect,
    meanwhile: Expect,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(nudge) = nudge {
            s.case(
                &format!("{case}: unknown kid nudge"),
                &nudge(),
                Expect::Failed("kid"),
            )
            .await;
        }
        let got = attempt(Listener::Tcp(s.p.tcp), s.base, &token(), case).await;
        let outcome = match &got {
            Ok(r) if r.user_id == "alice" => Expect::Ok("alice"),
            Ok(r) => panic!("{case}: AuthResp for {}", r.user_id),
            Err(e) if e.code == ErrorCode::AuthFailed as i32 => {
                let check = ["kid", "alg", "signature", "header"]
                    .into_iter()
                    .find(|c| e.message.contains(&format!("({c})")))
                    .unwrap_or_else(|| panic!("{case}: {}", e.message));
                Expect::Failed(check)
            }
            Err(e) => panic!("{case}: {:?} {}", ErrorCode::try_from(e.code), e.message),
        };
        match &outcome {
            Expect::Ok(_) => s.tell("ok", "ok"),
            Expect::Failed(c) => s.tell("auth_failed", c),
            _ => unreachable!(),
        }
        if outcome == until {
            return;
        }
        assert_eq!(
            outcome, meanwhile,
            "{case}: neither the final nor the interim outcome"
        );
        assert!(
            Instant::now() < deadline,
            "{case}: still {outcome:?} after 90 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// JWKS: keys chosen by kid; unknown kids and injection strings refused
/// without a fetch storm (≤ 1 fetch per 30 s); a newly published kid is
/// accepted after a refetch; a removed kid refused after one; an endpoint
/// that goes down keeps the last good set. About 100 s: three refetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_removal_outage_and_rate_limit() {
    use Expect::*;
    let pg = start_pg().await;
    let root = tempfile::tempdir().expect("tempdir");
    let (k1, k2) = (rsa_key(1), rsa_key(2));
    let jwks = JwksServer::start(json!([jwk(&k1, "k1")])).await;
    let env = vec![
        ("AUTH_MODE".to_string(), "secure".to_string()),
        ("AUTH_JWT_JWKS_URL".to_string(), jwks.url.clone()),
    ];
    let mut s = Server::start(&pg, root.path(), "jwks", &env, &kid_token("k1", &k1)).await;
    assert_eq!(jwks.hits().len(), 1, "one fetch at start");

    let n = now();
    let c = json!({"user_id": "alice", "exp": n + 3600});
    s.case("kid k1", &kid_token("k1", &k1), Ok("alice")).await;
    s.case(
        "no kid, one key in the set",
        &jwt(&json!({"alg": "RS256"}), &c, Some((Algorithm::RS256, &k1))),
        Ok("alice"),
    )
    .await;
    s.case(
        "kid k1, signed by another key",
        &kid_token("k1", &k2),
        Failed("signature"),
    )
    .await;
    s.case("unknown kid k2", &kid_token("k2", &k2), Failed("kid"))
        .await;
    for kid in [
        "../../../../../../dev/null",
        "' OR '1'='1",
        "k1\u{0}",
        "K1",
        "k1 ",
        " k1",
        "*",
        "",
    ] {
        s.case(
            &format!("kid injection {kid:?}"),
            &jwt(
                &json!({"alg": "HS256", "kid": kid}),
                &c,
                Some((Algorithm::HS256, &hs(""))),
            ),
            Failed("kid"),
        )
        .await;
    }
    let pem = fixture("rsa_public.pem");
    s.case(
        "HS256 keyed with the public key PEM, kid k1",
        &jwt(
            &json!({"alg": "HS256", "kid": "k1"}),
            &c,
            Some((Algorithm::HS256, &hs(&pem))),
        ),
        Failed("alg"),
    )
    .await;
    let modulus = jwk(&k1, "k1")["n"].as_str().unwrap().to_string();
    s.case(
        "HS256 keyed with the JWK modulus, kid k1",
        &jwt(
            &json!({"alg": "HS256", "kid": "k1"}),
            &c,
            Some((Algorithm::HS256, &hs(&modulus))),
        ),
        Failed("alg"),
    )
    .await;
    s.case(
        "alg none, kid k1",
        &jwt(&json!({"alg": "none", "kid": "k1"}), &c, None),
        Failed("alg"),
    )
    .await;
    s.case(
        "RS384 with the RS256 key",
        &jwt(
            &json!({"alg": "RS384", "kid": "k1"}),
            &c,
            Some((Algorithm::RS384, &k1)),
        ),
        Failed("alg"),
    )
    .await;
    s.case(
        "embedded jwk with kid k1",
        &jwt(
            &json!({"alg": "RS256", "kid": "k1", "jwk": jwk(&k2, "k1")}),
            &c,
            Some((Algorithm::RS256, &k2)),
        ),
        Failed("header"),
    )
    .await;
    s.case(
        "jku to the real endpoint",
        &jwt(
            &json!({"alg": "RS256", "kid": "k1", "jku": jwks.url}),
            &c,
            Some((Algorithm::RS256, &k1)),
        ),
        Failed("header"),
    )
    .await;
    // A dozen unknown kids did not make a dozen fetches.
    jwks.assert_rate_limited();

    // Rotation: k2 is published; accepted once a refetch (≥ 30 s after the
    // last) has seen it, k1 still accepted.
    jwks.set_keys(json!([jwk(&k1, "k1"), jwk(&k2, "k2")]));
    poll_until(
        &mut s,
        "new kid k2",
        &|| kid_token("k2", &k2),
        None,
        Ok("alice"),
        Failed("kid"),
    )
    .await;
    s.case(
        "old kid k1 still published",
        &kid_token("k1", &k1),
        Ok("alice"),
    )
    .await;

    // Removal: k1 leaves the set; refused once a refetch (triggered by an
    // unknown kid) has seen that.
    jwks.set_keys(json!([jwk(&k2, "k2")]));
    poll_until(
        &mut s,
        "removed kid k1",
        &|| kid_token("k1", &k1),
        Some(&|| kid_token("k3", &k2)),
        Failed("kid"),
        Ok("alice"),
    )
    .await;
    s.case(
        "kid k2 after removal of k1",
        &kid_token("k2", &k2),
        Ok("alice"),
    )
    .await;

    // Outage: the endpoint answers 503; once a refetch has failed, the last
    // good set still verifies.
    jwks.set_down();
    let before = jwks.hits().len();
    let deadline = Instant::now() + Duration::from_secs(90);
    while jwks.hits().len() == before {
        assert!(Instant::now() < deadline, "no refetch attempt while down");
        s.case(
            "unknown kid k4 while down",
            &kid_token("k4", &k2),
            Failed("kid"),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.case(
        "kid k2 while the endpoint is down",
        &kid_token("k2", &k2),
        Ok("alice"),
    )
    .await;
    s.case(
        "kid k1 while the endpoint is down",
        &kid_token("k1", &k1),
        Failed("kid"),
    )
    .await;
    jwks.assert_rate_limited();
    s.check_metrics();
    let out = s.p.output();
    assert!(
        out.contains("JWKS fetch failed"),
        "the failed fetch is not logged:\n{out}"
    );
}

// ------------------------------------------------------------------ refresh

/// Frames until `n` transactions, with any AuthResp / ErrorResp met on the
/// way (in order, as (index in the frame sequence, frame)).
struct Reading {
    txns: Vec<support::pgsat::Txn>,
    others: Vec<RawFrame>,
}

async fn read_until_txns(c: &mut RawClient, r: &mut TxnReader, n: usize, case: &str) -> Reading {
    let mut out = Reading {
        txns: Vec::new(),
        others: Vec::new(),
    };
    while out.txns.len() < n {
        let f = c
            .recv_timeout(T)
            .await
            .unwrap_or_else(|| panic!("{case}: closed after {} txns", out.txns.len()));
        match f.ty {
            9 | 10 => out.txns.extend(r.feed(&f)),
            _ => out.others.push(f),
        }
    }
    out
}

/// The `title` of the one insert in a transaction (todos: id, owner, title).
fn title(t: &support::pgsat::Txn) -> String {
    match &t.ops[..] {
        [pb::trans_op::Op::Insert(i)] => {
            support::pgsat::cell(i.row.as_ref().expect("row"), 2).expect("title")
        }
        other => panic!("expected one insert, got {other:?}"),
    }
}

/// Every frame until the server closes; panics when it does not.
async fn rest_until_closed(c: &mut RawClient, case: &str) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return frames,
            Err(_) => panic!("{case}: not closed"),
        }
    }
}

async fn insert(db: &tokio_postgres::Client, owner: &str, title: &str) {
    db.execute(
        "INSERT INTO todos (owner, title) VALUES ($1, $2)",
        &[&owner, &title],
    )
    .await
    .expect("insert");
}

/// Token refresh, expiry and deletion on live sessions, in one mode, every
/// session on one listener (TCP, or WebSocket when `ws`).
async fn run_refresh(mode: Mode, ws: bool) {
    let pg = start_pg().await;
    let db = pg.client().await;
    let root = tempfile::tempdir().expect("tempdir");
    let tok = |user: &str, exp: i64| -> String {
        let c = json!({"user_id": user, "exp": exp, "iat": now()});
        match mode {
            Mode::Secure => secure_sign(&c),
            Mode::Insecure => insecure_sign(&c),
        }
    };
    let mut env = env_for(mode, Algorithm::HS256, SECRET);
    env.push(("AUTH_REFRESH_GRACE".into(), "10s".into()));
    let name = match (mode, ws) {
        (Mode::Secure, false) => "refresh_secure",
        (Mode::Insecure, false) => "refresh_insecure",
        (Mode::Secure, true) => "refresh_secure_ws",
        (Mode::Insecure, true) => "refresh_insecure_ws",
    };
    let mut s = Server::start(&pg, root.path(), name, &env, &tok("alice", now() + 3600)).await;
    let (p_tcp, p_ws) = (s.p.tcp, s.p.ws);
    let connect = || async move {
        if ws {
            RawClient::connect_ws(p_ws).await
        } else {
            RawClient::connect(p_tcp).await
        }
    };

    // 1. Same user, mid-stream: AuthResp, and the stream goes on with
    //    nothing lost or repeated: r1..r15 are committed before the refresh
    //    (some still queued when it is answered), r16..r30 after.
    let mut c1 = connect().await;
    c1.auth(&tok("alice", now() + 3600)).await;
    s.tell("ok", "ok");
    c1.start(0).await;
    let writer = {
        let db = pg.client().await;
        tokio::spawn(async move {
            for i in 1..=15 {
                insert(&db, "alice", &format!("r{i}")).await;
            }
        })
    };
    let mut r = TxnReader::default();
    let first = read_until_txns(&mut c1, &mut r, 5, "refresh").await;
    assert!(
        first.others.is_empty(),
        "{:?}",
        first.others.iter().map(|f| f.ty).collect::<Vec<_>>()
    );
    let mut titles: Vec<String> = first.txns.iter().map(title).collect();
    let new_exp = now() + 7200;
    c1.send(
        1,
        &pb::AuthReq {
            id: "refresh-1".into(),
            token: tok("alice", new_exp),
        },
    )
    .await;
    // Up to the AuthResp.
    let resp = loop {
        let f = c1.recv_timeout(T).await.expect("AuthResp");
        match f.ty {
            9 | 10 => titles.extend(r.feed(&f).iter().map(title)),
            2 => break pb::AuthResp::decode(f.body).expect("AuthResp"),
            other => panic!("frame {other} {:?} before the AuthResp", f.error()),
        }
    };
    s.tell("ok", "ok");
    assert_eq!(
        (resp.id.as_str(), resp.user_id.as_str()),
        ("refresh-1", "alice")
    );
    assert_eq!(resp.expires_at, new_exp * 1_000_000);
    writer.await.expect("writer");
    for i in 16..=30 {
        insert(&db, "alice", &format!("r{i}")).await;
    }
    let rest = read_until_txns(&mut c1, &mut r, 30 - titles.len(), "refresh").await;
    assert!(
        rest.others.is_empty(),
        "{:?}",
        rest.others.iter().map(|f| f.ty).collect::<Vec<_>>()
    );
    titles.extend(rest.txns.iter().map(title));
    let want: Vec<String> = (1..=30).map(|i| format!("r{i}")).collect();
    assert_eq!(
        titles, want,
        "lost, repeated or reordered across the refresh"
    );

    // 2. Refresh that fails a check: that error, then close; nothing after.
    let mut bad: Vec<(&str, String, ErrorCode, &str, &str)> = vec![
        (
            "refresh expired",
            tok("alice", now() - 10),
            ErrorCode::TokenExpired,
            "token_expired",
            "token_expired",
        ),
        (
            "refresh unknown user",
            tok("mallory", now() + 60),
            ErrorCode::UserNotFound,
            "user_not_found",
            "user_not_found",
        ),
        (
            "refresh garbage",
            "x.y".into(),
            ErrorCode::AuthFailed,
            "auth_failed",
            "malformed",
        ),
        (
            "refresh with another user",
            tok("bob", now() + 3600),
            ErrorCode::PrincipalChanged,
            "principal_changed",
            "principal_changed",
        ),
    ];
    if mode == Mode::Secure {
        let forged = jwt(
            &json!({"alg": "HS256"}),
            &json!({"user_id": "alice", "exp": now() + 60}),
            Some((Algorithm::HS256, &hs("forged"))),
        );
        bad.push((
            "refresh forged",
            forged,
            ErrorCode::AuthFailed,
            "auth_failed",
            "signature",
        ));
    }
    for (case, token, code, result, reason) in bad {
        let mut c = connect().await;
        c.auth(&tok("alice", now() + 3600)).await;
        s.tell("ok", "ok");
        c.start(0).await;
        insert(&db, "alice", case).await;
        let mut r = TxnReader::default();
        let got = read_until_txns(&mut c, &mut r, 1, case).await;
        assert_eq!(title(&got.txns[0]), case);
        c.send(
            1,
            &pb::AuthReq {
                id: "r".into(),
                token: token.clone(),
            },
        )
        .await;
        let frames = rest_until_closed(&mut c, case).await;
        let last = frames.last().unwrap_or_else(|| panic!("{case}: no error"));
        let e = last
            .error()
            .unwrap_or_else(|| panic!("{case}: last frame {}", last.ty));
        assert_eq!(e.code, code as i32, "{case}: {}", e.message);
        assert_no_echo(&e.message, &token, case);
        assert!(
            frames.iter().all(|f| f.ty != 2),
            "{case}: a failed refresh got an AuthResp"
        );
        s.tell(result, reason);
    }

    // 3. Expiry: TOKEN_EXPIRED, the stream pauses (nothing sent), and a
    //    refresh within the grace resumes exactly where it paused.
    let mut c3 = connect().await;
    let mut witness = connect().await;
    witness.auth(&tok("bob", now() + 3600)).await;
    s.tell("ok", "ok");
    witness.start(0).await;
    c3.auth(&tok("alice", now() + 4)).await;
    s.tell("ok", "ok");
    c3.start(0).await;
    insert(&db, "alice", "e1").await;
    let mut wr = TxnReader::default();
    assert_eq!(title(&witness.read_txns(&mut wr, 1).await[0]), "e1");
    // Everything up to the TOKEN_EXPIRED (e1 may come before or after it).
    let mut r = TxnReader::default();
    let mut got: Vec<String> = Vec::new();
    loop {
        let f = c3.recv_timeout(T).await.expect("TOKEN_EXPIRED");
        if let Some(e) = f.error() {
            assert_eq!(e.code, ErrorCode::TokenExpired as i32, "{}", e.message);
            break;
        }
        got.extend(r.feed(&f).iter().map(title));
    }
    assert!(!r.in_transaction(), "paused inside a transaction");
    assert!(
        wait_until(T, || async {
            s.p.metric("pgsat_sessions{state=\"paused\"}") == 1.0
        })
        .await,
        "sessions{{state=paused}} is not 1"
    );
    // Committed while paused; the witness proves the server has them.
    insert(&db, "alice", "p1").await;
    insert(&db, "alice", "p2").await;
    let w: Vec<String> = witness
        .read_txns(&mut wr, 2)
        .await
        .iter()
        .map(title)
        .collect();
    assert_eq!(w, ["p1", "p2"]);
    c3.send(
        1,
        &pb::AuthReq {
            id: "resume".into(),
            token: tok("alice", now() + 3600),
        },
    )
    .await;
    // The next frame is the AuthResp: nothing was sent while paused.
    let f = c3.recv_timeout(T).await.expect("AuthResp");
    assert_eq!(
        f.ty,
        2,
        "frame {} sent while paused ({:?})",
        f.ty,
        f.error()
    );
    s.tell("ok", "ok");
    insert(&db, "alice", "p3").await;
    let want_total = 4 - got.len();
    let more = read_until_txns(&mut c3, &mut r, want_total, "resume").await;
    assert!(more.others.is_empty());
    got.extend(more.txns.iter().map(title));
    assert_eq!(
        got,
        ["e1", "p1", "p2", "p3"],
        "lost or repeated across the pause"
    );
    assert_eq!(s.p.metric("pgsat_sessions{state=\"paused\"}"), 0.0);

    // 4. Expiry without a refresh within the grace: TOKEN_EXPIRED, then
    //    TOKEN_EXPIRED again and close; no transaction in between.
    let mut c = connect().await;
    c.auth(&tok("alice", now() + 3)).await;
    s.tell("ok", "ok");
    c.start(0).await;
    let mut r = TxnReader::default();
    let mut paused = false;
    let frames = rest_until_closed(&mut c, "no refresh").await;
    let mut errors = 0;
    for f in &frames {
        if let Some(e) = f.error() {
            assert_eq!(e.code, ErrorCode::TokenExpired as i32, "{}", e.message);
            errors += 1;
            paused = true;
        } else {
            assert!(!paused, "frame {} after TOKEN_EXPIRED", f.ty);
            r.feed(f);
        }
    }
    assert_eq!(
        errors, 2,
        "TOKEN_EXPIRED at expiry and at the end of the grace"
    );

    // 4b. Expired before starting: StartReplicationReq is answered, the
    //    session stays paused (no stream, counted as paused) until a
    //    refresh, after which it streams.
    let paused_gauge = |p: &Pgsat| p.metric("pgsat_sessions{state=\"paused\"}");
    let mut c4 = connect().await;
    c4.auth(&tok("bob", now() + 3)).await;
    s.tell("ok", "ok");
    let e = c4.recv_timeout(T).await.expect("TOKEN_EXPIRED");
    assert_eq!(
        e.error().map(|e| e.code),
        Some(ErrorCode::TokenExpired as i32)
    );
    assert!(wait_until(T, || async { paused_gauge(&s.p) == 1.0 }).await);
    c4.start(0).await;
    assert_eq!(
        paused_gauge(&s.p),
        1.0,
        "a paused session counted as streaming"
    );
    c4.send(
        1,
        &pb::AuthReq {
            id: "b".into(),
            token: tok("bob", now() + 3600),
        },
    )
    .await;
    assert_eq!(c4.recv_timeout(T).await.expect("AuthResp").ty, 2);
    s.tell("ok", "ok");
    assert_eq!(paused_gauge(&s.p), 0.0);
    insert(&db, "bob", "c4").await;
    let mut r4 = TxnReader::default();
    assert_eq!(title(&c4.read_txns(&mut r4, 1).await[0]), "c4");
    let streaming_before = s.p.metric("pgsat_sessions{state=\"streaming\"}");
    drop(c4);
    assert!(
        wait_until(T, || async {
            s.p.metric("pgsat_sessions{state=\"streaming\"}") == streaming_before - 1.0
        })
        .await
    );

    // 5. The user's row is deleted: every session of that user (streaming,
    //    paused or not started, and c1 and c3 from above) gets USER_DELETED
    //    and is closed; another user's session goes on.
    let mut streaming = connect().await;
    streaming.auth(&tok("alice", now() + 3600)).await;
    streaming.start(0).await;
    let mut idle = connect().await;
    idle.auth(&tok("alice", now() + 3600)).await;
    let mut paused_c = connect().await;
    paused_c.auth(&tok("alice", now() + 3)).await;
    paused_c.start(0).await;
    for _ in 0..3 {
        s.tell("ok", "ok");
    }
    let e = paused_c
        .recv_timeout(T)
        .await
        .expect("TOKEN_EXPIRED")
        .error()
        .expect("error");
    assert_eq!(e.code, ErrorCode::TokenExpired as i32);
    db.batch_execute("DELETE FROM users WHERE id = 'alice'")
        .await
        .expect("delete");
    for (case, c) in [
        ("streaming", &mut streaming),
        ("idle", &mut idle),
        ("paused", &mut paused_c),
        ("refreshed", &mut c1),
        ("resumed", &mut c3),
    ] {
        let frames = rest_until_closed(c, case).await;
        let e = frames
            .last()
            .and_then(RawFrame::error)
            .unwrap_or_else(|| panic!("{case}: no USER_DELETED"));
        assert_eq!(
            e.code,
            ErrorCode::UserDeleted as i32,
            "{case}: {}",
            e.message
        );
    }
    insert(&db, "bob", "after delete").await;
    // The witness (bob) gets p3, c4, the users-row delete and this insert.
    let w = witness.read_txns(&mut wr, 4).await;
    assert_eq!((title(&w[0]), title(&w[1])), ("p3".into(), "c4".into()));
    assert!(
        matches!(&w[2].ops[..], [pb::trans_op::Op::Delete(_)]),
        "{:?}",
        w[2]
    );
    assert_eq!(title(&w[3]), "after delete");
    s.case(
        "deleted user",
        &tok("alice", now() + 3600),
        Expect::NotFound,
    )
    .await;
    assert_eq!(
        s.p.metric("pgsat_sessions_closed_total{reason=\"user_deleted\"}"),
        5.0
    );
    s.check_metrics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_expiry_and_deletion_secure_mode() {
    run_refresh(Mode::Secure, false).await;
}

/// The same over the WebSocket listener (secure mode: the token checks
/// themselves are covered on both listeners by the attack tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_expiry_and_deletion_over_websocket() {
    run_refresh(Mode::Secure, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_expiry_and_deletion_insecure_mode() {
    run_refresh(Mode::Insecure, false).await;
}

/// JWKS endpoint down when pgsat starts: it starts anyway (ready), refuses
/// tokens with INTERNAL (the check cannot be made; not AUTH_FAILED), retries
/// every 5 s, and accepts once the endpoint answers. With AUTH_JWT_ALG set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_at_start_is_internal_until_the_first_fetch() {
    let pg = start_pg().await;
    let root = tempfile::tempdir().expect("tempdir");
    let k1 = rsa_key(1);
    let jwks = JwksServer::start(json!([jwk(&k1, "k1")])).await;
    jwks.set_down();
    let p = Pgsat::start(
        &pg,
        root.path(),
        &[
            ("AUTH_MODE", "secure"),
            ("AUTH_JWT_ALG", "RS256"),
            ("AUTH_JWT_JWKS_URL", &jwks.url),
        ],
    );
    assert!(!jwks.hits().is_empty(), "no fetch at start");
    let token = kid_token("k1", &k1);
    let e = attempt(Listener::Tcp(p.tcp), 0, &token, "JWKS never fetched")
        .await
        .expect_err("refused while no key set was ever fetched");
    assert_eq!(e.code, ErrorCode::Internal as i32, "{}", e.message);
    assert!(e.message.contains("JWKS"), "{}", e.message);
    let wrong = jwt(
        &json!({"alg": "HS256", "kid": "k1"}),
        &json!({"user_id": "alice", "exp": now() + 60}),
        Some((Algorithm::HS256, &hs("x"))),
    );
    let e = attempt(Listener::Tcp(p.tcp), 0, &wrong, "wrong alg, no key set")
        .await
        .expect_err("wrong alg");
    assert_eq!(
        e.code,
        ErrorCode::AuthFailed as i32,
        "the header is checked first"
    );

    jwks.set_keys(json!([jwk(&k1, "k1")]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = RawClient::connect(p.tcp).await;
        c.send(
            1,
            &pb::AuthReq {
                id: "j".into(),
                token: token.clone(),
            },
        )
        .await;
        let f = c.recv_timeout(T).await.expect("answer");
        if f.ty == 2 {
            break;
        }
        let e = f.error().expect("ErrorResp");
        assert_eq!(e.code, ErrorCode::Internal as i32, "{}", e.message);
        assert!(
            Instant::now() < deadline,
            "still refused 30 s after the endpoint came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Retries while empty are at least 5 s apart.
    let hits = jwks.hits();
    for w in hits.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(4_900),
            "{:?}",
            w[1] - w[0]
        );
    }
    let m = p.metrics();
    assert!(
        m.contains("pgsat_auth_attempts_total{reason=\"internal\",result=\"internal\"}"),
        "{m}"
    );
}
