//! Admin endpoints: `/live`, `/ready` (the index has loaded everything once,
//! and with an identity, the first certificate is in)
//! and `/metrics` (Prometheus text).

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::{debug, warn};
use weft_tls::LocalIdentity;

use crate::index::Index;

/// Installs the process-wide Prometheus recorder.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(metrics_exporter_prometheus::BuildError::FailedToSetGlobalRecorder)?;
    Ok(handle)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    rsp
}

fn handle(
    req: &Request<Incoming>,
    index: &Index,
    identity: Option<&LocalIdentity>,
    metrics: Option<&PrometheusHandle>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") if identity.is_some_and(|id| !id.is_ready()) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no certificate from weft-identity yet\n")
        }
        (&Method::GET, "/ready") if index.is_synced() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/ready") => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: index not loaded yet\n")
        }
        (&Method::GET, "/metrics") => match metrics {
            Some(m) => text(StatusCode::OK, m.render()),
            None => text(StatusCode::NOT_FOUND, "metrics disabled\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `identity`: the one the gRPC port serves TLS with, if any.
pub async fn serve(
    listener: TcpListener,
    index: Index,
    identity: Option<LocalIdentity>,
    metrics: Option<PrometheusHandle>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE: back off instead of spinning.
                warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let index = index.clone();
        let metrics = metrics.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let rsp = handle(&req, &index, identity.as_ref(), metrics.as_ref());
                async move { Ok::<_, Infallible>(rsp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                debug!(%error, "admin connection closed");
            }
        });
    }
}
