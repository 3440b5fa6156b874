//! The certificate a process presents right now, swappable at run time.
//!
//! rustls configs are built once and shared by every connection; rotation
//! replaces only the certified key they resolve. Reads are lock-free
//! (ArcSwap), so the handshake hot path never waits on a renewal.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// A slot holding the current certificate + key, empty until the first one
/// is issued. Plug it into configs as both server and client cert resolver.
#[derive(Default)]
pub struct CurrentCert {
    key: ArcSwapOption<CertifiedKey>,
}

impl CurrentCert {
    /// An empty slot: servers using it fail handshakes, clients present no
    /// certificate, until [`CurrentCert::set`] is called.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts with `key` in place.
    pub fn with(key: Arc<CertifiedKey>) -> Arc<Self> {
        let this = Self::new();
        this.set(key);
        this
    }

    /// Replaces the certificate. Handshakes already past certificate
    /// selection keep the old one; new ones use this one.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.key.store(Some(key));
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.key.load_full()
    }

    /// True once a certificate has been set: what a proxy's `/ready` reports.
    pub fn is_ready(&self) -> bool {
        self.key.load().is_some()
    }
}

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentCert").field("ready", &self.is_ready()).finish()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let key = self.get()?;
        // Presenting a key the server cannot verify fails the handshake;
        // presenting none lets a server with optional client auth proceed.
        key.key.choose_scheme(sigschemes).is_some().then_some(key)
    }

    fn has_certs(&self) -> bool {
        self.is_ready()
    }
}
