//! The demo's workloads: small real HTTP servers (`weft demo-service`, a
//! hidden subcommand so the demo needs no extra binary) and the load
//! generator. Each talks to the rest of the mesh only through its own
//! weft-proxy, as an application in a pod would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, clap::Subcommand)]
enum Role {
    /// The front end: answers `/api/*` by asking `backend` through its proxy.
    Web {
        #[arg(long)]
        listen: SocketAddr,
        /// This workload's weft-proxy outbound listener (its HTTP proxy).
        #[arg(long)]
        proxy: SocketAddr,
        /// The authority the backend is addressed by.
        #[arg(long, default_value = "backend.demo.svc.cluster.local:80")]
        backend: String,
    },
    /// A backend version: answers after a little latency, failing a given
    /// fraction of requests with 500.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        version: String,
        /// Typical latency in milliseconds (actual: 0.5x to 1.5x).
        #[arg(long, default_value_t = 5)]
        latency_ms: u64,
        /// Fraction of requests answered 500, 0.0 to 1.0.
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
    },
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async move {
        match args.role {
            Role::Web { listen, proxy, backend } => {
                let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                let state = Arc::new((client, proxy, backend));
                serve(listen, move |req| {
                    let state = state.clone();
                    async move { web(req, &state.0, state.1, &state.2).await }
                })
                .await
            }
            Role::Backend { listen, version, latency_ms, failure_rate } => {
                let version: Arc<str> = version.into();
                serve(listen, move |req| {
                    let version = version.clone();
                    async move { backend(req, &version, latency_ms, failure_rate).await }
                })
                .await
            }
        }
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    rsp
}

async fn serve<F, Fut>(listen: SocketAddr, handler: F) -> Result<()>
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: back off, keep serving.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn backend(
    req: Request<hyper::body::Incoming>,
    version: &str,
    latency_ms: u64,
    failure_rate: f64,
) -> Response<Full<Bytes>> {
    let (delay, fail) = {
        let mut rng = rand::rng();
        let ms = latency_ms as f64 * rng.random_range(0.5..1.5);
        (Duration::from_secs_f64(ms / 1000.0), rng.random_bool(failure_rate.clamp(0.0, 1.0)))
    };
    tokio::time::sleep(delay).await;
    if fail {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"version\":\"{version}\",\"error\":\"injected failure\"}}"),
        );
    }
    let body = match req.uri().path() {
        "/api/list" => format!("{{\"version\":\"{version}\",\"items\":[\"🦀\",\"🧵\",\"🕸️\"]}}"),
        "/api/vote" => format!("{{\"version\":\"{version}\",\"voted\":true}}"),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("{{\"version\":\"{version}\",\"error\":\"no such route\"}}"),
            )
        }
    };
    text(StatusCode::OK, body)
}

/// Passes `/api/*` to the backend through the proxy (origin-form, the
/// backend's name in Host: explicit mode routes by it) and relays the
/// answer; a backend failure becomes a 502 of web's own.
async fn web(
    req: Request<hyper::body::Incoming>,
    client: &HttpClient,
    proxy: SocketAddr,
    backend: &str,
) -> Response<Full<Bytes>> {
    if !req.uri().path().starts_with("/api/") {
        return text(StatusCode::NOT_FOUND, "{\"error\":\"no such route\"}");
    }
    let uri = format!("http://{proxy}{}", req.uri().path());
    let upstream = Request::builder()
        .method(req.method().clone())
        .uri(uri)
        .header(http::header::HOST, backend)
        .body(Full::new(Bytes::new()));
    let Ok(upstream) = upstream else { return text(StatusCode::BAD_REQUEST, "{\"error\":\"bad request\"}") };
    match client.request(upstream).await {
        Ok(rsp) => {
            let status = rsp.status();
            let body = rsp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if status.is_success() {
                text(StatusCode::OK, body)
            } else {
                text(StatusCode::BAD_GATEWAY, format!("{{\"error\":\"backend answered {status}\"}}"))
            }
        }
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("{{\"error\":\"backend unreachable: {e}\"}}")),
    }
}

/// Load generator counters, for the final report.
#[derive(Default)]
pub struct LoadStats {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
}

/// Sends `rps` requests per second to `authority` through the proxy at
/// `proxy`, 80% `GET /api/list` and 20% `POST /api/vote`, until dropped.
/// Requests go out on a fixed schedule (not one after another) so a slow
/// response does not hide itself by slowing the load.
pub async fn load(proxy: SocketAddr, authority: String, rps: u32, stats: Arc<LoadStats>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most this many requests in flight: a stalled mesh must not make
    // the generator grow without bound.
    let inflight = Arc::new(tokio::sync::Semaphore::new(256));
    loop {
        tick.tick().await;
        let Ok(permit) = inflight.clone().try_acquire_owned() else { continue };
        let vote = rand::rng().random_bool(0.2);
        let (method, path) =
            if vote { (http::Method::POST, "/api/vote") } else { (http::Method::GET, "/api/list") };
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{proxy}{path}"))
            .header(http::header::HOST, authority.as_str())
            .body(Full::new(Bytes::new()));
        let Ok(req) = req else { continue };
        let (client, stats) = (client.clone(), stats.clone());
        tokio::spawn(async move {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            let ok = match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                Ok(Ok(rsp)) => {
                    let ok = rsp.status().is_success();
                    let _ = rsp.into_body().collect().await;
                    ok
                }
                _ => false,
            };
            if ok {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}
