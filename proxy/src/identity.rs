//! The proxy's own identity: a private key made in memory at start, a
//! certificate for it from weft-identity, renewed well before it expires.
//!
//! The client lives in `weft_tls::certify`, shared with weft-destination
//! (which serves the control plane's gRPC with its own identity).

pub use weft_tls::certify::{start, IdentityConfig, IdentityError, LocalIdentity};
