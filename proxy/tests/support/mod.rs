//! Harness for the end-to-end tests: the real `weft-proxy` binary, tiny real
//! servers (HTTP/1.1 + HTTP/2 echo, TCP echo, gRPC) and clients (curl, raw
//! TCP, hyper). Everything binds to loopback (or to the tests' own network
//! namespaces) and every wait is bounded.
#![allow(dead_code)]

pub mod grpc;
pub mod netns;
pub mod outbound_api;
pub mod policy_api;

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// The longest any single step may take before a test calls it stuck; very
/// generous because CI is a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed()
}

pub fn empty() -> BoxBody {
    full(Bytes::new())
}

/// A body fed frame by frame from the returned sender; dropping the sender
/// ends the body.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>, BoxBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

/// Runs `f` with a deadline, panicking with `what` if it is missed.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    within_for(TIMEOUT, what, f).await
}

pub async fn within_for<F: std::future::Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Aborts the task when dropped, so servers die with the test that made them.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port nothing listens on right now (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------
// The proxy process.

pub fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weft-proxy")
}

pub struct Proxy {
    child: Option<Child>,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// Copies the child's stderr into `stderr` until the pipe closes.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

pub struct ProxyBuilder {
    env: Vec<(String, String)>,
    /// Command words before the binary (`ip netns exec NS setpriv ...`).
    wrapper: Vec<String>,
    /// Listen addresses fixed by the caller (inside a namespace) rather
    /// than picked free on loopback.
    fixed: Option<(SocketAddr, SocketAddr, SocketAddr)>,
    /// Leave `WEFT_PROXY_OUTBOUND_ADDR`, `WEFT_PROXY_INBOUND_ADDR` and
    /// `WEFT_PROXY_ADMIN_ADDR` unset: the proxy's own defaults (fixed ports,
    /// so only inside a namespace).
    default_listeners: bool,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    pub fn new() -> Self {
        Self { env: Vec::new(), wrapper: Vec::new(), fixed: None, default_listeners: false }
    }

    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn inbound_app(self, addr: SocketAddr) -> Self {
        self.env("WEFT_PROXY_INBOUND_APP_ADDR", addr)
    }

    pub fn wrapper(mut self, words: &[&str]) -> Self {
        self.wrapper = words.iter().map(|w| w.to_string()).collect();
        self
    }

    pub fn fixed_addrs(mut self, outbound: SocketAddr, inbound: SocketAddr, admin: SocketAddr) -> Self {
        self.fixed = Some((outbound, inbound, admin));
        self
    }

    /// The proxy's default listeners (outbound 4140 on both loopbacks,
    /// inbound `[::]:4143`, admin `[::]:4191`, IPv4 alone without IPv6),
    /// spoken to on IPv4 loopback: for a test's own namespace.
    pub fn default_listeners(mut self) -> Self {
        self.default_listeners = true;
        self.fixed_addrs(loopback(4140), SocketAddr::from(([0u16; 8], 4143)), loopback(4191))
    }

    /// Starts the proxy and waits until `GET /ready` answers 200.
    pub async fn spawn(self) -> Proxy {
        // Free ports are only free until someone else binds them: retry a
        // start that lost that race.
        for attempt in 0..3 {
            let (outbound, inbound, admin) = self
                .fixed
                .unwrap_or_else(|| (loopback(free_port()), loopback(free_port()), loopback(free_port())));
            let mut proxy = self.start(outbound, inbound, admin);
            match proxy.wait_ready().await {
                Ok(()) => return proxy,
                Err(status) if attempt < 2 && proxy.stderr().contains("cannot listen") => {
                    eprintln!("proxy could not bind ({status}), retrying:\n{}", proxy.stderr());
                }
                Err(status) => panic!("proxy exited before ready ({status}):\n{}", proxy.stderr()),
            }
        }
        unreachable!()
    }

    /// Starts the proxy and returns its exit status and stderr, for
    /// configurations that must be refused.
    pub fn run_to_exit(self) -> (ExitStatus, String) {
        let (o, i, a) = (loopback(free_port()), loopback(free_port()), loopback(free_port()));
        let mut proxy = self.start(o, i, a);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = proxy.child.as_mut().unwrap().try_wait().expect("try_wait") {
                proxy.exited();
                return (status, proxy.stderr());
            }
            assert!(Instant::now() < deadline, "proxy did not exit:\n{}", proxy.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start(&self, outbound: SocketAddr, inbound: SocketAddr, admin: SocketAddr) -> Proxy {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(proxy_bin());
                cmd
            }
            None => Command::new(proxy_bin()),
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("WEFT_PROXY_") {
                cmd.env_remove(k);
            }
        }
        if self.fixed.is_none() {
            // Its own tap port too (the default is fixed); inside a
            // namespace the default is free.
            cmd.env("WEFT_PROXY_TAP_ADDR", loopback(free_port()).to_string());
        }
        if !self.default_listeners {
            cmd.env("WEFT_PROXY_OUTBOUND_ADDR", outbound.to_string())
                .env("WEFT_PROXY_INBOUND_ADDR", inbound.to_string())
                .env("WEFT_PROXY_ADMIN_ADDR", admin.to_string());
        }
        cmd.env("WEFT_PROXY_LOG", "warn,weft_proxy=info").env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "10s");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn weft-proxy");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proxy { child: Some(child), outbound, inbound, admin, stderr, stderr_reader: Some(reader) }
    }
}

impl Proxy {
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::new()
    }

    /// A proxy whose inbound side forwards to `app`.
    pub async fn with_app(app: SocketAddr) -> Proxy {
        ProxyBuilder::new().inbound_app(app).spawn().await
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The child has exited: read its stderr to the end, so the last lines
    /// it wrote are there for the test to check.
    fn exited(&mut self) {
        self.child = None;
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.exited();
                return Err(status.to_string());
            }
            if let Ok(rsp) = admin_request(self.admin, "GET", "/ready", "").await {
                if rsp.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                panic!("proxy not ready after {TIMEOUT:?}:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits (bounded) for the proxy to exit and returns its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().expect("try_wait") {
                self.exited();
                return status;
            }
            assert!(Instant::now() < deadline, "proxy still running after {limit:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn admin(&self, method: &str, path: &str, body: &str) -> AdminResponse {
        admin_request(self.admin, method, path, body).await.unwrap_or_else(|e| {
            panic!("admin {method} {path}: {e}\nproxy stderr:\n{}", self.stderr());
        })
    }

    pub async fn metrics(&self) -> Metrics {
        let rsp = self.admin("GET", "/metrics", "").await;
        assert_eq!(rsp.status, 200);
        Metrics(rsp.body)
    }

    /// Polls `/metrics` until `name{labels}` equals `want` (the proxy counts
    /// a response when its body ends, which races the client's read).
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Metrics {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let m = self.metrics().await;
            let got = m.get(name, labels);
            if got == want {
                return m;
            }
            if Instant::now() > deadline {
                panic!("{name}{labels:?} = {got}, want {want}; metrics:\n{}", m.0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the proxy's stderr contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < deadline, "no log line with {needle:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- weft-proxy stderr ----\n{}---- end ----", self.stderr());
        }
    }
}

#[derive(Debug)]
pub struct AdminResponse {
    pub status: u16,
    pub body: String,
}

/// A one-shot HTTP/1.1 request (`Connection: close`) to the admin server.
pub async fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<AdminResponse> {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(raw.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "admin request timed out"))??;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok(AdminResponse { status, body })
}

/// Prometheus text, as `/metrics` renders it.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every sample of `name` whose labels include `labels`; 0
    /// when there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (HashMap<String, String>, f64)> + 'a {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            Some((parse_labels(labels), value.parse().ok()?))
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples(name).next().is_some()
    }
}

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, c)) = chars.next() {
                        value.push(c);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    out
}

// ---------------------------------------------------------------------------
// HTTP echo server (HTTP/1.1 and HTTP/2 on one port).

/// What the server received for one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    pub peer: SocketAddr,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
pub struct ServerState {
    seen: Mutex<Vec<Seen>>,
    pub connections: AtomicUsize,
    /// Requests whose headers arrived (before their bodies were read).
    pub started: AtomicUsize,
    /// `/stream-request` bodies whose first chunk has arrived.
    pub first_chunks: AtomicUsize,
    /// `/slow` and `/stream` responses dropped unfinished: their client (the
    /// proxy) gave up on them.
    pub cancelled: AtomicUsize,
}

/// Counts a response in `cancelled` if dropped before `finish`.
struct Unfinished(Option<Arc<ServerState>>);

impl Unfinished {
    fn finish(&mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(st) = self.0.take() {
            st.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub struct HttpServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    _task: AbortOnDrop,
}

impl HttpServer {
    pub async fn start() -> Self {
        Self::start_on(loopback(0)).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind HTTP server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, peer, st.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, _task: AbortOnDrop(task) }
    }

    /// Every request received so far, in order of completion.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the server received no request")
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until `n` `/stream-request` bodies have started arriving.
    pub async fn wait_first_chunks(&self, n: usize) {
        within("a request body's first chunk to reach the server", async {
            while self.state.first_chunks.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Waits until `n` responses have been given up on by their client.
    pub async fn wait_cancelled(&self, n: usize) {
        within("the upstream response to be cancelled", async {
            while self.state.cancelled.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Waits until `n` requests' headers have arrived.
    pub async fn wait_started(&self, n: usize) {
        within("requests to reach the server", async {
            while self.state.started.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

fn record(
    st: &ServerState,
    parts: &http::request::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
    peer: SocketAddr,
) {
    st.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
        trailers,
        peer,
    });
}

/// Paths:
/// - `/slow?ms=N`: answers after N ms;
/// - `/stream?n=N&ms=M`: N chunks M ms apart, then trailers;
/// - `/stream-request`: reads the body chunk by chunk, notifying `progress`
///   at the first one, and answers with the byte count;
/// - `/reset`: one chunk, then the connection is torn down;
/// - `/upgrade`: 101 to whatever `Upgrade` asked for, then echoes bytes;
/// - `/hop`: a response with hop-by-hop headers;
/// - `/status/N`: answers N;
/// - anything else: 200 echoing the request body, with trailers when the
///   client accepts them (`te: trailers`).
async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    st: Arc<ServerState>,
) -> Result<Response<BoxBody>, Infallible> {
    st.started.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/upgrade" {
        let Some(proto) = req.headers().get(http::header::UPGRADE).cloned() else {
            return Ok(status(StatusCode::BAD_REQUEST, "upgrade expected"));
        };
        let on = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        record(&st, &parts, Bytes::new(), None, peer);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let mut io = TokioIo::new(upgraded);
                let _ = io.write_all(b"upgraded:").await;
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = io.shutdown().await;
            }
        });
        let mut rsp = Response::new(empty());
        *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        rsp.headers_mut().insert(http::header::UPGRADE, proto);
        rsp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Ok(rsp);
    }
    if path == "/stream-request" {
        let (parts, mut body) = req.into_parts();
        let (mut all, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            match frame.into_data() {
                Ok(d) => {
                    if all.is_empty() && !d.is_empty() {
                        st.first_chunks.fetch_add(1, Ordering::SeqCst);
                    }
                    all.extend_from_slice(&d);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        let n = all.len();
        record(&st, &parts, all.into(), trailers, peer);
        return Ok(Response::new(full(format!("received {n} bytes"))));
    }

    let (parts, body) = req.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(c) => {
            let t = c.trailers().cloned();
            (c.to_bytes(), t)
        }
        Err(_) => (Bytes::new(), None),
    };
    record(&st, &parts, body.clone(), trailers, peer);
    let q = |k: &str| {
        parts.uri.query().and_then(|q| {
            q.split('&').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
        })
    };
    let rsp = match path.as_str() {
        "/slow" => {
            let mut unfinished = Unfinished(Some(st.clone()));
            tokio::time::sleep(Duration::from_millis(q("ms").unwrap_or(1000))).await;
            unfinished.finish();
            Response::new(full("slow done\n"))
        }
        "/stream" => {
            let (n, ms) = (q("n").unwrap_or(3), q("ms").unwrap_or(100));
            let mut unfinished = Unfinished(Some(st.clone()));
            let frames = futures_util::stream::iter(0..=n).then(move |i| async move {
                if i == n {
                    let mut t = HeaderMap::new();
                    t.insert("x-chunks", HeaderValue::from(n));
                    return Ok::<_, BoxError>(Frame::trailers(t));
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Ok(Frame::data(Bytes::from(format!("chunk {i}\n"))))
            });
            let frames = frames.map(move |frame| {
                if frame.as_ref().is_ok_and(Frame::is_trailers) {
                    unfinished.finish();
                }
                frame
            });
            let mut rsp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            // HTTP/1 sends only the trailers the head announces.
            rsp.headers_mut().insert(http::header::TRAILER, HeaderValue::from_static("x-chunks"));
            rsp
        }
        "/reset" => {
            let frames = futures_util::stream::iter(0..2).then(|i| async move {
                if i == 0 {
                    Ok(Frame::data(Bytes::from_static(b"partial response\n")))
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Frame<Bytes>, BoxError>("server resets the connection".into())
                }
            });
            let mut rsp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            rsp.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("100000"));
            rsp
        }
        "/hop" => {
            let mut rsp = Response::new(full("hop\n"));
            let h = rsp.headers_mut();
            h.insert("connection", HeaderValue::from_static("x-hop-secret"));
            h.insert("x-hop-secret", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("x-end-to-end", HeaderValue::from_static("kept"));
            rsp
        }
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..].parse().unwrap_or(500);
            status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "as asked\n")
        }
        _ => {
            let te_trailers =
                parts.headers.get("te").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
            let mut rsp = if te_trailers || parts.version == http::Version::HTTP_2 {
                let mut t = HeaderMap::new();
                t.insert("x-trailer", HeaderValue::from_static("done"));
                let frames = futures_util::stream::iter([
                    Ok::<_, BoxError>(Frame::data(body)),
                    Ok(Frame::trailers(t)),
                ]);
                let mut rsp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
                rsp.headers_mut().insert(http::header::TRAILER, HeaderValue::from_static("x-trailer"));
                rsp
            } else {
                Response::new(full(body))
            };
            rsp.headers_mut().insert("x-echo-method", HeaderValue::from_str(parts.method.as_str()).unwrap());
            rsp
        }
    };
    Ok(rsp)
}

fn status(code: StatusCode, body: &'static str) -> Response<BoxBody> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = code;
    rsp
}

// ---------------------------------------------------------------------------
// Opaque TCP servers.

pub struct TcpServer {
    pub addr: SocketAddr,
    /// Client addresses of accepted connections.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    _task: AbortOnDrop,
}

impl TcpServer {
    /// Echoes every byte until the client half-closes, then closes its side.
    pub async fn echo() -> Self {
        Self::start(loopback(0), None).await
    }

    /// Speaks first: writes `banner`, then echoes.
    pub async fn banner(banner: &'static [u8]) -> Self {
        Self::start(loopback(0), Some(banner)).await
    }

    pub async fn start(addr: SocketAddr, banner: Option<&'static [u8]>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind TCP server");
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let p = peers.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else { continue };
                p.lock().unwrap().push(peer);
                tokio::spawn(async move {
                    if let Some(b) = banner {
                        if stream.write_all(b).await.is_err() {
                            return;
                        }
                    }
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self { addr, peers, _task: AbortOnDrop(task) }
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// Accepts connections and reads from them, but never answers.
pub struct SilentServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl SilentServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind(loopback(0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, accepted, _task: AbortOnDrop(task) }
    }
}

/// Sends `data` and half-closes while reading everything back; returns what
/// came back.
pub async fn echo_roundtrip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = within("connect", TcpStream::connect(addr)).await.expect("connect");
    let (mut r, mut w) = stream.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("half-close");
        w
    });
    let mut out = Vec::new();
    within("echo to end", r.read_to_end(&mut out)).await.expect("read");
    drop(writer.await.unwrap());
    out
}

/// Reads until the peer closes (EOF or reset), returning what arrived, or
/// `None` if it stays open past `limit`.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(out)
}

/// Reads an HTTP/1 response head (through the blank line) from a raw
/// stream; returns it and any bytes read past it.
pub async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    within("response head", async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(i + 4);
                return (String::from_utf8_lossy(&buf).into_owned(), rest);
            }
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(
                n > 0,
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Clients.

pub struct CurlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CurlOutput {
    /// The status code of the last response, with `-w '%{http_code}'` last.
    pub fn http_code(&self) -> u16 {
        self.stdout
            .trim_end()
            .rsplit('\n')
            .next()
            .and_then(|l| l.trim().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl std::fmt::Debug for CurlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "curl exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs the real curl (silent, bounded by --max-time).
pub async fn curl(args: &[&str]) -> CurlOutput {
    curl_with_stdin(args, None).await
}

pub async fn curl_with_stdin(args: &[&str], stdin: Option<Vec<u8>>) -> CurlOutput {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "20", "--noproxy", ""])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("run curl (apt-get install curl)");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        });
    }
    let out = within_for(Duration::from_secs(30), "curl", child.wait_with_output()).await.expect("curl");
    CurlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An HTTP/1.1 client connection to `addr` (hyper).
pub async fn h1_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let io = within("connect", TcpStream::connect(addr)).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send
}

/// An HTTP/2 prior-knowledge client connection to `addr` (hyper).
pub async fn h2_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let io = within("connect", TcpStream::connect(addr)).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A response with its whole body and trailers read.
pub struct Collected {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

pub async fn collect(rsp: Response<Incoming>) -> Collected {
    let (parts, body) = rsp.into_parts();
    let c = within("response body", body.collect()).await.expect("response body");
    Collected {
        status: parts.status,
        headers: parts.headers,
        trailers: c.trailers().cloned(),
        body: c.to_bytes(),
    }
}

/// `GET http://127.0.0.1:port/path` through an outbound explicit proxy with
/// curl; returns (status, body).
pub async fn curl_via(proxy: &Proxy, url: &str) -> (u16, String) {
    let out = curl(&["-x", &format!("http://{}", proxy.outbound), "-w", "\n%{http_code}", url]).await;
    let code = out.http_code();
    let body = out.stdout.rsplit_once('\n').map(|(b, _)| b.to_string()).unwrap_or_default();
    (code, body)
}
