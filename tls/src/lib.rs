//! TLS pieces shared by the weft proxy and the weft CA.
//!
//! - [`name`]: workload identity names (Linkerd DNS form and SPIFFE URI);
//! - [`pem`]: loading trust anchors, certificate chains and keys;
//! - [`csr`]: the in-memory private key and the CSRs it signs;
//! - [`current_cert`]: the certificate presented now, swappable at run time;
//! - [`config`]: rustls server/client configs for mesh traffic, ALPN values;
//! - [`pq`]: the hybrid post-quantum key exchange those configs prefer;
//! - [`inspect`]: identities and validity read out of certificates;
//! - [`certify`]: a process's own identity from weft-identity, renewed;
//! - [`grpc`]: gRPC channels over mesh TLS that check the server's identity.

pub mod certify;
pub mod config;
pub mod csr;
pub mod current_cert;
pub mod grpc;
pub mod inspect;
pub mod name;
pub mod pem;
pub mod pq;

pub use certify::{IdentityConfig, IdentityError, LocalIdentity};
pub use config::{ClientAuth, ConfigError, MeshClientConfig, MeshTls, ALPN_GRPC, ALPN_HTTP2, ALPN_OPAQUE};
pub use csr::{CsrError, PrivateKey};
pub use current_cert::CurrentCert;
pub use inspect::{identity_from_cert, not_after, peer_identity, CertificateInfo, InspectError};
pub use name::{IdentityName, NameError};
pub use pem::{PemError, TrustAnchors};

/// Re-exported so callers name the same rustls (and pki-types) as this crate.
pub use rustls;
