//! weft-destination: service discovery and routing policy for weft proxies.
//!
//! Serves Linkerd's `io.linkerd.proxy.destination.Destination` API (`Get` and
//! `GetProfile`), `InboundServerPolicies` and `OutboundPolicies` from one
//! in-memory [`index::Index`]. Two backends feed the
//! index with the same resource kinds:
//!
//! - [`k8s`]: kube-rs watchers (one per kind, shared by every subscriber);
//! - [`files`]: Kubernetes-style YAML manifests in a directory, hot reloaded.
//!
//! Everything a subscriber sees is a pure function of the index
//! ([`endpoints::view`], [`profile::profile`], [`outbound::policy`]); a stream task recomputes its
//! view whenever the index changes and sends the difference.

pub mod admin;
pub mod endpoints;
pub mod files;
#[cfg(test)]
mod fixtures;
pub mod inbound;
pub mod index;
pub mod k8s;
pub mod model;
pub mod outbound;
pub mod outbound_api;
pub mod policy;
pub mod policy_api;
pub mod profile;
pub mod route;
pub mod route_status;
pub mod server;
pub mod target;

/// Mesh-wide naming parameters, fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Kubernetes cluster DNS domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Identity trust domain, the last part of every identity name.
    pub trust_domain: String,
    /// Namespace of the control plane, part of every identity name.
    pub control_plane_namespace: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_namespace: "weft".into(),
        }
    }
}
