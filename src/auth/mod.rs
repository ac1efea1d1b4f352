//! Authentication: JWT checks, claims, users-table lookup, JWKS cache.
//!
//! Invariant: `Authenticator::authenticate` returns a `Principal` only for a
//! token that passed, in this order, the raw structure and header checks
//! (`header`), the algorithm and signature checks with configured keys only
//! (`jwt`, `jwks`; skipped in insecure mode), the time and iss/aud checks
//! (`jwt`), the `user_id` claim checks (`claims`), and the users-row lookup
//! (`users`). Every refusal is an `AuthError` whose message names the failed
//! check and never contains the token.

pub mod claims;
pub mod error;
pub mod header;
pub mod json;
pub mod jwks;
pub mod jwt;
pub mod mint;
pub mod users;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use crate::config::{AuthMode, AuthSettings};

pub use error::{AuthError, AuthInitError, MintError};
pub use mint::mint_token;

use header::RawToken;
use jwks::{JwksCache, KeyEntry};
use jwt::{alg_name, ClaimRules};

/// Timeout of one users-row lookup.
pub const USERS_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// An authenticated client identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub user_id: String,
    /// The token's `exp` in µs since the epoch.
    pub expires_at: Option<i64>,
    /// The claims object holding `user_id` (the namespace object when
    /// `AUTH_JWT_NAMESPACE` is set, else all claims).
    pub claims: Value,
    /// All claims of the token.
    pub raw_claims: Value,
}

/// A token that passed every check except the users-row lookup.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    pub principal: Principal,
    /// The algorithm whose signature was verified (`None` in insecure mode).
    pub alg: Option<Algorithm>,
    pub kid: Option<String>,
}

enum KeySource {
    /// Insecure mode: signatures are not checked.
    Unverified,
    Static(Algorithm, DecodingKey),
    Jwks(Arc<JwksCache>),
}

struct Inner {
    mode: AuthMode,
    alg: Option<Algorithm>,
    keys: KeySource,
    rules: ClaimRules,
    namespace: Option<String>,
    users: Option<users::UsersLookup>,
}

/// Verifies tokens and binds them to a users row. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.inner.mode)
            .field("alg", &self.inner.alg)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Validates the settings, checks the users table and column, prepares
    /// the lookup pool and (with a JWKS URL) fetches the key set once. A JWKS
    /// fetch failure here is logged, not fatal (see `jwks`).
    pub async fn new(
        settings: &AuthSettings,
        pg: crate::pg::sql::SqlConfig,
    ) -> Result<Self, AuthInitError> {
        let mut inner = build(settings, jwks::MIN_REFETCH)?;
        inner.users = Some(
            users::UsersLookup::new(
                pg,
                &settings.users_table,
                &settings.users_id_column,
                USERS_LOOKUP_TIMEOUT,
            )
            .await?,
        );
        let this = Authenticator {
            inner: Arc::new(inner),
        };
        this.initial_jwks_fetch().await;
        Ok(this)
    }

    /// A token verifier without the users lookup (`authenticate` on it
    /// always answers INTERNAL). For tests and `verify_token`-only callers.
    /// With a JWKS URL nothing is fetched until the first `verify`.
    pub fn verifier_only(settings: &AuthSettings) -> Result<Self, AuthInitError> {
        Self::verifier_with_refetch(settings, jwks::MIN_REFETCH)
    }

    /// As `verifier_only`, with another JWKS refetch rate limit (tests).
    pub fn verifier_with_refetch(
        settings: &AuthSettings,
        min_refetch: Duration,
    ) -> Result<Self, AuthInitError> {
        Ok(Authenticator {
            inner: Arc::new(build(settings, min_refetch)?),
        })
    }

    async fn initial_jwks_fetch(&self) {
        if let KeySource::Jwks(c) = &self.inner.keys {
            c.refresh().await;
            if !c.has_keys() {
                tracing::warn!(
                    "AUTH_JWT_JWKS_URL: the key set could not be fetched at start; tokens are refused with INTERNAL until a fetch succeeds"
                );
            }
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.inner.mode
    }

    /// The JWKS cache, when keys come from a JWKS URL.
    pub fn jwks(&self) -> Option<&JwksCache> {
        match &self.inner.keys {
            KeySource::Jwks(c) => Some(c),
            _ => None,
        }
    }

    /// Every check, the users row included.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let v = self.verify(token, SystemTime::now()).await?;
        self.check_user(&v.principal.user_id).await?;
        Ok(v.principal)
    }

    /// The users-row check alone: `user_id` must be the key of a row.
    pub async fn check_user(&self, user_id: &str) -> Result<(), AuthError> {
        match &self.inner.users {
            Some(u) => u.check(user_id).await,
            None => Err(AuthError::Internal(
                "no users lookup is configured".to_owned(),
            )),
        }
    }

    /// Every token check at time `now`, without the database; an unknown JWKS
    /// `kid` triggers a (rate-limited) refetch.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, AuthError> {
        let raw = header::parse(token)?;
        let entry = match (&self.inner.mode, &self.inner.keys) {
            (AuthMode::Secure, KeySource::Jwks(c)) => {
                self.jwks_header_check(&raw)?;
                Some(c.lookup(raw.kid.as_deref()).await?)
            }
            _ => None,
        };
        self.finish(raw, now, entry)
    }

    /// As `verify`, using only the cached JWKS (never fetches).
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, AuthError> {
        let raw = header::parse(token)?;
        let entry = match (&self.inner.mode, &self.inner.keys) {
            (AuthMode::Secure, KeySource::Jwks(c)) => {
                self.jwks_header_check(&raw)?;
                Some(c.lookup_cached(raw.kid.as_deref())?)
            }
            _ => None,
        };
        self.finish(raw, now, entry)
    }

    /// Header `alg` check for JWKS keys, before any key lookup.
    fn jwks_header_check(&self, raw: &RawToken<'_>) -> Result<(), AuthError> {
        match self.inner.alg {
            Some(alg) => jwt::check_alg(raw, alg),
            None => {
                if raw.alg.eq_ignore_ascii_case("none") {
                    return Err(AuthError::failed(
                        "alg",
                        "alg none is refused in secure mode",
                    ));
                }
                raw.alg.parse::<Algorithm>().map(|_| ()).map_err(|_| {
                    AuthError::failed("alg", "header alg is not a supported algorithm")
                })
            }
        }
    }

    fn finish(
        &self,
        raw: RawToken<'_>,
        now: SystemTime,
        entry: Option<Arc<KeyEntry>>,
    ) -> Result<VerifiedToken, AuthError> {
        let inner = &self.inner;
        let used_alg = match (&inner.mode, &inner.keys, entry) {
            (AuthMode::Insecure, _, _) | (_, KeySource::Unverified, _) => None,
            (AuthMode::Secure, KeySource::Static(alg, key), _) => {
                jwt::check_alg(&raw, *alg)?;
                jwt::check_signature(&raw, *alg, key)?;
                Some(*alg)
            }
            (AuthMode::Secure, KeySource::Jwks(_), Some(entry)) => {
                let alg = match inner.alg {
                    Some(a) => a,
                    None => raw.alg.parse::<Algorithm>().map_err(|_| {
                        AuthError::failed("alg", "header alg is not a supported algorithm")
                    })?,
                };
                if !entry.allows(alg) {
                    return Err(AuthError::failed(
                        "alg",
                        format!(
                            "the JWKS key for this kid is not for {}{}",
                            alg_name(alg),
                            entry
                                .alg
                                .map(|a| format!(" (its alg is {})", alg_name(a)))
                                .unwrap_or_default()
                        ),
                    ));
                }
                if inner.alg.is_none()
                    && entry.alg.is_none()
                    && alg.family() == AlgorithmFamily::Hmac
                {
                    return Err(AuthError::failed(
                        "alg",
                        "a JWKS HMAC key without alg needs AUTH_JWT_ALG",
                    ));
                }
                jwt::check_signature(&raw, alg, &entry.key)?;
                Some(alg)
            }
            (AuthMode::Secure, KeySource::Jwks(_), None) => {
                return Err(AuthError::Internal("no JWKS key was selected".to_owned()))
            }
        };
        let exp = jwt::check_claims(&raw.claims, &inner.rules, now)?;
        let (user_id, claims) = claims::extract_user_id(&raw.claims, inner.namespace.as_deref())?;
        Ok(VerifiedToken {
            principal: Principal {
                user_id,
                expires_at: Some(exp),
                claims,
                raw_claims: Value::Object(raw.claims),
            },
            alg: used_alg,
            kid: raw.kid,
        })
    }
}

fn build(settings: &AuthSettings, min_refetch: Duration) -> Result<Inner, AuthInitError> {
    let cfg = |s: &str| AuthInitError::Config(s.to_owned());
    let rules = ClaimRules {
        iss: settings.iss.clone(),
        aud: settings.aud.clone(),
        leeway: settings.leeway.as_secs_f64(),
    };
    let keys = match settings.mode {
        // The start-up warning and the gauge are the server's (one line).
        AuthMode::Insecure => KeySource::Unverified,
        AuthMode::Secure => match (&settings.jwks_url, &settings.key, settings.alg) {
            (Some(_), Some(_), _) => {
                return Err(cfg(
                    "AUTH_JWT_KEY and AUTH_JWT_JWKS_URL are both set; set only one",
                ))
            }
            (Some(url), None, _) => KeySource::Jwks(Arc::new(
                JwksCache::new(url, min_refetch).map_err(AuthInitError::Config)?,
            )),
            (None, Some(key), Some(alg)) => KeySource::Static(
                alg,
                jwt::decoding_key(alg, key).map_err(AuthInitError::Config)?,
            ),
            (None, None, Some(_)) => {
                return Err(cfg(
                    "AUTH_JWT_KEY is required in secure mode (or set AUTH_JWT_JWKS_URL)",
                ))
            }
            (None, _, None) => {
                return Err(cfg(
                    "AUTH_JWT_ALG is required in secure mode unless AUTH_JWT_JWKS_URL is set",
                ))
            }
        },
    };
    if let Some(ns) = &settings.namespace {
        if ns.is_empty() {
            return Err(cfg("AUTH_JWT_NAMESPACE: must not be empty when set"));
        }
    }
    Ok(Inner {
        mode: settings.mode,
        alg: settings.alg,
        keys,
        rules,
        namespace: settings.namespace.clone(),
        users: None,
    })
}
