//! HTTP proxying: serving accepted connections with hyper, the tower layers
//! every request passes through, and the pooled upstream client.

pub mod client;
pub mod errors;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod resolve;
pub mod server;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn boxed<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
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
