//! Linkerd's `io.linkerd.proxy.inbound.InboundServerPolicies` API: a pod's
//! inbound policy for one port ([`crate::inbound`]) as the proto `Server`,
//! built as Linkerd's policy controller builds it, so Linkerd's proxy and
//! weft's read the same answer.
//!
//! `WatchPort` streams run like the Destination streams
//! ([`crate::server`]): one task per stream, recomputing on every index
//! change and sending only a `Server` that differs from the last one sent.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use linkerd2_proxy_api::{
    grpc_route,
    inbound::{
        self as pb, authn, http_local_rate_limit as rl,
        inbound_server_policies_server::{InboundServerPolicies, InboundServerPoliciesServer},
        proxy_protocol,
    },
    meta, net,
};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info_span, warn, Instrument};

use crate::{
    inbound::{self, Authentication, Authorization, InboundPolicy},
    index::{Index, State},
    model::ObjKey,
    policy::{AccessPolicy, Cidr, IdentityMatch, ProxyProtocol},
    route::{self, Filter},
    server::{run, STREAM_BUFFER},
    MeshConfig,
};

const POLICY_GROUP: &str = "policy.linkerd.io";
/// Linkerd's protocol detection timeout for `unknown` ports.
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for the backend's first complete load.
const SYNC_WAIT: Duration = Duration::from_secs(30);
/// Linkerd's default `clusterNetworks`.
pub const DEFAULT_CLUSTER_NETWORKS: &str = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// What the flags say about inbound policy.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// Applies where no Server covers a port and neither the pod nor its
    /// Namespace names a default.
    pub default_policy: AccessPolicy,
    /// The networks of the `cluster-*` policies.
    pub cluster_networks: Vec<Cidr>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default_policy: AccessPolicy::AllUnauthenticated,
            cluster_networks: parse_networks(DEFAULT_CLUSTER_NETWORKS).unwrap_or_default(),
        }
    }
}

/// `--default-inbound-policy`.
pub fn parse_access_policy(s: &str) -> Result<AccessPolicy, String> {
    AccessPolicy::parse(s.trim()).ok_or_else(|| {
        format!(
            "{s:?} is not one of all-unauthenticated, all-authenticated, cluster-unauthenticated, \
             cluster-authenticated, deny, audit"
        )
    })
}

/// `--cluster-networks`: comma-separated CIDRs, at least one (with none,
/// the `cluster-*` policies would quietly allow nobody).
pub fn parse_networks(s: &str) -> Result<Vec<Cidr>, String> {
    let nets = s
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| Cidr::parse(n).ok_or_else(|| format!("{n:?} is not a CIDR")))
        .collect::<Result<Vec<_>, _>>()?;
    if nets.is_empty() {
        return Err("no CIDR given".into());
    }
    Ok(nets)
}

// === Workloads ===

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    #[error("workload is empty (want {{\"ns\":\"NAMESPACE\",\"pod\":\"NAME\"}} or NAMESPACE:NAME)")]
    Empty,
    #[error("workload {0:?} is not valid JSON of the form {{\"ns\":\"NAMESPACE\",\"pod\":\"NAME\"}}: {1}")]
    Json(String, String),
    #[error("workload {0:?} names an external workload; only pods are supported")]
    External(String),
    #[error("workload {0:?} is neither JSON nor NAMESPACE:NAME")]
    Format(String),
    #[error("workload {0:?}: {1:?} is not a valid Kubernetes name")]
    Name(String, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadJson {
    ns: String,
    pod: Option<String>,
    external_workload: Option<String>,
}

/// At most 64 characters of a client's string, for errors and logs: the
/// error travels back in the `grpc-message` header, and a 100 kB workload
/// echoed there made the client's HTTP/2 stack drop the connection.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// Linkerd's `{"ns":"emojivoto","pod":"web-0"}`, or the older `emojivoto:web-0`.
pub fn parse_workload(workload: &str) -> Result<ObjKey, WorkloadError> {
    // A namespace (63) and a pod name (253) in JSON fit well within this.
    const MAX_LEN: usize = 1024;
    let s = workload.trim();
    if s.is_empty() {
        return Err(WorkloadError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(WorkloadError::Format(shown(s)));
    }
    let (ns, pod) = if s.starts_with('{') {
        let w: WorkloadJson =
            serde_json::from_str(s).map_err(|e| WorkloadError::Json(shown(s), e.to_string()))?;
        match (w.pod, w.external_workload) {
            (Some(pod), None) => (w.ns, pod),
            (None, Some(_)) => return Err(WorkloadError::External(shown(s))),
            _ => {
                return Err(WorkloadError::Json(shown(s), "exactly one of pod and external_workload".into()))
            }
        }
    } else {
        match s.split_once(':') {
            Some((ns, pod)) => (ns.to_owned(), pod.to_owned()),
            None => return Err(WorkloadError::Format(shown(s))),
        }
    };
    for name in [&ns, &pod] {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok {
            return Err(WorkloadError::Name(shown(s), shown(name)));
        }
    }
    Ok(ObjKey::new(ns, pod))
}

// === Conversion ===

fn labels(group: &str, kind: &str, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("group".to_owned(), group.to_owned()),
        ("kind".to_owned(), kind.to_owned()),
        ("name".to_owned(), name.to_owned()),
    ])
}

fn default_meta(name: &str) -> meta::Metadata {
    meta::Metadata { kind: Some(meta::metadata::Kind::Default(name.to_owned())) }
}

fn resource_meta(group: &str, kind: &str, key: &ObjKey) -> meta::Metadata {
    meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            ..Default::default()
        })),
    }
}

/// `10.1.2.3/8` as `10.0.0.0/8`: the network, not an address in it, which
/// is what a proxy comparing networks expects.
fn masked(c: &Cidr) -> IpAddr {
    match c.addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(c.prefix.min(32))).unwrap_or(0);
            IpAddr::from((u32::from(v4) & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(c.prefix.min(128))).unwrap_or(0);
            IpAddr::from((u128::from(v6) & mask).to_be_bytes())
        }
    }
}

fn network(cidr: &Cidr, except: &[Cidr]) -> pb::Network {
    let net = |c: &Cidr| net::IpNetwork { ip: Some(masked(c).into()), prefix_len: u32::from(c.prefix) };
    pb::Network { net: Some(net(cidr)), except: except.iter().map(net).collect() }
}

fn all_networks() -> Vec<pb::Network> {
    let any = |addr: IpAddr| Cidr { addr, prefix: 0 };
    vec![network(&any(IpAddr::from([0u8; 4])), &[]), network(&any(IpAddr::from([0u16; 8])), &[])]
}

fn unauthenticated() -> pb::Authn {
    pb::Authn { permit: Some(authn::Permit::Unauthenticated(authn::PermitUnauthenticated {})) }
}

fn mesh_tls(identities: Vec<pb::Identity>, suffixes: Vec<pb::IdentitySuffix>) -> pb::Authn {
    use authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    pb::Authn {
        permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(Clients::Identities(PermitClientIdentities { identities, suffixes })),
        })),
    }
}

/// The authorization a default or access policy stands for; `None` for
/// `deny`.
fn policy_authz(policy: AccessPolicy, cluster: &[Cidr]) -> Option<pb::Authz> {
    let cluster = || cluster.iter().map(|c| network(c, &[])).collect::<Vec<_>>();
    let any_identity = || mesh_tls(Vec::new(), vec![pb::IdentitySuffix { parts: Vec::new() }]);
    let (networks, authn) = match policy {
        AccessPolicy::Deny => return None,
        AccessPolicy::AllUnauthenticated | AccessPolicy::Audit => (all_networks(), unauthenticated()),
        AccessPolicy::ClusterUnauthenticated => (cluster(), unauthenticated()),
        AccessPolicy::AllAuthenticated => (all_networks(), any_identity()),
        AccessPolicy::ClusterAuthenticated => (cluster(), any_identity()),
    };
    let name = policy.as_str();
    Some(pb::Authz {
        networks,
        authentication: Some(authn),
        labels: labels("", "default", name),
        metadata: Some(default_meta(name)),
    })
}

/// An AuthorizationPolicy as one `Authz`. Its authentications must all hold:
/// networks come from its NetworkAuthentication ([`inbound`] refuses
/// policies with several) and identities from its MeshTLSAuthentications and
/// ServiceAccounts, any of which is accepted (as Linkerd does).
fn authorization_authz(a: &Authorization) -> pb::Authz {
    let mut networks: Option<Vec<pb::Network>> = None;
    let mut identities = Vec::new();
    let mut suffixes = Vec::new();
    let mut mesh = false;
    for required in &a.required {
        match required {
            Authentication::Network(nets) => {
                networks = Some(nets.iter().map(|n| network(&n.cidr, &n.except)).collect());
            }
            Authentication::MeshTls(ids) => {
                mesh = true;
                for id in ids {
                    match id {
                        IdentityMatch::Any => suffixes.push(pb::IdentitySuffix { parts: Vec::new() }),
                        IdentityMatch::Suffix(s) => suffixes
                            .push(pb::IdentitySuffix { parts: s.split('.').map(str::to_owned).collect() }),
                        IdentityMatch::Exact(name) => identities.push(pb::Identity { name: name.clone() }),
                    }
                }
            }
        }
    }
    let authn = if mesh { mesh_tls(identities, suffixes) } else { unauthenticated() };
    pb::Authz {
        networks: networks.unwrap_or_else(all_networks),
        authentication: Some(authn),
        // Lower case as Linkerd's policy controller sends it: proxies put it
        // in the `authz_kind` label of their metrics, which dashboards match.
        labels: labels(POLICY_GROUP, "authorizationpolicy", &a.policy.name),
        metadata: Some(resource_meta(POLICY_GROUP, "authorizationpolicy", &a.policy)),
    }
}

fn default_route(authorizations: Vec<pb::Authz>) -> pb::HttpRoute {
    let all = route::RouteMatch {
        path: Some(route::PathMatch::Prefix("/".into())),
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    };
    pb::HttpRoute {
        metadata: Some(default_meta("default")),
        hosts: Vec::new(),
        authorizations,
        rules: vec![pb::http_route::Rule { matches: vec![route::proto_match(&all)], filters: Vec::new() }],
    }
}

/// The kubelet's probes: GET on each exact path, from anyone.
fn probe_route(paths: &[String]) -> pb::HttpRoute {
    let matches = paths
        .iter()
        .map(|p| {
            route::proto_match(&route::RouteMatch {
                path: Some(route::PathMatch::Exact(p.clone())),
                headers: Vec::new(),
                query_params: Vec::new(),
                method: Some("GET".into()),
            })
        })
        .collect();
    pb::HttpRoute {
        metadata: Some(default_meta("probe")),
        hosts: Vec::new(),
        authorizations: vec![pb::Authz {
            networks: all_networks(),
            authentication: Some(unauthenticated()),
            labels: labels("", "default", "probe"),
            metadata: Some(default_meta("probe")),
        }],
        rules: vec![pb::http_route::Rule { matches, filters: Vec::new() }],
    }
}

fn http_route(r: &inbound::InboundRoute) -> pb::HttpRoute {
    use pb::http_route::{filter::Kind, Filter as PbFilter, Rule};
    let rules = r
        .route
        .rules
        .iter()
        .map(|rule| Rule {
            matches: rule.matches.iter().map(route::proto_match).collect(),
            filters: rule
                .filters
                .iter()
                .filter_map(|f| match f {
                    Filter::RequestHeaderModifier(m) => {
                        Some(Kind::RequestHeaderModifier(route::proto_header_modifier(m)))
                    }
                    Filter::RequestRedirect(red) => Some(Kind::Redirect(route::proto_redirect(red))),
                    // The inbound proto has no place for them.
                    Filter::ResponseHeaderModifier(_) | Filter::Unsupported(_) => None,
                })
                .map(|kind| PbFilter { kind: Some(kind) })
                .collect(),
        })
        .collect();
    pb::HttpRoute {
        metadata: Some(resource_meta(&r.route.group, "HTTPRoute", &r.route.key)),
        hosts: route::proto_hosts(&r.route.hostnames),
        authorizations: r.authorizations.iter().map(authorization_authz).collect(),
        rules,
    }
}

fn rate_limit(rl: &crate::policy::RateLimitRec, cfg: &MeshConfig) -> pb::HttpLocalRateLimit {
    let limit = |rps: u32| rl::Limit { requests_per_second: rps };
    pb::HttpLocalRateLimit {
        metadata: Some(resource_meta(POLICY_GROUP, "HTTPLocalRateLimitPolicy", &rl.key)),
        total: rl.total.map(limit),
        identity: rl.identity.map(limit),
        overrides: rl
            .overrides
            .iter()
            .map(|o| rl::Override {
                limit: Some(limit(o.requests_per_second)),
                clients: Some(rl::r#override::ClientIdentities {
                    identities: o
                        .clients
                        .iter()
                        .filter_map(|sa| {
                            weft_tls::name::IdentityName::new(
                                &sa.name,
                                &sa.namespace,
                                &cfg.control_plane_namespace,
                                &cfg.trust_domain,
                            )
                            .map(|n| pb::Identity { name: n.dns_name().to_owned() })
                            .ok()
                        })
                        .collect(),
                }),
            })
            .collect(),
    }
}

/// `policy` as Linkerd's `Server` message.
pub fn server_proto(policy: &InboundPolicy, cfg: &MeshConfig, cluster_networks: &[Cidr]) -> pb::Server {
    let mut authorizations: Vec<pb::Authz> = policy.authorizations.iter().map(authorization_authz).collect();
    authorizations.extend(policy_authz(policy.access, cluster_networks));
    let server_labels = match &policy.server {
        Some(key) => labels(POLICY_GROUP, "server", &key.name),
        None => labels("", "default", policy.access.as_str()),
    };
    let http_routes = || {
        if policy.server.is_some() && !policy.routes.is_empty() {
            return policy.routes.iter().map(http_route).collect();
        }
        let mut routes = vec![default_route(authorizations.clone())];
        if !policy.probe_paths.is_empty() {
            routes.push(probe_route(&policy.probe_paths));
        }
        routes
    };
    let limit = || policy.rate_limit.as_ref().map(|rl| rate_limit(rl, cfg));
    let kind = match policy.protocol {
        ProxyProtocol::Unknown => proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: Some(crate::model::proto_duration(DETECT_TIMEOUT)),
            http_routes: http_routes(),
            http_local_rate_limit: limit(),
        }),
        ProxyProtocol::Http1 => proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
            routes: http_routes(),
            local_rate_limit: limit(),
        }),
        ProxyProtocol::Http2 => proxy_protocol::Kind::Http2(proxy_protocol::Http2 {
            routes: http_routes(),
            local_rate_limit: limit(),
        }),
        // GRPCRoutes are not served inbound yet: one route matching every
        // call, under the server-level authorizations.
        ProxyProtocol::Grpc => proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
            routes: vec![pb::GrpcRoute {
                metadata: Some(default_meta("default")),
                hosts: Vec::new(),
                authorizations: authorizations.clone(),
                rules: vec![pb::grpc_route::Rule {
                    matches: vec![grpc_route::GrpcRouteMatch::default()],
                    filters: Vec::new(),
                }],
            }],
        }),
        ProxyProtocol::Opaque => proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {}),
        ProxyProtocol::Tls => proxy_protocol::Kind::Tls(proxy_protocol::Tls {}),
    };
    pb::Server {
        protocol: Some(pb::ProxyProtocol { kind: Some(kind) }),
        server_ips: Vec::new(),
        authorizations,
        labels: server_labels,
    }
}

/// A port's `Server`, and the policies that apply to it but authorize
/// nobody (a missing authentication, ...), for the log.
#[derive(Clone, Debug)]
pub struct Answer {
    pub server: pb::Server,
    pub unresolved: Vec<(ObjKey, String)>,
}

impl Answer {
    fn report(&self) {
        for (policy, reason) in &self.unresolved {
            warn!(%policy, %reason, "AuthorizationPolicy authorizes nobody");
        }
    }
}

/// The answer for `pod`'s `port`, or `None` while the pod is not indexed.
pub fn answer(
    state: &State,
    cfg: &MeshConfig,
    policy: &PolicyConfig,
    pod: &ObjKey,
    port: u16,
) -> Option<Answer> {
    let pod = state.pods.get(pod)?;
    let p = inbound::inbound_policy(state, cfg, pod, port, policy.default_policy);
    let mut unresolved = p.unresolved.clone();
    unresolved.extend(p.routes.iter().flat_map(|r| r.unresolved.iter().cloned()));
    Some(Answer { server: server_proto(&p, cfg, &policy.cluster_networks), unresolved })
}

/// The `Server` for `pod`'s `port`, or `None` while the pod is not indexed.
pub fn lookup(
    state: &State,
    cfg: &MeshConfig,
    policy: &PolicyConfig,
    pod: &ObjKey,
    port: u16,
) -> Option<pb::Server> {
    answer(state, cfg, policy, pod, port).map(|a| a.server)
}

// === The service ===

#[derive(Clone)]
pub struct PolicyService {
    index: Index,
    cfg: Arc<MeshConfig>,
    policy: Arc<PolicyConfig>,
    shutdown: watch::Receiver<bool>,
}

impl PolicyService {
    /// `shutdown` flipping to `true` ends every open `WatchPort` stream.
    pub fn new(index: Index, cfg: MeshConfig, policy: PolicyConfig, shutdown: watch::Receiver<bool>) -> Self {
        Self { index, cfg: Arc::new(cfg), policy: Arc::new(policy), shutdown }
    }

    pub fn into_server(self) -> InboundServerPoliciesServer<Self> {
        InboundServerPoliciesServer::new(self)
    }

    fn spec(req: &pb::PortSpec) -> Result<(ObjKey, u16), Status> {
        let pod = parse_workload(&req.workload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let port = u16::try_from(req.port).ok().filter(|p| *p != 0).ok_or_else(|| {
            Status::invalid_argument(format!("port {} is not a TCP port (1-65535)", req.port))
        })?;
        Ok((pod, port))
    }

    /// Waits for the backend's first load, then looks the pod up: an
    /// answer from a half-loaded index would wrongly say NotFound.
    async fn first(&self, pod: &ObjKey, port: u16) -> Result<Answer, Status> {
        let mut rx = self.index.subscribe();
        match tokio::time::timeout(SYNC_WAIT, rx.wait_for(|s| s.synced)).await {
            Ok(Ok(_)) => {}
            _ => return Err(Status::unavailable("the index has not loaded yet; retry")),
        }
        let state = rx.borrow();
        let answer = answer(&state, &self.cfg, &self.policy, pod, port)
            .ok_or_else(|| Status::not_found(format!("pod {pod} not found")))?;
        answer.report();
        Ok(answer)
    }
}

#[tonic::async_trait]
impl InboundServerPolicies for PolicyService {
    type WatchPortStream = ReceiverStream<Result<pb::Server, Status>>;

    async fn get_port(&self, req: Request<pb::PortSpec>) -> Result<Response<pb::Server>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span =
            info_span!("get_port", workload = %shown(&req.workload), port = req.port, client = ?remote);
        async {
            let (pod, port) = Self::spec(&req)?;
            self.first(&pod, port).await.map(|a| Response::new(a.server))
        }
        .instrument(span)
        .await
    }

    async fn watch_port(
        &self,
        req: Request<pb::PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span =
            info_span!("watch_port", workload = %shown(&req.workload), port = req.port, client = ?remote);
        let (pod, port) = span.in_scope(|| Self::spec(&req))?;
        // Like Linkerd: a pod unknown at the start is NotFound (the proxy
        // keeps its default policy and retries). A pod deleted while watched
        // keeps its stream, silent, until it exists again.
        let first = self.first(&pod, port).instrument(span.clone()).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (cfg, policy) = (self.cfg.clone(), self.policy.clone());
        // Seeded with what `first` reported, so its warnings are not
        // repeated: they are logged again only when they change.
        let last = std::sync::Mutex::new((first, false));
        tokio::spawn(
            run(
                "watch_port",
                self.index.subscribe(),
                self.shutdown.clone(),
                tx,
                move |state| answer(state, &cfg, &policy, &pod, port),
                move |_, next: &Option<Answer>| {
                    let Some(next) = next else { return Vec::new() };
                    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                    let (prev, sent_any) = &mut *last;
                    if prev.unresolved != next.unresolved {
                        next.report();
                    }
                    let changed = prev.server != next.server;
                    *prev = next.clone();
                    if !changed && *sent_any {
                        return Vec::new();
                    }
                    debug!("sending the port's policy");
                    *sent_any = true;
                    vec![next.server.clone()]
                },
                true,
            )
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    const FIXTURES: [&str; 8] = [
        "servers.policy.linkerd.io-emojivoto.list.json",
        "authorizationpolicies.policy.linkerd.io-emojivoto.list.json",
        "meshtlsauthentications.policy.linkerd.io-emojivoto.list.json",
        "networkauthentications.policy.linkerd.io-emojivoto.list.json",
        "httplocalratelimitpolicies.policy.linkerd.io-emojivoto.list.json",
        "httproutes.policy.linkerd.io-emojivoto.list.json",
        "pods-emojivoto.list.json",
        "namespaces.list.json",
    ];

    /// The fixtures but `skip`, plus `extra` manifests.
    fn index(skip: &[&str], extra: &str) -> Index {
        let names: Vec<&str> = FIXTURES.iter().copied().filter(|n| !skip.contains(n)).collect();
        crate::fixtures::index(&names, &[extra])
    }

    fn server(index: &Index, pod: &str, port: u16, default_policy: AccessPolicy) -> pb::Server {
        let policy = PolicyConfig { default_policy, ..Default::default() };
        let state = index.subscribe();
        let state = state.borrow();
        lookup(&state, &MeshConfig::default(), &policy, &ObjKey::new("emojivoto", pod), port)
            .expect("pod indexed")
    }

    fn net(cidr: &str) -> net::IpNetwork {
        let c = Cidr::parse(cidr).expect("cidr");
        net::IpNetwork { ip: Some(c.addr.into()), prefix_len: u32::from(c.prefix) }
    }

    fn nets(a: &pb::Authz) -> Vec<(net::IpNetwork, Vec<net::IpNetwork>)> {
        a.networks.iter().map(|n| (n.net.expect("net"), n.except.clone())).collect()
    }

    fn name(m: &Option<meta::Metadata>) -> String {
        match m.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(meta::metadata::Kind::Default(d)) => format!("default:{d}"),
            Some(meta::metadata::Kind::Resource(r)) => {
                format!("{}:{}:{}/{}", r.group, r.kind, r.namespace, r.name)
            }
            None => "none".into(),
        }
    }

    fn http1(s: &pb::Server) -> &proxy_protocol::Http1 {
        match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(proxy_protocol::Kind::Http1(h)) => h,
            other => panic!("not HTTP/1: {other:?}"),
        }
    }

    fn detect(s: &pb::Server) -> &proxy_protocol::Detect {
        match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(proxy_protocol::Kind::Detect(d)) => d,
            other => panic!("not Detect: {other:?}"),
        }
    }

    fn all_nets() -> Vec<(net::IpNetwork, Vec<net::IpNetwork>)> {
        vec![(net("0.0.0.0/0"), vec![]), (net("::/0"), vec![])]
    }

    #[test]
    fn a_server_with_a_route_its_authorizations_and_rate_limit() {
        let index = index(&[], "");
        let s = server(&index, "web-v1-0", 8080, AccessPolicy::AllUnauthenticated);
        assert_eq!(s.labels, labels("policy.linkerd.io", "server", "web-http"));
        // Server-level: the Namespace's NetworkAuthentication policy; the
        // Server's accessPolicy is deny, so nothing else.
        assert_eq!(s.authorizations.len(), 1, "{:?}", s.authorizations);
        let ns = &s.authorizations[0];
        assert_eq!(
            name(&ns.metadata),
            "policy.linkerd.io:authorizationpolicy:emojivoto/emojivoto-cluster-network"
        );
        assert_eq!(
            ns.labels,
            labels("policy.linkerd.io", "authorizationpolicy", "emojivoto-cluster-network")
        );
        assert_eq!(nets(ns), [(net("10.0.0.0/8"), vec![net("10.1.2.0/24")]), (net("::/0"), vec![])]);
        assert_eq!(ns.authentication, Some(unauthenticated()));

        let h = http1(&s);
        // The HTTPRoute replaces the default route; only its own policy
        // authorizes it (a mesh TLS suffix).
        assert_eq!(h.routes.len(), 1);
        let r = &h.routes[0];
        assert_eq!(name(&r.metadata), "policy.linkerd.io:HTTPRoute:emojivoto/web-api");
        assert_eq!(r.rules.len(), 2);
        assert_eq!(r.authorizations.len(), 1);
        assert_eq!(
            name(&r.authorizations[0].metadata),
            "policy.linkerd.io:authorizationpolicy:emojivoto/web-api"
        );
        assert_eq!(nets(&r.authorizations[0]), all_nets());
        assert_eq!(
            r.authorizations[0].authentication,
            Some(mesh_tls(
                vec![],
                vec![pb::IdentitySuffix {
                    parts: ["emojivoto", "serviceaccount", "identity", "linkerd", "cluster", "local"]
                        .map(String::from)
                        .to_vec()
                }]
            ))
        );

        // The rate limit, its override resolved to an identity name.
        let rl = h.local_rate_limit.as_ref().expect("rate limit");
        assert_eq!(name(&rl.metadata), "policy.linkerd.io:HTTPLocalRateLimitPolicy:emojivoto/web-rl");
        assert_eq!(rl.total.map(|l| l.requests_per_second), Some(100));
        assert_eq!(rl.identity.map(|l| l.requests_per_second), Some(20));
        assert_eq!(rl.overrides[0].limit.map(|l| l.requests_per_second), Some(50));
        assert_eq!(
            rl.overrides[0].clients.as_ref().expect("clients").identities,
            [pb::Identity { name: "web.emojivoto.serviceaccount.identity.weft.cluster.local".into() }]
        );
    }

    #[test]
    fn without_routes_a_server_gets_default_and_probe_routes() {
        let probed = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-probed, namespace: emojivoto, labels: {app: web}}
spec:
  containers:
  - name: web
    ports: [{name: http, containerPort: 8080}]
    livenessProbe: {httpGet: {path: /live, port: http}}
    readinessProbe: {httpGet: {path: /ready, port: 8080}}
    startupProbe: {httpGet: {path: /other-port, port: 9090}}
"#;
        let index = index(&["httproutes.policy.linkerd.io-emojivoto.list.json"], probed);
        let s = server(&index, "web-probed", 8080, AccessPolicy::AllUnauthenticated);
        let routes = &http1(&s).routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(name(&routes[0].metadata), "default:default");
        // The default route carries the server-level authorizations.
        assert_eq!(routes[0].authorizations, s.authorizations);
        let all = &routes[0].rules[0].matches[0];
        assert_eq!(
            all.path.as_ref().and_then(|p| p.kind.clone()),
            Some(linkerd2_proxy_api::http_route::path_match::Kind::Prefix("/".into()))
        );
        let probe = &routes[1];
        assert_eq!(name(&probe.metadata), "default:probe");
        let paths: Vec<_> = probe.rules[0]
            .matches
            .iter()
            .map(|m| (m.path.as_ref().and_then(|p| p.kind.clone()), m.method.clone()))
            .collect();
        use linkerd2_proxy_api::http_route::path_match::Kind::Exact;
        let get = Some(http::Method::GET.into());
        assert_eq!(paths, [(Some(Exact("/live".into())), get.clone()), (Some(Exact("/ready".into())), get)]);
        assert_eq!(name(&probe.authorizations[0].metadata), "default:probe");
        assert_eq!(nets(&probe.authorizations[0]), all_nets());
        assert_eq!(probe.authorizations[0].authentication, Some(unauthenticated()));
    }

    #[test]
    fn default_policies_as_authorizations() {
        let index = index(&[], "");
        let cluster: Vec<_> = DEFAULT_CLUSTER_NETWORKS.split(',').map(|c| (net(c), vec![])).collect();
        let any_id = mesh_tls(vec![], vec![pb::IdentitySuffix { parts: vec![] }]);
        for (policy, networks, authn) in [
            (AccessPolicy::AllUnauthenticated, all_nets(), unauthenticated()),
            (AccessPolicy::ClusterUnauthenticated, cluster.clone(), unauthenticated()),
            (AccessPolicy::AllAuthenticated, all_nets(), any_id.clone()),
            (AccessPolicy::ClusterAuthenticated, cluster.clone(), any_id.clone()),
            (AccessPolicy::Audit, all_nets(), unauthenticated()),
        ] {
            // web-v1-0's admin port is covered by no Server.
            let s = server(&index, "web-v1-0", 4191, policy);
            assert_eq!(s.labels, labels("", "default", policy.as_str()));
            assert_eq!(s.authorizations.len(), 1, "{policy:?}");
            let a = &s.authorizations[0];
            assert_eq!(name(&a.metadata), format!("default:{}", policy.as_str()));
            assert_eq!(a.labels, labels("", "default", policy.as_str()));
            assert_eq!((nets(a), a.authentication.clone()), (networks, Some(authn)), "{policy:?}");
            let d = detect(&s);
            assert_eq!(d.timeout, Some(crate::model::proto_duration(DETECT_TIMEOUT)));
            assert_eq!(d.http_routes[0].authorizations, s.authorizations);
        }
        let deny = server(&index, "web-v1-0", 4191, AccessPolicy::Deny);
        assert!(deny.authorizations.is_empty());
        assert!(detect(&deny).http_routes[0].authorizations.is_empty());
    }

    #[test]
    fn default_policy_precedence_and_opaque_ports() {
        let extra = r#"
apiVersion: v1
kind: Namespace
metadata: {name: emojivoto, annotations: {config.weft.io/default-inbound-policy: cluster-authenticated}}
---
apiVersion: v1
kind: Pod
metadata:
  name: own-default
  namespace: emojivoto
  annotations: {config.linkerd.io/default-inbound-policy: deny, config.weft.io/opaque-ports: "3306"}
spec: {containers: [{name: db}]}
"#;
        let idx = index(&["namespaces.list.json"], extra);
        // The Namespace's annotation beats the flag ...
        let s = server(&idx, "web-v1-0", 4191, AccessPolicy::AllUnauthenticated);
        assert_eq!(s.labels["name"], "cluster-authenticated");
        // ... and the pod's beats the Namespace's.
        let s = server(&idx, "own-default", 3306, AccessPolicy::AllUnauthenticated);
        assert_eq!(s.labels["name"], "deny");
        assert!(s.authorizations.is_empty());
        assert!(matches!(s.protocol.and_then(|p| p.kind), Some(proxy_protocol::Kind::Opaque(_))));
        // Without either annotation, the flag.
        let plain = index(&[], "");
        let s = server(&plain, "web-v1-0", 4191, AccessPolicy::Audit);
        assert_eq!(s.labels["name"], "audit");
    }

    #[test]
    fn grpc_servers_and_service_account_authentications() {
        // voting-grpc names port `grpc`; give voting a pod that names it so.
        let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: voting-grpc-0, namespace: emojivoto, labels: {app: voting}}
spec: {containers: [{name: voting, ports: [{name: grpc, containerPort: 8080}]}]}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: voting-from-sa, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: voting-grpc}
  requiredAuthenticationRefs:
  - {kind: ServiceAccount, name: vote-bot}
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: cluster-network}
"#;
        let index = index(&[], pod);
        let s = server(&index, "voting-grpc-0", 8080, AccessPolicy::AllUnauthenticated);
        let Some(proxy_protocol::Kind::Grpc(g)) = s.protocol.as_ref().and_then(|p| p.kind.clone()) else {
            panic!("not gRPC: {:?}", s.protocol)
        };
        assert_eq!(g.routes.len(), 1);
        assert_eq!(g.routes[0].authorizations, s.authorizations);
        let by_name: HashMap<_, _> = s.authorizations.iter().map(|a| (a.labels["name"].clone(), a)).collect();
        assert_eq!(s.authorizations.len(), 3, "{:?}", by_name.keys());
        let web_only = by_name["voting-grpc"];
        assert_eq!(
            web_only.authentication,
            Some(mesh_tls(
                vec![pb::Identity {
                    name: "web.emojivoto.serviceaccount.identity.weft.cluster.local".into()
                }],
                vec![]
            ))
        );
        assert_eq!(nets(web_only), all_nets());
        // A ServiceAccount and a network: both hold at once.
        let both = by_name["voting-from-sa"];
        assert_eq!(
            both.authentication,
            Some(mesh_tls(
                vec![pb::Identity {
                    name: "vote-bot.emojivoto.serviceaccount.identity.weft.cluster.local".into()
                }],
                vec![]
            ))
        );
        assert_eq!(nets(both)[0], (net("10.0.0.0/8"), vec![net("10.1.2.0/24")]));
    }

    #[test]
    fn gateway_routes_and_their_own_authorizations() {
        let extra = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-api, namespace: emojivoto}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: web-http}]
  hostnames: [web.example.com]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/v[0-9]+/.*"}, headers: [{name: x-env, value: prod}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-from, value: gw}]}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: gw-web-api, namespace: emojivoto}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: web-api}
  requiredAuthenticationRefs: [{kind: ServiceAccount, name: web}]
"#;
        let index = index(&[], extra);
        let s = server(&index, "web-v1-0", 8080, AccessPolicy::AllUnauthenticated);
        let routes = &http1(&s).routes;
        let names: Vec<_> = routes.iter().map(|r| name(&r.metadata)).collect();
        assert_eq!(
            names,
            [
                "policy.linkerd.io:HTTPRoute:emojivoto/web-api",
                "gateway.networking.k8s.io:HTTPRoute:emojivoto/web-api"
            ]
        );
        // Each route is authorized by the policies of its own group only.
        let authz =
            |r: &pb::HttpRoute| r.authorizations.iter().map(|a| a.labels["name"].clone()).collect::<Vec<_>>();
        assert_eq!(authz(&routes[0]), ["web-api"]);
        assert_eq!(authz(&routes[1]), ["gw-web-api"]);
        assert_eq!(routes[1].hosts, route::proto_hosts(&["web.example.com".into()]));
        assert_eq!(routes[1].rules[0].filters.len(), 1);
    }

    #[test]
    fn workloads() {
        assert_eq!(
            parse_workload(r#"{"ns":"emojivoto","pod":"web-0"}"#),
            Ok(ObjKey::new("emojivoto", "web-0"))
        );
        assert_eq!(parse_workload("emojivoto:web-0"), Ok(ObjKey::new("emojivoto", "web-0")));
        for bad in ["", "web-0", r#"{"ns":"a"}"#, r#"{"ns":"a","pod":"b","x":1}"#, "A:b", ":b", "{", "a:b:c"]
        {
            assert!(parse_workload(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_workload(r#"{"ns":"a","external_workload":"vm"}"#),
            Err(WorkloadError::External(_))
        ));
        assert_eq!(parse_networks("10.0.0.0/8, fd00::/8").map(|n| n.len()), Ok(2));
        assert!(parse_networks(" , ").is_err());
        let n = |c: &str| network(&Cidr::parse(c).unwrap(), &[]).net.unwrap();
        assert_eq!(n("10.1.2.3/8"), net("10.0.0.0/8"));
        assert_eq!(n("10.1.2.3"), net("10.1.2.3/32"));
        assert_eq!(n("fd00::1:2/8"), net("fd00::/8"));
        assert_eq!(n("1.2.3.4/0"), net("0.0.0.0/0"));
        assert!(parse_networks("10.0.0.0/8,nope").is_err());
        assert!(parse_access_policy("allow").is_err());
        // Long but valid names pass; a huge string is refused, and errors
        // quote only its start.
        let long = format!(r#"{{"ns":"{}","pod":"{}"}}"#, "n".repeat(63), "p".repeat(253));
        assert!(parse_workload(&long).is_ok());
        let err = parse_workload(&"x".repeat(100_000)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}
