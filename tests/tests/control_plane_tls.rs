//! The control plane's gRPC over TLS: weft-destination certified by a real
//! weft-identity like any workload, and weft-proxy discovering through it
//! only when the server proves the identity the proxy expects
//! (`WEFT_PROXY_DESTINATION_SVC_NAME`).
//!
//! Everything listens on 127.0.0.1, where a proxy's rule is plaintext:
//! `WEFT_PROXY_CONTROL_PLANE_TLS=always` makes these proxies use TLS as they
//! would towards a non-loopback address (the netns pod tests do it for real).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

use weft_e2e::{client::get_once, control::DestinationTls, *};

const WEB: &str = "http://web.demo.svc.cluster.local:80";
/// Short, so the test sees weft-destination renew its certificate.
const LIFETIME: &str = "4s";

/// A CA, weft-identity (certificates of `lifetime`), an app, and
/// weft-destination certified as `weft-destination` serving TLS, where
/// `web.demo.svc.cluster.local:80` is the app. Bind every field: dropping one
/// stops its process.
struct ControlPlane {
    ca: Ca,
    identity: IdentityService,
    app: TestServer,
    destination_sa: Workload,
    destination: DestinationService,
}

impl ControlPlane {
    async fn start(dir: &TempDir, client: Option<&Workload>, lifetime: &str) -> ControlPlane {
        let ca = Ca::create(&dir.join("ca"));
        let destination_sa = Workload::new(CONTROL_PLANE_NS, "weft-destination");
        let mut identity = IdentityService::builder(&ca, dir.path()).workload(&destination_sa);
        if let Some(client) = client {
            identity = identity.workload(client);
        }
        let identity = identity.cert_lifetime(lifetime).start().await;
        let app = TestServer::start("web").await;
        let tls = DestinationTls::new(&ca, identity.addr, &destination_sa, dir.path());
        // `start_tls` waits for /ready, which includes the first certificate.
        let destination = DestinationService::start_tls(
            &dir.join("destination"),
            &[("web.yaml", static_endpoints("web", "demo", 80, &[StaticEndpoint::plain(app.addr)]))],
            tls,
        )
        .await;
        ControlPlane { ca, identity, app, destination_sa, destination }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_discover_through_weft_destination_over_tls_only_with_its_identity() {
    let dir = TempDir::new("cp-tls");
    let client = Workload::new("demo", "client");
    let ControlPlane { ca, identity, app: _app, destination_sa, destination } =
        ControlPlane::start(&dir, Some(&client), LIFETIME).await;

    let proxy = |label: &str, expected: &str, mode: &str| {
        Proxy::builder(label, dir.path())
            .identity(&ca, identity.addr, &client)
            .destination(destination.addr)
            .env("WEFT_PROXY_DESTINATION_SVC_NAME", expected)
            .env("WEFT_PROXY_CONTROL_PLANE_TLS", mode)
            .env("WEFT_PROXY_DISCOVERY_TIMEOUT", "1s")
    };
    // The name is known only to weft-destination: a 200 means discovery worked.
    let get = |proxy: &Proxy| {
        let outbound = proxy.outbound;
        async move {
            let reply = get_once(outbound, HttpVersion::Http1, &format!("{WEB}/")).await.expect("request");
            (reply.status, reply.backend(), reply.text())
        }
    };

    let good = proxy("good", &destination_sa.identity(), "always").start().await;
    let (status, backend, text) = get(&good).await;
    assert_eq!(status, 200, "discovery over TLS: {text}\n{}", good.process.tail(20));
    assert_eq!(backend.as_deref(), Some("web"));

    // A proxy expecting another identity refuses the server.
    let wrong = proxy("wrong", &client.identity(), "always").start().await;
    let (status, _, text) = get(&wrong).await;
    assert_ne!(status, 200, "a destination with another identity was believed: {text}");

    // Plaintext to the TLS port gets nothing (loopback: `auto` is plaintext).
    let plain = proxy("plain", &destination_sa.identity(), "auto").start().await;
    let (status, _, text) = get(&plain).await;
    assert_ne!(status, 200, "plaintext discovery was served by a TLS destination: {text}");

    // Past two lifetimes, the first certificate has expired: a proxy
    // connecting now succeeds only if weft-destination renewed in place.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let later = proxy("later", &destination_sa.identity(), "always").start().await;
    let (status, _, text) = get(&later).await;
    assert_eq!(status, 200, "after renewal: {text}\n{}", later.process.tail(20));
    let m = destination.metrics().await;
    assert!(m.get("identity_cert_refresh_total", &[]) >= 3.0, "renewed in place:\n{m}");
    // And the first proxy's stream, opened before any renewal, still answers.
    let (status, _, text) = get(&good).await;
    assert_eq!(status, 200, "{text}");
}

/// What linkerd2-proxy does towards its control plane, by hand: TLS with
/// the identity as SNI and ALPN `h2`, the certificate verified against the
/// anchors for that name, then `Destination/Get` over HTTP/2. Another name
/// fails verification; a client offering only HTTP/1.1 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linkerd_style_client_gets_discovery_over_tls_with_alpn_h2() {
    let dir = TempDir::new("cp-tls-l5d");
    let ControlPlane { ca, identity: _identity, app, destination_sa, destination } =
        ControlPlane::start(&dir, None, "1h").await;

    let config = |alpn: &[&[u8]]| tls_client(&ca, alpn);
    let connect = |connector, name| tls_connect(destination.addr, connector, name);

    // SNI and verified name: weft-destination's identity; ALPN h2.
    let stream = connect(config(&[b"h2"]), destination_sa.identity()).await.expect("TLS to weft-destination");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // Destination/Get { path } as a gRPC frame; the first message back is
    // the endpoint's Add, its port a protobuf varint (2 or 3 bytes).
    let path = "web.demo.svc.cluster.local:80";
    let mut msg = vec![0x12, path.len() as u8];
    msg.extend_from_slice(path.as_bytes());
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 over the TLS stream");
    tokio::spawn(conn);
    let req = http::Request::post("https://weft-destination/io.linkerd.proxy.destination.Destination/Get")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let rsp = h2.send_request(req).await.expect("Destination/Get");
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers().get("grpc-status"), None, "a trailers-only error: {rsp:?}");
    let mut body = rsp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::frame(&mut body))
        .await
        .expect("an update within 5s")
        .expect("a frame")
        .expect("no error");
    let data = frame.into_data().expect("a DATA frame, not trailers");
    assert!(data.len() > 5, "an update message: {data:?}");
    let port = app.addr.port();
    assert!(
        data.windows(2).any(|w| w == [(port as u8) | 0x80, (port >> 7) as u8])
            || data
                .windows(3)
                .any(|w| w == [(port as u8) | 0x80, ((port >> 7) as u8) | 0x80, (port >> 14) as u8]),
        "the update names the app's port {port}: {data:?}"
    );

    // Another expected name: verification fails.
    let other = Workload::new("demo", "other").identity();
    assert!(connect(config(&[b"h2"]), other).await.is_err(), "accepted for another identity");
    // HTTP/1.1 only: no application protocol in common.
    assert!(
        connect(config(&[b"http/1.1"]), destination_sa.identity()).await.is_err(),
        "a client without h2 was accepted"
    );
}

/// weft-destination holds its port's connections until it has a
/// certificate (a handshake then would fail), and says it is not ready;
/// once weft-identity answers, it is ready and serves TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_destination_is_ready_and_serves_only_once_certified() {
    let dir = TempDir::new("cp-tls-ca-down");
    let ca = Ca::create(&dir.join("ca"));
    let destination_sa = Workload::new(CONTROL_PLANE_NS, "weft-destination");
    let ca_addr = free_addr();
    let tls = DestinationTls::new(&ca, ca_addr, &destination_sa, dir.path());
    let mut destination = DestinationService::spawn_tls(&dir.join("destination"), tls).await;

    for _ in 0..5 {
        let ready = http_get(destination.admin, "/ready").await.expect("/ready");
        assert_eq!(ready.status, 503, "ready without a certificate: {}", ready.body);
        assert!(ready.body.contains("certificate"), "{}", ready.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let pending = tokio::time::timeout(
        Duration::from_secs(1),
        tls_connect(destination.addr, tls_client(&ca, &[b"h2"]), destination_sa.identity()),
    )
    .await;
    assert!(pending.is_err(), "a handshake completed (or failed) before the first certificate");

    let _identity =
        IdentityService::builder(&ca, dir.path()).workload(&destination_sa).addr(ca_addr).start().await;
    let admin = destination.admin;
    destination.process.wait_ready(admin, STEP).await.expect("ready once weft-identity answers");
    let stream = tls_connect(destination.addr, tls_client(&ca, &[b"h2"]), destination_sa.identity())
        .await
        .expect("TLS once certified");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// A TLS client as linkerd2-proxy's towards its control plane: TLS 1.3,
/// `ca`'s anchors, no client certificate, ALPN `alpn`.
fn tls_client(ca: &Ca, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca.trust_anchors).expect("anchors") {
        roots.add(cert.expect("anchor")).expect("add anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(c))
}

/// Connects to `addr` with SNI `name`, the certificate verified for it.
async fn tls_connect(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    name: String,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector.connect(ServerName::try_from(name).expect("server name"), tcp).await
}
