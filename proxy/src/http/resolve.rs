//! Chooses the endpoint a request goes to, before later layers (discovery,
//! balancing) take over this job: the connection's original destination in
//! transparent mode, or the request's authority in explicit mode.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
};

use http::{uri::Authority, Request};
use tracing::debug;

use super::{
    extensions::RouteError,
    headers::{ip_literal, request_authority},
    BoxError, Endpoint, LayerFuture,
};
use crate::listen::BoundAddrs;

pub type DnsResolver = hickory_resolver::TokioResolver;

/// Builds the DNS resolver from the system configuration (resolv.conf,
/// /etc/hosts).
pub fn system_resolver() -> Result<DnsResolver, hickory_resolver::net::NetError> {
    let mut builder = hickory_resolver::TokioResolver::builder_tokio()?;
    // Most apps listen on IPv4 (often only on 127.0.0.1, while `localhost`
    // also resolves to ::1): try an IPv4 address first, IPv6 only if the
    // name has none.
    builder.options_mut().ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4thenIpv6;
    builder.build()
}

#[derive(Clone, Debug)]
pub enum Target {
    /// Every request on the connection goes to this address.
    Fixed(SocketAddr),
    /// Each request goes where its authority names (explicit outbound).
    Authority,
}

#[derive(Clone)]
pub struct ResolveLayer {
    target: Target,
    dns: Arc<DnsResolver>,
    /// This proxy's own listeners: an authority naming one would loop.
    own_addrs: BoundAddrs,
}

impl ResolveLayer {
    pub fn new(target: Target, dns: Arc<DnsResolver>, own_addrs: BoundAddrs) -> Self {
        Self { target, dns, own_addrs }
    }
}

impl<S> tower::Layer<S> for ResolveLayer {
    type Service = Resolve<S>;
    fn layer(&self, inner: S) -> Resolve<S> {
        Resolve { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Resolve<S> {
    inner: S,
    layer: ResolveLayer,
}

impl<S, B> tower::Service<Request<B>> for Resolve<S>
where
    S: tower::Service<Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A layer above (discovery) may already have chosen.
        if req.extensions().get::<Endpoint>().is_some() {
            return LayerFuture::inner(self.inner.call(req));
        }
        let authority = match &self.layer.target {
            Target::Fixed(addr) => {
                req.extensions_mut().insert(Endpoint(*addr));
                return LayerFuture::inner(self.inner.call(req));
            }
            Target::Authority => match request_authority(&req) {
                Some(authority) => authority,
                None => return LayerFuture::own(async { Err(RouteError::MissingAuthority.into()) }),
            },
        };
        let port = authority.port_u16().unwrap_or_else(|| default_port(&req));
        match ip_literal(&authority) {
            // An address needs no lookup: decide now, allocate nothing.
            Some(ip) => match self.layer.checked(&mut req, &authority, SocketAddr::new(ip, port)) {
                Ok(()) => LayerFuture::inner(self.inner.call(req)),
                Err(e) => LayerFuture::own(async move { Err(e.into()) }),
            },
            None => {
                let mut inner = super::take_ready(&mut self.inner);
                let layer = self.layer.clone();
                LayerFuture::own(async move {
                    let ip = lookup(&layer.dns, &authority).await?;
                    layer.checked(&mut req, &authority, SocketAddr::new(ip, port))?;
                    inner.call(req).await.map_err(Into::into)
                })
            }
        }
    }
}

impl ResolveLayer {
    /// Refuses an address that would loop back into this proxy, and marks
    /// the request with where it goes.
    fn checked<B>(
        &self,
        req: &mut Request<B>,
        authority: &Authority,
        addr: SocketAddr,
    ) -> Result<(), RouteError> {
        if self.own_addrs.contains(addr) {
            return Err(RouteError::Loop(addr));
        }
        debug!(%authority, %addr, "resolved");
        if req.method() == http::Method::CONNECT {
            req.extensions_mut().insert(super::forward::TunnelHere);
        }
        req.extensions_mut().insert(Endpoint(addr));
        Ok(())
    }
}

fn default_port<B>(req: &Request<B>) -> u16 {
    match req.uri().scheme_str() {
        Some("https") => 443,
        _ => 80,
    }
}

async fn lookup(dns: &DnsResolver, authority: &Authority) -> Result<IpAddr, RouteError> {
    let host = authority.host();
    if host.is_empty() {
        return Err(RouteError::InvalidAuthority(authority.to_string()));
    }
    let resolve_err = |reason: String| RouteError::Resolve { host: host.to_string(), reason };
    let ips = dns.lookup_ip(host).await.map_err(|e| resolve_err(e.to_string()))?;
    ips.iter().next().ok_or_else(|| resolve_err("no addresses".into()))
}
