//! gRPC over TLS: accepts connections, terminates TLS with the CA's own
//! (rotating) certificate, and serves HTTP/2 to the Identity service.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tonic::codegen::Service;
use tracing::Instrument;
use weft_tls::rustls::ServerConfig;

use crate::service::PeerAddr;

/// A client that connects and never finishes its handshake must not hold a
/// task and a socket forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams one proxy may have open at once; it needs one.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// On shutdown, how long requests in flight may take to finish (a Certify
/// waits at most for a TokenReview).
const DRAIN_GRACE: Duration = Duration::from_secs(15);

/// Serves `svc` on `listener` until `shutdown` turns true, then tells every
/// client to go away (HTTP/2 GOAWAY) and waits, up to `DRAIN_GRACE`, for the
/// requests in flight to finish: a proxy renewing its certificate while the
/// CA restarts gets its answer, or a clean refusal to retry elsewhere.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    svc: S,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning on it.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let svc = svc.clone();
        let mut shutdown = shutdown.clone();
        let span = tracing::debug_span!("conn", %peer);
        connections.spawn(
            async move {
                let _ = tcp.set_nodelay(true);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::info!(%error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!("TLS handshake timed out");
                        return;
                    }
                };
                let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    let mut svc = svc.clone();
                    async move { svc.call(req).await }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    () = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "connection closed with error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, "draining");
    }
    let drained =
        tokio::time::timeout(DRAIN_GRACE, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(connections = connections.len(), "grace period over; closing connections still open");
    }
}
