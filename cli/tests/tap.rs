//! `weft tap` against a real weft-proxy (explicit mode) carrying real
//! requests: filters see exactly the matching requests with the right
//! fields, and taps that never read do not slow the proxy.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::tap::{tap_client::TapClient, ObserveRequest};
use serde_json::Value;
use support::*;
use weft_e2e::proxy::Proxy;

/// A weft-proxy in explicit mode sending inbound requests to `app`, ready
/// (the e2e harness's, which restarts it if another test took a port).
fn proxy(app: SocketAddr) -> Proxy {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(Proxy::builder("proxy", &std::env::temp_dir()).inbound_app(app).start())
}

/// Waits until the proxy has logged `n` taps starting.
fn wait_taps(p: &Proxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.process.output().matches("tap started").count() < n {
        assert!(Instant::now() < deadline, "no {n} taps started:\n{}", p.process.output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tap(args: &[&str]) -> Proc {
    let mut cmd = Command::new(weft());
    cmd.arg("tap").args(args);
    Proc::spawn("tap", cmd)
}

fn wait_exit(p: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "tap did not exit:\n{}", p.output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn filters_see_exactly_the_matching_requests() {
    let app = app();
    let p = proxy(app);
    let tap_addr = p.tap.to_string();
    let mut json = tap(&[
        "--addr",
        &tap_addr,
        "--method",
        "GET",
        "--path",
        "/api/",
        "--max-rps",
        "0",
        "--limit",
        "10",
        "-o",
        "json",
    ]);
    wait_taps(&p, 1);
    let to = app.to_string();
    let mut text = tap(&["--addr", &tap_addr, "--to", &to, "--authority", "shop:80", "--limit", "2"]);
    wait_taps(&p, 2);

    // 10 GETs under /api/ and 6 requests that must not show.
    let mut want = Vec::new();
    for (method, path, host, status) in [
        ("GET", "/api/ok", "shop:80", 200),
        ("POST", "/api/ok", "shop:80", 200),
        ("GET", "/api/slow", "web:80", 200),
        ("GET", "/other", "shop:80", 200),
        ("GET", "/api/fail", "web:80", 503),
        ("GET", "/apix", "web:80", 200),
        ("GET", "/api/ok", "web:80", 200),
        ("DELETE", "/api/ok", "web:80", 200),
        ("GET", "/api/slow", "web:80", 200),
        ("GET", "/api/ok", "web:80", 200),
        ("GET", "/api/fail", "web:80", 503),
        ("PUT", "/api/fail", "web:80", 503),
        ("GET", "/api/ok", "shop:80", 200),
        ("GET", "/api/ok", "web:80", 200),
        ("GET", "/api/ok", "web:80", 200),
        ("HEAD", "/", "web:80", 200),
    ] {
        let (got, _) = request(p.inbound, method, path, host);
        assert_eq!(got, status, "{method} {path}");
        if method == "GET" && path.starts_with("/api/") {
            want.push((path, status));
        }
    }
    assert_eq!(want.len(), 10);

    assert!(wait_exit(&mut json, Duration::from_secs(10)).success(), "{}", json.output());
    let events: Vec<Value> = json.output().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 30, "{}", json.output());
    let reqs: Vec<&Value> = events.iter().filter(|e| e["type"] == "requestInit").collect();
    let got: Vec<&str> = reqs.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(got, want.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    for req in &reqs {
        assert_eq!(req["method"], "GET");
        assert_eq!(req["proxyDirection"], "INBOUND");
        assert_eq!(req["destination"]["address"], app.to_string());
        assert_eq!(req["tls"], "no_identity");
        let id = &req["id"];
        let rsp = events.iter().find(|e| e["type"] == "responseInit" && &e["id"] == id).unwrap();
        let end = events.iter().find(|e| e["type"] == "responseEnd" && &e["id"] == id).unwrap();
        let latency = rsp["sinceRequestInitMicros"].as_i64().unwrap();
        let (status, body) = match req["path"].as_str().unwrap() {
            "/api/slow" => (200, "slow"),
            "/api/fail" => (503, "down"),
            _ => (200, "hello"),
        };
        assert_eq!(rsp["status"], status, "{rsp}");
        assert_eq!(end["responseBytes"], body.len(), "{end}");
        if req["path"] == "/api/slow" {
            assert!((60_000..2_000_000).contains(&latency), "slow latency {latency}µs");
        } else {
            assert!((0..60_000).contains(&latency), "fast latency {latency}µs");
        }
        assert!(end["sinceRequestInitMicros"].as_i64().unwrap() >= latency);
    }

    // The text format, filtered by destination and authority: the first two
    // requests to shop:80 (the POST included; --limit 2 ends the tap).
    assert!(wait_exit(&mut text, Duration::from_secs(10)).success(), "{}", text.output());
    let out = text.output();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    let re_req = "proxy=in  src=127.0.0.1:";
    assert!(lines[0].starts_with("req id=") && lines[0].contains(re_req), "{out}");
    assert!(
        lines[0].contains(&format!("dst={app} tls=no_identity :method=GET :authority=shop:80 :path=/api/ok")),
        "{out}"
    );
    assert!(lines[1].contains(":status=200 latency=") && lines[1].ends_with("µs"), "{out}");
    assert!(lines[2].starts_with("end id=") && lines[2].ends_with("response-length=5B"), "{out}");
    assert!(lines[3].contains(":method=POST :authority=shop:80 :path=/api/ok"), "{out}");
    // Same request id across its three events.
    let id = |l: &str| l.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(id(lines[0]), id(lines[1]));
    assert_eq!(id(lines[0]), id(lines[2]));
}

fn dropped(admin: SocketAddr) -> f64 {
    let (_, body) = request(admin, "GET", "/metrics", "admin");
    body.lines()
        .filter(|l| l.starts_with("tap_events_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn burst(addr: SocketAddr, n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(request(addr, "GET", "/api/ok", "web:80").0, 200);
    }
    start.elapsed()
}

#[test]
fn taps_that_never_read_do_not_slow_the_proxy() {
    let app = app();
    let p = proxy(app);
    const N: usize = 1500;
    let baseline = burst(p.inbound, N);

    // A gRPC client with a 1 KiB flow-control window that never polls its
    // stream, and a `weft tap` whose stdout pipe nobody drains.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _stalled = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.tap))
            .unwrap()
            .initial_stream_window_size(Some(1024))
            .initial_connection_window_size(Some(1024))
            .connect()
            .await
            .unwrap();
        let req = ObserveRequest { limit: u32::MAX, r#match: None, extract: None };
        TapClient::new(channel).observe(req).await.unwrap().into_inner()
    });
    let mut cmd = Command::new(weft());
    cmd.args(["tap", "--addr", &p.tap.to_string(), "--max-rps", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut unread = cmd.spawn().unwrap();
    wait_taps(&p, 2);

    let tapped = burst(p.inbound, N);
    let _ = unread.kill();
    let _ = unread.wait();
    let lost = dropped(p.admin);
    eprintln!("{N} requests: {baseline:?} untapped, {tapped:?} with two stalled taps; {lost} events dropped");
    assert!(lost > 0.0, "the stalled taps' buffers should have overflowed");
    // Generous against scheduling noise, far below what waiting on a tap
    // (never) would cost.
    assert!(tapped < baseline * 3 + Duration::from_secs(2), "{tapped:?} vs {baseline:?}");
    let _ = p.outbound;
}

#[test]
fn the_cluster_is_picked_with_kubeconfig_and_context() {
    let dir = std::env::temp_dir().join(format!("weft-tap-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing");
    let out = Command::new(weft())
        .args(["tap", "deploy/web", "--kubeconfig"])
        .arg(&missing)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot read the kubeconfig {}", missing.display())), "{err}");

    // A kubeconfig without the context asked for: named, not a fall back to
    // the current context's cluster.
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
         clusters: [{name: dev, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: dev, user: {token: t}}]\n\
         contexts: [{name: dev, context: {cluster: dev, user: dev}}]\n",
    )
    .unwrap();
    let out = Command::new(weft())
        .args(["tap", "deploy/web", "--context", "prod", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("prod"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
