//! Proving who the caller is: token validation, with pluggable backends.
//!
//! - [`crate::kubernetes::TokenReviewer`]: a projected ServiceAccount token,
//!   checked by the Kubernetes API (TokenReview) for a configured audience;
//! - [`crate::token_file::TokenFile`]: a local file mapping tokens to
//!   ServiceAccounts, for meshes outside Kubernetes.

use std::fmt;
use std::future::Future;

/// A Kubernetes ServiceAccount (or its stand-in outside Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a token did not establish an identity.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is wrong, expired, for another audience, or not a
    /// ServiceAccount's. The reason is logged, not returned to the caller.
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The validator itself could not answer (API server unreachable...).
    #[error("token validation unavailable: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into the ServiceAccount it proves.
pub trait TokenValidator: Send + Sync + 'static {
    fn validate(&self, token: &[u8]) -> impl Future<Output = Result<ServiceAccount, TokenError>> + Send;
}
