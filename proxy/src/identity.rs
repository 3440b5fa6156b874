//! The proxy's own identity: a private key made in memory at start, a
//! certificate for it from weft-identity, renewed well before it expires.
//!
//! The client lives in `weft_tls::certify`, shared with weft-destination
//! (which serves the control plane's gRPC with its own identity); what it
//! reports is logged here, under the proxy's own target.

use tracing::{info, warn};
use weft_tls::certify::Renewal;
pub use weft_tls::certify::{IdentityConfig, IdentityError, LocalIdentity};

pub fn start(config: IdentityConfig) -> Result<LocalIdentity, IdentityError> {
    weft_tls::certify::start(config, log)
}

fn log(event: &Renewal<'_>) {
    match *event {
        Renewal::Certified { name, valid_for, renew_in } => {
            info!(identity = %name, ?valid_for, ?renew_in, "certified")
        }
        Renewal::Failed { name, error, retry_in, still_valid } => {
            warn!(identity = %name, %error, ?retry_in, still_valid, "certification failed")
        }
    }
}
