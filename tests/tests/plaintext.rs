//! An unmeshed client may still talk plaintext to a meshed proxy's inbound
//! side, unless the port is listed in WEFT_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY;
//! then only mTLS peers get through.

use weft_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_accepted_unless_the_port_requires_identity() {
    let dir = TempDir::new("plaintext");
    let ca = Ca::create(&dir.join("ca"));
    let (web, strict, client) =
        (Workload::new("demo", "web"), Workload::new("demo", "strict"), Workload::new("demo", "client"));
    let identity = IdentityService::builder(&ca, dir.path())
        .workload(&web)
        .workload(&strict)
        .workload(&client)
        .start()
        .await;

    // B: a meshed proxy with default settings.
    let app = TestServer::start("web").await;
    let b = Proxy::builder("b", dir.path())
        .identity(&ca, identity.addr, &web)
        .inbound_app(app.addr)
        .start()
        .await;
    let uri = format!("http://{}/plain", b.inbound);
    let mut plain = Client::connect(b.inbound, HttpVersion::Http1).await.expect("connect to B");
    let reply = plain
        .get_with(&uri, &[("l5d-client-id", "forged.demo.serviceaccount.identity.weft.cluster.local")])
        .await
        .expect("plaintext request to B");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.seen_header("l5d-client-id"),
        None,
        "a plaintext client has no identity: {}",
        reply.text()
    );
    let mut h2 = Client::connect(b.inbound, HttpVersion::H2c).await.expect("h2c connect to B");
    assert_eq!(h2.get(&uri).await.expect("h2c plaintext request to B").status, 200);
    assert_eq!(app.request_count(), 2);
    b.wait_metric("request_total", &[("direction", "inbound"), ("tls", "no_identity")], |v| v == 2.0).await;

    // S: the app port requires identity. Plaintext is closed unanswered ...
    let strict_app = TestServer::start("strict").await;
    let s = Proxy::builder("s", dir.path())
        .identity(&ca, identity.addr, &strict)
        .inbound_app(strict_app.addr)
        .env("WEFT_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY", strict_app.addr.port())
        .start()
        .await;
    for version in [HttpVersion::Http1, HttpVersion::H2c] {
        let result = match Client::connect(s.inbound, version).await {
            Ok(mut c) => c.get(&format!("http://{}/plain", s.inbound)).await.map(|r| r.status),
            Err(e) => Err(e),
        };
        assert!(result.is_err(), "{version:?} plaintext to a port requiring identity: {result:?}");
    }
    assert_eq!(strict_app.request_count(), 0);

    // ... while a meshed peer gets through.
    let manifest =
        static_endpoints("strict", "demo", 80, &[StaticEndpoint::service_account(s.inbound, "strict")]);
    let destination = DestinationService::start(&dir.join("dst"), &[("strict.yaml", manifest)]).await;
    let a = Proxy::builder("a", dir.path())
        .identity(&ca, identity.addr, &client)
        .destination(destination.addr)
        .start()
        .await;
    let reply = Client::connect(a.outbound, HttpVersion::Http1)
        .await
        .unwrap()
        .get("http://strict.demo.svc.cluster.local:80/meshed")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.seen_header("l5d-client-id"), Some(client.identity()));
    assert_eq!(strict_app.request_count(), 1);
}
