//! The index's records: the few fields of each Kubernetes resource that
//! discovery needs, extracted once when an object arrives (from a watch or a
//! file), so that per-subscriber computations never touch the large API
//! objects and invalid input is reported once, not once per subscriber.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use linkerd2_proxy_api::{destination as pb, http_types};
use serde::Deserialize;
use tracing::warn;
use weft_tls::name::IdentityName;

use crate::{policy, route, MeshConfig};

/// The pod container whose presence marks a pod as meshed.
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// Linkerd's proxy container: its pods are meshed too (a mixed mesh during a
/// migration), and get identities of the same form.
pub const LINKERD_PROXY_CONTAINER: &str = "linkerd-proxy";
/// The proxy's inbound port name on the injected container.
pub const PROXY_INBOUND_PORT_NAME: &str = "weft-proxy";
/// Annotation (on a Service or Pod) listing ports whose traffic is opaque TCP:
/// `"3306,5432,8000-8100"`. Linkerd's annotation is honoured too, so existing
/// manifests keep working.
pub const OPAQUE_PORTS_ANNOTATIONS: [&str; 2] =
    ["config.weft.io/opaque-ports", "config.linkerd.io/opaque-ports"];
/// Annotation (on a Pod) listing inbound ports that bypass the pod's proxy
/// (proxy-init does not redirect them): a client must not expect mTLS there.
pub const SKIP_INBOUND_PORTS_ANNOTATIONS: [&str; 2] =
    ["config.weft.io/skip-inbound-ports", "config.linkerd.io/skip-inbound-ports"];
/// The label that ties an EndpointSlice to its Service. Slices are renamed when
/// the controller recreates them, so this label, not the name, is the key.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Endpoint weight when nothing says otherwise (Linkerd's default).
pub const DEFAULT_WEIGHT: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("object has no metadata.name")]
    MissingName,
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("cannot decode spec: {0}")]
    Spec(#[from] serde_json::Error),
}

pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> ModelError {
    ModelError::Invalid { what, reason: reason.into() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    TrafficSplit,
    ServiceProfile,
    StaticEndpoints,
    Server,
    AuthorizationPolicy,
    MeshTLSAuthentication,
    NetworkAuthentication,
    HTTPLocalRateLimitPolicy,
    Namespace,
    /// `policy.linkerd.io` HTTPRoutes.
    HTTPRoute,
    /// `gateway.networking.k8s.io` HTTPRoutes (a kind of their own: both
    /// groups may hold a route of the same name).
    GatewayHTTPRoute,
    /// `gateway.networking.k8s.io` GRPCRoutes.
    GRPCRoute,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::TrafficSplit,
        Kind::ServiceProfile,
        Kind::StaticEndpoints,
        Kind::Server,
        Kind::AuthorizationPolicy,
        Kind::MeshTLSAuthentication,
        Kind::NetworkAuthentication,
        Kind::HTTPLocalRateLimitPolicy,
        Kind::Namespace,
        Kind::HTTPRoute,
        Kind::GatewayHTTPRoute,
        Kind::GRPCRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::ServiceProfile => "ServiceProfile",
            Kind::StaticEndpoints => "StaticEndpoints",
            Kind::Server => "Server",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::MeshTLSAuthentication => "MeshTLSAuthentication",
            Kind::NetworkAuthentication => "NetworkAuthentication",
            Kind::HTTPLocalRateLimitPolicy => "HTTPLocalRateLimitPolicy",
            Kind::Namespace => "Namespace",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::GatewayHTTPRoute => "HTTPRoute.gateway.networking.k8s.io",
            Kind::GRPCRoute => "GRPCRoute",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    pub fn from_meta(
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Result<Self, ModelError> {
        let name = meta.name.clone().ok_or(ModelError::MissingName)?;
        // Objects read from files may omit the namespace, as kubectl allows.
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        Ok(Self { namespace, name })
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Inclusive port ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// Parses `"3306,5432,8000-8100"`, the value of `field` (the annotation or
    /// spec field, named in the warning). Bad entries are reported and skipped
    /// so one typo does not make every other port lose its marking.
    pub fn parse(value: &str, field: &str, owner: &dyn std::fmt::Display) -> Self {
        let mut ranges = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = match part.split_once('-') {
                Some((lo, hi)) => lo.trim().parse::<u16>().ok().zip(hi.trim().parse::<u16>().ok()),
                None => part.parse::<u16>().ok().map(|p| (p, p)),
            };
            match parsed {
                Some((lo, hi)) if lo <= hi => ranges.push((lo, hi)),
                _ => warn!(%owner, entry = part, "ignoring an invalid port entry in {field}"),
            }
        }
        Self(ranges)
    }

    fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
        owner: &dyn std::fmt::Display,
    ) -> Self {
        Self::from_annotation(annotations, &OPAQUE_PORTS_ANNOTATIONS, owner)
    }

    fn from_annotation(
        annotations: Option<&BTreeMap<String, String>>,
        keys: &[&str],
        owner: &dyn std::fmt::Display,
    ) -> Self {
        annotations
            .and_then(|a| keys.iter().find_map(|k| a.get(*k).map(|v| (*k, v))))
            .map(|(k, v)| Self::parse(v, k, owner))
            .unwrap_or_default()
    }
}

// === Service ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRec {
    pub key: ObjKey,
    pub cluster_ips: Vec<IpAddr>,
    /// `(port name, service port)`; the name ties it to EndpointSlice ports.
    pub ports: Vec<(String, u16)>,
    pub opaque_ports: PortSet,
    /// Service port → its `appProtocol`, where set.
    pub app_protocols: BTreeMap<u16, String>,
    /// Linkerd's retry, timeout and failure-accrual annotations
    /// ([`route::policy_annotations`]).
    pub annotations: BTreeMap<String, String>,
}

pub fn service(svc: &core::Service) -> Result<ServiceRec, ModelError> {
    let key = ObjKey::from_meta(&svc.metadata)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ips: Vec<String> = spec.cluster_ips.unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip);
    }
    // "None" marks a headless service: no virtual IP to look up by.
    let cluster_ips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    let mut ports = Vec::new();
    let mut app_protocols = BTreeMap::new();
    for p in spec.ports.unwrap_or_default() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let port = u16::try_from(p.port).map_err(|_| invalid("service port", p.port.to_string()))?;
        if let Some(app) = p.app_protocol {
            app_protocols.insert(port, app);
        }
        ports.push((p.name.unwrap_or_default(), port));
    }
    let opaque_ports = PortSet::from_annotations(svc.metadata.annotations.as_ref(), &key);
    let annotations = svc
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| route::POLICY_ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    route::report_annotations(&key, "Service", &annotations);
    Ok(ServiceRec { key, cluster_ips, ports, opaque_ports, app_protocols, annotations })
}

// === EndpointSlice ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceRec {
    pub key: ObjKey,
    /// The owning Service's name (same namespace).
    pub service: String,
    /// `(port name, target port)`, TCP only.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The backing pod's name, from `targetRef`.
    pub pod: Option<String>,
    pub zone: Option<String>,
}

/// `Ok(None)` for slices discovery ignores: FQDN slices and slices that
/// belong to no Service.
pub fn endpoint_slice(slice: &discovery::EndpointSlice) -> Result<Option<SliceRec>, ModelError> {
    let key = ObjKey::from_meta(&slice.metadata)?;
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return Ok(None);
    }
    let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned()
    else {
        return Ok(None);
    };
    let mut ports = Vec::new();
    for p in slice.ports.iter().flatten() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        // A nil port means "all ports" and is only used by selector-less
        // services we cannot map to a number; skip it.
        let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else { continue };
        ports.push((p.name.clone().unwrap_or_default(), port));
    }
    let mut endpoints = Vec::new();
    for ep in &slice.endpoints {
        // Consumers use only the first address (the API says the others are
        // unused and may be dropped).
        let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
        let c = ep.conditions.clone().unwrap_or_default();
        // Nil conditions are "unknown" and read as ready/serving, as
        // kube-proxy reads them.
        endpoints.push(SliceEndpoint {
            ip,
            ready: c.ready.unwrap_or(true),
            serving: c.serving.unwrap_or(true),
            terminating: c.terminating.unwrap_or(false),
            pod: ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone()),
            zone: ep.zone.clone(),
        });
    }
    Ok(Some(SliceRec { key, service, ports, endpoints }))
}

// === Pod ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRec {
    pub key: ObjKey,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    /// The TLS identity; `Some` only for meshed pods.
    pub identity: Option<String>,
    pub meshed: bool,
    pub opaque_ports: PortSet,
    /// Ports the pod's proxy never sees: served as unmeshed endpoints.
    pub skip_inbound_ports: PortSet,
    /// Succeeded/Failed pods keep their IP in the API but the IP may already
    /// belong to a new pod, so they are never found by IP.
    pub terminal: bool,
    /// What inbound policy needs: the labels Servers select on, the named
    /// container ports (TCP) a Server's `port: NAME` resolves to, and the
    /// pod's own default policy (`config.weft.io/default-inbound-policy`).
    pub labels: BTreeMap<String, String>,
    pub named_ports: Vec<(String, u16)>,
    pub default_inbound_policy: Option<crate::policy::AccessPolicy>,
    /// httpGet probes as (container port, path), for the `probe` route.
    pub probe_paths: Vec<(u16, String)>,
}

/// Annotation (on a Pod) naming the access policy of its ports that no
/// Server covers. Linkerd's annotation is honoured too.
pub const DEFAULT_INBOUND_POLICY_ANNOTATIONS: [&str; 2] =
    ["config.weft.io/default-inbound-policy", "config.linkerd.io/default-inbound-policy"];

pub fn pod(pod: &core::Pod, cfg: &MeshConfig) -> Result<PodRec, ModelError> {
    let key = ObjKey::from_meta(&pod.metadata)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|ip| ip.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()));
    }
    let service_account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    // Meshed means the proxy container is really there (as a container or a
    // native sidecar). The `weft.io/inject` annotation only asks for
    // injection: a pod created while the webhook was down carries it without
    // a proxy, and telling clients to expect mTLS there would break them.
    let is_proxy = |c: &core::Container| c.name == PROXY_CONTAINER || c.name == LINKERD_PROXY_CONTAINER;
    let meshed = spec.containers.iter().any(is_proxy) || spec.init_containers.iter().flatten().any(is_proxy);
    let identity = if meshed {
        match IdentityName::new(
            &service_account,
            &key.namespace,
            &cfg.control_plane_namespace,
            &cfg.trust_domain,
        ) {
            Ok(name) => Some(name.dns_name().to_owned()),
            Err(error) => {
                // Without a valid identity clients cannot verify the peer, so
                // the pod is served as unmeshed rather than unreachable.
                warn!(pod = %key, %error, "meshed pod has no valid identity name; serving it without one");
                None
            }
        }
    } else {
        None
    };
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let opaque_ports = PortSet::from_annotations(pod.metadata.annotations.as_ref(), &key);
    let skip_inbound_ports =
        PortSet::from_annotation(pod.metadata.annotations.as_ref(), &SKIP_INBOUND_PORTS_ANNOTATIONS, &key);
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let named_ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    let default_inbound_policy = default_policy_annotation(pod.metadata.annotations.as_ref(), &key);
    let probe_paths = probe_paths(&spec);
    Ok(PodRec {
        key,
        ips,
        service_account,
        identity,
        meshed,
        opaque_ports,
        skip_inbound_ports,
        terminal,
        labels,
        named_ports,
        default_inbound_policy,
        probe_paths,
    })
}

/// The kubelet's httpGet probes (liveness, readiness, startup) of every
/// container, as (port, path); a named port resolves among that container's
/// own ports, as the kubelet does.
fn probe_paths(spec: &core::PodSpec) -> Vec<(u16, String)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out: Vec<(u16, String)> = Vec::new();
    for c in &spec.containers {
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe].into_iter().flatten() {
            let Some(get) = &probe.http_get else { continue };
            let port = match &get.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            };
            let path = get.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
            if let Some(port) = port {
                if !out.iter().any(|(p, s)| *p == port && *s == path) {
                    out.push((port, path));
                }
            }
        }
    }
    out
}

// === TrafficSplit (split.smi-spec.io v1alpha1..v1alpha4) ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRec {
    pub key: ObjKey,
    /// The apex service clients address.
    pub service: String,
    /// `(backend service, weight)`.
    pub backends: Vec<(String, u32)>,
}

#[derive(Deserialize)]
struct SplitSpec {
    service: String,
    #[serde(default)]
    backends: Vec<SplitBackend>,
}

#[derive(Deserialize)]
struct SplitBackend {
    service: String,
    weight: serde_json::Value,
}

/// v1alpha1 weights were Quantities ("500m"); v1alpha2+ are integers. Both
/// end up in the same relative scale.
pub fn traffic_split(key: ObjKey, spec: &serde_json::Value) -> Result<SplitRec, ModelError> {
    let spec: SplitSpec = serde_json::from_value(spec.clone())?;
    if spec.service.is_empty() {
        return Err(invalid("TrafficSplit", "spec.service is empty"));
    }
    let mut backends = Vec::new();
    for b in spec.backends {
        let milli = quantity_milli(&b.weight).ok_or_else(|| {
            invalid("TrafficSplit weight", format!("{} for backend {}", b.weight, b.service))
        })?;
        backends.push((b.service, dst_weight(milli)));
    }
    Ok(SplitRec { key, service: spec.service, backends })
}

/// Linkerd expresses `dst_overrides` weights in decimillis of the resource
/// Quantity (weight 1 → 10 000), so we do too: a weft controller and a
/// Linkerd one give a proxy the same numbers for the same objects.
fn dst_weight(milli: u64) -> u32 {
    u32::try_from(milli.saturating_mul(10)).unwrap_or(u32::MAX)
}

/// Parses a Kubernetes Quantity (int, or a string with an SI suffix) into
/// milli-units. Negative and binary-suffixed values are not weights.
fn quantity_milli(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n.saturating_mul(1000)),
        serde_json::Value::String(s) => {
            let s = s.trim();
            let (num, scale) = match s.char_indices().last()? {
                (i, 'm') => (&s[..i], 1.0),
                (i, 'k') => (&s[..i], 1e6),
                (i, 'M') => (&s[..i], 1e9),
                (i, 'G') => (&s[..i], 1e12),
                _ => (s, 1e3),
            };
            let n: f64 = num.parse().ok()?;
            (n.is_finite() && n >= 0.0).then(|| (n * scale).round() as u64)
        }
        _ => None,
    }
}

// === ServiceProfile (linkerd.io/v1alpha2) ===

#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRec {
    /// Name is the service's FQDN, e.g. `web.emojivoto.svc.cluster.local`.
    pub key: ObjKey,
    pub routes: Vec<pb::Route>,
    pub retry_budget: Option<pb::RetryBudget>,
    pub dst_overrides: Vec<pb::WeightedDst>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpSpec {
    #[serde(default)]
    routes: Vec<SpRoute>,
    retry_budget: Option<SpRetryBudget>,
    #[serde(default)]
    dst_overrides: Vec<SpDst>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpRoute {
    #[serde(default)]
    name: String,
    condition: Option<SpRequestMatch>,
    #[serde(default)]
    response_classes: Vec<SpResponseClass>,
    #[serde(default)]
    is_retryable: bool,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpRequestMatch {
    all: Option<Vec<SpRequestMatch>>,
    any: Option<Vec<SpRequestMatch>>,
    not: Option<Box<SpRequestMatch>>,
    method: Option<String>,
    path_regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpResponseClass {
    condition: Option<SpResponseMatch>,
    #[serde(default)]
    is_failure: bool,
}

#[derive(Deserialize)]
struct SpResponseMatch {
    all: Option<Vec<SpResponseMatch>>,
    any: Option<Vec<SpResponseMatch>>,
    not: Option<Box<SpResponseMatch>>,
    status: Option<SpStatus>,
}

#[derive(Deserialize)]
struct SpStatus {
    min: Option<u32>,
    max: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpRetryBudget {
    retry_ratio: f32,
    min_retries_per_second: u32,
    ttl: String,
}

#[derive(Deserialize)]
struct SpDst {
    authority: String,
    weight: serde_json::Value,
}

/// Converts a ServiceProfile. A route that cannot be served (invalid regex or
/// method, empty condition, bad timeout) is rejected with a log line naming
/// the profile, the route and the reason, and skipped: the proxy matches
/// routes first-wins, so dropping one bad route degrades only the requests it
/// would have matched, which then get the default (no retry, no timeout).
pub fn service_profile(key: ObjKey, spec: &serde_json::Value) -> Result<ProfileRec, ModelError> {
    let spec: SpSpec = serde_json::from_value(spec.clone())?;
    let mut routes = Vec::with_capacity(spec.routes.len());
    for (i, route) in spec.routes.into_iter().enumerate() {
        let name = if route.name.is_empty() { format!("#{i}") } else { route.name.clone() };
        match convert_route(route) {
            Ok(r) => routes.push(r),
            Err(reason) => {
                metrics::counter!("destination_rejected_routes_total").increment(1);
                warn!(profile = %key, route = %name, %reason, "ServiceProfile route rejected; skipping it");
            }
        }
    }
    let retry_budget = match spec.retry_budget {
        None => None,
        Some(b) => match parse_go_duration(&b.ttl) {
            Ok(ttl) if b.retry_ratio.is_finite() && b.retry_ratio >= 0.0 => Some(pb::RetryBudget {
                retry_ratio: b.retry_ratio,
                min_retries_per_second: b.min_retries_per_second,
                ttl: Some(proto_duration(ttl)),
            }),
            Ok(_) => {
                warn!(profile = %key, ratio = b.retry_ratio, "invalid retryRatio; using the default retry budget");
                None
            }
            Err(reason) => {
                warn!(profile = %key, %reason, "invalid retryBudget.ttl; using the default retry budget");
                None
            }
        },
    };
    let mut dst_overrides = Vec::new();
    for d in spec.dst_overrides {
        match quantity_milli(&d.weight) {
            Some(milli) => dst_overrides.push(pb::WeightedDst {
                authority: d.authority,
                weight: dst_weight(milli),
                backend_ref: None,
            }),
            None => {
                warn!(profile = %key, authority = %d.authority, weight = %d.weight, "invalid dstOverrides weight; skipping it")
            }
        }
    }
    Ok(ProfileRec { key, routes, retry_budget, dst_overrides })
}

fn convert_route(route: SpRoute) -> Result<pb::Route, String> {
    let condition = route.condition.ok_or("route has no condition")?;
    let condition = request_match(&condition)?;
    let mut response_classes = Vec::new();
    for rc in route.response_classes {
        let cond = rc.condition.ok_or("response class has no condition")?;
        response_classes
            .push(pb::ResponseClass { condition: Some(response_match(&cond)?), is_failure: rc.is_failure });
    }
    // No timeout unless the profile sets one, as Linkerd does.
    let timeout = match route.timeout.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(proto_duration(parse_go_duration(t).map_err(|e| format!("timeout {t:?}: {e}"))?)),
    };
    Ok(pb::Route {
        condition: Some(condition),
        response_classes,
        metrics_labels: [("route".to_owned(), route.name)].into(),
        is_retryable: route.is_retryable,
        timeout,
    })
}

/// Several fields in one condition must all hold, so they become an `all`
/// (Linkerd's translation).
fn request_match(m: &SpRequestMatch) -> Result<pb::RequestMatch, String> {
    use pb::request_match::{Match, Seq};
    let mut matches = Vec::new();
    if let Some(all) = &m.all {
        let all = all.iter().map(request_match).collect::<Result<_, _>>()?;
        matches.push(Match::All(Seq { matches: all }));
    }
    if let Some(any) = &m.any {
        let any = any.iter().map(request_match).collect::<Result<_, _>>()?;
        matches.push(Match::Any(Seq { matches: any }));
    }
    if let Some(method) = m.method.as_deref().filter(|s| !s.is_empty()) {
        let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid method {method:?}"))?;
        matches.push(Match::Method(http_types::HttpMethod::from(method)));
    }
    if let Some(not) = &m.not {
        matches.push(Match::Not(Box::new(request_match(not)?)));
    }
    if let Some(re) = m.path_regex.as_deref().filter(|s| !s.is_empty()) {
        // The proxy compiles this regex; one it cannot compile must never
        // reach it.
        regex::Regex::new(re).map_err(|e| format!("invalid pathRegex {re:?}: {e}"))?;
        matches.push(Match::Path(pb::PathMatch { regex: re.to_owned() }));
    }
    match matches.len() {
        0 => Err("a request match must have a field set".into()),
        1 => Ok(pb::RequestMatch { r#match: matches.pop() }),
        _ => Ok(pb::RequestMatch {
            r#match: Some(Match::All(Seq {
                matches: matches.into_iter().map(|m| pb::RequestMatch { r#match: Some(m) }).collect(),
            })),
        }),
    }
}

fn response_match(m: &SpResponseMatch) -> Result<pb::ResponseMatch, String> {
    use pb::response_match::{Match, Seq};
    let mut matches = Vec::new();
    if let Some(all) = &m.all {
        let all = all.iter().map(response_match).collect::<Result<_, _>>()?;
        matches.push(Match::All(Seq { matches: all }));
    }
    if let Some(any) = &m.any {
        let any = any.iter().map(response_match).collect::<Result<_, _>>()?;
        matches.push(Match::Any(Seq { matches: any }));
    }
    if let Some(s) = &m.status {
        let (min, max) = (s.min.unwrap_or(0), s.max.unwrap_or(0));
        if min > 599 || max > 599 || (min != 0 && max != 0 && min > max) {
            return Err(format!("invalid status range {min}..{max}"));
        }
        matches.push(Match::Status(pb::HttpStatusRange { min, max }));
    }
    if let Some(not) = &m.not {
        matches.push(Match::Not(Box::new(response_match(not)?)));
    }
    match matches.len() {
        0 => Err("a response match must have a field set".into()),
        1 => Ok(pb::ResponseMatch { r#match: matches.pop() }),
        _ => Ok(pb::ResponseMatch {
            r#match: Some(Match::All(Seq {
                matches: matches.into_iter().map(|m| pb::ResponseMatch { r#match: Some(m) }).collect(),
            })),
        }),
    }
}

pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Parses Go's `time.ParseDuration` syntax (what ServiceProfiles use):
/// a sequence of decimal numbers with units ns, us/µs, ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(format!("invalid duration {s:?}"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {s:?}: missing or unknown unit")),
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

// === StaticEndpoints (weft.io/v1alpha1): endpoints outside Kubernetes ===

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRec {
    /// Addressed as if it were a Service of this name and namespace.
    pub key: ObjKey,
    /// Service port → endpoints.
    pub ports: BTreeMap<u16, Vec<StaticEndpoint>>,
    pub opaque_ports: PortSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticEndpoint {
    pub addr: SocketAddr,
    pub identity: Option<String>,
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StaticSpec {
    ports: Vec<StaticPortSpec>,
    #[serde(default)]
    opaque_ports: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StaticPortSpec {
    port: u16,
    #[serde(default)]
    endpoints: Vec<StaticEndpointSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StaticEndpointSpec {
    address: String,
    identity: Option<String>,
    service_account: Option<String>,
    weight: Option<u32>,
}

pub fn static_endpoints(
    key: ObjKey,
    spec: &serde_json::Value,
    cfg: &MeshConfig,
) -> Result<StaticRec, ModelError> {
    let spec: StaticSpec = serde_json::from_value(spec.clone())?;
    let mut ports = BTreeMap::new();
    for p in spec.ports {
        let mut endpoints = Vec::with_capacity(p.endpoints.len());
        for ep in p.endpoints {
            let addr: SocketAddr = ep.address.parse().map_err(|_| {
                invalid("StaticEndpoints address", format!("{:?} is not IP:PORT ([IPv6]:PORT)", ep.address))
            })?;
            let identity = match (ep.identity, ep.service_account) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "StaticEndpoints endpoint",
                        "set identity or serviceAccount, not both",
                    ))
                }
                (Some(id), None) => Some(id),
                (None, Some(sa)) => Some(
                    IdentityName::new(&sa, &key.namespace, &cfg.control_plane_namespace, &cfg.trust_domain)
                        .map_err(|e| invalid("StaticEndpoints serviceAccount", e.to_string()))?
                        .dns_name()
                        .to_owned(),
                ),
                (None, None) => None,
            };
            endpoints.push(StaticEndpoint { addr, identity, weight: ep.weight.unwrap_or(DEFAULT_WEIGHT) });
        }
        ports.insert(p.port, endpoints);
    }
    let opaque_ports = spec.opaque_ports.map(|v| PortSet::parse(&v, "opaquePorts", &key)).unwrap_or_default();
    Ok(StaticRec { key, ports, opaque_ports })
}

/// Any record the index holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(ServiceRec),
    EndpointSlice(SliceRec),
    Pod(PodRec),
    TrafficSplit(SplitRec),
    ServiceProfile(ProfileRec),
    StaticEndpoints(StaticRec),
    Server(policy::ServerRec),
    AuthorizationPolicy(policy::AuthorizationPolicyRec),
    MeshTLSAuthentication(policy::MeshTlsAuthenticationRec),
    NetworkAuthentication(policy::NetworkAuthenticationRec),
    HTTPLocalRateLimitPolicy(policy::RateLimitRec),
    Namespace(NamespaceRec),
    HTTPRoute(route::HttpRouteRec),
    GatewayHTTPRoute(route::HttpRouteRec),
    GRPCRoute(route::GrpcRouteRec),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::TrafficSplit(_) => Kind::TrafficSplit,
            Object::ServiceProfile(_) => Kind::ServiceProfile,
            Object::StaticEndpoints(_) => Kind::StaticEndpoints,
            Object::Server(_) => Kind::Server,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::MeshTLSAuthentication(_) => Kind::MeshTLSAuthentication,
            Object::NetworkAuthentication(_) => Kind::NetworkAuthentication,
            Object::HTTPLocalRateLimitPolicy(_) => Kind::HTTPLocalRateLimitPolicy,
            Object::Namespace(_) => Kind::Namespace,
            Object::HTTPRoute(_) => Kind::HTTPRoute,
            Object::GatewayHTTPRoute(_) => Kind::GatewayHTTPRoute,
            Object::GRPCRoute(_) => Kind::GRPCRoute,
        }
    }

    pub fn key(&self) -> &ObjKey {
        match self {
            Object::Service(r) => &r.key,
            Object::EndpointSlice(r) => &r.key,
            Object::Pod(r) => &r.key,
            Object::TrafficSplit(r) => &r.key,
            Object::ServiceProfile(r) => &r.key,
            Object::StaticEndpoints(r) => &r.key,
            Object::Server(r) => &r.key,
            Object::AuthorizationPolicy(r) => &r.key,
            Object::MeshTLSAuthentication(r) => &r.key,
            Object::NetworkAuthentication(r) => &r.key,
            Object::HTTPLocalRateLimitPolicy(r) => &r.key,
            Object::Namespace(r) => &r.key,
            Object::HTTPRoute(r) | Object::GatewayHTTPRoute(r) => &r.key,
            Object::GRPCRoute(r) => &r.key,
        }
    }
}

/// Converts any supported manifest (as JSON) into a record: the one entry
/// point shared by the file backend and tests. `Ok(None)` means "a kind we do
/// not index" (Deployments next to Services in the same file, say).
pub fn from_manifest(doc: &serde_json::Value, cfg: &MeshConfig) -> Result<Option<Object>, ModelError> {
    let api_version = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
    let kind = doc.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let crd_key = || -> Result<ObjKey, ModelError> {
        let meta = doc.get("metadata").ok_or(ModelError::MissingName)?;
        let name = meta.get("name").and_then(|v| v.as_str()).ok_or(ModelError::MissingName)?;
        let ns = meta.get("namespace").and_then(|v| v.as_str()).unwrap_or("default");
        Ok(ObjKey::new(ns, name))
    };
    let spec = || doc.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    let meta = || doc.get("metadata").cloned().unwrap_or(serde_json::Value::Null);
    Ok(Some(match (api_version, group, kind) {
        ("v1", _, "Service") => Object::Service(service(&serde_json::from_value(doc.clone())?)?),
        ("v1", _, "Pod") => Object::Pod(pod(&serde_json::from_value(doc.clone())?, cfg)?),
        ("v1", _, "Namespace") => Object::Namespace(namespace(&serde_json::from_value(doc.clone())?)?),
        ("discovery.k8s.io/v1", _, "EndpointSlice") => {
            match endpoint_slice(&serde_json::from_value(doc.clone())?)? {
                Some(rec) => Object::EndpointSlice(rec),
                None => return Ok(None),
            }
        }
        (_, "split.smi-spec.io", "TrafficSplit") => Object::TrafficSplit(traffic_split(crd_key()?, &spec())?),
        (_, "linkerd.io", "ServiceProfile") => Object::ServiceProfile(service_profile(crd_key()?, &spec())?),
        (_, "weft.io", "StaticEndpoints") => {
            Object::StaticEndpoints(static_endpoints(crd_key()?, &spec(), cfg)?)
        }
        (_, "policy.linkerd.io", _) => match policy_kind(kind) {
            Some(kind) => policy_object(kind, crd_key()?, &meta(), &spec(), cfg)?,
            None => return Ok(None),
        },
        (_, route::GATEWAY_GROUP, "HTTPRoute") => {
            policy_object(Kind::GatewayHTTPRoute, crd_key()?, &meta(), &spec(), cfg)?
        }
        (_, route::GATEWAY_GROUP, "GRPCRoute") => {
            policy_object(Kind::GRPCRoute, crd_key()?, &meta(), &spec(), cfg)?
        }
        ("", _, _) | (_, _, "") => return Err(invalid("manifest", "missing apiVersion or kind")),
        _ => return Ok(None),
    }))
}

/// The indexed kind of a `policy.linkerd.io` kind name; `None` for the
/// kinds weft does not index yet (ServerAuthorization, EgressNetwork, ...).
pub fn policy_kind(kind: &str) -> Option<Kind> {
    Some(match kind {
        "Server" => Kind::Server,
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        "MeshTLSAuthentication" => Kind::MeshTLSAuthentication,
        "NetworkAuthentication" => Kind::NetworkAuthentication,
        "HTTPLocalRateLimitPolicy" => Kind::HTTPLocalRateLimitPolicy,
        "HTTPRoute" => Kind::HTTPRoute,
        _ => return None,
    })
}

/// A policy or route object of `kind` (its `metadata` and `spec`), from a
/// watch or a file.
pub fn policy_object(
    kind: Kind,
    key: ObjKey,
    meta: &serde_json::Value,
    spec: &serde_json::Value,
    cfg: &MeshConfig,
) -> Result<Object, ModelError> {
    Ok(match kind {
        Kind::Server => Object::Server(policy::server(key, spec)?),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(policy::authorization_policy(key, spec)?),
        Kind::MeshTLSAuthentication => {
            Object::MeshTLSAuthentication(policy::meshtls_authentication(key, spec, cfg)?)
        }
        Kind::NetworkAuthentication => {
            Object::NetworkAuthentication(policy::network_authentication(key, spec)?)
        }
        Kind::HTTPLocalRateLimitPolicy => {
            Object::HTTPLocalRateLimitPolicy(policy::http_local_rate_limit(key, spec)?)
        }
        Kind::HTTPRoute => Object::HTTPRoute(route::http_route(route::POLICY_GROUP, key, meta, spec)?),
        Kind::GatewayHTTPRoute => {
            Object::GatewayHTTPRoute(route::http_route(route::GATEWAY_GROUP, key, meta, spec)?)
        }
        Kind::GRPCRoute => Object::GRPCRoute(route::grpc_route(key, meta, spec)?),
        other => return Err(invalid("policy object", format!("{} is not a policy kind", other.as_str()))),
    })
}

// === Namespace ===

/// What inbound policy needs of a Namespace: its default inbound policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRec {
    /// [`namespace_key`] of the namespace.
    pub key: ObjKey,
    pub default_inbound_policy: Option<crate::policy::AccessPolicy>,
}

/// Namespaces are cluster-scoped: keyed by name with an empty namespace.
pub fn namespace_key(name: &str) -> ObjKey {
    ObjKey::new("", name)
}

pub fn namespace(ns: &core::Namespace) -> Result<NamespaceRec, ModelError> {
    let name = ns.metadata.name.clone().ok_or(ModelError::MissingName)?;
    let key = namespace_key(&name);
    let default_inbound_policy = default_policy_annotation(ns.metadata.annotations.as_ref(), &key);
    Ok(NamespaceRec { key, default_inbound_policy })
}

fn default_policy_annotation(
    annotations: Option<&BTreeMap<String, String>>,
    owner: &ObjKey,
) -> Option<crate::policy::AccessPolicy> {
    let (annotation, value) =
        DEFAULT_INBOUND_POLICY_ANNOTATIONS.iter().find_map(|k| annotations?.get(*k).map(|v| (*k, v)))?;
    let policy = crate::policy::AccessPolicy::parse(value.trim());
    if policy.is_none() {
        warn!(object = %owner, annotation, value = %value, "ignoring an unknown default inbound policy");
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("1x").is_err());
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_milli(&serde_json::json!(900)), Some(900_000));
        assert_eq!(quantity_milli(&serde_json::json!("500m")), Some(500));
        assert_eq!(quantity_milli(&serde_json::json!("1")), Some(1000));
        assert_eq!(quantity_milli(&serde_json::json!("-1")), None);
        assert_eq!(dst_weight(1000), 10_000);
    }

    #[test]
    fn port_sets() {
        let p = PortSet::parse("3306, 8000-8100,bad,9-1", "opaquePorts", &"test");
        assert!(p.contains(3306) && p.contains(8050) && !p.contains(9) && !p.contains(80));
    }

    /// The warning for a bad entry names the annotation it came from.
    #[test]
    fn invalid_port_entries_are_reported_under_their_annotation() {
        #[derive(Clone, Default)]
        struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let writer = log.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let annotations =
            BTreeMap::from([("config.weft.io/skip-inbound-ports".to_string(), "22,ssh".to_string())]);
        let skipped = tracing::subscriber::with_default(subscriber, || {
            PortSet::from_annotation(Some(&annotations), &SKIP_INBOUND_PORTS_ANNOTATIONS, &"emojivoto/web-0")
        });
        assert!(skipped.contains(22) && !skipped.contains(23));
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("invalid port entry in config.weft.io/skip-inbound-ports"), "{text}");
        assert!(text.contains("ssh") && !text.contains("opaque"), "{text}");
    }

    /// A pod of the fixtures with its `weft-proxy` container renamed as
    /// Linkerd names its own: still meshed, same identity; without any proxy
    /// container it is not.
    #[test]
    fn linkerd_proxy_pods_are_meshed() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/kubernetes/pods-emojivoto.list.json");
        let list: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
        let item = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|p| p["metadata"]["name"] == "voting-0")
            .expect("voting-0")
            .clone();
        let cfg = MeshConfig::default();
        let weft: core::Pod = serde_json::from_value(item.clone()).expect("pod");
        let weft = pod(&weft, &cfg).expect("valid pod");
        assert!(weft.meshed);

        let mut linkerd = item.clone();
        for c in linkerd["spec"]["containers"].as_array_mut().expect("containers") {
            if c["name"] == PROXY_CONTAINER {
                c["name"] = LINKERD_PROXY_CONTAINER.into();
            }
        }
        let linkerd: core::Pod = serde_json::from_value(linkerd).expect("pod");
        let linkerd = pod(&linkerd, &cfg).expect("valid pod");
        assert!(linkerd.meshed, "a linkerd-proxy pod must count as meshed");
        assert_eq!(linkerd.identity, weft.identity);
        assert!(linkerd.identity.is_some());

        let mut bare = item;
        bare["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .retain(|c| c["name"] != PROXY_CONTAINER);
        let bare: core::Pod = serde_json::from_value(bare).expect("pod");
        let bare = pod(&bare, &cfg).expect("valid pod");
        assert!(!bare.meshed && bare.identity.is_none());
    }

    #[test]
    fn invalid_regex_route_is_skipped() {
        let spec = serde_json::json!({
            "routes": [
                {"name": "bad", "condition": {"pathRegex": "/api/(unclosed"}},
                {"name": "good", "condition": {"method": "GET", "pathRegex": "/api/list"}, "timeout": "300ms",
                 "isRetryable": true}
            ]
        });
        let rec = service_profile(ObjKey::new("ns", "svc.ns.svc.cluster.local"), &spec).unwrap();
        assert_eq!(rec.routes.len(), 1);
        assert_eq!(rec.routes[0].metrics_labels["route"], "good");
        assert!(rec.routes[0].is_retryable);
        assert_eq!(rec.routes[0].timeout, Some(proto_duration(Duration::from_millis(300))));
        assert!(matches!(
            rec.routes[0].condition.as_ref().and_then(|c| c.r#match.as_ref()),
            Some(pb::request_match::Match::All(seq)) if seq.matches.len() == 2
        ));
    }
}
