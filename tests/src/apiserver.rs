//! A stub kube-apiserver over HTTPS (rustls, a self-signed certificate for
//! 127.0.0.1) answering from a table of paths, and a kubeconfig pointing at
//! it, for running real binaries (`weft`, `weft-cni`) against "a cluster":
//! the CLI's tests, weft-cni's, and the pods' CNI mode ([`crate::pod`]). Answers are
//! built from the captured API objects in tests/fixtures/kubernetes; what a
//! test needs beyond a fixed answer (SelfSubjectAccessReviews, dry-run pod
//! creation, status PATCHes) goes through a handler it sets. A WATCH
//! (`?watch=true`) of a path the table answers is accepted and left open
//! with no events, as a quiet cluster's watch is, so a controller's
//! LIST + WATCH informers (weft-destination's Kubernetes backend) settle.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// One answer: status, content type, body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub fn json(status: u16, body: &Value) -> Self {
        Self { status, content_type: "application/json", body: body.to_string() }
    }

    pub fn text(status: u16, content_type: &'static str, body: &str) -> Self {
        Self { status, content_type, body: body.to_string() }
    }

    /// A `Status` as the API server sends it for a failed request.
    pub fn status(code: u16, reason: &str, message: &str) -> Self {
        Self::json(
            code,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code}),
        )
    }
}

/// Answers a request the table does not: (method, path, query, body).
pub type Handler = Arc<dyn Fn(&str, &str, &str, &Value) -> Option<Answer> + Send + Sync>;

#[derive(Default)]
pub struct State {
    /// GET path (without query) → answer.
    pub routes: HashMap<String, Answer>,
    pub handler: Option<Handler>,
    /// Every request seen, `METHOD path?query`.
    pub seen: Vec<String>,
    /// Answer every request with this, whatever the path.
    pub everything: Option<Answer>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    /// The server certificate, PEM: the kubeconfig's certificate authority.
    pub ca_pem: String,
    _runtime: tokio::runtime::Runtime,
}

impl ApiServer {
    pub fn start(state: State) -> ApiServer {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let ca_pem = ck.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let mut tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let state = Arc::new(Mutex::new(state));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req| serve(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        ApiServer { addr, state, ca_pem, _runtime: runtime }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        write_kubeconfig(dir, &self.url(), &self.ca_pem)
    }

    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn set(&self, path: &str, answer: Answer) {
        self.state.lock().unwrap().routes.insert(path.to_string(), answer);
    }
}

/// A kubeconfig whose current context uses `server`, trusting `ca_pem`.
pub fn write_kubeconfig(dir: &Path, server: &str, ca_pem: &str) -> PathBuf {
    // k8s-openapi's ByteString serialises as base64, as kubeconfigs want.
    let ca = serde_json::to_value(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec())).unwrap();
    let ca = ca.as_str().unwrap();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: dev\n  user:\n    token: weft-check-test\n\
         contexts:\n- name: stub\n  context: {{cluster: stub, user: dev, namespace: default}}\ncurrent-context: stub\n"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

/// A watch response's body: open, without events, until the client goes.
struct Quiet;

impl hyper::body::Body for Quiet {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

async fn serve(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Either<Full<Bytes>, Quiet>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let watching = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = {
        let mut s = state.lock().unwrap();
        s.seen.push(format!("{method} {path}?{query}"));
        if watching && method == "GET" && s.everything.is_none() && s.routes.contains_key(&path) {
            return Ok(Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Either::Right(Quiet))
                .unwrap());
        }
        let handler = s.handler.clone();
        s.everything
            .clone()
            .or_else(|| handler.and_then(|h| h(&method, &path, &query, &body)))
            .or_else(|| (method == "GET").then(|| s.routes.get(&path).cloned()).flatten())
    };
    let answer = answer.unwrap_or_else(|| {
        Answer::status(404, "NotFound", &format!("the server could not find the requested resource ({path})"))
    });
    Ok(Response::builder()
        .status(answer.status)
        .header("content-type", answer.content_type)
        .body(Either::Left(Full::new(Bytes::from(answer.body))))
        .unwrap())
}
