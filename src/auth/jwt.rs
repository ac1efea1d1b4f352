//! Token verification: algorithm, signature, time and issuer/audience
//! checks. Invariant: in secure mode a signature is only ever checked with
//! the configured algorithm (or, with a JWKS and no configured algorithm, the
//! key's own algorithm) and a key of that algorithm's family; the token never
//! chooses the algorithm. In insecure mode the signature is skipped and every
//! other check still runs.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

use super::error::AuthError;
use super::header::RawToken;

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// Names shown in messages for a header `alg` (bounded, printable only).
fn shown(alg: &str) -> String {
    let s: String = alg
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(16)
        .collect();
    if s.is_empty() {
        "(empty)".to_owned()
    } else {
        s
    }
}

/// Secure mode: the header `alg` must be exactly `expected`.
pub fn check_alg(raw: &RawToken<'_>, expected: Algorithm) -> Result<(), AuthError> {
    if raw.alg == alg_name(expected) {
        return Ok(());
    }
    if raw.alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::failed(
            "alg",
            format!(
                "alg none is refused in secure mode (configured: {})",
                alg_name(expected)
            ),
        ));
    }
    Err(AuthError::failed(
        "alg",
        format!(
            "alg {} does not match the configured {}",
            shown(&raw.alg),
            alg_name(expected)
        ),
    ))
}

/// Builds the decoding key for a configured `AUTH_JWT_KEY`.
pub fn decoding_key(alg: Algorithm, key: &str) -> Result<DecodingKey, String> {
    let pem_err = |what: &str, e: jsonwebtoken::errors::Error| {
        format!(
            "AUTH_JWT_KEY: not a valid {what} PEM public key for {}: {e}",
            alg_name(alg)
        )
    };
    match alg.family() {
        AlgorithmFamily::Hmac => {
            if key.is_empty() {
                return Err(format!(
                    "AUTH_JWT_KEY: the HMAC secret for {} is empty",
                    alg_name(alg)
                ));
            }
            if key.contains("-----BEGIN") {
                return Err(format!(
                    "AUTH_JWT_KEY: a PEM key was given for the HMAC algorithm {}; set AUTH_JWT_ALG to the key's algorithm",
                    alg_name(alg)
                ));
            }
            Ok(DecodingKey::from_secret(key.as_bytes()))
        }
        AlgorithmFamily::Rsa => {
            DecodingKey::from_rsa_pem(key.as_bytes()).map_err(|e| pem_err("RSA", e))
        }
        AlgorithmFamily::Ec => {
            DecodingKey::from_ec_pem(key.as_bytes()).map_err(|e| pem_err("EC", e))
        }
        AlgorithmFamily::Ed => {
            DecodingKey::from_ed_pem(key.as_bytes()).map_err(|e| pem_err("Ed25519", e))
        }
    }
}

/// Verifies the signature of `raw` with `key` and `alg` only.
pub fn check_signature(
    raw: &RawToken<'_>,
    alg: Algorithm,
    key: &DecodingKey,
) -> Result<(), AuthError> {
    if raw.signature.is_empty() {
        return Err(AuthError::failed("signature", "token has no signature"));
    }
    if key.family() != alg.family() {
        return Err(AuthError::failed(
            "signature",
            format!("the key cannot verify {}", alg_name(alg)),
        ));
    }
    match jsonwebtoken::crypto::verify(raw.signature_b64, raw.signing_input.as_bytes(), key, alg) {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(AuthError::failed(
            "signature",
            format!("signature does not verify with the {} key", alg_name(alg)),
        )),
    }
}

/// What the claim checks need.
#[derive(Clone, Debug, Default)]
pub struct ClaimRules {
    pub iss: Option<String>,
    pub aud: Option<String>,
    /// Seconds.
    pub leeway: f64,
}

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(AuthError::failed(
                name,
                format!("{name} claim is not a usable number"),
            )),
        },
        Some(_) => Err(AuthError::failed(
            name,
            format!("{name} claim is not a number"),
        )),
    }
}

/// Seconds since the epoch as f64 (negative before 1970).
pub fn unix_seconds(now: SystemTime) -> f64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Checks `exp` (required), `nbf`, `iat`, `iss` and `aud`; returns `exp` in
/// µs since the epoch.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: SystemTime,
) -> Result<i64, AuthError> {
    let now = unix_seconds(now);
    let leeway = rules.leeway;
    let Some(exp) = numeric(claims, "exp")? else {
        return Err(AuthError::failed("exp", "exp claim is missing"));
    };
    if now > exp + leeway {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if now + leeway < nbf {
            return Err(AuthError::failed(
                "nbf",
                "token is not valid yet (nbf is in the future)",
            ));
        }
    }
    if let Some(iat) = numeric(claims, "iat")? {
        if iat > now + leeway {
            return Err(AuthError::failed("iat", "iat claim is in the future"));
        }
    }
    if let Some(want) = &rules.iss {
        match claims.get("iss") {
            Some(Value::String(s)) if s == want => {}
            Some(Value::String(_)) => {
                return Err(AuthError::failed(
                    "iss",
                    "iss claim does not match the configured issuer",
                ))
            }
            Some(_) => return Err(AuthError::failed("iss", "iss claim is not a string")),
            None => return Err(AuthError::failed("iss", "iss claim is missing")),
        }
    }
    if let Some(want) = &rules.aud {
        let ok = match claims.get("aud") {
            Some(Value::String(s)) => s == want,
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(want)),
            Some(_) => {
                return Err(AuthError::failed(
                    "aud",
                    "aud claim is neither a string nor an array",
                ))
            }
            None => return Err(AuthError::failed("aud", "aud claim is missing")),
        };
        if !ok {
            return Err(AuthError::failed(
                "aud",
                "aud claim does not contain the configured audience",
            ));
        }
    }
    let micros = exp * 1_000_000.0;
    // Clamp: absurd but finite values saturate instead of wrapping.
    Ok(if micros >= i64::MAX as f64 {
        i64::MAX
    } else if micros <= i64::MIN as f64 {
        i64::MIN
    } else {
        micros as i64
    })
}
