//! The admin endpoint: `/metrics` (Prometheus), `/ready`, `/live`.
//!
//! Plain HTTP on its own port, so scraping and probes never depend on the
//! CA's TLS certificate being valid.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Answers whether the CA can issue right now.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

pub async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    ready: Readiness,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let response = route(&req, metrics.as_ref(), &ready);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "admin connection error");
            }
        });
    }
}

fn route(
    req: &http::Request<Incoming>,
    metrics: Option<&PrometheusHandle>,
    ready: &Readiness,
) -> http::Response<Full<Bytes>> {
    if req.method() != http::Method::GET {
        return text(http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => match metrics {
            Some(handle) => {
                let mut resp = text(http::StatusCode::OK, handle.render());
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            None => text(http::StatusCode::NOT_FOUND, "metrics not enabled\n".into()),
        },
        "/ready" if ready() => text(http::StatusCode::OK, "ready\n".into()),
        "/ready" => text(http::StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid issuer\n".into()),
        "/live" => text(http::StatusCode::OK, "live\n".into()),
        _ => text(http::StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: http::StatusCode, body: String) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
