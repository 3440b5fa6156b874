//! HTTP proxying: serving accepted connections with hyper, the tower layers
//! every request passes through, and the pooled upstream client.

pub mod balance;
pub mod body;
pub mod client;
pub mod errors;
pub mod extensions;
pub mod forward;
pub mod headers;
pub mod hedge;
pub mod http1;
pub mod http2;
pub mod logical;
pub mod metrics;
pub mod mirror;
pub mod policy_route;
pub mod resolve;
pub mod retry;
pub mod route;
pub mod server;
pub mod split;
pub mod tap;

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// What a layer returns: the inner service's own future when the layer
    /// has nothing to do for this request (no allocation, no extra state),
    /// or the layer's boxed work when it does.
    #[project = LayerFutureProj]
    pub enum LayerFuture<F, T> {
        Inner { #[pin] inner: F },
        Own { fut: BoxFuture<T> },
    }
}

impl<F, T> LayerFuture<F, T> {
    pub fn inner(inner: F) -> Self {
        LayerFuture::Inner { inner }
    }

    pub fn own(fut: impl Future<Output = Result<T, BoxError>> + Send + 'static) -> Self {
        LayerFuture::Own { fut: Box::pin(fut) }
    }
}

impl<F, T, E> Future for LayerFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LayerFutureProj::Inner { inner } => inner.poll(cx).map_err(Into::into),
            LayerFutureProj::Own { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// The one body type every layer speaks. A newtype rather than an alias:
/// with the error's `dyn` lifetime hidden, rustc can prove the layers'
/// futures `Send` (an alias trips its higher-ranked lifetime inference).
pub struct BoxBody(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>);

impl BoxBody {
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        BoxBody(body.map_err(Into::into).boxed_unsync())
    }
}

impl std::fmt::Debug for BoxBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxBody")
    }
}

impl http_body::Body for BoxBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

pub fn boxed<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxBody::new(body)
}

pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    boxed(http_body_util::Full::new(bytes.into()))
}

/// The upstream address a request is sent to, put in the request's
/// extensions by whichever layer decides it (the connection's original
/// destination, the authority, later discovery and load balancing).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(pub SocketAddr);

/// HTTP version of the accepted connection, which the upstream connection
/// keeps: gRPC needs HTTP/2 end to end, and HTTP/1 upgrades need HTTP/1.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    Http1,
    Http2,
}

/// Takes the service `poll_ready` was called on, leaving a clone in its
/// place: tower requires calling the very instance that said it was ready,
/// and the call's future outlives `&mut self`.
pub fn take_ready<S: Clone>(svc: &mut S) -> S {
    let clone = svc.clone();
    std::mem::replace(svc, clone)
}
