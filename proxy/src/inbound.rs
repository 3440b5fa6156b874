//! Inbound: connections from the network to the local app.
//!
//! accept → detect →
//!   HTTP: metrics → errors → strip client-set l5d- headers → app → forward
//!   else: opaque TCP to the app
//!
//! The app is `127.0.0.1:<original port>` under iptables, or the configured
//! app address in explicit mode.

use std::{net::SocketAddr, sync::Arc};

use http::Request;
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tracing::{debug, info};

use crate::{
    http::{
        boxed,
        errors::RespondOnErrorLayer,
        forward::Forward,
        headers::strip_l5d,
        resolve::{DnsResolver, ResolveLayer, Target},
        server,
    },
    io::Activity,
    listen::Accepted,
    stack::{Detected, Stack},
};

pub struct Inbound {
    stack: Stack,
    dns: Arc<DnsResolver>,
    app_addr: Option<SocketAddr>,
    listen_addr: SocketAddr,
}

impl Inbound {
    pub fn new(
        stack: Stack,
        dns: Arc<DnsResolver>,
        app_addr: Option<SocketAddr>,
        listen_addr: SocketAddr,
    ) -> Self {
        Self { stack, dns, app_addr, listen_addr }
    }

    pub async fn handle(self: Arc<Self>, conn: Accepted) {
        let Accepted { stream, orig_dst, .. } = conn;
        let app = match (self.app_addr, orig_dst) {
            (Some(app), _) => app,
            (None, Some(dst)) => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), dst.port()),
            (None, None) => {
                info!("closing connection: no original destination and WEFT_PROXY_INBOUND_APP_ADDR is unset");
                return;
            }
        };
        let activity = Activity::default();
        let io = self.stack.meter(stream, &activity);
        let Some(detected) = self.stack.detect(io, Some(app.port())).await else { return };
        match detected {
            Detected::Opaque(io) => self.stack.forward_opaque(io, app, &activity).await,
            Detected::Http(version, io) => {
                let service = ServiceBuilder::new()
                    .layer(self.stack.http_metrics.clone())
                    .layer(RespondOnErrorLayer)
                    .map_request(|mut req: Request<Incoming>| {
                        strip_l5d(req.headers_mut());
                        req.map(boxed)
                    })
                    .layer(ResolveLayer::new(Target::Fixed(app), self.dns.clone(), self.listen_addr))
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
