//! Serves one accepted connection with hyper, in the HTTP version detection
//! found, until the client closes, the connection idles out, or the proxy
//! drains.

use std::{convert::Infallible, future::Future, pin::Pin, time::Duration};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{BoxBody, Version};
use crate::io::Activity;

#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// How long a client may take to send a request's header block.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub idle_timeout: Duration,
}

pub async fn serve<I, S>(
    io: I,
    version: Version,
    service: S,
    settings: &ServerSettings,
    activity: &Activity,
    drain: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(io);
    let service = TowerToHyperService::new(service);
    match version {
        Version::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                // Header blocks past this get 431 from hyper.
                .max_buf_size(settings.max_header_bytes)
                .serve_connection(io, service)
                .with_upgrades();
            drive(conn, settings, activity, drain).await
        }
        Version::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
                .serve_connection(io, service);
            drive(conn, settings, activity, drain).await
        }
    }
}

/// A hyper connection that can be asked to finish gracefully: HTTP/1 stops
/// after the request in flight, HTTP/2 sends GOAWAY and lets open streams
/// complete.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S, E> Graceful for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// Runs a connection until it ends, the proxy drains (finish gracefully), or
/// nothing moves for the idle timeout.
async fn drive<C: Graceful>(
    conn: C,
    settings: &ServerSettings,
    activity: &Activity,
    drain: &CancellationToken,
) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => return res,
        () = drain.cancelled() => debug!("draining"),
        () = activity.idle_for(settings.idle_timeout) => {
            // Nothing moved either way for the idle timeout: close, even with
            // a request in flight (a graceful shutdown would wait for an
            // upstream that may never answer).
            debug!("idle: closing");
            return Ok(());
        }
    }
    conn.as_mut().shutdown();
    conn.await
}
