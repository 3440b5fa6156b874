//! Outbound: connections from the local app to the rest of the world.
//!
//! accept → original destination (iptables) or explicit → detect →
//!   HTTP: metrics → errors → profile → route (timeout) → retry → split →
//!         balance → fallback endpoint (orig dst | authority) → forward
//!   else: opaque TCP to the original destination

use std::{net::SocketAddr, sync::Arc};

use http::Request;
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tracing::{debug, info};

use crate::{
    http::{
        balance::{BalanceLayer, Balancers},
        boxed,
        errors::RespondOnErrorLayer,
        forward::Forward,
        logical::{LogicalLayer, Profiles},
        resolve::{DnsResolver, ResolveLayer, Target},
        retry::RetryLayer,
        route::RouteLayer,
        server,
        split::SplitLayer,
    },
    io::Activity,
    listen::Accepted,
    stack::{Detected, Stack},
};

pub struct Outbound {
    stack: Stack,
    dns: Arc<DnsResolver>,
    discovery: Option<(Profiles, Balancers)>,
    /// The outbound listener's own address, to refuse requests that would
    /// loop back into it.
    listen_addr: SocketAddr,
}

impl Outbound {
    pub fn new(
        stack: Stack,
        dns: Arc<DnsResolver>,
        discovery: Option<(Profiles, Balancers)>,
        listen_addr: SocketAddr,
    ) -> Self {
        Self { stack, dns, discovery, listen_addr }
    }

    pub async fn handle(self: Arc<Self>, conn: Accepted) {
        let Accepted { stream, orig_dst, .. } = conn;
        let activity = Activity::default();
        let io = self.stack.meter(stream, &activity);
        let Some(detected) = self.stack.detect(io, orig_dst.map(|d| d.port())).await else { return };
        match detected {
            Detected::Opaque(io) => match orig_dst {
                Some(dst) => self.stack.forward_opaque(io, dst, &activity).await,
                None => info!("closing connection: explicit mode routes only HTTP, and this is not HTTP"),
            },
            Detected::Http(version, io) => {
                let target = orig_dst.map_or(Target::Authority, Target::Fixed);
                let (profiles, balancers) = self.discovery.clone().unzip();
                let service = ServiceBuilder::new()
                    .layer(self.stack.http_metrics.clone())
                    .layer(RespondOnErrorLayer)
                    .map_request(|req: Request<Incoming>| req.map(boxed))
                    .layer(LogicalLayer::new(profiles, orig_dst))
                    .layer(RouteLayer)
                    .layer(RetryLayer)
                    .layer(SplitLayer)
                    .layer(BalanceLayer::new(balancers))
                    .layer(ResolveLayer::new(target, self.dns.clone(), self.listen_addr))
                    .service(Forward::new(self.stack.client.clone(), version, self.stack.connector.clone()));
                let settings = self.stack.server_settings();
                if let Err(error) =
                    server::serve(io, version, service, settings, &activity, self.stack.drain.signal()).await
                {
                    debug!(%error, "HTTP connection closed with an error");
                }
            }
        }
    }
}
