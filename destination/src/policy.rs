//! Linkerd's inbound policy resources (`policy.linkerd.io`) as index records.
//!
//! Like [`crate::model`], each record keeps only what computing a pod's
//! inbound policy needs, parsed once when the object arrives. The apiserver's
//! schema validation is lax where Linkerd's admission webhook (which weft does
//! not run) is strict: it accepts `proxyProtocol: HTTP/3`, `cidr: not-a-cidr`
//! or a per-identity rate above the total. Those objects are refused here
//! with a [`ModelError`] naming the field, so the backend skips them with a
//! warning and `destination_invalid_objects_total{kind}`, and the rest of the
//! index keeps serving.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Deserialize;
use weft_tls::name::IdentityName;

use crate::{
    model::{invalid, ModelError, ObjKey},
    MeshConfig,
};

const POLICY_GROUP: &str = "policy.linkerd.io";

// === Label selectors ===

/// A Kubernetes `LabelSelector`: every `matchLabels` entry and every
/// `matchExpressions` requirement must hold. An empty selector selects all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectorSpec {
    #[serde(default)]
    match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    match_expressions: Option<Vec<ExpressionSpec>>,
}

#[derive(Deserialize)]
struct ExpressionSpec {
    key: String,
    operator: String,
    #[serde(default)]
    values: Option<Vec<String>>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }

    fn parse(spec: SelectorSpec, field: &'static str) -> Result<Self, ModelError> {
        let mut match_expressions = Vec::new();
        for e in spec.match_expressions.unwrap_or_default() {
            let values = e.values.unwrap_or_default();
            match_expressions.push(match (e.operator.as_str(), values.is_empty()) {
                ("In", false) => Requirement::In(e.key, values),
                ("NotIn", false) => Requirement::NotIn(e.key, values),
                ("Exists", true) => Requirement::Exists(e.key),
                ("DoesNotExist", true) => Requirement::DoesNotExist(e.key),
                (op, _) => {
                    return Err(invalid(
                        field,
                        format!("operator {op:?} with {} values for key {:?}", values.len(), e.key),
                    ))
                }
            });
        }
        Ok(Self { match_labels: spec.match_labels.unwrap_or_default(), match_expressions })
    }
}

// === Server (v1beta3) ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadSelector {
    Pod(LabelSelector),
    ExternalWorkload(LabelSelector),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    /// A container port name (an IANA service name).
    Name(String),
}

/// `spec.proxyProtocol`: how the proxy should read the port's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Detect (the default).
    Unknown,
    Http1,
    Http2,
    Grpc,
    Opaque,
    Tls,
}

impl ProxyProtocol {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unknown" => Self::Unknown,
            "HTTP/1" => Self::Http1,
            "HTTP/2" => Self::Http2,
            "gRPC" => Self::Grpc,
            "opaque" => Self::Opaque,
            "TLS" => Self::Tls,
            _ => return None,
        })
    }
}

/// Linkerd's access policies: a Server's `accessPolicy` (what applies to
/// clients no AuthorizationPolicy names) and the default policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    Deny,
    Audit,
}

impl AccessPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all-unauthenticated" => Self::AllUnauthenticated,
            "all-authenticated" => Self::AllAuthenticated,
            "cluster-unauthenticated" => Self::ClusterUnauthenticated,
            "cluster-authenticated" => Self::ClusterAuthenticated,
            "deny" => Self::Deny,
            "audit" => Self::Audit,
            _ => return None,
        })
    }

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRec {
    pub key: ObjKey,
    pub selector: WorkloadSelector,
    pub port: PortRef,
    pub proxy_protocol: ProxyProtocol,
    pub access_policy: AccessPolicy,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerSpec {
    pod_selector: Option<SelectorSpec>,
    external_workload_selector: Option<SelectorSpec>,
    port: serde_json::Value,
    proxy_protocol: Option<String>,
    access_policy: Option<String>,
}

pub fn server(key: ObjKey, spec: &serde_json::Value) -> Result<ServerRec, ModelError> {
    let spec: ServerSpec = serde_json::from_value(spec.clone())?;
    let selector = match (spec.pod_selector, spec.external_workload_selector) {
        (Some(s), None) => WorkloadSelector::Pod(LabelSelector::parse(s, "Server podSelector")?),
        (None, Some(s)) => {
            WorkloadSelector::ExternalWorkload(LabelSelector::parse(s, "Server externalWorkloadSelector")?)
        }
        _ => {
            return Err(invalid(
                "Server",
                "exactly one of podSelector and externalWorkloadSelector must be set",
            ))
        }
    };
    let port = match &spec.port {
        serde_json::Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(p) if p > 0 => PortRef::Number(p),
            _ => return Err(invalid("Server port", n.to_string())),
        },
        serde_json::Value::String(s) if is_port_name(s) => PortRef::Name(s.clone()),
        other => {
            return Err(invalid("Server port", format!("{other} is neither a port number nor a port name")))
        }
    };
    let proxy_protocol = match spec.proxy_protocol.as_deref() {
        None => ProxyProtocol::Unknown,
        Some(p) => ProxyProtocol::parse(p).ok_or_else(|| {
            invalid(
                "Server proxyProtocol",
                format!("{p:?} (want unknown, HTTP/1, HTTP/2, gRPC, opaque or TLS)"),
            )
        })?,
    };
    let access_policy = match spec.access_policy.as_deref() {
        None => AccessPolicy::Deny,
        Some(a) => AccessPolicy::parse(a).ok_or_else(|| {
            invalid(
                "Server accessPolicy",
                format!(
                    "{a:?} (want all-unauthenticated, all-authenticated, cluster-unauthenticated, \
                     cluster-authenticated, deny or audit)"
                ),
            )
        })?,
    };
    Ok(ServerRec { key, selector, port, proxy_protocol, access_policy })
}

/// A container port name: an IANA service name (1–15 lowercase letters,
/// digits and inner, non-consecutive hyphens, with at least one letter).
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

// === AuthorizationPolicy (v1alpha1) ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyTarget {
    /// A Server in the policy's namespace.
    Server(String),
    /// An HTTPRoute (`policy.linkerd.io` or `gateway.networking.k8s.io`) in
    /// the policy's namespace: the route's own authorizations.
    HttpRoute { group: String, name: String },
    /// Every Server of the policy's namespace (which the target must name).
    Namespace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthenticationRef {
    MeshTls(ObjKey),
    Network(ObjKey),
    /// Clients presenting this ServiceAccount's identity.
    ServiceAccount(ObjKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicyRec {
    pub key: ObjKey,
    pub target: PolicyTarget,
    /// All of them must hold (Linkerd's semantics).
    pub required: Vec<AuthenticationRef>,
}

#[derive(Deserialize)]
struct TargetRefSpec {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
}

#[derive(Deserialize)]
struct RefSpec {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationPolicySpec {
    target_ref: TargetRefSpec,
    required_authentication_refs: Vec<RefSpec>,
}

pub fn authorization_policy(
    key: ObjKey,
    spec: &serde_json::Value,
) -> Result<AuthorizationPolicyRec, ModelError> {
    let spec: AuthorizationPolicySpec = serde_json::from_value(spec.clone())?;
    let t = spec.target_ref;
    let group = t.group.unwrap_or_default();
    let target = match (group.as_str(), t.kind.as_str()) {
        (POLICY_GROUP, "Server") => PolicyTarget::Server(t.name),
        (POLICY_GROUP | "gateway.networking.k8s.io", "HTTPRoute") => {
            PolicyTarget::HttpRoute { group, name: t.name }
        }
        ("" | "core", "Namespace") if t.name == key.namespace => PolicyTarget::Namespace,
        ("" | "core", "Namespace") => {
            return Err(invalid(
                "AuthorizationPolicy targetRef",
                format!("Namespace {} is not the policy's own namespace {}", t.name, key.namespace),
            ))
        }
        (g, k) => {
            return Err(invalid(
                "AuthorizationPolicy targetRef",
                format!("kind {k} of group {g:?} (want a Server, an HTTPRoute or the Namespace)"),
            ))
        }
    };
    if spec.required_authentication_refs.is_empty() {
        return Err(invalid("AuthorizationPolicy", "requiredAuthenticationRefs is empty"));
    }
    let mut required = Vec::new();
    for r in spec.required_authentication_refs {
        let ns = r.namespace.unwrap_or_else(|| key.namespace.clone());
        let group = r.group.unwrap_or_default();
        required.push(match (group.as_str(), r.kind.as_str()) {
            (POLICY_GROUP, "MeshTLSAuthentication") => AuthenticationRef::MeshTls(ObjKey::new(ns, r.name)),
            (POLICY_GROUP, "NetworkAuthentication") => AuthenticationRef::Network(ObjKey::new(ns, r.name)),
            ("" | "core", "ServiceAccount") => AuthenticationRef::ServiceAccount(ObjKey::new(ns, r.name)),
            (g, k) => {
                return Err(invalid(
                    "AuthorizationPolicy requiredAuthenticationRefs",
                    format!(
                        "kind {k} of group {g:?} (want MeshTLSAuthentication, NetworkAuthentication or ServiceAccount)"
                    ),
                ))
            }
        });
    }
    Ok(AuthorizationPolicyRec { key, target, required })
}

// === MeshTLSAuthentication (v1alpha1) ===

/// One accepted client identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityMatch {
    /// `*`: any authenticated client.
    Any,
    /// `*.ns.serviceaccount.identity...`: the suffix after `*.`, matched on
    /// whole labels.
    Suffix(String),
    Exact(String),
}

impl IdentityMatch {
    pub fn matches(&self, identity: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Suffix(s) => {
                identity.strip_suffix(s.as_str()).is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            }
            Self::Exact(e) => identity == e,
        }
    }

    /// `*`, `*.a.b` or `a.b`: DNS-like labels, `*` only as the whole first one.
    fn parse(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Self::Any);
        }
        let (rest, suffix) = match s.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !rest.split('.').all(label_ok) {
            return None;
        }
        let rest = rest.to_ascii_lowercase();
        Some(if suffix { Self::Suffix(rest) } else { Self::Exact(rest) })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshTlsAuthenticationRec {
    pub key: ObjKey,
    /// Any one of them authenticates a client.
    pub identities: Vec<IdentityMatch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshTlsSpec {
    identities: Option<Vec<String>>,
    identity_refs: Option<Vec<RefSpec>>,
}

/// `identityRefs` are resolved here to identity names (`kind:
/// ServiceAccount`, or `kind: Namespace` for every ServiceAccount of it), so
/// a matcher is a string comparison.
pub fn meshtls_authentication(
    key: ObjKey,
    spec: &serde_json::Value,
    cfg: &MeshConfig,
) -> Result<MeshTlsAuthenticationRec, ModelError> {
    let spec: MeshTlsSpec = serde_json::from_value(spec.clone())?;
    let mut identities = Vec::new();
    match (spec.identities, spec.identity_refs) {
        (Some(ids), None) => {
            for id in ids {
                identities.push(IdentityMatch::parse(&id).ok_or_else(|| {
                    invalid(
                        "MeshTLSAuthentication identity",
                        format!("{id:?} is not `*`, `*.SUFFIX` or a DNS-like name"),
                    )
                })?);
            }
        }
        (None, Some(refs)) => {
            for r in refs {
                let ns = r.namespace.clone().unwrap_or_else(|| key.namespace.clone());
                let suffix_of = |sa: &str, ns: &str| {
                    IdentityName::new(sa, ns, &cfg.control_plane_namespace, &cfg.trust_domain)
                        .map(|n| n.dns_name().to_owned())
                        .map_err(|e| invalid("MeshTLSAuthentication identityRef", format!("{ns}/{sa}: {e}")))
                };
                match (r.group.as_deref().unwrap_or(""), r.kind.as_str()) {
                    ("" | "core", "ServiceAccount") => {
                        identities.push(IdentityMatch::Exact(suffix_of(&r.name, &ns)?))
                    }
                    ("" | "core", "Namespace") => {
                        let name = suffix_of("x", &r.name)?;
                        identities.push(IdentityMatch::Suffix(name["x.".len()..].to_owned()));
                    }
                    (g, k) => {
                        return Err(invalid(
                            "MeshTLSAuthentication identityRef",
                            format!("kind {k} of group {g:?} (want ServiceAccount or Namespace)"),
                        ))
                    }
                }
            }
        }
        _ => {
            return Err(invalid(
                "MeshTLSAuthentication",
                "exactly one of identities and identityRefs must be set",
            ))
        }
    }
    if identities.is_empty() {
        return Err(invalid("MeshTLSAuthentication", "no identity given"));
    }
    Ok(MeshTlsAuthenticationRec { key, identities })
}

// === NetworkAuthentication (v1alpha1) ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::/0`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        if width != ip_width {
            return false;
        }
        let shift = u32::from(width - self.prefix);
        shift >= 128 || (net >> shift) == (ip >> shift)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAuthenticationRec {
    pub key: ObjKey,
    pub networks: Vec<Network>,
}

impl NetworkAuthenticationRec {
    pub fn matches(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.cidr.contains(ip) && !n.except.iter().any(|e| e.contains(ip)))
    }
}

#[derive(Deserialize)]
struct NetworkAuthenticationSpec {
    networks: Vec<NetworkSpec>,
}

#[derive(Deserialize)]
struct NetworkSpec {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

pub fn network_authentication(
    key: ObjKey,
    spec: &serde_json::Value,
) -> Result<NetworkAuthenticationRec, ModelError> {
    let spec: NetworkAuthenticationSpec = serde_json::from_value(spec.clone())?;
    if spec.networks.is_empty() {
        return Err(invalid("NetworkAuthentication", "networks is empty"));
    }
    let cidr =
        |s: &str| Cidr::parse(s).ok_or_else(|| invalid("NetworkAuthentication CIDR", format!("{s:?}")));
    let mut networks = Vec::new();
    for n in spec.networks {
        let net = cidr(&n.cidr)?;
        let except = n.except.unwrap_or_default().iter().map(|e| cidr(e)).collect::<Result<Vec<_>, _>>()?;
        networks.push(Network { cidr: net, except });
    }
    Ok(NetworkAuthenticationRec { key, networks })
}

// === HTTPLocalRateLimitPolicy (v1alpha1) ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitOverride {
    pub requests_per_second: u32,
    /// ServiceAccounts (namespace defaults to the policy's).
    pub clients: Vec<ObjKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitRec {
    pub key: ObjKey,
    /// A Server of the policy's namespace.
    pub server: String,
    pub total: Option<u32>,
    pub identity: Option<u32>,
    pub overrides: Vec<RateLimitOverride>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rps {
    requests_per_second: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverrideSpec {
    requests_per_second: u32,
    client_refs: Vec<RefSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RateLimitSpec {
    target_ref: TargetRefSpec,
    total: Option<Rps>,
    identity: Option<Rps>,
    #[serde(default)]
    overrides: Option<Vec<OverrideSpec>>,
}

pub fn http_local_rate_limit(key: ObjKey, spec: &serde_json::Value) -> Result<RateLimitRec, ModelError> {
    let spec: RateLimitSpec = serde_json::from_value(spec.clone())?;
    let t = spec.target_ref;
    let server = match (t.group.as_deref().unwrap_or(""), t.kind.as_str()) {
        (POLICY_GROUP, "Server") => t.name,
        (g, k) => {
            return Err(invalid(
                "HTTPLocalRateLimitPolicy targetRef",
                format!("kind {k} of group {g:?} (Linkerd limits Servers only)"),
            ))
        }
    };
    let total = spec.total.map(|r| r.requests_per_second);
    let identity = spec.identity.map(|r| r.requests_per_second);
    let above_total = |what: &str, rps: u32| match total {
        Some(t) if rps > t => Err(invalid(
            "HTTPLocalRateLimitPolicy",
            format!("{what} requestsPerSecond {rps} is above total.requestsPerSecond {t}"),
        )),
        _ => Ok(()),
    };
    if let Some(i) = identity {
        above_total("identity", i)?;
    }
    let mut overrides = Vec::new();
    for o in spec.overrides.unwrap_or_default() {
        above_total("an override's", o.requests_per_second)?;
        let mut clients = Vec::new();
        for r in o.client_refs {
            match (r.group.as_deref().unwrap_or(""), r.kind.as_str()) {
                ("" | "core", "ServiceAccount") => {
                    clients.push(ObjKey::new(r.namespace.unwrap_or_else(|| key.namespace.clone()), r.name))
                }
                (g, k) => {
                    return Err(invalid(
                        "HTTPLocalRateLimitPolicy clientRef",
                        format!("kind {k} of group {g:?} (want ServiceAccount)"),
                    ))
                }
            }
        }
        overrides.push(RateLimitOverride { requests_per_second: o.requests_per_second, clients });
    }
    Ok(RateLimitRec { key, server, total, identity, overrides })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> serde_json::Value {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes").join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
    }

    fn items(name: &str) -> Vec<(ObjKey, serde_json::Value)> {
        let list = fixture(name);
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                let key = ObjKey::new(
                    i["metadata"]["namespace"].as_str().expect("ns"),
                    i["metadata"]["name"].as_str().expect("name"),
                );
                (key, i["spec"].clone())
            })
            .collect()
    }

    #[test]
    fn servers_from_the_fixture() {
        let servers: Vec<ServerRec> = items("servers.policy.linkerd.io-emojivoto.list.json")
            .into_iter()
            .map(|(k, s)| server(k, &s).unwrap())
            .collect();
        assert_eq!(servers.len(), 3);
        let voting = &servers[0];
        assert_eq!(voting.key, ObjKey::new("emojivoto", "voting-grpc"));
        assert_eq!(voting.port, PortRef::Name("grpc".into()));
        assert_eq!(voting.proxy_protocol, ProxyProtocol::Grpc);
        assert_eq!(voting.access_policy, AccessPolicy::Deny);
        let prom = &servers[1];
        assert_eq!(prom.port, PortRef::Number(8801));
        let WorkloadSelector::Pod(sel) = &prom.selector else { panic!("pod selector") };
        let labels = |v: &str| BTreeMap::from([("app".to_string(), v.to_string())]);
        assert!(sel.matches(&labels("voting")) && !sel.matches(&labels("web")));
        assert_eq!(servers[2].proxy_protocol, ProxyProtocol::Http1);
    }

    #[test]
    fn the_apiservers_accepted_server_is_refused() {
        let req = fixture("accepted-server-unknown-proxyprotocol.request.json");
        let err = server(ObjKey::new("emojivoto", "web-http3"), &req["spec"]).unwrap_err().to_string();
        assert!(err.contains("proxyProtocol") && err.contains("HTTP/3"), "{err}");
        let mut spec = req["spec"].clone();
        spec["proxyProtocol"] = "HTTP/1".into();
        let err = server(ObjKey::new("emojivoto", "web-http3"), &spec).unwrap_err().to_string();
        assert!(err.contains("accessPolicy") && err.contains("allow-everything"), "{err}");
        let both = fixture("rejected-server-both-selectors.request.json");
        assert!(server(ObjKey::new("emojivoto", "x"), &both["spec"]).is_err());
    }

    #[test]
    fn authorization_policies_from_the_fixture() {
        let aps: Vec<_> = items("authorizationpolicies.policy.linkerd.io-emojivoto.list.json")
            .into_iter()
            .map(|(k, s)| authorization_policy(k, &s).unwrap())
            .collect();
        assert_eq!(aps[0].target, PolicyTarget::Namespace);
        assert_eq!(
            aps[0].required,
            [AuthenticationRef::Network(ObjKey::new("emojivoto", "cluster-network"))]
        );
        assert_eq!(aps[1].target, PolicyTarget::Server("voting-grpc".into()));
        assert_eq!(aps[1].required, [AuthenticationRef::MeshTls(ObjKey::new("emojivoto", "web-only"))]);
        assert_eq!(
            aps[2].target,
            PolicyTarget::HttpRoute { group: POLICY_GROUP.into(), name: "web-api".into() }
        );
        let none = fixture("rejected-authorizationpolicy-no-authentication-refs.request.json");
        assert!(authorization_policy(ObjKey::new("emojivoto", "x"), &none["spec"]).is_err());
    }

    #[test]
    fn meshtls_authentications_from_the_fixture() {
        let cfg = MeshConfig::default();
        let m: Vec<_> = items("meshtlsauthentications.policy.linkerd.io-emojivoto.list.json")
            .into_iter()
            .map(|(k, s)| meshtls_authentication(k, &s, &cfg).unwrap())
            .collect();
        let accounts = &m[0].identities[0];
        assert!(accounts.matches("web.emojivoto.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!accounts.matches("web.other.serviceaccount.identity.linkerd.cluster.local"));
        assert!(!accounts.matches(".emojivoto.serviceaccount.identity.linkerd.cluster.local"));
        assert_eq!(
            m[1].identities,
            [IdentityMatch::Exact("web.emojivoto.serviceaccount.identity.weft.cluster.local".into())]
        );
        let both = fixture("rejected-meshtlsauthentication-identities-and-refs.request.json");
        assert!(meshtls_authentication(ObjKey::new("emojivoto", "x"), &both["spec"], &cfg).is_err());
        for bad in ["**", "a.*.b", "*.", "a..b", "-a.b", "*a.b", ""] {
            let spec = serde_json::json!({"identities": [bad]});
            assert!(meshtls_authentication(ObjKey::new("ns", "x"), &spec, &cfg).is_err(), "{bad:?}");
        }
        assert_eq!(IdentityMatch::parse("*"), Some(IdentityMatch::Any));
    }

    #[test]
    fn network_authentications_from_the_fixture() {
        let (k, s) = items("networkauthentications.policy.linkerd.io-emojivoto.list.json").remove(0);
        let n = network_authentication(k, &s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(n.matches(ip("10.42.0.11")) && n.matches(ip("2001:db8::1")));
        assert!(!n.matches(ip("10.1.2.3")) && !n.matches(ip("192.168.0.1")));
        let bogus = fixture("accepted-networkauthentication-not-a-cidr.request.json");
        let err = network_authentication(ObjKey::new("emojivoto", "bogus-network"), &bogus["spec"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not-a-cidr"), "{err}");
        let spec = serde_json::json!({"networks": [{"cidr": "10.0.0.0/8", "except": ["10.0.0.0/33"]}]});
        assert!(network_authentication(ObjKey::new("ns", "x"), &spec).is_err());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn rate_limits_from_the_fixture() {
        let (k, s) = items("httplocalratelimitpolicies.policy.linkerd.io-emojivoto.list.json").remove(0);
        let rl = http_local_rate_limit(k, &s).unwrap();
        assert_eq!((rl.server.as_str(), rl.total, rl.identity), ("web-http", Some(100), Some(20)));
        assert_eq!(rl.overrides[0].clients, [ObjKey::new("emojivoto", "web")]);
        let inverted = fixture("accepted-httplocalratelimitpolicy-identity-above-total.request.json");
        let err = http_local_rate_limit(ObjKey::new("emojivoto", "web-rl-inverted"), &inverted["spec"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTPRoute"), "{err}");
        let mut spec = inverted["spec"].clone();
        spec["targetRef"] = serde_json::json!({"group": POLICY_GROUP, "kind": "Server", "name": "web-http"});
        let err = http_local_rate_limit(ObjKey::new("emojivoto", "web-rl-inverted"), &spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1000") && err.contains("above"), "{err}");
        let string_rps = fixture("rejected-httplocalratelimitpolicy-string-rps.request.json");
        assert!(http_local_rate_limit(ObjKey::new("emojivoto", "x"), &string_rps["spec"]).is_err());
    }
}
