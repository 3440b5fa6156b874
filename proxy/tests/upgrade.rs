//! HTTP/1.1 Upgrade (WebSocket) and CONNECT through the real proxy.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn websocket_through(via: SocketAddr, target: &str, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(via).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    // The server greets, then echoes: bytes flow both ways after the 101.
    let mut greeting = rest;
    while greeting.len() < b"upgraded:".len() {
        let mut b = [0u8; 64];
        let n = within("greeting", s.read(&mut b)).await.unwrap();
        assert!(n > 0, "closed after 101");
        greeting.extend_from_slice(&b[..n]);
    }
    assert_eq!(greeting, b"upgraded:");
    for round in 0..3 {
        // A masked WebSocket text frame "hello N" (the server just echoes).
        let payload = format!("hello {round}");
        let mut frame = vec![0x81, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        s.write_all(&frame).await.unwrap();
        let mut back = vec![0u8; frame.len()];
        within("echo", s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, frame);
    }
    s
}

#[tokio::test]
async fn websocket_upgrade_through_outbound_explicit() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let mut s = websocket_through(
        proxy.outbound,
        &format!("http://{}/upgrade", server.addr),
        &server.addr.to_string(),
    )
    .await;
    let seen = server.last();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("sec-websocket-key"), Some("dGhlIHNhbXBsZSBub25jZQ=="));
    // Closing our side closes the tunnel end to end.
    s.shutdown().await.unwrap();
    let rest = read_until_closed(&mut s, TIMEOUT).await.expect("tunnel left open");
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn websocket_upgrade_through_inbound() {
    let server = HttpServer::start().await;
    let proxy = Proxy::with_app(server.addr).await;
    let _s = websocket_through(proxy.inbound, "/upgrade", "app.example").await;
    assert_eq!(server.last().header("host"), Some("app.example"));
}

#[tokio::test]
async fn connect_tunnel_through_outbound_explicit() {
    let echo = TcpServer::echo().await;
    let proxy = Proxy::builder().spawn().await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.addr).as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty());
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let (mut r, mut w) = s.into_split();
    let p = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&p).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut back = Vec::new();
    within("tunnelled echo", r.read_to_end(&mut back)).await.unwrap();
    drop(writer.await.unwrap());
    assert!(back == payload, "tunnel changed the bytes");
    assert_eq!(echo.peers().len(), 1);
}

#[tokio::test]
async fn curl_proxytunnel_reaches_an_http_server() {
    let server = HttpServer::start().await;
    let proxy = Proxy::builder().spawn().await;
    let out = curl(&[
        "-p",
        "-x",
        &format!("http://{}", proxy.outbound),
        "-w",
        "\n%{http_connect} %{http_code}",
        &format!("http://{}/through-tunnel", server.addr),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.ends_with("200 200"), "{out:?}");
    // Through a tunnel the server sees origin-form, as from a direct client.
    assert_eq!(server.last().uri, "/through-tunnel");
}
