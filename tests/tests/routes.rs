//! Gateway API routes end to end: weft-destination's file backend serves
//! HTTPRoutes (`gateway.networking.k8s.io/v1` and `policy.linkerd.io/v1beta3`),
//! GRPCRoutes, Linkerd's annotations and ServiceProfiles as a user writes
//! them; client proxy A (certified by a running weft-identity) routes each
//! request through the real OutboundPolicies API to `web-v1` (a plain app)
//! or `web-v2` (an app behind proxy B, reached over mTLS).

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use weft_e2e::{
    routes::{self, header_modifier, Backend, HttpRoute, Match, Rule},
    *,
};

const NS: &str = "shop";
const PORT: u16 = 80;

fn url(service: &str, path: &str) -> String {
    format!("http://{service}.{NS}.svc.cluster.local:{PORT}{path}")
}

/// `web` (whose routes the tests write; its own endpoint is v1), `web-v1`
/// and `web-v2`; v2 behind server proxy B, certified as `web`.
struct RouteMesh {
    v1: Backend,
    v2: Backend,
    a: Proxy,
    destination: DestinationService,
    client: Workload,
    _b: Proxy,
    _identity: IdentityService,
    _dir: TempDir,
}

impl RouteMesh {
    /// The mesh, with `manifests` (routes, Services, profiles) loaded by
    /// weft-destination before A starts.
    async fn start(label: &str, manifests: &[(&str, String)]) -> RouteMesh {
        let dir = TempDir::new(label);
        let ca = Ca::create(&dir.join("ca"));
        let (web, client) = (Workload::new(NS, "web"), Workload::new(NS, "client"));
        let identity =
            IdentityService::builder(&ca, dir.path()).workload(&web).workload(&client).start().await;
        let (v1, v2) = (Backend::start("web-v1").await, Backend::start("web-v2").await);
        let b = Proxy::builder("b", dir.path())
            .identity(&ca, identity.addr, &web)
            .inbound_app(v2.addr)
            .start()
            .await;
        let (v1_ep, v2_ep) =
            (StaticEndpoint::plain(v1.addr), StaticEndpoint::service_account(b.inbound, "web"));
        let mut all = vec![
            ("web.yaml", static_endpoints("web", NS, PORT, std::slice::from_ref(&v1_ep))),
            ("web-v1.yaml", static_endpoints("web-v1", NS, PORT, &[v1_ep])),
            ("web-v2.yaml", static_endpoints("web-v2", NS, PORT, &[v2_ep])),
        ];
        all.extend(manifests.iter().cloned());
        let destination = DestinationService::start(&dir.join("destination"), &all).await;
        let a = Proxy::builder("a", dir.path())
            .identity(&ca, identity.addr, &client)
            .destination(destination.addr)
            .start()
            .await;
        RouteMesh { v1, v2, a, destination, client, _b: b, _identity: identity, _dir: dir }
    }

    async fn conn(&self) -> Conn {
        Conn::connect(self.a.outbound).await
    }
}

/// One HTTP/1.1 connection to a proxy's outbound listener, any method.
struct Conn {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Conn {
        let tcp = within(STEP, "connect", tokio::net::TcpStream::connect(addr)).await.expect("connect");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
        tokio::spawn(conn);
        Conn { addr, sender }
    }

    /// `method uri` with `headers`; a connection the proxy closed is
    /// replaced (a refused request is the answer, not the end of the test).
    async fn send(&mut self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Reply {
        if self.sender.is_closed() {
            *self = Conn::connect(self.addr).await;
        }
        let mut req =
            Request::builder().method(Method::from_bytes(method.as_bytes()).expect("method")).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).expect("request");
        within(STEP, uri, async {
            self.sender.ready().await.expect("connection usable");
            let rsp = self.sender.send_request(req).await.expect("response");
            let (parts, body) = rsp.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            Reply { status: parts.status, headers: parts.headers, body }
        })
        .await
    }

    async fn get(&mut self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", uri, headers).await
    }

    /// Which backend answered `GET uri` (`""` for a proxy's own answer).
    async fn backend(&mut self, uri: &str, headers: &[(&str, &str)]) -> String {
        self.get(uri, headers).await.backend().unwrap_or_default()
    }

    /// Sends `GET uri` until `want` holds of the reply (at most [`STEP`]);
    /// returns how long that took.
    async fn until(
        &mut self,
        uri: &str,
        headers: &[(&str, &str)],
        want: impl Fn(&Reply) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let reply = self.get(uri, headers).await;
            if want(&reply) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < STEP,
                "GET {uri}: never as wanted within {STEP:?}; last {} {:?} {}",
                reply.status,
                reply.headers,
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_header_path_query_and_method() {
    let gateway = HttpRoute::new(NS, "web-canary", "web", PORT)
        .rule(Rule::new().matching(Match::any().header("x-canary", "true")).backend("web-v2", PORT, 1))
        .rule(Rule::new().matching(Match::exact("/exact")).backend("web-v2", PORT, 1))
        .rule(Rule::new().matching(Match::prefix("/search").query("version", "2")).backend("web-v2", PORT, 1))
        .rule(Rule::new().matching(Match::any().method("DELETE")).backend("web-v2", PORT, 1))
        .rule(
            Rule::new()
                .matching(Match::any().header_regex("x-user", "^beta-[a-z]+$"))
                .backend("web-v2", PORT, 1),
        )
        .rule(Rule::new().matching(Match::prefix("/")).backend("web-v1", PORT, 1));
    // The same Service may have routes of both groups.
    let linkerd = HttpRoute::new(NS, "web-admin", "web", PORT)
        .linkerd()
        .rule(Rule::new().matching(Match::prefix("/admin")).backend("web-v2", PORT, 1));
    // A regex ranks below every prefix (Linkerd's order: exact, prefix,
    // regex), so it gets a Service of its own, with no catch-all rule.
    let items = HttpRoute::new(NS, "items", "items", PORT)
        .rule(Rule::new().matching(Match::regex("/items/[0-9]+")).backend("web-v2", PORT, 1));
    let items_endpoints = static_endpoints("items", NS, PORT, &[StaticEndpoint::plain(free_addr())]);
    let mesh = RouteMesh::start(
        "routes-match",
        &[
            ("canary.yaml", gateway.manifest()),
            ("admin.yaml", linkerd.manifest()),
            ("items.yaml", items.manifest()),
            ("items-endpoints.yaml", items_endpoints),
        ],
    )
    .await;
    let mut c = mesh.conn().await;

    let canary = c.get(&url("web", "/"), &[("x-canary", "true")]).await;
    assert_eq!(canary.backend().as_deref(), Some("web-v2"), "{} {}", canary.status, canary.text());
    assert_eq!(
        canary.seen_header("l5d-client-id").as_deref(),
        Some(mesh.client.identity().as_str()),
        "v2 is reached over mTLS with A's identity"
    );
    for (method, path, headers, want) in [
        ("GET", "/", &[("x-canary", "false")][..], "web-v1"),
        ("GET", "/", &[][..], "web-v1"),
        ("GET", "/exact", &[][..], "web-v2"),
        ("GET", "/exact/more", &[][..], "web-v1"),
        ("GET", "/search?q=shoes&version=2", &[][..], "web-v2"),
        ("GET", "/search?version=1", &[][..], "web-v1"),
        ("DELETE", "/cart", &[][..], "web-v2"),
        ("POST", "/cart", &[][..], "web-v1"),
        ("GET", "/", &[("x-user", "beta-ann")][..], "web-v2"),
        ("GET", "/", &[("x-user", "ann")][..], "web-v1"),
        ("GET", "/admin/users", &[][..], "web-v2"),
        ("GET", "/administrator", &[][..], "web-v1"),
    ] {
        let reply = c.send(method, &url("web", path), headers).await;
        assert_eq!(reply.status, 200, "{method} {path} {headers:?}: {}", reply.text());
        assert_eq!(reply.backend().as_deref(), Some(want), "{method} {path} {headers:?}");
    }
    assert_eq!(c.backend(&url("items", "/items/42"), &[]).await, "web-v2");
    let unrouted = c.get(&url("items", "/items/abc"), &[]).await;
    assert_eq!(unrouted.status, 404, "no rule matches: {}", unrouted.text());
    assert_eq!(unrouted.header("l5d-proxy-error").as_deref(), Some("no route found for request"));

    mesh.a
        .wait_metric(
            "outbound_http_route_request_statuses_total",
            &[("parent_name", "web"), ("route_name", "web-canary"), ("http_status", "200")],
            |v| v >= 10.0,
        )
        .await;
}

/// Sends `n` requests on `connections` connections at once; counts the
/// answers by backend.
async fn spread(proxy: SocketAddr, n: usize, connections: usize) -> HashMap<String, usize> {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(proxy).await;
            let mut seen = HashMap::<String, usize>::new();
            for _ in 0..n / connections {
                *seen.entry(c.backend(&url("web", "/split"), &[]).await).or_default() += 1;
            }
            seen
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("load task") {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_2000_requests_within_3_points_and_an_edit_moves_traffic_within_a_second() {
    let split = |v1: u32, v2: u32| {
        HttpRoute::new(NS, "web-split", "web", PORT)
            .rule(Rule::new().backend("web-v1", PORT, v1).backend("web-v2", PORT, v2))
            .manifest()
    };
    let mesh = RouteMesh::start("routes-split", &[("split.yaml", split(90, 10))]).await;

    let seen = spread(mesh.a.outbound, 2000, 4).await;
    let (v1, v2) = (seen.get("web-v1").copied().unwrap_or(0), seen.get("web-v2").copied().unwrap_or(0));
    assert_eq!(v1 + v2, 2000, "every request answered by a version: {seen:?}");
    let share = v2 as f64 / 2000.0;
    assert!((share - 0.10).abs() <= 0.03, "v2 got {:.1}% of 2000, want 10% ± 3 points", share * 100.0);

    // All of it to v2: the next requests move within a second of the file
    // changing (weft-destination's poll, its push, A's update).
    // Until then v2 answers one in ten at random: the move is the start of
    // a run of 30 answers from v2 (0.1^30 by chance).
    let mut c = mesh.conn().await;
    let edited = Instant::now();
    mesh.destination.write_manifest("split.yaml", &split(0, 100));
    let (mut run, mut run_start) = (0, edited);
    while run < 30 {
        assert!(edited.elapsed() < STEP, "traffic never moved to v2");
        if c.backend(&url("web", "/split"), &[]).await == "web-v2" {
            if run == 0 {
                run_start = Instant::now();
            }
            run += 1;
        } else {
            run = 0;
        }
    }
    let took = run_start - edited;
    assert!(took < Duration::from_secs(1), "the edit took {took:?} to move traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_modify_request_and_response_headers_and_redirect() {
    let route = HttpRoute::new(NS, "web-filters", "web", PORT)
        .rule(
            Rule::new()
                .matching(Match::prefix("/headers"))
                .request_headers(header_modifier(&[("x-set", "new")], &[("x-added", "1")], &["x-secret"]))
                .response_headers(header_modifier(&[("x-route", "web-filters")], &[], &["x-backend-secret"]))
                .backend("web-v1", PORT, 1),
        )
        .rule(
            Rule::new()
                .matching(Match::prefix("/old"))
                .redirect("new.example", "/new", 301)
                .backend("web-v1", PORT, 1),
        );
    let mesh = RouteMesh::start("routes-filters", &[("filters.yaml", route.manifest())]).await;
    let mut c = mesh.conn().await;

    let reply = c.get(&url("web", "/headers"), &[("x-set", "old"), ("x-secret", "s")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("x-route").as_deref(),
        Some("web-filters"),
        "the client sees the response filter"
    );
    let seen = mesh.v1.last().expect("v1 got the request");
    let header = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap_or_default().to_string());
    assert_eq!(header("x-set").as_deref(), Some("new"));
    assert_eq!(header("x-added").as_deref(), Some("1"));
    assert_eq!(header("x-secret"), None, "removed before the app");

    let before = mesh.v1.requests();
    let reply = c.get(&url("web", "/old/page?q=1"), &[]).await;
    assert_eq!(reply.status, 301, "{}", reply.text());
    let location = reply.header("location").unwrap_or_default();
    assert!(
        location.starts_with("http://new.example") && location.ends_with("/new/page?q=1"),
        "Location: {location}"
    );
    assert_eq!(mesh.v1.requests(), before, "a redirect never reaches the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkerd_annotations_retry_5xx_within_the_limit_and_time_out_tries_and_requests() {
    let retried = HttpRoute::new(NS, "web-retry", "web", PORT)
        .annotation("retry.linkerd.io/http", "5xx")
        .annotation("retry.linkerd.io/limit", "2")
        .annotation("retry.linkerd.io/timeout", "300ms")
        .rule(Rule::new().matching(Match::prefix("/retry")).backend("web-v1", PORT, 1));
    let bounded = HttpRoute::new(NS, "web-bounded", "web", PORT)
        .annotation("timeout.linkerd.io/request", "400ms")
        .rule(Rule::new().matching(Match::prefix("/bounded")).backend("web-v1", PORT, 1));
    // The Gateway API's own field for the same bound.
    let rule_bounded = HttpRoute::new(NS, "web-rule-bounded", "web", PORT).rule(
        Rule::new()
            .matching(Match::prefix("/rule-bounded"))
            .request_timeout("400ms")
            .backend("web-v1", PORT, 1),
    );
    let mesh = RouteMesh::start(
        "routes-retries",
        &[
            ("retry.yaml", retried.manifest()),
            ("bounded.yaml", bounded.manifest()),
            ("rule-bounded.yaml", rule_bounded.manifest()),
        ],
    )
    .await;
    let mut c = mesh.conn().await;
    assert_eq!(c.get(&url("web", "/retry"), &[]).await.status, 200);

    // Two 500s, then the third try answers: the client sees only the 200.
    let (v1, before) = (&mesh.v1, mesh.v1.requests());
    v1.fail_next(2);
    let reply = c.get(&url("web", "/retry"), &[]).await;
    assert_eq!(reply.status, 200, "recovered by retries: {}", reply.text());
    assert_eq!(v1.requests() - before, 3, "one try and two retries");

    // Three 500s exceed the limit of two retries: the last 500 is the answer.
    let before = v1.requests();
    v1.fail_next(3);
    assert_eq!(c.get(&url("web", "/retry"), &[]).await.status, 500);
    assert_eq!(v1.requests() - before, 3, "no more than the limit");
    v1.fail_next(0);

    // A try stuck for 3 s is cut at 300 ms and retried.
    let before = v1.requests();
    v1.slow_next(1, Duration::from_secs(3));
    let start = Instant::now();
    let reply = c.get(&url("web", "/retry"), &[]).await;
    assert_eq!(reply.status, 200, "the retry answered: {}", reply.text());
    assert!(start.elapsed() < Duration::from_millis(2500), "took {:?}", start.elapsed());
    assert_eq!(v1.requests() - before, 2);

    // The whole request bounded at 400 ms: 504 from the proxy.
    for path in ["/bounded", "/rule-bounded"] {
        v1.slow_next(1, Duration::from_secs(3));
        let start = Instant::now();
        let reply = c.get(&url("web", path), &[]).await;
        assert_eq!(reply.status, 504, "{path}: {:?} {}", reply.headers, reply.text());
        assert!(start.elapsed() < Duration::from_millis(2500), "{path} took {:?}", start.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_accrual_skips_a_failing_endpoint_then_probes_it_back_in() {
    let (good, bad) = (Backend::start("pool-good").await, Backend::start("pool-bad").await);
    let pool = routes::service(
        NS,
        "pool",
        PORT,
        &[
            ("balancer.linkerd.io/failure-accrual", "consecutive"),
            ("balancer.linkerd.io/failure-accrual-consecutive-max-failures", "3"),
            ("balancer.linkerd.io/failure-accrual-consecutive-min-penalty", "3s"),
            ("balancer.linkerd.io/failure-accrual-consecutive-max-penalty", "3s"),
        ],
    );
    let endpoints = static_endpoints(
        "pool",
        NS,
        PORT,
        &[StaticEndpoint::plain(good.addr), StaticEndpoint::plain(bad.addr)],
    );
    let route = HttpRoute::new(NS, "pool", "pool", PORT).rule(Rule::new().backend("pool", PORT, 1));
    let mesh = RouteMesh::start(
        "routes-accrual",
        &[("pool-svc.yaml", pool), ("pool-endpoints.yaml", endpoints), ("pool-route.yaml", route.manifest())],
    )
    .await;
    let mut c = mesh.conn().await;
    // Both endpoints serve until `bad` breaks.
    c.until(&url("pool", "/"), &[], |r| r.status == 200).await;

    bad.set_failing(true);
    let served = bad.requests();
    let start = Instant::now();
    let mut failed = 0;
    for _ in 0..40 {
        if c.get(&url("pool", "/"), &[]).await.status != 200 {
            failed += 1;
        }
    }
    let took = start.elapsed();
    // Three failures in a row eject it; its penalty (3 s) outlasts the burst
    // unless the machine is very slow, when one probe may fail too.
    let probes = usize::from(took >= Duration::from_secs(3));
    assert!(failed <= 3 + probes, "{failed} of 40 failed in {took:?}: the endpoint was not ejected");
    assert!(bad.requests() - served <= 3 + probes, "bad got {} requests", bad.requests() - served);

    // Healed: once its penalty is over it is available again, and is picked
    // as soon as the balancer's comparison favours it: under concurrent
    // load, when requests wait on `good` (sequential requests would keep
    // preferring `good`, whose latency estimate is lower).
    bad.set_failing(false);
    let before = bad.requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bad.requests() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "the healed endpoint never came back (it served {})",
            bad.requests() - before
        );
        let statuses = burst(mesh.a.outbound, &url("pool", "/"), 8, 5).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let _ = &good;
}

/// `per_connection` requests on each of `connections` connections at once:
/// every status.
async fn burst(proxy: SocketAddr, uri: &str, connections: usize, per_connection: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let uri = uri.to_string();
            tokio::spawn(async move {
                let mut c = Conn::connect(proxy).await;
                let mut statuses = Vec::new();
                for _ in 0..per_connection {
                    statuses.push(c.get(&uri, &[]).await.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("burst task"));
    }
    all
}

/// A hand-written unary gRPC service (what tonic's codegen makes of a
/// `.proto`): `test.Echo/Hello` and `test.Echo/Unary`, answering with the
/// name of the server.
mod echo {
    use std::{future::Future, net::SocketAddr, pin::Pin, task::Poll};

    use http::uri::PathAndQuery;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::{net::TcpListener, task::JoinHandle};
    use tonic::{Request, Response, Status};
    use tonic_prost::ProstCodec;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Msg {
        #[prost(string, tag = "1")]
        pub text: String,
    }

    pub struct Server {
        pub addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        pub async fn start(name: &'static str) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC server");
            let addr = listener.local_addr().expect("local addr");
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                                Ok::<_, std::convert::Infallible>(answer(name, req).await)
                            });
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            Server { addr, task }
        }
    }

    async fn answer(name: &'static str, req: http::Request<Incoming>) -> http::Response<tonic::body::Body> {
        if !matches!(req.uri().path(), "/test.Echo/Hello" | "/test.Echo/Unary") {
            return Status::unimplemented("no such method").into_http();
        }
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
        let svc = tower::service_fn(move |req: Request<Msg>| async move {
            Ok::<_, Status>(Response::new(Msg { text: format!("{name}: {}", req.into_inner().text) }))
        });
        grpc.unary(svc, req).await
    }

    /// tonic's client over one hyper HTTP/2 connection.
    #[derive(Clone)]
    struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

    impl tower::Service<http::Request<tonic::body::Body>> for H2 {
        type Response = http::Response<Incoming>;
        type Error = hyper::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(self.0.send_request(req))
        }
    }

    pub struct Client(tonic::client::Grpc<H2>);

    impl Client {
        /// Dials `via` (a proxy's outbound listener), addressing `authority`.
        pub async fn connect(via: SocketAddr, authority: &str) -> Client {
            let io = tokio::net::TcpStream::connect(via).await.expect("connect");
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            let origin = format!("http://{authority}").parse().expect("authority");
            Client(tonic::client::Grpc::with_origin(H2(send), origin))
        }

        pub async fn call(&mut self, path: &'static str, text: &str) -> Result<String, Status> {
            self.0.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
            let req = Request::new(Msg { text: text.into() });
            let rsp =
                self.0.unary(req, PathAndQuery::from_static(path), ProstCodec::<Msg, Msg>::default()).await?;
            Ok(rsp.into_inner().text)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_sends_each_method_to_its_backend() {
    let (one, two) = (echo::Server::start("echo-v1").await, echo::Server::start("echo-v2").await);
    let route = routes::grpc_route(
        NS,
        "echo",
        "echo",
        PORT,
        &[("test.Echo", "Unary", "echo-v2"), ("test.Echo", "Hello", "echo-v1")],
    );
    let mesh = RouteMesh::start(
        "routes-grpc",
        &[
            ("echo.yaml", static_endpoints("echo", NS, PORT, &[StaticEndpoint::plain(one.addr)])),
            ("echo-v1.yaml", static_endpoints("echo-v1", NS, PORT, &[StaticEndpoint::plain(one.addr)])),
            ("echo-v2.yaml", static_endpoints("echo-v2", NS, PORT, &[StaticEndpoint::plain(two.addr)])),
            ("echo-route.yaml", route),
        ],
    )
    .await;
    let authority = format!("echo.{NS}.svc.cluster.local:{PORT}");
    let mut client = within(STEP, "gRPC connect", echo::Client::connect(mesh.a.outbound, &authority)).await;
    let unary = within(STEP, "Unary", client.call("/test.Echo/Unary", "hi")).await;
    assert_eq!(unary.expect("Unary"), "echo-v2: hi");
    let hello = within(STEP, "Hello", client.call("/test.Echo/Hello", "there")).await;
    assert_eq!(hello.expect("Hello"), "echo-v1: there");
    // A method no rule names: Linkerd's answer for no route, from the proxy.
    let none = within(STEP, "Other", client.call("/test.Echo/Other", "?")).await;
    let status = none.expect_err("no route for test.Echo/Other");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routes_are_answered_per_the_gateway_api_while_the_rest_keeps_working() {
    let refs = HttpRoute::new(NS, "web-refs", "web", PORT)
        .rule(Rule::new().matching(Match::prefix("/missing")).backend("nowhere", PORT, 1))
        .rule(
            Rule::new()
                .matching(Match::prefix("/zero"))
                .backend("web-v1", PORT, 0)
                .backend("web-v2", PORT, 0),
        )
        .rule(Rule::new().matching(Match::prefix("/")).backend("web-v1", PORT, 1));
    // An invalid regex refuses its whole route: its other rule does not
    // apply either.
    let broken = HttpRoute::new(NS, "web-broken", "web", PORT)
        .rule(Rule::new().matching(Match::regex("/(unclosed")).backend("web-v2", PORT, 1))
        .rule(Rule::new().matching(Match::prefix("/broken")).backend("web-v2", PORT, 1));
    // Two routes with the same match: without timestamps the first name wins.
    let conflict = |name: &str, backend: &str| {
        HttpRoute::new(NS, name, "web", PORT)
            .rule(Rule::new().matching(Match::any().header("x-conflict", "yes")).backend(backend, PORT, 1))
    };
    let mesh = RouteMesh::start(
        "routes-bad",
        &[
            ("refs.yaml", refs.manifest()),
            ("broken.yaml", broken.manifest()),
            ("conflict-b.yaml", conflict("b-conflict", "web-v1").manifest()),
            ("conflict-a.yaml", conflict("a-conflict", "web-v2").manifest()),
        ],
    )
    .await;
    let mut c = mesh.conn().await;

    let missing = c.get(&url("web", "/missing"), &[]).await;
    assert_eq!(missing.status, 500, "{}", missing.text());
    let error = missing.header("l5d-proxy-error").unwrap_or_default();
    assert!(error.contains("nowhere"), "the missing Service is named: {error:?}");
    let zero = c.get(&url("web", "/zero"), &[]).await;
    assert_eq!(zero.status, 500, "all weights zero: {}", zero.text());
    assert_eq!(c.backend(&url("web", "/fine"), &[]).await, "web-v1", "the route's other rules work");
    assert_eq!(c.backend(&url("web", "/broken"), &[]).await, "web-v1", "the broken route is not served");
    let m = mesh.destination.metrics().await;
    assert!(
        m.get("destination_invalid_objects_total", &[("kind", "HTTPRoute.gateway.networking.k8s.io")]) >= 1.0,
        "{m}"
    );
    let log = mesh.destination.process.tail(200);
    assert!(log.contains("web-broken"), "the refused route is logged:\n{log}");

    assert_eq!(
        c.backend(&url("web", "/"), &[("x-conflict", "yes")]).await,
        "web-v2",
        "a-conflict before b-conflict"
    );
    // An older route wins over both, whatever its name.
    let older = conflict("z-conflict", "web-v1").created("2020-01-01T00:00:00Z");
    mesh.destination.write_manifest("conflict-z.yaml", &older.manifest());
    c.until(&url("web", "/"), &[("x-conflict", "yes")], |r| r.backend().as_deref() == Some("web-v1")).await;

    // weft-destination still serves, and takes a good edit.
    assert_eq!(http_get(mesh.destination.admin, "/ready").await.expect("/ready").status, 200);
    let fixed = HttpRoute::new(NS, "web-broken", "web", PORT)
        .rule(Rule::new().matching(Match::prefix("/broken")).backend("web-v2", PORT, 1));
    mesh.destination.write_manifest("broken.yaml", &fixed.manifest());
    c.until(&url("web", "/broken"), &[], |r| r.backend().as_deref() == Some("web-v2")).await;
    let _ = &mesh.v2;
}

/// Gateway API: "If a reference to a custom filter type cannot be resolved,
/// the filter MUST NOT be skipped. Instead, requests that would have been
/// processed by that filter MUST receive a HTTP error response."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "weft-destination drops filters it cannot serve (outbound.rs `filter`: Filter::Unsupported => None), \
            so a rule with an unknown ExtensionRef is served without it instead of answering an error"]
async fn a_rule_with_a_filter_weft_cannot_apply_answers_an_error_instead_of_skipping_it() {
    let route = HttpRoute::new(NS, "web-ext", "web", PORT)
        .rule(
            Rule::new()
                .matching(Match::prefix("/ext"))
                .extension("example.com", "Chaos", "monkey")
                .backend("web-v1", PORT, 1),
        )
        .rule(Rule::new().matching(Match::prefix("/")).backend("web-v1", PORT, 1));
    let mesh = RouteMesh::start("routes-ext", &[("ext.yaml", route.manifest())]).await;
    let mut c = mesh.conn().await;
    assert_eq!(c.get(&url("web", "/fine"), &[]).await.status, 200, "the other rule works");
    let before = mesh.v1.requests();
    let reply = c.get(&url("web", "/ext"), &[]).await;
    assert_eq!(reply.status, 500, "an unresolvable filter is an error: {}", reply.text());
    assert_eq!(mesh.v1.requests(), before, "the request is not sent on without its filter");
}

/// A GET without a body leaves the client without body framing; it should
/// reach an HTTP/1 app the same way (some servers refuse a GET with
/// `transfer-encoding: chunked`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "weft-proxy sends a body-less HTTP/1 GET on to a plaintext HTTP/1 endpoint with \
            `transfer-encoding: chunked`: proxy/src/http/retry.rs Replay::request rebuilds every replayable \
            body as a StreamBody, which reports neither end of stream nor an exact size"]
async fn a_get_without_a_body_reaches_the_app_without_one() {
    let mesh = RouteMesh::start("routes-framing", &[]).await;
    let mut c = mesh.conn().await;
    assert_eq!(c.get(&url("web", "/"), &[]).await.status, 200);
    let seen = mesh.v1.last().expect("v1 got the request");
    assert_eq!(seen.headers.get("transfer-encoding"), None, "{:?}", seen.headers);
    assert_eq!(seen.headers.get("content-length"), None, "{:?}", seen.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_profile_with_routes_wins_over_the_services_http_routes() {
    let canary = HttpRoute::new(NS, "web-canary", "web", PORT)
        .rule(Rule::new().matching(Match::any().header("x-canary", "true")).backend("web-v2", PORT, 1))
        .rule(Rule::new().backend("web-v1", PORT, 1));
    let profile = routes::service_profile(NS, "web", &[("GET /", "GET", "/.*")]);
    let mesh =
        RouteMesh::start("routes-profile", &[("canary.yaml", canary.manifest()), ("profile.yaml", profile)])
            .await;
    let mut c = mesh.conn().await;

    // The profile decides: `web`'s own endpoint (v1), whatever the header.
    for _ in 0..10 {
        assert_eq!(c.backend(&url("web", "/"), &[("x-canary", "true")]).await, "web-v1");
    }
    assert_eq!(mesh.v2.requests(), 0);
    // Without the profile the route is in force.
    mesh.destination.remove_manifest("profile.yaml");
    c.until(&url("web", "/"), &[("x-canary", "true")], |r| r.backend().as_deref() == Some("web-v2")).await;
    assert_eq!(c.backend(&url("web", "/"), &[]).await, "web-v1");
}

/// examples/demo/ as `weft demo` serves it: its manifests load without an
/// error, and its header canary on `api` sends `x-canary: true` to
/// backend-v2, everything else to backend-v1, from web's proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_manifests_load_and_their_header_canary_routes_to_v2() {
    const DEMO: &str = "demo";
    let dir = TempDir::new("routes-demo");
    let ca = Ca::create(&dir.join("ca"));
    let (web, backend) = (Workload::new(DEMO, "web"), Workload::new(DEMO, "backend"));
    let identity = IdentityService::builder(&ca, dir.path()).workload(&web).workload(&backend).start().await;
    let (v1, v2) = (Backend::start("backend-v1").await, Backend::start("backend-v2").await);
    let proxy_of = |label: &'static str, app: SocketAddr| {
        Proxy::builder(label, dir.path()).identity(&ca, identity.addr, &backend).inbound_app(app).start()
    };
    let (p1, p2) = (proxy_of("backend-v1", v1.addr).await, proxy_of("backend-v2", v2.addr).await);
    // The demo's addresses (port base 4300) moved to this test's proxies.
    let endpoints = include_str!("../../examples/demo/endpoints.yaml")
        .replace("127.0.0.1:4331", &p1.inbound.to_string())
        .replace("127.0.0.1:4341", &p2.inbound.to_string());
    let manifests = [
        ("endpoints.yaml", endpoints),
        ("mesh.yaml", include_str!("../../examples/demo/mesh.yaml").to_string()),
        ("routes.yaml", include_str!("../../examples/demo/routes.yaml").to_string()),
        ("policy.yaml", include_str!("../../examples/demo/policy.yaml").to_string()),
    ];
    let destination = DestinationService::start(&dir.join("destination"), &manifests).await;
    let m = destination.metrics().await;
    assert_eq!(m.get("destination_manifest_errors_total", &[]), 0.0, "{m}");
    assert_eq!(m.get("destination_invalid_objects_total", &[]), 0.0, "{m}");
    let a = Proxy::builder("web", dir.path())
        .identity(&ca, identity.addr, &web)
        .destination(destination.addr)
        .start()
        .await;

    let mut c = Conn::connect(a.outbound).await;
    let api = |path: &str| format!("http://api.{DEMO}.svc.cluster.local{path}");
    for _ in 0..10 {
        assert_eq!(c.backend(&api("/api/list"), &[("x-canary", "true")]).await, "backend-v2");
        assert_eq!(c.backend(&api("/api/list"), &[]).await, "backend-v1");
    }
    let seen = v2.last().expect("v2 served the canaries");
    let client_id = seen.headers.get("l5d-client-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(client_id, web.identity(), "over mTLS, as web");
    // The weighted split on `backend` is untouched (its profile decides).
    let backend_url = format!("http://backend.{DEMO}.svc.cluster.local/api/list");
    let mut versions = HashMap::<String, usize>::new();
    for _ in 0..100 {
        *versions.entry(c.backend(&backend_url, &[]).await).or_default() += 1;
    }
    assert!(versions.get("backend-v1").copied().unwrap_or(0) >= 70, "{versions:?}");
}

/// weft-destination in Kubernetes mode (the binary, KUBECONFIG pointing at
/// the stub apiserver answering from the captured emojivoto objects): it
/// lists and watches the cluster, then writes each mesh route's Gateway API
/// status with a merge PATCH of `/status`, which is what `kubectl get
/// httproute -o yaml` shows a user.
// A plain test: the stub apiserver runs its own runtime, which must be
// started and dropped outside of one.
#[test]
fn in_kubernetes_mode_the_captured_routes_get_their_status_patched() {
    use std::sync::{Arc, Mutex};
    use weft_e2e::apiserver::{Answer, ApiServer, Handler, State};

    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kubernetes");
    let fixture = |name: &str| {
        let text = std::fs::read_to_string(fixtures.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        Answer::text(200, "application/json", &text)
    };
    // The cluster-wide paths weft-destination lists (and watches); every
    // captured object is in `emojivoto`.
    let mut state = State::default();
    for (path, file) in [
        ("/apis/split.smi-spec.io/v1alpha4", "discovery-apis-split.smi-spec.io-v1alpha4.json"),
        ("/apis/split.smi-spec.io/v1alpha2", "discovery-apis-split.smi-spec.io-v1alpha2.json"),
        ("/apis/linkerd.io/v1alpha2", "discovery-apis-linkerd.io-v1alpha2.json"),
        ("/apis/policy.linkerd.io/v1beta3", "discovery-apis-policy.linkerd.io-v1beta3.json"),
        ("/apis/policy.linkerd.io/v1alpha1", "discovery-apis-policy.linkerd.io-v1alpha1.json"),
        ("/apis/gateway.networking.k8s.io/v1", "discovery-apis-gateway.networking.k8s.io-v1.json"),
        ("/api/v1/services", "services-emojivoto.list.json"),
        ("/api/v1/pods", "pods-emojivoto.list.json"),
        ("/api/v1/namespaces", "namespaces.list.json"),
        ("/apis/discovery.k8s.io/v1/endpointslices", "endpointslices-emojivoto.list.json"),
        ("/apis/split.smi-spec.io/v1alpha2/trafficsplits", "trafficsplits-v1alpha2.list.json"),
        ("/apis/split.smi-spec.io/v1alpha4/trafficsplits", "trafficsplits-v1alpha4.list.json"),
        ("/apis/linkerd.io/v1alpha2/serviceprofiles", "serviceprofiles.list.json"),
        ("/apis/policy.linkerd.io/v1beta3/httproutes", "httproutes.policy.linkerd.io-emojivoto.list.json"),
        (
            "/apis/gateway.networking.k8s.io/v1/httproutes",
            "httproutes.gateway.networking.k8s.io-emojivoto.list.json",
        ),
        (
            "/apis/gateway.networking.k8s.io/v1/grpcroutes",
            "grpcroutes.gateway.networking.k8s.io-emojivoto.list.json",
        ),
        ("/apis/policy.linkerd.io/v1beta3/servers", "servers.policy.linkerd.io-emojivoto.list.json"),
        (
            "/apis/policy.linkerd.io/v1alpha1/authorizationpolicies",
            "authorizationpolicies.policy.linkerd.io-emojivoto.list.json",
        ),
        (
            "/apis/policy.linkerd.io/v1alpha1/meshtlsauthentications",
            "meshtlsauthentications.policy.linkerd.io-emojivoto.list.json",
        ),
        (
            "/apis/policy.linkerd.io/v1alpha1/networkauthentications",
            "networkauthentications.policy.linkerd.io-emojivoto.list.json",
        ),
        (
            "/apis/policy.linkerd.io/v1alpha1/httplocalratelimitpolicies",
            "httplocalratelimitpolicies.policy.linkerd.io-emojivoto.list.json",
        ),
    ] {
        state.routes.insert(path.to_string(), fixture(file));
    }
    // A status PATCH is recorded and answered with the patch as the object.
    let patches: Arc<Mutex<Vec<(String, String, serde_json::Value)>>> = Arc::default();
    let recorded = patches.clone();
    let handler: Handler = Arc::new(move |method, path, query, body| {
        if method != "PATCH" || !path.ends_with("/status") {
            return None;
        }
        recorded.lock().unwrap_or_else(|p| p.into_inner()).push((path.into(), query.into(), body.clone()));
        let mut obj = body.clone();
        obj["apiVersion"] = "gateway.networking.k8s.io/v1".into();
        obj["kind"] = if path.contains("/grpcroutes/") { "GRPCRoute" } else { "HTTPRoute" }.into();
        Some(Answer::json(200, &obj))
    });
    state.handler = Some(handler);
    let apiserver = ApiServer::start(state);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(status_patched(&apiserver, &patches));
}

async fn status_patched(
    apiserver: &weft_e2e::apiserver::ApiServer,
    patches: &std::sync::Mutex<Vec<(String, String, serde_json::Value)>>,
) {
    let dir = TempDir::new("routes-k8s");
    let kubeconfig = apiserver.kubeconfig(dir.path());

    let (addr, admin) = (free_addr(), free_addr());
    let mut cmd = weft_e2e::Process::command("weft-destination");
    cmd.env("KUBECONFIG", &kubeconfig).env_remove("KUBERNETES_SERVICE_HOST").arg("--kubernetes").args([
        "--addr",
        &addr.to_string(),
        "--admin-addr",
        &admin.to_string(),
    ]);
    let mut destination = weft_e2e::Process::spawn("weft-destination", cmd);
    if let Err(e) = destination.wait_ready(admin, STEP).await {
        panic!("{e}\napiserver saw: {:#?}", apiserver.seen());
    }

    let voting = "/apis/gateway.networking.k8s.io/v1/namespaces/emojivoto/httproutes/voting-route/status";
    let patched = poll_until(STEP, Duration::from_millis(50), || async {
        let all = patches.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.into_iter().find(|(path, _, _)| path == voting)
    })
    .await;
    let Some((_, query, body)) = patched else {
        panic!("voting-route's status was never patched; apiserver saw: {:#?}", apiserver.seen())
    };
    assert!(query.contains("fieldManager=weft-destination"), "{query}");
    let parents = body["status"]["parents"].as_array().cloned().unwrap_or_default();
    assert_eq!(parents.len(), 1, "{body}");
    assert_eq!(parents[0]["controllerName"], "weft.io/destination");
    let conditions: Vec<(String, String, String)> = parents[0]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("status"), s("reason"))
        })
        .collect();
    // The captured route's canary backend (voting-v2) has no Service.
    let want = [("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "BackendNotFound")]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(conditions, want, "{body}");
    let grpc = poll_until(STEP, Duration::from_millis(50), || async {
        let all = patches.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.iter().any(|(path, _, _)| path.contains("/grpcroutes/")).then_some(())
    })
    .await;
    assert!(grpc.is_some(), "the GRPCRoute's status too: {:?}", patches.lock().map(|p| p.len()));
}
