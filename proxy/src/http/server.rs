//! Serves one accepted connection in the HTTP version detection found
//! (HTTP/1 with hyper, HTTP/2 with the h2 crate: see `http2`), until the
//! client closes, the connection idles out, or the proxy drains.

use std::{convert::Infallible, future::Future, pin::Pin, time::Duration};

use http::{Request, Response};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use super::{boxed, http2, BoxBody, BoxError, Version};
use crate::io::Activity;

#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// How long a client may take to send a request's header block.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub idle_timeout: Duration,
    /// HTTP/2 streams each get a task of their own, so that one
    /// connection's streams (every request from a peer proxy shares one)
    /// spread over the workers; with one worker they are answered from the
    /// connection's task.
    pub spawn_streams: bool,
}

pub async fn serve<I, S>(
    io: I,
    version: Version,
    service: S,
    settings: &ServerSettings,
    activity: &Activity,
    drain: &CancellationToken,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    match version {
        Version::Http1 => {
            let service = service.map_request(|req: Request<Incoming>| req.map(boxed));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                // Header blocks past this get 431 from hyper.
                .max_buf_size(settings.max_header_bytes)
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                .with_upgrades();
            Ok(drive(conn, settings, activity, drain).await?)
        }
        Version::Http2 => {
            let handshake = http2::accept(io, service, settings);
            let conn = tokio::select! {
                conn = handshake => conn?,
                () = activity.idle_for(settings.idle_timeout) => {
                    debug!("idle: closing before the HTTP/2 handshake finished");
                    return Ok(());
                }
            };
            Ok(drive(conn, settings, activity, drain).await?)
        }
    }
}

/// A connection that can be asked to finish gracefully: HTTP/1 stops after
/// the request in flight, HTTP/2 sends GOAWAY and lets open streams
/// complete.
pub trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error;
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<BoxError>,
{
    type Error = hyper::Error;

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
) -> Result<(), C::Error> {
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
