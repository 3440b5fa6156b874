//! Golden HTTP metrics: `request_total`, `response_total` and
//! `response_latency_ms`, labelled as Linkerd labels them.
//!
//! A response is counted when its body ends, because a gRPC call's outcome
//! (`grpc-status`) is only known from its trailers.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use foldhash::HashMap;
use http::{Request, Response};
use metrics::{Counter, Histogram, Label};
use tokio::time::Instant;

use super::{
    body::{BodyEnd, ObservedBody, OnBodyEnd},
    extensions::{DstLabels, SentOverMtls},
    headers::request_authority_str,
    BoxBody,
};
use crate::metrics::{AuthorityLabels, Direction, Tls};

#[derive(Clone)]
pub struct HttpMetricsLayer {
    direction: Direction,
    tls: Tls,
    /// Inbound over mTLS: the client's identity, Linkerd's `client_id`.
    client_id: Option<Arc<str>>,
    authorities: AuthorityLabels,
    series: SeriesCache,
}

impl HttpMetricsLayer {
    pub fn new(direction: Direction, tls: Tls, authorities: AuthorityLabels) -> Self {
        Self { direction, tls, client_id: None, authorities, series: SeriesCache::default() }
    }

    /// The layer for a connection from a verified mesh peer.
    pub fn meshed(&self, client_id: &str) -> Self {
        Self { tls: Tls::Established, client_id: Some(Arc::from(client_id)), ..self.clone() }
    }
}

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;
    fn layer(&self, inner: S) -> HttpMetrics<S> {
        HttpMetrics { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    layer: HttpMetricsLayer,
}

impl<S, B> tower::Service<Request<B>> for HttpMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<BoxBody>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = HttpMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let authority = self.layer.authorities.label(request_authority_str(&req));
        HttpMetricsFuture {
            inner: self.inner.call(req),
            layer: self.layer.clone(),
            authority,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct HttpMetricsFuture<F> {
        #[pin]
        inner: F,
        layer: HttpMetricsLayer,
        authority: Arc<str>,
        start: Instant,
    }
}

impl<F, E> Future for HttpMetricsFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
{
    type Output = Result<Response<BoxBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.inner.poll(cx))?;
        let layer = &*this.layer;
        let tls = if rsp.extensions().get::<SentOverMtls>().is_some() { Tls::Established } else { layer.tls };
        let key = SeriesKey {
            authority: this.authority.clone(),
            tls,
            client_id: layer.client_id.clone(),
            dst: rsp.extensions().get::<DstLabels>().filter(|d| !d.service.is_empty()).cloned(),
        };
        let series = layer.series.get(layer.direction, key);
        // Counted when the response starts, with the request's final tls
        // label (errors below this layer are already responses).
        series.requests.increment(1);
        let status = rsp.status().as_u16();
        series.latency(status).record(this.start.elapsed().as_secs_f64() * 1000.0);
        let (parts, body) = rsp.into_parts();
        let body = ObservedBody::new(body, &parts.headers, CountResponse { series, status });
        Poll::Ready(Ok(Response::from_parts(parts, BoxBody::new(body))))
    }
}

/// Every label of a request's series but its outcome.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    authority: Arc<str>,
    tls: Tls,
    client_id: Option<Arc<str>>,
    dst: Option<DstLabels>,
}

impl SeriesKey {
    fn labels(&self, direction: Direction) -> Vec<Label> {
        let mut labels = Vec::with_capacity(9);
        labels.push(Label::from_static_parts("direction", direction.as_str()));
        labels.push(Label::new("authority", self.authority.to_string()));
        labels.push(Label::from_static_parts("tls", self.tls.as_str()));
        if let Some(id) = &self.client_id {
            labels.push(Label::new("client_id", id.to_string()));
        }
        if let Some(dst) = &self.dst {
            labels.push(Label::new("dst_service", dst.service.to_string()));
            labels.push(Label::new("dst_namespace", dst.namespace.to_string()));
            if let Some(route) = &dst.route {
                labels.push(Label::new("route", route.to_string()));
            }
        }
        labels
    }
}

/// Distinct label sets kept resolved; past this the cache starts over (the
/// registry keeps every series either way).
const MAX_CACHED_SERIES: usize = 4096;
/// Distinct outcomes (status, gRPC status) kept resolved per series.
const MAX_CACHED_OUTCOMES: usize = 32;

/// The metric handles of each label set seen, so a request costs a lookup
/// and a few atomic adds instead of building, hashing and registering label
/// vectors three times.
#[derive(Clone, Default)]
struct SeriesCache(Arc<Mutex<HashMap<SeriesKey, Arc<Series>>>>);

impl SeriesCache {
    fn get(&self, direction: Direction, key: SeriesKey) -> Arc<Series> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(series) = cache.get(&key) {
            return series.clone();
        }
        if cache.len() >= MAX_CACHED_SERIES {
            cache.clear();
        }
        let labels = key.labels(direction);
        let series = Arc::new(Series {
            requests: metrics::counter!("request_total", labels.iter()),
            labels,
            latencies: Mutex::default(),
            responses: Mutex::default(),
        });
        cache.insert(key, series.clone());
        series
    }
}

struct Series {
    labels: Vec<Label>,
    requests: Counter,
    latencies: Mutex<Vec<(u16, Histogram)>>,
    responses: Mutex<Vec<(Outcome, Counter)>>,
}

#[derive(Copy, Clone, PartialEq, Eq)]
struct Outcome {
    status: u16,
    grpc_status: Option<u32>,
    success: bool,
}

impl Series {
    fn latency(&self, status: u16) -> Histogram {
        cached(&self.latencies, status, || {
            let mut labels = self.labels.clone();
            labels.push(Label::new("status_code", status.to_string()));
            metrics::histogram!("response_latency_ms", labels.iter())
        })
    }

    fn responses(&self, outcome: Outcome) -> Counter {
        cached(&self.responses, outcome, || {
            let mut labels = self.labels.clone();
            labels.push(Label::new("status_code", outcome.status.to_string()));
            if let Some(code) = outcome.grpc_status {
                labels.push(Label::new("grpc_status", code.to_string()));
            }
            let class = if outcome.success { "success" } else { "failure" };
            labels.push(Label::from_static_parts("classification", class));
            metrics::counter!("response_total", labels.iter())
        })
    }
}

/// A handle from a short list, registered on first use; outcomes past the
/// list's bound are registered each time rather than remembered.
fn cached<K: PartialEq + Copy, H: Clone>(
    list: &Mutex<Vec<(K, H)>>,
    key: K,
    register: impl FnOnce() -> H,
) -> H {
    let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, handle)) = list.iter().find(|(k, _)| *k == key) {
        return handle.clone();
    }
    let handle = register();
    if list.len() < MAX_CACHED_OUTCOMES {
        list.push((key, handle.clone()));
    }
    handle
}

/// Counts `response_total` once the body has ended, failed, or been
/// dropped unfinished (the client went away: a failure).
struct CountResponse {
    series: Arc<Series>,
    status: u16,
}

impl OnBodyEnd for CountResponse {
    fn on_end(self, end: BodyEnd) {
        let success = end.complete && self.status < 500 && end.grpc_status.is_none_or(|s| s == 0);
        let outcome = Outcome { status: self.status, grpc_status: end.grpc_status, success };
        self.series.responses(outcome).increment(1);
    }
}
