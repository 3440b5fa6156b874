//! Golden HTTP metrics: `request_total`, `response_total` and
//! `response_latency_ms`, labelled as Linkerd labels them.
//!
//! A response is counted when its body ends, because a gRPC call's outcome
//! (`grpc-status`) is only known from its trailers.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics::Label;
use tokio::time::Instant;

use super::{resolve::request_authority, BoxBody, BoxError};
use crate::metrics::{AuthorityLabels, Direction, Tls};

#[derive(Clone)]
pub struct HttpMetricsLayer {
    direction: Direction,
    tls: Tls,
    /// Inbound over mTLS: the client's identity, Linkerd's `client_id`.
    client_id: Option<Arc<str>>,
    authorities: AuthorityLabels,
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
            let labels: Arc<[Label]> = labels.into();
            // Counted when the response starts, with the request's final
            // tls label (errors below this layer are already responses).
            metrics::counter!("request_total", labels.iter()).increment(1);
            let status = rsp.status().as_u16();
            let mut latency_labels = labels.to_vec();
            latency_labels.push(Label::new("status_code", status.to_string()));
            metrics::histogram!("response_latency_ms", latency_labels.iter())
                .record(start.elapsed().as_secs_f64() * 1000.0);
            let grpc_status = grpc_status(rsp.headers());
            Ok(rsp.map(|body| {
                let counted = CountResponse { inner: body, labels, status, grpc_status, counted: false };
                BoxBody::new(counted)
            }))
        })
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pin_project_lite::pin_project! {
    /// Counts `response_total` once, when the body ends, fails, or is dropped
    /// unfinished (the client went away: a failure).
    struct CountResponse {
        #[pin]
        inner: BoxBody,
        labels: Arc<[Label]>,
        status: u16,
        grpc_status: Option<u32>,
        counted: bool,
    }

    impl PinnedDrop for CountResponse {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.counted {
                // hyper may drop a body it knows is complete (an empty or
                // fully-sized one) without polling it to its end.
                let complete = this.inner.is_end_stream();
                count(this.labels, *this.status, *this.grpc_status, complete);
            }
        }
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

impl Body for CountResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(code) = grpc_status(trailers) {
                        *this.grpc_status = Some(code);
                    }
                }
            }
            Some(Err(_)) => {
                *this.counted = true;
                count(this.labels, *this.status, *this.grpc_status, false);
            }
            None => {
                *this.counted = true;
                count(this.labels, *this.status, *this.grpc_status, true);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
