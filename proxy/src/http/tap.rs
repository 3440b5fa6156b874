//! Reports each request that an open tap matches: request init when it is
//! sent to its endpoint, response init at the headers, response end with
//! the byte count and gRPC status. Sits just above `forward`, where the
//! endpoint (and its identity) is known.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Poll},
};

use http::{Request, Response};
use linkerd2_proxy_api::tap::{
    eos, tap_event,
    tap_event::http::{Event as HttpEvent, RequestInit, ResponseEnd, ResponseInit, StreamId},
    Eos, TapEvent,
};
use tokio::time::Instant;

use super::{
    body::{BodyEnd, ObservedBody, OnBodyEnd},
    extensions::{EndpointInfo, RouteParams},
    BoxBody, BoxError, Endpoint, LayerFuture,
};
use crate::{
    metrics::Direction,
    tap::{ActiveTap, Inspect, TapRoute, Taps},
};

#[derive(Clone)]
pub struct TapLayer {
    taps: Taps,
    direction: Direction,
    source: SocketAddr,
    /// The client's side as tap reports it (`tls`, `client_id`).
    source_labels: Arc<[(String, String)]>,
}

impl TapLayer {
    pub fn new(taps: Taps, direction: Direction, source: SocketAddr, client_id: Option<&str>) -> Self {
        let mut labels =
            vec![("tls".to_string(), if client_id.is_some() { "true" } else { "no_identity" }.to_string())];
        if let Some(id) = client_id {
            labels.push(("client_id".to_string(), id.to_string()));
        }
        Self { taps, direction, source, source_labels: labels.into() }
    }
}

impl<S> tower::Layer<S> for TapLayer {
    type Service = TapService<S>;
    fn layer(&self, inner: S) -> TapService<S> {
        TapService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct TapService<S> {
    inner: S,
    layer: TapLayer,
}

/// Stream ids: a per-process base and a counter, unique per tapped request.
fn next_id() -> StreamId {
    static BASE: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    StreamId { base: *BASE.get_or_init(rand::random), stream: NEXT.fetch_add(1, Ordering::Relaxed) }
}

/// The fields every event of one request shares.
#[derive(Clone)]
struct Common {
    taps: Arc<[Arc<ActiveTap>]>,
    id: StreamId,
    base: TapEvent,
    start: Instant,
}

impl Common {
    fn emit(&self, event: HttpEvent) {
        let mut ev = self.base.clone();
        ev.event = Some(tap_event::Event::Http(tap_event::Http { event: Some(event) }));
        for tap in self.taps.iter() {
            tap.send(ev.clone());
        }
    }
}

impl<S> tower::Service<Request<BoxBody>> for TapService<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Response<BoxBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        if !self.layer.taps.any() {
            return LayerFuture::inner(self.inner.call(req));
        }
        let Some(common) = self.inspect(&req) else {
            return LayerFuture::inner(self.inner.call(req));
        };
        common.emit(HttpEvent::RequestInit(RequestInit {
            id: Some(common.id),
            method: Some(req.method().clone().into()),
            scheme: req.uri().scheme().map(Into::into),
            authority: super::headers::request_authority(&req).map(|a| a.to_string()).unwrap_or_default(),
            path: req.uri().path().to_string(),
            headers: None,
        }));
        let fut = self.inner.call(req);
        LayerFuture::own(async move {
            let rsp = match fut.await {
                Ok(rsp) => rsp,
                Err(error) => {
                    common.emit(end_event(&common, None, 0, Some(reset())));
                    return Err(error);
                }
            };
            let since_request_init = common.start.elapsed();
            common.emit(HttpEvent::ResponseInit(ResponseInit {
                id: Some(common.id),
                since_request_init: duration(since_request_init),
                http_status: u32::from(rsp.status().as_u16()),
                headers: None,
            }));
            let (parts, body) = rsp.into_parts();
            let body =
                ObservedBody::new(body, &parts.headers, TapEnd { common, response_init: Instant::now() });
            Ok(Response::from_parts(parts, BoxBody::new(body)))
        })
    }
}

impl<S> TapService<S> {
    fn inspect<B>(&self, req: &Request<B>) -> Option<Common> {
        let destination = req.extensions().get::<Endpoint>()?.0;
        let meta = req.extensions().get::<EndpointInfo>().map(|i| i.0.clone());
        let mut dst_labels: Vec<(String, String)> =
            meta.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
        let identity = meta.as_ref().and_then(|m| m.identity.clone());
        let authority = super::headers::request_authority(req);
        let route = route(req);
        let taps = self.layer.taps.matching(&Inspect {
            source: self.layer.source,
            destination,
            method: req.method(),
            scheme: req.uri().scheme_str(),
            authority: authority.as_ref().map(|a| a.as_str()),
            path: req.uri().path(),
            destination_labels: &dst_labels,
            route_labels: route.as_ref().map_or(&[], |r| &r.0[..]),
        });
        if taps.is_empty() {
            return None;
        }
        dst_labels.push(("tls".into(), if identity.is_some() { "true" } else { "no_identity" }.into()));
        if let Some(id) = identity {
            dst_labels.push(("server_id".into(), id));
        }
        let direction = match self.layer.direction {
            Direction::Inbound => tap_event::ProxyDirection::Inbound,
            Direction::Outbound => tap_event::ProxyDirection::Outbound,
        };
        let base = TapEvent {
            source: Some(self.layer.source.into()),
            source_meta: Some(tap_event::EndpointMeta {
                labels: self.layer.source_labels.iter().cloned().collect(),
            }),
            destination: Some(destination.into()),
            destination_meta: Some(tap_event::EndpointMeta { labels: dst_labels.into_iter().collect() }),
            route_meta: route.map(|r| tap_event::RouteMeta { labels: r.0.iter().cloned().collect() }),
            proxy_direction: direction as i32,
            event: None,
        };
        Some(Common { taps: taps.into(), id: next_id(), base, start: Instant::now() })
    }
}

/// The route the request was routed by: an OutboundPolicies route leaves
/// its `TapRoute`; a ServiceProfile route is known by its `RouteParams`.
fn route<B>(req: &Request<B>) -> Option<TapRoute> {
    if let Some(route) = req.extensions().get::<TapRoute>() {
        return Some(route.clone());
    }
    req.extensions().get::<RouteParams>().map(|RouteParams(r)| TapRoute::profile(&r.name))
}

fn duration(d: std::time::Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn reset() -> Eos {
    // INTERNAL_ERROR, as an h2 reset would report it.
    Eos { end: Some(eos::End::ResetErrorCode(2)) }
}

fn end_event(common: &Common, response_init: Option<Instant>, bytes: u64, eos: Option<Eos>) -> HttpEvent {
    HttpEvent::ResponseEnd(ResponseEnd {
        id: Some(common.id),
        since_request_init: duration(common.start.elapsed()),
        since_response_init: response_init.and_then(|t| duration(t.elapsed())),
        response_bytes: bytes,
        eos,
        trailers: None,
    })
}

/// Emits a response's end event once its body has ended.
struct TapEnd {
    common: Common,
    response_init: Instant,
}

impl OnBodyEnd for TapEnd {
    fn on_end(self, end: BodyEnd) {
        let eos = if end.complete { end.grpc_status.map(Eos::from_grpc_status) } else { Some(reset()) };
        self.common.emit(end_event(&self.common, Some(self.response_init), end.bytes, eos));
    }
}
