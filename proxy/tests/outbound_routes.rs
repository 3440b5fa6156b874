//! Outbound routing by OutboundPolicies through the real proxy, against an
//! in-test control plane (Destination + OutboundPolicies on one port): the
//! app sends through the proxy in explicit mode to
//! `web.test.svc.cluster.local`, whose policy routes each request to the
//! `web` (v1) or `web-v2` echo servers.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use linkerd2_proxy_api::{http_route as hr, http_types, outbound::http_route::filter::Kind as Filter};
use support::{outbound_api::*, *};

const PORT: u16 = 80;
const WORKLOAD: &str = r#"{"ns":"test","pod":"client-0"}"#;

struct Mesh {
    v1: HttpServer,
    v2: HttpServer,
    api: OutboundApi,
    proxy: Proxy,
}

async fn mesh(profile_routes: bool, first: Option<linkerd2_proxy_api::outbound::OutboundPolicy>) -> Mesh {
    let v1 = HttpServer::start().await;
    let v2 = HttpServer::start().await;
    let api = OutboundApi::start(
        &[("web.test.svc.cluster.local:80", v1.addr), ("web-v2.test.svc.cluster.local:80", v2.addr)],
        vec![("web.test.svc.cluster.local:80", profile("web", profile_routes))],
        first,
    )
    .await;
    let proxy = Proxy::builder()
        .env("WEFT_PROXY_DESTINATION_SVC_ADDR", api.addr)
        .env("WEFT_PROXY_POLICY_WORKLOAD", WORKLOAD)
        .spawn()
        .await;
    Mesh { v1, v2, api, proxy }
}

/// Header `x-canary: true` to v2, everything else to v1.
fn canary() -> linkerd2_proxy_api::outbound::OutboundPolicy {
    policy(
        PORT,
        vec![route(
            "web-canary",
            vec![
                rule(vec![header_exact("x-canary", "true")], vec![], vec![backend("web-v2", PORT, 1)]),
                rule(vec![prefix("/")], vec![], vec![backend("web", PORT, 1)]),
            ],
        )],
    )
}

fn split(v1: u32, v2: u32) -> linkerd2_proxy_api::outbound::OutboundPolicy {
    policy(
        PORT,
        vec![route(
            "web-split",
            vec![rule(
                vec![prefix("/")],
                vec![],
                vec![backend("web", PORT, v1), backend("web-v2", PORT, v2)],
            )],
        )],
    )
}

fn get(path: &str) -> http::request::Builder {
    Request::get(format!("http://web.test.svc.cluster.local{path}"))
}

async fn send(
    conn: &mut hyper::client::conn::http1::SendRequest<BoxBody>,
    req: http::request::Builder,
) -> Collected {
    within("ready", conn.ready()).await.expect("connection usable");
    let rsp = within("response", conn.send_request(req.body(empty()).unwrap())).await.expect("response");
    collect(rsp).await
}

/// (requests v1 saw, requests v2 saw)
fn seen(m: &Mesh) -> (usize, usize) {
    (m.v1.seen().len(), m.v2.seen().len())
}

#[tokio::test]
async fn a_header_match_sends_canaries_to_v2_and_the_rest_to_v1() {
    let m = mesh(false, Some(canary())).await;
    let mut conn = h1_conn(m.proxy.outbound).await;
    for _ in 0..5 {
        assert_eq!(send(&mut conn, get("/x")).await.status, StatusCode::OK);
        assert_eq!(send(&mut conn, get("/x").header("x-canary", "true")).await.status, StatusCode::OK);
    }
    assert_eq!(seen(&m), (5, 5));
    assert!(m.v2.seen().iter().all(|s| s.header("x-canary") == Some("true")));
    let spec = m.api.specs.lock().unwrap()[0].clone();
    assert_eq!(spec.source_workload, WORKLOAD);
    assert_eq!(
        spec.target,
        Some(linkerd2_proxy_api::outbound::traffic_spec::Target::Authority(
            "web.test.svc.cluster.local:80".into()
        ))
    );
}

#[tokio::test]
async fn weights_split_2000_requests_within_3_points_and_an_edit_moves_traffic_within_a_second() {
    let m = mesh(false, Some(split(70, 30))).await;
    let mut conn = h1_conn(m.proxy.outbound).await;
    for _ in 0..2000 {
        assert_eq!(send(&mut conn, get("/w")).await.status, StatusCode::OK);
    }
    let (v1, v2) = seen(&m);
    assert_eq!(v1 + v2, 2000);
    let share = v2 as f64 / 2000.0;
    assert!((0.27..=0.33).contains(&share), "v2 got {share:.3} of requests, want 0.30 ± 0.03");

    // Everything to v2 now: within a second, v1 sees nothing more.
    m.api.set(Some(split(0, 1)));
    let edited = Instant::now();
    loop {
        let before = seen(&m);
        send(&mut conn, get("/w")).await;
        if seen(&m).0 == before.0 {
            break;
        }
        assert!(edited.elapsed() < Duration::from_secs(1), "the edit took more than a second");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = seen(&m);
    for _ in 0..50 {
        send(&mut conn, get("/w")).await;
    }
    assert_eq!(seen(&m), (before.0, before.1 + 50));
}

fn headers(pairs: &[(&str, &str)]) -> Option<http_types::Headers> {
    Some(http_types::Headers {
        headers: pairs
            .iter()
            .map(|(n, v)| http_types::headers::Header { name: n.to_string(), value: v.as_bytes().to_vec() })
            .collect(),
    })
}

#[tokio::test]
async fn filters_modify_headers_redirect_and_inject_failures() {
    let rules = vec![
        rule(
            vec![prefix("/headers")],
            vec![
                Filter::RequestHeaderModifier(hr::RequestHeaderModifier {
                    add: headers(&[("x-added", "1")]),
                    set: headers(&[("x-set", "new")]),
                    remove: vec!["x-secret".into()],
                }),
                Filter::ResponseHeaderModifier(hr::ResponseHeaderModifier {
                    add: None,
                    set: headers(&[("x-route", "web-filters")]),
                    remove: vec![],
                }),
            ],
            vec![backend("web", PORT, 1)],
        ),
        rule(
            vec![prefix("/old")],
            vec![Filter::Redirect(hr::RequestRedirect {
                scheme: None,
                host: "new.example".into(),
                path: Some(hr::PathModifier {
                    replace: Some(hr::path_modifier::Replace::Prefix("/new".into())),
                }),
                port: 0,
                status: 301,
            })],
            vec![backend("web", PORT, 1)],
        ),
        rule(
            vec![prefix("/chaos")],
            vec![Filter::FailureInjector(hr::HttpFailureInjector {
                status: 503,
                message: "chaos".into(),
                ratio: None,
            })],
            vec![backend("web", PORT, 1)],
        ),
    ];
    let m = mesh(false, Some(policy(PORT, vec![route("web-filters", rules)]))).await;
    let mut conn = h1_conn(m.proxy.outbound).await;

    let rsp = send(&mut conn, get("/headers").header("x-set", "old").header("x-secret", "s")).await;
    assert_eq!(rsp.status, StatusCode::OK);
    assert_eq!(rsp.headers["x-route"], "web-filters");
    let seen = m.v1.last();
    assert_eq!(seen.header("x-added"), Some("1"));
    assert_eq!(seen.header("x-set"), Some("new"));
    assert_eq!(seen.header("x-secret"), None);

    let rsp = send(&mut conn, get("/old/page?q=1")).await;
    assert_eq!(rsp.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(rsp.headers[http::header::LOCATION], "http://new.example/new/page?q=1");

    let rsp = send(&mut conn, get("/chaos")).await;
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.headers["l5d-proxy-error"], "chaos");
    assert_eq!(m.v1.seen().len(), 1, "redirects and injected failures never reach the app");

    let metrics = m.proxy.metrics().await;
    for status in ["200", "301", "503"] {
        let labels = [
            ("parent_kind", "Service"),
            ("parent_namespace", "test"),
            ("parent_name", "web"),
            ("parent_port", "80"),
            ("route_group", "gateway.networking.k8s.io"),
            ("route_kind", "HTTPRoute"),
            ("route_name", "web-filters"),
            ("http_status", status),
        ];
        assert_eq!(metrics.get("outbound_http_route_request_statuses_total", &labels), 1.0, "{status}");
    }
}

#[tokio::test]
async fn a_rule_timeout_answers_504_and_unmatched_requests_get_404() {
    let rules = vec![with_timeout(
        rule(vec![prefix("/slow")], vec![], vec![backend("web", PORT, 1)]),
        Duration::from_millis(200),
    )];
    let m = mesh(false, Some(policy(PORT, vec![route("web-slow", rules)]))).await;
    let mut conn = h1_conn(m.proxy.outbound).await;

    let start = Instant::now();
    let rsp = send(&mut conn, get("/slow?ms=3000")).await;
    assert_eq!(rsp.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() < Duration::from_millis(1500), "took {:?}", start.elapsed());
    assert!(rsp.headers.contains_key("l5d-proxy-error"));

    let mut conn = h1_conn(m.proxy.outbound).await;
    let rsp = send(&mut conn, get("/elsewhere")).await;
    assert_eq!(rsp.status, StatusCode::NOT_FOUND);
    assert_eq!(rsp.headers["l5d-proxy-error"], "no route found for request");
    assert!(m.v1.seen().iter().all(|s| !s.uri.contains("/elsewhere")));

    let metrics = m.proxy.metrics().await;
    let statuses = |route: &str, status: &str| {
        metrics.get(
            "outbound_http_route_request_statuses_total",
            &[("parent_name", "web"), ("route_name", route), ("http_status", status)],
        )
    };
    assert_eq!(statuses("", ""), 1.0, "the unmatched request, counted under no route");
    assert!(metrics.has("outbound_http_route_request_duration_seconds_count"));
}

#[tokio::test]
async fn a_service_profile_with_routes_takes_precedence() {
    let m = mesh(true, Some(canary())).await;
    let mut conn = h1_conn(m.proxy.outbound).await;
    for _ in 0..5 {
        assert_eq!(send(&mut conn, get("/x").header("x-canary", "true")).await.status, StatusCode::OK);
    }
    assert_eq!(seen(&m), (5, 0), "the profile's service, not the policy's canary");
}

#[tokio::test]
async fn malformed_policies_and_a_lost_control_plane_keep_the_last_good_policy() {
    let m = mesh(false, Some(canary())).await;
    let mut conn = h1_conn(m.proxy.outbound).await;
    send(&mut conn, get("/x").header("x-canary", "true")).await;
    assert_eq!(seen(&m), (0, 1));

    // An invalid regex, a balancer without discovery, no protocol at all.
    let mut bad_regex = split(0, 1);
    if let Some(linkerd2_proxy_api::outbound::proxy_protocol::Kind::Detect(d)) =
        bad_regex.protocol.as_mut().and_then(|p| p.kind.as_mut())
    {
        d.http1 = Some(linkerd2_proxy_api::outbound::proxy_protocol::Http1 {
            routes: vec![route(
                "bad",
                vec![rule(vec![regex_path("(")], vec![], vec![backend("web-v2", PORT, 1)])],
            )],
            failure_accrual: None,
        });
    }
    let mut no_discovery = split(0, 1);
    if let Some(linkerd2_proxy_api::outbound::proxy_protocol::Kind::Detect(d)) =
        no_discovery.protocol.as_mut().and_then(|p| p.kind.as_mut())
    {
        let b = &mut d.http1.as_mut().unwrap().routes[0].rules[0];
        if let Some(linkerd2_proxy_api::outbound::http_route::distribution::Kind::RandomAvailable(r)) =
            b.backends.as_mut().and_then(|d| d.kind.as_mut())
        {
            r.backends[0].backend.as_mut().unwrap().backend.as_mut().unwrap().kind =
                Some(linkerd2_proxy_api::outbound::backend::Kind::Balancer(Default::default()));
        }
    }
    let no_protocol = linkerd2_proxy_api::outbound::OutboundPolicy { protocol: None, ..split(0, 1) };
    for bad in [bad_regex, no_discovery, no_protocol] {
        m.api.set(Some(bad));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = seen(&m);
        send(&mut conn, get("/x")).await;
        send(&mut conn, get("/x").header("x-canary", "true")).await;
        assert_eq!(seen(&m), (before.0 + 1, before.1 + 1), "the canary policy still routes");
    }

    m.api.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = seen(&m);
    let mut conn = h1_conn(m.proxy.outbound).await;
    send(&mut conn, get("/x").header("x-canary", "true")).await;
    assert_eq!(seen(&m), (before.0, before.1 + 1), "the last policy stays while the control plane is away");
    assert!(m.proxy.stderr().contains("ignoring a malformed outbound policy"));
    assert!(!m.proxy.stderr().contains("panicked"));
}

#[tokio::test]
async fn grpc_routes_match_service_and_method() {
    use support::grpc::{msg, EchoClient, GrpcServer};
    let echo = GrpcServer::start().await;
    let api = OutboundApi::start(
        &[("web.test.svc.cluster.local:80", echo.addr)],
        vec![],
        Some(grpc_policy(PORT, vec![grpc_route("echo-unary", &[("test.Echo", "Unary")], "web", PORT)])),
    )
    .await;
    let proxy = Proxy::builder().env("WEFT_PROXY_DESTINATION_SVC_ADDR", api.addr).spawn().await;
    let mut client = EchoClient::connect(proxy.outbound, "web.test.svc.cluster.local:80").await;

    let reply = client.unary(msg("hi", 1)).await.expect("the routed method");
    assert_eq!(reply.text, "echo: hi");
    let Err(refused) = client.server_stream(msg("hi", 3)).await else { panic!("no rule for ServerStream") };
    assert_eq!(refused.code(), tonic::Code::NotFound);

    let metrics = proxy.metrics().await;
    assert_eq!(
        metrics.get(
            "outbound_http_route_backend_requests_total",
            &[("route_name", "echo-unary"), ("route_kind", "GRPCRoute"), ("backend_name", "web")],
        ),
        1.0
    );
}

/// Transparent mode, as in a pod: the app dials the Service's address
/// (here `127.0.0.1:8080`, where nothing listens), iptables sends it to the
/// proxy, and the proxy asks OutboundPolicies by that address. Needs root.
#[test]
fn transparent_mode_routes_by_the_original_destinations_policy() {
    use support::netns::{skip, NetNs};
    if skip() {
        return;
    }
    const PROXY_UID: u32 = 2102;
    let ns = NetNs::new("outpol");
    ns.redirect_outbound("iptables", "8080", PROXY_UID);
    let wrapper = ns.exec_as(PROXY_UID);
    ns.run(move || async move {
        let v1 = HttpServer::start().await;
        let v2 = HttpServer::start().await;
        let cluster_ip: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let api = OutboundApi::start(
            &[("web.test.svc.cluster.local:80", v1.addr), ("web-v2.test.svc.cluster.local:80", v2.addr)],
            vec![],
            Some(canary()),
        )
        .await;
        let words: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let proxy = ProxyBuilder::new()
            .wrapper(&words)
            .fixed_addrs("127.0.0.1:4140".parse().unwrap(), loopback(free_port()), loopback(free_port()))
            .env("WEFT_PROXY_DESTINATION_SVC_ADDR", api.addr)
            .spawn()
            .await;
        for canary in ["false", "true"] {
            let header = format!("x-canary: {canary}");
            let out = curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &header,
                "http://127.0.0.1:8080/t",
            ])
            .await;
            assert_eq!(out.stdout, "200", "{out:?}\n{}", proxy.stderr());
        }
        assert_eq!((v1.seen().len(), v2.seen().len()), (1, 1));
        let spec = api.specs.lock().unwrap()[0].clone();
        assert_eq!(
            spec.target,
            Some(linkerd2_proxy_api::outbound::traffic_spec::Target::Addr(cluster_ip.into()))
        );
    });
}

#[tokio::test]
async fn forward_backends_invalid_backends_and_backend_filters() {
    let pod = HttpServer::start().await;
    let rules = vec![
        rule(vec![prefix("/pod")], vec![], vec![forward("web-0", pod.addr, 1)]),
        rule(vec![prefix("/nowhere")], vec![], vec![backend("web", PORT, 0)]),
        rule(vec![prefix("/missing")], vec![], vec![invalid_backend("Service web-gone not found", 1)]),
        rule(
            vec![prefix("/tagged")],
            vec![],
            vec![with_backend_header(backend("web", PORT, 1), "x-backend", "web")],
        ),
    ];
    let m = mesh(false, Some(policy(PORT, vec![route("web-forward", rules)]))).await;
    let mut conn = h1_conn(m.proxy.outbound).await;
    assert_eq!(send(&mut conn, get("/pod/a")).await.status, StatusCode::OK);
    assert_eq!(pod.seen().len(), 1);
    let rsp = send(&mut conn, get("/nowhere")).await;
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE, "every weight is zero");
    assert_eq!(seen(&m), (0, 0));

    // weft-destination's answer for a backendRef to a missing Service.
    let rsp = send(&mut conn, get("/missing")).await;
    assert_eq!(rsp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(rsp.headers["l5d-proxy-error"], "Service web-gone not found");
    assert_eq!(seen(&m), (0, 0));

    assert_eq!(send(&mut conn, get("/tagged")).await.status, StatusCode::OK);
    assert_eq!(m.v1.last().header("x-backend"), Some("web"), "the backend's own filter");
}

#[tokio::test]
async fn http2_requests_use_the_policys_http2_routes() {
    let m = mesh(false, Some(canary())).await;
    let mut conn = h2_conn(m.proxy.outbound).await;
    for canary in ["false", "true"] {
        let req = get("/h2").header("x-canary", canary).body(empty()).unwrap();
        within("ready", conn.ready()).await.expect("connection usable");
        let rsp = within("response", conn.send_request(req)).await.expect("response");
        assert_eq!(collect(rsp).await.status, StatusCode::OK);
    }
    assert_eq!(seen(&m), (1, 1));
    assert_eq!(m.v2.last().version, http::Version::HTTP_2, "HTTP/2 end to end");
}

/// An app that answers 503 to every other request (the first included).
async fn flaky() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>, AbortOnDrop) {
    failing_app(|n| n.is_multiple_of(2)).await
}

/// An app that answers 503 to its `n`th request when `fails(n)`, else 200,
/// and counts its requests.
async fn failing_app(
    fails: fn(usize) -> bool,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>, AbortOnDrop) {
    use std::sync::{atomic::Ordering, Arc};
    let listener = tokio::net::TcpListener::bind(loopback(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let n = counted.fetch_add(1, Ordering::SeqCst);
                    let status = if fails(n) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder().status(status).body(full("flaky\n")).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, count, AbortOnDrop(task))
}

#[tokio::test]
async fn route_retries_recover_failures_up_to_the_limit_and_per_try_timeouts() {
    use std::sync::atomic::Ordering;
    let (flaky_addr, flaky_count, _flaky) = flaky().await;
    let rules = vec![
        with_retry(
            rule(vec![prefix("/flaky")], vec![], vec![forward("flaky", flaky_addr, 1)]),
            1,
            (500, 599),
            None,
        ),
        with_retry(rule(vec![prefix("/status")], vec![], vec![backend("web", PORT, 1)]), 2, (500, 599), None),
        with_retry(
            rule(vec![prefix("/slow")], vec![], vec![backend("web", PORT, 1)]),
            1,
            (500, 599),
            Some(Duration::from_millis(150)),
        ),
        rule(vec![prefix("/status/504")], vec![], vec![backend("web-v2", PORT, 1)]),
    ];
    let m = mesh(false, Some(policy(PORT, vec![route("web-retries", rules)]))).await;
    let mut conn = h1_conn(m.proxy.outbound).await;

    // Every other try fails; one retry each time is enough.
    for _ in 0..10 {
        let rsp =
            send(&mut conn, Request::post("http://web.test.svc.cluster.local/flaky").header("x-n", "1"))
                .await;
        assert_eq!(rsp.status, StatusCode::OK);
    }
    assert_eq!(flaky_count.load(Ordering::SeqCst), 20);

    // Always failing: the first try and two retries, then the failure.
    let rsp = send(&mut conn, get("/status/503")).await;
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(m.v1.seen().iter().filter(|s| s.uri == "/status/503").count(), 3);

    // Each try has 150ms; two tries, then 504.
    let start = Instant::now();
    let rsp = send(&mut conn, get("/slow?ms=2000")).await;
    assert_eq!(rsp.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() < Duration::from_millis(1000), "took {:?}", start.elapsed());
    assert_eq!(m.v1.state.started.load(Ordering::SeqCst), 5, "3 /status tries and 2 /slow tries");

    // A rule without retries sends once.
    let rsp = send(&mut conn, get("/status/504")).await;
    assert_eq!(rsp.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(m.v2.seen().len(), 1);

    let metrics = m.proxy.metrics().await;
    let route = [("route_name", "web-retries")];
    assert_eq!(metrics.get("outbound_http_route_retry_requests_total", &route), 10.0 + 2.0 + 1.0);
    assert_eq!(metrics.get("outbound_http_route_retry_successes_total", &route), 10.0);
    assert_eq!(metrics.get("outbound_http_route_retry_limit_exceeded_total", &route), 2.0);
}

#[tokio::test]
async fn failure_accrual_ejects_an_endpoint_after_its_failures_and_probes_it_back() {
    use std::sync::atomic::Ordering;
    let (bad, bad_count, _bad) = failing_app(|_| true).await;
    let good = HttpServer::start().await;
    let api = OutboundApi::start(
        &[("web.test.svc.cluster.local:80", bad), ("web.test.svc.cluster.local:80", good.addr)],
        vec![],
        Some(with_accrual(
            policy(
                PORT,
                vec![route("web", vec![rule(vec![prefix("/")], vec![], vec![backend("web", PORT, 1)])])],
            ),
            2,
            Duration::from_millis(1500),
        )),
    )
    .await;
    let proxy = Proxy::builder().env("WEFT_PROXY_DESTINATION_SVC_ADDR", api.addr).spawn().await;
    let mut conn = h1_conn(proxy.outbound).await;
    // The good endpoint is the slower one, so the bad one wins every
    // comparison while it is in the pool.
    let took = burst(&mut conn).await;
    assert!(took < Duration::from_millis(1500), "the burst must fit in the penalty: {took:?}");
    assert_eq!(bad_count.load(Ordering::SeqCst), 2, "ejected after 2 failures in a row, not the default 5");

    tokio::time::sleep(Duration::from_millis(1600)).await;
    burst(&mut conn).await;
    assert_eq!(bad_count.load(Ordering::SeqCst), 3, "one probe once the penalty is over, then ejected again");
}

/// 10 requests that the good endpoint answers after 40ms (slower than the
/// balancer's default estimate, so an endpoint it knows nothing about wins
/// the comparison); how long they took.
async fn burst(conn: &mut hyper::client::conn::http1::SendRequest<BoxBody>) -> Duration {
    let start = Instant::now();
    for _ in 0..10 {
        send(conn, get("/slow?ms=40")).await;
    }
    start.elapsed()
}

// weft's extensions (field 1000 of the OutboundPolicy, as weft-destination
// sends them): RequestMirror and URLRewrite.

/// Rule `rule_index` of route `route_name` (as `route` names it), to extend.
fn extension(route_name: &str, rule_index: u32) -> weft_api::RuleExtension {
    weft_api::RuleExtension { route: route(route_name, vec![]).metadata, rule_index, ..Default::default() }
}

/// A mirror to `b`'s backend for `numerator / denominator` of requests.
fn mirror(
    b: linkerd2_proxy_api::outbound::http_route::WeightedRouteBackend,
    numerator: u32,
    denominator: u32,
) -> weft_api::Mirror {
    weft_api::Mirror {
        backend: b.backend.and_then(|b| b.backend),
        ratio: Some(hr::Ratio { numerator, denominator }),
    }
}

/// Every request to v1, through one rule of route `web-mirrored`.
fn to_v1() -> linkerd2_proxy_api::outbound::OutboundPolicy {
    policy(
        PORT,
        vec![route("web-mirrored", vec![rule(vec![prefix("/")], vec![], vec![backend("web", PORT, 1)])])],
    )
}

fn post(path: &str) -> http::request::Builder {
    Request::post(format!("http://web.test.svc.cluster.local{path}"))
}

async fn send_body(
    conn: &mut hyper::client::conn::http1::SendRequest<BoxBody>,
    req: http::request::Builder,
    body: BoxBody,
) -> Collected {
    within("ready", conn.ready()).await.expect("connection usable");
    collect(within("response", conn.send_request(req.body(body).unwrap())).await.expect("response")).await
}

async fn wait_seen(server: &HttpServer, n: usize) {
    within("the mirror to see its copies", async {
        while server.seen().len() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn mirror_labels<'a>(backend: &'a str, result: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("parent_name", "web"),
        ("route_name", "web-mirrored"),
        ("route_kind", "HTTPRoute"),
        ("backend_name", backend),
        ("result", result),
    ]
}

#[tokio::test]
async fn a_mirror_gets_a_copy_of_every_request_bodies_included_and_the_client_only_the_primarys_answer() {
    let m = mesh(false, None).await;
    let mirrored = weft_api::RuleExtension {
        mirrors: vec![mirror(backend("web-v2", PORT, 1), 1, 1)],
        ..extension("web-mirrored", 0)
    };
    m.api.set_extended(to_v1(), vec![mirrored]);
    let mut conn = h1_conn(m.proxy.outbound).await;
    for i in 0..20 {
        let rsp = send(&mut conn, get(&format!("/m/{i}"))).await;
        assert_eq!(rsp.status, StatusCode::OK);
    }
    // A body of one frame (content-length) and one of three (chunked).
    let rsp = send_body(&mut conn, post("/full"), full("a body for both")).await;
    assert_eq!((rsp.status, &rsp.body[..]), (StatusCode::OK, &b"a body for both"[..]), "v1's echo");
    let (tx, body) = channel_body();
    for chunk in ["one,", "two,", "three"] {
        tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from(chunk)))).await.unwrap();
    }
    drop(tx);
    let rsp = send_body(&mut conn, post("/chunked"), body).await;
    assert_eq!(&rsp.body[..], b"one,two,three");

    wait_seen(&m.v2, 22).await;
    assert_eq!(m.v1.seen().len(), 22);
    for server in [&m.v1, &m.v2] {
        let seen = server.seen();
        let body = |path: &str| seen.iter().find(|s| s.uri == path).map(|s| s.body.clone()).expect(path);
        assert_eq!(&body("/full")[..], b"a body for both");
        assert_eq!(&body("/chunked")[..], b"one,two,three");
        assert_eq!(seen.iter().filter(|s| s.uri.starts_with("/m/")).count(), 20);
    }
    m.proxy
        .wait_metric("outbound_http_route_mirror_requests_total", &mirror_labels("web-v2", "sent"), 22.0)
        .await;

    // Linkerd's message alone (no field 1000): no more copies.
    m.api.set(Some(to_v1()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        send(&mut conn, get("/plain")).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(m.v2.seen().len(), 22, "no copies without the extension");
    assert_eq!(m.v1.seen().iter().filter(|s| s.uri == "/plain").count(), 10);
}

#[tokio::test]
async fn a_mirror_at_25_percent_gets_a_quarter_of_1000_requests() {
    let m = mesh(false, None).await;
    let mirrored = weft_api::RuleExtension {
        mirrors: vec![mirror(backend("web-v2", PORT, 1), 25, 100)],
        ..extension("web-mirrored", 0)
    };
    m.api.set_extended(to_v1(), vec![mirrored]);
    let mut conn = h1_conn(m.proxy.outbound).await;
    for _ in 0..1000 {
        assert_eq!(send(&mut conn, get("/r")).await.status, StatusCode::OK);
    }
    assert_eq!(m.v1.seen().len(), 1000);
    // Copies still on their way: wait until what was sent has arrived.
    let sent = within("the copies to settle", async {
        loop {
            let sent = m
                .proxy
                .metrics()
                .await
                .get("outbound_http_route_mirror_requests_total", &mirror_labels("web-v2", "sent"));
            if sent as usize == m.v2.seen().len() {
                break sent as usize;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!((200..=300).contains(&sent), "the mirror got {sent} of 1000 copies, want 250 ± 50");
}

/// A mirror that never answers, one that answers 500, one that refuses
/// connections: the client's requests are answered by the primary as fast
/// as without them.
#[tokio::test]
async fn a_slow_failing_or_refusing_mirror_changes_nothing_for_the_client() {
    let sleeper = tokio::net::TcpListener::bind(loopback(0)).await.unwrap();
    let sleeper_addr = sleeper.local_addr().unwrap();
    let _held = AbortOnDrop(tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = sleeper.accept().await {
            held.push(stream);
        }
    }));
    let (failing, failing_count, _failing) = failing_app(|_| true).await;
    let refused = loopback(free_port());
    let m = mesh(false, None).await;
    let mirrors = vec![
        mirror(forward("sleeper", sleeper_addr, 1), 1, 1),
        mirror(forward("failing", failing, 1), 1, 1),
        mirror(forward("refused", refused, 1), 1, 1),
    ];
    m.api.set_extended(to_v1(), vec![weft_api::RuleExtension { mirrors, ..extension("web-mirrored", 0) }]);
    let mut conn = h1_conn(m.proxy.outbound).await;
    send(&mut conn, get("/warm")).await;
    for i in 0..20 {
        let start = Instant::now();
        let rsp = send_body(&mut conn, post(&format!("/p/{i}")), full(format!("body {i}"))).await;
        assert_eq!(rsp.status, StatusCode::OK);
        assert_eq!(rsp.body, format!("body {i}").as_bytes(), "the primary's echo");
        assert!(start.elapsed() < Duration::from_millis(200), "request {i} took {:?}", start.elapsed());
    }
    // A body larger than any copy's buffer, streamed: the primary gets all
    // of it, whichever copies fall behind.
    let (tx, body) = channel_body();
    let feed = tokio::spawn(async move {
        for _ in 0..64 {
            tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; 32 * 1024])))).await.unwrap();
        }
    });
    let rsp = send_body(&mut conn, post("/big"), body).await;
    feed.await.unwrap();
    assert_eq!((rsp.status, rsp.body.len()), (StatusCode::OK, 64 * 32 * 1024));

    m.proxy
        .wait_metric("outbound_http_route_mirror_requests_total", &mirror_labels("failing", "sent"), 22.0)
        .await;
    assert_eq!(failing_count.load(std::sync::atomic::Ordering::SeqCst), 22);
    m.proxy
        .wait_metric("outbound_http_route_mirror_requests_total", &mirror_labels("refused", "failed"), 22.0)
        .await;
    assert_eq!(m.v1.seen().len(), 22);
    assert!(!m.proxy.stderr().contains("panicked"));
}

#[tokio::test]
async fn url_rewrites_change_the_path_and_host_the_app_sees() {
    let rules = vec![
        rule(vec![prefix("/old")], vec![], vec![backend("web", PORT, 1)]),
        rule(vec![prefix("/full")], vec![], vec![backend("web", PORT, 1)]),
    ];
    let rewrite = |hostname: &str, replace| weft_api::UrlRewrite {
        hostname: hostname.into(),
        path: Some(hr::PathModifier { replace: Some(replace) }),
    };
    let extensions = vec![
        weft_api::RuleExtension {
            url_rewrite: Some(rewrite("shop.example", hr::path_modifier::Replace::Prefix("/new".into()))),
            ..extension("web-rewrite", 0)
        },
        weft_api::RuleExtension {
            url_rewrite: Some(rewrite("", hr::path_modifier::Replace::Full("/replaced".into()))),
            ..extension("web-rewrite", 1)
        },
    ];
    let m = mesh(false, None).await;
    m.api.set_extended(policy(PORT, vec![route("web-rewrite", rules)]), extensions);
    let mut conn = h1_conn(m.proxy.outbound).await;

    assert_eq!(send(&mut conn, get("/old/x?q=1")).await.status, StatusCode::OK);
    let seen = m.v1.last();
    assert_eq!(seen.uri, "/new/x?q=1");
    assert_eq!(seen.header("host"), Some("shop.example"));

    assert_eq!(send(&mut conn, get("/full/y?q=2")).await.status, StatusCode::OK);
    let seen = m.v1.last();
    assert_eq!(seen.uri, "/replaced?q=2");
    assert_eq!(seen.header("host"), Some("web.test.svc.cluster.local"), "no hostname: the Host stays");

    // HTTP/2: the authority is rewritten.
    let mut conn = h2_conn(m.proxy.outbound).await;
    within("ready", conn.ready()).await.expect("connection usable");
    let rsp =
        within("response", conn.send_request(get("/old").body(empty()).unwrap())).await.expect("response");
    assert_eq!(collect(rsp).await.status, StatusCode::OK);
    let seen = m.v1.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert!(seen.uri.ends_with("/new"), "{}", seen.uri);
    let authority = seen.uri.parse::<http::Uri>().ok().and_then(|u| u.authority().map(|a| a.to_string()));
    assert_eq!(authority.as_deref().or(seen.header("host")), Some("shop.example"), "{seen:?}");
}
