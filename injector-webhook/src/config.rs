//! The injector's own configuration: where the control plane lives and what
//! to inject. Everything a pod can override comes from annotations instead.

use weft_proxy_init::cidr::{parse_cidr_list, Cidr, CidrError};

use crate::kube_version::KubeVersion;

/// The proxy's ports and UID. They are the contract between the injector,
/// weft-proxy-init and weft-proxy, so they are fixed rather than configurable.
/// The inbound, outbound and admin ports are weft-proxy's defaults, which
/// the injector relies on rather than sets (see `inject::proxy_container`);
/// the probes target `ADMIN_PORT`, so it must stay weft-proxy's default
/// (`ADMIN_DEFAULT` in proxy/src/config.rs).
pub const PROXY_UID: u32 = 2102;
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
pub const TAP_PORT: u16 = 4190;
/// UID of the CNI mode's validator init container: not root, and not
/// [`PROXY_UID`], whose traffic the redirect exempts (the validator's own
/// connection must be redirected for the check to mean anything).
pub const VALIDATOR_UID: u32 = 2103;

pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-proxy-init";
/// CNI mode's init container in place of [`INIT_CONTAINER`]:
/// `weft-proxy validate` from the proxy image.
pub const VALIDATOR_CONTAINER: &str = "weft-network-validator";
pub const TOKEN_VOLUME: &str = "weft-identity-token";
pub const XTABLES_VOLUME: &str = "weft-proxy-init-xtables-lock";
pub const TOKEN_DIR: &str = "/var/run/secrets/weft.io/serviceaccount";
pub const TOKEN_AUDIENCE: &str = "identity.weft.io";
pub const TOKEN_EXPIRATION_SECONDS: u64 = 86_400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    /// Small requests so a meshed pod still schedules on a busy node; a
    /// memory limit so a leaking proxy is restarted rather than starving the
    /// app; no CPU limit, because CFS throttling turns into tail latency.
    fn default() -> Self {
        Self {
            cpu_request: Some("100m".into()),
            cpu_limit: None,
            memory_request: Some("20Mi".into()),
            memory_limit: Some("250Mi".into()),
        }
    }
}

/// The proxy image of this release: the tag is this crate's version, which is
/// the chart's appVersion (charts/lint.py checks they agree), so a pod is never
/// meshed with whatever `:latest` happens to be.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("ghcr.io/weft-mesh/weft-proxy:", env!("CARGO_PKG_VERSION"));
/// The proxy-init image of this release (see [`DEFAULT_PROXY_IMAGE`]).
pub const DEFAULT_PROXY_INIT_IMAGE: &str =
    concat!("ghcr.io/weft-mesh/weft-proxy-init:", env!("CARGO_PKG_VERSION"));

/// What the proxy allows on a port before (or without) its policy from
/// weft-destination: the names Linkerd's `default-inbound-policy` takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultInboundPolicy {
    #[default]
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    Deny,
    Audit,
}

impl DefaultInboundPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterUnauthenticated => "cluster-unauthenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a default inbound policy: expected one of all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit")]
pub struct UnknownPolicy(pub String);

impl std::str::FromStr for DefaultInboundPolicy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "all-unauthenticated" => Self::AllUnauthenticated,
            "all-authenticated" => Self::AllAuthenticated,
            "cluster-unauthenticated" => Self::ClusterUnauthenticated,
            "cluster-authenticated" => Self::ClusterAuthenticated,
            "deny" => Self::Deny,
            "audit" => Self::Audit,
            _ => return Err(UnknownPolicy(s.to_string())),
        })
    }
}

impl std::fmt::Display for DefaultInboundPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Linkerd's `clusterNetworks`: what `cluster-*` policies count as in-cluster.
pub const DEFAULT_CLUSTER_NETWORKS: &str = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterNetworksError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error("no network given (default: {DEFAULT_CLUSTER_NETWORKS})")]
    Empty,
}

/// A comma-separated CIDR list (`--cluster-networks`); at least one network.
pub fn parse_cluster_networks(s: &str) -> Result<Vec<Cidr>, ClusterNetworksError> {
    let nets = parse_cidr_list(s)?;
    if nets.is_empty() {
        return Err(ClusterNetworksError::Empty);
    }
    Ok(nets)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectorConfig {
    /// Namespace of the control plane; its pods are never injected.
    pub control_plane_namespace: String,
    /// Trust domain of the identities (`...identity.NS.TRUST_DOMAIN`).
    pub trust_domain: String,
    /// DNS suffix of Services (`svc.CLUSTER_DOMAIN`).
    pub cluster_domain: String,
    pub proxy_image: String,
    pub proxy_init_image: String,
    /// PEM bundle the proxies trust for mTLS and the identity service.
    pub trust_anchors_pem: String,
    pub default_log_level: String,
    pub default_resources: Resources,
    /// Command run by the postStart hook of a non-native proxy container; it
    /// must block until the proxy is ready, so the app containers that follow
    /// start with a working network.
    pub await_command: Vec<String>,
    /// The cluster's Kubernetes version, when known: below 1.29 the proxy is
    /// added as a plain container, since the API server would not accept
    /// (or would silently drop the restartPolicy of) a native sidecar.
    /// `None` (not known) keeps native sidecars.
    pub kubernetes_version: Option<KubeVersion>,
    /// CNI mode: weft-cni writes the pods' redirect rules from the node, so
    /// pods get no NET_ADMIN `weft-proxy-init` but an unprivileged
    /// `weft-network-validator` (`weft-proxy validate`) that fails the pod
    /// when the rules are missing. Off: weft-proxy-init, the default.
    pub cni: bool,
    /// The proxies' default inbound policy unless the pod's or its
    /// namespace's `config.weft.io/default-inbound-policy` says otherwise.
    pub default_inbound_policy: DefaultInboundPolicy,
    /// The networks `cluster-*` policies admit.
    pub cluster_networks: Vec<Cidr>,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            control_plane_namespace: "weft".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            proxy_init_image: DEFAULT_PROXY_INIT_IMAGE.into(),
            trust_anchors_pem: String::new(),
            default_log_level: "warn,weft_proxy=info".into(),
            default_resources: Resources::default(),
            await_command: vec!["weft-proxy".into(), "await".into(), "--timeout=120s".into()],
            kubernetes_version: None,
            cni: false,
            default_inbound_policy: DefaultInboundPolicy::default(),
            cluster_networks: parse_cidr_list(DEFAULT_CLUSTER_NETWORKS).unwrap_or_default(),
        }
    }
}

impl InjectorConfig {
    /// Whether the cluster takes native sidecars (unknown: assumed yes).
    pub fn native_sidecars(&self) -> bool {
        self.kubernetes_version.is_none_or(|v| v.supports_native_sidecars())
    }

    /// The Linkerd-style identity of a control-plane ServiceAccount.
    fn control_plane_identity(&self, sa: &str) -> String {
        format!(
            "{sa}.{ns}.serviceaccount.identity.{ns}.{td}",
            ns = self.control_plane_namespace,
            td = self.trust_domain
        )
    }

    pub fn identity_svc_addr(&self) -> String {
        format!("weft-identity.{}.svc.{}:8080", self.control_plane_namespace, self.cluster_domain)
    }

    pub fn identity_svc_name(&self) -> String {
        self.control_plane_identity("identity")
    }

    pub fn destination_svc_addr(&self) -> String {
        format!("weft-destination.{}.svc.{}:8086", self.control_plane_namespace, self.cluster_domain)
    }

    /// Where the proxy asks for inbound policy: weft-destination serves
    /// InboundServerPolicies next to Destination.
    pub fn policy_svc_addr(&self) -> String {
        self.destination_svc_addr()
    }

    pub fn destination_svc_name(&self) -> String {
        // The chart's ServiceAccount, whose token weft-destination is
        // certified with.
        self.control_plane_identity("weft-destination")
    }

    /// The pod's own identity, resolved by the kubelet from the downward-API
    /// variables `_pod_sa` and `_pod_ns` declared before it.
    pub fn local_identity_template(&self) -> String {
        format!(
            "$(_pod_sa).$(_pod_ns).serviceaccount.identity.{}.{}",
            self.control_plane_namespace, self.trust_domain
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_names() {
        let c = InjectorConfig::default();
        assert_eq!(c.identity_svc_addr(), "weft-identity.weft.svc.cluster.local:8080");
        assert_eq!(c.identity_svc_name(), "identity.weft.serviceaccount.identity.weft.cluster.local");
        assert_eq!(c.destination_svc_addr(), "weft-destination.weft.svc.cluster.local:8086");
        assert_eq!(
            c.destination_svc_name(),
            "weft-destination.weft.serviceaccount.identity.weft.cluster.local"
        );
        assert_eq!(
            c.local_identity_template(),
            "$(_pod_sa).$(_pod_ns).serviceaccount.identity.weft.cluster.local"
        );
    }
}
