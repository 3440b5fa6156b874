//! OutboundPolicies' `OutboundPolicy` message → [`OutboundPolicy`].
//!
//! Routes' matches and request filters are the same messages inbound
//! policy has, so they are handed to the inbound decoder (as the routes of
//! a `Server`) rather than decoded twice. weft's extensions (field 1000:
//! mirrors, URL rewrites, hedging) join their rule by the route's metadata
//! and the rule's index, in every table the route is in. Anything
//! malformed, extensions included, rejects the whole message: the caller
//! keeps the policy it had.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue};
use linkerd2_proxy_api::{http_route as api_http, inbound as inbound_api, meta as api_meta, outbound as api};
use weft_api::{self as ext, OutboundPolicyWithExtensions};

use super::{
    BackendFilters, BackendTarget, HeaderModifier, HedgeAfter, HedgePolicy, InjectedFailure, MirrorParams,
    OutboundPolicy, OutboundRoute, ResourceRef, RetryOn, RetryPolicy, RouteTable, RuleParams,
    WeightedBackend,
};
use crate::{
    balance::Accrual,
    discovery::endpoint_from_api,
    policy::{
        decode::{self as inbound_decode, DecodeError},
        filters::{Filter, PathModifier},
        ServerPolicy,
    },
};

type Result<T> = std::result::Result<T, DecodeError>;

/// Bounds on one message, as inbound policy has them.
const MAX_ITEMS: usize = 1024;

fn bounded<T>(items: Vec<T>, what: &'static str) -> Result<Vec<T>> {
    if items.len() > MAX_ITEMS {
        return Err(DecodeError::TooMany(what));
    }
    Ok(items)
}

pub fn policy(pb: OutboundPolicyWithExtensions) -> Result<OutboundPolicy> {
    use api::proxy_protocol::Kind;
    let extensions = Extensions::decode(pb.extensions)?;
    let pb = pb.policy;
    let parent = resource(pb.metadata)?;
    let kind = pb.protocol.and_then(|p| p.kind).ok_or(DecodeError::Missing("protocol"))?;
    let http = |routes: Vec<api::HttpRoute>, accrual| {
        http_table(&parent, routes, failure_accrual(accrual)?, &extensions)
    };
    let (http1, http2) = match kind {
        Kind::Detect(d) => {
            let (h1, h2) = (d.http1.unwrap_or_default(), d.http2.unwrap_or_default());
            (http(h1.routes, h1.failure_accrual)?, http(h2.routes, h2.failure_accrual)?)
        }
        Kind::Http1(h) => {
            let t = http(h.routes, h.failure_accrual)?;
            (t.clone(), t)
        }
        Kind::Http2(h) => {
            let t = http(h.routes, h.failure_accrual)?;
            (t.clone(), t)
        }
        Kind::Grpc(g) => {
            let t = grpc_table(&parent, g.routes, failure_accrual(g.failure_accrual)?, &extensions)?;
            (t.clone(), t)
        }
        // Opaque and TLS routing are not done by policy (yet): the
        // connection goes where discovery says, as before.
        Kind::Opaque(_) | Kind::Tls(_) => (None, None),
    };
    Ok(OutboundPolicy { parent, http1, http2 })
}

fn resource(pb: Option<api_meta::Metadata>) -> Result<ResourceRef> {
    match pb.and_then(|m| m.kind).ok_or(DecodeError::Missing("metadata"))? {
        api_meta::metadata::Kind::Default(name) => {
            Ok(ResourceRef { kind: "default".into(), name: name.into(), ..Default::default() })
        }
        api_meta::metadata::Kind::Resource(r) => Ok(ResourceRef {
            group: r.group.into(),
            kind: r.kind.into(),
            namespace: r.namespace.into(),
            name: r.name.into(),
            port: u16::try_from(r.port).map_err(|_| DecodeError::Invalid("port"))?,
        }),
    }
}

/// weft's extensions of a policy's rules, by route and rule index, checked
/// whole before any table is built.
struct Extensions(HashMap<(ResourceRef, usize), RuleExtension>);

#[derive(Default)]
struct RuleExtension {
    mirrors: Vec<MirrorParams>,
    url_rewrite: Option<(Option<http::uri::Authority>, Option<PathModifier>)>,
    hedge: Option<HedgeAfter>,
}

impl Extensions {
    fn decode(pb: Option<ext::RouteExtensions>) -> Result<Self> {
        let mut rules = HashMap::new();
        for rule in bounded(pb.map(|e| e.rules).unwrap_or_default(), "rule extensions")? {
            let key = (resource(rule.route)?, rule.rule_index as usize);
            let decoded = RuleExtension {
                mirrors: bounded(rule.mirrors, "mirrors")?.into_iter().map(mirror).collect::<Result<_>>()?,
                url_rewrite: rule.url_rewrite.map(url_rewrite).transpose()?,
                hedge: rule.hedge.map(hedge).transpose()?,
            };
            if rules.insert(key, decoded).is_some() {
                return Err(DecodeError::Invalid("two extensions for one rule"));
            }
        }
        Ok(Extensions(rules))
    }

    /// Rule `index` of `route` with its extension; its URL rewrite goes
    /// with its request filters (`filters`, the inbound decoder's).
    fn apply(&self, route: &ResourceRef, index: usize, params: &mut RuleParams, filters: &mut Vec<Filter>) {
        let Some(ext) = self.0.get(&(route.clone(), index)) else { return };
        params.mirrors = ext.mirrors.clone();
        params.hedge = ext.hedge.map(|after| Arc::new(HedgePolicy::new(after)));
        if let Some((host, path)) = &ext.url_rewrite {
            filters.push(Filter::UrlRewrite { host: host.clone(), path: path.clone() });
        }
    }

    /// Joins the extensions to the rules of a table's routes.
    fn join(&self, routes: &mut [OutboundRoute], matcher: &mut ServerPolicy) {
        if self.0.is_empty() {
            return;
        }
        for (route, inbound) in routes.iter_mut().zip(&mut matcher.routes) {
            for (i, (params, rule)) in route.rules.iter_mut().zip(&mut inbound.rules).enumerate() {
                self.apply(&route.meta, i, params, &mut rule.filters);
            }
        }
    }
}

fn mirror(pb: ext::Mirror) -> Result<MirrorParams> {
    let (numerator, denominator) = ratio(pb.ratio)?;
    let WeightedBackend { meta, target, .. } = backend(pb.backend, BackendFilters::default(), 0)?;
    Ok(MirrorParams { backend: meta, target, numerator, denominator })
}

fn url_rewrite(pb: ext::UrlRewrite) -> Result<(Option<http::uri::Authority>, Option<PathModifier>)> {
    use api_http::path_modifier::Replace;
    let host = match pb.hostname.as_str() {
        "" => None,
        h => Some(h.parse().map_err(|_| DecodeError::Invalid("rewrite hostname"))?),
    };
    let path = match pb.path.map(|p| p.replace) {
        None => None,
        Some(None) => return Err(DecodeError::Missing("rewrite path")),
        Some(Some(Replace::Full(p) | Replace::Prefix(p)))
            if !p.starts_with('/') || p.parse::<http::uri::PathAndQuery>().is_err() =>
        {
            return Err(DecodeError::Invalid("rewrite path"))
        }
        Some(Some(Replace::Full(p))) => Some(PathModifier::Full(p)),
        Some(Some(Replace::Prefix(p))) => Some(PathModifier::Prefix(p)),
    };
    Ok((host, path))
}

/// Exactly one of a positive delay or a percentile strictly between 0 and
/// 100.
fn hedge(pb: ext::Hedge) -> Result<HedgeAfter> {
    match (pb.after, pb.percentile) {
        (Some(after), 0.0) => match Duration::try_from(after) {
            Ok(d) if !d.is_zero() => Ok(HedgeAfter::Fixed(d)),
            _ => Err(DecodeError::Invalid("hedge delay")),
        },
        (None, p) if p > 0.0 && p < 100.0 => Ok(HedgeAfter::Percentile(p)),
        _ => Err(DecodeError::Invalid("hedge")),
    }
}

/// The inbound decoder's view of our routes: a `Server` whose routes carry
/// the matches and request filters.
fn matcher(parent: &ResourceRef, protocol: inbound_api::proxy_protocol::Kind) -> Result<ServerPolicy> {
    let labels = [("group", &parent.group), ("kind", &parent.kind), ("name", &parent.name)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), if v.is_empty() { "outbound".to_string() } else { v.to_string() }))
        .collect();
    let server = inbound_api::Server {
        protocol: Some(inbound_api::ProxyProtocol { kind: Some(protocol) }),
        labels,
        ..Default::default()
    };
    inbound_decode::server(server)
}

/// Consecutive-failures accrual (`balancer.linkerd.io/failure-accrual:
/// consecutive`); none set, the balancer's default.
fn failure_accrual(pb: Option<api::FailureAccrual>) -> Result<Option<Accrual>> {
    use api::failure_accrual::Kind;
    let (max_failures, backoff) = match pb.and_then(|a| a.kind) {
        None => return Ok(None),
        Some(Kind::ConsecutiveFailures(c)) => (c.max_failures, c.backoff),
        Some(Kind::Unified(u)) => (u.max_consecutive_failures, u.backoff),
    };
    if max_failures == 0 {
        return Err(DecodeError::Invalid("failure accrual max failures"));
    }
    let duration = |d: Option<prost_types::Duration>| {
        d.map(|d| Duration::try_from(d).map_err(|_| DecodeError::Invalid("failure accrual backoff")))
            .transpose()
    };
    let defaults = Accrual::default();
    let (min_penalty, max_penalty) = match backoff {
        None => (defaults.min_penalty, defaults.max_penalty),
        Some(b) => {
            let min = duration(b.min_backoff)?.unwrap_or(defaults.min_penalty);
            (min, duration(b.max_backoff)?.unwrap_or(defaults.max_penalty).max(min))
        }
    };
    Ok(Some(Accrual { max_failures, min_penalty, max_penalty }))
}

fn http_table(
    parent: &ResourceRef,
    routes: Vec<api::HttpRoute>,
    accrual: Option<Accrual>,
    extensions: &Extensions,
) -> Result<Option<Arc<RouteTable>>> {
    let routes = bounded(routes, "routes")?;
    if routes.is_empty() {
        return Ok(None);
    }
    let mut inbound_routes = Vec::with_capacity(routes.len());
    let mut params = Vec::with_capacity(routes.len());
    for route in routes {
        let meta = resource(route.metadata.clone())?;
        let (inbound_rules, rules) = bounded(route.rules, "rules")?
            .into_iter()
            .map(http_rule)
            .collect::<Result<(Vec<_>, Vec<_>)>>()?;
        inbound_routes.push(inbound_api::HttpRoute {
            metadata: route.metadata,
            hosts: route.hosts,
            authorizations: vec![],
            rules: inbound_rules,
        });
        params.push(OutboundRoute { meta, rules });
    }
    let kind = inbound_api::proxy_protocol::Kind::Http1(inbound_api::proxy_protocol::Http1 {
        routes: inbound_routes,
        local_rate_limit: None,
    });
    let mut matcher = matcher(parent, kind)?;
    extensions.join(&mut params, &mut matcher);
    Ok(Some(Arc::new(RouteTable {
        parent: parent.clone(),
        matcher: Arc::new(matcher),
        routes: params,
        accrual,
    })))
}

/// A rule's matches and request filters in the inbound shape, and the rest.
fn http_rule(rule: api::http_route::Rule) -> Result<(inbound_api::http_route::Rule, RuleParams)> {
    use api::http_route::filter::Kind as F;
    use inbound_api::http_route::filter::Kind as InF;
    let mut filters = Vec::new();
    let mut response_headers = None;
    for f in bounded(rule.filters, "filters")? {
        let kind = match f.kind.ok_or(DecodeError::Missing("filter"))? {
            F::FailureInjector(f) => InF::FailureInjector(f),
            F::RequestHeaderModifier(m) => InF::RequestHeaderModifier(m),
            F::Redirect(r) => InF::Redirect(r),
            F::ResponseHeaderModifier(m) => {
                response_headers = Some(response_header_modifier(m)?);
                continue;
            }
        };
        filters.push(inbound_api::http_route::Filter { kind: Some(kind) });
    }
    let retry = match rule.retry {
        None => None,
        Some(r) => {
            // Without conditions (only a limit or timeout set), a try is
            // retried when it gets no response or times out.
            let ranges = r.conditions.map(|c| c.status_ranges).unwrap_or_default();
            let ranges = bounded(ranges, "retry status ranges")?
                .into_iter()
                .map(|s| match (u16::try_from(s.start), u16::try_from(s.end)) {
                    (Ok(lo), Ok(hi)) if lo <= hi && (100..=599).contains(&lo) && hi <= 599 => Ok((lo, hi)),
                    _ => Err(DecodeError::Invalid("retry status range")),
                })
                .collect::<Result<_>>()?;
            retry_policy(r.max_retries, r.max_request_bytes, RetryOn::Statuses(ranges), r.timeout, r.backoff)?
        }
    };
    let params = RuleParams {
        timeout: timeout(rule.timeouts)?,
        backends: http_distribution(rule.backends.map(|d| d.kind))?,
        response_headers,
        retry,
        ..Default::default()
    };
    Ok((inbound_api::http_route::Rule { matches: rule.matches, filters }, params))
}

fn grpc_table(
    parent: &ResourceRef,
    routes: Vec<api::GrpcRoute>,
    accrual: Option<Accrual>,
    extensions: &Extensions,
) -> Result<Option<Arc<RouteTable>>> {
    let routes = bounded(routes, "routes")?;
    if routes.is_empty() {
        return Ok(None);
    }
    let mut inbound_routes = Vec::with_capacity(routes.len());
    let mut params = Vec::with_capacity(routes.len());
    for route in routes {
        let meta = resource(route.metadata.clone())?;
        let (inbound_rules, rules) = bounded(route.rules, "rules")?
            .into_iter()
            .map(grpc_rule)
            .collect::<Result<(Vec<_>, Vec<_>)>>()?;
        inbound_routes.push(inbound_api::GrpcRoute {
            metadata: route.metadata,
            hosts: route.hosts,
            authorizations: vec![],
            rules: inbound_rules,
        });
        params.push(OutboundRoute { meta, rules });
    }
    let kind =
        inbound_api::proxy_protocol::Kind::Grpc(inbound_api::proxy_protocol::Grpc { routes: inbound_routes });
    let mut matcher = matcher(parent, kind)?;
    extensions.join(&mut params, &mut matcher);
    Ok(Some(Arc::new(RouteTable {
        parent: parent.clone(),
        matcher: Arc::new(matcher),
        routes: params,
        accrual,
    })))
}

fn grpc_rule(rule: api::grpc_route::Rule) -> Result<(inbound_api::grpc_route::Rule, RuleParams)> {
    use api::grpc_route::filter::Kind as F;
    use inbound_api::grpc_route::filter::Kind as InF;
    let filters = bounded(rule.filters, "filters")?
        .into_iter()
        .map(|f| {
            let kind = match f.kind.ok_or(DecodeError::Missing("filter"))? {
                F::FailureInjector(f) => InF::FailureInjector(f),
                F::RequestHeaderModifier(m) => InF::RequestHeaderModifier(m),
            };
            Ok(inbound_api::grpc_route::Filter { kind: Some(kind) })
        })
        .collect::<Result<_>>()?;
    let retry = match rule.retry {
        None => None,
        Some(r) => {
            let c = r.conditions.unwrap_or_default();
            let codes = [
                (c.cancelled, 1),
                (c.deadine_exceeded, 4),
                (c.resource_exhausted, 8),
                (c.internal, 13),
                (c.unavailable, 14),
            ]
            .into_iter()
            .filter_map(|(on, code)| on.then_some(code))
            .collect();
            retry_policy(r.max_retries, r.max_request_bytes, RetryOn::Grpc(codes), r.timeout, r.backoff)?
        }
    };
    let params = RuleParams {
        timeout: timeout(rule.timeouts)?,
        backends: grpc_distribution(rule.backends.map(|d| d.kind))?,
        response_headers: None,
        retry,
        ..Default::default()
    };
    Ok((inbound_api::grpc_route::Rule { matches: rule.matches, filters }, params))
}

/// Requests held for replay by default (Linkerd's), and at most.
const DEFAULT_RETRY_BODY: usize = 64 * 1024;
const MAX_RETRY_BODY: usize = 1024 * 1024;
/// Retries beyond this are refused (a policy asking for more is malformed).
const MAX_RETRIES: u32 = 100;

fn retry_policy(
    max_retries: u32,
    max_request_bytes: u32,
    on: RetryOn,
    per_try_timeout: Option<prost_types::Duration>,
    backoff: Option<api::ExponentialBackoff>,
) -> Result<Option<Arc<RetryPolicy>>> {
    if max_retries > MAX_RETRIES {
        return Err(DecodeError::Invalid("retry limit"));
    }
    let duration =
        |d: prost_types::Duration, what| Duration::try_from(d).map_err(|_| DecodeError::Invalid(what));
    let per_try_timeout = match per_try_timeout {
        None => None,
        Some(d) => Some(duration(d, "retry timeout")?).filter(|d| !d.is_zero()),
    };
    let backoff = match backoff {
        None => None,
        Some(b) => {
            let min = b.min_backoff.map(|d| duration(d, "retry backoff")).transpose()?.unwrap_or_default();
            let max = b.max_backoff.map(|d| duration(d, "retry backoff")).transpose()?.unwrap_or(min);
            Some((min, max.max(min)))
        }
    };
    let max_request_bytes = match max_request_bytes as usize {
        0 => DEFAULT_RETRY_BODY,
        n => n.min(MAX_RETRY_BODY),
    };
    Ok(Some(Arc::new(RetryPolicy { max_retries, max_request_bytes, on, per_try_timeout, backoff })))
}

fn timeout(pb: Option<api_http::Timeouts>) -> Result<Option<Duration>> {
    match pb.and_then(|t| t.request) {
        None => Ok(None),
        Some(d) => {
            let d = Duration::try_from(d).map_err(|_| DecodeError::Invalid("request timeout"))?;
            Ok(Some(d).filter(|d| !d.is_zero()))
        }
    }
}

/// Request and response header modifiers are the same message under two
/// names.
fn response_header_modifier(pb: api_http::ResponseHeaderModifier) -> Result<HeaderModifier> {
    header_modifier(api_http::RequestHeaderModifier { add: pb.add, set: pb.set, remove: pb.remove })
}

fn header_modifier(pb: api_http::RequestHeaderModifier) -> Result<HeaderModifier> {
    let pairs = |headers: Option<linkerd2_proxy_api::http_types::Headers>| {
        bounded(headers.map(|h| h.headers).unwrap_or_default(), "headers")?
            .into_iter()
            .map(|h| {
                Ok((
                    HeaderName::try_from(h.name).map_err(|_| DecodeError::Invalid("header name"))?,
                    HeaderValue::try_from(h.value).map_err(|_| DecodeError::Invalid("header value"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()
    };
    Ok(HeaderModifier {
        add: pairs(pb.add)?,
        set: pairs(pb.set)?,
        remove: bounded(pb.remove, "headers")?
            .into_iter()
            .map(|n| HeaderName::try_from(n).map_err(|_| DecodeError::Invalid("header name")))
            .collect::<Result<_>>()?,
    })
}

/// A rule's backends. FirstAvailable takes its first backend (no
/// availability tracking yet); Empty means no backend. HTTP and gRPC rules
/// have the same messages under different names.
macro_rules! distribution {
    ($name:ident, $module:ident, $filters:ident) => {
        fn $name(pb: Option<Option<api::$module::distribution::Kind>>) -> Result<Vec<WeightedBackend>> {
            use api::$module::distribution::Kind;
            let backend =
                |b: api::$module::RouteBackend, weight| backend(b.backend, $filters(b.filters)?, weight);
            match pb.flatten().ok_or(DecodeError::Missing("backends"))? {
                Kind::Empty(_) => Ok(vec![]),
                Kind::FirstAvailable(f) => {
                    bounded(f.backends, "backends")?.into_iter().take(1).map(|b| backend(b, 1)).collect()
                }
                Kind::RandomAvailable(r) => bounded(r.backends, "backends")?
                    .into_iter()
                    .map(|b| backend(b.backend.ok_or(DecodeError::Missing("backend"))?, b.weight))
                    .collect(),
            }
        }
    };
}

distribution!(http_distribution, http_route, http_backend_filters);
distribution!(grpc_distribution, grpc_route, grpc_backend_filters);

fn ratio(r: Option<api_http::Ratio>) -> Result<(u32, u32)> {
    match r {
        None => Ok((1, 1)),
        Some(r) if r.denominator == 0 || r.numerator > r.denominator => Err(DecodeError::Invalid("ratio")),
        Some(r) => Ok((r.numerator, r.denominator)),
    }
}

/// A backend's own filters: header changes and failures (how the control
/// plane fails a backend it cannot resolve). Redirects and response header
/// changes on a backend are not applied.
fn http_backend_filters(pb: Vec<api::http_route::Filter>) -> Result<BackendFilters> {
    use api::http_route::filter::Kind;
    let mut filters = BackendFilters::default();
    for f in bounded(pb, "backend filters")? {
        match f.kind.ok_or(DecodeError::Missing("backend filter"))? {
            Kind::RequestHeaderModifier(m) => filters.request_headers = Some(header_modifier(m)?),
            Kind::FailureInjector(f) => {
                let status = u16::try_from(f.status)
                    .ok()
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .ok_or(DecodeError::Invalid("failure status"))?;
                let (numerator, denominator) = ratio(f.ratio)?;
                filters.failure =
                    Some(InjectedFailure { status, message: f.message, numerator, denominator });
            }
            Kind::Redirect(_) | Kind::ResponseHeaderModifier(_) => {}
        }
    }
    Ok(filters)
}

fn grpc_backend_filters(pb: Vec<api::grpc_route::Filter>) -> Result<BackendFilters> {
    use api::grpc_route::filter::Kind;
    let mut filters = BackendFilters::default();
    for f in bounded(pb, "backend filters")? {
        match f.kind.ok_or(DecodeError::Missing("backend filter"))? {
            Kind::RequestHeaderModifier(m) => filters.request_headers = Some(header_modifier(m)?),
            Kind::FailureInjector(f) => {
                // The proxy answers a gRPC request's failure with the gRPC
                // status of an HTTP one (errors.rs); pick the HTTP status
                // whose gRPC status is the one asked for.
                let status = match f.code {
                    4 => http::StatusCode::GATEWAY_TIMEOUT,
                    5 => http::StatusCode::NOT_FOUND,
                    7 => http::StatusCode::FORBIDDEN,
                    8 => http::StatusCode::TOO_MANY_REQUESTS,
                    13 => http::StatusCode::BAD_REQUEST,
                    _ => http::StatusCode::SERVICE_UNAVAILABLE,
                };
                let (numerator, denominator) = ratio(f.ratio)?;
                filters.failure =
                    Some(InjectedFailure { status, message: f.message, numerator, denominator });
            }
        }
    }
    Ok(filters)
}

fn backend(pb: Option<api::Backend>, filters: BackendFilters, weight: u32) -> Result<WeightedBackend> {
    use api::backend::{endpoint_discovery::Kind as Discovery, Kind};
    let pb = pb.ok_or(DecodeError::Missing("backend"))?;
    let meta = resource(pb.metadata)?;
    let target = match pb.kind {
        None => BackendTarget::Invalid,
        Some(Kind::Forward(addr)) => {
            let (addr, meta) = endpoint_from_api(addr).ok_or(DecodeError::Invalid("forward address"))?;
            BackendTarget::Forward(addr, meta)
        }
        Some(Kind::Balancer(p2c)) => {
            let Discovery::Dst(dst) =
                p2c.discovery.and_then(|d| d.kind).ok_or(DecodeError::Missing("balancer discovery"))?;
            if dst.path.is_empty() {
                return Err(DecodeError::Missing("balancer discovery path"));
            }
            BackendTarget::Balance(dst.path.into())
        }
    };
    Ok(WeightedBackend { weight, meta, target, filters })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound_policy::RetryOn;

    fn service() -> Option<api_meta::Metadata> {
        Some(api_meta::Metadata {
            kind: Some(api_meta::metadata::Kind::Resource(api_meta::Resource {
                group: "core".into(),
                kind: "Service".into(),
                name: "web".into(),
                namespace: "test".into(),
                section: String::new(),
                port: 80,
            })),
        })
    }

    fn grpc_with_retry(conditions: api::grpc_route::retry::Conditions) -> api::OutboundPolicy {
        use api::grpc_route as gr;
        let backend = api::Backend {
            metadata: service(),
            queue: None,
            kind: Some(api::backend::Kind::Balancer(api::backend::BalanceP2c {
                discovery: Some(api::backend::EndpointDiscovery {
                    kind: Some(api::backend::endpoint_discovery::Kind::Dst(
                        api::backend::endpoint_discovery::DestinationGet {
                            path: "web.test.svc.cluster.local:80".into(),
                        },
                    )),
                }),
                load: None,
            })),
        };
        let rule = gr::Rule {
            backends: Some(gr::Distribution {
                kind: Some(gr::distribution::Kind::FirstAvailable(gr::distribution::FirstAvailable {
                    backends: vec![gr::RouteBackend { backend: Some(backend), ..Default::default() }],
                })),
            }),
            retry: Some(gr::Retry { max_retries: 3, conditions: Some(conditions), ..Default::default() }),
            ..Default::default()
        };
        api::OutboundPolicy {
            metadata: service(),
            protocol: Some(api::ProxyProtocol {
                kind: Some(api::proxy_protocol::Kind::Grpc(api::proxy_protocol::Grpc {
                    routes: vec![api::GrpcRoute { metadata: service(), hosts: vec![], rules: vec![rule] }],
                    failure_accrual: None,
                })),
            }),
        }
    }

    #[test]
    fn grpc_retry_conditions_become_status_codes() {
        let conditions =
            api::grpc_route::retry::Conditions { unavailable: true, cancelled: true, ..Default::default() };
        let policy = policy(plain(grpc_with_retry(conditions))).unwrap();
        let retry = policy.http2.unwrap().routes[0].rules[0].retry.clone().unwrap();
        assert!(matches!(&retry.on, RetryOn::Grpc(codes) if codes == &[1, 14]));
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(retry.on.is_retryable(&headers, http::StatusCode::OK));
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert!(!retry.on.is_retryable(&headers, http::StatusCode::OK));
        assert!(!retry.on.is_retryable(&http::HeaderMap::new(), http::StatusCode::OK));
    }

    #[test]
    fn a_retry_without_conditions_retries_only_failures_to_answer_and_too_many_is_malformed() {
        let mut pb = grpc_with_retry(Default::default());
        if let Some(api::proxy_protocol::Kind::Grpc(g)) = pb.protocol.as_mut().and_then(|p| p.kind.as_mut()) {
            g.routes[0].rules[0].retry.as_mut().unwrap().conditions = None;
        }
        let retry = policy(plain(pb)).unwrap().http2.unwrap().routes[0].rules[0].retry.clone().unwrap();
        assert!(matches!(&retry.on, RetryOn::Grpc(codes) if codes.is_empty()));
        let mut pb = grpc_with_retry(Default::default());
        if let Some(api::proxy_protocol::Kind::Grpc(g)) = pb.protocol.as_mut().and_then(|p| p.kind.as_mut()) {
            g.routes[0].rules[0].retry.as_mut().unwrap().max_retries = 1_000_000;
        }
        assert!(policy(plain(pb)).is_err());
    }

    fn plain(policy: api::OutboundPolicy) -> OutboundPolicyWithExtensions {
        OutboundPolicyWithExtensions { policy, extensions: None }
    }

    fn route_meta(name: &str) -> Option<api_meta::Metadata> {
        Some(api_meta::Metadata {
            kind: Some(api_meta::metadata::Kind::Resource(api_meta::Resource {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
                name: name.into(),
                namespace: "test".into(),
                ..Default::default()
            })),
        })
    }

    /// Detect with two HTTP routes of two rules each, in both tables.
    fn detect() -> api::OutboundPolicy {
        use api::http_route as hr;
        let backend = Some(grpc_backend());
        let rule = |prefix: &str| hr::Rule {
            matches: vec![api_http::HttpRouteMatch {
                path: Some(api_http::PathMatch {
                    kind: Some(api_http::path_match::Kind::Prefix(prefix.into())),
                }),
                ..Default::default()
            }],
            backends: Some(hr::Distribution {
                kind: Some(hr::distribution::Kind::FirstAvailable(hr::distribution::FirstAvailable {
                    backends: vec![hr::RouteBackend { backend: backend.clone(), ..Default::default() }],
                })),
            }),
            ..Default::default()
        };
        let routes = vec![
            api::HttpRoute { metadata: route_meta("a"), hosts: vec![], rules: vec![rule("/a"), rule("/b")] },
            api::HttpRoute { metadata: route_meta("b"), hosts: vec![], rules: vec![rule("/c"), rule("/d")] },
        ];
        let http1 = api::proxy_protocol::Http1 { routes: routes.clone(), failure_accrual: None };
        let http2 = api::proxy_protocol::Http2 { routes, failure_accrual: None };
        api::OutboundPolicy {
            metadata: service(),
            protocol: Some(api::ProxyProtocol {
                kind: Some(api::proxy_protocol::Kind::Detect(api::proxy_protocol::Detect {
                    http1: Some(http1),
                    http2: Some(http2),
                    ..Default::default()
                })),
            }),
        }
    }

    fn extended(rules: Vec<ext::RuleExtension>) -> OutboundPolicyWithExtensions {
        OutboundPolicyWithExtensions { policy: detect(), extensions: Some(ext::RouteExtensions { rules }) }
    }

    fn mirror_to(name: &str, numerator: u32, denominator: u32) -> ext::Mirror {
        let mut backend = grpc_backend();
        backend.metadata = route_meta(name);
        ext::Mirror { backend: Some(backend), ratio: Some(api_http::Ratio { numerator, denominator }) }
    }

    fn grpc_backend() -> api::Backend {
        let grpc = grpc_with_retry(Default::default());
        let Some(api::proxy_protocol::Kind::Grpc(g)) = grpc.protocol.and_then(|p| p.kind) else {
            unreachable!()
        };
        let Some(api::grpc_route::distribution::Kind::FirstAvailable(f)) =
            g.routes[0].rules[0].backends.clone().and_then(|d| d.kind)
        else {
            unreachable!()
        };
        f.backends[0].backend.clone().expect("backend")
    }

    /// Each extension reaches its rule (route metadata, rule index) in
    /// both tables, and only that rule; one for a rule the policy does not
    /// have is ignored.
    #[test]
    fn extensions_join_their_rule_in_every_table() {
        let rules = vec![
            ext::RuleExtension {
                route: route_meta("b"),
                rule_index: 1,
                mirrors: vec![mirror_to("shadow", 1, 4)],
                url_rewrite: Some(ext::UrlRewrite {
                    hostname: "shop.example".into(),
                    path: Some(api_http::PathModifier {
                        replace: Some(api_http::path_modifier::Replace::Prefix("/new".into())),
                    }),
                }),
                hedge: Some(ext::Hedge { after: None, percentile: 95.0 }),
            },
            ext::RuleExtension {
                route: route_meta("a"),
                rule_index: 0,
                hedge: Some(ext::Hedge {
                    after: Some(prost_types::Duration { seconds: 0, nanos: 20_000_000 }),
                    percentile: 0.0,
                }),
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("gone"),
                rule_index: 0,
                mirrors: vec![mirror_to("x", 1, 1)],
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("a"),
                rule_index: 7,
                mirrors: vec![mirror_to("x", 1, 1)],
                ..Default::default()
            },
        ];
        let p = policy(extended(rules)).unwrap();
        for table in [p.http1.unwrap(), p.http2.unwrap()] {
            let (a, b) = (&table.routes[0], &table.routes[1]);
            assert_eq!(&*b.meta.name, "b");
            let rule = &b.rules[1];
            assert_eq!(rule.mirrors.len(), 1);
            let m = &rule.mirrors[0];
            assert_eq!((&*m.backend.name, m.numerator, m.denominator), ("shadow", 1, 4));
            assert!(
                matches!(&m.target, BackendTarget::Balance(path) if &**path == "web.test.svc.cluster.local:80")
            );
            assert_eq!(rule.hedge.as_ref().map(|h| h.after), Some(HedgeAfter::Percentile(95.0)));
            assert_eq!(
                a.rules[0].hedge.as_ref().map(|h| h.after),
                Some(HedgeAfter::Fixed(Duration::from_millis(20)))
            );
            assert!(
                a.rules[0].mirrors.is_empty() && a.rules[1].hedge.is_none() && b.rules[0].mirrors.is_empty()
            );
            // The rewrite is the rule's last request filter; other rules have none.
            let filters = |route: usize, rule: usize| &table.matcher.routes[route].rules[rule].filters;
            assert!(
                matches!(filters(1, 1).last(), Some(Filter::UrlRewrite { host: Some(h), path: Some(PathModifier::Prefix(p)) })
                if h.as_str() == "shop.example" && p == "/new")
            );
            assert!(filters(0, 0).is_empty() && filters(0, 1).is_empty() && filters(1, 0).is_empty());
        }
    }

    /// A malformed extension rejects the whole message, as a malformed
    /// policy does.
    #[test]
    fn malformed_extensions_reject_the_message() {
        let d = |ms| prost_types::Duration { seconds: 0, nanos: ms * 1_000_000 };
        let bad = [
            ext::RuleExtension {
                route: route_meta("a"),
                hedge: Some(ext::Hedge { after: Some(d(20)), percentile: 95.0 }),
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("a"),
                hedge: Some(ext::Hedge { after: None, percentile: 100.0 }),
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("a"),
                hedge: Some(ext::Hedge { after: Some(d(0)), percentile: 0.0 }),
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("a"),
                hedge: Some(ext::Hedge::default()),
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("a"),
                mirrors: vec![ext::Mirror { backend: None, ratio: None }],
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("a"),
                mirrors: vec![mirror_to("x", 2, 1)],
                ..Default::default()
            },
            ext::RuleExtension { route: None, ..Default::default() },
            ext::RuleExtension {
                route: route_meta("a"),
                url_rewrite: Some(ext::UrlRewrite { hostname: "bad host".into(), path: None }),
                ..Default::default()
            },
            ext::RuleExtension {
                route: route_meta("a"),
                url_rewrite: Some(ext::UrlRewrite {
                    hostname: String::new(),
                    path: Some(api_http::PathModifier {
                        replace: Some(api_http::path_modifier::Replace::Full("relative".into())),
                    }),
                }),
                ..Default::default()
            },
        ];
        for rule in bad {
            assert!(policy(extended(vec![rule.clone()])).is_err(), "{rule:?}");
        }
        let twice = ext::RuleExtension {
            route: route_meta("a"),
            hedge: Some(ext::Hedge { after: None, percentile: 90.0 }),
            ..Default::default()
        };
        assert!(policy(extended(vec![twice.clone(), twice.clone()])).is_err(), "two extensions for one rule");
        assert!(policy(extended(vec![twice])).is_ok());
        assert!(policy(plain(detect()))
            .unwrap()
            .http1
            .unwrap()
            .routes
            .iter()
            .all(|r| r.rules.iter().all(|r| r.mirrors.is_empty() && r.hedge.is_none())));
    }
}
