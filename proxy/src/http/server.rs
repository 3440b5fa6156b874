//! Serves one accepted connection with hyper, in the HTTP version detection
//! found, until the client closes, the connection idles out, or the proxy
//! drains.

use std::{convert::Infallible, time::Duration};

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
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => return res,
                () = drain.cancelled() => debug!("draining"),
                () = activity.idle_for(settings.idle_timeout) => {
                    // Nothing moved either way for the idle timeout: close,
                    // even with a request in flight (a graceful shutdown
                    // would wait for an upstream that may never answer).
                    debug!("idle: closing");
                    return Ok(());
                }
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        Version::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => return res,
                () = drain.cancelled() => debug!("draining"),
                () = activity.idle_for(settings.idle_timeout) => {
                    // Nothing moved either way for the idle timeout: close,
                    // even with a request in flight (a graceful shutdown
                    // would wait for an upstream that may never answer).
                    debug!("idle: closing");
                    return Ok(());
                }
            }
            // Sends GOAWAY; streams already open run to completion.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
