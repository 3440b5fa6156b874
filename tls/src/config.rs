//! rustls configurations for mesh traffic: TLS 1.3 only, ring (plus ML-KEM
//! for the hybrid X25519MLKEM768 key exchange, preferred: [`crate::pq`]),
//! trust limited to the mesh's anchors, and peers checked by identity name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::current_cert::CurrentCert;
use crate::inspect::CertificateInfo;
use crate::name::IdentityName;
use crate::pem::TrustAnchors;

/// ALPN for HTTP/2 between two weft proxies. A proxy that negotiates it may
/// multiplex any number of requests (HTTP/1 ones upgraded) on the connection.
///
/// A mesh-specific value rather than plain `h2` keeps a meshed connection
/// from being confused with an application's own TLS-wrapped HTTP/2 that
/// happens to reach the inbound port.
pub const ALPN_HTTP2: &[u8] = b"weft.io/h2";

/// ALPN for opaque transport between two weft proxies: the TLS stream carries
/// the application's bytes unchanged (TCP, or protocols not detected).
pub const ALPN_OPAQUE: &[u8] = b"weft.io/opaque";

/// ALPN of gRPC over TLS, offered by the control plane (e.g. weft-identity).
pub const ALPN_GRPC: &[u8] = b"h2";

/// What an inbound server asks of its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never request a client certificate (the CA: its callers have none yet).
    Disabled,
    /// Request one; if presented it must chain to the anchors, and its
    /// identity is available with [`crate::peer_identity`]. Clients without
    /// one still connect (meshed-but-not-yet-certified or gateway clients).
    Optional,
    /// Refuse clients without a certificate chaining to the anchors.
    Required,
}

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot build a verifier from the trust anchors: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot build a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("identity {0} is not usable as a TLS server name")]
    ServerName(String),
}

/// A client configuration bound to one expected peer identity, and the server
/// name (SNI) to connect with. Pass both to `tokio_rustls::TlsConnector`.
#[derive(Clone, Debug)]
pub struct MeshClientConfig {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Builds the mesh's server and client configs from the trust anchors and
/// the process's [`CurrentCert`].
///
/// The configs hold the `CurrentCert`, so a renewed certificate takes effect
/// without rebuilding them; new trust anchors do need a new `MeshTls`.
#[derive(Clone, Debug)]
pub struct MeshTls {
    provider: Arc<CryptoProvider>,
    anchors: TrustAnchors,
    server_verifier: Arc<WebPkiServerVerifier>,
    cert: Arc<CurrentCert>,
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

impl MeshTls {
    pub fn new(anchors: &TrustAnchors, cert: Arc<CurrentCert>) -> Result<Self, ConfigError> {
        // An explicit provider, never the process default: this library must
        // not depend on which crypto backend something else installed.
        let provider = Arc::new(crate::pq::provider());
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(anchors.root_store(), provider.clone()).build()?;
        Ok(Self { provider, anchors: anchors.clone(), server_verifier, cert })
    }

    /// The certificate slot these configs present.
    pub fn current_cert(&self) -> &Arc<CurrentCert> {
        &self.cert
    }

    /// A server config presenting the current certificate and offering
    /// `alpn` (in preference order).
    pub fn server_config(
        &self,
        client_auth: ClientAuth,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, ConfigError> {
        let builder =
            ServerConfig::builder_with_provider(self.provider.clone()).with_protocol_versions(TLS13_ONLY)?;
        let builder = match client_auth {
            ClientAuth::Disabled => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    self.anchors.root_store(),
                    self.provider.clone(),
                );
                let verifier = if client_auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build()?)
            }
        };
        let mut config = builder.with_cert_resolver(self.cert.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // No resumption: a resumed session skips certificate verification,
        // so a peer whose certificate has since expired (or been re-issued
        // for another identity) would still be accepted. Mesh connections
        // are pooled and long-lived; a full handshake each time costs little.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// A client config that accepts only a server chaining to the anchors
    /// whose certificate names exactly `expected`, and presents the current
    /// certificate (if any) when the server asks for one.
    ///
    /// Build it once per peer identity and reuse it: building verifies and
    /// copies the trust anchors.
    pub fn client_config(
        &self,
        expected: &IdentityName,
        alpn: &[&[u8]],
    ) -> Result<MeshClientConfig, ConfigError> {
        let server_name = ServerName::try_from(expected.dns_name().to_owned())
            .map_err(|_| ConfigError::ServerName(expected.to_string()))?;
        let verifier = Arc::new(IdentityVerifier {
            expected: expected.clone(),
            server_name: server_name.clone(),
            inner: self.server_verifier.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(TLS13_ONLY)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.cert.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // See `server_config`: every connection verifies the peer afresh.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(MeshClientConfig { config: Arc::new(config), server_name })
    }
}

/// Verifies the server against the anchors (chain, validity, usage) and then
/// requires a DNS SAN *equal* to the expected identity.
///
/// The name comes from the config, not from the SNI the caller happened to
/// pass, so a connection can never be pointed at the wrong identity by a
/// mismatched server name. Equality (not webpki's name matching) rules out
/// wildcard certificates standing in for a workload.
#[derive(Debug)]
struct IdentityVerifier {
    expected: IdentityName,
    server_name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.server_name, ocsp_response, now)?;
        let info = CertificateInfo::from_der(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if info.dns_names.iter().any(|d| d.as_str() == self.expected.dns_name()) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::debug!(expected = %self.expected, presented = ?info.dns_names, "peer identity mismatch");
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
