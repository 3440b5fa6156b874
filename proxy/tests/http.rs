//! HTTP/1.1 and HTTP/2 through the real proxy, with curl and hyper clients:
//! explicit outbound (forward-proxy style) and inbound (to a configured app).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::body::Frame;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn h1_outbound_explicit_keeps_alive_preserves_host_and_passes_trailers() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    let (a, b, c) = (format!("{base}/a?x=1"), format!("{base}/b"), format!("{base}/c"));
    let headers = tempfile("h1-headers");
    let out = curl(&[
        "-x",
        &format!("http://{}", proxy.outbound),
        "--data-binary",
        "hello body",
        "-H",
        "TE: trailers",
        "-D",
        &headers,
        "-w",
        "\n%{num_connects} %{http_code}\n",
        &a,
        &b,
        &c,
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let summary: Vec<&str> = out.stdout.lines().filter(|l| l.ends_with(" 200")).collect();
    // One connection to the proxy, reused for all three requests.
    assert_eq!(summary, ["1 200", "0 200", "0 200"], "{out:?}");
    assert_eq!(out.stdout.matches("hello body").count(), 3, "{out:?}");

    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    // Origin-form upstream, with the authority in Host.
    assert_eq!(paths, ["/a?x=1", "/b", "/c"]);
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.header("host"), Some(&*format!("127.0.0.1:{}", server.addr.port())));
        assert_eq!(s.body, "hello body");
        assert!(s.header("proxy-connection").is_none(), "{:?}", s.headers);
    }
    // The proxy pooled its upstream connection too.
    assert_eq!(server.connections(), 1);

    // Response trailers reached curl (it writes them with the headers).
    let dumped = std::fs::read_to_string(&headers).unwrap();
    assert_eq!(dumped.matches("x-trailer: done").count(), 3, "{dumped}");
}

#[tokio::test]
async fn h2_outbound_prior_knowledge_keeps_authority_and_trailers() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let port = server.addr.port();
    let headers = tempfile("h2-headers");
    // One URL per curl: curl 7.88 fails reusing a prior-knowledge h2
    // connection even against a plain server (connection reuse over h2 is
    // covered with hyper below).
    let out = curl(&[
        "--http2-prior-knowledge",
        "--connect-to",
        &format!("127.0.0.1:{port}:127.0.0.1:{}", proxy.outbound.port()),
        "-D",
        &headers,
        "--data-binary",
        "h2 body",
        "-w",
        "\n%{http_version} %{http_code}",
        &format!("http://127.0.0.1:{port}/one"),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "h2 body\n2 200", "{out:?}");
    let s = server.last();
    assert_eq!(s.version, http::Version::HTTP_2, "HTTP/2 end to end");
    assert_eq!(s.uri, format!("http://127.0.0.1:{port}/one"), "authority preserved");
    assert_eq!(s.body, "h2 body");
    let dumped = std::fs::read_to_string(&headers).unwrap();
    assert!(dumped.contains("x-trailer: done"), "{dumped}");
    assert!(dumped.contains("x-echo-method: POST"), "{dumped}");
}

#[tokio::test]
async fn h1_inbound_strips_l5d_and_hop_by_hop_headers() {
    let server = HttpServer::start().await;
    let proxy = Proxy::with_app(server.addr).await;
    let out = curl(&[
        "-i",
        "-H",
        "Host: app.example:8080",
        "-H",
        "l5d-dst-override: evil.example:80",
        "-H",
        "l5d-client-id: spoofed.identity",
        "-H",
        "x-l5d-kept: yes",
        "-H",
        "Connection: keep-alive, x-hop-req",
        "-H",
        "x-hop-req: secret",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "x-end-to-end: kept",
        &format!("http://{}/hop", proxy.inbound),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("HTTP/1.1 200"), "{out:?}");
    let s = server.last();
    assert_eq!(s.uri, "/hop");
    assert_eq!(s.header("host"), Some("app.example:8080"));
    assert_eq!(s.header("x-l5d-kept"), Some("yes"));
    assert_eq!(s.header("x-end-to-end"), Some("kept"));
    for gone in ["l5d-dst-override", "l5d-client-id", "x-hop-req", "keep-alive", "connection"] {
        assert!(s.header(gone).is_none(), "{gone} reached the app: {:?}", s.headers);
    }
    // The server's own hop-by-hop response headers stop at the proxy too.
    let head = out.stdout.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("x-end-to-end: kept"), "{head}");
    assert!(!head.contains("x-hop-secret"), "{head}");
    assert!(!head.contains("timeout=5"), "{head}");
}

#[tokio::test]
async fn h2_inbound_prior_knowledge_strips_l5d_and_keeps_authority() {
    let server = HttpServer::start().await;
    let proxy = Proxy::with_app(server.addr).await;
    let out = curl(&[
        "--http2-prior-knowledge",
        "--connect-to",
        &format!("app.example:80:127.0.0.1:{}", proxy.inbound.port()),
        "-H",
        "l5d-client-id: spoofed.identity",
        "-H",
        "x-kept: yes",
        "-w",
        "\n%{http_version} %{http_code}",
        "http://app.example/inbound?q=1",
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.ends_with("2 200"), "{out:?}");
    let s = server.last();
    assert_eq!(s.version, http::Version::HTTP_2);
    assert_eq!(s.uri, "http://app.example/inbound?q=1");
    assert_eq!(s.header("x-kept"), Some("yes"));
    assert!(s.header("l5d-client-id").is_none(), "{:?}", s.headers);
}

/// Streams a response of spaced chunks: the first must reach the client long
/// before the last is produced, and the trailers must follow.
async fn streaming_response(h2: bool) {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let uri = format!("http://{}/stream?n=5&ms=300", server.addr);
    let req = Request::get(&uri)
        .header("host", server.addr.to_string())
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let rsp = if h2 {
        h2_conn(proxy.outbound).await.send_request(req).await
    } else {
        h1_conn(proxy.outbound).await.send_request(req).await
    };
    let rsp = rsp.expect("response");
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let (mut first, mut data, mut trailers) = (None, Vec::new(), None);
    within("streamed body", async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Some(d) = frame.data_ref() {
                first.get_or_insert_with(Instant::now);
                data.extend_from_slice(d);
            } else if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
    })
    .await;
    let spread = first.expect("no data").elapsed();
    assert!(
        spread >= Duration::from_millis(900),
        "the proxy buffered the response: all of it came within {spread:?}"
    );
    assert_eq!(String::from_utf8(data).unwrap(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    let trailers = trailers.expect("trailers lost");
    assert_eq!(trailers["x-chunks"], "5");
}

#[tokio::test]
async fn h1_streaming_response_body_and_trailers() {
    streaming_response(false).await;
}

#[tokio::test]
async fn h2_streaming_response_body_and_trailers() {
    streaming_response(true).await;
}

/// Sends a request body in two parts, the second only once the server has
/// the first: a proxy that buffered request bodies would deadlock here.
async fn streaming_request(h2: bool) {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let (tx, body) = channel_body();
    let req = Request::post(format!("http://{}/stream-request", server.addr))
        .header("host", server.addr.to_string())
        .header("te", "trailers")
        .header("trailer", "x-request-trailer")
        .body(body)
        .unwrap();
    let rsp = if h2 {
        let mut c = h2_conn(proxy.outbound).await;
        tokio::spawn(c.send_request(req))
    } else {
        let mut c = h1_conn(proxy.outbound).await;
        tokio::spawn(c.send_request(req))
    };
    tx.send(Ok(Frame::data(Bytes::from_static(b"first part;")))).await.unwrap();
    server.wait_first_chunks(1).await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"second part")))).await.unwrap();
    let mut t = HeaderMap::new();
    t.insert("x-request-trailer", HeaderValue::from_static("sent"));
    tx.send(Ok(Frame::trailers(t))).await.unwrap();
    drop(tx);
    let rsp = within("response", rsp).await.unwrap().expect("response");
    let got = collect(rsp).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "received 22 bytes");
    let s = server.last();
    assert_eq!(s.body, "first part;second part");
    let trailers = s.trailers.expect("request trailers lost");
    assert_eq!(trailers["x-request-trailer"], "sent");
}

#[tokio::test]
async fn h1_streaming_request_body_and_trailers() {
    streaming_request(false).await;
}

#[tokio::test]
async fn h2_streaming_request_body_and_trailers() {
    streaming_request(true).await;
}

/// Bodies larger than every HTTP/2 flow-control window on the way (the
/// upstream's 64 KiB per stream, the proxy's 2 MiB) cross only if the proxy
/// waits for window to send and hands window back as it reads.
#[tokio::test]
async fn h2_bodies_larger_than_the_flow_control_windows_pass_whole() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let sent: Bytes = b"0123456789abcdef".repeat(3 * 1024 * 1024 / 16).into();
    let mut c = h2_conn(proxy.outbound).await;
    let req = Request::post(format!("http://{}/", server.addr)).body(full(sent.clone())).unwrap();
    let rsp = within("response", c.send_request(req)).await.expect("response");
    let got = within("echoed body", collect(rsp)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len(), sent.len());
    assert!(got.body == sent, "the echoed body differs from the one sent");
    assert_eq!(server.last().body.len(), sent.len());
}

/// Streams of one connection run side by side whether they are answered
/// from the connection's task (one worker) or from tasks of their own.
async fn h2_concurrent_streams_share_one_connection(worker_threads: usize) {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().env("WEFT_PROXY_WORKER_THREADS", worker_threads).spawn().await;
    let client = h2_conn(proxy.outbound).await;
    // One request first, so the proxy has its upstream connection.
    let mut c = client.clone();
    let warm = Request::get(format!("http://{}/", server.addr)).body(empty()).unwrap();
    collect(c.send_request(warm).await.expect("response")).await;
    let mut calls = Vec::new();
    for i in 0..5 {
        let mut c = client.clone();
        let req = Request::get(format!("http://{}/slow?ms=500", server.addr)).body(empty()).unwrap();
        calls.push(tokio::spawn(async move { (i, c.send_request(req).await) }));
    }
    let start = Instant::now();
    for call in calls {
        let (_, rsp) = within("concurrent response", call).await.unwrap();
        let got = collect(rsp.expect("response")).await;
        assert_eq!(got.body, "slow done\n");
    }
    // Five half-second requests in parallel, not one after the other.
    assert!(start.elapsed() < Duration::from_millis(2400), "{:?}", start.elapsed());
    assert_eq!(server.connections(), 1, "HTTP/2 upstream connection multiplexed");
    assert_eq!(server.seen().len(), 6);
}

#[tokio::test]
async fn h2_concurrent_streams_share_one_connection_with_one_worker() {
    h2_concurrent_streams_share_one_connection(1).await;
}

#[tokio::test]
async fn h2_concurrent_streams_share_one_connection_with_two_workers() {
    h2_concurrent_streams_share_one_connection(2).await;
}

fn tempfile(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("weft-proxy-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(tag).to_string_lossy().into_owned()
}

/// A client that gives up on a response (HTTP/2 resets its stream, HTTP/1
/// closes its connection) makes the proxy give up on the upstream's too,
/// both before the response starts and while its body streams: a cancelled
/// call must not keep running on the server.
async fn giving_up_cancels_the_upstream_response(h2: bool) {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let url = |path: &str| format!("http://{}{path}", server.addr);
    if h2 {
        let client = h2_conn(proxy.outbound).await;
        let mut c = client.clone();
        let req = Request::get(url("/slow?ms=30000")).body(empty()).unwrap();
        let waiting = tokio::spawn(async move { c.send_request(req).await });
        server.wait_started(1).await;
        waiting.abort();
        server.wait_cancelled(1).await;

        let req = Request::get(url("/stream?n=300&ms=100")).body(empty()).unwrap();
        let rsp = within("response head", client.clone().send_request(req)).await.expect("response");
        let mut body = rsp.into_body();
        let first = within("first chunk", body.frame()).await.expect("a frame").expect("a data frame");
        assert_eq!(first.into_data().expect("data"), "chunk 0\n");
        drop(body);
        server.wait_cancelled(2).await;

        // The connection itself carries on.
        let req = Request::get(url("/")).body(empty()).unwrap();
        let got =
            collect(within("response", client.clone().send_request(req)).await.expect("response")).await;
        assert_eq!(got.status, 200);
    } else {
        let head = |path: &str| format!("GET {} HTTP/1.1\r\nhost: {}\r\n\r\n", url(path), server.addr);
        let mut waiting = TcpStream::connect(proxy.outbound).await.expect("connect");
        waiting.write_all(head("/slow?ms=30000").as_bytes()).await.unwrap();
        server.wait_started(1).await;
        drop(waiting);
        server.wait_cancelled(1).await;

        let mut streaming = TcpStream::connect(proxy.outbound).await.expect("connect");
        streaming.write_all(head("/stream?n=300&ms=100").as_bytes()).await.unwrap();
        let mut got = Vec::new();
        within("first chunk", async {
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("chunk 0") {
                let n = streaming.read(&mut buf).await.expect("read");
                assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        drop(streaming);
        server.wait_cancelled(2).await;
        assert_eq!(curl_via(&proxy, &url("/")).await.0, 200);
    }
}

#[tokio::test]
async fn h1_client_giving_up_cancels_the_upstream_response() {
    giving_up_cancels_the_upstream_response(false).await;
}

#[tokio::test]
async fn h2_client_giving_up_cancels_the_upstream_response() {
    giving_up_cancels_the_upstream_response(true).await;
}
