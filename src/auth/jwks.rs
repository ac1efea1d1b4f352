//! JWKS fetch and cache. Invariants: keys are chosen by `kid` compared as an
//! opaque string; an unknown `kid` triggers at most one fetch per
//! `min_refetch` (30 s in production), and a failed fetch never replaces the
//! last good key set. A set older than `MAX_AGE` is refreshed on the next
//! lookup (same rate limit), so removed keys stop working.
//!
//! Start-up policy: `Authenticator::new` tries one fetch; if it fails the
//! server still starts (an identity provider outage must not crash-loop the
//! proxy), logs a warning, and answers `INTERNAL` ("key set not available")
//! until a fetch succeeds; while no set was ever fetched, retries are allowed
//! every `EMPTY_RETRY` instead of every `min_refetch`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use super::error::AuthError;
use super::jwt::alg_name;

/// Production rate limit for refetches on an unknown `kid`.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// A key set older than this is refreshed on the next lookup.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// Retry interval while no key set was ever fetched.
pub const EMPTY_RETRY: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable verification key.
pub struct KeyEntry {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it has one.
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    /// For EC keys: the curve name (`P-256`, `P-384`).
    pub curve: Option<String>,
    pub key: DecodingKey,
}

impl KeyEntry {
    /// May this key verify `alg`?
    pub fn allows(&self, alg: Algorithm) -> bool {
        if alg.family() != self.family {
            return false;
        }
        if let Some(a) = self.alg {
            return a == alg;
        }
        match (alg, self.curve.as_deref()) {
            (Algorithm::ES256, Some(c)) => c == "P-256",
            (Algorithm::ES384, Some(c)) => c == "P-384",
            _ => true,
        }
    }
}

#[derive(Default)]
struct State {
    keys: Arc<Vec<Arc<KeyEntry>>>,
    fetched_ok: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// The cached key set of one JWKS URL.
pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    min_refetch: Duration,
    state: RwLock<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

/// Parses a JWKS document into usable signature keys (others skipped).
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<KeyEntry>>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err("no \"keys\" array".to_owned());
    };
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match parse_key(k) {
            Ok(Some(e)) => out.push(Arc::new(e)),
            Ok(None) => {}
            Err(e) => tracing::warn!(index = i, "JWKS key skipped: {e}"),
        }
    }
    Ok(out)
}

fn parse_key(k: &Value) -> Result<Option<KeyEntry>, String> {
    let get = |n: &str| k.get(n).and_then(Value::as_str);
    if let Some(u) = get("use") {
        if u != "sig" {
            return Ok(None);
        }
    }
    let alg = match k.get("alg") {
        None => None,
        Some(Value::String(a)) => match a.parse::<Algorithm>() {
            Ok(a) => Some(a),
            // e.g. RSA-OAEP: an encryption key, not for us.
            Err(_) => return Ok(None),
        },
        Some(_) => return Err("alg is not a string".to_owned()),
    };
    let kid = match k.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("kid is not a string".to_owned()),
    };
    let jwk: Jwk = serde_json::from_value(k.clone()).map_err(|e| format!("invalid JWK: {e}"))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable JWK: {e}"))?;
    let family = key.family();
    if let Some(a) = alg {
        if a.family() != family {
            return Err(format!("alg {} does not fit the key type", alg_name(a)));
        }
    }
    Ok(Some(KeyEntry {
        kid,
        alg,
        family,
        curve: get("crv").map(str::to_owned),
        key,
    }))
}

impl JwksCache {
    /// A cache that has not fetched yet.
    pub fn new(url: &str, min_refetch: Duration) -> Result<Self, String> {
        let parsed =
            url::Url::parse(url).map_err(|e| format!("AUTH_JWT_JWKS_URL: not a URL: {e}"))?;
        if parsed.scheme() != "https" && parsed.scheme() != "http" {
            return Err("AUTH_JWT_JWKS_URL: must be an http:// or https:// URL".to_owned());
        }
        // rustls needs a process-wide crypto provider; ours is ring (pure
        // Rust + C via cc, no cmake). Another one already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("AUTH_JWT_JWKS_URL: cannot build the HTTP client: {e}"))?;
        Ok(JwksCache {
            url: url.to_owned(),
            client,
            min_refetch,
            state: RwLock::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        })
    }

    /// Number of fetch attempts so far (tests, metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Whether a key set was ever fetched successfully.
    pub fn has_keys(&self) -> bool {
        self.read_state(|s| s.fetched_ok.is_some())
    }

    fn read_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        match self.state.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    fn write_state(&self, f: impl FnOnce(&mut State)) {
        match self.state.write() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    async fn fetch(&self) -> Result<Vec<Arc<KeyEntry>>, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut resp = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP status {}", resp.status()));
        }
        if resp.content_length().unwrap_or(0) > MAX_JWKS_BYTES as u64 {
            return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    /// Fetches now unless an attempt happened within the rate limit; keeps the
    /// last good set on failure. Returns whether a fetch was attempted.
    pub async fn refresh(&self) -> bool {
        let _g = self.fetch_lock.lock().await;
        let (last, ok) = self.read_state(|s| (s.last_attempt, s.fetched_ok));
        let interval = if ok.is_some() {
            self.min_refetch
        } else {
            self.min_refetch.min(EMPTY_RETRY)
        };
        if let Some(t) = last {
            if t.elapsed() < interval {
                return false;
            }
        }
        let result = self.fetch().await;
        let now = Instant::now();
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS fetched");
                self.write_state(|s| {
                    s.keys = Arc::new(keys);
                    s.fetched_ok = Some(now);
                    s.last_attempt = Some(now);
                });
            }
            Err(e) => {
                tracing::warn!(url = %self.url, "JWKS fetch failed, keeping the last good key set: {e}");
                self.write_state(|s| s.last_attempt = Some(now));
            }
        }
        true
    }

    /// Lookup in the cached set only (no fetch).
    pub fn lookup_cached(&self, kid: Option<&str>) -> Result<Arc<KeyEntry>, AuthError> {
        let (keys, ok) = self.read_state(|s| (s.keys.clone(), s.fetched_ok.is_some()));
        if let Some(k) = find(&keys, kid) {
            return Ok(k);
        }
        if !ok {
            return Err(AuthError::Internal(
                "the JWKS key set is not available yet (fetch failed); try again later".to_owned(),
            ));
        }
        Err(match kid {
            Some(_) => AuthError::failed("kid", "no key in the JWKS has the token's kid"),
            None => AuthError::failed(
                "kid",
                "token has no kid and the JWKS does not hold exactly one key",
            ),
        })
    }

    /// Lookup, refetching (rate-limited) on an unknown `kid` or a stale set.
    pub async fn lookup(&self, kid: Option<&str>) -> Result<Arc<KeyEntry>, AuthError> {
        let stale = self.read_state(|s| s.fetched_ok.is_none_or(|t| t.elapsed() > MAX_AGE));
        if !stale {
            if let Ok(k) = self.lookup_cached(kid) {
                return Ok(k);
            }
        }
        self.refresh().await;
        self.lookup_cached(kid)
    }
}

fn find(keys: &[Arc<KeyEntry>], kid: Option<&str>) -> Option<Arc<KeyEntry>> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
        None if keys.len() == 1 => keys.first().cloned(),
        None => None,
    }
}
