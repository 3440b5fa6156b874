//! The webhook's serving certificate, read from files and re-read when they
//! change, so a rotated Secret (cert-manager, Helm upgrade) is picked up
//! without restarting the injector.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    #[error("{0}: no PEM private key found")]
    NoKey(PathBuf),
    #[error("{path}: unusable private key: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read { path: cert.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_pem = read(key)?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read { path: key.to_path_buf(), source })?
        .ok_or_else(|| TlsError::NoKey(key.to_path_buf()))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|source| TlsError::BadKey { path: key.to_path_buf(), source })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|source| TlsError::BadKey { path: key.to_path_buf(), source })?;
    Ok(ck)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the current certificate; [`CertReloader::watch`] swaps in a new one.
#[derive(Debug)]
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl CertReloader {
    pub fn new(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = load(cert, key, &provider)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
            provider,
        }))
    }

    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Polls the files' modification times and reloads on change. A broken
    /// new pair (half-written, mismatched) keeps the old certificate serving.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut seen = (modified(&self.cert), modified(&self.key));
        loop {
            tokio::time::sleep(every).await;
            let now = (modified(&self.cert), modified(&self.key));
            if now == seen {
                continue;
            }
            match load(&self.cert, &self.key, &self.provider) {
                Ok(ck) => {
                    self.current.store(Arc::new(ck));
                    seen = now;
                    info!(cert = %self.cert.display(), "serving certificate reloaded");
                }
                Err(error) => warn!(%error, "new serving certificate unusable; keeping the old one"),
            }
        }
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
