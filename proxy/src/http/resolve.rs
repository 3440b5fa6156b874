//! Chooses the endpoint a request goes to, before later layers (discovery,
//! balancing) take over this job: the connection's original destination in
//! transparent mode, or the request's authority in explicit mode.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header, uri::Authority, Request};
use tracing::debug;

use super::{errors::RouteError, BoxError, Endpoint};
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
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let layer = self.layer.clone();
        Box::pin(async move {
            // A layer above (discovery) may already have chosen.
            if req.extensions().get::<Endpoint>().is_some() {
                return inner.call(req).await.map_err(Into::into);
            }
            let endpoint = match layer.target {
                Target::Fixed(addr) => addr,
                Target::Authority => {
                    let authority = request_authority(&req).ok_or(RouteError::MissingAuthority)?;
                    let addr = resolve(&layer.dns, &authority, default_port(&req)).await?;
                    if layer.own_addrs.contains(addr) {
                        return Err(RouteError::Loop(addr).into());
                    }
                    debug!(%authority, %addr, "resolved");
                    if req.method() == http::Method::CONNECT {
                        req.extensions_mut().insert(super::forward::TunnelHere);
                    }
                    addr
                }
            };
            req.extensions_mut().insert(Endpoint(endpoint));
            inner.call(req).await.map_err(Into::into)
        })
    }
}

/// The authority a request is for: the URI's (absolute-form, CONNECT,
/// HTTP/2 `:authority`), else the Host header.
pub fn request_authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    host.parse().ok()
}

fn default_port<B>(req: &Request<B>) -> u16 {
    match req.uri().scheme_str() {
        Some("https") => 443,
        _ => 80,
    }
}

async fn resolve(
    dns: &DnsResolver,
    authority: &Authority,
    default_port: u16,
) -> Result<SocketAddr, RouteError> {
    let port = authority.port_u16().unwrap_or(default_port);
    let host = authority.host();
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host.is_empty() {
        return Err(RouteError::InvalidAuthority(authority.to_string()));
    }
    let resolve_err = |reason: String| RouteError::Resolve { host: host.to_string(), reason };
    let ips = dns.lookup_ip(host).await.map_err(|e| resolve_err(e.to_string()))?;
    let ip = ips.iter().next().ok_or_else(|| resolve_err("no addresses".into()))?;
    Ok(SocketAddr::new(ip, port))
}
