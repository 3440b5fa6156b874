//! Routes a request by its destination's outbound policy (OutboundPolicies,
//! i.e. HTTPRoute/GRPCRoute with the Service as parent): the first matching
//! rule by Gateway API precedence, its backend picked by weight, its
//! request timeout over the whole request, its response header changes,
//! and the per-route metrics Linkerd's proxy reports. What layers below do
//! for the rule travels as request extensions: its retries (`RouteRetry`,
//! http/retry.rs), its hedging (`RouteHedge`, http/hedge.rs), its mirrors
//! (`RouteMirrors`, http/mirror.rs) and the policy's failure accrual
//! (`FailureAccrual`, http/balance.rs).
//!
//! Linkerd's precedence: a ServiceProfile with routes or dst_overrides wins,
//! and this layer steps aside. No policy, or a policy without HTTP routes,
//! also leaves the request as it was. The rule's request filters are
//! applied just below, by the inbound side's filter layer, which reads the
//! `Matched` this layer leaves.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use foldhash::HashMap;
use http::{Request, Response};
use metrics::{Counter, Histogram, Label};
use tokio::time::Instant;

use super::{
    extensions::{
        Backend, EndpointInfo, FailureAccrual, LogicalPolicy, LogicalProfile, MirrorCounters, MirrorResult,
        RetryCounters, RouteError, RouteMirrors, RouteRetry, RouteTimeout,
    },
    BoxError, Endpoint, LayerFuture,
};
use crate::{
    outbound_policy::{BackendTarget, HeaderModifier, ResourceRef, RouteTable},
    policy::{authorize::Matched, routes::RouteMatch},
    tap::TapRoute,
};

/// Built once per proxy: its metric handles are shared by every
/// connection.
#[derive(Clone, Default)]
pub struct PolicyRouteLayer {
    series: SeriesCache,
}

impl<S> tower::Layer<S> for PolicyRouteLayer {
    type Service = PolicyRoute<S>;
    fn layer(&self, inner: S) -> PolicyRoute<S> {
        PolicyRoute { inner, series: self.series.clone() }
    }
}

#[derive(Clone)]
pub struct PolicyRoute<S> {
    inner: S,
    series: SeriesCache,
}

impl<S, B, RspB> tower::Service<Request<B>> for PolicyRoute<S>
where
    S: tower::Service<Request<B>, Response = Response<RspB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RspB: Send + 'static,
{
    type Response = Response<RspB>;
    type Error = BoxError;
    type Future = LayerFuture<PolicyRouteFuture<S::Future>, Response<RspB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(table) = routes_in_force(&req) else {
            return LayerFuture::inner(PolicyRouteFuture::passthrough(self.inner.call(req)));
        };
        let Some(matched) = table.matcher.route_for(&req) else {
            self.series.get(&table, None).record(None, Instant::now());
            return LayerFuture::own(async { Err(RouteError::NoRoute.into()) });
        };
        let route = &table.routes[matched.route];
        let rule = &route.rules[matched.rule];
        let metrics = self.series.get(&table, Some(matched));
        let Some(backend) = rule.pick_backend() else {
            metrics.record(None, Instant::now());
            let name = route.meta.name.to_string();
            return LayerFuture::own(async move { Err(RouteError::NoBackend(name).into()) });
        };
        metrics.backend(&backend.meta);
        if let Some(failure) = backend.filters.failure.as_ref().filter(|f| f.fires()) {
            metrics.record(Some(failure.status.as_u16()), Instant::now());
            let error = RouteError::Injected(failure.status, failure.message.clone());
            return LayerFuture::own(async move { Err(error.into()) });
        }
        if let Some(modifier) = &backend.filters.request_headers {
            modifier.apply(req.headers_mut());
        }
        match &backend.target {
            BackendTarget::Balance(path) => {
                req.extensions_mut().insert(Backend(path.clone()));
            }
            BackendTarget::Forward(addr, meta) => {
                req.extensions_mut().insert(Endpoint(*addr));
                req.extensions_mut().insert(EndpointInfo(meta.clone()));
            }
            BackendTarget::Invalid => {
                metrics.record(None, Instant::now());
                let error = RouteError::InvalidBackend(backend.meta.name.to_string());
                return LayerFuture::own(async move { Err(error.into()) });
            }
        }
        if let Some(accrual) = table.accrual {
            req.extensions_mut().insert(FailureAccrual(accrual));
        }
        let timeout = rule.timeout;
        let response_headers = rule.response_headers.is_some().then(|| (table.clone(), matched));
        if let Some(policy) = &rule.retry {
            req.extensions_mut()
                .insert(RouteRetry { policy: policy.clone(), counters: metrics.retry_counters() });
        }
        if let Some(policy) = &rule.hedge {
            let counters = policy.counters(&metrics.labels);
            req.extensions_mut().insert(super::extensions::RouteHedge { policy: policy.clone(), counters });
        }
        if !rule.mirrors.is_empty() {
            let counters = metrics.clone();
            req.extensions_mut().insert(RouteMirrors { table: table.clone(), route: matched, counters });
        }
        req.extensions_mut().insert(Matched { policy: table.matcher.clone(), route: matched });
        req.extensions_mut().insert(metrics.tap.clone());
        LayerFuture::inner(PolicyRouteFuture {
            inner: self.inner.call(req),
            deadline: timeout.map(|t| (Box::pin(tokio::time::sleep(t)), t)),
            response_headers,
            metrics: Some((metrics, Instant::now())),
        })
    }
}

/// The policy's routes for this request, unless a ServiceProfile with
/// routes or a traffic split takes precedence.
fn routes_in_force<B>(req: &Request<B>) -> Option<Arc<RouteTable>> {
    let LogicalPolicy(policy) = req.extensions().get::<LogicalPolicy>()?;
    if let Some(LogicalProfile { profile, .. }) = req.extensions().get::<LogicalProfile>() {
        if !profile.routes.is_empty() || !profile.dst_overrides.is_empty() {
            return None;
        }
    }
    policy.routes_for(req.version()).cloned()
}

pin_project_lite::pin_project! {
    /// The inner response with the rule's response headers applied and the
    /// route's metrics recorded, or a timeout error once the rule's request
    /// timeout passes.
    pub struct PolicyRouteFuture<F> {
        #[pin]
        inner: F,
        deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
        response_headers: Option<(Arc<RouteTable>, RouteMatch)>,
        metrics: Option<(Arc<RouteSeries>, Instant)>,
    }
}

impl<F> PolicyRouteFuture<F> {
    fn passthrough(inner: F) -> Self {
        Self { inner, deadline: None, response_headers: None, metrics: None }
    }
}

impl<F, RspB, E> Future for PolicyRouteFuture<F>
where
    F: Future<Output = Result<Response<RspB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RspB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.inner.poll(cx) {
            Poll::Ready(res) => res.map_err(Into::into),
            Poll::Pending => {
                let Some((sleep, timeout)) = this.deadline else { return Poll::Pending };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Err(RouteTimeout(*timeout).into())
            }
        };
        if let Some((metrics, start)) = this.metrics.take() {
            metrics.record(res.as_ref().ok().map(|r| r.status().as_u16()), start);
        }
        let mut rsp = res?;
        if let Some((table, m)) = this.response_headers.take() {
            if let Some(modifier) = response_modifier(&table, m) {
                modifier.apply(rsp.headers_mut());
            }
        }
        Poll::Ready(Ok(rsp))
    }
}

fn response_modifier(table: &RouteTable, m: RouteMatch) -> Option<&HeaderModifier> {
    table.routes.get(m.route)?.rules.get(m.rule)?.response_headers.as_ref()
}

/// Distinct routes kept resolved; past this the cache starts over (the
/// registry keeps every series either way).
const MAX_CACHED_ROUTES: usize = 4096;
/// Distinct statuses or backends kept resolved per route.
const MAX_CACHED_PER_ROUTE: usize = 32;

/// Linkerd's per-route metrics: `outbound_http_route_request_statuses_total`,
/// `outbound_http_route_request_duration_seconds` and
/// `outbound_http_route_backend_requests_total`, labelled by parent and
/// route (and backend) as the control plane named them, so their number is
/// bounded by the cluster's resources, not by clients. Each route's handles
/// are resolved once: a request costs a lookup and a few atomic adds.
#[derive(Clone, Default)]
struct SeriesCache(Arc<Mutex<HashMap<RouteKey, Arc<RouteSeries>>>>);

/// A route by its parent and its own name.
type RouteKey = (ResourceRef, ResourceRef);

impl SeriesCache {
    fn get(&self, table: &RouteTable, matched: Option<RouteMatch>) -> Arc<RouteSeries> {
        let unmatched = ResourceRef::default();
        let route = matched.and_then(|m| table.routes.get(m.route)).map_or(&unmatched, |r| &r.meta);
        let key = (table.parent.clone(), route.clone());
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(series) = cache.get(&key) {
            return series.clone();
        }
        if cache.len() >= MAX_CACHED_ROUTES {
            cache.clear();
        }
        let mut labels = Vec::with_capacity(12);
        resource_labels(&mut labels, "parent", &table.parent, true);
        resource_labels(&mut labels, "route", route, false);
        let series = Arc::new(RouteSeries {
            duration: metrics::histogram!("outbound_http_route_request_duration_seconds", labels.iter()),
            tap: TapRoute::policy(&route.name, &route.kind, &route.namespace),
            labels,
            statuses: Mutex::default(),
            backends: Mutex::default(),
            mirrors: Mutex::default(),
            retries: OnceLock::new(),
        });
        cache.insert(key, series.clone());
        series
    }
}

struct RouteSeries {
    labels: Vec<Label>,
    /// The route as tap reports it, shared by its requests.
    tap: TapRoute,
    duration: Histogram,
    statuses: Mutex<Vec<(Option<u16>, Counter)>>,
    backends: Mutex<Vec<(ResourceRef, Counter)>>,
    mirrors: Mutex<Vec<((ResourceRef, MirrorResult), Counter)>>,
    /// Registered once a rule of the route retries.
    retries: OnceLock<RetryCounters>,
}

fn resource_labels(labels: &mut Vec<Label>, prefix: &str, r: &ResourceRef, with_port: bool) {
    labels.push(Label::new(format!("{prefix}_group"), r.group.to_string()));
    labels.push(Label::new(format!("{prefix}_kind"), r.kind.to_string()));
    labels.push(Label::new(format!("{prefix}_namespace"), r.namespace.to_string()));
    labels.push(Label::new(format!("{prefix}_name"), r.name.to_string()));
    if with_port {
        labels.push(Label::new(format!("{prefix}_port"), r.port.to_string()));
        labels.push(Label::new(format!("{prefix}_section_name"), ""));
    }
}

/// A handle from a short list, registered on first use; keys past the
/// list's bound are registered each time rather than remembered.
fn cached<K: PartialEq + Clone>(
    list: &Mutex<Vec<(K, Counter)>>,
    key: &K,
    register: impl FnOnce() -> Counter,
) -> Counter {
    let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, handle)) = list.iter().find(|(k, _)| k == key) {
        return handle.clone();
    }
    let handle = register();
    if list.len() < MAX_CACHED_PER_ROUTE {
        list.push((key.clone(), handle.clone()));
    }
    handle
}

impl RouteSeries {
    fn retry_counters(&self) -> RetryCounters {
        self.retries
            .get_or_init(|| {
                let labels = self.labels.iter();
                RetryCounters {
                    requests: metrics::counter!("outbound_http_route_retry_requests_total", labels.clone()),
                    successes: metrics::counter!("outbound_http_route_retry_successes_total", labels.clone()),
                    limit_exceeded: metrics::counter!(
                        "outbound_http_route_retry_limit_exceeded_total",
                        labels
                    ),
                }
            })
            .clone()
    }

    fn backend(&self, backend: &ResourceRef) {
        cached(&self.backends, backend, || {
            let mut labels = self.labels.clone();
            resource_labels(&mut labels, "backend", backend, true);
            metrics::counter!("outbound_http_route_backend_requests_total", labels.iter())
        })
        .increment(1);
    }

    /// `status`: the response's, or `None` when the request failed in the
    /// proxy (no route, no backend, timeout, connection failure).
    fn record(&self, status: Option<u16>, start: Instant) {
        self.duration.record(start.elapsed().as_secs_f64());
        cached(&self.statuses, &status, || {
            let mut labels = self.labels.clone();
            match status {
                Some(status) => {
                    labels.push(Label::new("http_status", status.to_string()));
                    labels.push(Label::from_static_parts("error", ""));
                }
                None => {
                    labels.push(Label::from_static_parts("http_status", ""));
                    labels.push(Label::from_static_parts("error", "UNKNOWN"));
                }
            }
            metrics::counter!("outbound_http_route_request_statuses_total", labels.iter())
        })
        .increment(1);
    }
}

/// weft's `outbound_http_route_mirror_requests_total`: the route's labels,
/// the mirror's backend and what became of the copy.
impl MirrorCounters for RouteSeries {
    fn count(&self, backend: &ResourceRef, result: MirrorResult) {
        cached(&self.mirrors, &(backend.clone(), result), || {
            let mut labels = self.labels.clone();
            resource_labels(&mut labels, "backend", backend, true);
            labels.push(Label::from_static_parts("result", result.as_str()));
            metrics::counter!("outbound_http_route_mirror_requests_total", labels.iter())
        })
        .increment(1);
    }
}
