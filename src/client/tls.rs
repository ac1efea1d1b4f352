//! TLS for `tls://` and `wss://` URLs: the server's certificate must chain
//! to a root of `ClientConfig::tls_ca_file` (a PEM file), or of the
//! system's store when that is unset, and be issued for the URL's host.
//!
//! Invariant: a certificate that fails the check is a final error
//! ([`ClientError::Tls`]), never retried into a plain connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::error::ClientError;

/// A connector trusting the roots of `ca_file`, else the system's.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |e: String| ClientError::Tls(format!("CA file {}: {e}", path.display()));
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not a PEM file of certificates ({e})")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("no usable CA certificate in it".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ClientError::Tls(
                    "no system CA certificates found (install ca-certificates, or give a CA file)"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The TLS handshake for `host` over `stream`.
pub async fn handshake(
    connector: &TlsConnector,
    host: &str,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Tls(format!("{host:?} is not a valid TLS server name: {e}")))?;
    connector.connect(name, stream).await.map_err(|e| {
        // A rustls error (certificate, protocol version) is final; the
        // connection's own trouble is retried like any other.
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => ClientError::Tls(format!("TLS handshake with {host}: {tls}")),
            None => ClientError::Transport(format!("TLS handshake with {host}: {e}")),
        }
    })
}
