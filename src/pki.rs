//! Certificates read from PEM files, and the roots a TLS client trusts:
//! one reading for TLS to Postgres (`pg::tls`), pgsat's listeners
//! (`server::tls`) and its client (`client::tls`); a certificate with its
//! private key, for the listeners and for pgsat's client certificate to
//! Postgres. Messages name what is wrong, not the setting: each caller says
//! which setting the file came from.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

/// Every certificate of a PEM file (possibly none).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file of certificates ({e})"))
}

/// Why no roots could be had.
#[derive(Debug)]
pub enum RootsError {
    /// The CA file is unreadable or holds no usable CA certificate.
    File { path: PathBuf, reason: String },
    /// No file given, and the system has no CA certificates.
    NoSystemRoots,
}

/// The CA certificates of `ca_file`, else the system's; never empty.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |reason: String| RootsError::File {
                path: path.to_owned(),
                reason,
            };
            let certs = read_certs(path).map_err(bad)?;
            if roots.add_parsable_certificates(certs).0 == 0 {
                return Err(bad("no usable CA certificate in it".to_string()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if roots.add_parsable_certificates(found.certs).0 == 0 {
                return Err(RootsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// Which file of a certificate + key pair is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    Key,
}

/// A certificate chain (leaf first, PEM) and its private key (PEM: PKCS#8,
/// PKCS#1 or SEC1), checked to belong together. On failure: which file,
/// and why (its path included).
pub fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, (PairFile, String)> {
    let chain =
        read_certs(cert).map_err(|e| (PairFile::Cert, format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err((
            PairFile::Cert,
            format!("{}: no certificate in it", cert.display()),
        ));
    }
    let key_pem =
        std::fs::read(key).map_err(|e| (PairFile::Key, format!("{}: {e}", key.display())))?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            PairFile::Key,
            format!("{}: not a PEM private key ({e})", key.display()),
        )
    })?;
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        (
            PairFile::Key,
            format!("{}: unusable private key ({e})", key.display()),
        )
    })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        (
            PairFile::Key,
            format!("{}: not the key of the certificate ({e})", key.display()),
        )
    })?;
    Ok(pair)
}

/// A file's (modification time, size): what replacing it (a certificate
/// rotated in place) changes. A missing file reads `(None, 0)`.
pub type Stamp = (Option<SystemTime>, u64);

pub fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}
