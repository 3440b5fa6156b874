//! The kube-rs namespace cache against a local server that replays the
//! captured `GET /api/v1/namespaces` and serves a watch we control.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_injector::namespaces::{KubeNamespaces, LookupError, NamespaceLookup};

#[derive(Default)]
struct Counters {
    lists: AtomicUsize,
    watches: AtomicUsize,
    gets: AtomicUsize,
}

struct FakeApi {
    list: Value,
    counters: Counters,
    /// Senders of the open watch streams: each event is one JSON line.
    watchers: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
}

fn full(status: StatusCode, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

async fn serve(
    api: Arc<FakeApi>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    if path == "/api/v1/namespaces" && query.get("watch").map(String::as_str) == Some("true") {
        api.counters.watches.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        api.watchers.lock().expect("lock").push(tx);
        let body = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(StreamBody::new(body).boxed());
        r.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return Ok(r);
    }
    if path == "/api/v1/namespaces" {
        api.counters.lists.fetch_add(1, Ordering::SeqCst);
        return Ok(full(StatusCode::OK, api.list.clone()));
    }
    if let Some(name) = path.strip_prefix("/api/v1/namespaces/") {
        api.counters.gets.fetch_add(1, Ordering::SeqCst);
        let item = api.list["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == name));
        return Ok(match item {
            Some(ns) => full(StatusCode::OK, ns.clone()),
            None => full(
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": format!("namespaces \"{name}\" not found"), "reason": "NotFound",
                       "details": {"name": name, "kind": "namespaces"}, "code": 404}),
            ),
        });
    }
    Ok(full(StatusCode::NOT_FOUND, json!({"kind": "Status", "code": 404})))
}

async fn start(list: Value) -> (Arc<FakeApi>, kube::Client) {
    let api = Arc::new(FakeApi { list, counters: Counters::default(), watchers: Mutex::new(Vec::new()) });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = api.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let api = server.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| serve(api.clone(), req));
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    (api, client)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cache_serves_lookups_and_follows_the_watch() {
    let (api, client) = start(fixture("namespaces.list.json")).await;
    let (namespaces, watch) = KubeNamespaces::new(client);
    let watch = tokio::spawn(watch);
    tokio::time::timeout(Duration::from_secs(10), namespaces.ready()).await.expect("cache ready in time");
    assert!(api.counters.lists.load(Ordering::SeqCst) >= 1);
    assert_eq!(namespaces.cached(), 6);

    let emojivoto = namespaces.annotations("emojivoto").await.expect("emojivoto");
    assert_eq!(emojivoto.get("weft.io/inject").map(String::as_str), Some("enabled"));
    let plain = namespaces.annotations("plain").await.expect("plain");
    assert!(!plain.contains_key("weft.io/inject"));
    assert!(plain.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let system = namespaces.annotations("kube-system").await.expect("kube-system");
    assert!(system.is_empty());
    // All from the cache.
    assert_eq!(api.counters.gets.load(Ordering::SeqCst), 0);

    // The namespace gets annotated: the watch event reaches the cache.
    eventually("the watch to open", || !api.watchers.lock().expect("lock").is_empty()).await;
    let mut plain_ns = api.list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == "plain"))
        .cloned()
        .expect("plain in list");
    plain_ns["metadata"]["annotations"]["weft.io/inject"] = json!("enabled");
    plain_ns["metadata"]["resourceVersion"] = json!("400");
    let event = format!("{}\n", json!({"type": "MODIFIED", "object": plain_ns}));
    for tx in api.watchers.lock().expect("lock").iter() {
        let _ = tx.send(Bytes::from(event.clone()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = namespaces.annotations("plain").await.expect("plain");
        if a.get("weft.io/inject").map(String::as_str) == Some("enabled") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "watch event never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.counters.gets.load(Ordering::SeqCst), 0);
    watch.abort();
}

#[tokio::test]
async fn uncached_namespaces_fall_back_to_get() {
    // The watch has not delivered anything yet (or never will): lookups GET.
    let (api, client) = start(fixture("namespaces.list.json")).await;
    let (namespaces, _watch_not_started) = KubeNamespaces::new(client);
    let emojivoto = namespaces.annotations("emojivoto").await.expect("emojivoto");
    assert_eq!(emojivoto.get("weft.io/inject").map(String::as_str), Some("enabled"));
    assert_eq!(api.counters.gets.load(Ordering::SeqCst), 1);
    match namespaces.annotations("missing").await {
        Err(LookupError::NotFound(name)) => assert_eq!(name, "missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn api_errors_are_reported_not_hidden() {
    // Nothing listens on this port any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
    config.connect_timeout = Some(Duration::from_secs(2));
    let client = kube::Client::try_from(config).expect("client");
    let (namespaces, _watch) = KubeNamespaces::new(client);
    match namespaces.annotations("emojivoto").await {
        Err(LookupError::Api { name, .. }) => assert_eq!(name, "emojivoto"),
        other => panic!("expected an API error, got {other:?}"),
    }
}
