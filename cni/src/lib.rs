//! weft-cni: a chained CNI plugin that writes weft-proxy-init's redirect
//! rules into a meshed pod's network namespace at sandbox creation, so the
//! pod needs no NET_ADMIN init container (Pod Security `baseline` and
//! `restricted` then admit it).
//!
//! Listed after the cluster's interface plugin in its conflist, it receives
//! that plugin's result as `prevResult` and passes it on unchanged. For a pod
//! the injector meshed (decided by the injector's own code,
//! [`weft_injector::redirect`], from the pod and its namespace as the API
//! server has them), it enters the pod's namespace and applies the ruleset
//! with weft-proxy-init's library (same rules, same backends, IPv4 and
//! IPv6). Every other pod is left alone.

pub mod config;
pub mod conflist;
pub mod error;
pub mod installer;
pub mod log;
pub mod netns;
pub mod plugin;
pub mod pods;

pub use error::CniError;
pub use plugin::{invoke, Reply};
