//! Certificates that live a few seconds are renewed (at ~70% of their
//! life) while traffic keeps flowing: a long-running keep-alive pool of
//! client connections through A, and A's multiplexed mTLS connection to B,
//! see no failure across several renewals on both proxies.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use weft_e2e::*;

const WEB: &str = "http://web.demo.svc.cluster.local:80/rotate";
/// Client connections to A kept alive for the whole run.
const CONNECTIONS: usize = 4;
/// Traffic runs at least this long ...
const MIN_RUN: Duration = Duration::from_secs(10);
/// ... and until both proxies have renewed this often (bounded by MAX_RUN).
const MIN_REFRESHES: f64 = 3.0;
const MAX_RUN: Duration = Duration::from_secs(40);
/// Per-connection request cap, so the loop is bounded in count too.
const MAX_REQUESTS: usize = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_keep_working_across_certificate_renewals() {
    let dir = TempDir::new("rotation");
    let ca = Ca::create(&dir.join("ca"));
    let (web, client) = (Workload::new("demo", "web"), Workload::new("demo", "client"));
    let identity = IdentityService::builder(&ca, dir.path())
        .workload(&web)
        .workload(&client)
        .cert_lifetime("4s")
        .start()
        .await;
    let MeshedPair { app: _app, b, destination, a } =
        MeshedPair::start(dir.path(), (&ca, identity.addr, &client), (&ca, identity.addr, &web)).await;
    let expiry_before = b.metrics().await.get("identity_cert_expiration_timestamp_seconds", &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for n in 0..CONNECTIONS {
        let (stop, ok, failures, expected) = (stop.clone(), ok.clone(), failures.clone(), client.identity());
        let mut http = Client::connect(a.outbound, HttpVersion::Http1).await.expect("connect to A");
        workers.push(tokio::spawn(async move {
            for i in 0..MAX_REQUESTS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match http.get(WEB).await {
                    Ok(r)
                        if r.status == 200
                            && r.seen_header("l5d-client-id").as_deref() == Some(&expected) =>
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failures.lock().unwrap().push(format!("conn {n} req {i}: {} {}", r.status, r.text()))
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("conn {n} req {i}: {e}"));
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            http.is_open()
        }));
    }

    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ma, mb) = (a.metrics().await, b.metrics().await);
        let renewed = ma.get("identity_cert_refresh_total", &[]) >= MIN_REFRESHES
            && mb.get("identity_cert_refresh_total", &[]) >= MIN_REFRESHES;
        let failed = !failures.lock().unwrap().is_empty();
        if failed || (renewed && start.elapsed() >= MIN_RUN) {
            break;
        }
        if start.elapsed() > MAX_RUN {
            panic!("fewer than {MIN_REFRESHES} renewals in {MAX_RUN:?}:\nA:\n{ma}\nB:\n{mb}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut still_open = 0;
    for w in workers {
        still_open += usize::from(within(STEP, "worker to stop", w).await.expect("worker panicked"));
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok >= 100, "only {ok} requests in {:?}", start.elapsed());
    assert_eq!(still_open, CONNECTIONS, "client connections to A were closed");
    eprintln!("{ok} requests over {CONNECTIONS} connections in {:?}", start.elapsed());

    // Every request reached B over mTLS from A's identity.
    let client_id = client.identity();
    b.wait_metric(
        "request_total",
        &[("direction", "inbound"), ("tls", "true"), ("client_id", &client_id)],
        |v| v == ok as f64,
    )
    .await;
    let mb = b.metrics().await;
    assert!(mb.get("identity_cert_refresh_failures_total", &[]) == 0.0, "B's renewals failed:\n{mb}");
    let expiry_after = mb.get("identity_cert_expiration_timestamp_seconds", &[]);
    assert!(expiry_after >= expiry_before + 2.0, "B's expiry {expiry_before} → {expiry_after}");

    // A new handshake with B's renewed certificate works too (A's pooled
    // connection to B predates the renewals).
    let c = Proxy::builder("c", dir.path())
        .identity(&ca, identity.addr, &client)
        .destination(destination.addr)
        .start()
        .await;
    let reply = Client::connect(c.outbound, HttpVersion::Http1).await.unwrap().get(WEB).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.seen_header("l5d-client-id"), Some(client_id));
}
