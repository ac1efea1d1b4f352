//! Raw token structure and header checks, run before any key or claim is
//! looked at. Invariant: a token that reaches signature verification is at
//! most `MAX_TOKEN_BYTES`, has exactly three strict base64url segments, a
//! header and claims that are duplicate-free JSON objects, a string `alg`,
//! and no `jwk`/`jku`/`x5u`/`x5c`/`crit` header.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::error::AuthError;
use super::json;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `kid` accepted (it is only ever compared as an opaque string).
pub const MAX_KID_BYTES: usize = 256;

/// A token split and decoded, header checked; signature not yet verified.
#[derive(Debug)]
pub struct RawToken<'a> {
    /// `alg` exactly as written in the header.
    pub alg: String,
    pub kid: Option<String>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `base64(header) "." base64(claims)`: the signed bytes.
    pub signing_input: &'a str,
    /// The third segment, still base64url (may be empty).
    pub signature_b64: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Header parameters that would let the token choose its own key.
const FORBIDDEN_HEADER_PARAMS: &[&str] = &["jwk", "jku", "x5u", "x5c"];

fn b64(segment: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| {
        AuthError::failed(
            "malformed",
            format!("{what} is not base64url without padding"),
        )
    })
}

/// Splits, decodes and checks the structure and header of `token`.
pub fn parse(token: &str) -> Result<RawToken<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::failed(
            "too_large",
            format!(
                "token is {} bytes, more than the {MAX_TOKEN_BYTES} allowed",
                token.len()
            ),
        ));
    }
    if token.is_empty() {
        return Err(AuthError::failed("malformed", "token is empty"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        let n = token.split('.').count();
        return Err(AuthError::failed(
            "malformed",
            format!("token has {n} segments, a JWT has exactly 3"),
        ));
    };
    if h.is_empty() || c.is_empty() {
        return Err(AuthError::failed(
            "malformed",
            "header or claims segment is empty",
        ));
    }
    let header_bytes = b64(h, "header")?;
    let claims_bytes = b64(c, "claims")?;
    let signature = b64(s, "signature")?;
    let header = json::parse_object(&header_bytes)
        .map_err(|e| AuthError::failed("malformed", format!("header: {e}")))?;
    let claims = json::parse_object(&claims_bytes)
        .map_err(|e| AuthError::failed("malformed", format!("claims: {e}")))?;

    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        Some(_) => return Err(AuthError::failed("alg", "header alg is not a string")),
        None => return Err(AuthError::failed("alg", "header has no alg")),
    };
    for p in FORBIDDEN_HEADER_PARAMS {
        if header.contains_key(*p) {
            return Err(AuthError::failed(
                "header",
                format!("header parameter {p} is not allowed (keys are configured, never taken from the token)"),
            ));
        }
    }
    if header.contains_key("crit") {
        // We understand no JWS extension, so any `crit` is unknown (RFC 7515 §4.1.11).
        return Err(AuthError::failed(
            "header",
            "header parameter crit names extensions this server does not support",
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= MAX_KID_BYTES => Some(k.clone()),
        Some(Value::String(_)) => {
            return Err(AuthError::failed(
                "kid",
                format!("header kid is longer than {MAX_KID_BYTES} bytes"),
            ))
        }
        Some(_) => return Err(AuthError::failed("kid", "header kid is not a string")),
    };
    let signing_input = &token[..h.len() + 1 + c.len()];
    Ok(RawToken {
        alg,
        kid,
        header,
        claims,
        signing_input,
        signature_b64: s,
        signature,
    })
}
