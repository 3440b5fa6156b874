//! Opaque TCP through the real proxy: byte-for-byte, half-close, server
//! speaks first, TLS from the app.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn pattern(len: usize) -> Vec<u8> {
    // Every byte value, in an order that is not a simple repeat.
    (0..len).map(|i| (i.wrapping_mul(7919) ^ (i >> 8)) as u8).collect()
}

#[tokio::test]
async fn binary_protocol_through_inbound_byte_for_byte_with_half_close() {
    let echo = TcpServer::echo().await;
    let proxy = Proxy::with_app(echo.addr).await;
    // Starts with a NUL byte: cannot be HTTP, so it goes opaque at once.
    let mut data = vec![0u8, 1, 2, 3];
    data.extend(pattern(2 * 1024 * 1024));
    let back = echo_roundtrip(proxy.inbound, &data).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echo differs");
    // The echo server got the bytes from the proxy, not from the client.
    assert_eq!(echo.peers().len(), 1);

    let m = proxy.wait_metric("tcp_close_total", &[("direction", "inbound"), ("peer", "src")], 1.0).await;
    assert_eq!(m.get("tcp_open_total", &[("direction", "inbound"), ("peer", "src")]), 1.0);
    assert_eq!(
        m.get("tcp_read_bytes_total", &[("direction", "inbound"), ("peer", "src")]),
        data.len() as f64
    );
    assert_eq!(
        m.get("tcp_write_bytes_total", &[("direction", "inbound"), ("peer", "src")]),
        data.len() as f64
    );
    assert_eq!(m.get("tcp_open_connections", &[("direction", "inbound"), ("peer", "src")]), 0.0);
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    let echo = TcpServer::echo().await;
    let proxy = Proxy::with_app(echo.addr).await;
    let stream = TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    w.write_all(b"\x00short message").await.unwrap();
    w.shutdown().await.unwrap();
    // After our FIN the echo still comes back in full, then the server's FIN.
    let mut out = Vec::new();
    within("echo after half-close", r.read_to_end(&mut out)).await.unwrap();
    assert_eq!(out, b"\x00short message");
}

#[tokio::test]
async fn server_speaks_first_on_an_opaque_port() {
    let server = TcpServer::banner(b"220 smtp.example ESMTP ready\r\n").await;
    let proxy = Proxy::builder()
        .inbound_app(server.addr)
        .env("WEFT_PROXY_OPAQUE_PORTS", format!("25,{}", server.addr.port()))
        // Detection would wait this long for the client's first bytes.
        .env("WEFT_PROXY_DETECT_TIMEOUT", "60s")
        .spawn()
        .await;
    let start = Instant::now();
    let mut s = TcpStream::connect(proxy.inbound).await.unwrap();
    let mut banner = vec![0u8; 30];
    within_for(Duration::from_secs(10), "banner without sending anything", s.read_exact(&mut banner))
        .await
        .unwrap();
    assert_eq!(banner, b"220 smtp.example ESMTP ready\r\n");
    assert!(start.elapsed() < Duration::from_secs(10));
    s.write_all(b"EHLO client\r\n").await.unwrap();
    let mut reply = vec![0u8; 13];
    within("echo", s.read_exact(&mut reply)).await.unwrap();
    assert_eq!(reply, b"EHLO client\r\n");
}

#[tokio::test]
async fn tls_from_the_app_passes_through_untouched() {
    let echo = TcpServer::echo().await;
    let proxy = Proxy::with_app(echo.addr).await;
    // A TLS 1.2/1.3 ClientHello record header and body (SNI "example.com"),
    // then more records: the proxy must neither parse nor change them.
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03];
    hello.extend([0xab; 32]);
    hello.extend([0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    hello.extend(b"\x00\x00\x0bexample.com");
    hello.extend(pattern(64 * 1024));
    let back = echo_roundtrip(proxy.inbound, &hello).await;
    assert!(back == hello, "TLS bytes changed in transit ({} vs {} bytes)", back.len(), hello.len());
}

#[tokio::test]
async fn outbound_explicit_mode_closes_non_http_it_cannot_route() {
    let proxy = Proxy::builder().spawn().await;
    let mut s = TcpStream::connect(proxy.outbound).await.unwrap();
    s.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(10)).await.expect("connection left open");
    assert!(got.is_empty(), "{got:?}");
    proxy.wait_log("explicit mode routes only HTTP").await;
}
