//! Loading trust anchors, certificate chains and private keys from PEM.
//!
//! Every error names the file it came from, because the usual operator
//! mistake is swapping two paths (a key where a certificate was expected).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why PEM material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: malformed PEM: {source}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: contains no CERTIFICATE block", path.display())]
    NoCertificates { path: PathBuf },
    #[error("{}: contains no PRIVATE KEY block (PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: certificate #{index} is not usable as a trust anchor: {source}", path.display())]
    InvalidAnchor {
        path: PathBuf,
        index: usize,
        #[source]
        source: rustls::Error,
    },
}

/// The path used in errors for material that did not come from a file.
fn inline() -> PathBuf {
    PathBuf::from("<inline PEM>")
}

/// The bundle of root certificates that every mesh certificate must chain to.
///
/// Holding both forms avoids re-parsing: the DER list is what the CA hands out
/// and checks issuers against, the root store is what rustls verifies with.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    certs: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl TrustAnchors {
    /// Reads a PEM bundle of one or more CERTIFICATE blocks.
    pub fn load(path: &Path) -> Result<Self, PemError> {
        let pem = read(path)?;
        Self::parse(&pem, path)
    }

    /// Parses a PEM bundle held in memory.
    pub fn from_pem(pem: &[u8]) -> Result<Self, PemError> {
        Self::parse(pem, &inline())
    }

    fn parse(pem: &[u8], path: &Path) -> Result<Self, PemError> {
        let certs = parse_certs(pem, path)?;
        Self::from_der(certs, path)
    }

    fn from_der(certs: Vec<CertificateDer<'static>>, path: &Path) -> Result<Self, PemError> {
        let mut roots = RootCertStore::empty();
        for (index, cert) in certs.iter().enumerate() {
            // add() rejects what webpki cannot use as an anchor; a silently
            // skipped anchor would surface much later as handshake failures.
            roots.add(cert.clone()).map_err(|source| PemError::InvalidAnchor {
                path: path.to_owned(),
                index,
                source,
            })?;
        }
        Ok(Self { certs, roots: Arc::new(roots) })
    }

    /// The anchors in DER, in file order.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The anchors as a rustls root store.
    pub fn root_store(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

/// Reads a PEM file holding a certificate chain, leaf first.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_certs(&read(path)?, path)
}

/// Parses a certificate chain held in memory, leaf first.
pub fn parse_cert_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_certs(pem, &inline())
}

/// Reads a PEM file holding one private key (PKCS#8, SEC1 or PKCS#1).
///
/// The key's bytes never appear in an error.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    parse_key(&read(path)?, path)
}

/// Parses a private key held in memory.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    parse_key(pem, &inline())
}

/// Reads a certificate chain and its private key, e.g. a CA issuer's.
pub fn load_cert_and_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PemError> {
    Ok((load_cert_chain(cert_path)?, load_private_key(key_path)?))
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read { path: path.to_owned(), source })
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Malformed { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificates { path: path.to_owned() });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            Err(PemError::NoPrivateKey { path: path.to_owned() })
        }
        Err(source) => Err(PemError::Malformed { path: path.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_bundle_of_anchors_from_file() {
        let dir = std::env::temp_dir().join(format!("weft-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, _) = ca_pem();
        let (b, _) = ca_pem();
        let path = dir.join("anchors.pem");
        std::fs::write(&path, format!("{a}\n{b}")).unwrap();
        let anchors = TrustAnchors::load(&path).unwrap();
        assert_eq!(anchors.certificates().len(), 2);
        assert_eq!(anchors.root_store().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loads_cert_and_key() {
        let (cert, key) = ca_pem();
        assert_eq!(parse_cert_chain(cert.as_bytes()).unwrap().len(), 1);
        assert!(matches!(parse_private_key(key.as_bytes()).unwrap(), PrivateKeyDer::Pkcs8(_)));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let missing = Path::new("/nonexistent/weft/anchors.pem");
        let err = TrustAnchors::load(missing).unwrap_err();
        assert!(matches!(err, PemError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/weft/anchors.pem"));

        let (_, key) = ca_pem();
        let err = TrustAnchors::from_pem(key.as_bytes()).unwrap_err();
        assert!(matches!(err, PemError::NoCertificates { .. }), "{err}");

        let (cert, _) = ca_pem();
        let err = parse_private_key(cert.as_bytes()).unwrap_err();
        assert!(matches!(err, PemError::NoPrivateKey { .. }), "{err}");

        let err = TrustAnchors::from_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(matches!(err, PemError::Malformed { .. }), "{err}");

        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = TrustAnchors::from_pem(garbage).unwrap_err();
        assert!(matches!(err, PemError::InvalidAnchor { index: 0, .. }), "{err}");
    }

    #[test]
    fn key_errors_do_not_echo_key_material() {
        let (_, key) = ca_pem();
        // Corrupt the base64 body so parsing fails part-way through the key.
        let broken = key.replacen("\n", "\n!", 2);
        let err = parse_private_key(broken.as_bytes()).unwrap_err();
        let body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!err.to_string().contains(&body), "{err}");
    }
}
