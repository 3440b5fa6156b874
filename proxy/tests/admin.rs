//! The admin server, golden metrics, limits, configuration errors and
//! graceful shutdown of the real proxy process.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn ready_live_and_unknown_paths() {
    let proxy = Proxy::builder().spawn().await;
    assert_eq!(proxy.admin("GET", "/ready", "").await.status, 200);
    assert_eq!(proxy.admin("GET", "/live", "").await.status, 200);
    assert_eq!(proxy.admin("GET", "/nope", "").await.status, 404);
    assert_eq!(proxy.admin("POST", "/ready", "").await.status, 405);
}

#[tokio::test]
async fn metrics_count_requests_responses_latency_and_connections() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let authority = server.addr.to_string();
    for i in 0..5 {
        let (code, _) = curl_via(&proxy, &format!("http://{authority}/ok/{i}")).await;
        assert_eq!(code, 200);
    }
    let (code, _) = curl_via(&proxy, &format!("http://{authority}/status/503")).await;
    assert_eq!(code, 503);

    let out = [("direction", "outbound"), ("authority", authority.as_str())];
    let ok = [out[0], out[1], ("status_code", "200"), ("classification", "success"), ("tls", "no_identity")];
    let m = proxy.wait_metric("response_total", &ok, 5.0).await;
    assert_eq!(m.get("request_total", &out), 6.0, "{}", m.0);
    assert_eq!(
        m.get("response_total", &[out[0], ("status_code", "503"), ("classification", "failure")]),
        1.0
    );
    assert_eq!(m.get("response_total", &out), 6.0);
    // Latency histogram: every 200 fell in some bucket, all in +Inf.
    let ok_latency = [out[0], out[1], ("status_code", "200")];
    assert_eq!(m.get("response_latency_ms_count", &ok_latency), 5.0, "{}", m.0);
    assert_eq!(m.get("response_latency_ms_bucket", &[ok_latency[0], ok_latency[2], ("le", "+Inf")]), 5.0);
    assert!(m.get("response_latency_ms_bucket", &[ok_latency[0], ("le", "1")]) <= 6.0);
    assert!(m.samples("response_latency_ms_bucket").count() >= 20, "Linkerd's buckets");
    // Six curl processes, six accepted connections, all closed again.
    let src = [("direction", "outbound"), ("peer", "src")];
    let m = proxy.wait_metric("tcp_close_total", &src, 6.0).await;
    assert_eq!(m.get("tcp_open_total", &src), 6.0);
    assert_eq!(m.get("tcp_open_connections", &src), 0.0);
    assert!(m.get("tcp_read_bytes_total", &src) > 6.0 * 50.0);
    assert!(m.get("tcp_write_bytes_total", &src) > 6.0 * 50.0);
    // Upstream connections are pooled: fewer than requests, at least one.
    let dst = [("direction", "outbound"), ("peer", "dst")];
    let dialed = m.get("tcp_open_total", &dst);
    assert!((1.0..=6.0).contains(&dialed), "{dialed}");
    assert_eq!(dialed as usize, server.connections());
    // No request went inbound.
    assert_eq!(m.get("request_total", &[("direction", "inbound")]), 0.0);
    // The build, for `weft check --proxy`.
    assert_eq!(m.get("proxy_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0, "{}", m.0);
}

/// The process gauges dashboards chart for proxy health (Linkerd's names).
#[tokio::test]
async fn process_metrics_report_memory_cpu_and_open_connections() {
    let proxy = Proxy::builder().spawn().await;
    let m = proxy.metrics().await;
    let rss = m.get("process_resident_memory_bytes", &[]);
    assert!((1e6..1e9).contains(&rss), "resident memory {rss}\n{}", m.0);
    assert!(m.get("process_virtual_memory_bytes", &[]) >= rss);
    // A proxy that has just started may not have used a clock tick yet.
    assert_eq!(m.samples("process_cpu_seconds_total").count(), 1, "{}", m.0);
    assert!(m.get("process_threads", &[]) >= 1.0);
    assert!(m.get("process_max_fds", &[]) >= 64.0);
    let started = m.get("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 60.0..=now).contains(&started), "start {started}, now {now}");
    // Each held connection is a file descriptor of the proxy.
    let before = m.get("process_open_fds", &[]);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(proxy.outbound).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = before;
    while open < before + 20.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = proxy.metrics().await.get("process_open_fds", &[]);
    }
    assert!(open >= before + 20.0, "fds {before} -> {open} with 20 connections held");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = proxy.metrics().await.get("process_open_fds", &[]);
    }
    assert!(open <= before, "fds {open} after closing, {before} before");
}

#[tokio::test]
async fn log_level_can_be_read_and_changed_from_loopback() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let rsp = proxy.admin("GET", "/proxy-log-level", "").await;
    assert_eq!((rsp.status, rsp.body.trim()), (200, "warn,weft_proxy=info"));
    assert!(!proxy.stderr().contains("DEBUG"));

    let rsp = proxy.admin("PUT", "/proxy-log-level", "warn,weft_proxy=debug").await;
    assert!(rsp.status == 204 || rsp.status == 200, "{rsp:?}");
    assert_eq!(proxy.admin("GET", "/proxy-log-level", "").await.body.trim(), "warn,weft_proxy=debug");
    let (code, _) = curl_via(&proxy, &format!("http://{}/debug-me", server.addr)).await;
    assert_eq!(code, 200);
    proxy.wait_log("DEBUG").await;

    let rsp = proxy.admin("PUT", "/proxy-log-level", "weft_proxy=[[[").await;
    assert_eq!(rsp.status, 400, "{rsp:?}");
    assert_eq!(proxy.admin("GET", "/proxy-log-level", "").await.body.trim(), "warn,weft_proxy=debug");
}

/// Starts a slow request, triggers shutdown with `trigger`, and checks the
/// request still completes, new connections are refused, and the proxy
/// exits 0.
async fn drains_in_flight_then_exits(trigger: impl AsyncFnOnce(&Proxy)) {
    let server = HttpServer::start().await;
    let mut proxy = Proxy::builder().spawn().await;
    let px = format!("http://{}", proxy.outbound);
    let url = format!("http://{}/slow?ms=1500", server.addr);
    let slow = tokio::spawn(async move { curl(&["-x", &px, "-w", "\n%{http_code}", &url]).await });
    server.wait_started(1).await;
    let start = Instant::now();
    trigger(&proxy).await;
    // The listener closes at once...
    within("listener to close", async {
        while TcpStream::connect(proxy.outbound).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // ...while the request in flight finishes normally.
    let out = within("slow request", slow).await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "slow done\n\n200", "{out:?}");
    let status = proxy.wait_exit(TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{status}:\n{}", proxy.stderr());
    assert!(start.elapsed() >= Duration::from_millis(900), "exited before the request finished");
    assert!(proxy.stderr().contains("drained"), "{}", proxy.stderr());
}

#[tokio::test]
async fn post_shutdown_drains_then_exits_zero() {
    drains_in_flight_then_exits(async |proxy: &Proxy| {
        let rsp = proxy.admin("POST", "/shutdown", "").await;
        assert_eq!(rsp.status, 200, "{rsp:?}");
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_then_exits_zero() {
    drains_in_flight_then_exits(async |proxy: &Proxy| proxy.signal(libc::SIGTERM)).await;
}

/// Draining an HTTP/2 connection sends GOAWAY: the stream in flight still
/// gets its whole response, new streams on the connection are refused.
#[tokio::test]
async fn draining_finishes_open_http2_streams_and_refuses_new_ones() {
    let server = HttpServer::start().await;
    let mut proxy = Proxy::builder().spawn().await;
    let client = h2_conn(proxy.outbound).await;
    let url = |path: &str| format!("http://{}{path}", server.addr);
    let mut c = client.clone();
    let req = http::Request::get(url("/slow?ms=1500")).body(empty()).unwrap();
    let slow = tokio::spawn(async move { c.send_request(req).await });
    server.wait_started(1).await;
    let rsp = proxy.admin("POST", "/shutdown", "").await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    within("new streams to be refused", async {
        loop {
            let req = http::Request::get(url("/")).body(empty()).unwrap();
            if client.clone().send_request(req).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let rsp = within("slow response", slow).await.unwrap().expect("the open stream's response");
    let got = collect(rsp).await;
    assert_eq!((got.status.as_u16(), &got.body[..]), (200, &b"slow done\n"[..]));
    let status = proxy.wait_exit(TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "{status}:\n{}", proxy.stderr());
}

#[tokio::test]
async fn max_connections_is_enforced_per_listener() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder()
        .env("WEFT_PROXY_MAX_CONNECTIONS", "2")
        .env("WEFT_PROXY_DETECT_TIMEOUT", "60s")
        .spawn()
        .await;
    let held = [
        TcpStream::connect(proxy.outbound).await.unwrap(),
        TcpStream::connect(proxy.outbound).await.unwrap(),
    ];
    // Both accepted (and counted) before the third arrives.
    proxy.wait_metric("tcp_open_total", &[("direction", "outbound"), ("peer", "src")], 2.0).await;
    let mut third = TcpStream::connect(proxy.outbound).await.unwrap();
    let got = read_until_closed(&mut third, Duration::from_secs(10))
        .await
        .expect("third connection was not closed");
    assert!(got.is_empty());
    proxy.wait_log("connection limit reached").await;
    let (code, _) = curl_via(&proxy, &format!("http://{}/", server.addr)).await;
    assert_eq!(code, 0, "a fourth connection got through while two were held");
    drop(held);
    // Once a slot frees up the proxy serves again.
    within("a slot to free up", async {
        loop {
            let (code, _) = curl_via(&proxy, &format!("http://{}/", server.addr)).await;
            if code == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[test]
fn malformed_configuration_exits_2_naming_the_variable() {
    let cases = [
        ("WEFT_PROXY_CONNECT_TIMEOUT", "3 seconds"),
        ("WEFT_PROXY_MAX_CONNECTIONS", "lots"),
        ("WEFT_PROXY_OPAQUE_PORTS", "25,99999"),
        ("WEFT_PROXY_INBOUND_APP_ADDR", "localhost"),
        ("WEFT_PROXY_LOG_FORMAT", "xml"),
        ("WEFT_PROXY_LOG", "weft_proxy=[[["),
    ];
    for (var, value) in cases {
        let (status, stderr) = Proxy::builder().env(var, value).run_to_exit();
        assert_eq!(status.code(), Some(2), "{var}={value}: {status}\n{stderr}");
        assert!(stderr.contains(var), "{var}={value}: stderr does not name it:\n{stderr}");
    }
}

#[tokio::test]
async fn an_unknown_variable_is_reported_with_the_closest_known_one() {
    // A typo'd listener variable: the proxy still starts on its defaults,
    // and says which setting it ignored.
    let proxy = Proxy::builder()
        .env("WEFT_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:1")
        .env("WEFT_PROXY_INBOUND_PORTS", "8080")
        .spawn()
        .await;
    proxy
        .wait_log("ignoring unknown variable WEFT_PROXY_OUTBOUND_LISTEN_ADDR (did you mean WEFT_PROXY_OUTBOUND_ADDR?)")
        .await;
    // Variables the injector sets and the proxy knows it does not use are not reported.
    assert!(!proxy.stderr().contains("WEFT_PROXY_INBOUND_PORTS"), "{}", proxy.stderr());
}
