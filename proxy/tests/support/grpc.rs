//! A hand-written gRPC service (what tonic's codegen would produce from a
//! `.proto`, without needing protoc): `test.Echo` with one method of each
//! streaming kind, a tonic server for it on hyper's HTTP/2, and a tonic
//! client over a plain hyper HTTP/2 connection.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::{loopback, within, AbortOnDrop};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub n: u32,
}

pub fn msg(text: &str, n: u32) -> Msg {
    Msg { text: text.to_string(), n }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

pub const UNARY: &str = "/test.Echo/Unary";
pub const SERVER_STREAM: &str = "/test.Echo/ServerStream";
pub const CLIENT_STREAM: &str = "/test.Echo/ClientStream";
pub const BIDI: &str = "/test.Echo/Bidi";

pub struct GrpcServer {
    pub addr: SocketAddr,
    _task: AbortOnDrop,
}

impl GrpcServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind(loopback(0)).await.expect("bind gRPC server");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(route(req).await)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, _task: AbortOnDrop(task) }
    }
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

/// Dispatches on the method path, as generated server code does.
async fn route(req: http::Request<Incoming>) -> http::Response<tonic::body::Body> {
    let mut grpc = tonic::server::Grpc::new(codec());
    match req.uri().path() {
        // Echoes the text back; `fail` gets NOT_FOUND.
        UNARY => {
            let svc = tower::service_fn(|req: Request<Msg>| async move {
                let m = req.into_inner();
                if m.text == "fail" {
                    return Err(Status::not_found("no such thing"));
                }
                Ok(Response::new(Msg { text: format!("echo: {}", m.text), n: m.n + 1 }))
            });
            grpc.unary(svc, req).await
        }
        // `n` replies numbered 0..n.
        SERVER_STREAM => {
            let svc = tower::service_fn(|req: Request<Msg>| async move {
                let m = req.into_inner();
                let stream: MsgStream = Box::pin(futures_util::stream::iter(
                    (0..m.n).map(move |i| Ok(Msg { text: format!("{} #{i}", m.text), n: i })),
                ));
                Ok::<_, Status>(Response::new(stream))
            });
            grpc.server_streaming(svc, req).await
        }
        // Sums `n` and joins the texts of everything the client sent.
        CLIENT_STREAM => {
            let svc = tower::service_fn(|req: Request<Streaming<Msg>>| async move {
                let mut stream = req.into_inner();
                let (mut texts, mut sum) = (Vec::new(), 0);
                while let Some(m) = stream.message().await? {
                    texts.push(m.text);
                    sum += m.n;
                }
                Ok::<_, Status>(Response::new(Msg { text: texts.join(","), n: sum }))
            });
            grpc.client_streaming(svc, req).await
        }
        // Answers each message as it arrives.
        BIDI => {
            let svc = tower::service_fn(|req: Request<Streaming<Msg>>| async move {
                let stream: MsgStream = Box::pin(
                    req.into_inner().map(|m| m.map(|m| Msg { text: format!("pong {}", m.text), n: m.n * 2 })),
                );
                Ok::<_, Status>(Response::new(stream))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    }
}

/// A tonic `GrpcService` over one hyper HTTP/2 connection.
#[derive(Clone)]
pub struct H2Channel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

pub struct EchoClient {
    grpc: tonic::client::Grpc<H2Channel>,
}

impl EchoClient {
    /// Dials `via` (a proxy) and addresses requests to `authority`.
    pub async fn connect(via: SocketAddr, authority: &str) -> Self {
        let io = within("connect", TcpStream::connect(via)).await.expect("connect");
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let origin = format!("http://{authority}").parse().unwrap();
        Self { grpc: tonic::client::Grpc::with_origin(H2Channel(send), origin) }
    }

    async fn ready(&mut self) {
        self.grpc.ready().await.expect("channel ready");
    }

    pub async fn unary(&mut self, m: Msg) -> Result<Msg, Status> {
        self.ready().await;
        let rsp = self.grpc.unary(Request::new(m), PathAndQuery::from_static(UNARY), codec()).await?;
        Ok(rsp.into_inner())
    }

    pub async fn server_stream(&mut self, m: Msg) -> Result<Streaming<Msg>, Status> {
        self.ready().await;
        let rsp = self
            .grpc
            .server_streaming(Request::new(m), PathAndQuery::from_static(SERVER_STREAM), codec())
            .await?;
        Ok(rsp.into_inner())
    }

    pub async fn client_stream<S>(&mut self, s: S) -> Result<Msg, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.ready().await;
        let rsp = self
            .grpc
            .client_streaming(Request::new(s), PathAndQuery::from_static(CLIENT_STREAM), codec())
            .await?;
        Ok(rsp.into_inner())
    }

    pub async fn bidi<S>(&mut self, s: S) -> Result<Streaming<Msg>, Status>
    where
        S: Stream<Item = Msg> + Send + 'static,
    {
        self.ready().await;
        let rsp = self.grpc.streaming(Request::new(s), PathAndQuery::from_static(BIDI), codec()).await?;
        Ok(rsp.into_inner())
    }
}
