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
//! - Linkerd's retry, timeout and failure-accrual annotations.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use linkerd2_proxy_api::{
    destination, grpc_route as grpc_proto, http_route as http_proto,
    meta::{self, metadata},
    outbound::{self as pb, backend, proxy_protocol},
};
use tracing::warn;

use crate::{
    endpoints::{self, Hint},
    index::State,
    model::{parse_go_duration, proto_duration, ObjKey},
    route::{self, BackendRef, Filter, GrpcRouteRec, HttpRouteRec, RuleTimeouts},
    target::Target,
    MeshConfig,
};

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

/// The outbound policy for `target`, or `None` where Linkerd answers
/// `NOT_FOUND`: names outside the cluster domain, Services not in the index,
/// IPs that are neither a Service's cluster IP nor a pod's.
pub fn policy(state: &State, cfg: &MeshConfig, target: &Target) -> Option<pb::OutboundPolicy> {
    match target {
        Target::External => None,
        Target::Service { key, port } => service_policy(state, cfg, key, *port),
        Target::Ip(addr) => match state.service_by_ip(&addr.ip()) {
            Some(svc) => service_policy(state, cfg, &svc.key, addr.port()),
            None => pod_policy(state, *addr),
        },
    }
}

// === Metadata, backends ===

fn default_meta(name: &str) -> meta::Metadata {
    meta::Metadata { kind: Some(metadata::Kind::Default(name.to_owned())) }
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

fn duration_annotation(a: &BTreeMap<String, String>, key: &str, owner: &ObjKey) -> Option<Duration> {
    let v = a.get(key)?;
    match parse_go_duration(v) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => None,
        Err(reason) => {
            warn!(object = %owner, annotation = key, %reason, "ignoring an invalid annotation");
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
    owner: &ObjKey,
) -> Option<http_proto::Timeouts> {
    let request = rule.request.or_else(|| duration_annotation(a, "timeout.linkerd.io/request", owner));
    let response =
        rule.backend_request.or_else(|| duration_annotation(a, "timeout.linkerd.io/response", owner));
    let idle = duration_annotation(a, "timeout.linkerd.io/idle", owner);
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
fn retry_params(a: &BTreeMap<String, String>, owner: &ObjKey) -> Option<RetryParams> {
    if !a.keys().any(|k| k.starts_with("retry.linkerd.io/")) {
        return None;
    }
    let limit = match a.get("retry.linkerd.io/limit").map(|v| v.trim().parse::<u32>()) {
        None => RETRY_LIMIT,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            warn!(object = %owner, annotation = "retry.linkerd.io/limit", "ignoring an invalid annotation");
            RETRY_LIMIT
        }
    };
    Some(RetryParams {
        limit,
        timeout: duration_annotation(a, "retry.linkerd.io/timeout", owner),
        backoff: pb::ExponentialBackoff {
            min_backoff: Some(proto_duration(RETRY_MIN_BACKOFF)),
            max_backoff: Some(proto_duration(RETRY_MAX_BACKOFF)),
            jitter_ratio: 1.0,
            respect_retry_after_hint: false,
        },
    })
}

/// `retry.linkerd.io/http`: `5xx`, `gateway-error`, `429`, `500-504`, ...
fn http_retry(a: &BTreeMap<String, String>, owner: &ObjKey) -> Option<pb::http_route::Retry> {
    use pb::http_route::retry::{conditions::StatusRange, Conditions};
    let p = retry_params(a, owner)?;
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
                _ => warn!(object = %owner, entry = item, "ignoring an invalid retry.linkerd.io/http entry"),
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
fn grpc_retry(a: &BTreeMap<String, String>, owner: &ObjKey) -> Option<pb::grpc_route::Retry> {
    let p = retry_params(a, owner)?;
    let conditions = a.get("retry.linkerd.io/grpc").map(|v| {
        let mut c = pb::grpc_route::retry::Conditions::default();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.to_ascii_lowercase().as_str() {
                "cancelled" => c.cancelled = true,
                "deadline-exceeded" => c.deadine_exceeded = true,
                "resource-exhausted" => c.resource_exhausted = true,
                "internal" => c.internal = true,
                "unavailable" => c.unavailable = true,
                _ => warn!(object = %owner, entry = item, "ignoring an invalid retry.linkerd.io/grpc entry"),
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
fn failure_accrual(a: &BTreeMap<String, String>, owner: &ObjKey) -> Option<pb::FailureAccrual> {
    const KEY: &str = "balancer.linkerd.io/failure-accrual";
    match a.get(KEY).map(|v| v.trim()) {
        None => return None,
        Some("consecutive") => {}
        Some(other) => {
            warn!(object = %owner, annotation = KEY, value = other, "ignoring an unknown failure accrual kind");
            return None;
        }
    }
    let key = |suffix: &str| format!("{KEY}-consecutive-{suffix}");
    let max_failures = match a.get(&key("max-failures")).map(|v| v.trim().parse::<u32>()) {
        None => ACCRUAL_MAX_FAILURES,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            warn!(object = %owner, annotation = %key("max-failures"), "ignoring an invalid annotation");
            ACCRUAL_MAX_FAILURES
        }
    };
    let min = duration_annotation(a, &key("min-penalty"), owner).unwrap_or(ACCRUAL_MIN_PENALTY);
    let max = duration_annotation(a, &key("max-penalty"), owner).unwrap_or(ACCRUAL_MAX_PENALTY).max(min);
    let jitter_ratio = match a.get(&key("jitter-ratio")).map(|v| v.trim().parse::<f32>()) {
        None => ACCRUAL_JITTER,
        Some(Ok(j)) if (0.0..=100.0).contains(&j) => j,
        Some(_) => {
            warn!(object = %owner, annotation = %key("jitter-ratio"), "ignoring an invalid annotation");
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

/// One rule's backends: the parent Service itself when the rule names none.
fn http_distribution(
    state: &State,
    cfg: &MeshConfig,
    backends: &[BackendRef],
    default: &pb::Backend,
    port: u16,
) -> pb::http_route::Distribution {
    use pb::http_route::{distribution, RouteBackend, WeightedRouteBackend};
    let kind = if backends.is_empty() {
        distribution::Kind::FirstAvailable(distribution::FirstAvailable {
            backends: vec![RouteBackend { backend: Some(default.clone()), ..Default::default() }],
        })
    } else {
        distribution::Kind::RandomAvailable(distribution::RandomAvailable {
            backends: backends
                .iter()
                .map(|b| {
                    let (backend, filters) = match resolve_backend(state, cfg, b, port) {
                        Ok(backend) => (backend, Vec::new()),
                        Err(message) => (invalid_backend(), vec![http_failure(message)]),
                    };
                    WeightedRouteBackend {
                        weight: b.weight,
                        backend: Some(RouteBackend { backend: Some(backend), filters, ..Default::default() }),
                    }
                })
                .collect(),
        })
    };
    pb::http_route::Distribution { kind: Some(kind) }
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
    let retry =
        http_retry(annotation_group(&r.annotations, service_annotations, "retry.linkerd.io/"), &r.key);
    pb::HttpRoute {
        metadata: Some(meta::Metadata {
            kind: Some(metadata::Kind::Resource(meta::Resource {
                group: r.group.clone(),
                kind: "HTTPRoute".into(),
                name: r.key.name.clone(),
                namespace: r.key.namespace.clone(),
                ..Default::default()
            })),
        }),
        hosts: route::proto_hosts(&r.hostnames),
        rules: r
            .rules
            .iter()
            .map(|rule| pb::http_route::Rule {
                matches: rule.matches.iter().map(route::proto_match).collect(),
                filters: rule.filters.iter().filter_map(http_filter).collect(),
                backends: Some(http_distribution(state, cfg, &rule.backends, default, port)),
                timeouts: timeouts(timeout_annotations, &rule.timeouts, &r.key),
                retry: retry.clone(),
                ..Default::default()
            })
            .collect(),
    }
}

/// `Default{http}`: every request to the Service itself, under the
/// Service's retry and timeout annotations.
fn default_http_route(
    service: &ObjKey,
    a: &BTreeMap<String, String>,
    default: &pb::Backend,
) -> pb::HttpRoute {
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
            timeouts: timeouts(a, &RuleTimeouts::default(), service),
            retry: http_retry(a, service),
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

fn grpc_distribution(
    state: &State,
    cfg: &MeshConfig,
    backends: &[BackendRef],
    default: &pb::Backend,
    port: u16,
) -> pb::grpc_route::Distribution {
    use pb::grpc_route::{distribution, RouteBackend, WeightedRouteBackend};
    let kind = if backends.is_empty() {
        distribution::Kind::FirstAvailable(distribution::FirstAvailable {
            backends: vec![RouteBackend { backend: Some(default.clone()), ..Default::default() }],
        })
    } else {
        distribution::Kind::RandomAvailable(distribution::RandomAvailable {
            backends: backends
                .iter()
                .map(|b| {
                    let (backend, filters) = match resolve_backend(state, cfg, b, port) {
                        Ok(backend) => (backend, Vec::new()),
                        // gRPC's INTERNAL (13), as Linkerd answers a missing
                        // backend on a gRPC route.
                        Err(message) => (
                            invalid_backend(),
                            vec![pb::grpc_route::Filter {
                                kind: Some(pb::grpc_route::filter::Kind::FailureInjector(
                                    grpc_proto::GrpcFailureInjector { code: 13, message, ratio: None },
                                )),
                            }],
                        ),
                    };
                    WeightedRouteBackend {
                        weight: b.weight,
                        backend: Some(RouteBackend { backend: Some(backend), filters, ..Default::default() }),
                    }
                })
                .collect(),
        })
    };
    pb::grpc_route::Distribution { kind: Some(kind) }
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
    let retry =
        grpc_retry(annotation_group(&r.annotations, service_annotations, "retry.linkerd.io/"), &r.key);
    pb::GrpcRoute {
        metadata: Some(meta::Metadata {
            kind: Some(metadata::Kind::Resource(meta::Resource {
                group: route::GATEWAY_GROUP.into(),
                kind: "GRPCRoute".into(),
                name: r.key.name.clone(),
                namespace: r.key.namespace.clone(),
                ..Default::default()
            })),
        }),
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
                backends: Some(grpc_distribution(state, cfg, &rule.backends, default, port)),
                timeouts: timeouts(timeout_annotations, &RuleTimeouts::default(), &r.key),
                retry,
                ..Default::default()
            })
            .collect(),
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

fn service_policy(state: &State, cfg: &MeshConfig, key: &ObjKey, port: u16) -> Option<pb::OutboundPolicy> {
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
    let accrual = failure_accrual(annotations, key);

    let grpc_routes = grpc_routes_for(state, key, port);
    let http_routes = || {
        let mut routes: Vec<_> = http_routes_for(state, key, port)
            .into_iter()
            .map(|r| http_route(state, cfg, r, annotations, &default, port))
            .collect();
        if routes.is_empty() {
            routes.push(default_http_route(key, annotations, &default));
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
                http1: Some(proxy_protocol::Http1 {
                    routes: routes.clone(),
                    failure_accrual: accrual,
                }),
                http2: Some(proxy_protocol::Http2 { routes, failure_accrual: accrual }),
            })
        }
    };
    Some(pb::OutboundPolicy {
        metadata: Some(resource_meta(CORE_GROUP, "Service", key, port)),
        protocol: Some(pb::ProxyProtocol { kind: Some(kind) }),
    })
}

/// A pod IP: one `Forward` backend straight to that endpoint, with the pod's
/// identity and protocol hint when it is meshed, so a client dialling a pod
/// directly still gets mTLS. Linkerd answers `NOT_FOUND` here and leaves the
/// proxy to its own fallback; weft gives the answer that fallback would
/// have to rebuild from `GetProfile`.
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
