//! Two proxies certified by a running weft-identity talk mTLS:
//! client → proxy A (outbound, explicit mode) → weft-destination says
//! "B's inbound, identity web" → mTLS → proxy B (inbound) → app.

use weft_e2e::*;

const WEB: &str = "http://web.demo.svc.cluster.local:80";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_certified_by_weft_identity_talk_mtls() {
    let dir = TempDir::new("mtls");
    let ca = Ca::create(&dir.join("ca"));
    let web = Workload::new("demo", "web");
    let client = Workload::new("demo", "client");
    let identity = IdentityService::builder(&ca, dir.path()).workload(&web).workload(&client).start().await;

    let MeshedPair { app, b, a, destination: _destination } =
        MeshedPair::start(dir.path(), (&ca, identity.addr, &client), (&ca, identity.addr, &web)).await;

    // HTTP/1.1 from the app to A; a forged client id is not believed.
    let mut http1 = Client::connect(a.outbound, HttpVersion::Http1).await.expect("connect to A");
    let reply = http1
        .get_with(
            &format!("{WEB}/hello"),
            &[("l5d-client-id", "evil.demo.serviceaccount.identity.weft.cluster.local")],
        )
        .await
        .expect("request through A");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.backend().as_deref(), Some("web"));
    assert_eq!(reply.seen_header("l5d-client-id"), Some(client.identity()), "{}", reply.text());
    let seen = app.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_11, "B restores the app's HTTP/1.1");
    assert_eq!(seen[0].uri.path(), "/hello");

    // HTTP/2 (h2c) from the app: the same mTLS hop.
    let mut h2 = Client::connect(a.outbound, HttpVersion::H2c).await.expect("h2c connect to A");
    for _ in 0..3 {
        let reply = h2.get(&format!("{WEB}/h2")).await.expect("h2c request through A");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.seen_header("l5d-client-id"), Some(client.identity()));
    }
    assert_eq!(app.request_count(), 4);

    // B counted the requests as mTLS from A's identity; A as sent over mTLS.
    let client_id = client.identity();
    b.wait_metric(
        "request_total",
        &[("direction", "inbound"), ("tls", "true"), ("client_id", &client_id)],
        |v| v == 4.0,
    )
    .await;
    let m = b.metrics().await;
    assert_eq!(m.get("request_total", &[("direction", "inbound"), ("tls", "no_identity")]), 0.0, "{m}");
    a.wait_metric(
        "response_total",
        &[("direction", "outbound"), ("tls", "true"), ("status_code", "200")],
        |v| v == 4.0,
    )
    .await;
    let m = a.metrics().await;
    assert_eq!(m.get("response_total", &[("direction", "outbound"), ("tls", "no_identity")]), 0.0, "{m}");
    assert!(m.get("identity_cert_refresh_total", &[]) >= 1.0, "{m}");
    assert!(m.get("identity_cert_expiration_timestamp_seconds", &[]) > 0.0, "{m}");
    let issued = identity.metrics().await.get("identity_certificates_issued_total", &[]);
    assert!(issued >= 2.0, "weft-identity issued {issued} certificates");
}
