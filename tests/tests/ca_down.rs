//! The CA being down when a proxy starts: the proxy retries with backoff,
//! is not ready meanwhile, and serves mTLS as soon as the CA answers.

use std::time::{Duration, Instant};

use weft_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_becomes_ready_once_the_ca_answers() {
    let dir = TempDir::new("ca-down");
    let ca = Ca::create(&dir.join("ca"));
    let (web, client) = (Workload::new("demo", "web"), Workload::new("demo", "client"));
    let ca_addr = free_addr();
    let app = TestServer::start("web").await;
    let mut b = Proxy::builder("b", dir.path())
        .identity(&ca, ca_addr, &web)
        .inbound_app(app.addr)
        .spawn_unready()
        .await;

    // No CA: B keeps trying and stays unready.
    let start = Instant::now();
    b.process.wait_log("certification failed", STEP).await.expect("B tried to certify");
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(b.ready_status().await, 503, "B is ready without a certificate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its log says it listens, and does not claim it is ready.
    let log = b.process.output();
    assert!(log.contains("listening") && !log.contains("proxy ready"), "{log}");
    let m = b.metrics().await;
    assert!(m.get("identity_cert_refresh_failures_total", &[]) >= 1.0, "{m}");
    assert_eq!(m.get("identity_cert_refresh_total", &[]), 0.0, "{m}");

    // The CA comes up on the configured address; B becomes ready within
    // its backoff.
    let identity = IdentityService::builder(&ca, dir.path())
        .workload(&web)
        .workload(&client)
        .addr(ca_addr)
        .start()
        .await;
    let up = Instant::now();
    b.wait_ready(STEP).await.expect("B ready once the CA answers");
    eprintln!("B ready {:?} after the CA came up", up.elapsed());
    b.process.wait_log("proxy ready", STEP).await.expect("B says it is ready once certified");
    let log = b.process.output();
    let (certified, ready) = (log.find("certified"), log.find("proxy ready"));
    assert!(certified.is_some() && certified < ready, "ready logged before the certificate:\n{log}");

    // And B serves mTLS.
    let manifest = static_endpoints("web", "demo", 80, &[StaticEndpoint::service_account(b.inbound, "web")]);
    let destination = DestinationService::start(&dir.join("dst"), &[("web.yaml", manifest)]).await;
    let a = Proxy::builder("a", dir.path())
        .identity(&ca, identity.addr, &client)
        .destination(destination.addr)
        .start()
        .await;
    let reply = Client::connect(a.outbound, HttpVersion::Http1)
        .await
        .unwrap()
        .get("http://web.demo.svc.cluster.local:80/")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.seen_header("l5d-client-id"), Some(client.identity()));
    b.wait_metric("request_total", &[("direction", "inbound"), ("tls", "true")], |v| v == 1.0).await;
}
