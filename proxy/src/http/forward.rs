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
    boxed,
    client::Client,
    errors::RouteError,
    full,
    headers::{is_connect, strip_hop_by_hop, wants_upgrade},
    BoxBody, BoxError, Endpoint, Version,
};
use crate::{connect::Connector, io::Activity};

/// Marks a CONNECT the proxy must serve itself (explicit mode: the client
/// asks this proxy for a tunnel) rather than pass to the endpoint.
#[derive(Copy, Clone, Debug)]
pub struct TunnelHere;

#[derive(Clone)]
pub struct Forward {
    client: Client,
    version: Version,
    connector: Connector,
}

impl Forward {
    pub fn new(client: Client, version: Version, connector: Connector) -> Self {
        Self { client, version, connector }
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
            let upgrade = this.version == Version::Http1 && (wants_upgrade(&req) || is_connect(&req));
            let downstream: Option<OnUpgrade> = upgrade.then(|| hyper::upgrade::on(&mut req));
            let connect = is_connect(&req);
            if connect && req.extensions().get::<TunnelHere>().is_some() {
                let downstream = downstream.ok_or(RouteError::NoEndpoint)?;
                return this.tunnel(endpoint, downstream).await;
            }
            strip_hop_by_hop(req.headers_mut(), upgrade);
            if this.version == Version::Http1 {
                to_origin_form(&mut req);
            }
            let mut rsp = this.client.send(endpoint, this.version, req).await?;
            // A CONNECT's 2xx opens a tunnel; an Upgrade request needs a 101.
            let switched = downstream.is_some()
                && if connect {
                    rsp.status().is_success()
                } else {
                    rsp.status() == StatusCode::SWITCHING_PROTOCOLS
                };
            strip_hop_by_hop(rsp.headers_mut(), switched && !connect);
            if let (true, Some(downstream)) = (switched, downstream) {
                let upstream = hyper::upgrade::on(&mut rsp);
                splice(downstream, upstream);
            }
            Ok(rsp.map(boxed))
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
        let upstream = self.connector.connect(endpoint, activity).await?;
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

fn splice(downstream: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(
        async move {
            let (client, server) = match tokio::try_join!(downstream, upstream) {
                Ok(pair) => pair,
                Err(error) => return debug!(%error, "upgrade failed"),
            };
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            match tokio::io::copy_bidirectional(&mut client, &mut server).await {
                Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
                Err(error) => debug!(%error, "upgraded connection failed"),
            }
        }
        .in_current_span(),
    );
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
