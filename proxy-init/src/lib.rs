//! weft-proxy-init: the nat-table rules that send a pod's TCP through weft-proxy.
//!
//! The rules are generated as one `iptables-restore` ruleset per address family
//! ([`ruleset`]) and applied atomically with `--noflush` ([`backend`]), so a pod
//! never runs with half a rule set and the chains of other tools (CNI plugins,
//! other meshes' init steps) are left alone.

pub mod backend;
pub mod cidr;
pub mod install;
pub mod ports;
pub mod ruleset;

pub use backend::{Backend, BackendError, Mode};
pub use cidr::Cidr;
pub use ports::PortRange;
pub use ruleset::{Family, RedirectConfig};
