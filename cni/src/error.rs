//! CNI errors as the spec defines them: a JSON object on stdout with a code
//! (1-99 well-known, 100+ ours), a message and details, and a non-zero exit.

use serde_json::{json, Value};

/// The spec's well-known codes, and weft-cni's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The pod's network namespace cannot be entered (gone, not a netns).
    pub const NETNS: u32 = 100;
    /// The iptables tools failed to read or apply the rules.
    pub const IPTABLES: u32 = 101;
    /// The pod runs weft-proxy but its rules cannot be decided (invalid
    /// `config.weft.io/skip-*-ports`, a pod the injector cannot parse).
    pub const POD: u32 = 102;
    /// CHECK: the pod's rules are not (exactly) installed.
    pub const RULES_MISSING: u32 = 103;
    /// A bug: weft-cni panicked (caught; still a CNI error, never a crash).
    pub const INTERNAL: u32 = 199;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    /// The error object the runtime reads from stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}
