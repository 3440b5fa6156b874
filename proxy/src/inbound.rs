//! Inbound: connections from the network to the local app.
//!
//! accept → TLS ClientHello for our identity? terminate mTLS (peer identity
//! recorded; ALPN says HTTP/2 or opaque) : plaintext (refused on ports that
//! require identity) → the port's policy says the protocol, or detect →
//!   HTTP: metrics → errors → authorize (route, authorizations) → rate
//!         limit → strip client-set l5d- headers, add l5d-client-id,
//!         restore HTTP/1 → route filters → app → forward
//!   else: authorize the connection → opaque TCP to the app, closed if a
//!         policy change denies it
//!
//! The app is on the loopback of the original destination's family under
//! iptables (`127.0.0.1:<original port>`, `[::1]:<original port>` for
//! IPv6), or the configured app address in explicit mode.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use http::{HeaderValue, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceBuilder;
use tracing::{debug, info};
use weft_tls::{rustls::ServerConfig, IdentityName, ALPN_HTTP2, ALPN_OPAQUE};

use crate::{
    config::PortSet,
    detect::client_hello_sni,
    http::{
        errors::RespondOnErrorLayer,
        forward::{Forward, L5D_ORIG_PROTO},
        headers::strip_l5d,
        resolve::{DnsResolver, ResolveLayer, Target},
        server,
        tap::TapLayer,
        BoxBody, Version,
    },
    identity::LocalIdentity,
    io::Activity,
    listen::{Accepted, BoundAddrs},
    metrics::Direction,
    policy::{
        authorize::{self, AuthorizeLayer, Client, PolicyRx},
        filters::FiltersLayer,
        rate_limit::RateLimitLayer,
        ClientTls, Policies, Protocol,
    },
    stack::{Detected, Stack},
};

/// Terminating mesh TLS: our identity and the server config presenting it.
pub struct MeshServer {
    pub local: LocalIdentity,
    pub config: Arc<ServerConfig>,
}

pub struct Inbound {
    stack: Stack,
    dns: Arc<DnsResolver>,
    app_addr: Option<SocketAddr>,
    listen_addrs: BoundAddrs,
    mesh: Option<MeshServer>,
    require_identity: PortSet,
    policies: Policies,
}

/// How a connection reached us.
#[derive(Clone, Debug)]
enum Peer {
    Plaintext,
    /// mTLS; the identity is `None` when the client presented no certificate.
    Meshed(Option<IdentityName>),
}

/// One connection's client and its port's policy.
struct Conn {
    client: Arc<Client>,
    policy: PolicyRx,
}

impl Inbound {
    pub fn new(
        stack: Stack,
        dns: Arc<DnsResolver>,
        app_addr: Option<SocketAddr>,
        listen_addrs: BoundAddrs,
        mesh: Option<MeshServer>,
        require_identity: PortSet,
        policies: Policies,
    ) -> Self {
        Self { stack, dns, app_addr, listen_addrs, mesh, require_identity, policies }
    }

    pub async fn handle(self: Arc<Self>, conn: Accepted) {
        let Accepted { stream, orig_dst, client } = conn;
        let app = match (self.app_addr, orig_dst) {
            (Some(app), _) => app,
            (None, Some(dst)) => app_on_loopback(dst),
            (None, None) => {
                info!("closing connection: no original destination and WEFT_PROXY_INBOUND_APP_ADDR is unset");
                return;
            }
        };
        // `target_addr`: what the client dialled (the listener itself in
        // explicit mode).
        let Some(target) = orig_dst.or_else(|| stream.local_addr().ok()) else { return };
        let policy = self.policies.port(app.port());
        let activity = Activity::default();
        let Some(mesh) = &self.mesh else {
            let io = self.stack.meter(stream, &activity);
            return self.plaintext(io, app, client, target, policy, &activity).await;
        };
        let io = self.stack.meter_unlabelled(stream, &activity);
        let (sni, mut io) = match client_hello_sni(io, self.stack.detect_timeout).await {
            Ok(sniffed) => sniffed,
            Err(error) => return info!(%error, "closing connection"),
        };
        if sni.as_deref() != Some(mesh.local.name.dns_name()) {
            io.get_mut().label(&self.stack.src_metrics);
            return self.plaintext(io, app, client, target, policy, &activity).await;
        }
        let mut tls = match tokio_rustls::TlsAcceptor::from(mesh.config.clone()).accept(io).await {
            Ok(tls) => tls,
            Err(error) => return info!(%error, "mesh TLS handshake failed"),
        };
        tls.get_mut().0.get_mut().label(&self.stack.src_metrics_mtls);
        let (_, session) = tls.get_ref();
        let peer = weft_tls::peer_identity(session);
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let span =
            tracing::info_span!("mtls", client.id = peer.as_ref().map(|p| p.dns_name()).unwrap_or("-"));
        let _enter = span.enter();
        debug!(kx = weft_tls::pq::key_exchange_group(session), "mesh TLS handshake");
        if peer.is_none() && self.require_identity.contains(app.port()) {
            return info!(port = app.port(), "closing connection: this port requires a client identity");
        }
        let conn = Conn {
            client: Client::new(client, target, ClientTls::Mesh(peer.as_ref().map(|p| p.dns_name().into()))),
            policy,
        };
        let peer = Peer::Meshed(peer);
        match alpn.as_deref() {
            Some(p) if p == ALPN_HTTP2 => self.http(tls, Version::Http2, app, &conn, peer, &activity).await,
            Some(p) if p == ALPN_OPAQUE => self.opaque(tls, app, &conn, &activity).await,
            _ => self.detected(tls, app, &conn, peer, &activity).await,
        }
    }

    async fn plaintext<I>(
        &self,
        io: I,
        app: SocketAddr,
        client: SocketAddr,
        target: SocketAddr,
        policy: PolicyRx,
        activity: &Activity,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.require_identity.contains(app.port()) {
            return info!(
                port = app.port(),
                "closing plaintext connection: this port requires a client identity"
            );
        }
        let conn = Conn { client: Client::new(client, target, ClientTls::Plaintext), policy };
        self.detected(io, app, &conn, Peer::Plaintext, activity).await
    }

    /// The port's policy names the protocol (no detection), or says detect.
    async fn detected<I>(&self, io: I, app: SocketAddr, conn: &Conn, peer: Peer, activity: &Activity)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let protocol = conn.policy.borrow().protocol;
        let timeout = match protocol {
            Protocol::Opaque | Protocol::Tls => return self.opaque(io, app, conn, activity).await,
            Protocol::Http1 => return self.http(io, Version::Http1, app, conn, peer, activity).await,
            Protocol::Http2 | Protocol::Grpc => {
                return self.http(io, Version::Http2, app, conn, peer, activity).await
            }
            Protocol::Detect(timeout) => timeout,
        };
        let Some(detected) = self.stack.detect_within(io, Some(app.port()), timeout).await else { return };
        match detected {
            Detected::Opaque(io) => self.opaque(io, app, conn, activity).await,
            Detected::Http(version, io) => self.http(io, version, app, conn, peer, activity).await,
        }
    }

    /// Checked once against the server's authorizations; closed when a
    /// policy change stops permitting it.
    async fn opaque<I>(&self, io: I, app: SocketAddr, conn: &Conn, activity: &Activity)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let policy = conn.policy.borrow().clone();
        if !authorize::check_tcp(&policy, &conn.client) {
            return;
        }
        tokio::select! {
            () = self.stack.forward_opaque(io, app, None, activity) => {}
            () = authorize::revoked(conn.policy.clone(), &conn.client) => {}
        }
    }

    async fn http<I>(
        &self,
        io: I,
        version: Version,
        app: SocketAddr,
        conn: &Conn,
        peer: Peer,
        activity: &Activity,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client = conn.client.addr;
        let client_name = match &peer {
            Peer::Meshed(Some(id)) => Some(id.dns_name().to_string()),
            _ => None,
        };
        let client_id = match &peer {
            Peer::Meshed(Some(id)) => HeaderValue::from_str(id.dns_name()).ok(),
            _ => None,
        };
        let meshed = matches!(peer, Peer::Meshed(_));
        let metrics = match &peer {
            Peer::Meshed(Some(id)) => self.stack.http_metrics.meshed(id.dns_name()),
            _ => self.stack.http_metrics.clone(),
        };
        let service = ServiceBuilder::new()
            .layer(metrics)
            .layer(RespondOnErrorLayer)
            .layer(AuthorizeLayer::new(conn.policy.clone(), conn.client.clone()))
            .layer(RateLimitLayer::new(conn.client.clone()))
            .map_request(move |mut req: Request<BoxBody>| {
                // Only a peer proxy may ask for its request to be restored
                // to HTTP/1; from anyone else the header is just stripped.
                let restore_http1 = meshed
                    && req.headers().get(L5D_ORIG_PROTO).is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1"));
                strip_l5d(req.headers_mut());
                if restore_http1 {
                    *req.version_mut() = http::Version::HTTP_11;
                }
                if let Some(id) = &client_id {
                    req.headers_mut().insert("l5d-client-id", id.clone());
                }
                req
            })
            .layer(FiltersLayer)
            .layer(ResolveLayer::new(Target::Fixed(app), self.dns.clone(), self.listen_addrs.clone()))
            .layer(TapLayer::new(self.stack.taps.clone(), Direction::Inbound, client, client_name.as_deref()))
            .service(Forward::new(self.stack.client.clone(), self.stack.connector.clone(), None));
        let settings = self.stack.server_settings();
        if let Err(error) =
            server::serve(io, version, service, settings, activity, self.stack.drain.signal()).await
        {
            debug!(%error, "HTTP connection closed with an error");
        }
    }
}

/// Where a redirected connection for `dst` reaches the app: its port on the
/// loopback of `dst`'s family. An app bound to `[::]` with IPV6_V6ONLY, or
/// to `[::1]`, takes the pod's IPv6 connections and no IPv4 ones (and one
/// on `0.0.0.0` the reverse), just as without the proxy.
fn app_on_loopback(dst: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match dst.ip().to_canonical() {
        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    };
    SocketAddr::new(ip, dst.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_is_on_the_loopback_of_the_original_family() {
        let app = |dst: &str| app_on_loopback(dst.parse().unwrap()).to_string();
        assert_eq!(app("10.77.0.2:8080"), "127.0.0.1:8080");
        assert_eq!(app("[fd00:77::2]:8080"), "[::1]:8080");
        assert_eq!(app("[::ffff:10.77.0.2]:8080"), "127.0.0.1:8080", "v4-mapped is IPv4");
    }
}
