//! weft-identity: the mesh's certificate authority.
//!
//! Serves `io.linkerd.proxy.identity.Identity/Certify` over gRPC on TLS:
//! a proxy sends a CSR for its identity plus a token proving its
//! ServiceAccount, and gets back a short-lived leaf certificate.
//!
//! Modules: [`issuer`] (issuing cert/key, signing), [`csr`] (request checks),
//! [`token`] with [`kubernetes`] and [`token_file`] backends, [`service`]
//! (the gRPC handler), [`server`] (TLS + HTTP/2), [`admin`] (metrics and
//! probes), [`reload`] (file change detection), [`config`] (flags).

pub mod admin;
pub mod config;
pub mod csr;
pub mod issuer;
pub mod kubernetes;
pub mod reload;
pub mod server;
pub mod service;
pub mod token;
pub mod token_file;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use linkerd2_proxy_api::identity::identity_server::IdentityServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use weft_tls::{ClientAuth, CurrentCert, IdentityName, MeshTls, PrivateKey, ALPN_GRPC};

use crate::issuer::{unix_seconds, Issuer, IssuerError, IssuerFiles};
use crate::service::{CertifyService, Policy};
use crate::token::TokenValidator;

pub const ISSUER_EXPIRY: &str = "identity_issuer_expiry_timestamp_seconds";
pub const ISSUER_RELOADS: &str = "identity_issuer_reloads_total";

/// A Certify request is a token (~1-2 KiB) and a CSR (~300 B); anything
/// much larger is not one.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Everything the CA needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub issuer_files: IssuerFiles,
    pub policy: Policy,
    pub addr: SocketAddr,
    /// None: no admin endpoint (tests that need no metrics).
    pub admin_addr: Option<SocketAddr>,
    /// How often the issuer files are checked for changes.
    pub reload_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid issuer: {0}")]
    Issuer(#[from] IssuerError),
    #[error("invalid trust domain or control-plane namespace: {0}")]
    Name(#[from] weft_tls::NameError),
    #[error("cannot create the CA's own serving key: {0}")]
    Key(#[from] weft_tls::CsrError),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] weft_tls::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started CA. Dropping it stops every task it runs.
pub struct Running {
    /// The Certify address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The name the CA's serving certificate carries; clients expect it.
    pub server_identity: IdentityName,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting and waits for the accept loops to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The name of the CA's own certificate, Linkerd's convention:
/// `identity.CPNS.serviceaccount.identity.CPNS.TRUSTDOMAIN`.
pub fn server_identity(policy: &Policy) -> Result<IdentityName, weft_tls::NameError> {
    IdentityName::new(
        "identity",
        &policy.control_plane_namespace,
        &policy.control_plane_namespace,
        &policy.trust_domain,
    )
}

/// Loads and validates the issuer, binds the listeners and starts serving.
pub async fn start<V: TokenValidator>(
    settings: Settings,
    validator: Arc<V>,
    metrics: Option<PrometheusHandle>,
) -> Result<Running, StartError> {
    describe_metrics();
    let issuer = Issuer::load(&settings.issuer_files, SystemTime::now())?;
    record_issuer(&issuer);
    tracing::info!(
        issuer_not_after = unix_seconds(issuer.not_after()),
        anchors = issuer.anchors().certificates().len(),
        "issuer loaded"
    );

    let name = server_identity(&settings.policy)?;
    let serving = ServingCert {
        key: PrivateKey::generate()?,
        name: name.clone(),
        current: CurrentCert::new(),
        lifetime: settings.policy.cert_lifetime,
        skew: settings.policy.clock_skew,
    };
    let mut renew_at = serving.issue(&issuer)?;
    // No client certificates: the CA's callers are asking for their first.
    let tls = MeshTls::new(issuer.anchors(), serving.current.clone())?
        .server_config(ClientAuth::Disabled, &[ALPN_GRPC])?;
    let issuer = Arc::new(ArcSwap::from_pointee(issuer));

    let svc = IdentityServer::new(CertifyService::new(issuer.clone(), validator, settings.policy.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
    };
    let listener = bind(settings.addr).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: settings.addr, source })?;
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(server::serve(listener, tls, svc, rx.clone()));

    let admin_addr = match settings.admin_addr {
        Some(admin) => {
            let listener = bind(admin).await?;
            let bound = listener.local_addr().map_err(|source| StartError::Bind { addr: admin, source })?;
            let issuer = issuer.clone();
            let ready: admin::Readiness = Arc::new(move || issuer.load().not_after() > SystemTime::now());
            tasks.spawn(admin::serve(listener, metrics.clone(), ready, rx.clone()));
            Some(bound)
        }
        None => None,
    };

    let files = settings.issuer_files.clone();
    let interval = settings.reload_interval;
    let mut stop = rx;
    tasks.spawn(async move {
        let mut watch = reload::FileWatch::new(files.paths().map(|p| p.to_owned()));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if let Some(handle) = &metrics {
                handle.run_upkeep();
            }
            let now = SystemTime::now();
            let mut reissue = now >= renew_at;
            if watch.changed() {
                match Issuer::load(&files, now) {
                    Ok(new) => {
                        tracing::info!(issuer_not_after = unix_seconds(new.not_after()), "issuer reloaded");
                        record_issuer(&new);
                        issuer.store(Arc::new(new));
                        metrics::counter!(ISSUER_RELOADS, "result" => "ok").increment(1);
                        reissue = true;
                    }
                    Err(error) => {
                        // Files mid-update (cert written, key not yet) land
                        // here too; the next change triggers another try.
                        tracing::error!(%error, "issuer reload failed; keeping the current issuer");
                        metrics::counter!(ISSUER_RELOADS, "result" => "error").increment(1);
                    }
                }
            }
            if reissue {
                match serving.issue(&issuer.load()) {
                    Ok(at) => renew_at = at,
                    Err(error) => {
                        tracing::error!(%error, "cannot renew the CA's serving certificate");
                        renew_at = now + Duration::from_secs(30);
                    }
                }
            }
        }
    });

    tracing::info!(
        %addr,
        admin_addr = %admin_addr.map(|a| a.to_string()).unwrap_or_default(),
        identity = %name,
        "serving Certify"
    );
    Ok(Running { addr, admin_addr, server_identity: name, shutdown, tasks })
}

/// The CA's own certificate, signed by the current issuer like any proxy's.
struct ServingCert {
    key: PrivateKey,
    name: IdentityName,
    current: Arc<CurrentCert>,
    lifetime: Duration,
    skew: Duration,
}

impl ServingCert {
    /// Issues and installs a new certificate; returns when to renew it
    /// (halfway through its life, as it never outlives the issuer).
    fn issue(&self, issuer: &Issuer) -> Result<SystemTime, StartError> {
        let now = SystemTime::now();
        let spki =
            rcgen::SubjectPublicKeyInfo::from_der(&self.key.public_key_der()).map_err(IssuerError::Sign)?;
        let leaf = issuer.issue(&spki, &self.name, self.lifetime, self.skew, now)?;
        let certified = self.key.certified_key(leaf.der, issuer.intermediates().iter().cloned())?;
        self.current.set(certified);
        let life = leaf.not_after.duration_since(now).unwrap_or_default();
        Ok(now + life / 2)
    }
}

fn record_issuer(issuer: &Issuer) {
    metrics::gauge!(ISSUER_EXPIRY).set(unix_seconds(issuer.not_after()) as f64);
}

fn describe_metrics() {
    metrics::describe_counter!(service::ISSUED, "Leaf certificates issued.");
    metrics::describe_counter!(service::REFUSED, "Certify requests refused, by reason.");
    metrics::describe_gauge!(
        ISSUER_EXPIRY,
        "notAfter of the issuer certificate in use, in seconds since the epoch."
    );
    metrics::describe_counter!(ISSUER_RELOADS, "Issuer reloads after a file change, by result.");
}
