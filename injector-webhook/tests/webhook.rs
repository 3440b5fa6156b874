//! The webhook end to end: HTTPS on loopback, the AdmissionReviews the
//! apiserver really sent, and the failure modes the apiserver punished.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use weft_injector::namespaces::StaticNamespaces;
use weft_injector::tls::CertReloader;
use weft_injector::webhook::{serve_admin, serve_tls, Injector};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p =
            std::env::temp_dir().join(format!("weft-injector-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Webhook {
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    _dir: TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Webhook {
    let dir = TempDir::new();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("cert");
    let cert = dir.0.join("tls.crt");
    let key = dir.0.join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");

    let reloader = CertReloader::new(&cert, &key).expect("load cert");
    let tls = Arc::new(reloader.server_config().expect("tls config"));
    let namespaces = StaticNamespaces::from_list(&fixture("namespaces.list.json"));
    let injector = Arc::new(Injector::new(config(), namespaces));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_tls(listener, tls, injector, async move {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let client =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Webhook { addr, connector: tokio_rustls::TlsConnector::from(Arc::new(client)), _dir: dir, _stop: stop }
}

impl Webhook {
    /// One request on a fresh HTTP/1.1 connection, like the apiserver's.
    async fn call(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let tls = self.connector.connect(name, tcp).await.expect("TLS handshake");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("http");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(format!("{path}?timeout=5s"))
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("user-agent", "kube-apiserver-admission")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    async fn review(&self, review: &Value) -> Value {
        let (status, body) = self.call(Method::POST, "/inject", review.to_string().into_bytes()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).expect("response is JSON");
        // What the apiserver checks before anything else.
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], review["request"]["uid"], "wrong uid is fatal");
        v
    }
}

fn review_with_object(file: &str, uid: &str, object: Value) -> Value {
    let mut r = fixture(file);
    r["request"]["uid"] = json!(uid);
    r["request"]["object"] = object;
    r
}

#[tokio::test]
async fn captured_reviews_are_injected_once() {
    let hook = start().await;
    for file in [
        "admissionreview-pod-create-plain.json",
        "admissionreview-pod-create-replicaset.json",
        "admissionreview-pod-create-job.json",
    ] {
        let review = fixture(file);
        let resp = hook.review(&review).await;
        assert_eq!(resp["response"]["allowed"], true, "{file}");
        let ops = response_patch(&resp).expect("a patch");
        let pod = &review["request"]["object"];
        let injected = apply(pod, &ops);
        assert_injected(&injected, true);

        // The apiserver would call again with the mutated pod (reinvocation,
        // or a replayed request): nothing to add.
        let again = review_with_object(file, "0f0f0f0f-1111-2222-3333-444444444444", injected.clone());
        let resp = hook.review(&again).await;
        assert_eq!(resp["response"]["allowed"], true);
        assert!(response_patch(&resp).is_none(), "second injection patched: {resp}");
    }
}

#[tokio::test]
async fn pods_that_are_not_injected_are_admitted_unchanged() {
    let hook = start().await;
    // A pod in a namespace without the annotation.
    let mut pod = fixture("admissionreview-pod-create-plain.json")["request"]["object"].clone();
    pod["metadata"]["namespace"] = json!("plain");
    let mut review = review_with_object("admissionreview-pod-create-plain.json", "a1", pod);
    review["request"]["namespace"] = json!("plain");
    let resp = hook.review(&review).await;
    assert_eq!(resp["response"], json!({"uid": "a1", "allowed": true}));

    // An invalid config annotation: admitted unmodified, with a warning.
    let mut pod = fixture("admissionreview-pod-create-plain.json")["request"]["object"].clone();
    pod["metadata"]["annotations"] = json!({"config.weft.io/proxy-cpu-request": "fast"});
    let review = review_with_object("admissionreview-pod-create-plain.json", "a2", pod);
    let resp = hook.review(&review).await;
    assert_eq!(resp["response"]["allowed"], true);
    assert!(response_patch(&resp).is_none());
    let warnings = resp["response"]["warnings"].as_array().expect("warnings");
    assert!(warnings[0].as_str().unwrap().contains("config.weft.io/proxy-cpu-request"), "{warnings:?}");

    // A pod the injector cannot make sense of: admitted, with a warning.
    let review =
        review_with_object("admissionreview-pod-create-plain.json", "a3", json!({"spec": {"containers": 7}}));
    let resp = hook.review(&review).await;
    assert_eq!(resp["response"]["allowed"], true);
    assert!(response_patch(&resp).is_none());
    assert!(resp["response"]["warnings"][0].as_str().unwrap().contains("not injected"));
}

#[tokio::test]
async fn other_kinds_and_operations_are_admitted_unchanged() {
    let hook = start().await;
    let mut review = fixture("admissionreview-pod-create-plain.json");
    review["request"]["uid"] = json!("b1");
    review["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    review["request"]["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let resp = hook.review(&review).await;
    assert_eq!(resp["response"]["allowed"], true);
    assert!(response_patch(&resp).is_none());
    assert!(resp["response"]["warnings"][0].as_str().unwrap().contains("Deployment"));

    let mut review = fixture("admissionreview-pod-create-plain.json");
    review["request"]["uid"] = json!("b2");
    review["request"]["operation"] = json!("UPDATE");
    let resp = hook.review(&review).await;
    assert_eq!(resp["response"], json!({"uid": "b2", "allowed": true}));
}

#[tokio::test]
async fn unknown_namespace_is_refused_for_retry() {
    let hook = start().await;
    let mut pod = fixture("admissionreview-pod-create-plain.json")["request"]["object"].clone();
    pod["metadata"]["namespace"] = json!("nowhere");
    let mut review = review_with_object("admissionreview-pod-create-plain.json", "c1", pod);
    review["request"]["namespace"] = json!("nowhere");
    let resp = hook.review(&review).await;
    // Same shape as the denial the apiserver turned into a clean 403.
    assert_eq!(resp["response"]["allowed"], false);
    assert_eq!(resp["response"]["status"]["code"], 503);
    assert!(resp["response"]["status"]["message"].as_str().unwrap().contains("nowhere"));
}

#[tokio::test]
async fn unreadable_requests_get_http_errors() {
    let hook = start().await;
    // The body the apiserver choked on, sent to us instead.
    let garbage = fixture_bytes("admission-error-garbage-body.webhook-response.txt");
    let (status, body) = hook.call(Method::POST, "/inject", garbage).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));

    let v1beta1 = json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "d1"}});
    let (status, body) = hook.call(Method::POST, "/inject", v1beta1.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("admission.k8s.io/v1beta1"));

    // One of the webhook responses from the fixtures is not a request.
    let (status, _) = hook
        .call(Method::POST, "/inject", fixture_bytes("admission-error-wrong-uid.webhook-response.json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = hook.call(Method::GET, "/inject", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = hook.call(Method::POST, "/mutate", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Still serving after all that.
    let resp = hook.review(&fixture("admissionreview-pod-create-plain.json")).await;
    assert_eq!(resp["response"]["allowed"], true);
}

#[tokio::test]
async fn admin_endpoints_follow_readiness() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_admin(listener, ready.clone(), std::future::pending()));
    async fn get(addr: std::net::SocketAddr, path: &str) -> StatusCode {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("http");
        tokio::spawn(conn);
        let req = Request::get(path).header("host", "x").body(Full::new(Bytes::new())).expect("req");
        s.send_request(req).await.expect("resp").status()
    }
    assert_eq!(get(addr, "/live").await, StatusCode::OK);
    assert_eq!(get(addr, "/ready").await, StatusCode::SERVICE_UNAVAILABLE);
    ready.store(true, Ordering::Release);
    assert_eq!(get(addr, "/ready").await, StatusCode::OK);
    assert_eq!(get(addr, "/metrics").await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_invalid_default_inbound_policy_still_injects_with_a_warning() {
    let hook = start().await;
    let mut pod = fixture("admissionreview-pod-create-plain.json")["request"]["object"].clone();
    pod["metadata"]["annotations"] = json!({"config.weft.io/default-inbound-policy": "allow-all"});
    let review = review_with_object("admissionreview-pod-create-plain.json", "p1", pod.clone());
    let resp = hook.review(&review).await;
    assert_eq!(resp["response"]["allowed"], true);
    let injected = apply(&pod, &response_patch(&resp).expect("injected all the same"));
    let proxy = assert_injected(&injected, true);
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_INBOUND_DEFAULT_POLICY").as_deref(),
        Some("all-unauthenticated")
    );
    let warnings = resp["response"]["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = warnings[0].as_str().unwrap();
    assert!(w.contains("config.weft.io/default-inbound-policy") && w.contains("allow-all"), "{w}");
}
