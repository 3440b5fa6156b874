//! Outbound: connections from the local app to the rest of the world.
//!
//! accept → original destination (iptables) or explicit → detect →
//!   HTTP: metrics → errors → profile and outbound policy → policy route
//!         (rule, backend, timeout; steps aside for a ServiceProfile with
//!         routes or a split) → the rule's filters → profile route (timeout)
//!         → retry (the profile route's, or the policy rule's) → split →
//!         balance (with the policy's failure accrual) → fallback endpoint
//!         (orig dst | authority) → tap → forward
//!         (without discovery: metrics → errors → endpoint → tap → forward)
//!   else: opaque TCP to the original destination
//!
//! Layers that have nothing to do for a request hand back their inner
//! service's future (`http::LayerFuture`), so a request that needs no
//! discovery work costs no allocation per layer.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{Request, Response};
use tower::ServiceBuilder;
use tracing::{debug, info};

use crate::{
    balance::Pick,
    http::{
        balance::{BalanceLayer, Balancers},
        errors::RespondOnErrorLayer,
        forward::Forward,
        hedge::HedgeLayer,
        logical::{LogicalLayer, Profiles},
        mirror::MirrorLayer,
        policy_route::PolicyRouteLayer,
        resolve::{DnsResolver, ResolveLayer, Target},
        retry::RetryLayer,
        route::RouteLayer,
        server,
        split::SplitLayer,
        tap::TapLayer,
        BoxBody, Version,
    },
    io::{Activity, PrefixedIo},
    listen::{Accepted, BoundAddrs},
    metrics::Direction,
    policy::filters::FiltersLayer,
    stack::{ClientIo, Detected, Stack},
    tls::{Carried, MeshClients},
};
use weft_tls::MeshClientConfig;

pub struct Outbound {
    stack: Stack,
    dns: Arc<DnsResolver>,
    discovery: Option<(Profiles, Balancers)>,
    /// Routing by OutboundPolicies, with its per-route metric handles.
    policy_routes: PolicyRouteLayer,
    mesh: Option<MeshClients>,
    /// The outbound listeners' own addresses, to refuse requests that would
    /// loop back into them.
    listen_addrs: BoundAddrs,
}

impl Outbound {
    pub fn new(
        stack: Stack,
        dns: Arc<DnsResolver>,
        discovery: Option<(Profiles, Balancers)>,
        mesh: Option<MeshClients>,
        listen_addrs: BoundAddrs,
    ) -> Self {
        Self { stack, dns, discovery, policy_routes: PolicyRouteLayer::default(), mesh, listen_addrs }
    }

    /// Where an opaque connection to `dst` goes: with discovery, to an
    /// endpoint of the service `dst` is (balanced per connection), or to the
    /// pod `dst` is, over mTLS when it is meshed.
    async fn opaque_target(&self, dst: SocketAddr) -> (SocketAddr, Option<MeshClientConfig>) {
        let Some((profiles, balancers)) = &self.discovery else { return (dst, None) };
        let Some(profile) = profiles.get(&dst.to_string()).await else { return (dst, None) };
        let (addr, meta) = if !profile.fully_qualified_name.is_empty() {
            let backend: Arc<str> = format!("{}:{}", profile.fully_qualified_name, dst.port()).into();
            match balancers.pick(&backend).await {
                Pick::Endpoint(endpoint) => (endpoint.addr, endpoint.meta.clone()),
                _ => return (dst, None),
            }
        } else {
            match &profile.endpoint {
                Some((addr, meta)) => (*addr, meta.clone()),
                None => return (dst, None),
            }
        };
        let tls = match (&self.mesh, meta.identity.as_deref()) {
            (Some(mesh), Some(identity)) => mesh.for_peer(identity, Carried::Opaque),
            _ => None,
        };
        (addr, tls)
    }

    pub async fn handle(self: Arc<Self>, conn: Accepted) {
        let Accepted { stream, orig_dst, client } = conn;
        let activity = Activity::default();
        let io = self.stack.meter(stream, &activity);
        let Some(detected) = self.stack.detect(io, orig_dst.map(|d| d.port())).await else { return };
        match detected {
            Detected::Opaque(io) => match orig_dst {
                Some(dst) => {
                    let (addr, tls) = self.opaque_target(dst).await;
                    self.stack.forward_opaque(io, addr, tls.as_ref(), &activity).await
                }
                None => info!("closing connection: explicit mode routes only HTTP, and this is not HTTP"),
            },
            Detected::Http(version, io) => {
                let target = orig_dst.map_or(Target::Authority, Target::Fixed);
                let endpoint = ServiceBuilder::new()
                    .layer(ResolveLayer::new(target, self.dns.clone(), self.listen_addrs.clone()))
                    .layer(TapLayer::new(self.stack.taps.clone(), Direction::Outbound, client, None))
                    .service(Forward::new(
                        self.stack.client.clone(),
                        self.stack.connector.clone(),
                        self.mesh.clone(),
                    ));
                let front =
                    ServiceBuilder::new().layer(self.stack.http_metrics.clone()).layer(RespondOnErrorLayer);
                match &self.discovery {
                    // No profiles, routes, retries, splits or balancers to
                    // consult: every request goes where it was sent.
                    None => self.serve_http(io, version, front.service(endpoint), &activity).await,
                    Some((profiles, balancers)) => {
                        let service = front
                            .layer(LogicalLayer::new(profiles.clone(), orig_dst))
                            .layer(self.policy_routes.clone())
                            .layer(FiltersLayer)
                            .layer(MirrorLayer)
                            .layer(RouteLayer)
                            .layer(RetryLayer)
                            .layer(HedgeLayer)
                            .layer(SplitLayer)
                            .layer(BalanceLayer::new(balancers.clone()))
                            .service(endpoint);
                        self.serve_http(io, version, service, &activity).await
                    }
                }
            }
        }
    }

    async fn serve_http<S>(&self, io: PrefixedIo<ClientIo>, version: Version, service: S, activity: &Activity)
    where
        S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let settings = self.stack.server_settings();
        if let Err(error) =
            server::serve(io, version, service, settings, activity, self.stack.drain.signal()).await
        {
            debug!(%error, "HTTP connection closed with an error");
        }
    }
}
