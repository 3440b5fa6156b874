//! Linkerd's `io.linkerd.proxy.outbound.OutboundPolicies` API: a Service
//! port's outbound policy ([`crate::outbound`]) for a `TrafficSpec`.
//!
//! `Watch` streams run like the Destination streams ([`crate::server`]): one
//! task per stream, recomputing on every index change and sending only a
//! policy that differs from the last one sent.
//!
//! The service is written by hand rather than generated: its answers are
//! Linkerd's `OutboundPolicy` with weft's extensions in field 1000
//! ([`weft_api::OutboundPolicyWithExtensions`]), which Linkerd's proxy reads
//! as the plain message.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use linkerd2_proxy_api::outbound::{self as pb, traffic_spec};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError},
    server::{Grpc, NamedService, ServerStreamingService, UnaryService},
    Request, Response, Status,
};
use tracing::{debug, info_span, warn, Instrument};
use weft_api::OutboundPolicyWithExtensions;

use crate::{
    index::Index,
    outbound::{self, Outbound},
    policy_api::shown,
    server::{run, STREAM_BUFFER},
    target::{self, Target},
    MeshConfig,
};

/// Requests are Linkerd's `TrafficSpec`; answers carry weft's extensions.
type Codec = tonic_prost::ProstCodec<OutboundPolicyWithExtensions, pb::TrafficSpec>;

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

    pub fn into_server(self) -> OutboundPoliciesServer {
        OutboundPoliciesServer(Arc::new(self))
    }

    /// Waits for the backend's first load, then looks the target up: an
    /// answer from a half-loaded index would wrongly say NotFound.
    async fn first(&self, target: &Target) -> Result<Outbound, Status> {
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

/// What the policy as sent leaves out (mirrors to missing Services).
fn report(policy: &Outbound) {
    for skipped in &policy.skipped {
        warn!(%skipped, "outbound policy sent without a part of a route");
    }
}

type WatchStream = ReceiverStream<Result<OutboundPolicyWithExtensions, Status>>;

impl OutboundService {
    async fn get(
        &self,
        req: Request<pb::TrafficSpec>,
    ) -> Result<Response<OutboundPolicyWithExtensions>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span = info_span!("outbound_get", target = %describe(&req), source = %shown(&req.source_workload), client = ?remote);
        async {
            let target = parse_spec(&req, &self.cfg.cluster_domain)?;
            let policy = self.first(&target).await?;
            report(&policy);
            Ok(Response::new(policy.message))
        }
        .instrument(span)
        .await
    }

    async fn watch(&self, req: Request<pb::TrafficSpec>) -> Result<Response<WatchStream>, Status> {
        let remote = req.remote_addr();
        let req = req.into_inner();
        let span = info_span!("outbound_watch", target = %describe(&req), source = %shown(&req.source_workload), client = ?remote);
        let target = span.in_scope(|| parse_spec(&req, &self.cfg.cluster_domain))?;
        // Like Linkerd: unknown at the start is NotFound. A Service deleted
        // while watched keeps its stream, silent, until it exists again.
        self.first(&target).instrument(span.clone()).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let cfg = self.cfg.clone();
        let last_sent = std::sync::Mutex::new(None::<OutboundPolicyWithExtensions>);
        tokio::spawn(
            run(
                "outbound_watch",
                self.index.subscribe(),
                self.shutdown.clone(),
                tx,
                move |state| outbound::policy(state, &cfg, &target),
                move |_, next: &Option<Outbound>| {
                    let Some(next) = next else { return Vec::new() };
                    let mut last = last_sent.lock().unwrap_or_else(|p| p.into_inner());
                    if last.as_ref() == Some(&next.message) {
                        return Vec::new();
                    }
                    debug!("sending the outbound policy");
                    report(next);
                    *last = Some(next.message.clone());
                    vec![next.message.clone()]
                },
                true,
            )
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// `io.linkerd.proxy.outbound.OutboundPolicies` over [`OutboundService`],
/// as tonic's generated server routes it, with weft's answer type.
#[derive(Clone)]
pub struct OutboundPoliciesServer(Arc<OutboundService>);

impl NamedService for OutboundPoliciesServer {
    const NAME: &'static str = "io.linkerd.proxy.outbound.OutboundPolicies";
}

struct Get(Arc<OutboundService>);

impl UnaryService<pb::TrafficSpec> for Get {
    type Response = OutboundPolicyWithExtensions;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, req: Request<pb::TrafficSpec>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.get(req).await })
    }
}

struct Watch(Arc<OutboundService>);

impl ServerStreamingService<pb::TrafficSpec> for Watch {
    type Response = OutboundPolicyWithExtensions;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: Request<pb::TrafficSpec>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.watch(req).await })
    }
}

impl<B> Service<http::Request<B>> for OutboundPoliciesServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.0.clone();
        match req.uri().path() {
            weft_api::OUTBOUND_POLICIES_GET => {
                Box::pin(async move { Ok(Grpc::new(Codec::default()).unary(Get(svc), req).await) })
            }
            weft_api::OUTBOUND_POLICIES_WATCH => {
                Box::pin(
                    async move { Ok(Grpc::new(Codec::default()).server_streaming(Watch(svc), req).await) },
                )
            }
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::outbound::outbound_policies_client::OutboundPoliciesClient;
    use tonic::{codegen::http::uri::PathAndQuery, transport::Channel};

    const MIRRORED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: shadow, namespace: demo}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-route, namespace: demo}
spec:
  parentRefs: [{group: core, kind: Service, name: web, port: 80}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 10}}]
"#;

    async fn serve() -> (Channel, watch::Sender<bool>) {
        let index = crate::fixtures::index(&[], &[MIRRORED]);
        index.set_synced();
        let (stop, shutdown) = watch::channel(false);
        let service = OutboundService::new(index, Arc::new(MeshConfig::default()), shutdown);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel =
            Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        (channel, stop)
    }

    fn spec() -> pb::TrafficSpec {
        pb::TrafficSpec {
            source_workload: String::new(),
            target: Some(traffic_spec::Target::Authority("web.demo.svc.cluster.local:80".into())),
        }
    }

    type ClientCodec = tonic_prost::ProstCodec<pb::TrafficSpec, OutboundPolicyWithExtensions>;

    /// Over gRPC: weft's client sees the mirror in field 1000 (Get and
    /// Watch), Linkerd's client the same policy without it.
    #[tokio::test]
    async fn get_and_watch_carry_the_extensions_and_linkerd_reads_the_plain_policy() {
        let (channel, _stop) = serve().await;
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let get = PathAndQuery::from_static(weft_api::OUTBOUND_POLICIES_GET);
        let ours =
            grpc.unary(Request::new(spec()), get, ClientCodec::default()).await.expect("Get").into_inner();
        let rules = ours.extensions.as_ref().expect("extensions").rules.clone();
        assert_eq!((rules.len(), rules[0].rule_index, rules[0].mirrors.len()), (1, 0, 1));
        assert_eq!(rules[0].mirrors[0].ratio.map(|r| (r.numerator, r.denominator)), Some((10, 100)));

        let linkerd = OutboundPoliciesClient::new(channel).get(spec()).await.expect("Get").into_inner();
        assert_eq!(linkerd, ours.policy);

        grpc.ready().await.expect("ready");
        let watch = PathAndQuery::from_static(weft_api::OUTBOUND_POLICIES_WATCH);
        let mut stream = grpc
            .server_streaming(Request::new(spec()), watch, ClientCodec::default())
            .await
            .expect("Watch")
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("in time")
            .expect("a message")
            .expect("not ended");
        assert_eq!(first, ours);

        grpc.ready().await.expect("ready");
        let other = PathAndQuery::from_static("/io.linkerd.proxy.outbound.OutboundPolicies/Nope");
        let err = grpc
            .unary(Request::new(spec()), other, ClientCodec::default())
            .await
            .expect_err("no such method");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }
}
