//! Bad input and failing upstreams: each gets a clear HTTP error or a closed
//! connection, and the proxy goes on serving everyone else.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// The proxy still answers a normal request through outbound.
async fn still_serves(proxy: &Proxy) {
    let server = HttpServer::start().await;
    let (code, body) = curl_via(proxy, &format!("http://{}/after", server.addr)).await;
    assert_eq!(code, 200, "the proxy stopped serving:\n{}", proxy.stderr());
    assert_eq!(body, "");
    assert_eq!(server.last().uri, "/after");
}

/// curl through the outbound proxy with response headers in stdout.
async fn curl_head(proxy: &Proxy, extra: &[&str], url: &str) -> CurlOutput {
    let px = format!("http://{}", proxy.outbound);
    let mut args = vec!["-i", "-x", &px];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args).await
}

fn status_line(out: &CurlOutput) -> &str {
    out.stdout.lines().next().unwrap_or("")
}

fn header<'a>(out: &'a CurlOutput, name: &str) -> Option<&'a str> {
    let head = out.stdout.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn garbage_bytes_are_closed_or_rejected() {
    let proxy = Proxy::builder().spawn().await;
    // Not HTTP at all: explicit outbound cannot route it and closes.
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"\x00\xff\xfe garbage \x01\x02\r\n\r\n").await.unwrap();
    let got = read_until_closed(&mut s, TIMEOUT).await.expect("left open");
    assert!(got.is_empty(), "{got:?}");
    // A request line followed by a broken header block: 400.
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, TIMEOUT).await.expect("left open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 400"), "{got}");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn half_sent_requests_and_silent_clients_are_closed_after_the_detect_timeout() {
    let proxy = Proxy::builder().env("WEFT_PROXY_DETECT_TIMEOUT", "1s").spawn().await;
    let cases: [&[u8]; 3] = [
        b"",                                              // connects, sends nothing
        b"GET /never-fin",                                // request line cut short
        b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127", // header block cut short
    ];
    let mut conns = Vec::new();
    for bytes in cases {
        let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
        s.write_all(bytes).await.unwrap();
        conns.push((bytes, s));
    }
    let start = Instant::now();
    for (bytes, mut s) in conns {
        let got = read_until_closed(&mut s, TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{:?} still open after {TIMEOUT:?}", String::from_utf8_lossy(bytes)));
        let got = String::from_utf8_lossy(&got);
        // Closed, or told it took too long, and nothing else.
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
    }
    // Not before the timeout has passed (each was opened before `start`).
    assert!(start.elapsed() >= Duration::from_millis(700), "{:?}", start.elapsed());
    proxy.wait_log("no bytes received").await;
    still_serves(&proxy).await;
}

#[tokio::test]
async fn oversized_header_blocks_get_431() {
    let server = HttpServer::start().await;
    let proxy = Proxy::with_app(server.addr).await;
    let big = format!("x-big: {}", "a".repeat(70 * 1024));
    let url = format!("http://{}/big", proxy.inbound);
    // HTTP/1 with a raw client: the proxy answers 431 and closes while the
    // rest of the headers are still unread, and curl loses the answer to
    // the resulting reset (it retries, then reports "connection died").
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    let req = format!("GET /big HTTP/1.1\r\nHost: app\r\n{big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let got = read_until_closed(&mut s, TIMEOUT).await.expect("left open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let h2 =
        curl(&["--http2-prior-knowledge", "-H", &big, "-w", "%{http_code}", "-o", "/dev/null", &url]).await;
    // HTTP/2 may answer 431 or refuse the header block at the framing
    // layer (h2 closes the connection); either way it never reaches the app.
    assert!(h2.stdout == "431" || h2.code != 0, "{h2:?}");
    assert!(server.seen().is_empty(), "an oversized request reached the app");
    // A header block under the limit is fine.
    let ok = format!("x-big: {}", "a".repeat(30 * 1024));
    let out = curl(&["-H", &ok, "-w", "%{http_code}", "-o", "/dev/null", &url]).await;
    assert_eq!(out.stdout, "200", "{out:?}");
    assert_eq!(server.last().header("x-big").map(str::len), Some(30 * 1024));
}

#[tokio::test]
async fn refused_upstream_gets_502_with_a_reason() {
    let proxy = Proxy::builder().spawn().await;
    let port = free_port();
    let out = curl_head(&proxy, &[], &format!("http://127.0.0.1:{port}/")).await;
    assert!(status_line(&out).starts_with("HTTP/1.1 502"), "{out:?}");
    let reason = header(&out, "l5d-proxy-error").expect("l5d-proxy-error");
    assert!(reason.contains(&port.to_string()) && reason.to_lowercase().contains("refused"), "{reason}");

    // Inbound to an app that is not listening: the same.
    let inbound = Proxy::with_app(loopback(free_port())).await;
    let out = curl(&["-i", &format!("http://{}/", inbound.inbound)]).await;
    assert!(status_line(&out).starts_with("HTTP/1.1 502"), "{out:?}");
    assert!(header(&out, "l5d-proxy-error").is_some(), "{out:?}");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn upstream_reset_mid_response_fails_the_response_not_the_proxy() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    for h2 in [false, true] {
        let mut args = vec!["-x".to_string(), format!("http://{}", proxy.outbound)];
        if h2 {
            let p = server.addr.port();
            args = vec![
                "--http2-prior-knowledge".into(),
                "--connect-to".into(),
                format!("127.0.0.1:{p}:127.0.0.1:{}", proxy.outbound.port()),
            ];
        }
        args.push(format!("http://{}/reset", server.addr));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = curl(&args).await;
        // The client must not mistake a truncated response for a whole one.
        assert_ne!(out.code, 0, "h2={h2}: {out:?}");
        assert!(out.stdout.starts_with("partial response") || out.stdout.is_empty(), "{out:?}");
    }
    proxy.wait_metric("response_total", &[("status_code", "200"), ("classification", "failure")], 2.0).await;
    still_serves(&proxy).await;
}

#[tokio::test]
async fn upstream_that_never_accepts_times_out_with_504() {
    // A listener whose accept queue is full: further SYNs go unanswered,
    // so connecting hangs until the proxy's connect timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&loopback(0).into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    let proxy = Proxy::builder().env("WEFT_PROXY_CONNECT_TIMEOUT", "500ms").spawn().await;
    let start = Instant::now();
    let out = curl_head(&proxy, &[], &format!("http://{addr}/")).await;
    assert!(status_line(&out).starts_with("HTTP/1.1 504"), "{out:?}");
    let reason = header(&out, "l5d-proxy-error").expect("l5d-proxy-error");
    assert!(reason.contains("timed out"), "{reason}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    still_serves(&proxy).await;
}

#[tokio::test]
async fn upstream_that_accepts_but_never_answers_is_cut_off_by_the_idle_timeout() {
    let silent = SilentServer::start().await;
    let proxy = Proxy::builder().env("WEFT_PROXY_IDLE_TIMEOUT", "1s").spawn().await;
    let start = Instant::now();
    let out =
        curl(&["-i", "-x", &format!("http://{}", proxy.outbound), &format!("http://{}/", silent.addr)]).await;
    let elapsed = start.elapsed();
    // curl's own --max-time is 20 s: the proxy must give up well before.
    assert!(elapsed < Duration::from_secs(10), "the proxy let the request hang for {elapsed:?}: {out:?}");
    assert!(out.code != 0 || status_line(&out).contains(" 50"), "{out:?}");
    assert_eq!(silent.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn explicit_request_without_authority_gets_400() {
    let proxy = Proxy::builder().spawn().await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"GET /no-host HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let got = read_until_closed(&mut s, TIMEOUT).await.expect("left open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.to_ascii_lowercase().contains("l5d-proxy-error:"), "{got}");
    still_serves(&proxy).await;
}

#[tokio::test]
async fn request_addressed_to_the_proxy_itself_fails_instead_of_looping() {
    let proxy = Proxy::builder().spawn().await;
    for host in ["127.0.0.1", "localhost"] {
        let start = Instant::now();
        let url = format!("http://{host}:{}/loop", proxy.outbound.port());
        let out = curl_head(&proxy, &[], &url).await;
        assert!(status_line(&out).starts_with("HTTP/1.1 5"), "{url}: {out:?}");
        assert!(header(&out, "l5d-proxy-error").is_some(), "{out:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    let m = proxy.metrics().await;
    // One request each: nothing went round the loop.
    assert_eq!(m.get("request_total", &[("direction", "outbound")]), 2.0, "{}", m.0);
    still_serves(&proxy).await;
}
