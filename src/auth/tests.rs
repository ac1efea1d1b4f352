//! The attack suite: every case is a token built byte by byte and the exact
//! `ErrorCode` it must get (no database: `verify_token` / `verify`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::*;
use crate::protocol::pb::ErrorCode;

const NOW: u64 = 1_700_000_000;
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs512-0123456789";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn settings(mode: AuthMode, alg: Option<Algorithm>, key: Option<String>) -> AuthSettings {
    AuthSettings {
        mode,
        alg,
        key,
        jwks_url: None,
        iss: None,
        aud: None,
        namespace: None,
        leeway: Duration::ZERO,
        users_table: "users".into(),
        users_id_column: "id".into(),
        auth_timeout: Duration::from_secs(5),
        refresh_grace: Duration::from_secs(30),
    }
}

/// (verification key as configured, signing key) for an algorithm.
fn keys_for(alg: Algorithm) -> (String, EncodingKey) {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => (SECRET.into(), EncodingKey::from_secret(SECRET.as_bytes())),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => (
            fixture("rsa_public.pem"),
            EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap(),
        ),
        ES256 => (
            fixture("ec256_public.pem"),
            EncodingKey::from_ec_pem(fixture("ec256_private.pem").as_bytes()).unwrap(),
        ),
        ES384 => (
            fixture("ec384_public.pem"),
            EncodingKey::from_ec_pem(fixture("ec384_private.pem").as_bytes()).unwrap(),
        ),
        EdDSA => (
            fixture("ed25519_public.pem"),
            EncodingKey::from_ed_pem(fixture("ed25519_private.pem").as_bytes()).unwrap(),
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

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// A token from raw header and claims JSON text, signed with `alg`/`key`
/// (or with the given raw signature segment).
fn token(header: &str, claims: &str, sign: Option<(Algorithm, &EncodingKey)>) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = match sign {
        Some((alg, key)) => jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{input}.{sig}")
}

fn header_for(alg: Algorithm) -> String {
    format!(r#"{{"alg":"{}","typ":"JWT"}}"#, jwt::alg_name(alg))
}

fn claims() -> Value {
    json!({"user_id": "u1", "exp": NOW + 3600, "iat": NOW})
}

fn with(mut base: Value, key: &str, v: Value) -> String {
    base[key] = v;
    base.to_string()
}

fn without(mut base: Value, key: &str) -> String {
    base.as_object_mut().unwrap().remove(key);
    base.to_string()
}

/// Asserts the outcome's code and that the message does not echo the token.
fn expect(a: &Authenticator, tok: &str, want: Option<ErrorCode>, case: &str) {
    let got = a.verify_token(tok, now());
    match (want, got) {
        (None, Ok(v)) => assert_eq!(v.principal.user_id, "u1", "{case}"),
        (None, Err(e)) => panic!("{case}: expected success, got {e:?}"),
        (Some(code), Ok(_)) => panic!("{case}: expected {code:?}, got success"),
        (Some(code), Err(e)) => {
            assert_eq!(e.code(), code, "{case}: {e:?}");
            if let AuthError::Failed { check, .. } = &e {
                // Every check has its own pre-registered metric series.
                assert!(
                    error::FAILED_CHECKS.contains(check),
                    "{case}: check {check:?} is not in FAILED_CHECKS"
                );
            }
            let msg = e.message();
            assert!(!msg.is_empty(), "{case}");
            for seg in tok.split('.').filter(|s| s.len() >= 8) {
                assert!(
                    !msg.contains(seg),
                    "{case}: message echoes the token: {msg}"
                );
            }
        }
    }
}

const FAILED: Option<ErrorCode> = Some(ErrorCode::AuthFailed);
const EXPIRED: Option<ErrorCode> = Some(ErrorCode::TokenExpired);
const OK: Option<ErrorCode> = None;

fn secure(alg: Algorithm) -> (Authenticator, EncodingKey) {
    let (vk, sk) = keys_for(alg);
    let a = Authenticator::verifier_only(&settings(AuthMode::Secure, Some(alg), Some(vk))).unwrap();
    (a, sk)
}

#[test]
fn every_algorithm_accepts_a_valid_token_and_refuses_a_foreign_signature() {
    for alg in ALL_ALGS {
        let (a, sk) = secure(alg);
        let tok = token(&header_for(alg), &claims().to_string(), Some((alg, &sk)));
        let v = a
            .verify_token(&tok, now())
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(v.alg, Some(alg));
        assert_eq!(v.principal.user_id, "u1");
        assert_eq!(
            v.principal.expires_at,
            Some((NOW as i64 + 3600) * 1_000_000)
        );
        assert_eq!(v.principal.raw_claims, claims());

        // Same header and claims, signed by another key of the same family.
        let other = match alg.family() {
            jsonwebtoken::AlgorithmFamily::Hmac => EncodingKey::from_secret(b"another secret"),
            jsonwebtoken::AlgorithmFamily::Rsa => {
                EncodingKey::from_rsa_pem(fixture("rsa2_private.pem").as_bytes()).unwrap()
            }
            jsonwebtoken::AlgorithmFamily::Ec | jsonwebtoken::AlgorithmFamily::Ed => {
                let parts: Vec<&str> = tok.split('.').collect();
                let c2 = b64(&with(claims(), "user_id", json!("u2")));
                let t = format!("{}.{}.{}", parts[0], c2, parts[2]);
                expect(&a, &t, FAILED, &format!("{alg:?} tampered claims"));
                continue;
            }
        };
        let forged = token(&header_for(alg), &claims().to_string(), Some((alg, &other)));
        expect(&a, &forged, FAILED, &format!("{alg:?} foreign key"));
        // Tampered claims with the original signature.
        let parts: Vec<&str> = tok.split('.').collect();
        let t = format!(
            "{}.{}.{}",
            parts[0],
            b64(&with(claims(), "user_id", json!("u2"))),
            parts[2]
        );
        expect(&a, &t, FAILED, &format!("{alg:?} tampered claims"));
    }
}

#[test]
fn secure_mode_attacks() {
    let (hs, hs_key) = secure(Algorithm::HS256);
    let (rs, rs_key) = secure(Algorithm::RS256);
    let c = claims().to_string();
    let good_hs = token(
        &header_for(Algorithm::HS256),
        &c,
        Some((Algorithm::HS256, &hs_key)),
    );
    let good_rs = token(
        &header_for(Algorithm::RS256),
        &c,
        Some((Algorithm::RS256, &rs_key)),
    );
    expect(&hs, &good_hs, OK, "valid HS256");
    expect(&rs, &good_rs, OK, "valid RS256");

    // alg none, empty signature, stripped signature.
    let none = token(r#"{"alg":"none","typ":"JWT"}"#, &c, None);
    expect(&hs, &none, FAILED, "alg none");
    expect(&rs, &none, FAILED, "alg none (RS256)");
    expect(
        &hs,
        &token(r#"{"alg":"None"}"#, &c, None),
        FAILED,
        "alg None",
    );
    let (h, rest) = good_hs.split_once('.').unwrap();
    let (cl, _sig) = rest.split_once('.').unwrap();
    expect(&hs, &format!("{h}.{cl}."), FAILED, "empty signature");
    expect(&hs, &format!("{h}.{cl}"), FAILED, "stripped signature");

    // HS256 signed with the RSA public key PEM as the HMAC secret.
    let pem_secret = EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes());
    let confused = token(
        &header_for(Algorithm::HS256),
        &c,
        Some((Algorithm::HS256, &pem_secret)),
    );
    expect(
        &rs,
        &confused,
        FAILED,
        "HS256 with RSA public PEM as secret",
    );

    // alg differing from config (validly signed with the same secret).
    let hs512 = token(
        &header_for(Algorithm::HS512),
        &c,
        Some((Algorithm::HS512, &hs_key)),
    );
    expect(&hs, &hs512, FAILED, "HS512 when HS256 configured");
    let ps256 = token(
        &header_for(Algorithm::PS256),
        &c,
        Some((Algorithm::PS256, &rs_key)),
    );
    expect(&rs, &ps256, FAILED, "PS256 when RS256 configured");
    expect(
        &rs,
        &token(r#"{"alg":7}"#, &c, None),
        FAILED,
        "alg not a string",
    );
    expect(
        &rs,
        &token(r#"{"typ":"JWT"}"#, &c, None),
        FAILED,
        "alg missing",
    );

    // Key-carrying and critical headers, validly signed.
    for (name, hdr) in [
        (
            "jwk",
            r#"{"alg":"RS256","jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"}}"#,
        ),
        (
            "jku",
            r#"{"alg":"RS256","jku":"https://evil.example/jwks.json"}"#,
        ),
        (
            "x5u",
            r#"{"alg":"RS256","x5u":"https://evil.example/cert.pem"}"#,
        ),
        ("x5c", r#"{"alg":"RS256","x5c":["MIIB"]}"#),
        ("crit", r#"{"alg":"RS256","crit":["exp"],"exp":1}"#),
        ("crit empty", r#"{"alg":"RS256","crit":[]}"#),
    ] {
        let t = token(hdr, &c, Some((Algorithm::RS256, &rs_key)));
        expect(&rs, &t, FAILED, name);
    }

    // kid: opaque, ignored with a static key; over-long refused.
    for kid in [
        "unknown",
        "../../etc/passwd",
        "' OR 1=1 --",
        "http://x/y",
        "\u{0}",
    ] {
        let hdr = json!({"alg": "RS256", "kid": kid}).to_string();
        let t = token(&hdr, &c, Some((Algorithm::RS256, &rs_key)));
        expect(&rs, &t, OK, &format!("kid {kid:?} with a static key"));
    }
    let long = json!({"alg": "RS256", "kid": "k".repeat(10_000)}).to_string();
    let t = token(&long, &c, Some((Algorithm::RS256, &rs_key)));
    expect(&rs, &t, FAILED, "very long kid");
    let t = token(
        r#"{"alg":"RS256","kid":5}"#,
        &c,
        Some((Algorithm::RS256, &rs_key)),
    );
    expect(&rs, &t, FAILED, "kid not a string");
}

#[test]
fn claim_checks() {
    let (hs, key) = secure(Algorithm::HS256);
    let h = header_for(Algorithm::HS256);
    let s = |claims: &str| token(&h, claims, Some((Algorithm::HS256, &key)));
    let cases: Vec<(&str, String, Option<ErrorCode>)> = vec![
        ("expired", with(claims(), "exp", json!(NOW - 10)), EXPIRED),
        ("exp == now", with(claims(), "exp", json!(NOW)), OK),
        ("exp missing", without(claims(), "exp"), FAILED),
        (
            "exp as string",
            with(claims(), "exp", json!((NOW + 60).to_string())),
            FAILED,
        ),
        ("exp null", with(claims(), "exp", Value::Null), FAILED),
        (
            "exp fractional",
            with(claims(), "exp", json!(NOW as f64 + 0.5)),
            OK,
        ),
        ("nbf future", with(claims(), "nbf", json!(NOW + 10)), FAILED),
        ("nbf past", with(claims(), "nbf", json!(NOW - 10)), OK),
        ("nbf string", with(claims(), "nbf", json!("0")), FAILED),
        ("iat future", with(claims(), "iat", json!(NOW + 10)), FAILED),
        ("iat string", with(claims(), "iat", json!("x")), FAILED),
        ("user_id missing", without(claims(), "user_id"), FAILED),
        (
            "user_id empty",
            with(claims(), "user_id", json!("")),
            FAILED,
        ),
        (
            "user_id whitespace",
            with(claims(), "user_id", json!(" \t\n ")),
            FAILED,
        ),
        (
            "user_id number",
            with(claims(), "user_id", json!(42)),
            FAILED,
        ),
        (
            "user_id array",
            with(claims(), "user_id", json!(["u1"])),
            FAILED,
        ),
        (
            "user_id object",
            with(claims(), "user_id", json!({"id": "u1"})),
            FAILED,
        ),
        (
            "user_id null",
            with(claims(), "user_id", Value::Null),
            FAILED,
        ),
        (
            "user_id bool",
            with(claims(), "user_id", json!(true)),
            FAILED,
        ),
    ];
    for (name, c, want) in cases {
        expect(&hs, &s(&c), want, name);
    }
    // Expired with a bad signature is AUTH_FAILED: the signature comes first.
    let bad = token(
        &h,
        &with(claims(), "exp", json!(NOW - 10)),
        Some((Algorithm::HS256, &EncodingKey::from_secret(b"x"))),
    );
    expect(&hs, &bad, FAILED, "expired + bad signature");
}

#[test]
fn leeway_edges() {
    let (vk, key) = keys_for(Algorithm::HS256);
    let mut st = settings(AuthMode::Secure, Some(Algorithm::HS256), Some(vk));
    st.leeway = Duration::from_secs(5);
    let a = Authenticator::verifier_only(&st).unwrap();
    let h = header_for(Algorithm::HS256);
    let s = |claims: String| token(&h, &claims, Some((Algorithm::HS256, &key)));
    let l = 5;
    expect(
        &a,
        &s(with(claims(), "exp", json!(NOW - l - 1))),
        EXPIRED,
        "exp beyond leeway",
    );
    expect(
        &a,
        &s(with(claims(), "exp", json!(NOW - l + 1))),
        OK,
        "exp within leeway",
    );
    expect(
        &a,
        &s(with(claims(), "exp", json!(NOW - l))),
        OK,
        "exp at leeway",
    );
    expect(
        &a,
        &s(with(claims(), "nbf", json!(NOW + l + 1))),
        FAILED,
        "nbf beyond leeway",
    );
    expect(
        &a,
        &s(with(claims(), "nbf", json!(NOW + l - 1))),
        OK,
        "nbf within leeway",
    );
    expect(
        &a,
        &s(with(claims(), "iat", json!(NOW + l + 1))),
        FAILED,
        "iat beyond leeway",
    );
    expect(
        &a,
        &s(with(claims(), "iat", json!(NOW + l - 1))),
        OK,
        "iat within leeway",
    );

    // Zero leeway: one second either side.
    let (z, _) = secure(Algorithm::HS256);
    expect(
        &z,
        &s(with(claims(), "exp", json!(NOW - 1))),
        EXPIRED,
        "exp 1s ago, no leeway",
    );
    expect(
        &z,
        &s(with(claims(), "exp", json!(NOW + 1))),
        OK,
        "exp in 1s, no leeway",
    );
    expect(
        &z,
        &s(with(claims(), "nbf", json!(NOW + 1))),
        FAILED,
        "nbf in 1s, no leeway",
    );
    expect(
        &z,
        &s(with(claims(), "nbf", json!(NOW - 1))),
        OK,
        "nbf 1s ago, no leeway",
    );
    expect(
        &z,
        &s(with(claims(), "iat", json!(NOW + 1))),
        FAILED,
        "iat in 1s, no leeway",
    );
}

#[test]
fn issuer_and_audience() {
    let (vk, key) = keys_for(Algorithm::HS256);
    let mut st = settings(AuthMode::Secure, Some(Algorithm::HS256), Some(vk));
    st.iss = Some("https://issuer.example".into());
    st.aud = Some("pgsat".into());
    let a = Authenticator::verifier_only(&st).unwrap();
    let h = header_for(Algorithm::HS256);
    let s = |claims: Value| token(&h, &claims.to_string(), Some((Algorithm::HS256, &key)));
    let base = || {
        let mut c = claims();
        c["iss"] = json!("https://issuer.example");
        c["aud"] = json!("pgsat");
        c
    };
    expect(&a, &s(base()), OK, "iss and aud match");
    let mut c = base();
    c["aud"] = json!(["other", "pgsat"]);
    expect(&a, &s(c), OK, "aud array containing it");
    let cases = [
        ("wrong iss", "iss", json!("https://evil.example")),
        (
            "iss with trailing slash",
            "iss",
            json!("https://issuer.example/"),
        ),
        ("iss not a string", "iss", json!(1)),
        ("wrong aud", "aud", json!("other")),
        ("aud case differs", "aud", json!("PGSAT")),
        ("aud array without it", "aud", json!(["a", "b"])),
        ("aud object", "aud", json!({"pgsat": true})),
    ];
    for (name, k, v) in cases {
        let mut c = base();
        c[k] = v;
        expect(&a, &s(c), FAILED, name);
    }
    for k in ["iss", "aud"] {
        let mut c = base();
        c.as_object_mut().unwrap().remove(k);
        expect(&a, &s(c), FAILED, &format!("{k} missing"));
    }
}

#[test]
fn namespaced_user_id() {
    let (vk, key) = keys_for(Algorithm::HS256);
    let mut st = settings(AuthMode::Secure, Some(Algorithm::HS256), Some(vk));
    st.namespace = Some("https://example.com/jwt".into());
    let a = Authenticator::verifier_only(&st).unwrap();
    let h = header_for(Algorithm::HS256);
    let s = |claims: Value| token(&h, &claims.to_string(), Some((Algorithm::HS256, &key)));
    let ns = json!({"user_id": "u1", "role": "admin"});
    let tok = s(json!({"exp": NOW + 60, "https://example.com/jwt": ns}));
    let v = a.verify_token(&tok, now()).unwrap();
    assert_eq!(v.principal.user_id, "u1");
    assert_eq!(v.principal.claims, ns);
    assert_eq!(v.principal.raw_claims["exp"], json!(NOW + 60));
    expect(
        &a,
        &s(claims()),
        FAILED,
        "namespace absent (top-level user_id ignored)",
    );
    expect(
        &a,
        &s(json!({"exp": NOW + 60, "https://example.com/jwt": "u1"})),
        FAILED,
        "namespace not an object",
    );
    expect(
        &a,
        &s(json!({"exp": NOW + 60, "https://example.com/jwt": {"user_id": 1}})),
        FAILED,
        "namespaced user_id number",
    );
}

#[test]
fn malformed_tokens() {
    let (hs, key) = secure(Algorithm::HS256);
    let h = header_for(Algorithm::HS256);
    let c = claims().to_string();
    let good = token(&h, &c, Some((Algorithm::HS256, &key)));
    let parts: Vec<&str> = good.split('.').collect();
    let sig = |hh: &str, cc: &str| {
        let input = format!("{hh}.{cc}");
        let s = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{input}.{s}")
    };
    let padded_header = URL_SAFE.encode(r#"{"alg":"HS256" }"#); // ends with '='
    assert!(padded_header.ends_with('='));
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("not base64", format!("!!!.{}.{}", parts[1], parts[2])),
        (
            "standard base64 alphabet",
            sig(&b64(&h).replace('J', "+"), parts[1]),
        ),
        ("padding in header", sig(&padded_header, parts[1])),
        ("padding in signature", format!("{good}=")),
        ("2 segments", format!("{}.{}", parts[0], parts[1])),
        ("4 segments", format!("{good}.{}", parts[2])),
        ("1 segment", parts[0].to_string()),
        (
            "empty header segment",
            format!(".{}.{}", parts[1], parts[2]),
        ),
        ("non-JSON header", sig(&b64("not json"), parts[1])),
        ("header JSON array", sig(&b64(r#"["HS256"]"#), parts[1])),
        ("non-JSON claims", sig(parts[0], &b64("{user_id:u1}"))),
        ("claims JSON string", sig(parts[0], &b64(r#""u1""#))),
        (
            "trailing garbage in claims",
            sig(parts[0], &b64(&format!("{c}x"))),
        ),
        (
            "duplicate alg in header",
            sig(&b64(r#"{"alg":"none","alg":"HS256"}"#), parts[1]),
        ),
        (
            "duplicate user_id in claims",
            sig(
                parts[0],
                &b64(&format!(
                    r#"{{"user_id":"admin","user_id":"u1","exp":{}}}"#,
                    NOW + 60
                )),
            ),
        ),
        (
            "duplicate exp in claims",
            sig(
                parts[0],
                &b64(&format!(r#"{{"user_id":"u1","exp":1,"exp":{}}}"#, NOW + 60)),
            ),
        ),
        ("100 KiB token", "a".repeat(100 * 1024)),
        (
            "8 KiB + 1 token",
            format!("{good}{}", "A".repeat(8 * 1024 + 1 - good.len())),
        ),
    ];
    for (name, t) in cases {
        expect(&hs, &t, FAILED, name);
    }
    // The size check comes before decoding.
    let e = hs.verify_token(&"a".repeat(100 * 1024), now()).unwrap_err();
    assert_eq!(e.metric_label(), "too_large");
    // Around the limit, validly signed: the last size ≤ 8 KiB passes, the
    // first above is refused by the size check.
    let mut below = None;
    let mut above = None;
    for n in 5800..6300 {
        let mut big = claims();
        big["pad"] = json!("x".repeat(n));
        let t = sig(parts[0], &b64(&big.to_string()));
        if t.len() <= 8 * 1024 {
            below = Some(t);
        } else if above.is_none() {
            above = Some(t);
        }
    }
    let (below, above) = (below.unwrap(), above.unwrap());
    assert!(below.len() > 8 * 1024 - 4 && above.len() < 8 * 1024 + 4);
    expect(&hs, &below, OK, "validly signed token just under 8 KiB");
    expect(&hs, &above, FAILED, "validly signed token just over 8 KiB");
    assert_eq!(
        hs.verify_token(&above, now()).unwrap_err().metric_label(),
        "too_large"
    );
}

#[test]
fn insecure_mode_skips_signatures_but_not_claims() {
    let a = Authenticator::verifier_only(&settings(AuthMode::Insecure, None, None)).unwrap();
    assert_eq!(a.mode(), AuthMode::Insecure);
    let c = claims().to_string();
    expect(
        &a,
        &token(r#"{"alg":"none"}"#, &c, None),
        OK,
        "alg none unsigned",
    );
    expect(
        &a,
        &format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&c)),
        OK,
        "empty signature",
    );
    let forged = token(
        &header_for(Algorithm::HS256),
        &c,
        Some((Algorithm::HS256, &EncodingKey::from_secret(b"whatever"))),
    );
    expect(&a, &forged, OK, "any signature");
    let v = a.verify_token(&forged, now()).unwrap();
    assert_eq!(v.alg, None);

    let n = |claims: String| token(r#"{"alg":"none"}"#, &claims, None);
    expect(
        &a,
        &n(with(claims(), "exp", json!(NOW - 1))),
        EXPIRED,
        "expired",
    );
    expect(&a, &n(without(claims(), "exp")), FAILED, "exp missing");
    expect(
        &a,
        &n(with(claims(), "exp", json!("soon"))),
        FAILED,
        "exp string",
    );
    expect(
        &a,
        &n(with(claims(), "nbf", json!(NOW + 60))),
        FAILED,
        "nbf future",
    );
    expect(
        &a,
        &n(with(claims(), "iat", json!(NOW + 60))),
        FAILED,
        "iat future",
    );
    expect(
        &a,
        &n(without(claims(), "user_id")),
        FAILED,
        "user_id missing",
    );
    expect(
        &a,
        &n(with(claims(), "user_id", json!(" "))),
        FAILED,
        "user_id whitespace",
    );
    expect(
        &a,
        &n(with(claims(), "user_id", json!(7))),
        FAILED,
        "user_id number",
    );
    expect(
        &a,
        &token(r#"{"alg":"none","jku":"http://x"}"#, &c, None),
        FAILED,
        "jku",
    );
    expect(
        &a,
        &format!("{}.{}", b64(r#"{"alg":"none"}"#), b64(&c)),
        FAILED,
        "2 segments",
    );
    expect(&a, &"a".repeat(100 * 1024), FAILED, "100 KiB");

    let mut st = settings(AuthMode::Insecure, None, None);
    st.iss = Some("me".into());
    let a = Authenticator::verifier_only(&st).unwrap();
    expect(
        &a,
        &n(claims().to_string()),
        FAILED,
        "iss missing (insecure)",
    );
    expect(
        &a,
        &n(with(claims(), "iss", json!("me"))),
        OK,
        "iss ok (insecure)",
    );
}

#[test]
fn configuration_is_validated() {
    let bad = [
        settings(AuthMode::Secure, None, None),
        settings(AuthMode::Secure, Some(Algorithm::HS256), None),
        settings(
            AuthMode::Secure,
            Some(Algorithm::HS256),
            Some(String::new()),
        ),
        settings(
            AuthMode::Secure,
            Some(Algorithm::HS256),
            Some(fixture("rsa_public.pem")),
        ),
        settings(
            AuthMode::Secure,
            Some(Algorithm::RS256),
            Some("not a pem".into()),
        ),
        settings(
            AuthMode::Secure,
            Some(Algorithm::RS256),
            Some(fixture("ec256_public.pem")),
        ),
        settings(
            AuthMode::Secure,
            Some(Algorithm::ES256),
            Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()),
        ),
        settings(
            AuthMode::Secure,
            Some(Algorithm::EdDSA),
            Some(fixture("rsa_public.pem")),
        ),
    ];
    for (i, s) in bad.iter().enumerate() {
        let e = Authenticator::verifier_only(s).unwrap_err();
        assert!(e.to_string().contains("AUTH_JWT_"), "case {i}: {e}");
    }
    let mut s = settings(AuthMode::Secure, None, None);
    s.jwks_url = Some("ftp://x/jwks".into());
    assert!(Authenticator::verifier_only(&s).is_err());
    s.jwks_url = Some("https://x/jwks".into());
    s.key = Some(SECRET.into());
    assert!(Authenticator::verifier_only(&s).is_err());
}

#[test]
fn error_codes_and_labels() {
    assert_eq!(AuthError::Expired.code(), ErrorCode::TokenExpired);
    assert_eq!(AuthError::UserNotFound.code(), ErrorCode::UserNotFound);
    assert_eq!(AuthError::Internal("x".into()).code(), ErrorCode::Internal);
    assert_eq!(AuthError::failed("alg", "x").code(), ErrorCode::AuthFailed);
    assert_eq!(AuthError::failed("alg", "x").metric_label(), "alg");
    assert_eq!(AuthError::UserNotFound.metric_label(), "user_not_found");
    let (rs, _) = secure(Algorithm::RS256);
    let (_, hs_key) = secure(Algorithm::HS256);
    let t = token(
        &header_for(Algorithm::HS256),
        &claims().to_string(),
        Some((Algorithm::HS256, &hs_key)),
    );
    let m = rs.verify_token(&t, now()).unwrap_err().message();
    assert!(
        m.contains("alg HS256 does not match the configured RS256"),
        "{m}"
    );
}

#[test]
fn minted_tokens_verify() {
    for alg in ALL_ALGS {
        let (vk, _) = keys_for(alg);
        let sk = match alg.family() {
            jsonwebtoken::AlgorithmFamily::Hmac => SECRET.to_string(),
            jsonwebtoken::AlgorithmFamily::Rsa => fixture("rsa_private.pem"),
            jsonwebtoken::AlgorithmFamily::Ec if alg == Algorithm::ES256 => {
                fixture("ec256_private.pem")
            }
            jsonwebtoken::AlgorithmFamily::Ec => fixture("ec384_private.pem"),
            jsonwebtoken::AlgorithmFamily::Ed => fixture("ed25519_private.pem"),
        };
        let mut extra = serde_json::Map::new();
        extra.insert("role".into(), json!("dev"));
        let t = mint_token("u1", Duration::from_secs(3600), Some(alg), Some(&sk), extra).unwrap();
        let a =
            Authenticator::verifier_only(&settings(AuthMode::Secure, Some(alg), Some(vk))).unwrap();
        let v = a
            .verify_token(&t, SystemTime::now())
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(v.principal.user_id, "u1");
        assert_eq!(v.principal.raw_claims["role"], json!("dev"));
    }
    let t = mint_token(
        "u1",
        Duration::from_secs(60),
        None,
        None,
        Default::default(),
    )
    .unwrap();
    assert!(t.ends_with('.'));
    let ins = Authenticator::verifier_only(&settings(AuthMode::Insecure, None, None)).unwrap();
    assert!(ins.verify_token(&t, SystemTime::now()).is_ok());
    let (sec, _) = secure(Algorithm::HS256);
    assert_eq!(
        sec.verify_token(&t, SystemTime::now()).unwrap_err().code(),
        ErrorCode::AuthFailed
    );
    assert!(mint_token("", Duration::from_secs(60), None, None, Default::default()).is_err());
    assert!(mint_token(
        "u",
        Duration::from_secs(60),
        Some(Algorithm::RS256),
        None,
        Default::default()
    )
    .is_err());
    assert!(mint_token(
        "u",
        Duration::from_secs(60),
        Some(Algorithm::RS256),
        Some("x"),
        Default::default()
    )
    .is_err());
}

// ---------------------------------------------------------------- JWKS

#[path = "../../tests/support/jwks.rs"]
mod jwks_server;
use jwks_server::JwksServer;

fn rsa_sk(n: u8) -> EncodingKey {
    let f = if n == 1 {
        "rsa_private.pem"
    } else {
        "rsa2_private.pem"
    };
    EncodingKey::from_rsa_pem(fixture(f).as_bytes()).unwrap()
}

fn jwk(sk: &EncodingKey, alg: Algorithm, kid: &str, with_alg: bool) -> Value {
    let mut v =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(sk, alg).unwrap()).unwrap();
    v["kid"] = json!(kid);
    v["use"] = json!("sig");
    if !with_alg {
        v.as_object_mut().unwrap().remove("alg");
    }
    v
}

fn kid_token(alg: Algorithm, kid: &str, sk: &EncodingKey) -> String {
    let h = json!({"alg": jwt::alg_name(alg), "kid": kid}).to_string();
    let c = json!({"user_id": "u1", "exp": now_secs() + 3600}).to_string();
    token(&h, &c, Some((alg, sk)))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwks_auth(url: &str, alg: Option<Algorithm>, min_refetch: Duration) -> Authenticator {
    let mut s = settings(AuthMode::Secure, alg, None);
    s.jwks_url = Some(url.into());
    Authenticator::verifier_with_refetch(&s, min_refetch).unwrap()
}

async fn code_of(a: &Authenticator, t: &str) -> Option<ErrorCode> {
    a.verify(t, SystemTime::now()).await.err().map(|e| e.code())
}

#[tokio::test]
async fn jwks_rotation() {
    let (k1, k2) = (rsa_sk(1), rsa_sk(2));
    let srv = JwksServer::start(json!([jwk(&k1, Algorithm::RS256, "k1", true)])).await;
    let a = jwks_auth(&srv.url, Some(Algorithm::RS256), Duration::ZERO);
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k1)).await,
        OK
    );
    assert_eq!(srv.hit_count(), 1);
    // k2 signed by k1's kid: wrong key.
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k2)).await,
        FAILED
    );
    // Rotation: k2 appears, k1 removed.
    srv.set_keys(json!([jwk(&k2, Algorithm::RS256, "k2", true)]));
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k2", &k2)).await,
        OK
    );
    assert_eq!(srv.hit_count(), 2);
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k1)).await,
        FAILED
    );
    // Sync verification uses the cache only.
    assert!(a
        .verify_token(&kid_token(Algorithm::RS256, "k2", &k2), SystemTime::now())
        .is_ok());
}

#[tokio::test]
async fn jwks_endpoint_down_keeps_last_good_set() {
    let k1 = rsa_sk(1);
    let srv = JwksServer::start(json!([jwk(&k1, Algorithm::RS256, "k1", true)])).await;
    let a = jwks_auth(&srv.url, Some(Algorithm::RS256), Duration::ZERO);
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k1)).await,
        OK
    );
    srv.set_down();
    // Unknown kid: a refetch is tried, fails, the old set stays.
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k9", &k1)).await,
        FAILED
    );
    assert_eq!(srv.hit_count(), 2);
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k1)).await,
        OK
    );
    // Malformed document: same.
    srv.set_body(200, "{\"keys\": 5}");
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k8", &k1)).await,
        FAILED
    );
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k1)).await,
        OK
    );
}

#[tokio::test]
async fn jwks_never_fetched_is_internal() {
    let k1 = rsa_sk(1);
    let srv = JwksServer::start(json!([])).await;
    srv.set_down();
    let a = jwks_auth(&srv.url, Some(Algorithm::RS256), jwks::MIN_REFETCH);
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k1)).await,
        Some(ErrorCode::Internal)
    );
}

#[tokio::test]
async fn jwks_refetch_is_rate_limited() {
    let k1 = rsa_sk(1);
    let k2 = rsa_sk(2);
    let srv = JwksServer::start(json!([jwk(&k1, Algorithm::RS256, "k1", true)])).await;
    let a = jwks_auth(&srv.url, Some(Algorithm::RS256), jwks::MIN_REFETCH);
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k1", &k1)).await,
        OK
    );
    assert_eq!(srv.hit_count(), 1);
    srv.set_keys(json!([
        jwk(&k1, Algorithm::RS256, "k1", true),
        jwk(&k2, Algorithm::RS256, "k2", true)
    ]));
    // Two unknown kids within 30 s: no refetch at all after the first fetch.
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "nope", &k1)).await,
        FAILED
    );
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "k2", &k2)).await,
        FAILED
    );
    assert_eq!(srv.hit_count(), 1);
    assert_eq!(a.jwks().unwrap().fetch_count(), 1);

    // Fresh cache: the first unknown kid fetches, the second does not.
    let b = jwks_auth(&srv.url, Some(Algorithm::RS256), jwks::MIN_REFETCH);
    assert!(b.jwks().unwrap().refresh().await);
    assert!(!b.jwks().unwrap().refresh().await);
    assert_eq!(
        code_of(&b, &kid_token(Algorithm::RS256, "x1", &k1)).await,
        FAILED
    );
    assert_eq!(
        code_of(&b, &kid_token(Algorithm::RS256, "x2", &k1)).await,
        FAILED
    );
    assert_eq!(b.jwks().unwrap().fetch_count(), 1);
}

#[tokio::test]
async fn jwks_key_selection_attacks() {
    let k1 = rsa_sk(1);
    let ec = EncodingKey::from_ec_pem(fixture("ec256_private.pem").as_bytes()).unwrap();
    let srv = JwksServer::start(json!([
        jwk(&k1, Algorithm::RS256, "rsa", true),
        jwk(&k1, Algorithm::RS384, "rsa384", true),
        jwk(&ec, Algorithm::ES256, "ec", false),
    ]))
    .await;
    let a = jwks_auth(&srv.url, Some(Algorithm::RS256), Duration::ZERO);
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "rsa", &k1)).await,
        OK
    );
    // The JWK's alg must match the configured one.
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, "rsa384", &k1)).await,
        FAILED
    );
    // Header alg other than configured, even with a matching JWK.
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS384, "rsa384", &k1)).await,
        FAILED
    );
    for kid in [
        "../../etc/passwd",
        "' OR 1=1 --",
        "https://evil.example/k",
        "rsa\u{0}",
    ] {
        assert_eq!(
            code_of(&a, &kid_token(Algorithm::RS256, kid, &k1)).await,
            FAILED,
            "{kid:?}"
        );
    }
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::RS256, &"r".repeat(5000), &k1)).await,
        FAILED
    );
    // No kid and several keys: refused.
    let h = json!({"alg": "RS256"}).to_string();
    let c = json!({"user_id": "u1", "exp": now_secs() + 60}).to_string();
    assert_eq!(
        code_of(&a, &token(&h, &c, Some((Algorithm::RS256, &k1)))).await,
        FAILED
    );
    // HS256 signed with the JWK's modulus-bearing PEM as secret.
    let confused = EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes());
    assert_eq!(
        code_of(&a, &kid_token(Algorithm::HS256, "rsa", &confused)).await,
        FAILED
    );

    // No configured alg: the JWK decides; none and mismatches refused.
    let b = jwks_auth(&srv.url, None, Duration::ZERO);
    assert_eq!(
        code_of(&b, &kid_token(Algorithm::RS256, "rsa", &k1)).await,
        OK
    );
    assert_eq!(
        code_of(&b, &kid_token(Algorithm::RS384, "rsa384", &k1)).await,
        OK
    );
    assert_eq!(
        code_of(&b, &kid_token(Algorithm::PS256, "rsa", &k1)).await,
        FAILED
    );
    assert_eq!(
        code_of(&b, &kid_token(Algorithm::ES256, "ec", &ec)).await,
        OK
    );
    assert_eq!(
        code_of(&b, &kid_token(Algorithm::HS256, "rsa", &confused)).await,
        FAILED
    );
    let none = token(
        &json!({"alg": "none", "kid": "rsa"}).to_string(),
        &json!({"user_id": "u1", "exp": now_secs() + 60}).to_string(),
        None,
    );
    assert_eq!(code_of(&b, &none).await, FAILED);
}
