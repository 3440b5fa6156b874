//! Golden HTTP metrics: `request_total`, `response_total` and
//! `response_latency_ms`, labelled as Linkerd labels them.
//!
//! A response is counted when its body ends, because a gRPC call's outcome
//! (`grpc-status`) is only known from its trailers.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use metrics::Label;
use tokio::time::Instant;

use super::{
    body::{BodyEnd, ObservedBody, OnBodyEnd},
    resolve::request_authority,
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
}

/// The service and route a response came from, as discovery named them;
/// bounded because the control plane, not the client, chooses them.
#[derive(Clone, Debug)]
pub struct DstLabels {
    service: Arc<str>,
    namespace: Arc<str>,
    route: Option<Arc<str>>,
}

impl DstLabels {
    pub fn new(profile: &crate::profile::Profile, route: Option<&crate::profile::Route>) -> Self {
        // `svc.ns.svc.cluster.local`: the first two labels.
        let mut parts = profile.fully_qualified_name.split('.');
        let service = parts.next().unwrap_or_default();
        let namespace = parts.next().unwrap_or_default();
        Self {
            service: service.into(),
            namespace: namespace.into(),
            route: route.map(|r| r.name.as_str().into()),
        }
    }
}

/// Put on a response by the layer that sent its request over mTLS, so the
/// outbound `tls` label says how the request actually travelled.
#[derive(Copy, Clone, Debug)]
pub struct SentOverMtls;

impl HttpMetricsLayer {
    pub fn new(direction: Direction, tls: Tls, authorities: AuthorityLabels) -> Self {
        Self { direction, tls, client_id: None, authorities }
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
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let authority = request_authority(&req);
        let authority = self.layer.authorities.label(authority.as_ref().map(|a| a.as_str()));
        let direction = self.layer.direction.as_str();
        let default_tls = self.layer.tls;
        let client_id = self.layer.client_id.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            let tls =
                if rsp.extensions().get::<SentOverMtls>().is_some() { Tls::Established } else { default_tls };
            let mut labels = Vec::with_capacity(6);
            labels.push(Label::from_static_parts("direction", direction));
            labels.push(Label::new("authority", authority.to_string()));
            labels.push(Label::from_static_parts("tls", tls.as_str()));
            if let Some(id) = &client_id {
                labels.push(Label::new("client_id", id.to_string()));
            }
            if let Some(dst) = rsp.extensions().get::<DstLabels>().filter(|d| !d.service.is_empty()) {
                labels.push(Label::new("dst_service", dst.service.to_string()));
                labels.push(Label::new("dst_namespace", dst.namespace.to_string()));
                if let Some(route) = &dst.route {
                    labels.push(Label::new("route", route.to_string()));
                }
            }
            let labels: Arc<[Label]> = labels.into();
            // Counted when the response starts, with the request's final
            // tls label (errors below this layer are already responses).
            metrics::counter!("request_total", labels.iter()).increment(1);
            let status = rsp.status().as_u16();
            let mut latency_labels = labels.to_vec();
            latency_labels.push(Label::new("status_code", status.to_string()));
            metrics::histogram!("response_latency_ms", latency_labels.iter())
                .record(start.elapsed().as_secs_f64() * 1000.0);
            let (parts, body) = rsp.into_parts();
            let body = ObservedBody::new(body, &parts.headers, CountResponse { labels, status });
            Ok(Response::from_parts(parts, BoxBody::new(body)))
        })
    }
}

/// Counts `response_total` once the body has ended, failed, or been
/// dropped unfinished (the client went away: a failure).
struct CountResponse {
    labels: Arc<[Label]>,
    status: u16,
}

impl OnBodyEnd for CountResponse {
    fn on_end(self, end: BodyEnd) {
        count(&self.labels, self.status, end.grpc_status, end.complete);
    }
}

fn count(labels: &[Label], status: u16, grpc_status: Option<u32>, ended_well: bool) {
    let success = ended_well && status < 500 && grpc_status.is_none_or(|s| s == 0);
    let mut all = labels.to_vec();
    all.push(Label::new("status_code", status.to_string()));
    if let Some(code) = grpc_status {
        all.push(Label::new("grpc_status", code.to_string()));
    }
    all.push(Label::from_static_parts("classification", if success { "success" } else { "failure" }));
    metrics::counter!("response_total", all.iter()).increment(1);
}
