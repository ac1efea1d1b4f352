//! TLS to Postgres, as libpq's `sslmode` and `sslrootcert` describe it, for
//! the replication connection (driven here, on the SSLRequest of the
//! protocol) and the ordinary SQL connections (tokio-postgres with
//! `tokio-postgres-rustls`).
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable`, `allow` | never | — |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`: as `verify-ca` |
//! | `verify-ca` | always | signed by a root of `sslrootcert` (else the system's) |
//! | `verify-full` | always | as `verify-ca`, and issued for the host name |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! system's roots. `sslcert` + `sslkey` (both or neither): a certificate
//! chain and its private key, both PEM, presented when the server asks
//! (pg_hba's `cert` method, `clientcert=verify-ca|verify-full`); the key
//! file's permissions are checked as libpq checks them, and both files are
//! read again for the next connection when they change (rotation without a
//! restart). Unix-socket connections never use TLS (as libpq). `allow`
//! does not retry with TLS when the server refuses a plain connection.
//! SCRAM without channel binding.
//!
//! Invariant: a certificate that fails the check the mode asks for ends the
//! connection with [`PgError::Tls`] (not transient: retrying cannot fix a
//! certificate), never a silent fall-back to plain text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::PgError;
use crate::pki::{stamp, PairFile, RootsError, Stamp};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode, PgError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(PgError::Config(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether an SSLRequest is sent at all.
    pub fn tries_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Allow)
    }

    /// Whether a server without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RootCert {
    /// `sslrootcert=system`: the operating system's roots.
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// `sslcert` + `sslkey`: the certificate pgsat presents when the server
/// asks for one, and its private key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS part of a connection's parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub client_cert: Option<ClientCert>,
}

/// What is checked of the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

impl TlsSettings {
    fn check(&self) -> Check {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Check::ChainAndName,
            (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The rustls configuration for these settings; `None` when TLS is never
    /// tried. Built once per distinct settings (loading the system's roots
    /// reads many files), then shared; with a client certificate, built
    /// again when its files' modification time or size changed.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, PgError> {
        if !self.mode.tries_tls() {
            return Ok(None);
        }
        type Key = (TlsSettings, Option<[Stamp; 2]>);
        static CACHE: OnceLock<Mutex<HashMap<Key, Arc<ClientConfig>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let key = (
            self.clone(),
            self.client_cert
                .as_ref()
                .map(|c| [stamp(&c.cert), stamp(&c.key)]),
        );
        if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(Some(c.clone()));
        }
        let config = Arc::new(self.build()?);
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        // A rotated certificate's older configurations are never asked again.
        cache.retain(|(settings, _), _| settings != self);
        cache.insert(key, config.clone());
        Ok(Some(config))
    }

    fn build(&self) -> Result<ClientConfig, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(format!("TLS setup: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.check() {
            Check::Nothing => Arc::new(NoCertCheck(provider.clone())),
            check => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| PgError::Tls(format!("TLS setup: {e}")))?;
                if check == Check::ChainAndName {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let Some(client) = &self.client_cert else {
            return Ok(builder.with_no_client_auth());
        };
        check_key_permissions(&client.key)?;
        let pair = crate::pki::certified_key(&provider, &client.cert, &client.key).map_err(
            |(file, e)| match file {
                PairFile::Cert => PgError::Config(format!("sslcert {e}")),
                PairFile::Key => PgError::Config(format!("sslkey {e}")),
            },
        )?;
        Ok(builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(pair))))
    }

    fn roots(&self) -> Result<RootCertStore, PgError> {
        let file = match &self.root_cert {
            Some(RootCert::File(path)) => Some(path.as_path()),
            Some(RootCert::System) | None => None,
        };
        crate::pki::roots(file).map_err(|e| match e {
            RootsError::File { path, reason } => {
                PgError::Config(format!("sslrootcert {}: {reason}", path.display()))
            }
            RootsError::NoSystemRoots => PgError::Config(format!(
                "sslmode={} checks the server's certificate, but no system CA \
                 certificates were found (install ca-certificates, or set \
                 sslrootcert=/path/to/ca.pem)",
                self.mode.as_str()
            )),
        })
    }
}

/// libpq's rule for a client key: no group or world access when the file
/// belongs to the user pgsat runs as; group read at most when it belongs
/// to root. A missing file is left to the reading, which names it.
fn check_key_permissions(path: &Path) -> Result<(), PgError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let (uid, mode) = (meta.uid(), meta.mode());
    let too_open = (uid == euid && mode & 0o077 != 0) || (uid == 0 && mode & 0o037 != 0);
    if too_open {
        return Err(PgError::Config(format!(
            "sslkey {}: has group or world access (mode {:o}); it must be u=rw (0600) or less \
             when owned by the user pgsat runs as, or u=rw,g=r (0640) or less when owned by \
             root (libpq's rule)",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// The stream of a replication connection after the SSLRequest exchange.
pub enum Negotiated {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Sends the SSLRequest when the mode asks for TLS and runs the handshake
/// when the server accepts. `host` is the name the certificate must carry
/// (`verify-full`).
pub async fn negotiate(
    mut stream: TcpStream,
    host: &str,
    settings: &TlsSettings,
) -> Result<Negotiated, PgError> {
    let Some(config) = settings.client_config()? else {
        return Ok(Negotiated::Plain(stream));
    };
    let mut buf = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut buf);
    stream.write_all(&buf).await?;
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => {}
        b'N' if settings.mode.requires_tls() => {
            return Err(PgError::Tls(format!(
                "the server does not accept TLS connections, and sslmode={} requires TLS \
                 (set ssl = on in postgresql.conf, or use sslmode=prefer)",
                settings.mode.as_str()
            )))
        }
        b'N' => return Ok(Negotiated::Plain(stream)),
        other => {
            return Err(PgError::protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            )))
        }
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        PgError::Config(format!("host {host:?} is not a valid TLS server name: {e}"))
    })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(handshake_error)?;
    Ok(Negotiated::Tls(Box::new(tls)))
}

/// A rustls error inside an I/O error is a TLS failure (a certificate, a
/// protocol version); anything else is the connection's I/O trouble.
fn handshake_error(e: std::io::Error) -> PgError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => PgError::Tls(format!("TLS handshake with the server failed: {tls}")),
        None => PgError::Io(e),
    }
}

/// Whether an error (of tokio-postgres, say) was caused by TLS: a rustls
/// error somewhere in its source chain. Its text when so.
pub fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls.to_string());
            }
        }
        cur = err.source();
    }
    None
}

/// `prefer`/`require` without roots: encryption without checking who the
/// server is (libpq's behaviour). The handshake's signatures are still
/// verified, so the session keys belong to the certificate presented.
#[derive(Debug)]
struct NoCertCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not
/// compared (the web PKI check runs the chain first, then the name, so a
/// name mismatch means the chain passed).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
