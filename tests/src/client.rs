//! An HTTP client for sending requests through a proxy's outbound listener
//! in explicit mode: absolute-form URIs (`http://web.demo.svc.cluster.local:80/`)
//! over one keep-alive connection.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::BoxError;

/// How long one request may take, connect and body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    /// HTTP/2 with prior knowledge over plaintext.
    H2c,
}

enum Sender {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

/// One client connection (kept alive across requests) to `addr`.
pub struct Client {
    addr: SocketAddr,
    sender: Sender,
}

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The body as JSON (a [`crate::TestServer`]'s answer), if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Which [`crate::TestServer`] answered.
    pub fn backend(&self) -> Option<String> {
        self.header("x-backend")
    }

    /// A request header as the [`crate::TestServer`] that answered saw it.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        self.json()?.get("headers")?.get(name)?.as_str().map(str::to_string)
    }
}

impl Client {
    /// Connects to `addr` (bounded by the request timeout).
    pub async fn connect(addr: SocketAddr, version: HttpVersion) -> Result<Client, BoxError> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let io = TokioIo::new(tcp);
            let sender = match version {
                HttpVersion::Http1 => {
                    let (sender, conn) = http1::handshake(io).await?;
                    tokio::spawn(conn);
                    Sender::Http1(sender)
                }
                HttpVersion::H2c => {
                    let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                    tokio::spawn(conn);
                    Sender::Http2(sender)
                }
            };
            Ok::<_, BoxError>(sender)
        };
        let sender = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))??;
        Ok(Client { addr, sender })
    }

    /// `GET uri` (absolute form, so an explicit-mode proxy learns the
    /// destination from it).
    pub async fn get(&mut self, uri: &str) -> Result<Reply, BoxError> {
        self.get_with(uri, &[]).await
    }

    /// `GET uri` with extra request headers.
    pub async fn get_with(&mut self, uri: &str, headers: &[(&str, &str)]) -> Result<Reply, BoxError> {
        let mut req = Request::get(uri);
        if matches!(self.sender, Sender::Http2(_)) {
            req = req.version(http::Version::HTTP_2);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new())?;
        let addr = self.addr;
        let send = async {
            let rsp = match &mut self.sender {
                Sender::Http1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::Http2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let (parts, body) = rsp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(Reply { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, send)
            .await
            .map_err(|_| format!("GET {uri} via {addr} timed out"))?
    }

    /// False once the connection has closed.
    pub fn is_open(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => !s.is_closed(),
            Sender::Http2(s) => !s.is_closed(),
        }
    }
}

/// One request over a fresh connection.
pub async fn get_once(addr: SocketAddr, version: HttpVersion, uri: &str) -> Result<Reply, BoxError> {
    Client::connect(addr, version).await?.get(uri).await
}
