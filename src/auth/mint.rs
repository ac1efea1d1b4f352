//! Development tokens (`pgsat token`, tests). Invariant: a minted token is
//! signed with exactly the algorithm asked for, or is an unsigned `alg: none`
//! token only when neither algorithm nor key is given (insecure mode).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

use super::error::MintError;

/// Mints a token with `user_id`, `iat` = now and `exp` = now + `ttl` (unless
/// `extra_claims` sets `iat`/`exp` itself; `user_id` always wins).
///
/// * `alg` and `key` given: signed (HMAC secret, or PKCS#8 / PKCS#1 PEM
///   private key for RS/PS/ES/EdDSA).
/// * `key` only: HS256 with that secret.
/// * neither: unsigned `alg: none` token, accepted only in insecure mode.
pub fn mint_token(
    user_id: &str,
    ttl: Duration,
    alg: Option<Algorithm>,
    key: Option<&str>,
    extra_claims: Map<String, Value>,
) -> Result<String, MintError> {
    if user_id.trim().is_empty() {
        return Err(MintError::Invalid("user_id must not be empty".to_owned()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Invalid("system clock is before 1970".to_owned()))?
        .as_secs();
    let mut claims = extra_claims;
    claims
        .entry("iat".to_owned())
        .or_insert_with(|| Value::from(now));
    claims
        .entry("exp".to_owned())
        .or_insert_with(|| Value::from(now.saturating_add(ttl.as_secs())));
    claims.insert("user_id".to_owned(), Value::String(user_id.to_owned()));

    let alg = match (alg, key) {
        (None, None) => return Ok(unsigned(&claims)),
        (Some(_), None) => {
            return Err(MintError::Invalid(
                "a key is required to sign a token (or mint an unsigned one for insecure mode)"
                    .to_owned(),
            ))
        }
        (None, Some(_)) => Algorithm::HS256,
        (Some(a), Some(_)) => a,
    };
    let key = key.unwrap_or_default();
    sign(&claims, alg, &encoding_key(alg, key)?)
}

/// `claims` signed with `alg` and `key`, header `{"typ":"JWT","alg":…}`.
pub fn sign(
    claims: &Map<String, Value>,
    alg: Algorithm,
    key: &EncodingKey,
) -> Result<String, MintError> {
    let mut header = Header::new(alg);
    header.typ = Some("JWT".to_owned());
    jsonwebtoken::encode(&header, claims, key).map_err(|e| MintError::Sign(e.to_string()))
}

/// The signing key for `alg` from a secret or a private key PEM.
pub fn encoding_key(alg: Algorithm, key: &str) -> Result<EncodingKey, MintError> {
    let bad = |e: jsonwebtoken::errors::Error| {
        MintError::Invalid(format!(
            "the key is not a valid private key PEM for this algorithm: {e}"
        ))
    };
    match alg.family() {
        AlgorithmFamily::Hmac => {
            if key.is_empty() {
                return Err(MintError::Invalid("the HMAC secret is empty".to_owned()));
            }
            Ok(EncodingKey::from_secret(key.as_bytes()))
        }
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(key.as_bytes()).map_err(bad),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(key.as_bytes()).map_err(bad),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(key.as_bytes()).map_err(bad),
    }
}

/// `base64url({"alg":"none","typ":"JWT"}) . base64url(claims) .` (empty
/// signature): accepted only in insecure mode.
pub fn unsigned(claims: &Map<String, Value>) -> String {
    let header = r#"{"alg":"none","typ":"JWT"}"#;
    let body = Value::Object(claims.clone()).to_string();
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(body)
    )
}
