//! The HTTPS admission endpoint (`POST /inject`) and the plain-HTTP admin
//! endpoint (`/ready`, `/live`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::InjectorConfig;
use crate::inject::{inject, Decision, NamespaceInfo};
use crate::namespaces::{LookupError, NamespaceLookup};
use crate::review::{self, AdmissionReview, ReviewError};

/// Far above any real pod (etcd caps objects at 1.5 MiB), small enough that a
/// confused client cannot make us buffer without bound.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The apiserver gives the webhook at most 30 s; a TLS handshake that takes
/// longer than this is not the apiserver.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Injector<L> {
    pub config: Arc<InjectorConfig>,
    pub namespaces: L,
}

impl<L: NamespaceLookup> Injector<L> {
    pub fn new(config: InjectorConfig, namespaces: L) -> Self {
        Self { config: Arc::new(config), namespaces }
    }

    /// Answers one AdmissionReview. `Err` means the body could not be read
    /// as a v1 AdmissionReview, so there is no uid to answer to.
    pub async fn review(&self, body: &[u8]) -> Result<AdmissionReview, ReviewError> {
        let request = review::parse(body)?;
        let span = info_span!(
            "admission",
            uid = %request.uid,
            namespace = request.namespace.as_deref().unwrap_or(""),
            name = request.name.as_deref().unwrap_or(""),
            operation = %request.operation,
        );
        Ok(self.admit(request).instrument(span).await)
    }

    async fn admit(&self, request: review::AdmissionRequest) -> AdmissionReview {
        let uid = request.uid.as_str();
        // Anything but a pod CREATE is admitted untouched: the webhook may be
        // registered more broadly than it should, and blocking unrelated
        // objects would be far worse than not injecting.
        if !request.is_pod_create() {
            let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
            if is_pod {
                // Registered for more than CREATE: updates need nothing from
                // us, and a warning on every pod update would only be noise.
                debug!(operation = %request.operation, "pod operation other than CREATE; admitted unchanged");
                return AdmissionReview::allow(uid, &[], Vec::new());
            }
            let what = format!(
                "{} {}/{} {}",
                request.operation, request.kind.group, request.kind.version, request.kind.kind
            );
            info!(%what, "not a pod creation; admitted unchanged");
            return AdmissionReview::allow(
                uid,
                &[],
                vec![format!("weft: injector ignores {what}; only pod creation is handled")],
            );
        }
        let Some(pod) = request.object.as_ref() else {
            warn!("pod creation without an object; admitted unchanged");
            return AdmissionReview::allow(
                uid,
                &[],
                vec!["weft: no pod in the request; proxy not injected".into()],
            );
        };
        let ns_name = request
            .namespace
            .clone()
            .or_else(|| pod.pointer("/metadata/namespace").and_then(|v| v.as_str()).map(String::from));
        let annotations = match &ns_name {
            None => Default::default(),
            Some(name) => match self.namespaces.annotations(name).await {
                Ok(a) => a,
                Err(error) => return namespace_failure(uid, error),
            },
        };
        let namespace = NamespaceInfo { name: ns_name, annotations };
        match inject(pod, &namespace, &self.config) {
            Ok(outcome) => {
                match &outcome.decision {
                    Decision::Injected => info!(ops = outcome.patch.len(), "proxy injected"),
                    Decision::Skipped(reason) => info!(%reason, "proxy not injected"),
                }
                for w in &outcome.warnings {
                    warn!(warning = %w, "admission warning");
                }
                AdmissionReview::allow(uid, &outcome.patch, outcome.warnings)
            }
            Err(error) => {
                warn!(%error, "cannot understand the pod; admitted unchanged");
                AdmissionReview::allow(uid, &[], vec![format!("weft: proxy not injected: {error}")])
            }
        }
    }
}

/// Without the namespace's annotations we cannot tell whether the pod should
/// be meshed; admitting it unmeshed would silently drop it out of mTLS, so
/// the creation is refused and the pod's controller retries it.
fn namespace_failure(uid: &str, error: LookupError) -> AdmissionReview {
    warn!(%error, "namespace lookup failed; refusing so that the creation is retried");
    AdmissionReview::deny(
        uid,
        503,
        "ServiceUnavailable",
        format!("weft: cannot decide on proxy injection: {error}"),
    )
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

pub async fn handle<L: NamespaceLookup>(
    injector: Arc<Injector<L>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let span = info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        if req.uri().path() != "/inject" {
            return Ok(text(StatusCode::NOT_FOUND, "not found; the webhook serves POST /inject"));
        }
        if req.method() != Method::POST {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
        }
        let body = match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(error) => {
                warn!(%error, "reading the request body failed");
                return Ok(text(StatusCode::BAD_REQUEST, &format!("cannot read body: {error}")));
            }
        };
        match injector.review(&body).await {
            Ok(review) => match serde_json::to_vec(&review) {
                Ok(json) => Ok(respond(StatusCode::OK, "application/json", json)),
                Err(error) => Ok(text(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())),
            },
            Err(error) => {
                warn!(%error, "unusable AdmissionReview");
                Ok(text(StatusCode::BAD_REQUEST, &error.to_string()))
            }
        }
    }
    .instrument(span)
    .await
}

/// Serves `POST /inject` over TLS until `shutdown` resolves. Connections
/// already accepted are left to finish on their own.
pub async fn serve_tls<L: NamespaceLookup>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injector: Arc<Injector<L>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let injector = injector.clone();
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => return debug!(%error, "TLS handshake failed"),
                    Err(_) => return debug!("TLS handshake timed out"),
                };
                let service = service_fn(move |req| handle(injector.clone(), req));
                if let Err(error) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    debug!(%error, "connection ended with an error");
                }
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
}

/// `/live` answers as long as the process serves; `/ready` once the
/// namespace cache is loaded, so the apiserver is not sent to a replica that
/// would have to GET every namespace.
pub async fn serve_admin(listener: TcpListener, ready: Arc<AtomicBool>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    let r = match req.uri().path() {
                        "/live" => text(StatusCode::OK, "live"),
                        "/ready" if ready => text(StatusCode::OK, "ready"),
                        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "namespace cache not loaded yet"),
                        _ => text(StatusCode::NOT_FOUND, "not found"),
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let _ =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
