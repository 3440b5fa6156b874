//! In-process test servers standing in for the meshed apps.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle};

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
}

/// An HTTP/1.1 + h2c (prior knowledge) server on 127.0.0.1 that answers
/// every request with 200, an `x-backend: NAME` header and a JSON body:
/// `{"backend": NAME, "version": "HTTP/1.1", "method": .., "uri": ..,
/// "headers": {name: value}}` (the request's headers as received; the last
/// value wins for repeated names). It records every request and counts
/// accepted connections. Stops when dropped.
pub struct TestServer {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(name: &str) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind test server");
        Self::on(name, listener)
    }

    /// The same server on a listener of the caller's (another address or
    /// family, e.g. [`ipv6_only_listener`]).
    pub fn on(name: &str, listener: TcpListener) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, name.to_string(), state.clone()));
        TestServer { name: name.to_string(), addr, state, task }
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// TCP connections accepted so far (whether or not they sent HTTP).
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

/// A listener on `[::]:port` (0: any free port) with `IPV6_V6ONLY` set:
/// an app that takes IPv6 connections to any of the host's addresses and
/// no IPv4 ones.
pub fn ipv6_only_listener(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, name: String, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        state.connections.fetch_add(1, Ordering::Relaxed);
        let (name, state) = (name.clone(), state.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (name, state) = (name.clone(), state.clone());
                async move { Ok::<_, Infallible>(respond(&name, &state, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(name: &str, state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // Read the request body so the client may reuse the connection.
    let _ = body.collect().await;
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "backend": name,
        "version": format!("{:?}", parts.version),
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
    });
    state.requests.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
        version: parts.version,
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
    });
    Response::builder()
        .header("x-backend", name)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}
