//! The control plane's gRPC over TLS: weft-destination certified by a real
//! weft-identity like any workload, and weft-proxy discovering through it
//! only when the server proves the identity the proxy expects
//! (`WEFT_PROXY_DESTINATION_SVC_NAME`).
//!
//! Everything listens on 127.0.0.1, where a proxy's rule is plaintext:
//! `WEFT_PROXY_CONTROL_PLANE_TLS=always` makes these proxies use TLS as they
//! would towards a non-loopback address (the netns pod tests do it for real).

use std::time::Duration;

use weft_e2e::{client::get_once, control::DestinationTls, *};

const WEB: &str = "http://web.demo.svc.cluster.local:80";
/// Short, so the test sees weft-destination renew its certificate.
const LIFETIME: &str = "4s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_discover_through_weft_destination_over_tls_only_with_its_identity() {
    let dir = TempDir::new("cp-tls");
    let ca = Ca::create(&dir.join("ca"));
    let client = Workload::new("demo", "client");
    let destination_sa = Workload::new(CONTROL_PLANE_NS, "weft-destination");
    let identity = IdentityService::builder(&ca, dir.path())
        .workload(&client)
        .workload(&destination_sa)
        .cert_lifetime(LIFETIME)
        .start()
        .await;
    let app = TestServer::start("web").await;
    let tls = DestinationTls::new(&ca, identity.addr, &destination_sa, dir.path());
    // `start_tls` waits for /ready, which includes the first certificate.
    let destination = DestinationService::start_tls(
        &dir.join("destination"),
        &[("web.yaml", static_endpoints("web", "demo", 80, &[StaticEndpoint::plain(app.addr)]))],
        tls,
    )
    .await;

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
