//! Inbound policy through the real proxy: the local default policies, and
//! policies served by an in-test InboundServerPolicies server (routes,
//! authorizations, audit, rate limits, live changes, the API going away,
//! malformed messages). Clients are plaintext on 127.0.0.1.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use http::{Method, Request, StatusCode};
use linkerd2_proxy_api::inbound as api;
use support::{policy_api::*, *};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const WORKLOAD: &str = r#"{"ns":"test","pod":"web-0"}"#;

/// A proxy in front of `app` with this default policy (and whatever else).
fn builder(app: std::net::SocketAddr, default: &str) -> ProxyBuilder {
    Proxy::builder().inbound_app(app).env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", default)
}

/// A proxy that watches `app`'s port on `api` from start-up, once the first
/// policy has arrived.
async fn with_api(app: std::net::SocketAddr, api: &PolicyApi, default: &str) -> Proxy {
    let proxy = builder(app, default)
        .env("WEFT_PROXY_POLICY_SVC_ADDR", api.addr)
        .env("WEFT_PROXY_POLICY_WORKLOAD", WORKLOAD)
        .env("WEFT_PROXY_INBOUND_PORTS", app.port())
        .spawn()
        .await;
    wait_updates(&proxy, 1).await;
    proxy
}

/// Waits until the proxy has logged `n` policy updates.
async fn wait_updates(proxy: &Proxy, n: usize) {
    wait_count(proxy, "inbound policy updated", n).await
}

async fn wait_count(proxy: &Proxy, needle: &str, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while proxy.stderr().matches(needle).count() < n {
        assert!(Instant::now() < deadline, "fewer than {n} {needle:?}:\n{}", proxy.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(
    conn: &mut hyper::client::conn::http1::SendRequest<BoxBody>,
    method: Method,
    path: &str,
    grpc: bool,
) -> Collected {
    let mut req = Request::builder().method(method).uri(path).header("host", "web.test");
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    within("ready", conn.ready()).await.expect("connection usable");
    let rsp = within("response", conn.send_request(req.body(empty()).unwrap())).await.expect("response");
    collect(rsp).await
}

async fn get(proxy: &Proxy, path: &str) -> Collected {
    let mut conn = h1_conn(proxy.inbound).await;
    send(&mut conn, Method::GET, path, false).await
}

/// Sends a non-HTTP byte and returns whether the connection echoes it back
/// (true) or is closed at once (false).
async fn opaque_echoes(proxy: &Proxy) -> bool {
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    s.write_all(b"\x00ping").await.unwrap();
    let mut buf = [0u8; 5];
    within("opaque reply", s.read_exact(&mut buf)).await.is_ok() && &buf == b"\x00ping"
}

// ---------------------------------------------------------------------------
// The local default policies.

#[tokio::test]
async fn deny_refuses_http_with_403_and_opaque_by_closing_but_admits_probes() {
    let app = HttpServer::start().await;
    let proxy = builder(app.addr, "deny")
        .env("WEFT_PROXY_INBOUND_PROBES", format!("{}:/ready,1:/other", app.addr.port()))
        .spawn()
        .await;
    let denied = get(&proxy, "/").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.headers["l5d-proxy-error"], "unauthorized request on route");
    let probe = get(&proxy, "/ready").await;
    assert_eq!(probe.status, StatusCode::OK, "the kubelet's probe is allowed under deny");
    let mut conn = h1_conn(proxy.inbound).await;
    let post = send(&mut conn, Method::POST, "/ready", false).await;
    assert_eq!(post.status, StatusCode::FORBIDDEN, "probes are GET only");
    assert_eq!(app.seen().len(), 1, "only the probe reached the app");

    let m = proxy.metrics().await;
    let srv = [("srv_kind", "default"), ("srv_name", "deny"), ("tls", "disabled")];
    assert_eq!(
        m.get("inbound_http_authz_deny_total", &[&srv[..], &[("route_name", "default")]].concat()),
        2.0
    );
    assert_eq!(
        m.get(
            "inbound_http_authz_allow_total",
            &[&srv[..], &[("route_name", "probe"), ("authz_name", "probe")]].concat()
        ),
        1.0
    );
    proxy.wait_log("request denied").await;

    let echo = TcpServer::echo().await;
    let proxy = builder(echo.addr, "deny").spawn().await;
    assert!(!opaque_echoes(&proxy).await, "deny closes opaque connections");
    assert!(echo.peers().is_empty(), "the app never saw the connection");
    let target = proxy.inbound.to_string();
    proxy
        .wait_metric("inbound_tcp_authz_deny_total", &[("srv_name", "deny"), ("target_addr", &target)], 1.0)
        .await;
    proxy.wait_log("connection denied").await;
}

#[tokio::test]
async fn all_unauthenticated_is_the_default_and_admits_everybody() {
    let app = HttpServer::start().await;
    let proxy = Proxy::with_app(app.addr).await;
    assert_eq!(get(&proxy, "/anything").await.status, StatusCode::OK);
    let m = proxy.metrics().await;
    assert_eq!(
        m.get(
            "inbound_http_authz_allow_total",
            &[
                ("srv_name", "all-unauthenticated"),
                ("route_name", "default"),
                ("authz_name", "all-unauthenticated")
            ]
        ),
        1.0,
        "{}",
        m.0
    );
    let echo = TcpServer::echo().await;
    let proxy = Proxy::with_app(echo.addr).await;
    assert!(opaque_echoes(&proxy).await);
    proxy.wait_metric("inbound_tcp_authz_allow_total", &[("authz_name", "all-unauthenticated")], 1.0).await;
}

#[tokio::test]
async fn cluster_policies_go_by_the_client_address_and_authenticated_ones_need_mtls() {
    let app = HttpServer::start().await;
    let status = |default: &'static str, networks: &'static str| {
        let app = app.addr;
        async move {
            let proxy =
                builder(app, default).env("WEFT_PROXY_POLICY_CLUSTER_NETWORKS", networks).spawn().await;
            get(&proxy, "/").await.status
        }
    };
    assert_eq!(status("cluster-unauthenticated", "127.0.0.0/8").await, StatusCode::OK);
    assert_eq!(status("cluster-unauthenticated", "10.0.0.0/8,fd00::/8").await, StatusCode::FORBIDDEN);
    assert_eq!(status("cluster-authenticated", "127.0.0.0/8").await, StatusCode::FORBIDDEN, "plaintext");
    assert_eq!(status("all-authenticated", "127.0.0.0/8").await, StatusCode::FORBIDDEN, "plaintext");
}

#[tokio::test]
async fn audit_admits_and_logs_what_it_would_deny() {
    let app = HttpServer::start().await;
    let proxy = builder(app.addr, "audit").spawn().await;
    assert_eq!(get(&proxy, "/").await.status, StatusCode::OK);
    proxy.wait_log("would deny (audit)").await;
    let m = proxy.metrics().await;
    assert_eq!(
        m.get("inbound_http_authz_allow_total", &[("authz_name", "audit"), ("srv_name", "audit")]),
        1.0
    );
    assert_eq!(m.get("inbound_http_authz_deny_total", &[]), 0.0);
}

#[tokio::test]
async fn unusable_policy_settings_stop_the_proxy_naming_the_variable() {
    let (status, stderr) =
        Proxy::builder().env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "allow-all").run_to_exit();
    assert!(!status.success());
    assert!(stderr.contains("WEFT_PROXY_INBOUND_DEFAULT_POLICY"), "{stderr}");
    let (status, stderr) =
        Proxy::builder().env("WEFT_PROXY_POLICY_CLUSTER_NETWORKS", "10.0.0.0/40").run_to_exit();
    assert!(!status.success());
    assert!(stderr.contains("WEFT_PROXY_POLICY_CLUSTER_NETWORKS"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Policies from InboundServerPolicies.

fn public_and_admin() -> Reply {
    Some(http_server(
        "web",
        vec![
            route(
                "public",
                vec![with_method(path_prefix("/public"), Method::GET)],
                vec![authz_unauthenticated("anyone", &["0.0.0.0/0", "::/0"])],
            ),
            route(
                "admin",
                vec![path_prefix("/admin")],
                vec![authz_mesh("admins", &["admin", "serviceaccount", "identity"])],
            ),
        ],
        vec![],
    ))
}

#[tokio::test]
async fn served_routes_authorize_per_route_and_unknown_paths_get_404() {
    let app = HttpServer::start().await;
    let api = PolicyApi::start(public_and_admin()).await;
    // Under `deny`, a 200 can only come from the served policy.
    let proxy = with_api(app.addr, &api, "deny").await;
    let spec = api.specs.lock().unwrap()[0].clone();
    assert_eq!(spec.workload, WORKLOAD);
    assert_eq!(spec.port, u32::from(app.addr.port()));

    let mut conn = h1_conn(proxy.inbound).await;
    assert_eq!(send(&mut conn, Method::GET, "/public/x", false).await.status, StatusCode::OK);
    let admin = send(&mut conn, Method::POST, "/admin", false).await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    assert_eq!(admin.headers["l5d-proxy-error"], "unauthorized request on route");
    assert_eq!(send(&mut conn, Method::GET, "/other", false).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&mut conn, Method::POST, "/public/x", false).await.status,
        StatusCode::NOT_FOUND,
        "GET only"
    );

    let grpc_denied = send(&mut conn, Method::POST, "/admin/Svc/M", true).await;
    assert_eq!(grpc_denied.status, StatusCode::OK);
    assert_eq!(grpc_denied.headers["grpc-status"], "7");
    let grpc_missing = send(&mut conn, Method::POST, "/other.Svc/M", true).await;
    assert_eq!(grpc_missing.headers["grpc-status"], "5");
    assert_eq!(app.seen().len(), 1);

    let m = proxy.metrics().await;
    let target = proxy.inbound.to_string();
    let srv = [
        ("srv_group", "policy.linkerd.io"),
        ("srv_kind", "server"),
        ("srv_name", "web"),
        ("target_addr", &target),
    ];
    let allow = [
        &srv[..],
        &[
            ("route_kind", "HTTPRoute"),
            ("route_name", "public"),
            ("authz_kind", "AuthorizationPolicy"),
            ("authz_name", "anyone"),
        ],
    ]
    .concat();
    assert_eq!(m.get("inbound_http_authz_allow_total", &allow), 1.0, "{}", m.0);
    assert_eq!(m.get("inbound_http_authz_deny_total", &[&srv[..], &[("route_name", "admin")]].concat()), 2.0);
    assert_eq!(m.get("inbound_http_route_not_found_total", &srv), 3.0);
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request_on_an_open_connection() {
    let app = HttpServer::start().await;
    let open = |authzs| Some(http_server("web", vec![route("all", vec![path_prefix("/")], authzs)], vec![]));
    let api = PolicyApi::start(open(vec![authz_unauthenticated("anyone", &["0.0.0.0/0", "::/0"])])).await;
    let proxy = with_api(app.addr, &api, "all-unauthenticated").await;
    let mut conn = h1_conn(proxy.inbound).await;
    assert_eq!(send(&mut conn, Method::GET, "/", false).await.status, StatusCode::OK);
    api.set(open(vec![]));
    wait_updates(&proxy, 2).await;
    assert_eq!(
        send(&mut conn, Method::GET, "/", false).await.status,
        StatusCode::FORBIDDEN,
        "same connection"
    );
    api.set(open(vec![authz_unauthenticated("local", &["127.0.0.0/8"])]));
    wait_updates(&proxy, 3).await;
    assert_eq!(send(&mut conn, Method::GET, "/", false).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_open_opaque_connection_is_closed_when_a_change_denies_it() {
    let echo = TcpServer::echo().await;
    let api =
        PolicyApi::start(Some(opaque_server("db", vec![authz_unauthenticated("anyone", &["127.0.0.0/8"])])))
            .await;
    let proxy = with_api(echo.addr, &api, "deny").await;
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    // Starts like HTTP: only the opaque protocol (no detection) forwards it
    // at once.
    s.write_all(b"GET").await.unwrap();
    let mut buf = [0u8; 3];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"GET");
    proxy
        .wait_metric("inbound_tcp_authz_allow_total", &[("srv_name", "db"), ("authz_name", "anyone")], 1.0)
        .await;

    api.set(Some(opaque_server("db", vec![authz_unauthenticated("elsewhere", &["10.0.0.0/8"])])));
    let rest = read_until_closed(&mut s, TIMEOUT).await.expect("closed after the change");
    assert!(rest.is_empty());
    proxy.wait_metric("inbound_tcp_authz_terminate_total", &[("srv_name", "db")], 1.0).await;
    // New connections are refused as well.
    assert!(!opaque_echoes(&proxy).await);
}

#[tokio::test]
async fn the_last_policy_stays_while_the_api_is_away() {
    let app = HttpServer::start().await;
    let api = PolicyApi::start(public_and_admin()).await;
    // The default (all-unauthenticated) would answer 200 to /other.
    let proxy = with_api(app.addr, &api, "all-unauthenticated").await;
    assert_eq!(get(&proxy, "/other").await.status, StatusCode::NOT_FOUND);
    api.stop();
    proxy.wait_log("keeping the last policy").await;
    assert_eq!(get(&proxy, "/other").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&proxy, "/public").await.status, StatusCode::OK);
}

#[tokio::test]
async fn not_found_means_the_default_policy() {
    let app = HttpServer::start().await;
    let api = PolicyApi::start(public_and_admin()).await;
    let proxy = with_api(app.addr, &api, "deny").await;
    assert_eq!(get(&proxy, "/public").await.status, StatusCode::OK);
    // The stream ends with NotFound; the reconnect is answered NotFound.
    api.set(None);
    proxy.wait_log("using the default").await;
    let rsp = get(&proxy, "/public").await;
    assert_eq!(rsp.status, StatusCode::FORBIDDEN, "deny, the default");
}

#[tokio::test]
async fn malformed_policies_are_ignored_and_the_previous_one_kept() {
    let app = HttpServer::start().await;
    let api = PolicyApi::start(public_and_admin()).await;
    let proxy = with_api(app.addr, &api, "all-unauthenticated").await;

    let mut bad_cidr = public_and_admin().unwrap();
    http_routes_mut(&mut bad_cidr)[0].authorizations[0].networks[0].net.as_mut().unwrap().prefix_len = 99;
    let mut no_protocol = public_and_admin().unwrap();
    no_protocol.protocol = None;
    let mut no_authn = public_and_admin().unwrap();
    http_routes_mut(&mut no_authn)[0].authorizations[0].authentication = None;
    for (i, bad) in [bad_cidr, no_protocol, no_authn].into_iter().enumerate() {
        api.set(Some(bad));
        wait_count(&proxy, "ignoring a malformed inbound policy", i + 1).await;
        assert_eq!(get(&proxy, "/other").await.status, StatusCode::NOT_FOUND, "the previous policy");
        assert_eq!(get(&proxy, "/public").await.status, StatusCode::OK);
    }
    // Bytes that are no protobuf at all fail the stream; the policy stays.
    api.send_garbage(true);
    api.set(None);
    proxy.wait_log("failed to decode Protobuf message").await;
    assert_eq!(get(&proxy, "/other").await.status, StatusCode::NOT_FOUND, "the previous policy");
    api.send_garbage(false);
    // Still listening to the API.
    api.set(Some(http_server(
        "web",
        vec![route("all", vec![path_prefix("/")], vec![authz_unauthenticated("anyone", &["0.0.0.0/0"])])],
        vec![],
    )));
    wait_updates(&proxy, 2).await;
    assert_eq!(get(&proxy, "/other").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_local_rate_limit_holds_200_requests_per_second() {
    const RPS: u32 = 200;
    let app = HttpServer::start().await;
    let api = PolicyApi::start(Some(http_server_limited(
        "web",
        vec![route("all", vec![path_prefix("/")], vec![authz_unauthenticated("anyone", &["0.0.0.0/0"])])],
        vec![],
        Some(RPS),
    )))
    .await;
    let proxy = with_api(app.addr, &api, "deny").await;

    let limited = get(&proxy, "/").await;
    assert_eq!(limited.status, StatusCode::OK);
    // Spend the burst (one second's worth), then count what gets through.
    let measure = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let burst_until = start + Duration::from_millis(1500);
    let stop = burst_until + Duration::from_millis(2500);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (ok, no) = (measure.clone(), rejected.clone());
        let addr = proxy.inbound;
        clients.push(tokio::spawn(async move {
            let mut conn = h1_conn(addr).await;
            while Instant::now() < stop {
                let rsp = send(&mut conn, Method::GET, "/", false).await;
                let counted = Instant::now() >= burst_until;
                match rsp.status {
                    StatusCode::OK if counted => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    StatusCode::TOO_MANY_REQUESTS => {
                        assert_eq!(rsp.headers["retry-after"], "1");
                        if counted {
                            no.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    StatusCode::OK => {}
                    other => panic!("unexpected {other}"),
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let rate = measure.load(Ordering::Relaxed) as f64 / 2.5;
    let rejected = rejected.load(Ordering::Relaxed);
    eprintln!("rate limit: {rate} req/s admitted, {rejected} rejected");
    assert!(rejected > 0, "the clients must outpace the limit for this to measure it");
    assert!(
        (f64::from(RPS) * 0.9..=f64::from(RPS) * 1.1).contains(&rate),
        "{rate} req/s admitted ({rejected} rejected)"
    );
    let m = proxy.metrics().await;
    assert!(
        m.get("inbound_http_local_ratelimit_rejected_total", &[("ratelimit", "total"), ("srv_name", "web")])
            > 0.0
    );
}

#[tokio::test]
async fn an_opaque_server_skips_detection() {
    // Server speaks first: with detection the banner would wait for the
    // client's bytes (60s here).
    let banner = TcpServer::banner(b"220 ready\r\n").await;
    let api =
        PolicyApi::start(Some(opaque_server("smtp", vec![authz_unauthenticated("anyone", &["0.0.0.0/0"])])))
            .await;
    let proxy = builder(banner.addr, "all-unauthenticated")
        .env("WEFT_PROXY_POLICY_SVC_ADDR", api.addr)
        .env("WEFT_PROXY_POLICY_WORKLOAD", WORKLOAD)
        .env("WEFT_PROXY_INBOUND_PORTS", banner.addr.port())
        .env("WEFT_PROXY_DETECT_TIMEOUT", "60s")
        .spawn()
        .await;
    wait_updates(&proxy, 1).await;
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    let mut got = [0u8; 11];
    within_for(Duration::from_secs(5), "banner", s.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"220 ready\r\n");
}

#[tokio::test]
async fn a_served_detect_timeout_replaces_the_proxys_own() {
    let app = HttpServer::start().await;
    let mut server = http_server(
        "web",
        vec![route("all", vec![path_prefix("/")], vec![authz_unauthenticated("anyone", &["0.0.0.0/0"])])],
        vec![],
    );
    if let Some(api::proxy_protocol::Kind::Detect(d)) = server.protocol.as_mut().and_then(|p| p.kind.as_mut())
    {
        d.timeout = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    }
    let api = PolicyApi::start(Some(server)).await;
    let proxy = builder(app.addr, "all-unauthenticated")
        .env("WEFT_PROXY_POLICY_SVC_ADDR", api.addr)
        .env("WEFT_PROXY_POLICY_WORKLOAD", WORKLOAD)
        .env("WEFT_PROXY_INBOUND_PORTS", app.addr.port())
        .env("WEFT_PROXY_DETECT_TIMEOUT", "60s")
        .spawn()
        .await;
    wait_updates(&proxy, 1).await;
    // A client that sends nothing is given up on after the server's 1s.
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    let got =
        read_until_closed(&mut s, Duration::from_secs(10)).await.expect("closed within the server's timeout");
    assert!(got.is_empty());
}

#[tokio::test]
async fn route_filters_modify_headers_redirect_and_inject_failures() {
    use linkerd2_proxy_api::{http_route as hr, http_types};
    let app = HttpServer::start().await;
    let anyone = || vec![authz_unauthenticated("anyone", &["0.0.0.0/0", "::/0"])];
    let with_filter = |name: &str, path: &str, kind: api::http_route::filter::Kind| {
        let mut r = route(name, vec![path_prefix(path)], anyone());
        r.rules[0].filters = vec![api::http_route::Filter { kind: Some(kind) }];
        r
    };
    let headers = with_filter(
        "headers",
        "/",
        api::http_route::filter::Kind::RequestHeaderModifier(hr::RequestHeaderModifier {
            add: Some(http_types::Headers {
                headers: vec![http_types::headers::Header {
                    name: "x-policy".into(),
                    value: b"yes".to_vec(),
                }],
            }),
            set: None,
            remove: vec!["x-secret".into()],
        }),
    );
    let redirect = with_filter(
        "moved",
        "/old",
        api::http_route::filter::Kind::Redirect(hr::RequestRedirect {
            scheme: None,
            host: "new.test".into(),
            path: Some(hr::PathModifier { replace: Some(hr::path_modifier::Replace::Prefix("/new".into())) }),
            port: 0,
            status: 301,
        }),
    );
    let broken = with_filter(
        "broken",
        "/broken",
        api::http_route::filter::Kind::FailureInjector(hr::HttpFailureInjector {
            status: 503,
            message: "injected".into(),
            ratio: None,
        }),
    );
    let api = PolicyApi::start(Some(http_server("web", vec![headers, redirect, broken], vec![]))).await;
    let proxy = with_api(app.addr, &api, "deny").await;

    let mut conn = h1_conn(proxy.inbound).await;
    let req = Request::get("/x").header("host", "web.test").header("x-secret", "s").body(empty()).unwrap();
    let rsp = collect(within("response", conn.send_request(req)).await.unwrap()).await;
    assert_eq!(rsp.status, StatusCode::OK);
    let seen = app.last();
    assert_eq!(seen.header("x-policy"), Some("yes"));
    assert_eq!(seen.header("x-secret"), None);

    let moved = send(&mut conn, Method::GET, "/old/page?q=1", false).await;
    assert_eq!(moved.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(moved.headers["location"], "http://new.test/new/page?q=1");
    let broken = send(&mut conn, Method::GET, "/broken", false).await;
    assert_eq!(broken.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.seen().len(), 1, "redirected and failed requests never reach the app");
}

#[tokio::test]
async fn grpc_routes_answer_with_grpc_statuses_a_grpc_client_understands() {
    use support::grpc::{msg, EchoClient, GrpcServer};
    let app = GrpcServer::start().await;
    let api = PolicyApi::start(Some(grpc_server(
        "echo",
        vec![
            grpc_route("unary", "test.Echo", "Unary", vec![authz_unauthenticated("anyone", &["0.0.0.0/0"])]),
            grpc_route("streams", "test.Echo", "ServerStream", vec![]),
        ],
    )))
    .await;
    let proxy = with_api(app.addr, &api, "deny").await;
    let mut client = EchoClient::connect(proxy.inbound, "echo.test:8080").await;
    assert_eq!(client.unary(msg("hi", 1)).await.expect("allowed").text, "echo: hi");
    let Err(denied) = client.server_stream(msg("hi", 2)).await else { panic!("allowed") };
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let Err(unrouted) = client.bidi(futures_util::stream::iter(vec![msg("x", 1)])).await else {
        panic!("routed")
    };
    assert_eq!(unrouted.code(), tonic::Code::NotFound);
    let m = proxy.metrics().await;
    assert_eq!(
        m.get("inbound_http_authz_allow_total", &[("route_kind", "GRPCRoute"), ("route_name", "unary")]),
        1.0
    );
    assert_eq!(m.get("inbound_http_authz_deny_total", &[("route_name", "streams")]), 1.0);
}
