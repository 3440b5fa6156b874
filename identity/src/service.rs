//! The `io.linkerd.proxy.identity.Identity` gRPC service: `Certify`.
//!
//! Status codes we chose where the proto is silent (a proxy retries
//! UNAVAILABLE and RESOURCE_EXHAUSTED with backoff; the others mean its
//! request is wrong and retrying the same one is pointless):
//!
//! | refusal                                        | status             |
//! |------------------------------------------------|--------------------|
//! | too many requests in flight                    | RESOURCE_EXHAUSTED |
//! | identity not a name in this mesh               | INVALID_ARGUMENT   |
//! | CSR malformed, badly signed, for another name  | INVALID_ARGUMENT   |
//! | key not ECDSA P-256                            | INVALID_ARGUMENT   |
//! | token missing, wrong, expired, other audience  | UNAUTHENTICATED    |
//! | token's ServiceAccount is not the identity's   | PERMISSION_DENIED  |
//! | token validator (API server) unreachable       | UNAVAILABLE        |
//! | issuer certificate expired                     | UNAVAILABLE        |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use linkerd2_proxy_api::identity::identity_server::Identity;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weft_tls::IdentityName;

use crate::issuer::{unix_seconds, Issuer};
use crate::token::{TokenError, TokenValidator};

pub const ISSUED: &str = "identity_certificates_issued_total";
pub const REFUSED: &str = "identity_certify_refusals_total";

/// The peer address of a request, set by the server for log lines.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// What leaves look like and how much work is accepted at once.
#[derive(Clone, Debug)]
pub struct Policy {
    pub trust_domain: String,
    pub control_plane_namespace: String,
    pub cert_lifetime: Duration,
    pub clock_skew: Duration,
    pub max_in_flight: usize,
}

pub struct CertifyService<V> {
    issuer: Arc<ArcSwap<Issuer>>,
    validator: Arc<V>,
    policy: Policy,
    in_flight: Arc<Semaphore>,
}

impl<V> CertifyService<V> {
    pub fn new(issuer: Arc<ArcSwap<Issuer>>, validator: Arc<V>, policy: Policy) -> Self {
        let in_flight = Arc::new(Semaphore::new(policy.max_in_flight));
        Self { issuer, validator, policy, in_flight }
    }
}

fn refuse(reason: &'static str, status: Status) -> Status {
    metrics::counter!(REFUSED, "reason" => reason).increment(1);
    tracing::warn!(reason, code = ?status.code(), message = status.message(), "certify refused");
    status
}

#[tonic::async_trait]
impl<V: TokenValidator> Identity for CertifyService<V> {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let req = request.into_inner();
        let span = tracing::info_span!(
            "certify",
            identity = %req.identity.chars().take(253).collect::<String>(),
            peer = ?peer,
        );
        self.certify_inner(req).instrument(span).await
    }
}

impl<V: TokenValidator> CertifyService<V> {
    async fn certify_inner(&self, req: CertifyRequest) -> Result<Response<CertifyResponse>, Status> {
        // Shed instead of queueing: a queued request's token review and
        // signature would still be done after the caller gave up.
        let _permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            refuse(
                "overloaded",
                Status::resource_exhausted("too many certify requests in flight; retry later"),
            )
        })?;

        let name: IdentityName = req.identity.parse().map_err(|e| {
            refuse("invalid_identity", Status::invalid_argument(format!("invalid identity: {e}")))
        })?;
        if name.trust_domain() != self.policy.trust_domain
            || name.control_plane_namespace() != self.policy.control_plane_namespace
        {
            return Err(refuse(
                "invalid_identity",
                Status::invalid_argument(format!(
                    "identity {name} is not in this mesh (*.identity.{}.{})",
                    self.policy.control_plane_namespace, self.policy.trust_domain
                )),
            ));
        }

        // Local checks first: a garbage CSR must not cost an API call.
        let public_key = crate::csr::check(&req.certificate_signing_request, &name)
            .map_err(|e| refuse(e.reason(), Status::invalid_argument(e.to_string())))?;

        if req.token.is_empty() {
            return Err(refuse("invalid_token", Status::unauthenticated("no token")));
        }
        let account = match self.validator.validate(&req.token).await {
            Ok(account) => account,
            Err(TokenError::Rejected(why)) => {
                // The detail (audience, expiry...) is logged, not returned:
                // it would help someone probing with stolen tokens.
                tracing::info!(%why, "token rejected");
                return Err(refuse("invalid_token", Status::unauthenticated("token rejected")));
            }
            Err(TokenError::Unavailable(why)) => {
                return Err(refuse(
                    "token_validation_unavailable",
                    Status::unavailable(format!("cannot validate token: {why}")),
                ));
            }
        };
        if account.namespace != name.namespace() || account.name != name.service_account() {
            return Err(refuse(
                "token_identity_mismatch",
                Status::permission_denied(format!(
                    "token is for ServiceAccount {account}, not {}/{}",
                    name.namespace(),
                    name.service_account()
                )),
            ));
        }

        let issuer = self.issuer.load_full();
        let leaf = issuer
            .issue(&public_key, &name, self.policy.cert_lifetime, self.policy.clock_skew, SystemTime::now())
            .map_err(|e| match e {
                crate::issuer::IssuerError::Expired(_) => {
                    refuse("issuer_expired", Status::unavailable(e.to_string()))
                }
                other => {
                    tracing::error!(error = %other, "signing failed");
                    refuse("internal", Status::internal("signing failed"))
                }
            })?;
        metrics::counter!(ISSUED).increment(1);
        let valid_until = unix_seconds(leaf.not_after);
        tracing::info!(valid_until, "certificate issued");
        Ok(Response::new(CertifyResponse {
            leaf_certificate: leaf.der.as_ref().to_vec(),
            intermediate_certificates: issuer.intermediates().iter().map(|c| c.as_ref().to_vec()).collect(),
            valid_until: Some(prost_types::Timestamp { seconds: valid_until, nanos: 0 }),
        }))
    }
}
