//! The innermost HTTP service: sends the request to the endpoint chosen by
//! the layers above and splices upgraded connections (WebSocket, CONNECT).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{debug, Instrument};

use super::{
    client::Client,
    extensions::{EndpointInfo, RouteError, SentOverMtls},
    full,
    headers::{is_connect, strip_hop_by_hop, wants_upgrade},
    http1, BoxBody, BoxError, Endpoint, Version,
};
use crate::{
    connect::{Connector, Upstream},
    http::client::Target,
    io::{Activity, PrefixedIo},
    tls::{Carried, MeshClients},
};

/// Marks a CONNECT the proxy must serve itself (explicit mode: the client
/// asks this proxy for a tunnel) rather than pass to the endpoint.
#[derive(Copy, Clone, Debug)]
pub struct TunnelHere;

/// Marks an HTTP/1 request carried over HTTP/2 between two proxies, so the
/// receiving proxy gives the app the HTTP/1 it was sent (Linkerd's header).
pub const L5D_ORIG_PROTO: http::HeaderName = http::HeaderName::from_static("l5d-orig-proto");

#[derive(Clone)]
pub struct Forward {
    client: Client,
    connector: Connector,
    /// Outbound only: how to reach meshed peers over mTLS.
    mesh: Option<MeshClients>,
}

impl Forward {
    pub fn new(client: Client, connector: Connector, mesh: Option<MeshClients>) -> Self {
        Self { client, connector, mesh }
    }
}

impl tower::Service<Request<BoxBody>> for Forward {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Endpoint(endpoint) =
                req.extensions().get::<Endpoint>().copied().ok_or(RouteError::NoEndpoint)?;
            let downstream_version = req.version();
            let h1 = downstream_version <= http::Version::HTTP_11;
            let upgrade = h1 && (wants_upgrade(&req) || is_connect(&req));
            let downstream: Option<OnUpgrade> = upgrade.then(|| hyper::upgrade::on(&mut req));
            let connect = is_connect(&req);
            if connect && req.extensions().get::<TunnelHere>().is_some() {
                let downstream = downstream.ok_or(RouteError::NoEndpoint)?;
                return this.tunnel(endpoint, downstream).await;
            }
            strip_hop_by_hop(req.headers_mut(), upgrade);
            let peer = req.extensions().get::<EndpointInfo>().map(|i| i.0.clone());
            let carried = match &peer {
                Some(meta) if meta.http2 && !upgrade => Carried::Http2,
                _ => Carried::Detect,
            };
            let tls = match (&this.mesh, peer.as_ref().and_then(|m| m.identity.as_deref())) {
                (Some(mesh), Some(identity)) => mesh.for_peer(identity, carried),
                _ => None,
            };
            let mut version = if h1 { Version::Http1 } else { Version::Http2 };
            if tls.is_some() && carried == Carried::Http2 && h1 {
                // One multiplexed connection between the two proxies
                // carries every HTTP/1 request; the peer restores HTTP/1.
                req.headers_mut().insert(L5D_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
                to_absolute_form(&mut req, endpoint);
                *req.version_mut() = http::Version::HTTP_2;
                version = Version::Http2;
            }
            if version == Version::Http1 {
                to_origin_form(&mut req);
            }
            let meshed = tls.is_some();
            let target = Target { addr: endpoint, tls };
            let mut rsp = this.client.send(&target, version, req).await?;
            *rsp.version_mut() = downstream_version;
            if meshed {
                rsp.extensions_mut().insert(SentOverMtls);
                // Between proxies only; never for the app.
                rsp.headers_mut().remove(L5D_ORIG_PROTO);
            }
            // A CONNECT's 2xx opens a tunnel; an Upgrade request needs a 101.
            let switched = downstream.is_some()
                && if connect {
                    rsp.status().is_success()
                } else {
                    rsp.status() == StatusCode::SWITCHING_PROTOCOLS
                };
            strip_hop_by_hop(rsp.headers_mut(), switched && !connect);
            let upstream = rsp.extensions_mut().remove::<http1::Upgraded>().and_then(|u| u.take());
            if let (true, Some(downstream), Some((upstream, leftover))) = (switched, downstream, upstream) {
                splice(downstream, PrefixedIo::new(leftover, upstream));
            }
            Ok(rsp)
        })
    }
}

impl Forward {
    /// Explicit-mode CONNECT: dial the endpoint and answer 200, then carry
    /// bytes both ways once the client's connection is handed over.
    async fn tunnel(
        &self,
        endpoint: std::net::SocketAddr,
        downstream: OnUpgrade,
    ) -> Result<Response<BoxBody>, BoxError> {
        let activity = Activity::default();
        let upstream = self.connector.connect(endpoint, None, activity).await?;
        tokio::spawn(
            async move {
                match downstream.await {
                    Ok(client) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = upstream;
                        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                            debug!(%error, "tunnel closed");
                        }
                    }
                    Err(error) => debug!(%error, "client connection not upgraded"),
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(full("")))
    }
}

/// Carries bytes both ways between the client and the upstream once hyper
/// has handed over the client's side of the upgraded connection.
fn splice(downstream: OnUpgrade, mut server: PrefixedIo<Upstream>) {
    tokio::spawn(
        async move {
            let client = match downstream.await {
                Ok(client) => client,
                Err(error) => return debug!(%error, "upgrade failed"),
            };
            let mut client = TokioIo::new(client);
            match tokio::io::copy_bidirectional(&mut client, &mut server).await {
                Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
                Err(error) => debug!(%error, "upgraded connection failed"),
            }
        }
        .in_current_span(),
    );
}

/// HTTP/2 needs the authority in the URI (`:authority`); an HTTP/1 request
/// has it in Host, or, lacking that, only the address it was sent to.
fn to_absolute_form<B>(req: &mut Request<B>, endpoint: std::net::SocketAddr) {
    if req.uri().authority().is_some() {
        return;
    }
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| endpoint.to_string());
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Ok(uri) = Uri::builder().scheme("http").authority(authority).path_and_query(path).build() {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(header::HOST);
}

/// HTTP/1 upstreams get origin-form targets (`/path?q`) with the authority in
/// Host, as RFC 9112 §3.2.1 requires of a request that is no longer going to
/// a proxy. CONNECT keeps its authority-form target.
fn to_origin_form<B>(req: &mut Request<B>) {
    if is_connect(req) || req.uri().authority().is_none() {
        return;
    }
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Ok(uri) = path.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
}
