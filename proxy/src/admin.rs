//! The admin server: health, metrics, run-time log level and shutdown.
//!
//! `/ready` and `/live` are for the kubelet and `/metrics` for Prometheus,
//! so they answer anyone. Changing the log level and shutting down answer
//! only loopback clients: in a pod that is the app's containers, never the
//! network.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{identity::LocalIdentity, log::LogLevel};

#[derive(Clone)]
pub struct Admin {
    pub metrics: PrometheusHandle,
    pub log: Option<LogLevel>,
    pub ready: Arc<AtomicBool>,
    /// With an identity, ready also means certified: inbound mTLS cannot be
    /// served before.
    pub identity: Option<LocalIdentity>,
    /// Cancelled by `POST /shutdown`.
    pub shutdown: CancellationToken,
}

pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // On the dual-stack default an IPv4 client is `::ffff:a.b.c.d`:
        // `127.0.0.1` must still count as loopback.
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        // Probes and scrapes are small request/response exchanges: with
        // Nagle on, a response split across writes waits for an ACK.
        let _ = stream.set_nodelay(true);
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req, client).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                debug!(%error, "admin connection closed");
            }
        });
    }
}

type AdminResponse = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    rsp
}

impl Admin {
    async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> AdminResponse {
        let loopback = client.ip().is_loopback();
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                let certified = self.identity.as_ref().is_none_or(|id| id.is_ready());
                if self.ready.load(Ordering::Acquire) && certified {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                crate::process_metrics::refresh();
                let mut rsp = text(StatusCode::OK, self.metrics.render());
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                rsp
            }
            (_, "/proxy-log-level" | "/shutdown") if !loopback => {
                text(StatusCode::FORBIDDEN, "only loopback clients may use this endpoint\n")
            }
            (&Method::GET, "/proxy-log-level") => match &self.log {
                Some(log) => text(StatusCode::OK, format!("{}\n", log.get())),
                None => text(StatusCode::NOT_FOUND, "logging is not managed by this process\n"),
            },
            (&Method::PUT, "/proxy-log-level") => self.set_log_level(req).await,
            (&Method::POST, "/shutdown") => {
                info!(%client, "shutdown requested through the admin server");
                self.shutdown.cancel();
                text(StatusCode::OK, "shutting down\n")
            }
            (_, "/live" | "/ready" | "/metrics" | "/proxy-log-level" | "/shutdown") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn set_log_level(&self, req: Request<Incoming>) -> AdminResponse {
        let Some(log) = &self.log else {
            return text(StatusCode::NOT_FOUND, "logging is not managed by this process\n");
        };
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => return text(StatusCode::BAD_REQUEST, format!("reading body: {error}\n")),
        };
        let Ok(filter) = std::str::from_utf8(&body) else {
            return text(StatusCode::BAD_REQUEST, "log filter must be UTF-8\n");
        };
        match log.set(filter) {
            Ok(()) => {
                info!(filter = filter.trim(), "log level changed");
                text(StatusCode::NO_CONTENT, "")
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        }
    }
}
