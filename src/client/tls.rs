//! TLS for `tls://` and `wss://` URLs: the server's certificate must chain
//! to a root of `ClientConfig::tls_ca_file` (a PEM file), or of the
//! system's store when that is unset, and be issued for the URL's host.
//!
//! Invariant: a certificate that fails the check is a final error
//! ([`ClientError::Tls`]), never retried into a plain connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::error::ClientError;
use crate::pki::RootsError;

/// A connector trusting the roots of `ca_file`, else the system's.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let roots = crate::pki::roots(ca_file).map_err(|e| match e {
        RootsError::File { path, reason } => {
            ClientError::Tls(format!("CA file {}: {reason}", path.display()))
        }
        RootsError::NoSystemRoots => ClientError::Tls(
            "no system CA certificates found (install ca-certificates, or give a CA file)".into(),
        ),
    })?;
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
