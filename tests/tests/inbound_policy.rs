//! Inbound policy end to end: weft-destination reads Linkerd's policy
//! resources and serves them over `InboundServerPolicies`; server proxy B
//! enforces them on clients certified by a running weft-identity (proxies A
//! and C, over real mTLS) and on unmeshed clients of given addresses.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use weft_e2e::{
    policy::{self, Authn, Target},
    *,
};

const NS: &str = "demo";
const WEB: &str = "http://web.demo.svc.cluster.local:80";

/// Server proxy B in front of the app (pod `demo/web-0`, service account
/// `web`), weft-destination serving its policy and its endpoints, and two
/// meshed clients: A (`client`) and C (`other`).
struct PolicyMesh {
    app: TestServer,
    b: Proxy,
    a: Proxy,
    c: Proxy,
    client: Workload,
    other: Workload,
    destination: DestinationService,
    _identity: IdentityService,
    _dir: TempDir,
}

impl PolicyMesh {
    /// B's own default (until the policy arrives) is `local_default`;
    /// `manifests` are the policy objects weft-destination starts with.
    async fn start(label: &str, local_default: &str, manifests: &[(&str, String)]) -> PolicyMesh {
        let dir = TempDir::new(label);
        let ca = Ca::create(&dir.join("ca"));
        let (web, client, other) =
            (Workload::new(NS, "web"), Workload::new(NS, "client"), Workload::new(NS, "other"));
        let identity = IdentityService::builder(&ca, dir.path())
            .workload(&web)
            .workload(&client)
            .workload(&other)
            .start()
            .await;
        let app = TestServer::start("web").await;
        let port = app.addr.port();
        let mut all = vec![("pod-web-0.yaml", policy::pod(NS, "web-0", "web", port, &[]))];
        all.extend(manifests.iter().cloned());
        let destination = DestinationService::start(&dir.join("destination"), &all).await;
        let b = Proxy::builder("b", dir.path())
            .identity(&ca, identity.addr, &web)
            .inbound_app(app.addr)
            .destination(destination.addr)
            .env("WEFT_PROXY_POLICY_WORKLOAD", format!(r#"{{"ns":"{NS}","pod":"web-0"}}"#))
            .env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", local_default)
            .env("WEFT_PROXY_INBOUND_PORTS", port)
            .env("WEFT_PROXY_INBOUND_PROBES", format!("{port}:/ready"))
            .start()
            .await;
        let endpoints = static_endpoints("web", NS, 80, &[StaticEndpoint::service_account(b.inbound, "web")]);
        destination.write_manifest("web-endpoints.yaml", &endpoints);
        let loaded = poll_until(STEP, Duration::from_millis(50), || async {
            let m = destination.metrics().await;
            (m.get("destination_index_objects", &[("kind", "StaticEndpoints")]) >= 1.0).then_some(())
        })
        .await;
        assert!(loaded.is_some(), "weft-destination never loaded the endpoints");
        let a = Proxy::builder("a", dir.path())
            .identity(&ca, identity.addr, &client)
            .destination(destination.addr)
            .start()
            .await;
        let c = Proxy::builder("c", dir.path())
            .identity(&ca, identity.addr, &other)
            .destination(destination.addr)
            .start()
            .await;
        PolicyMesh { app, b, a, c, client, other, destination, _identity: identity, _dir: dir }
    }

    fn port(&self) -> u16 {
        self.app.addr.port()
    }

    /// An unmeshed client's request from `src` straight to B's inbound
    /// listener: the status, or 0 when B closed the connection unanswered.
    async fn plain(&self, src: &str, method: &str, path: &str) -> u16 {
        let src: IpAddr = src.parse().expect("source address");
        http_request(Some(src), self.b.inbound, method, path).await.map(|r| r.status).unwrap_or(0)
    }
}

/// Evaluates `$status` (an HTTP status, 0 for none) every 20 ms, at most
/// for [`STEP`], until it is `$want`; yields how long that took, or panics
/// with the last value.
macro_rules! until {
    ($what:expr, $want:expr, $status:expr) => {{
        let start = Instant::now();
        loop {
            let last: u16 = $status;
            if last == $want {
                break start.elapsed();
            }
            assert!(start.elapsed() < STEP, "{}: {last}, never {} within {STEP:?}", $what, $want);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }};
}

/// Sends requests back to back (for at most [`STEP`]) until one is refused
/// with 429, which it returns.
async fn drain(client: &mut Client) -> Reply {
    let start = Instant::now();
    while start.elapsed() < STEP {
        if let Ok(reply) = client.get(&format!("{WEB}/")).await {
            if reply.status == 429 {
                return reply;
            }
        }
    }
    panic!("never rate limited within {STEP:?}");
}

async fn status(client: &mut Client, path: &str) -> u16 {
    client.get(&format!("{WEB}{path}")).await.map(|r| r.status.as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_tls_authentication_allows_one_identity_and_a_live_change_moves_the_line() {
    let identities = |ids: &[&str]| policy::meshtls_authentication(NS, "web-clients", ids);
    let client_id = identity_name(NS, "client");
    let other_id = identity_name(NS, "other");
    let mesh = PolicyMesh::start(
        "policy-mtls",
        "deny",
        &[
            ("server.yaml", policy::server(NS, "web-http", "web", "http", "HTTP/1", "deny")),
            ("authn.yaml", identities(&[&client_id])),
            (
                "authz.yaml",
                policy::authorization_policy(
                    NS,
                    "web-clients",
                    Target::Server("web-http"),
                    &[Authn::MeshTls("web-clients")],
                ),
            ),
        ],
    )
    .await;
    let mut a = Client::connect(mesh.a.outbound, HttpVersion::Http1).await.expect("connect to A");
    let mut c = Client::connect(mesh.c.outbound, HttpVersion::Http1).await.expect("connect to C");

    // B starts at `deny` and lets A through once its Server's policy arrives.
    until!("A's request (client identity)", 200, status(&mut a, "/hello").await);
    let refused = c.get(&format!("{WEB}/hello")).await.expect("C's request");
    assert_eq!(refused.status, 403, "C (other identity) is refused: {}", refused.text());
    assert_eq!(mesh.plain("127.0.0.1", "GET", "/hello").await, 403, "an unmeshed client is refused");
    assert_eq!(mesh.plain("127.0.0.1", "GET", "/ready").await, 200, "the kubelet's probe passes");

    let srv = ("srv_name", "web-http");
    mesh.b
        .wait_metric(
            "inbound_http_authz_allow_total",
            &[srv, ("authz_name", "web-clients"), ("client_id", &client_id), ("tls", "true")],
            |v| v >= 1.0,
        )
        .await;
    mesh.b.wait_metric("inbound_http_authz_deny_total", &[srv, ("client_id", &other_id)], |v| v == 1.0).await;
    mesh.b.wait_metric("inbound_http_authz_deny_total", &[srv, ("tls", "disabled")], |v| v == 1.0).await;

    // Both identities allowed: C gets through; A's connection (and B's
    // connection from A) stays up through the change.
    let opened = mesh.b.metrics().await.get("tcp_open_total", &[("direction", "inbound")]);
    mesh.destination.write_manifest("authn.yaml", &identities(&[&client_id, &other_id]));
    until!("C's request after both were allowed", 200, status(&mut c, "/hello").await);
    assert_eq!(status(&mut a, "/hello").await, 200);
    assert!(a.is_open(), "A's client connection survived a change that still allows it");
    assert_eq!(
        mesh.b.metrics().await.get("tcp_open_total", &[("direction", "inbound")]),
        opened,
        "B dropped no allowed connection (no client reconnected)"
    );

    // Only `other`: A's next request on the same connection is refused,
    // within a second or two of the change reaching weft-destination.
    mesh.destination.write_manifest("authn.yaml", &identities(&[&other_id]));
    let took = until!("A's request after A was removed", 403, status(&mut a, "/hello").await);
    assert!(took < Duration::from_secs(3), "the change took {took:?} to reach B's requests");
    assert_eq!(status(&mut c, "/hello").await, 200);
    let _ = &mesh.other;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_authentication_admits_unmeshed_clients_by_cidr_on_http_and_opaque_servers() {
    let mesh = PolicyMesh::start(
        "policy-cidr",
        "deny",
        &[
            ("server.yaml", policy::server(NS, "web-http", "web", "http", "unknown", "deny")),
            (
                "authn.yaml",
                policy::network_authentication(NS, "local", &[("127.0.0.0/8", &["127.0.0.2/32"])]),
            ),
            (
                "authz.yaml",
                policy::authorization_policy(
                    NS,
                    "local",
                    Target::Server("web-http"),
                    &[Authn::Network("local")],
                ),
            ),
        ],
    )
    .await;
    until!("GET from 127.0.0.1", 200, mesh.plain("127.0.0.1", "GET", "/").await);
    assert_eq!(mesh.plain("127.0.0.2", "GET", "/").await, 403, "127.0.0.2 is excepted");
    assert_eq!(mesh.plain("127.0.0.3", "GET", "/").await, 200);
    mesh.b
        .wait_metric(
            "inbound_http_authz_allow_total",
            &[("srv_name", "web-http"), ("authz_name", "local")],
            |v| v >= 2.0,
        )
        .await;

    // The same Server as opaque: no HTTP answer to a refused client at all,
    // the connection is closed; an admitted one reaches the app.
    let port = mesh.port();
    mesh.destination
        .write_manifest("server.yaml", &policy::server(NS, "web-http", "web", "http", "opaque", "deny"));
    until!("an opaque connection from 127.0.0.2", 0, mesh.plain("127.0.0.2", "GET", "/").await);
    assert_eq!(mesh.plain("127.0.0.3", "GET", "/opaque").await, 200, "admitted bytes reach the app");
    let m = mesh.b.metrics().await;
    assert!(m.get("inbound_tcp_authz_deny_total", &[("srv_name", "web-http")]) >= 1.0, "{m}");
    assert!(
        m.get("inbound_tcp_authz_allow_total", &[("srv_name", "web-http"), ("authz_name", "local")]) >= 1.0,
        "{m}"
    );
    assert!(mesh.app.requests().iter().any(|r| r.uri.path() == "/opaque"), "port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_carry_their_own_authorizations() {
    let mesh = PolicyMesh::start(
        "policy-routes",
        "deny",
        &[
            ("server.yaml", policy::server(NS, "web-http", "web", "http", "HTTP/1", "deny")),
            ("public.yaml", policy::http_route(NS, "web-public", "web-http", "GET", "/public")),
            ("admin.yaml", policy::http_route(NS, "web-admin", "web-http", "POST", "/admin")),
            ("all.yaml", policy::network_authentication(NS, "all", &[("0.0.0.0/0", &[]), ("::/0", &[])])),
            ("admins.yaml", policy::meshtls_authentication(NS, "admins", &[&identity_name(NS, "admin")])),
            (
                "public-authz.yaml",
                policy::authorization_policy(
                    NS,
                    "public",
                    Target::HttpRoute("web-public"),
                    &[Authn::Network("all")],
                ),
            ),
            (
                "admin-authz.yaml",
                policy::authorization_policy(
                    NS,
                    "admin",
                    Target::HttpRoute("web-admin"),
                    &[Authn::MeshTls("admins")],
                ),
            ),
        ],
    )
    .await;
    until!("GET /public", 200, mesh.plain("127.0.0.1", "GET", "/public/index.html").await);
    assert_eq!(mesh.plain("127.0.0.1", "POST", "/admin/users").await, 403, "POST /admin needs an admin");
    assert_eq!(mesh.plain("127.0.0.1", "GET", "/elsewhere").await, 404, "no route");
    assert_eq!(mesh.plain("127.0.0.1", "POST", "/public").await, 404, "the public route is GET only");

    // Over mTLS as `client`: the same line.
    let mut a = Client::connect(mesh.a.outbound, HttpVersion::Http1).await.expect("connect to A");
    assert_eq!(status(&mut a, "/public/a").await, 200);
    let m = mesh
        .b
        .wait_metric(
            "inbound_http_authz_allow_total",
            &[("route_name", "web-public"), ("authz_name", "public"), ("client_id", &mesh.client.identity())],
            |v| v == 1.0,
        )
        .await;
    assert_eq!(m.get("inbound_http_authz_deny_total", &[("route_name", "web-admin")]), 1.0, "{m}");
    assert!(m.get("inbound_http_route_not_found_total", &[("srv_name", "web-http")]) >= 2.0, "{m}");
    assert!(
        mesh.app.requests().iter().all(|r| !r.uri.path().starts_with("/admin")),
        "nothing reached /admin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policies_follow_the_pod_annotation_and_audit_allows_but_counts() {
    let mesh = PolicyMesh::start("policy-defaults", "deny", &[]).await;
    let port = mesh.port();
    let set_default = |policy: &str| {
        let pod = policy::pod(NS, "web-0", "web", port, &[("config.weft.io/default-inbound-policy", policy)]);
        mesh.destination.write_manifest("pod-web-0.yaml", &pod);
    };
    let mut a = Client::connect(mesh.a.outbound, HttpVersion::Http1).await.expect("connect to A");

    // B's local default before any Server: deny, probes excepted. With no
    // annotation, weft-destination sends its own default (all-unauthenticated).
    until!("an unmeshed client under the cluster default", 200, mesh.plain("127.0.0.1", "GET", "/").await);

    set_default("all-authenticated");
    until!("an unmeshed client under all-authenticated", 403, mesh.plain("127.0.0.1", "GET", "/").await);
    assert_eq!(status(&mut a, "/").await, 200, "a meshed client is authenticated");

    set_default("cluster-unauthenticated");
    // weft-destination's default cluster networks do not include loopback.
    until!("A under cluster-unauthenticated", 403, status(&mut a, "/").await);

    set_default("deny");
    until!("an unmeshed client under deny", 403, mesh.plain("127.0.0.1", "GET", "/").await);
    assert_eq!(status(&mut a, "/").await, 403);
    assert_eq!(mesh.plain("127.0.0.1", "GET", "/ready").await, 200, "probes pass under deny");
    assert_eq!(mesh.plain("127.0.0.1", "POST", "/ready").await, 403, "only GET is a probe");

    set_default("audit");
    until!("an unmeshed client under audit", 200, mesh.plain("127.0.0.1", "GET", "/audited").await);
    mesh.b
        .wait_metric(
            "inbound_http_authz_allow_total",
            &[("authz_kind", "default"), ("authz_name", "audit"), ("srv_kind", "default")],
            |v| v >= 1.0,
        )
        .await;
    let log = mesh.b.process.tail(200);
    assert!(log.contains("would deny"), "audit logs what it would have denied:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_per_identity_within_ten_percent() {
    const PER_IDENTITY: u32 = 100;
    let mesh = PolicyMesh::start(
        "policy-ratelimit",
        "all-unauthenticated",
        &[
            ("server.yaml", policy::server(NS, "web-http", "web", "http", "HTTP/1", "all-unauthenticated")),
            ("limit.yaml", policy::rate_limit(NS, "web-limit", "web-http", 2 * PER_IDENTITY, PER_IDENTITY)),
        ],
    )
    .await;
    // Once the limit has arrived, A emptying its bucket is told 429.
    let mut a = Client::connect(mesh.a.outbound, HttpVersion::Http1).await.expect("connect to A");
    let limited = drain(&mut a).await;
    assert_eq!(limited.header("retry-after").as_deref(), Some("1"), "429 says when to retry");

    // A offers several times its share on four connections, C about twice
    // its share on two; each gets its own 100/s, measured over 3 s after
    // each has emptied its bucket.
    let window = Duration::from_secs(3);
    let run = |proxy: std::net::SocketAddr, connections: usize| async move {
        let ok = Arc::new(AtomicU32::new(0));
        drain(&mut Client::connect(proxy, HttpVersion::Http1).await.expect("connect")).await;
        let end = Instant::now() + window;
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let ok = ok.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(proxy, HttpVersion::Http1).await.expect("connect");
                while Instant::now() < end {
                    if status(&mut client, "/").await == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("load task");
        }
        ok.load(Ordering::Relaxed)
    };
    let (from_a, from_c) = tokio::join!(run(mesh.a.outbound, 4), run(mesh.c.outbound, 2));
    let want = (PER_IDENTITY as f64) * window.as_secs_f64();
    for (who, got) in [("A", from_a), ("C", from_c)] {
        let off = (got as f64 - want).abs() / want;
        assert!(off <= 0.10, "{who} got {got} requests through in {window:?}, want {want} ±10%");
    }
    let m = mesh.b.metrics().await;
    assert!(m.get("inbound_http_local_ratelimit_rejected_total", &[("srv_name", "web-http")]) > 0.0, "{m}");
    let _ = (&mesh.client, &mesh.other);
}
