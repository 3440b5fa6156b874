//! The gRPC `Destination` service.
//!
//! Each `Get`/`GetProfile` call becomes one task that owns a receiver on the
//! index: it computes the target's view, sends what changed, and sleeps until
//! the index changes again or the client goes away. `serve_incoming` serves
//! it with the policy APIs over whatever connections it is given: TLS ones
//! from `tls.rs` when weft-destination has an identity, plain TCP otherwise.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use linkerd2_proxy_api::destination::{
    self as pb,
    destination_server::{Destination, DestinationServer},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::server::TcpIncoming, Request, Response, Status};
use tracing::{debug, info_span, Instrument};

use crate::{
    endpoints, index::Index, index::State, outbound_api::OutboundService, policy_api::PolicyService, profile,
    target, target::Target, MeshConfig,
};

/// Messages buffered per stream. Small on purpose: when a client reads slowly
/// the task waits, and the index's watch channel coalesces everything that
/// happens meanwhile into one recomputation.
pub(crate) const STREAM_BUFFER: usize = 4;

#[derive(Clone)]
pub struct DestinationService {
    index: Index,
    cfg: Arc<MeshConfig>,
    shutdown: watch::Receiver<bool>,
}

impl DestinationService {
    /// `shutdown` flipping to `true` ends every open stream, so a graceful
    /// server shutdown is not held up by clients that never hang up.
    pub fn new(index: Index, cfg: MeshConfig, shutdown: watch::Receiver<bool>) -> Self {
        Self { index, cfg: Arc::new(cfg), shutdown }
    }

    fn target(&self, req: &pb::GetDestination) -> Result<Target, Status> {
        target::parse(&req.path, &self.cfg.cluster_domain)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// Keeps the per-RPC stream gauge honest however the task ends.
struct StreamGauge(&'static str);

impl StreamGauge {
    fn new(rpc: &'static str) -> Self {
        metrics::gauge!("destination_streams", "rpc" => rpc).increment(1.0);
        Self(rpc)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!("destination_streams", "rpc" => self.0).decrement(1.0);
    }
}

/// The body of every stream: recompute on each index change, send the diff.
pub(crate) async fn run<V, M>(
    rpc: &'static str,
    mut index: watch::Receiver<State>,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<M, Status>>,
    compute: impl Fn(&State) -> V,
    diff: impl Fn(Option<&V>, &V) -> Vec<M>,
    // Targets that can never be in the index are answered once and then
    // only held open (ending the stream would read as an error to a proxy).
    watch_changes: bool,
) {
    let _gauge = StreamGauge::new(rpc);
    let sent = metrics::counter!("destination_updates_total", "rpc" => rpc);
    let mut last: Option<V> = None;
    loop {
        let msgs = {
            let state = index.borrow_and_update();
            if state.synced {
                let next = compute(&state);
                let msgs = diff(last.as_ref(), &next);
                last = Some(next);
                msgs
            } else {
                Vec::new()
            }
        };
        for msg in msgs {
            if tx.send(Ok(msg)).await.is_err() {
                debug!("client went away");
                return;
            }
            sent.increment(1);
        }
        let answered = last.is_some();
        tokio::select! {
            changed = index.changed(), if watch_changes || !answered => {
                if changed.is_err() {
                    return;
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                debug!("server shutting down; ending stream");
                return;
            }
            _ = tx.closed() => {
                debug!("client went away");
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = ReceiverStream<Result<pb::Update, Status>>;
    type GetProfileStream = ReceiverStream<Result<pb::DestinationProfile, Status>>;

    async fn get(&self, req: Request<pb::GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span = info_span!("get", path = %req.path, client = ?remote);
        let target = span.in_scope(|| self.target(&req))?;
        let watch_changes = target != Target::External;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let rx_index = self.index.subscribe();
        tokio::spawn(
            run(
                "get",
                rx_index,
                self.shutdown.clone(),
                tx,
                move |state| endpoints::view(state, &target),
                endpoints::diff,
                watch_changes,
            )
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span = info_span!("get_profile", path = %req.path, client = ?remote);
        let target = span.in_scope(|| self.target(&req))?;
        let watch_changes = target != Target::External;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cfg = self.cfg.clone();
        tokio::spawn(
            run(
                "get_profile",
                self.index.subscribe(),
                self.shutdown.clone(),
                tx,
                move |state| profile::profile(state, &target, &cfg),
                |prev: Option<&pb::DestinationProfile>, next: &pb::DestinationProfile| {
                    if prev == Some(next) {
                        Vec::new()
                    } else {
                        vec![next.clone()]
                    }
                },
                watch_changes,
            )
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the Destination, InboundServerPolicies and OutboundPolicies APIs on
/// `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: DestinationService,
    policies: PolicyService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        "serving the Destination, InboundServerPolicies and OutboundPolicies APIs (plaintext gRPC)"
    );
    serve_incoming(incoming(listener), service, policies, shutdown).await
}

/// [`serve`] over connections accepted elsewhere: main.rs's TLS ones
/// (`tls.rs`), each already past its handshake.
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    service: DestinationService,
    policies: PolicyService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tonic::transport::Server::builder()
        // Proxies hold streams for hours; keepalives find the dead ones.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // OutboundPolicies reads the index and mesh config Destination does.
        .add_service(
            OutboundService::new(service.index.clone(), service.cfg.clone(), service.shutdown.clone())
                .into_server(),
        )
        .add_service(DestinationServer::new(service))
        .add_service(policies.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Accepted connections with Nagle off. tonic ignores its own `tcp_nodelay`
/// for a listener passed in, and with Nagle on, the second small write of a
/// reply (the DATA after the HEADERS) waits for the proxy's delayed ACK:
/// every first lookup of a service took 40 ms more.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut incoming = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().expect("TCP_NODELAY readable"), "Nagle left on for a proxy's stream");
    }
}
