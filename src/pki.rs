//! Certificates read from PEM files, and the roots a TLS client trusts:
//! one reading for TLS to Postgres (`pg::tls`), pgsat's listeners
//! (`server::tls`) and its client (`client::tls`). Messages name what is
//! wrong, not the file: each caller says which setting the file came from.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
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
