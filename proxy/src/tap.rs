//! Tap: live request events for `weft tap`, served as Linkerd's
//! `io.linkerd.proxy.tap.Tap/Observe` on a loopback-only port.
//!
//! While nobody taps, the HTTP layer's whole cost is one relaxed atomic
//! load. A tap's events go through a bounded channel; when its client reads
//! too slowly events are dropped and counted, never queued without bound
//! and never waited for on the request path.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::{
    http_types,
    tap::{
        observe_request::{
            r#match::{self as m, http::string_match, tcp},
            Match,
        },
        tap_server::{Tap, TapServer},
        ObserveRequest, TapEvent,
    },
};
use tokio::{net::TcpListener, sync::mpsc};
use tracing::{debug, info, warn};

/// Events buffered per tap client before new ones are dropped.
const TAP_BUFFER: usize = 1024;
/// Taps open at once; more are refused rather than slowing every request.
const MAX_TAPS: usize = 16;

/// The taps currently open, shared by the tap server and the HTTP layers.
#[derive(Clone, Default)]
pub struct Taps {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    active: AtomicUsize,
    taps: Mutex<Vec<Arc<ActiveTap>>>,
}

pub struct ActiveTap {
    matcher: Option<Matcher>,
    /// Requests this tap may still match.
    remaining: AtomicU32,
    events: mpsc::Sender<TapEvent>,
    dropped: metrics::Counter,
}

/// The route a request was routed by, as tap reports it (`route_meta`,
/// which `weft tap` prints as `rt_route=...`). Left on the request by the
/// routing layer, built once per route rather than per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapRoute(pub Arc<[(String, String)]>);

impl TapRoute {
    /// An OutboundPolicies route (HTTPRoute/GRPCRoute): its name, kind and
    /// namespace, as the control plane named them.
    pub fn policy(name: &str, kind: &str, namespace: &str) -> Self {
        let labels = [("route", name), ("route_kind", kind), ("route_namespace", namespace)];
        Self(
            labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A ServiceProfile route: its name, under the `route` label Linkerd's
    /// profile routes are reported with.
    pub fn profile(name: &str) -> Self {
        Self(Arc::from([("route".to_string(), name.to_string())]))
    }
}

/// What a request looks like to a tap filter.
pub struct Inspect<'a> {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub method: &'a http::Method,
    pub scheme: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub destination_labels: &'a [(String, String)],
    pub route_labels: &'a [(String, String)],
}

impl Taps {
    /// Whether any tap is open: the only thing asked on every request.
    #[inline]
    pub fn any(&self) -> bool {
        self.inner.active.load(Ordering::Relaxed) > 0
    }

    /// The open taps that want this request, each charged one of its limit.
    pub fn matching(&self, req: &Inspect<'_>) -> Vec<Arc<ActiveTap>> {
        let mut taps = self.inner.taps.lock().unwrap_or_else(|p| p.into_inner());
        let mut matched = Vec::new();
        taps.retain(|tap| {
            if tap.events.is_closed() {
                return false;
            }
            if tap.matcher.as_ref().is_none_or(|m| m.matches(req)) {
                let left = tap.remaining.fetch_sub(1, Ordering::Relaxed);
                if left >= 1 {
                    matched.push(tap.clone());
                }
                // The limit reached: the stream ends once the requests it
                // already matched have finished.
                return left > 1;
            }
            true
        });
        self.inner.active.store(taps.len(), Ordering::Relaxed);
        matched
    }

    fn register(&self, tap: ActiveTap) -> Result<(), tonic::Status> {
        let mut taps = self.inner.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| !t.events.is_closed());
        if taps.len() >= MAX_TAPS {
            return Err(tonic::Status::resource_exhausted(format!(
                "at most {MAX_TAPS} taps may be open at once"
            )));
        }
        taps.push(Arc::new(tap));
        self.inner.active.store(taps.len(), Ordering::Relaxed);
        Ok(())
    }
}

impl ActiveTap {
    /// Sends without waiting: a full buffer means the client is slow, and
    /// traffic must not wait for it.
    pub fn send(&self, event: TapEvent) {
        if self.events.try_send(event).is_err() {
            self.dropped.increment(1);
        }
    }
}

/// A compiled `ObserveRequest.match`.
enum Matcher {
    All(Vec<Matcher>),
    Any(Vec<Matcher>),
    Not(Box<Matcher>),
    Source(Net),
    Destination(Net),
    Method(http::Method),
    Scheme(String),
    Authority(Str),
    Path(Str),
    DestinationLabel(String, String),
    RouteLabel(String, String),
}

enum Net {
    Mask(IpAddr, u32),
    Ports(u32, u32),
}

enum Str {
    Exact(String),
    Prefix(String),
}

impl Matcher {
    fn from_api(pb: Match) -> Result<Self, String> {
        let seq = |s: m::Seq| -> Result<Vec<Matcher>, String> {
            s.matches.into_iter().map(Matcher::from_api).collect()
        };
        Ok(match pb.r#match.ok_or("empty match")? {
            m::Match::All(s) => Matcher::All(seq(s)?),
            m::Match::Any(s) => Matcher::Any(seq(s)?),
            m::Match::Not(inner) => Matcher::Not(Box::new(Matcher::from_api(*inner)?)),
            m::Match::Source(t) => Matcher::Source(Net::from_api(t)?),
            m::Match::Destination(t) => Matcher::Destination(Net::from_api(t)?),
            m::Match::Http(h) => match h.r#match.ok_or("empty http match")? {
                m::http::Match::Method(method) => {
                    Matcher::Method(http::Method::try_from(method).map_err(|_| "unknown method")?)
                }
                m::http::Match::Scheme(scheme) => Matcher::Scheme(
                    http::uri::Scheme::try_from(scheme).map_err(|_| "unknown scheme")?.to_string(),
                ),
                m::http::Match::Authority(s) => Matcher::Authority(Str::from_api(s)?),
                m::http::Match::Path(s) => Matcher::Path(Str::from_api(s)?),
            },
            m::Match::DestinationLabel(l) => Matcher::DestinationLabel(l.key, l.value),
            m::Match::RouteLabel(l) => Matcher::RouteLabel(l.key, l.value),
        })
    }

    fn matches(&self, r: &Inspect<'_>) -> bool {
        match self {
            Matcher::All(ms) => ms.iter().all(|m| m.matches(r)),
            Matcher::Any(ms) => ms.iter().any(|m| m.matches(r)),
            Matcher::Not(m) => !m.matches(r),
            Matcher::Source(n) => n.matches(r.source),
            Matcher::Destination(n) => n.matches(r.destination),
            Matcher::Method(m) => r.method == m,
            Matcher::Scheme(s) => r.scheme.is_some_and(|x| x.eq_ignore_ascii_case(s)),
            Matcher::Authority(s) => r.authority.is_some_and(|a| s.matches(a)),
            Matcher::Path(s) => s.matches(r.path),
            Matcher::DestinationLabel(k, v) => r.destination_labels.iter().any(|(lk, lv)| lk == k && lv == v),
            Matcher::RouteLabel(k, v) => r.route_labels.iter().any(|(lk, lv)| lk == k && lv == v),
        }
    }
}

impl Net {
    fn from_api(t: m::Tcp) -> Result<Self, String> {
        match t.r#match.ok_or("empty tcp match")? {
            tcp::Match::Netmask(n) => {
                let ip = n.ip.ok_or("netmask without ip")?;
                let ip = IpAddr::try_from(ip).map_err(|_| "invalid ip")?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if n.mask > max {
                    return Err(format!("mask /{} too long", n.mask));
                }
                Ok(Net::Mask(ip, n.mask))
            }
            tcp::Match::Ports(p) => Ok(Net::Ports(p.min, if p.max == 0 { p.min } else { p.max })),
        }
    }

    fn matches(&self, addr: SocketAddr) -> bool {
        match self {
            Net::Ports(min, max) => (*min..=*max).contains(&u32::from(addr.port())),
            Net::Mask(net, bits) => match (net, addr.ip()) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                    u32::from(*n) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    u128::from(*n) & mask == u128::from(a) & mask
                }
                _ => false,
            },
        }
    }
}

impl Str {
    fn from_api(s: m::http::StringMatch) -> Result<Self, String> {
        match s.r#match.ok_or("empty string match")? {
            string_match::Match::Exact(e) => Ok(Str::Exact(e)),
            string_match::Match::Prefix(p) => Ok(Str::Prefix(p)),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Str::Exact(e) => value.eq_ignore_ascii_case(e),
            Str::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// The `Tap` gRPC service.
#[derive(Clone)]
pub struct TapService {
    taps: Taps,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TapEvent, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Tap for TapService {
    type ObserveStream = EventStream;

    async fn observe(
        &self,
        request: tonic::Request<ObserveRequest>,
    ) -> Result<tonic::Response<EventStream>, tonic::Status> {
        let req = request.into_inner();
        if req.limit == 0 {
            return Err(tonic::Status::invalid_argument("limit must be greater than zero"));
        }
        let matcher = match req.r#match {
            Some(m) if m.r#match.is_some() => Some(
                Matcher::from_api(m)
                    .map_err(|e| tonic::Status::invalid_argument(format!("invalid match: {e}")))?,
            ),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(TAP_BUFFER);
        self.taps.register(ActiveTap {
            matcher,
            remaining: AtomicU32::new(req.limit),
            events: tx,
            dropped: metrics::counter!("tap_events_dropped_total"),
        })?;
        info!(limit = req.limit, "tap started");
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Serves the tap API on `listener` (loopback: reaching it takes a shell in
/// the pod or a Kubernetes port-forward, which RBAC guards).
pub async fn serve(listener: TcpListener, taps: Taps) {
    let service = TapServer::new(TapService { taps });
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "tap accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Tap events are small writes that should reach `weft tap` as they
        // happen, not wait on the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
            if let Err(error) = conn.await {
                debug!(%error, %client, "tap connection closed");
            }
        });
    }
}

pub fn method(m: &http::Method) -> http_types::HttpMethod {
    m.clone().into()
}
