//! Loopback addresses and a minimal one-shot HTTP/1.1 client for admin
//! endpoints.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A loopback port nothing listens on right now (bound, then released).
/// Another process may take it before we do; the starters in this crate
/// retry with fresh ports when a bind fails.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("addr").port()
}

pub fn free_addr() -> SocketAddr {
    loopback(free_port())
}

/// A response read to the end of the connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines as `(lower-case name, value)`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh connection with `Connection: close`, bounded by
/// 10 s. Meant for admin endpoints (`/ready`, `/metrics`), which answer
/// with a Content-Length; chunked bodies are returned undecoded.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<RawResponse> {
    http_request(None, addr, "GET", path).await
}

/// `method path` like [`http_get`], from source address `src` when given
/// (any 127.0.0.0/8 address works on loopback), so a test can be a client
/// of another network. A connection closed before any response is an
/// `UnexpectedEof` error.
pub async fn http_request(
    src: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<RawResponse> {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let raw = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = match src {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        s.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{method} {addr}{path} timed out"))
    })??;
    if raw.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{addr} closed the connection without a response to {method} {path}"),
        ));
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response from {addr}: {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(RawResponse { status, headers, body: body.to_string() })
}
