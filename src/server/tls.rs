//! TLS on pgsat's own listeners (`TLS_CERT_FILE` + `TLS_KEY_FILE`, an
//! extension of interface.md): with both set, the TCP listener speaks the
//! frame protocol inside TLS and the WebSocket listener is `wss://`. Tokens
//! then never cross the network in clear text, without a terminating proxy.
//!
//! Invariants:
//! - Start-up loads and checks both files (PEM certificate chain, PEM
//!   private key, the key belongs to the certificate); any fault stops
//!   start-up naming the variable.
//! - Certificates rotate without a restart: a handshake at least
//!   [`RECHECK`] after the last look checks both files' modification time
//!   and size, and on a change loads them again. A pair that fails to load
//!   (a half-written file, a key of another certificate) is logged and the
//!   previous pair stays in use; connections are never left without one.
//! - The handshake runs in the connection's task, bounded by `AUTH_TIMEOUT`
//!   (the accept loop never waits for a client).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::BadSetting;
use crate::pki::{stamp, PairFile};

/// Least time between two looks at the files for a new certificate.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Both files' (modification time, size): what a rotation changes.
type Stamp = [crate::pki::Stamp; 2];

/// The acceptor of both listeners.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, BadSetting> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (pair, stamp) =
        load(&provider, cert, key).map_err(|(var, e)| BadSetting(format!("{var}: {e}")))?;
    let resolver = Arc::new(Rotating {
        cert: cert.to_owned(),
        key: key.to_owned(),
        provider: provider.clone(),
        state: Mutex::new(State {
            pair,
            stamp,
            checked: Instant::now(),
        }),
    });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BadSetting(format!("TLS_CERT_FILE: TLS setup: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads and checks a certificate chain and its key; on failure, the
/// variable at fault and why.
fn load(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, Stamp), (&'static str, String)> {
    let stamp = [stamp(cert), stamp(key)];
    let pair = crate::pki::certified_key(provider, cert, key).map_err(|(file, e)| match file {
        PairFile::Cert => ("TLS_CERT_FILE", e),
        PairFile::Key => ("TLS_KEY_FILE", e),
    })?;
    Ok((Arc::new(pair), stamp))
}

struct State {
    pair: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

/// The current certificate, looked for anew at most every [`RECHECK`].
#[derive(Debug)]
struct Rotating {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("stamp", &self.stamp).finish()
    }
}

impl Rotating {
    fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() < RECHECK {
            return st.pair.clone();
        }
        st.checked = Instant::now();
        let now = [stamp(&self.cert), stamp(&self.key)];
        if now == st.stamp {
            return st.pair.clone();
        }
        match load(&self.provider, &self.cert, &self.key) {
            Ok((pair, stamp)) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                st.pair = pair;
                st.stamp = stamp;
            }
            Err((var, e)) => {
                // Retried at the next look only if the files change again.
                st.stamp = now;
                tracing::error!(variable = var, error = %e, "new TLS certificate not loaded; the previous one stays in use");
            }
        }
        st.pair.clone()
    }
}

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
