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
    authorities: AuthorityLabels,
}

impl HttpMetricsLayer {
    pub fn new(direction: Direction, tls: Tls, authorities: AuthorityLabels) -> Self {
        Self { direction, tls, authorities }
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
        let labels: Arc<[Label]> = Arc::new([
            Label::from_static_parts("direction", self.layer.direction.as_str()),
            Label::new("authority", authority.to_string()),
            Label::from_static_parts("tls", self.layer.tls.as_str()),
        ]);
        metrics::counter!("request_total", labels.iter()).increment(1);
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
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
