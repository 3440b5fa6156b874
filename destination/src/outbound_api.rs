//! Linkerd's `io.linkerd.proxy.outbound.OutboundPolicies` API: a Service
//! port's outbound policy ([`crate::outbound`]) for a `TrafficSpec`.
//!
//! `Watch` streams run like the Destination streams ([`crate::server`]): one
//! task per stream, recomputing on every index change and sending only a
//! policy that differs from the last one sent.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use linkerd2_proxy_api::outbound::{
    self as pb,
    outbound_policies_server::{OutboundPolicies, OutboundPoliciesServer},
    traffic_spec,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info_span, Instrument};

use crate::{
    index::Index,
    outbound,
    policy_api::shown,
    server::{run, STREAM_BUFFER},
    target::{self, Target},
    MeshConfig,
};

/// How long a call waits for the backend's first complete load.
const SYNC_WAIT: Duration = Duration::from_secs(30);
/// A `name.namespace.svc.cluster-domain:port` fits well within this.
const MAX_AUTHORITY: usize = 1024;

/// What a `TrafficSpec` names, or why it names nothing.
pub fn parse_spec(spec: &pb::TrafficSpec, cluster_domain: &str) -> Result<Target, Status> {
    match &spec.target {
        None => Err(Status::invalid_argument("TrafficSpec has no target (addr or authority)")),
        Some(traffic_spec::Target::Addr(addr)) => {
            let port = u16::try_from(addr.port).ok().filter(|p| *p != 0).ok_or_else(|| {
                Status::invalid_argument(format!("port {} is not a TCP port (1-65535)", addr.port))
            })?;
            let ip = addr.ip.ok_or_else(|| Status::invalid_argument("addr has no IP"))?;
            let ip = std::net::IpAddr::try_from(ip)
                .map_err(|e| Status::invalid_argument(format!("addr has no valid IP: {e}")))?;
            Ok(Target::Ip(SocketAddr::new(ip, port)))
        }
        Some(traffic_spec::Target::Authority(authority)) => {
            if authority.len() > MAX_AUTHORITY {
                return Err(Status::invalid_argument(format!(
                    "authority {:?} is too long",
                    shown(authority)
                )));
            }
            match target::parse(authority, cluster_domain) {
                Err(e) => Err(Status::invalid_argument(format!(
                    "invalid authority {:?}: {}",
                    shown(authority),
                    e.reason
                ))),
                // Linkerd answers NotFound for names it cannot hold.
                Ok(Target::External) => Err(Status::not_found(format!(
                    "authority {:?} is not of the form NAME.NAMESPACE.svc.{cluster_domain}:PORT",
                    shown(authority)
                ))),
                Ok(target) => Ok(target),
            }
        }
    }
}

#[derive(Clone)]
pub struct OutboundService {
    index: Index,
    cfg: Arc<MeshConfig>,
    shutdown: watch::Receiver<bool>,
}

impl OutboundService {
    /// `shutdown` flipping to `true` ends every open `Watch` stream.
    pub fn new(index: Index, cfg: Arc<MeshConfig>, shutdown: watch::Receiver<bool>) -> Self {
        Self { index, cfg, shutdown }
    }

    pub fn into_server(self) -> OutboundPoliciesServer<Self> {
        OutboundPoliciesServer::new(self)
    }

    /// Waits for the backend's first load, then looks the target up: an
    /// answer from a half-loaded index would wrongly say NotFound.
    async fn first(&self, target: &Target) -> Result<pb::OutboundPolicy, Status> {
        let mut rx = self.index.subscribe();
        match tokio::time::timeout(SYNC_WAIT, rx.wait_for(|s| s.synced)).await {
            Ok(Ok(_)) => {}
            _ => return Err(Status::unavailable("the index has not loaded yet; retry")),
        }
        let state = rx.borrow();
        outbound::policy(&state, &self.cfg, target).ok_or_else(|| Status::not_found(not_found(target)))
    }
}

/// The target as logged: at most 64 characters of what the client sent.
fn describe(spec: &pb::TrafficSpec) -> String {
    match &spec.target {
        None => "none".into(),
        Some(traffic_spec::Target::Authority(a)) => shown(a),
        Some(traffic_spec::Target::Addr(a)) => match a.ip.map(std::net::IpAddr::try_from) {
            Some(Ok(ip)) => SocketAddr::new(ip, u16::try_from(a.port).unwrap_or(0)).to_string(),
            _ => format!("invalid address, port {}", a.port),
        },
    }
}

fn not_found(target: &Target) -> String {
    match target {
        Target::Service { key, port } => format!("no Service {key} (port {port})"),
        Target::Ip(addr) => format!("{addr} is neither a Service's cluster IP nor a pod's IP"),
        Target::External => "not a Service of this cluster".into(),
    }
}

#[tonic::async_trait]
impl OutboundPolicies for OutboundService {
    type WatchStream = ReceiverStream<Result<pb::OutboundPolicy, Status>>;

    async fn get(&self, req: Request<pb::TrafficSpec>) -> Result<Response<pb::OutboundPolicy>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span = info_span!("outbound_get", target = %describe(&req), source = %shown(&req.source_workload), client = ?remote);
        async {
            let target = parse_spec(&req, &self.cfg.cluster_domain)?;
            self.first(&target).await.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn watch(&self, req: Request<pb::TrafficSpec>) -> Result<Response<Self::WatchStream>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span = info_span!("outbound_watch", target = %describe(&req), source = %shown(&req.source_workload), client = ?remote);
        let target = span.in_scope(|| parse_spec(&req, &self.cfg.cluster_domain))?;
        // Like Linkerd: unknown at the start is NotFound. A Service deleted
        // while watched keeps its stream, silent, until it exists again.
        self.first(&target).instrument(span.clone()).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cfg = self.cfg.clone();
        let last_sent = std::sync::Mutex::new(None::<pb::OutboundPolicy>);
        tokio::spawn(
            run(
                "outbound_watch",
                self.index.subscribe(),
                self.shutdown.clone(),
                tx,
                move |state| outbound::policy(state, &cfg, &target),
                move |_, next: &Option<pb::OutboundPolicy>| {
                    let Some(next) = next else { return Vec::new() };
                    let mut last = last_sent.lock().unwrap_or_else(|p| p.into_inner());
                    if last.as_ref() == Some(next) {
                        return Vec::new();
                    }
                    debug!("sending the outbound policy");
                    *last = Some(next.clone());
                    vec![next.clone()]
                },
                true,
            )
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
