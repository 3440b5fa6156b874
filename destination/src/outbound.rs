//! A Service port's outbound policy (`io.linkerd.proxy.outbound`), as a pure
//! function of the index, built as Linkerd's policy controller builds it so
//! Linkerd's proxy and weft's read the same answer.
//!
//! - protocol: `Opaque` for opaque ports (annotation, or an opaque or
//!   unknown `appProtocol`), `Http1`/`Http2`/`Grpc` from `appProtocol`,
//!   else `Detect` (10 s) with the same routes for HTTP/1 and HTTP/2;
//! - routes: the HTTPRoutes (both groups) and GRPCRoutes whose parentRefs
//!   name the Service (and port), oldest first, then by name (Gateway API
//!   precedence); none: one `Default{http}` route to the Service itself;
//! - backends: P2C over peak-EWMA fed by `Destination/Get`; a backendRef to a
//!   Service that does not exist fails its share of requests with a 500;
//! - Linkerd's retry, timeout and failure-accrual annotations;
//! - weft's extensions, which Linkerd's message has no field for, in its
//!   field 1000 ([`weft_api`]): each rule's RequestMirrors (a mirror to a
//!   Service that does not exist is dropped), URLRewrite, and hedging
//!   (`retry.weft.io/hedge-after`, route over Service like Linkerd's).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use linkerd2_proxy_api::{
    destination, grpc_route as grpc_proto, http_route as http_proto,
    meta::{self, metadata},
    outbound::{self as pb, backend, proxy_protocol},
};

use crate::{
    endpoints::{self, Hint},
    index::State,
    model::{parse_go_duration, proto_duration, ObjKey},
    route::{self, BackendRef, Filter, GrpcRouteRec, HttpRouteRec, RuleTimeouts},
    target::Target,
    MeshConfig,
};
use weft_api::{self as ext, OutboundPolicyWithExtensions};

const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
// Linkerd's queue and balancer defaults.
const QUEUE_CAPACITY: u32 = 100;
const QUEUE_FAILFAST: Duration = Duration::from_secs(3);
const EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);
const EWMA_DECAY: Duration = Duration::from_secs(10);
// Linkerd's retry defaults: one retry, bodies up to 64 KiB buffered.
const RETRY_LIMIT: u32 = 1;
const RETRY_MAX_REQUEST_BYTES: u32 = 64 * 1024;
const RETRY_MIN_BACKOFF: Duration = Duration::from_millis(25);
const RETRY_MAX_BACKOFF: Duration = Duration::from_millis(250);
// Linkerd's consecutive-failures defaults.
const ACCRUAL_MAX_FAILURES: u32 = 7;
const ACCRUAL_MIN_PENALTY: Duration = Duration::from_secs(1);
const ACCRUAL_MAX_PENALTY: Duration = Duration::from_secs(60);
const ACCRUAL_JITTER: f32 = 0.5;

const CORE_GROUP: &str = "core";

/// A Service port's outbound policy as sent: Linkerd's message with weft's
/// extensions, and what was left out of it and why (logged as it is sent).
#[derive(Clone, Debug, PartialEq)]
pub struct Outbound {
    pub message: OutboundPolicyWithExtensions,
    pub skipped: Vec<String>,
}

impl Outbound {
    fn plain(policy: pb::OutboundPolicy) -> Self {
        Self { message: OutboundPolicyWithExtensions { policy, extensions: None }, skipped: Vec::new() }
    }
}

/// The outbound policy for `target`, or `None` where Linkerd answers
/// `NOT_FOUND`: names outside the cluster domain, Services not in the index,
/// IPs that are neither a Service's cluster IP nor a pod's.
pub fn policy(state: &State, cfg: &MeshConfig, target: &Target) -> Option<Outbound> {
    match target {
        Target::External => None,
        Target::Service { key, port } => service_policy(state, cfg, key, *port),
        Target::Ip(addr) => match state.service_by_ip(&addr.ip()) {
            Some(svc) => service_policy(state, cfg, &svc.key, addr.port()),
            None => pod_policy(state, *addr).map(Outbound::plain),
        },
    }
}

// === Metadata, backends ===

fn default_meta(name: &str) -> meta::Metadata {
    meta::Metadata { kind: Some(metadata::Kind::Default(name.to_owned())) }
}

/// A route as the policy names it (and weft's extensions find it).
fn route_meta(group: &str, kind: &str, key: &ObjKey) -> meta::Metadata {
    meta::Metadata {
        kind: Some(metadata::Kind::Resource(meta::Resource {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            ..Default::default()
        })),
    }
}

fn resource_meta(group: &str, kind: &str, key: &ObjKey, port: u16) -> meta::Metadata {
    meta::Metadata {
        kind: Some(metadata::Kind::Resource(meta::Resource {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            section: String::new(),
            port: u32::from(port),
        })),
    }
}

fn queue() -> pb::Queue {
    pb::Queue { capacity: QUEUE_CAPACITY, failfast_timeout: Some(proto_duration(QUEUE_FAILFAST)) }
}

/// A Service port as a balanced backend: endpoints from `Destination/Get`.
fn service_backend(cfg: &MeshConfig, key: &ObjKey, port: u16) -> pb::Backend {
    let path = format!("{}.{}.svc.{}:{port}", key.name, key.namespace, cfg.cluster_domain);
    pb::Backend {
        metadata: Some(resource_meta(CORE_GROUP, "Service", key, port)),
        queue: Some(queue()),
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(backend::endpoint_discovery::Kind::Dst(
                    backend::endpoint_discovery::DestinationGet { path },
                )),
            }),
            load: Some(backend::balance_p2c::Load::PeakEwma(backend::balance_p2c::PeakEwma {
                default_rtt: Some(proto_duration(EWMA_DEFAULT_RTT)),
                decay: Some(proto_duration(EWMA_DECAY)),
            })),
        })),
    }
}

/// A backend that cannot be reached (a missing Service, an unsupported
/// kind): Linkerd's `Default{invalid}` with no kind, whose share of requests
/// the route's failure-injector filter answers.
fn invalid_backend() -> pb::Backend {
    pb::Backend { metadata: Some(default_meta("invalid")), queue: Some(queue()), kind: None }
}

fn exists(state: &State, key: &ObjKey) -> bool {
    state.services.contains_key(key) || state.statics.contains_key(key)
}

/// What a backendRef resolves to: the Service's backend, or why not.
fn resolve_backend(
    state: &State,
    cfg: &MeshConfig,
    b: &BackendRef,
    parent_port: u16,
) -> Result<pb::Backend, String> {
    if !(b.group.is_empty() || b.group == CORE_GROUP) || b.kind != "Service" {
        return Err(format!("unsupported backend kind {}.{}", b.kind, b.group));
    }
    let key = ObjKey::new(b.namespace.clone(), b.name.clone());
    if !exists(state, &key) {
        return Err(format!("Service not found {}", b.name));
    }
    Ok(service_backend(cfg, &key, b.port.unwrap_or(parent_port)))
}

// === Annotations ===

/// The annotation group `prefix` of the route if it sets any, else the
/// Service's (Linkerd: route annotations take precedence over the
/// Service's).
fn annotation_group<'a>(
    route: &'a BTreeMap<String, String>,
    service: &'a BTreeMap<String, String>,
    prefix: &str,
) -> &'a BTreeMap<String, String> {
    if route.keys().any(|k| k.starts_with(prefix)) {
        route
    } else {
        service
    }
}

/// Problems found reading annotations. They are logged once, when the object
/// arrives ([`annotation_problems`]), not on every recomputation.
type Problems = Vec<String>;

/// What is wrong with an object's retry, timeout and failure-accrual
/// annotations (each problem is skipped when the policy is built).
pub fn annotation_problems(a: &BTreeMap<String, String>) -> Problems {
    let mut p = Problems::new();
    timeouts(a, &RuleTimeouts::default(), &mut p);
    http_retry(a, &mut p);
    grpc_retry(a, &mut p);
    failure_accrual(a, &mut p);
    hedge(a, &mut p);
    p.dedup();
    p
}

fn duration_annotation(a: &BTreeMap<String, String>, key: &str, problems: &mut Problems) -> Option<Duration> {
    let v = a.get(key)?;
    match parse_go_duration(v) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => None,
        Err(reason) => {
            problems.push(format!("{key}: {reason}"));
            None
        }
    }
}

/// `timeout.linkerd.io/{request,response,idle}`, overridden by the rule's own
/// `timeouts` (`request` bounds the whole request; `backendRequest` each try,
/// the proxy's response timeout).
fn timeouts(
    a: &BTreeMap<String, String>,
    rule: &RuleTimeouts,
    problems: &mut Problems,
) -> Option<http_proto::Timeouts> {
    let request = rule.request.or_else(|| duration_annotation(a, "timeout.linkerd.io/request", problems));
    let response =
        rule.backend_request.or_else(|| duration_annotation(a, "timeout.linkerd.io/response", problems));
    let idle = duration_annotation(a, "timeout.linkerd.io/idle", problems);
    if request.is_none() && response.is_none() && idle.is_none() {
        return None;
    }
    Some(http_proto::Timeouts {
        request: request.map(proto_duration),
        response: response.map(proto_duration),
        idle: idle.map(proto_duration),
    })
}

struct RetryParams {
    limit: u32,
    timeout: Option<Duration>,
    backoff: pb::ExponentialBackoff,
}

/// `retry.linkerd.io/limit` and `/timeout`: `None` unless the group holds a
/// retry annotation at all.
fn retry_params(a: &BTreeMap<String, String>, problems: &mut Problems) -> Option<RetryParams> {
    if !a.keys().any(|k| k.starts_with("retry.linkerd.io/")) {
        return None;
    }
    let limit = match a.get("retry.linkerd.io/limit").map(|v| v.trim().parse::<u32>()) {
        None => RETRY_LIMIT,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            problems
                .push(format!("retry.linkerd.io/limit: {:?} is not a count", a["retry.linkerd.io/limit"]));
            RETRY_LIMIT
        }
    };
    Some(RetryParams {
        limit,
        timeout: duration_annotation(a, "retry.linkerd.io/timeout", problems),
        backoff: pb::ExponentialBackoff {
            min_backoff: Some(proto_duration(RETRY_MIN_BACKOFF)),
            max_backoff: Some(proto_duration(RETRY_MAX_BACKOFF)),
            jitter_ratio: 1.0,
            respect_retry_after_hint: false,
        },
    })
}

/// `retry.linkerd.io/http`: `5xx`, `gateway-error`, `429`, `500-504`, ...
fn http_retry(a: &BTreeMap<String, String>, problems: &mut Problems) -> Option<pb::http_route::Retry> {
    use pb::http_route::retry::{conditions::StatusRange, Conditions};
    let p = retry_params(a, problems)?;
    let conditions = a.get("retry.linkerd.io/http").map(|v| {
        let mut status_ranges = Vec::new();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let range = match item.to_ascii_lowercase().as_str() {
                "5xx" => Some((500, 599)),
                "gateway-error" => Some((502, 504)),
                s => match s.split_once('-') {
                    Some((lo, hi)) => lo.trim().parse().ok().zip(hi.trim().parse().ok()),
                    None => s.parse().ok().map(|n| (n, n)),
                },
            };
            match range {
                Some((start, end)) if (100..=599).contains(&start) && start <= end && end <= 599 => {
                    status_ranges.push(StatusRange { start, end })
                }
                _ => problems.push(format!("retry.linkerd.io/http: {item:?} is not a status or range")),
            }
        }
        Conditions { status_ranges }
    });
    Some(pb::http_route::Retry {
        max_retries: p.limit,
        max_request_bytes: RETRY_MAX_REQUEST_BYTES,
        conditions,
        timeout: p.timeout.map(proto_duration),
        backoff: Some(p.backoff),
    })
}

/// `retry.linkerd.io/grpc`: `cancelled,deadline-exceeded,internal,
/// resource-exhausted,unavailable`.
fn grpc_retry(a: &BTreeMap<String, String>, problems: &mut Problems) -> Option<pb::grpc_route::Retry> {
    let p = retry_params(a, problems)?;
    let conditions = a.get("retry.linkerd.io/grpc").map(|v| {
        let mut c = pb::grpc_route::retry::Conditions::default();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.to_ascii_lowercase().as_str() {
                "cancelled" => c.cancelled = true,
                "deadline-exceeded" => c.deadine_exceeded = true,
                "resource-exhausted" => c.resource_exhausted = true,
                "internal" => c.internal = true,
                "unavailable" => c.unavailable = true,
                _ => problems.push(format!("retry.linkerd.io/grpc: {item:?} is not a gRPC condition")),
            }
        }
        c
    });
    Some(pb::grpc_route::Retry {
        max_retries: p.limit,
        max_request_bytes: RETRY_MAX_REQUEST_BYTES,
        conditions,
        timeout: p.timeout.map(proto_duration),
        backoff: Some(p.backoff),
    })
}

/// `balancer.linkerd.io/failure-accrual: consecutive` on the Service, with
/// `...-consecutive-max-failures`, `-min-penalty`, `-max-penalty`,
/// `-jitter-ratio`.
fn failure_accrual(a: &BTreeMap<String, String>, problems: &mut Problems) -> Option<pb::FailureAccrual> {
    const KEY: &str = "balancer.linkerd.io/failure-accrual";
    match a.get(KEY).map(|v| v.trim()) {
        None => return None,
        Some("consecutive") => {}
        Some(other) => {
            problems.push(format!("{KEY}: {other:?} is not a failure accrual kind (consecutive)"));
            return None;
        }
    }
    let key = |suffix: &str| format!("{KEY}-consecutive-{suffix}");
    let max_failures = match a.get(&key("max-failures")).map(|v| v.trim().parse::<u32>()) {
        None => ACCRUAL_MAX_FAILURES,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            problems.push(format!("{}: not a positive count", key("max-failures")));
            ACCRUAL_MAX_FAILURES
        }
    };
    let min = duration_annotation(a, &key("min-penalty"), problems).unwrap_or(ACCRUAL_MIN_PENALTY);
    let max = duration_annotation(a, &key("max-penalty"), problems).unwrap_or(ACCRUAL_MAX_PENALTY).max(min);
    let jitter_ratio = match a.get(&key("jitter-ratio")).map(|v| v.trim().parse::<f32>()) {
        None => ACCRUAL_JITTER,
        Some(Ok(j)) if (0.0..=100.0).contains(&j) => j,
        Some(_) => {
            problems.push(format!("{}: not a ratio (0-100)", key("jitter-ratio")));
            ACCRUAL_JITTER
        }
    };
    Some(pb::FailureAccrual {
        kind: Some(pb::failure_accrual::Kind::ConsecutiveFailures(
            pb::failure_accrual::ConsecutiveFailures {
                max_failures,
                backoff: Some(pb::ExponentialBackoff {
                    min_backoff: Some(proto_duration(min)),
                    max_backoff: Some(proto_duration(max)),
                    jitter_ratio,
                    respect_retry_after_hint: false,
                }),
            },
        )),
        ejection: None,
    })
}

const HEDGE_AFTER: &str = "retry.weft.io/hedge-after";

/// `retry.weft.io/hedge-after`: a duration (`20ms`; `0s` means none) or a
/// percentile of the rule's observed latency (`p95`, 50 to 99.9).
fn hedge(a: &BTreeMap<String, String>, problems: &mut Problems) -> Option<ext::Hedge> {
    let v = a.get(HEDGE_AFTER)?.trim();
    if let Some(p) = v.strip_prefix(['p', 'P']) {
        return match p.parse::<f64>() {
            Ok(p) if (50.0..=99.9).contains(&p) => Some(ext::Hedge { after: None, percentile: p }),
            _ => {
                problems.push(format!("{HEDGE_AFTER}: {v:?} is not a percentile from p50 to p99.9"));
                None
            }
        };
    }
    duration_annotation(a, HEDGE_AFTER, problems)
        .map(|d| ext::Hedge { after: Some(proto_duration(d)), percentile: 0.0 })
}

// === Routes ===

/// The HTTPRoutes of both groups attached to the Service port, in
/// precedence order.
pub fn http_routes_for<'a>(state: &'a State, key: &ObjKey, port: u16) -> Vec<&'a HttpRouteRec> {
    let mut routes: Vec<_> = state
        .http_routes
        .values()
        .chain(state.gateway_http_routes.values())
        .filter(|r| r.parents.iter().any(|p| p.is_service(key, port)))
        .collect();
    routes.sort_by(|a, b| route::precedence((&a.created, &a.key), (&b.created, &b.key)));
    routes
}

/// The GRPCRoutes attached to the Service port, in precedence order.
pub fn grpc_routes_for<'a>(state: &'a State, key: &ObjKey, port: u16) -> Vec<&'a GrpcRouteRec> {
    let mut routes: Vec<_> =
        state.grpc_routes.values().filter(|r| r.parents.iter().any(|p| p.is_service(key, port))).collect();
    routes.sort_by(|a, b| route::precedence((&a.created, &a.key), (&b.created, &b.key)));
    routes
}

fn http_filter(f: &Filter) -> Option<pb::http_route::Filter> {
    use pb::http_route::filter::Kind;
    let kind = match f {
        Filter::RequestHeaderModifier(m) => Kind::RequestHeaderModifier(route::proto_header_modifier(m)),
        Filter::ResponseHeaderModifier(m) => {
            let r = route::proto_header_modifier(m);
            Kind::ResponseHeaderModifier(http_proto::ResponseHeaderModifier {
                add: r.add,
                set: r.set,
                remove: r.remove,
            })
        }
        Filter::RequestRedirect(r) => Kind::Redirect(route::proto_redirect(r)),
        // Not in the outbound proto (RequestMirror, URLRewrite, ...): the rule
        // is served without it.
        Filter::Unsupported(_) => return None,
    };
    Some(pb::http_route::Filter { kind: Some(kind) })
}

fn http_failure(message: String) -> pb::http_route::Filter {
    pb::http_route::Filter {
        kind: Some(pb::http_route::filter::Kind::FailureInjector(http_proto::HttpFailureInjector {
            status: 500,
            message,
            ratio: None,
        })),
    }
}

/// Why a rule whose backendRefs all weigh 0 gets nothing but 500s (the
/// Gateway API's rule; a proxy would refuse a distribution weighing 0).
const ZERO_WEIGHTS: &str = "every backendRef of the rule has weight 0";

fn all_zero(backends: &[BackendRef]) -> bool {
    !backends.is_empty() && backends.iter().all(|b| b.weight == 0)
}

/// A rule's backends, before they are written as HTTP or gRPC proto:
/// each backend with the failure its requests get, if any.
enum Plan {
    /// Every request to one backend: the parent Service when the rule names
    /// none, a failure when every ref weighs 0.
    One(Box<pb::Backend>, Option<String>),
    Weighted(Vec<(u32, pb::Backend, Option<String>)>),
}

fn plan(state: &State, cfg: &MeshConfig, backends: &[BackendRef], default: &pb::Backend, port: u16) -> Plan {
    if backends.is_empty() {
        Plan::One(Box::new(default.clone()), None)
    } else if all_zero(backends) {
        Plan::One(Box::new(invalid_backend()), Some(ZERO_WEIGHTS.into()))
    } else {
        Plan::Weighted(
            backends
                .iter()
                .map(|b| match resolve_backend(state, cfg, b, port) {
                    Ok(backend) => (b.weight, backend, None),
                    Err(message) => (b.weight, invalid_backend(), Some(message)),
                })
                .collect(),
        )
    }
}

/// `plan` as the Distribution of proto module `$route` (`http_route` or
/// `grpc_route`: the same messages, generated twice), a backend's failure
/// as the filter `$failure` makes.
macro_rules! distribution {
    ($route:ident, $plan:expr, $failure:expr) => {{
        use pb::$route::{distribution, RouteBackend, WeightedRouteBackend};
        let route_backend = |backend, failure: Option<String>| RouteBackend {
            backend: Some(backend),
            filters: failure.map($failure).into_iter().collect(),
            ..Default::default()
        };
        let kind = match $plan {
            Plan::One(b, failure) => distribution::Kind::FirstAvailable(distribution::FirstAvailable {
                backends: vec![route_backend(*b, failure)],
            }),
            Plan::Weighted(list) => distribution::Kind::RandomAvailable(distribution::RandomAvailable {
                backends: list
                    .into_iter()
                    .map(|(weight, b, f)| WeightedRouteBackend { weight, backend: Some(route_backend(b, f)) })
                    .collect(),
            }),
        };
        pb::$route::Distribution { kind: Some(kind) }
    }};
}

fn http_distribution(plan: Plan) -> pb::http_route::Distribution {
    distribution!(http_route, plan, http_failure)
}

fn http_route(
    state: &State,
    cfg: &MeshConfig,
    r: &HttpRouteRec,
    service_annotations: &BTreeMap<String, String>,
    default: &pb::Backend,
    port: u16,
) -> pb::HttpRoute {
    let timeout_annotations = annotation_group(&r.annotations, service_annotations, "timeout.linkerd.io/");
    let retry = http_retry(
        annotation_group(&r.annotations, service_annotations, "retry.linkerd.io/"),
        &mut Problems::new(),
    );
    pb::HttpRoute {
        metadata: Some(route_meta(&r.group, "HTTPRoute", &r.key)),
        hosts: route::proto_hosts(&r.hostnames),
        rules: r
            .rules
            .iter()
            .map(|rule| pb::http_route::Rule {
                matches: rule.matches.iter().map(route::proto_match).collect(),
                filters: rule.filters.iter().filter_map(http_filter).collect(),
                backends: Some(http_distribution(plan(state, cfg, &rule.backends, default, port))),
                timeouts: timeouts(timeout_annotations, &rule.timeouts, &mut Problems::new()),
                retry: retry.clone(),
                ..Default::default()
            })
            .collect(),
    }
}

/// `Default{http}`: every request to the Service itself, under the
/// Service's retry and timeout annotations.
fn default_http_route(a: &BTreeMap<String, String>, default: &pb::Backend) -> pb::HttpRoute {
    use pb::http_route::{distribution, Distribution, RouteBackend, Rule};
    let all = route::RouteMatch {
        path: Some(route::PathMatch::Prefix("/".into())),
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    };
    pb::HttpRoute {
        metadata: Some(default_meta("http")),
        hosts: Vec::new(),
        rules: vec![Rule {
            matches: vec![route::proto_match(&all)],
            backends: Some(Distribution {
                kind: Some(distribution::Kind::FirstAvailable(distribution::FirstAvailable {
                    backends: vec![RouteBackend { backend: Some(default.clone()), ..Default::default() }],
                })),
            }),
            timeouts: timeouts(a, &RuleTimeouts::default(), &mut Problems::new()),
            retry: http_retry(a, &mut Problems::new()),
            ..Default::default()
        }],
    }
}

fn opaque_route(name: &str, default: &pb::Backend) -> pb::OpaqueRoute {
    use pb::opaque_route::{distribution, Distribution, RouteBackend, Rule};
    pb::OpaqueRoute {
        metadata: Some(default_meta(name)),
        rules: vec![Rule {
            backends: Some(Distribution {
                kind: Some(distribution::Kind::FirstAvailable(distribution::FirstAvailable {
                    backends: vec![RouteBackend { backend: Some(default.clone()), filters: Vec::new() }],
                })),
            }),
            filters: Vec::new(),
        }],
    }
}

// === gRPC routes ===

/// gRPC's INTERNAL (13): what Linkerd answers for an unusable backend on a
/// gRPC route.
fn grpc_failure(message: String) -> pb::grpc_route::Filter {
    pb::grpc_route::Filter {
        kind: Some(pb::grpc_route::filter::Kind::FailureInjector(grpc_proto::GrpcFailureInjector {
            code: 13,
            message,
            ratio: None,
        })),
    }
}

fn grpc_distribution(plan: Plan) -> pb::grpc_route::Distribution {
    distribution!(grpc_route, plan, grpc_failure)
}

fn grpc_route(
    state: &State,
    cfg: &MeshConfig,
    r: &GrpcRouteRec,
    service_annotations: &BTreeMap<String, String>,
    default: &pb::Backend,
    port: u16,
) -> pb::GrpcRoute {
    let timeout_annotations = annotation_group(&r.annotations, service_annotations, "timeout.linkerd.io/");
    let retry = grpc_retry(
        annotation_group(&r.annotations, service_annotations, "retry.linkerd.io/"),
        &mut Problems::new(),
    );
    pb::GrpcRoute {
        metadata: Some(route_meta(route::GATEWAY_GROUP, "GRPCRoute", &r.key)),
        hosts: route::proto_hosts(&r.hostnames),
        rules: r
            .rules
            .iter()
            .map(|rule| pb::grpc_route::Rule {
                matches: rule.matches.iter().map(route::proto_grpc_match).collect(),
                filters: rule
                    .filters
                    .iter()
                    .filter_map(|f| match f {
                        Filter::RequestHeaderModifier(m) => Some(pb::grpc_route::Filter {
                            kind: Some(pb::grpc_route::filter::Kind::RequestHeaderModifier(
                                route::proto_header_modifier(m),
                            )),
                        }),
                        // The gRPC outbound proto carries no other filter.
                        _ => None,
                    })
                    .collect(),
                backends: Some(grpc_distribution(plan(state, cfg, &rule.backends, default, port))),
                timeouts: timeouts(timeout_annotations, &RuleTimeouts::default(), &mut Problems::new()),
                retry,
                ..Default::default()
            })
            .collect(),
    }
}

// === weft's extensions ===

/// The rules' extensions of one policy, as its routes are written.
struct Extensions<'a> {
    state: &'a State,
    cfg: &'a MeshConfig,
    port: u16,
    rules: Vec<ext::RuleExtension>,
    skipped: Vec<String>,
}

impl Extensions<'_> {
    /// Rule `index` of the route named `route`; nothing when it has no
    /// extension.
    fn rule(
        &mut self,
        route: &meta::Metadata,
        index: usize,
        mirrors: &[route::Mirror],
        url_rewrite: Option<&route::UrlRewrite>,
        hedge: Option<ext::Hedge>,
    ) {
        let mut resolved = Vec::with_capacity(mirrors.len());
        for m in mirrors {
            match resolve_backend(self.state, self.cfg, &m.backend, self.port) {
                Ok(backend) => resolved.push(ext::Mirror {
                    backend: Some(backend),
                    ratio: Some(http_proto::Ratio { numerator: m.numerator, denominator: m.denominator }),
                }),
                Err(reason) => self.skipped.push(format!(
                    "{} rule {index}: RequestMirror to {}/{} dropped: {reason}",
                    describe_route(route),
                    m.backend.namespace,
                    m.backend.name
                )),
            }
        }
        let url_rewrite = url_rewrite.map(|r| ext::UrlRewrite {
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(route::proto_path_modifier),
        });
        if resolved.is_empty() && url_rewrite.is_none() && hedge.is_none() {
            return;
        }
        self.rules.push(ext::RuleExtension {
            route: Some(route.clone()),
            rule_index: u32::try_from(index).unwrap_or(u32::MAX),
            mirrors: resolved,
            url_rewrite,
            hedge,
        });
    }

    /// The HTTP routes' extensions; without routes, those of `Default{http}`
    /// (the Service's hedging).
    fn http(&mut self, routes: &[&HttpRouteRec], service_annotations: &BTreeMap<String, String>) {
        if routes.is_empty() {
            let hedge = hedge(service_annotations, &mut Problems::new());
            self.rule(&default_meta("http"), 0, &[], None, hedge);
        }
        for r in routes {
            let meta = route_meta(&r.group, "HTTPRoute", &r.key);
            let hedge = hedge(
                annotation_group(&r.annotations, service_annotations, "retry.weft.io/"),
                &mut Problems::new(),
            );
            for (i, rule) in r.rules.iter().enumerate() {
                self.rule(&meta, i, &rule.mirrors, rule.url_rewrite.as_ref(), hedge.clone());
            }
        }
    }

    fn grpc(&mut self, routes: &[&GrpcRouteRec], service_annotations: &BTreeMap<String, String>) {
        for r in routes {
            let meta = route_meta(route::GATEWAY_GROUP, "GRPCRoute", &r.key);
            let hedge = hedge(
                annotation_group(&r.annotations, service_annotations, "retry.weft.io/"),
                &mut Problems::new(),
            );
            for (i, rule) in r.rules.iter().enumerate() {
                self.rule(&meta, i, &rule.mirrors, None, hedge.clone());
            }
        }
    }

    fn finish(self, policy: pb::OutboundPolicy) -> Outbound {
        let extensions = (!self.rules.is_empty()).then_some(ext::RouteExtensions { rules: self.rules });
        Outbound { message: OutboundPolicyWithExtensions { policy, extensions }, skipped: self.skipped }
    }
}

fn describe_route(m: &meta::Metadata) -> String {
    match &m.kind {
        Some(metadata::Kind::Resource(r)) => format!("{} {}/{}", r.kind, r.namespace, r.name),
        Some(metadata::Kind::Default(name)) => format!("default route {name}"),
        None => "route".into(),
    }
}

// === Policies ===

/// How a Service port's traffic is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AppProtocol {
    Detect,
    Http1,
    Http2,
    Opaque,
}

/// Linkerd's reading of `appProtocol`: `http`, `kubernetes.io/h2c`,
/// `linkerd.io/opaque`; any other value is treated as opaque, as Linkerd
/// does (a protocol the proxy cannot read must not be parsed as HTTP).
fn app_protocol(value: Option<&str>, opaque_port: bool) -> AppProtocol {
    if opaque_port {
        return AppProtocol::Opaque;
    }
    match value {
        None => AppProtocol::Detect,
        Some("http") => AppProtocol::Http1,
        Some("kubernetes.io/h2c") => AppProtocol::Http2,
        Some(_) => AppProtocol::Opaque,
    }
}

fn service_policy(state: &State, cfg: &MeshConfig, key: &ObjKey, port: u16) -> Option<Outbound> {
    let svc = state.services.get(key);
    let statics = state.statics.get(key);
    if svc.is_none() && statics.is_none() {
        return None;
    }
    let empty = BTreeMap::new();
    let annotations = svc.map_or(&empty, |s| &s.annotations);
    let opaque = svc.is_some_and(|s| s.opaque_ports.contains(port))
        || statics.is_some_and(|s| s.opaque_ports.contains(port));
    let proto = app_protocol(svc.and_then(|s| s.app_protocols.get(&port)).map(String::as_str), opaque);
    let default = service_backend(cfg, key, port);
    let accrual = failure_accrual(annotations, &mut Problems::new());

    let grpc_routes = grpc_routes_for(state, key, port);
    let http_recs = http_routes_for(state, key, port);
    let mut extensions = Extensions { state, cfg, port, rules: Vec::new(), skipped: Vec::new() };
    match proto {
        AppProtocol::Opaque => {}
        AppProtocol::Http2 | AppProtocol::Detect if !grpc_routes.is_empty() => {
            extensions.grpc(&grpc_routes, annotations)
        }
        _ => extensions.http(&http_recs, annotations),
    }
    let http_routes = || {
        let mut routes: Vec<_> =
            http_recs.iter().map(|r| http_route(state, cfg, r, annotations, &default, port)).collect();
        if routes.is_empty() {
            routes.push(default_http_route(annotations, &default));
        }
        routes
    };
    let grpc = |routes: Vec<&GrpcRouteRec>| {
        proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
            routes: routes
                .into_iter()
                .map(|r| grpc_route(state, cfg, r, annotations, &default, port))
                .collect(),
            failure_accrual: accrual,
        })
    };
    let kind = match proto {
        AppProtocol::Opaque => proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {
            routes: vec![opaque_route("opaq", &default)],
        }),
        AppProtocol::Http1 => proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
            routes: http_routes(),
            failure_accrual: accrual,
        }),
        AppProtocol::Http2 if !grpc_routes.is_empty() => grpc(grpc_routes),
        AppProtocol::Http2 => proxy_protocol::Kind::Http2(proxy_protocol::Http2 {
            routes: http_routes(),
            failure_accrual: accrual,
        }),
        AppProtocol::Detect if !grpc_routes.is_empty() => grpc(grpc_routes),
        AppProtocol::Detect => {
            let routes = http_routes();
            proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: Some(proto_duration(DETECT_TIMEOUT)),
                opaque: Some(proxy_protocol::Opaque { routes: vec![opaque_route("opaq", &default)] }),
                http1: Some(proxy_protocol::Http1 { routes: routes.clone(), failure_accrual: accrual }),
                http2: Some(proxy_protocol::Http2 { routes, failure_accrual: accrual }),
            })
        }
    };
    Some(extensions.finish(pb::OutboundPolicy {
        metadata: Some(resource_meta(CORE_GROUP, "Service", key, port)),
        protocol: Some(pb::ProxyProtocol { kind: Some(kind) }),
    }))
}

/// A pod IP: one `Forward` backend straight to that endpoint, with the pod's
/// identity and protocol hint when it is meshed, so a client dialling a pod
/// directly still gets mTLS. Linkerd's controller describes Services only;
/// answering `NOT_FOUND` would leave the proxy to rebuild this from
/// `GetProfile`.
fn pod_policy(state: &State, addr: SocketAddr) -> Option<pb::OutboundPolicy> {
    let endpoints::View::Endpoints { endpoints, .. } = endpoints::view(state, &Target::Ip(addr)) else {
        return None;
    };
    let ep = endpoints.get(&addr)?;
    let backend = pb::Backend {
        metadata: Some(default_meta("forward")),
        queue: Some(queue()),
        kind: Some(backend::Kind::Forward(destination::WeightedAddr {
            weight: 1,
            ..endpoints::weighted_addr(addr, ep)
        })),
    };
    let opaque = proxy_protocol::Opaque { routes: vec![opaque_route("forward", &backend)] };
    let kind = if ep.hint == Hint::Opaque {
        proxy_protocol::Kind::Opaque(opaque)
    } else {
        use pb::http_route::{distribution, Distribution, RouteBackend, Rule};
        let routes = vec![pb::HttpRoute {
            metadata: Some(default_meta("forward")),
            hosts: Vec::new(),
            rules: vec![Rule {
                matches: vec![http_proto::HttpRouteMatch::default()],
                backends: Some(Distribution {
                    kind: Some(distribution::Kind::FirstAvailable(distribution::FirstAvailable {
                        backends: vec![RouteBackend { backend: Some(backend), ..Default::default() }],
                    })),
                }),
                ..Default::default()
            }],
        }];
        proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: Some(proto_duration(DETECT_TIMEOUT)),
            opaque: Some(opaque),
            http1: Some(proxy_protocol::Http1 { routes: routes.clone(), failure_accrual: None }),
            http2: Some(proxy_protocol::Http2 { routes, failure_accrual: None }),
        })
    };
    Some(pb::OutboundPolicy {
        metadata: Some(default_meta("forward")),
        protocol: Some(pb::ProxyProtocol { kind: Some(kind) }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{files::parse_manifests, index::Index};
    use pb::http_route::{distribution::Kind as Dist, filter::Kind as F};

    const FIXTURES: [&str; 5] = [
        "services-emojivoto.list.json",
        "endpointslices-emojivoto.list.json",
        "pods-emojivoto.list.json",
        "httproutes.gateway.networking.k8s.io-emojivoto.list.json",
        "httproutes.policy.linkerd.io-emojivoto.list.json",
    ];

    /// The fixtures plus `extra` manifests (YAML).
    fn index(extra: &[&str]) -> Index {
        crate::fixtures::index(&FIXTURES, extra)
    }

    fn get(index: &Index, target: Target) -> Option<pb::OutboundPolicy> {
        get_outbound(index, target).map(|o| o.message.policy)
    }

    fn get_outbound(index: &Index, target: Target) -> Option<Outbound> {
        let state = index.subscribe();
        let state = state.borrow();
        policy(&state, &MeshConfig::default(), &target)
    }

    fn svc(name: &str, port: u16) -> Target {
        Target::Service { key: ObjKey::new("emojivoto", name), port }
    }

    fn kind(p: &pb::OutboundPolicy) -> &proxy_protocol::Kind {
        p.protocol.as_ref().and_then(|p| p.kind.as_ref()).expect("a protocol")
    }

    /// The HTTP routes of a policy, checking HTTP/1 and HTTP/2 carry the same.
    fn http_routes(p: &pb::OutboundPolicy) -> Vec<pb::HttpRoute> {
        match kind(p) {
            proxy_protocol::Kind::Detect(d) => {
                let h1 = d.http1.as_ref().expect("http1").routes.clone();
                assert_eq!(h1, d.http2.as_ref().expect("http2").routes);
                h1
            }
            proxy_protocol::Kind::Http1(h) => h.routes.clone(),
            proxy_protocol::Kind::Http2(h) => h.routes.clone(),
            other => panic!("not HTTP: {other:?}"),
        }
    }

    fn name(m: &Option<meta::Metadata>) -> String {
        match m.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(metadata::Kind::Default(d)) => format!("default:{d}"),
            Some(metadata::Kind::Resource(r)) if r.port != 0 => {
                format!("{}:{}:{}/{}:{}", r.group, r.kind, r.namespace, r.name, r.port)
            }
            Some(metadata::Kind::Resource(r)) => format!("{}:{}:{}/{}", r.group, r.kind, r.namespace, r.name),
            None => "none".into(),
        }
    }

    /// (weight, backend name or dst path, failure message) of a rule.
    fn backends(rule: &pb::http_route::Rule) -> Vec<(u32, String, Option<String>)> {
        let describe = |rb: &pb::http_route::RouteBackend| {
            let b = rb.backend.as_ref().expect("backend");
            let what = match &b.kind {
                Some(backend::Kind::Balancer(p2c)) => {
                    match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
                        Some(backend::endpoint_discovery::Kind::Dst(dst)) => dst.path.clone(),
                        None => "no discovery".into(),
                    }
                }
                Some(backend::Kind::Forward(addr)) => format!("forward {:?}", addr.addr),
                None => name(&b.metadata),
            };
            let failure = rb.filters.iter().find_map(|f| match &f.kind {
                Some(F::FailureInjector(fi)) => Some(format!("{} {}", fi.status, fi.message)),
                _ => None,
            });
            (what, failure)
        };
        match rule.backends.as_ref().and_then(|d| d.kind.as_ref()).expect("distribution") {
            Dist::FirstAvailable(f) => f
                .backends
                .iter()
                .map(|rb| {
                    let (w, f) = describe(rb);
                    (0, w, f)
                })
                .collect(),
            Dist::RandomAvailable(r) => r
                .backends
                .iter()
                .map(|wb| {
                    let (w, f) = describe(wb.backend.as_ref().expect("route backend"));
                    (wb.weight, w, f)
                })
                .collect(),
            Dist::Empty(_) => Vec::new(),
        }
    }

    fn secs(d: &Option<prost_types::Duration>) -> Option<f64> {
        d.as_ref().map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
    }

    const VOTING: &str = "voting-svc.emojivoto.svc.cluster.local:8080";

    /// The fixture's Gateway API route on voting-svc (appProtocol
    /// kubernetes.io/h2c): a header canary to a Service that does not exist,
    /// a 90/10 split, a header modifier (the mirror is dropped), the
    /// apiserver's defaults, and Linkerd's annotations.
    #[test]
    fn the_fixture_route_on_voting_svc() {
        let index = index(&[]);
        let p = get(&index, svc("voting-svc", 8080)).expect("voting-svc is known");
        assert_eq!(name(&p.metadata), "core:Service:emojivoto/voting-svc:8080");
        let proxy_protocol::Kind::Http2(h2) = kind(&p) else { panic!("h2c is HTTP/2: {:?}", kind(&p)) };
        assert!(h2.failure_accrual.is_none());
        let routes = http_routes(&p);
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!(name(&route.metadata), "gateway.networking.k8s.io:HTTPRoute:emojivoto/voting-route");
        assert_eq!(route.rules.len(), 2);

        // Rule 1: x-canary: true, with the PathPrefix / the apiserver filled in.
        let canary = &route.rules[0];
        let m = &canary.matches[0];
        assert_eq!(
            m.headers[0].value,
            Some(http_proto::header_match::Value::Exact(b"true".to_vec())),
            "{m:?}"
        );
        assert_eq!(
            m.path.as_ref().and_then(|p| p.kind.clone()),
            Some(http_proto::path_match::Kind::Prefix("/".into()))
        );
        // voting-v2 is not a Service: its share fails with a 500, as in Linkerd.
        assert_eq!(
            backends(canary),
            [(1, "default:invalid".into(), Some("500 Service not found voting-v2".into()))]
        );

        // Rule 2: /api split 90/10, a request header modifier; no mirror.
        let split = &route.rules[1];
        assert_eq!(
            backends(split),
            [
                (90, VOTING.into(), None),
                (10, "default:invalid".into(), Some("500 Service not found voting-v2".into()))
            ]
        );
        assert_eq!(split.filters.len(), 1);
        let Some(F::RequestHeaderModifier(m)) = &split.filters[0].kind else { panic!("{:?}", split.filters) };
        assert_eq!(m.remove, ["x-debug"]);

        // retry.linkerd.io/http: 5xx, limit 2, timeout.linkerd.io/request: 1s on every rule.
        for rule in &route.rules {
            let retry = rule.retry.as_ref().expect("retry");
            assert_eq!(retry.max_retries, 2);
            let ranges = &retry.conditions.as_ref().expect("conditions").status_ranges;
            assert_eq!((ranges[0].start, ranges[0].end), (500, 599));
            assert_eq!(secs(&rule.timeouts.as_ref().expect("timeouts").request), Some(1.0));
        }

        // The balancer is Linkerd's: P2C over peak-EWMA, a queue.
        let Some(Dist::RandomAvailable(r)) = split.backends.as_ref().and_then(|d| d.kind.as_ref()) else {
            panic!()
        };
        let b = r.backends[0].backend.as_ref().and_then(|b| b.backend.as_ref()).expect("backend");
        assert_eq!(name(&b.metadata), "core:Service:emojivoto/voting-svc:8080");
        assert_eq!(b.queue.as_ref().map(|q| q.capacity), Some(100));
        let Some(backend::Kind::Balancer(p2c)) = &b.kind else { panic!() };
        let Some(backend::balance_p2c::Load::PeakEwma(ewma)) = &p2c.load else { panic!() };
        assert_eq!((secs(&ewma.default_rtt), secs(&ewma.decay)), (Some(0.03), Some(10.0)));
    }

    /// A Service without routes, found by its cluster IP: Detect, and the
    /// default route to the Service itself.
    #[test]
    fn a_service_without_routes_gets_the_default_route() {
        let index = index(&[]);
        let by_ip = get(&index, Target::Ip("127.1.84.92:80".parse().unwrap())).expect("web-svc's cluster IP");
        assert_eq!(by_ip, get(&index, svc("web-svc", 80)).expect("web-svc"));
        let proxy_protocol::Kind::Detect(d) = kind(&by_ip) else { panic!("{:?}", kind(&by_ip)) };
        assert_eq!(secs(&d.timeout), Some(10.0));
        let opaque = d.opaque.as_ref().expect("opaque");
        assert_eq!(name(&opaque.routes[0].metadata), "default:opaq");
        let routes = http_routes(&by_ip);
        assert_eq!(routes.len(), 1);
        assert_eq!(name(&routes[0].metadata), "default:http");
        let rule = &routes[0].rules[0];
        assert_eq!(
            rule.matches[0].path.as_ref().and_then(|p| p.kind.clone()),
            Some(http_proto::path_match::Kind::Prefix("/".into()))
        );
        assert_eq!(backends(rule), [(0, "web-svc.emojivoto.svc.cluster.local:80".into(), None)]);
        assert!(rule.retry.is_none() && rule.timeouts.is_none());
        // A port the route's parentRef does not name gets no route either.
        assert_eq!(
            name(&http_routes(&get(&index, svc("voting-svc", 9999)).unwrap())[0].metadata),
            "default:http"
        );
    }

    const ANNOTATED: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: books
  namespace: emojivoto
  annotations:
    balancer.linkerd.io/failure-accrual: consecutive
    balancer.linkerd.io/failure-accrual-consecutive-max-failures: "3"
    balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 2s
    balancer.linkerd.io/failure-accrual-consecutive-max-penalty: 1m
    balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: "0.2"
    retry.linkerd.io/http: gateway-error,429,500-501,bogus
    retry.linkerd.io/timeout: 300ms
    timeout.linkerd.io/idle: 30s
spec:
  clusterIP: 10.96.0.9
  ports: [{name: http, port: 7000}, {name: db, port: 5432}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-newer, namespace: emojivoto, creationTimestamp: "2026-12-03T15:00:00Z"}
spec:
  parentRefs: [{group: core, kind: Service, name: books, port: 7000}]
  rules:
  - matches: [{path: {type: Exact, value: /newer}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: z-older
  namespace: emojivoto
  creationTimestamp: "2026-12-03T14:00:00Z"
  annotations: {retry.linkerd.io/limit: "4", timeout.linkerd.io/response: 2s}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - matches: [{path: {type: Exact, value: /older}}]
    timeouts: {request: 10s, backendRequest: 3s}
    backendRefs: [{name: books, port: 7000, weight: 0}, {name: web-svc, port: 80}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: a-same-age, namespace: emojivoto, creationTimestamp: "2026-12-03T15:00:00Z"}
spec:
  parentRefs: [{group: core, kind: Service, name: books, port: 7000}]
  rules: [{}]
"#;

    /// Precedence (oldest, then name, across both groups), route
    /// annotations over the Service's, rule timeouts over annotations,
    /// failure accrual, and zero weights kept as written.
    #[test]
    fn annotations_precedence_and_failure_accrual() {
        let index = index(&[ANNOTATED]);
        let p = get(&index, Target::Ip("10.96.0.9:7000".parse().unwrap())).expect("books");
        let proxy_protocol::Kind::Detect(d) = kind(&p) else { panic!() };
        let Some(pb::failure_accrual::Kind::ConsecutiveFailures(c)) =
            d.http1.as_ref().and_then(|h| h.failure_accrual.as_ref()).and_then(|a| a.kind.as_ref())
        else {
            panic!("consecutive failure accrual")
        };
        assert_eq!(c.max_failures, 3);
        let backoff = c.backoff.as_ref().expect("backoff");
        assert_eq!((secs(&backoff.min_backoff), secs(&backoff.max_backoff)), (Some(2.0), Some(60.0)));
        assert!((backoff.jitter_ratio - 0.2).abs() < 1e-6);

        let routes = http_routes(&p);
        let names: Vec<_> = routes.iter().map(|r| name(&r.metadata)).collect();
        assert_eq!(
            names,
            [
                "gateway.networking.k8s.io:HTTPRoute:emojivoto/z-older",
                "policy.linkerd.io:HTTPRoute:emojivoto/a-same-age",
                "gateway.networking.k8s.io:HTTPRoute:emojivoto/b-newer",
            ]
        );
        // z-older: its own retry annotations (limit 4, the proxy's default
        // conditions), its rule timeouts over its response annotation.
        let older = &routes[0].rules[0];
        let retry = older.retry.as_ref().expect("retry");
        assert_eq!((retry.max_retries, retry.conditions.clone(), retry.timeout), (4, None, None));
        let t = older.timeouts.as_ref().expect("timeouts");
        assert_eq!((secs(&t.request), secs(&t.response), secs(&t.idle)), (Some(10.0), Some(3.0), None));
        assert_eq!(
            backends(older),
            [
                (0, "books.emojivoto.svc.cluster.local:7000".into(), None),
                (1, "web-svc.emojivoto.svc.cluster.local:80".into(), None)
            ]
        );
        // b-newer: no annotations of its own, so the Service's: the valid
        // status ranges, the per-try timeout, the idle timeout; and no
        // backendRefs means the Service itself.
        let newer = &routes[2].rules[0];
        let retry = newer.retry.as_ref().expect("the Service's retry");
        let ranges: Vec<_> = retry
            .conditions
            .as_ref()
            .expect("conditions")
            .status_ranges
            .iter()
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(ranges, [(502, 504), (429, 429), (500, 501)]);
        assert_eq!((retry.max_retries, secs(&retry.timeout)), (1, Some(0.3)));
        assert_eq!(secs(&newer.timeouts.as_ref().expect("idle").idle), Some(30.0));
        assert_eq!(backends(newer), [(0, "books.emojivoto.svc.cluster.local:7000".into(), None)]);

        // Port 5432: no route names it (b-newer and a-same-age name 7000), but
        // z-older has no port and so applies to every port.
        let db = get(&index, Target::Ip("10.96.0.9:5432".parse().unwrap())).expect("books:5432");
        let names: Vec<_> = http_routes(&db).iter().map(|r| name(&r.metadata)).collect();
        assert_eq!(names, ["gateway.networking.k8s.io:HTTPRoute:emojivoto/z-older"]);
    }

    /// Bad annotation values are reported (once, as the object arrives) and
    /// skipped; the rest of the annotations apply.
    #[test]
    fn annotation_problems_name_the_annotation_and_value() {
        let a: BTreeMap<String, String> = [
            ("retry.linkerd.io/http", "5xx,bogus"),
            ("retry.linkerd.io/limit", "many"),
            ("timeout.linkerd.io/request", "soon"),
            ("retry.linkerd.io/grpc", "internal,sometimes"),
            ("balancer.linkerd.io/failure-accrual", "adaptive"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let problems = annotation_problems(&a).join("\n");
        for needle in ["bogus", "\"many\"", "timeout.linkerd.io/request", "sometimes", "adaptive"] {
            assert!(problems.contains(needle), "{needle} not in {problems}");
        }
        assert!(!problems.contains("5xx") && !problems.contains("internal"), "{problems}");
        let retry = http_retry(&a, &mut Problems::new()).expect("retry");
        assert_eq!(retry.max_retries, RETRY_LIMIT);
        assert_eq!(retry.conditions.expect("conditions").status_ranges.len(), 1);
        assert!(failure_accrual(&a, &mut Problems::new()).is_none());
        assert!(annotation_problems(&BTreeMap::new()).is_empty());
    }

    const PROTOCOLS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: emojivoto
  annotations: {config.linkerd.io/opaque-ports: "5432"}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: pg, port: 5432}
  - {name: web, port: 80, appProtocol: http}
  - {name: tls, port: 443, appProtocol: https}
  - {name: raw, port: 9000, appProtocol: linkerd.io/opaque}
"#;

    /// The fixture the apiserver accepted with every weight 0: the rule
    /// answers 500 rather than a distribution a proxy would refuse.
    #[test]
    fn a_rule_whose_weights_are_all_zero_fails_with_500() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes");
        let route =
            std::fs::read_to_string(dir.join("accepted-httproute-gateway-zero-weights.response.json"))
                .expect("fixture");
        // Next to the fixtures' voting-route on the same Service port.
        let index = index(&[&route]);
        let p = get(&index, svc("voting-svc", 8080)).expect("voting-svc");
        let routes = http_routes(&p);
        let zero = routes
            .iter()
            .find(|r| name(&r.metadata).ends_with("/voting-zero-weights"))
            .expect("the zero-weights route");
        assert_eq!(
            backends(&zero.rules[0]),
            [(0, "default:invalid".into(), Some(format!("500 {ZERO_WEIGHTS}")))]
        );
    }

    #[test]
    fn protocols_from_opaque_ports_and_app_protocol() {
        let index = index(&[PROTOCOLS]);
        for port in [5432, 443, 9000] {
            let p = get(&index, svc("db", port)).expect("db");
            let proxy_protocol::Kind::Opaque(o) = kind(&p) else { panic!("{port}: {:?}", kind(&p)) };
            assert_eq!(name(&o.routes[0].metadata), "default:opaq");
        }
        let p = get(&index, svc("db", 80)).expect("db");
        assert!(matches!(kind(&p), proxy_protocol::Kind::Http1(_)), "{:?}", kind(&p));
    }

    /// StaticEndpoints are addressed like Services: the same policy, its
    /// `opaquePorts` making a port opaque.
    #[test]
    fn static_endpoints_are_served_like_services() {
        let statics = r#"
apiVersion: weft.io/v1alpha1
kind: StaticEndpoints
metadata: {name: legacy, namespace: emojivoto}
spec:
  opaquePorts: "5432"
  ports:
  - {port: 80, endpoints: [{address: "192.0.2.10:8080"}]}
  - {port: 5432, endpoints: [{address: "192.0.2.10:5432"}]}
"#;
        let index = index(&[statics]);
        let p = get(&index, svc("legacy", 80)).expect("legacy");
        assert_eq!(name(&p.metadata), "core:Service:emojivoto/legacy:80");
        let routes = http_routes(&p);
        assert_eq!(
            backends(&routes[0].rules[0]),
            [(0, "legacy.emojivoto.svc.cluster.local:80".into(), None)]
        );
        let db = get(&index, svc("legacy", 5432)).expect("legacy:5432");
        assert!(matches!(kind(&db), proxy_protocol::Kind::Opaque(_)), "{:?}", kind(&db));
    }

    const GRPC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: emoji-svc, namespace: emojivoto}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: grpc, port: 8080}]
"#;

    /// The fixture's GRPCRoute on emoji-svc: exact method matches, Linkerd's
    /// gRPC retry conditions, limit and timeout.
    #[test]
    fn the_fixture_grpc_route() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes");
        let routes =
            std::fs::read_to_string(dir.join("grpcroutes.gateway.networking.k8s.io-emojivoto.list.json"))
                .expect("fixture");
        let index = index(&[GRPC, &routes]);
        let p = get(&index, svc("emoji-svc", 8080)).expect("emoji-svc");
        let proxy_protocol::Kind::Grpc(g) = kind(&p) else { panic!("{:?}", kind(&p)) };
        assert_eq!(g.routes.len(), 1);
        let route = &g.routes[0];
        assert_eq!(name(&route.metadata), "gateway.networking.k8s.io:GRPCRoute:emojivoto/emoji-route");
        let methods: Vec<_> = route
            .rules
            .iter()
            .map(|r| r.matches[0].rpc.as_ref().map(|m| (m.service.clone(), m.method.clone())).expect("rpc"))
            .collect();
        assert_eq!(
            methods,
            [
                ("emojivoto.v1.EmojiService".to_owned(), "FindByShortcode".to_owned()),
                ("emojivoto.v1.EmojiService".to_owned(), "ListAll".to_owned())
            ]
        );
        let rule = &route.rules[0];
        let retry = rule.retry.as_ref().expect("retry");
        let c = retry.conditions.as_ref().expect("conditions");
        assert!(c.internal && c.unavailable && !c.cancelled && !c.deadine_exceeded && !c.resource_exhausted);
        assert_eq!(retry.max_retries, 3);
        assert_eq!(secs(&rule.timeouts.as_ref().expect("timeouts").request), Some(0.5));
        let Some(pb::grpc_route::distribution::Kind::RandomAvailable(r)) =
            rule.backends.as_ref().and_then(|d| d.kind.as_ref())
        else {
            panic!()
        };
        let b = r.backends[0].backend.as_ref().and_then(|b| b.backend.as_ref()).expect("backend");
        assert_eq!(name(&b.metadata), "core:Service:emojivoto/emoji-svc:8080");
    }

    #[test]
    fn a_grpc_route_with_a_regex_method_is_refused() {
        let bad = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: bad, namespace: emojivoto}
spec:
  parentRefs: [{group: core, kind: Service, name: emoji-svc}]
  rules: [{matches: [{method: {type: RegularExpression, service: "emojivoto\\..*"}}]}]
"#;
        let (parsed, problems) = parse_manifests(bad, &MeshConfig::default());
        assert!(parsed.expect("the file parses").is_empty());
        assert!(problems[0].contains("GRPCRoute method match"), "{problems:?}");
    }

    /// A pod IP: a Forward backend with the pod's identity (voting-0 is
    /// meshed); unknown IPs and names outside the cluster: nothing
    /// (NOT_FOUND).
    #[test]
    fn pods_unknown_addresses_and_external_names() {
        let index = index(&[]);
        let p = get(&index, Target::Ip("10.42.0.31:8080".parse().unwrap())).expect("voting-0");
        assert_eq!(name(&p.metadata), "default:forward");
        let routes = http_routes(&p);
        let Some(Dist::FirstAvailable(f)) =
            routes[0].rules[0].backends.as_ref().and_then(|d| d.kind.as_ref())
        else {
            panic!()
        };
        let Some(backend::Kind::Forward(addr)) = &f.backends[0].backend.as_ref().expect("backend").kind
        else {
            panic!()
        };
        assert_eq!(
            addr.addr.map(SocketAddr::try_from).and_then(Result::ok),
            Some("10.42.0.31:8080".parse().unwrap())
        );
        let id = addr.tls_identity.as_ref().expect("voting-0 is meshed");
        assert!(matches!(&id.strategy,
            Some(destination::tls_identity::Strategy::DnsLikeIdentity(n))
                if n.name == "voting.emojivoto.serviceaccount.identity.weft.cluster.local"));
        // voting-1 is not meshed: no identity.
        let p = get(&index, Target::Ip("10.42.1.32:8080".parse().unwrap())).expect("voting-1");
        let routes = http_routes(&p);
        let Some(Dist::FirstAvailable(f)) =
            routes[0].rules[0].backends.as_ref().and_then(|d| d.kind.as_ref())
        else {
            panic!()
        };
        let Some(backend::Kind::Forward(addr)) = &f.backends[0].backend.as_ref().expect("backend").kind
        else {
            panic!()
        };
        assert!(addr.tls_identity.is_none());

        assert_eq!(get(&index, Target::Ip("192.0.2.1:80".parse().unwrap())), None);
        assert_eq!(get(&index, Target::External), None);
        assert_eq!(get(&index, svc("nope", 80)), None);
    }

    /// A route with a regex that does not compile is refused as a whole: the
    /// Service keeps its default route rather than a route matching more.
    #[test]
    fn an_invalid_regex_route_is_skipped() {
        let bad = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: emojivoto}
spec:
  parentRefs: [{group: core, kind: Service, name: web-svc, port: 80}]
  rules: [{matches: [{path: {type: RegularExpression, value: "/api/(("}}]}]
"#;
        let (parsed, problems) = parse_manifests(bad, &MeshConfig::default());
        assert!(parsed.expect("the file parses").is_empty());
        assert!(problems[0].contains("regex"), "{problems:?}");
        // What the index holds once the route is refused.
        let index = index(&[]);
        assert_eq!(name(&http_routes(&get(&index, svc("web-svc", 80)).unwrap())[0].metadata), "default:http");
    }
    const VOTING_V2: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: voting-v2, namespace: emojivoto}
spec:
  clusterIP: 10.96.0.12
  ports: [{name: grpc, port: 8080, appProtocol: kubernetes.io/h2c}]
"#;

    fn extensions(o: &Outbound) -> Vec<ext::RuleExtension> {
        o.message.extensions.clone().map(|e| e.rules).unwrap_or_default()
    }

    /// The fixture route's RequestMirror (no percent: every request) to
    /// voting-v2: once the Service exists, rule 1 of voting-route carries a
    /// mirror to it; before, the mirror is dropped and said so.
    #[test]
    fn the_fixture_request_mirror_is_an_extension_once_its_service_exists() {
        let without = get_outbound(&index(&[]), svc("voting-svc", 8080)).expect("voting-svc");
        assert!(without.message.extensions.is_none(), "{:?}", without.message.extensions);
        assert_eq!(without.skipped.len(), 1, "{:?}", without.skipped);
        assert!(
            without.skipped[0].contains("HTTPRoute emojivoto/voting-route rule 1")
                && without.skipped[0].contains("voting-v2"),
            "{:?}",
            without.skipped
        );

        let with = get_outbound(&index(&[VOTING_V2]), svc("voting-svc", 8080)).expect("voting-svc");
        assert!(with.skipped.is_empty(), "{:?}", with.skipped);
        let rules = extensions(&with);
        assert_eq!(rules.len(), 1, "{rules:?}");
        let rule = &rules[0];
        // Found by the route's metadata exactly as the policy writes it.
        assert_eq!(rule.route, http_routes(&with.message.policy)[0].metadata);
        assert_eq!(rule.rule_index, 1);
        assert!(rule.url_rewrite.is_none() && rule.hedge.is_none());
        let mirror = &rule.mirrors[0];
        assert_eq!(mirror.ratio, Some(http_proto::Ratio { numerator: 1, denominator: 1 }));
        let b = mirror.backend.as_ref().expect("backend");
        assert_eq!(name(&b.metadata), "core:Service:emojivoto/voting-v2:8080");
        let Some(backend::Kind::Balancer(p2c)) = &b.kind else { panic!("{b:?}") };
        assert!(matches!(p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()),
            Some(backend::endpoint_discovery::Kind::Dst(d)) if d.path == "voting-v2.emojivoto.svc.cluster.local:8080"));
        // The Linkerd message is the same with or without the mirror's Service
        // (its canary backends aside, which now resolve).
        assert_eq!(http_routes(&with.message.policy)[0].rules[1].filters.len(), 1);
    }

    const EXTENDED: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: shop
  namespace: emojivoto
  annotations: {retry.weft.io/hedge-after: 20ms}
spec:
  clusterIP: 10.96.0.13
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-rewrite, namespace: emojivoto, creationTimestamp: "2026-12-03T14:00:00Z"}
spec:
  parentRefs: [{group: core, kind: Service, name: shop, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: shop.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-svc, port: 80}, percent: 25}
    - type: RequestMirror
      requestMirror: {backendRef: {name: voting-svc, port: 8080}, fraction: {numerator: 1, denominator: 3}}
  - matches: [{path: {type: Exact, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: b-hedged
  namespace: emojivoto
  creationTimestamp: "2026-12-03T15:00:00Z"
  annotations: {retry.weft.io/hedge-after: p95}
spec:
  parentRefs: [{group: core, kind: Service, name: shop, port: 80}]
  rules: [{matches: [{path: {type: Exact, value: /hedged}}]}]
"#;

    /// URLRewrite (prefix with hostname, full path), mirrors by percent and
    /// by fraction, and `retry.weft.io/hedge-after` on the route over the
    /// Service's; the Linkerd message carries none of them.
    #[test]
    fn url_rewrites_mirrors_and_hedging_are_extensions() {
        let o =
            get_outbound(&index(&[EXTENDED]), Target::Ip("10.96.0.13:80".parse().unwrap())).expect("shop");
        let routes = http_routes(&o.message.policy);
        let names: Vec<_> = routes.iter().map(|r| name(&r.metadata)).collect();
        assert_eq!(
            names,
            [
                "gateway.networking.k8s.io:HTTPRoute:emojivoto/a-rewrite",
                "gateway.networking.k8s.io:HTTPRoute:emojivoto/b-hedged"
            ]
        );
        assert!(routes[0].rules.iter().all(|r| r.filters.is_empty()), "{:?}", routes[0].rules);
        let rules = extensions(&o);
        let keyed: Vec<_> = rules.iter().map(|r| (name(&r.route), r.rule_index)).collect();
        assert_eq!(
            keyed,
            [
                ("gateway.networking.k8s.io:HTTPRoute:emojivoto/a-rewrite".to_owned(), 0),
                ("gateway.networking.k8s.io:HTTPRoute:emojivoto/a-rewrite".to_owned(), 1),
                ("gateway.networking.k8s.io:HTTPRoute:emojivoto/b-hedged".to_owned(), 0),
            ]
        );
        let prefix = &rules[0];
        let rewrite = prefix.url_rewrite.as_ref().expect("rewrite");
        assert_eq!(rewrite.hostname, "shop.example");
        assert_eq!(
            rewrite.path.as_ref().and_then(|p| p.replace.clone()),
            Some(http_proto::path_modifier::Replace::Prefix("/new".into()))
        );
        let mirrors: Vec<_> = prefix
            .mirrors
            .iter()
            .map(|m| {
                let r = m.ratio.expect("ratio");
                (name(&m.backend.as_ref().expect("backend").metadata), r.numerator, r.denominator)
            })
            .collect();
        assert_eq!(
            mirrors,
            [
                ("core:Service:emojivoto/web-svc:80".to_owned(), 25, 100),
                ("core:Service:emojivoto/voting-svc:8080".to_owned(), 1, 3)
            ]
        );
        // a-rewrite has no hedging of its own: the Service's 20ms.
        assert_eq!(secs(&prefix.hedge.as_ref().expect("the Service's hedge").after), Some(0.02));
        let full = &rules[1];
        assert_eq!(
            full.url_rewrite.as_ref().and_then(|r| r.path.as_ref()).and_then(|p| p.replace.clone()),
            Some(http_proto::path_modifier::Replace::Full("/replaced".into()))
        );
        assert_eq!(full.url_rewrite.as_ref().map(|r| r.hostname.as_str()), Some(""));
        assert_eq!(rules[2].hedge, Some(ext::Hedge { after: None, percentile: 95.0 }));
        assert!(rules[2].mirrors.is_empty() && rules[2].url_rewrite.is_none());
    }

    /// A Service without routes: its hedging applies to `Default{http}`;
    /// without any extension, no field 1000 at all (a Linkerd message).
    #[test]
    fn the_default_route_is_hedged_by_the_service_and_plain_policies_have_no_extensions() {
        let hedged = r#"
apiVersion: v1
kind: Service
metadata:
  name: hedged
  namespace: emojivoto
  annotations: {retry.weft.io/hedge-after: p99.5}
spec:
  clusterIP: 10.96.0.14
  ports: [{name: http, port: 80}]
"#;
        let index = index(&[hedged]);
        let o = get_outbound(&index, svc("hedged", 80)).expect("hedged");
        let rules = extensions(&o);
        assert_eq!(rules.len(), 1);
        assert_eq!((name(&rules[0].route), rules[0].rule_index), ("default:http".to_owned(), 0));
        assert_eq!(rules[0].hedge, Some(ext::Hedge { after: None, percentile: 99.5 }));
        let plain = get_outbound(&index, svc("web-svc", 80)).expect("web-svc");
        assert_eq!(plain.message.extensions, None);
        assert!(plain.skipped.is_empty());
    }

    #[test]
    fn invalid_hedge_after_values_are_problems_and_ignored() {
        for (value, ok) in [
            ("20ms", true),
            ("p95", true),
            ("p50", true),
            ("p99.9", true),
            ("0s", true),
            ("p20", false),
            ("p100", false),
            ("soon", false),
            ("pfast", false),
        ] {
            let a: BTreeMap<String, String> = [(HEDGE_AFTER.to_owned(), value.to_owned())].into();
            let problems = annotation_problems(&a);
            assert_eq!(problems.is_empty(), ok, "{value}: {problems:?}");
            if !ok {
                assert!(problems[0].contains(HEDGE_AFTER) && problems[0].contains(value), "{problems:?}");
                assert!(hedge(&a, &mut Problems::new()).is_none());
            }
        }
        let zero: BTreeMap<String, String> = [(HEDGE_AFTER.to_owned(), "0s".to_owned())].into();
        assert!(hedge(&zero, &mut Problems::new()).is_none(), "0s means no hedging");
    }
}
