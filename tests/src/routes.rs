//! Outbound routing as a user writes it: Gateway API (and `policy.linkerd.io`)
//! HTTPRoutes and GRPCRoutes on a Service, the Service itself with Linkerd's
//! annotations, a ServiceProfile, for weft-destination's file backend; and
//! [`Backend`], an app whose failures and latency a test turns on and off.
//!
//! Manifests are written as JSON (a subset of YAML, which the file backend
//! reads as any manifest), so a builder is a `serde_json::Value` and nothing
//! has to be indented by hand.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::app::Seen;

pub const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
pub const LINKERD_V1BETA3: &str = "policy.linkerd.io/v1beta3";

fn metadata(namespace: &str, name: &str, annotations: &[(String, String)], created: Option<&str>) -> Value {
    let mut meta = json!({"name": name, "namespace": namespace});
    if !annotations.is_empty() {
        let map: serde_json::Map<_, _> =
            annotations.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        meta["annotations"] = Value::Object(map);
    }
    if let Some(t) = created {
        meta["creationTimestamp"] = json!(t);
    }
    meta
}

/// One match of a rule: a path (`PathPrefix /` by default, as the apiserver
/// fills in), headers, query parameters, method.
#[derive(Clone, Debug)]
pub struct Match(Value);

impl Match {
    pub fn prefix(path: &str) -> Match {
        Match(json!({"path": {"type": "PathPrefix", "value": path}}))
    }

    pub fn exact(path: &str) -> Match {
        Match(json!({"path": {"type": "Exact", "value": path}}))
    }

    pub fn regex(path: &str) -> Match {
        Match(json!({"path": {"type": "RegularExpression", "value": path}}))
    }

    /// No path of its own (the apiserver's default is left to the server).
    pub fn any() -> Match {
        Match(json!({}))
    }

    pub fn header(mut self, name: &str, value: &str) -> Match {
        Self::push(&mut self.0, "headers", json!({"name": name, "value": value}));
        self
    }

    pub fn header_regex(mut self, name: &str, value: &str) -> Match {
        Self::push(
            &mut self.0,
            "headers",
            json!({"type": "RegularExpression", "name": name, "value": value}),
        );
        self
    }

    pub fn query(mut self, name: &str, value: &str) -> Match {
        Self::push(&mut self.0, "queryParams", json!({"name": name, "value": value}));
        self
    }

    pub fn method(mut self, method: &str) -> Match {
        self.0["method"] = json!(method);
        self
    }

    fn push(v: &mut Value, key: &str, item: Value) {
        match v.get_mut(key).and_then(Value::as_array_mut) {
            Some(list) => list.push(item),
            None => v[key] = json!([item]),
        }
    }
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier` contents.
pub fn header_modifier(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> Value {
    let pairs =
        |p: &[(&str, &str)]| p.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>();
    json!({"set": pairs(set), "add": pairs(add), "remove": remove})
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default)]
pub struct Rule {
    matches: Vec<Value>,
    filters: Vec<Value>,
    backends: Vec<Value>,
    timeouts: Option<Value>,
}

impl Rule {
    pub fn new() -> Rule {
        Rule::default()
    }

    pub fn matching(mut self, m: Match) -> Rule {
        self.matches.push(m.0);
        self
    }

    /// A backendRef to Service `name` (same namespace) on `port`.
    pub fn backend(mut self, name: &str, port: u16, weight: u32) -> Rule {
        self.backends.push(json!({"name": name, "port": port, "weight": weight}));
        self
    }

    pub fn request_headers(mut self, modifier: Value) -> Rule {
        self.filters.push(json!({"type": "RequestHeaderModifier", "requestHeaderModifier": modifier}));
        self
    }

    pub fn response_headers(mut self, modifier: Value) -> Rule {
        self.filters.push(json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": modifier}));
        self
    }

    /// `RequestRedirect` to `hostname`, replacing the matched prefix with
    /// `prefix`, answered with `status`.
    pub fn redirect(mut self, hostname: &str, prefix: &str, status: u16) -> Rule {
        self.filters.push(json!({"type": "RequestRedirect", "requestRedirect": {
            "hostname": hostname,
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": prefix},
            "statusCode": status,
        }}));
        self
    }

    /// A filter of a kind only its controller knows (`ExtensionRef` to
    /// `group`/`kind` `name`).
    pub fn extension(mut self, group: &str, kind: &str, name: &str) -> Rule {
        self.filters.push(
            json!({"type": "ExtensionRef", "extensionRef": {"group": group, "kind": kind, "name": name}}),
        );
        self
    }

    /// Gateway API `timeouts.request` (`"300ms"`).
    pub fn request_timeout(mut self, timeout: &str) -> Rule {
        self.timeouts = Some(json!({"request": timeout}));
        self
    }

    fn to_json(&self) -> Value {
        let mut r = json!({});
        if !self.matches.is_empty() {
            r["matches"] = json!(self.matches);
        }
        if !self.filters.is_empty() {
            r["filters"] = json!(self.filters);
        }
        if !self.backends.is_empty() {
            r["backendRefs"] = json!(self.backends);
        }
        if let Some(t) = &self.timeouts {
            r["timeouts"] = t.clone();
        }
        r
    }
}

/// An HTTPRoute whose parent is port `port` of Service `service`.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    api_version: &'static str,
    namespace: String,
    name: String,
    service: String,
    port: u16,
    annotations: Vec<(String, String)>,
    created: Option<String>,
    rules: Vec<Rule>,
}

impl HttpRoute {
    /// A `gateway.networking.k8s.io/v1` HTTPRoute.
    pub fn new(namespace: &str, name: &str, service: &str, port: u16) -> HttpRoute {
        HttpRoute {
            api_version: GATEWAY_V1,
            namespace: namespace.into(),
            name: name.into(),
            service: service.into(),
            port,
            annotations: Vec::new(),
            created: None,
            rules: Vec::new(),
        }
    }

    /// The same route as a `policy.linkerd.io/v1beta3` HTTPRoute.
    pub fn linkerd(mut self) -> HttpRoute {
        self.api_version = LINKERD_V1BETA3;
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> HttpRoute {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// `metadata.creationTimestamp` (RFC 3339), which orders conflicting
    /// routes.
    pub fn created(mut self, at: &str) -> HttpRoute {
        self.created = Some(at.into());
        self
    }

    pub fn rule(mut self, rule: Rule) -> HttpRoute {
        self.rules.push(rule);
        self
    }

    pub fn manifest(&self) -> String {
        json!({
            "apiVersion": self.api_version,
            "kind": "HTTPRoute",
            "metadata": metadata(&self.namespace, &self.name, &self.annotations, self.created.as_deref()),
            "spec": {
                "parentRefs": [{"group": "core", "kind": "Service", "name": self.service, "port": self.port}],
                "rules": self.rules.iter().map(Rule::to_json).collect::<Vec<_>>(),
            },
        })
        .to_string()
    }
}

/// A `gateway.networking.k8s.io/v1` GRPCRoute on port `port` of Service
/// `service`: one rule per `(grpc service, method, backend Service)`.
pub fn grpc_route(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    rules: &[(&str, &str, &str)],
) -> String {
    let rules: Vec<Value> = rules
        .iter()
        .map(|(svc, method, backend)| {
            json!({
                "matches": [{"method": {"type": "Exact", "service": svc, "method": method}}],
                "backendRefs": [{"name": backend, "port": port}],
            })
        })
        .collect();
    json!({
        "apiVersion": GATEWAY_V1,
        "kind": "GRPCRoute",
        "metadata": metadata(namespace, name, &[], None),
        "spec": {
            "parentRefs": [{"group": "core", "kind": "Service", "name": service, "port": port}],
            "rules": rules,
        },
    })
    .to_string()
}

/// A `v1 Service` with one port (named `http`) and `annotations` (Linkerd's
/// retry, timeout and failure-accrual annotations apply to every route of
/// it). Its endpoints come from a StaticEndpoints of the same name.
pub fn service(namespace: &str, name: &str, port: u16, annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<(String, String)> =
        annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(namespace, name, &annotations, None),
        "spec": {"ports": [{"name": "http", "port": port}]},
    })
    .to_string()
}

/// A ServiceProfile for `service.namespace.svc.cluster.local` with one
/// route per `(name, method, path regex)`.
pub fn service_profile(namespace: &str, service: &str, routes: &[(&str, &str, &str)]) -> String {
    let routes: Vec<Value> = routes
        .iter()
        .map(|(name, method, path)| json!({"name": name, "condition": {"method": method, "pathRegex": path}}))
        .collect();
    json!({
        "apiVersion": "linkerd.io/v1alpha2",
        "kind": "ServiceProfile",
        "metadata": {"name": format!("{service}.{namespace}.svc.cluster.local"), "namespace": namespace},
        "spec": {"routes": routes},
    })
    .to_string()
}

#[derive(Default)]
struct Behaviour {
    requests: AtomicUsize,
    /// Answer 500 to this many requests from now on, then recover.
    fail_next: AtomicUsize,
    /// Answer 500 to every request while set.
    failing: AtomicBool,
    /// Wait this long (ms) before answering the next `slow_next` requests.
    slow_next: AtomicUsize,
    slow_ms: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// An HTTP/1.1 + h2c app on 127.0.0.1 standing in for one version of a
/// service: it answers `x-backend: NAME` and, like [`crate::TestServer`], a
/// JSON body with the request's headers (so [`crate::Reply::seen_header`]
/// works); a test makes it fail or stall on demand. Stops when dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<Behaviour>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Behaviour::default());
        let task = tokio::spawn(serve(listener, name.to_string(), state.clone()));
        Backend { name: name.into(), addr, state, task }
    }

    /// Requests answered (or failed) so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The last request it received.
    pub fn last(&self) -> Option<Seen> {
        self.state.seen.lock().unwrap_or_else(|p| p.into_inner()).last().cloned()
    }

    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// The next `n` requests are answered after `delay`.
    pub fn slow_next(&self, n: usize, delay: Duration) {
        self.state.slow_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
        self.state.slow_next.store(n, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, name: String, state: Arc<Behaviour>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (name, state) = (name.clone(), state.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (name, state) = (name.clone(), state.clone());
                async move { Ok::<_, Infallible>(respond(&name, &state, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Takes one from `counter` if it is above zero.
fn take(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

async fn respond(name: &str, state: &Behaviour, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    state.requests.fetch_add(1, Ordering::SeqCst);
    if take(&state.slow_next) {
        tokio::time::sleep(Duration::from_millis(state.slow_ms.load(Ordering::SeqCst))).await;
    }
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = json!({"backend": name, "method": parts.method.as_str(), "uri": parts.uri.to_string(), "headers": headers});
    state.seen.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
        version: parts.version,
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    });
    let status = if state.failing.load(Ordering::SeqCst) || take(&state.fail_next) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    Response::builder()
        .status(status)
        .header("x-backend", name)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}
