//! A local stand-in for the kube-apiserver: replays a captured
//! `NamespaceList`, serves single namespaces from it, and holds watch streams
//! open for the test to feed.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
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

#[derive(Default)]
pub struct Counters {
    pub lists: AtomicUsize,
    pub watches: AtomicUsize,
    pub gets: AtomicUsize,
}

pub struct FakeApi {
    pub list: Value,
    /// The `GET /version` answer; `None` answers 404.
    pub version: Option<Value>,
    pub counters: Counters,
    /// Senders of the open watch streams: each event is one JSON line.
    pub watchers: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
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
    if path == "/version" {
        return Ok(match &api.version {
            Some(v) => full(StatusCode::OK, v.clone()),
            None => full(StatusCode::NOT_FOUND, json!({"kind": "Status", "code": 404})),
        });
    }
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

/// Starts the server; returns it and its base URL.
pub async fn start_server(list: Value) -> (Arc<FakeApi>, String) {
    start_server_with_version(list, None).await
}

/// [`start_server`], answering `GET /version` with `version`.
pub async fn start_server_with_version(list: Value, version: Option<Value>) -> (Arc<FakeApi>, String) {
    let api =
        Arc::new(FakeApi { list, version, counters: Counters::default(), watchers: Mutex::new(Vec::new()) });
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
    (api, format!("http://{addr}"))
}

pub async fn start(list: Value) -> (Arc<FakeApi>, kube::Client) {
    let (api, url) = start_server(list).await;
    let config = kube::Config::new(url.parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    (api, client)
}
