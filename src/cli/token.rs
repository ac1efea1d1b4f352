//! `pgsat token`: mints a JWT for development and tests.
//! Invariant: the token carries `user_id`, `iat` = now and `exp` = now + ttl
//! (rounded up to whole seconds), then every `--claim` (which may override
//! those); it is signed with the given algorithm (HS256 when only `--key` is
//! given) and key, or — with `--insecure`, or with neither `--alg` nor
//! `--key` — is an unsigned `alg: none` JWT whose signature segment is empty
//! (only `AUTH_MODE=insecure` accepts it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use serde_json::{Map, Value};

use crate::auth::mint;
use crate::config::{parse_duration, parse_jwt_alg};

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The `user_id` claim.
    #[arg(long)]
    pub user_id: String,
    /// Lifetime: `5s`, `10m`, `2h`, `7d` (at least one second; `exp` is in
    /// whole seconds, rounded up).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Signing algorithm (HS256/384/512, RS256/384/512, PS256/384/512,
    /// ES256/384, EdDSA); default HS256 when `--key` is given.
    #[arg(long, value_parser = parse_jwt_alg, requires = "key")]
    pub alg: Option<Algorithm>,
    /// HS*: the secret. Others: a PEM private key, as text or a file path.
    #[arg(long, allow_hyphen_values = true)]
    pub key: Option<String>,
    /// Mint an unsigned `alg: none` token (for AUTH_MODE=insecure); also
    /// what is minted when neither `--alg` nor `--key` is given.
    #[arg(long, conflicts_with_all = ["alg", "key"])]
    pub insecure: bool,
    /// Extra claim `NAME=JSON` (e.g. `role="admin"`, `exp=0`); repeatable;
    /// applied last, so it may override user_id, exp or iat.
    #[arg(long = "claim", value_name = "NAME=JSON", value_parser = parse_claim)]
    pub claims: Vec<(String, Value)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--ttl must be at least 1s (exp is in whole seconds)")]
    TtlTooShort,
    #[error("--key: cannot read the key file {path:?}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("--key: not a PEM private key usable with {alg:?} ({reason})")]
    BadKey { alg: Algorithm, reason: String },
    #[error("--key: the HMAC secret is empty")]
    EmptySecret,
    #[error("cannot sign the token: {0}")]
    Sign(String),
    #[error("the system clock is before 1970")]
    Clock,
}

/// `NAME=JSON` → (name, value).
pub fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (name, json) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=JSON"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has an empty claim name"));
    }
    let value = serde_json::from_str(json).map_err(|e| {
        format!("claim {name:?}: {json:?} is not JSON ({e}); quote strings, e.g. {name}='\"text\"'")
    })?;
    Ok((name.to_string(), value))
}

/// The claims object for `args` at time `now`.
pub fn claims(args: &TokenArgs, now: Duration) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("user_id".into(), Value::String(args.user_id.clone()));
    c.insert("iat".into(), Value::from(now.as_secs()));
    // Whole seconds, rounded up: a lifetime never shrinks to nothing.
    let ttl = args.ttl.as_secs() + u64::from(args.ttl.subsec_nanos() > 0);
    c.insert("exp".into(), Value::from(now.as_secs().saturating_add(ttl)));
    for (name, value) in &args.claims {
        c.insert(name.clone(), value.clone());
    }
    c
}

/// An encoding key from `--key`: the secret itself for HS*, otherwise PEM
/// text (starts with `-----BEGIN`) or a path to a PEM file.
fn encoding_key(alg: Algorithm, key: &str) -> Result<EncodingKey, TokenError> {
    let hmac = alg.family() == AlgorithmFamily::Hmac;
    let material = if hmac || key.trim_start().starts_with("-----BEGIN") {
        key.to_string()
    } else {
        std::fs::read_to_string(key).map_err(|source| TokenError::KeyFile {
            path: key.to_string(),
            source,
        })?
    };
    mint::encoding_key(alg, &material).map_err(|e| {
        if hmac {
            TokenError::EmptySecret
        } else {
            TokenError::BadKey {
                alg,
                reason: e.to_string(),
            }
        }
    })
}

/// Mints the token `args` describe, at the current time.
pub fn mint(args: &TokenArgs) -> Result<String, TokenError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::Clock)?;
    if args.ttl < Duration::from_secs(1) {
        return Err(TokenError::TtlTooShort);
    }
    let claims = claims(args, now);
    let key = match args.key.as_deref() {
        Some(key) if !args.insecure => key,
        _ => return Ok(mint::unsigned(&claims)),
    };
    let alg = args.alg.unwrap_or(Algorithm::HS256);
    let key = encoding_key(alg, key)?;
    mint::sign(&claims, alg, &key).map_err(|e| TokenError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use clap::Parser;
    use jsonwebtoken::{DecodingKey, Validation};

    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4foJ3lovlwGz5JNN
tzqqQeb5kvDnh6Od2DJd7qLKSE2hRANCAATcIoJ2X/TsesS2QDnfGzWxUwViFSpw
TYs4aIuhnIa0ffPp4DNfmm/ne1dKMAZUYqy307jetjA7tFM+un9uncQK
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE3CKCdl/07HrEtkA53xs1sVMFYhUq
cE2LOGiLoZyGtH3z6eAzX5pv53tXSjAGVGKst9O43rYwO7RTPrp/bp3ECg==
-----END PUBLIC KEY-----
";
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFy8Sz6v+dBmuCR005fwfvEgCE5BO6PiK6Fw6+lBVmE5
-----END PRIVATE KEY-----
";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAwbxsZVulxLDGFtSTorwdrqPdTsOj5huu98frX14mQ78=
-----END PUBLIC KEY-----
";

    fn args(argv: &[&str]) -> Result<TokenArgs, clap::Error> {
        let mut full = vec!["pgsat", "token"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full)?.command {
            Some(Command::Token(a)) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    fn decode(token: &str, alg: Algorithm, key: &DecodingKey) -> Map<String, Value> {
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &v)
            .unwrap()
            .claims
    }

    #[test]
    fn hs256_round_trip_with_claims() {
        let a = args(&[
            "--user-id",
            "u-1",
            "--ttl",
            "2h",
            "--alg",
            "HS256",
            "--key",
            "sekrit",
            "--claim",
            r#"role="admin""#,
            "--claim",
            r#"https://example.com/jwt={"user_id":"u-1"}"#,
        ])
        .unwrap();
        let t = mint(&a).unwrap();
        let c = decode(&t, Algorithm::HS256, &DecodingKey::from_secret(b"sekrit"));
        assert_eq!(c["user_id"], "u-1");
        assert_eq!(c["role"], "admin");
        assert_eq!(c["https://example.com/jwt"]["user_id"], "u-1");
        let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
        assert_eq!(exp - iat, 7200);
        // The wrong secret does not verify.
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        assert!(
            jsonwebtoken::decode::<Value>(&t, &DecodingKey::from_secret(b"other"), &v).is_err()
        );
    }

    #[test]
    fn es256_and_eddsa_from_pem_text_and_file() {
        let a = args(&["--user-id", "u", "--alg", "ES256", "--key", EC_PRIVATE]).unwrap();
        let t = mint(&a).unwrap();
        let key = DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes()).unwrap();
        assert_eq!(decode(&t, Algorithm::ES256, &key)["user_id"], "u");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ed.pem");
        std::fs::write(&path, ED_PRIVATE).unwrap();
        let a = args(&[
            "--user-id",
            "u2",
            "--alg",
            "EdDSA",
            "--key",
            path.to_str().unwrap(),
        ])
        .unwrap();
        let t = mint(&a).unwrap();
        let key = DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).unwrap();
        assert_eq!(decode(&t, Algorithm::EdDSA, &key)["user_id"], "u2");
    }

    #[test]
    fn insecure_is_alg_none_with_empty_signature() {
        let a = args(&["--user-id", "u-9", "--insecure", "--claim", "exp=0"]).unwrap();
        let t = mint(&a).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "");
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "none");
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["user_id"], "u-9");
        assert_eq!(claims["exp"], 0, "--claim overrides exp");
        assert!(claims["iat"].as_u64().unwrap() > 1_600_000_000);
    }

    #[test]
    fn signer_defaults() {
        // Neither --alg nor --key: unsigned, as --insecure.
        let t = mint(&args(&["--user-id", "u-2"]).unwrap()).unwrap();
        let (header, rest) = t.split_once('.').unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["alg"], "none");
        assert!(rest.ends_with('.'), "empty signature: {t}");
        // --key alone: HS256.
        let t = mint(&args(&["--user-id", "u-2", "--key", "sekrit"]).unwrap()).unwrap();
        let c = decode(&t, Algorithm::HS256, &DecodingKey::from_secret(b"sekrit"));
        assert_eq!(c["user_id"], "u-2");
    }

    #[test]
    fn ttl_is_whole_seconds_rounded_up() {
        let c = claims(
            &args(&["--user-id", "u", "--ttl", "1500ms"]).unwrap(),
            Duration::from_secs(100),
        );
        assert_eq!(c["exp"], 102);
        let c = claims(
            &args(&["--user-id", "u", "--ttl", "2s"]).unwrap(),
            Duration::from_secs(100),
        );
        assert_eq!(c["exp"], 102);
        let a = args(&["--user-id", "u", "--ttl", "250ms"]).unwrap();
        assert!(matches!(mint(&a), Err(TokenError::TtlTooShort)));
    }

    #[test]
    fn bad_arguments() {
        // Bad JSON in --claim, or no '='.
        let e = args(&["--user-id", "u", "--insecure", "--claim", "role=admin"]).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        assert!(args(&["--user-id", "u", "--insecure", "--claim", "role"]).is_err());
        // Signer choice: an algorithm needs a key; --insecure excludes both.
        assert!(args(&["--user-id", "u", "--alg", "HS256"]).is_err());
        assert!(args(&[
            "--user-id",
            "u",
            "--insecure",
            "--alg",
            "HS256",
            "--key",
            "k"
        ])
        .is_err());
        assert!(args(&["--user-id", "u", "--alg", "ES512", "--key", "k"]).is_err());
        assert!(args(&["--user-id", "u", "--insecure", "--ttl", "1x"]).is_err());
        // Keys that cannot sign.
        let a = args(&["--user-id", "u", "--alg", "HS256", "--key", ""]).unwrap();
        assert!(matches!(mint(&a), Err(TokenError::EmptySecret)));
        let a = args(&["--user-id", "u", "--alg", "RS256", "--key", EC_PRIVATE]).unwrap();
        assert!(matches!(mint(&a), Err(TokenError::BadKey { .. })));
        let a = args(&[
            "--user-id",
            "u",
            "--alg",
            "ES256",
            "--key",
            "/nonexistent.pem",
        ])
        .unwrap();
        assert!(matches!(mint(&a), Err(TokenError::KeyFile { .. })));
    }
}
