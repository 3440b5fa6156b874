//! A workload's own identity: a private key made in memory at start, a
//! certificate for it from weft-identity (`Identity/Certify` over TLS, the
//! CA's identity checked), renewed at 70% of its lifetime.
//!
//! Shared by weft-proxy and weft-destination (which serves the control
//! plane's gRPC with its own mesh identity). The key never leaves the
//! process: only its CSR is sent, and [`PrivateKey`] cannot print it. Until
//! the first certificate arrives the process is not ready; when a renewal
//! fails the current certificate keeps serving while it retries with backoff.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use linkerd2_proxy_api::identity::{identity_client::IdentityClient, CertifyRequest};
use rand::Rng;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::{grpc, CurrentCert, IdentityName, MeshTls, PrivateKey, TrustAnchors, ALPN_GRPC};

#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// weft-identity's `host:port`.
    pub svc_addr: String,
    /// The identity weft-identity's certificate must carry.
    pub svc_name: IdentityName,
    /// The identity this process asks for.
    pub local_name: IdentityName,
    pub trust_anchors: TrustAnchors,
    /// The ServiceAccount token proving the process may have `local_name`.
    /// Read at every request: Kubernetes rotates projected tokens.
    pub token_file: PathBuf,
}

/// Who we are and the TLS configs that present our (current) certificate.
#[derive(Clone)]
pub struct LocalIdentity {
    pub name: IdentityName,
    pub tls: MeshTls,
    /// Flips to true with the first certificate, and stays.
    certified: watch::Receiver<bool>,
}

impl LocalIdentity {
    pub fn is_ready(&self) -> bool {
        self.tls.current_cert().is_ready()
    }

    /// Resolves once the process holds its first certificate.
    pub async fn certified(&self) {
        // An error means the renewal task is gone, which only happens when
        // the runtime stops: nothing left to wait for.
        let _ = self.certified.clone().wait_for(|certified| *certified).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Key(#[from] crate::CsrError),
    #[error(transparent)]
    Tls(#[from] crate::ConfigError),
    #[error("invalid identity service address {0:?}")]
    Addr(String),
}

#[derive(Debug, thiserror::Error)]
enum CertifyError {
    #[error("reading token {0}: {1}")]
    Token(PathBuf, std::io::Error),
    #[error("identity service refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("identity service returned an unusable certificate: {0}")]
    BadCertificate(String),
}

/// What the renewal loop has to say, handed to the caller to log under its
/// own target: a proxy's log filter (`warn,weft_proxy=info`) names its
/// crate, not this one.
#[derive(Debug)]
pub enum Renewal<'a> {
    Certified { name: &'a IdentityName, valid_for: Duration, renew_in: Duration },
    Failed { name: &'a IdentityName, error: &'a dyn std::error::Error, retry_in: Duration, still_valid: bool },
}

/// Renew at this fraction of the certificate's lifetime.
const RENEW_AT: f64 = 0.7;
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Generates the key, starts certification in the background, and returns
/// at once: callers watch [`LocalIdentity::is_ready`]; `report` hears of
/// every certificate and failure. Must be called within a tokio runtime.
pub fn start(config: IdentityConfig, report: fn(&Renewal<'_>)) -> Result<LocalIdentity, IdentityError> {
    let key = PrivateKey::generate()?;
    let tls = MeshTls::new(&config.trust_anchors, CurrentCert::new())?;
    let ca_tls = tls.client_config(&config.svc_name, &[ALPN_GRPC])?;
    let endpoint = Endpoint::from_shared(format!("https://{}", config.svc_addr))
        .map_err(|_| IdentityError::Addr(config.svc_addr.clone()))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    let channel = grpc::connect_lazy(endpoint, &config.svc_addr, ca_tls);
    let (certified_tx, certified) = watch::channel(false);
    let local = LocalIdentity { name: config.local_name.clone(), tls: tls.clone(), certified };
    tokio::spawn(renew(
        config,
        key,
        tls.current_cert().clone(),
        IdentityClient::new(channel),
        certified_tx,
        report,
    ));
    Ok(local)
}

async fn renew(
    config: IdentityConfig,
    key: PrivateKey,
    current: Arc<CurrentCert>,
    mut client: IdentityClient<Channel>,
    first_cert: watch::Sender<bool>,
    report: fn(&Renewal<'_>),
) {
    let expiry_gauge = metrics::gauge!("identity_cert_expiration_timestamp_seconds");
    let refreshes = metrics::counter!("identity_cert_refresh_total");
    let failures = metrics::counter!("identity_cert_refresh_failures_total");
    let mut retry = RETRY_MIN;
    let mut valid_until: Option<SystemTime> = None;
    loop {
        match certify(&config, &key, &mut client).await {
            Ok((certified, expiry)) => {
                current.set(certified);
                first_cert.send_if_modified(|certified| !std::mem::replace(certified, true));
                refreshes.increment(1);
                let secs =
                    expiry.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                expiry_gauge.set(secs);
                let lifetime = expiry.duration_since(SystemTime::now()).unwrap_or_default();
                let renew_in = lifetime.mul_f64(RENEW_AT);
                report(&Renewal::Certified { name: &config.local_name, valid_for: lifetime, renew_in });
                valid_until = Some(expiry);
                retry = RETRY_MIN;
                tokio::time::sleep(renew_in).await;
            }
            Err(error) => {
                failures.increment(1);
                // Never wait past the current certificate's expiry to retry.
                let remaining =
                    valid_until.and_then(|v| v.duration_since(SystemTime::now()).ok()).unwrap_or(RETRY_MAX);
                let wait = retry.min(remaining / 4).max(Duration::from_millis(100));
                let jittered = rand::rng().random_range(wait / 2..=wait);
                report(&Renewal::Failed {
                    name: &config.local_name,
                    error: &error,
                    retry_in: jittered,
                    still_valid: current.is_ready(),
                });
                retry = (retry * 2).min(RETRY_MAX);
                tokio::time::sleep(jittered).await;
            }
        }
    }
}

async fn certify(
    config: &IdentityConfig,
    key: &PrivateKey,
    client: &mut IdentityClient<Channel>,
) -> Result<(Arc<rustls::sign::CertifiedKey>, SystemTime), CertifyError> {
    let token = tokio::fs::read(&config.token_file)
        .await
        .map_err(|e| CertifyError::Token(config.token_file.clone(), e))?;
    let csr = key
        .certificate_signing_request(&config.local_name)
        .map_err(|e| CertifyError::BadCertificate(e.to_string()))?;
    let rsp = client
        .certify(CertifyRequest {
            identity: config.local_name.dns_name().to_string(),
            token,
            certificate_signing_request: csr.as_ref().to_vec(),
        })
        .await?
        .into_inner();
    let leaf = CertificateDer::from(rsp.leaf_certificate);
    let issued_to =
        crate::identity_from_cert(&leaf).map_err(|e| CertifyError::BadCertificate(e.to_string()))?;
    if issued_to != config.local_name {
        return Err(CertifyError::BadCertificate(format!(
            "issued to {issued_to}, not {}",
            config.local_name
        )));
    }
    let expiry = crate::not_after(&leaf).map_err(|e| CertifyError::BadCertificate(e.to_string()))?;
    let intermediates = rsp.intermediate_certificates.into_iter().map(CertificateDer::from);
    let certified =
        key.certified_key(leaf, intermediates).map_err(|e| CertifyError::BadCertificate(e.to_string()))?;
    Ok((certified, expiry))
}
