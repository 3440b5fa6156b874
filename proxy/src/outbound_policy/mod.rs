//! Outbound policy: what the control plane's OutboundPolicies API says
//! about a logical destination (a Service port): its HTTP and gRPC routes,
//! each rule's filters, timeout and weighted backends.
//!
//! A route's matches and request filters are kept in the inbound policy's
//! shape (`policy::ServerPolicy`), so the one route matcher
//! (`policy/routes.rs`) and the one filter implementation
//! (`policy/filters.rs`) serve both directions; what only outbound has
//! (backends, timeouts, response header changes, resource names for
//! metrics) sits beside it, indexed the same way.

pub mod api;
pub mod decode;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue};

use crate::{balance::Accrual, discovery::EndpointMeta, policy::ServerPolicy};

pub use api::{OutboundPolicies, PolicyRx};

/// A Kubernetes resource as the control plane names it: a route's parent
/// (the Service), a route, or a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// A parent's port; 0 for routes and backends.
    pub port: u16,
}

#[derive(Debug)]
pub struct OutboundPolicy {
    pub parent: ResourceRef,
    /// Routes for HTTP/1 requests and for HTTP/2 ones (the same table
    /// unless the control plane sends different ones, as it may for
    /// detected protocols). `None`: no routing, requests go on as before.
    pub http1: Option<Arc<RouteTable>>,
    pub http2: Option<Arc<RouteTable>>,
}

impl OutboundPolicy {
    pub fn routes_for(&self, version: http::Version) -> Option<&Arc<RouteTable>> {
        match version {
            http::Version::HTTP_2 => self.http2.as_ref(),
            _ => self.http1.as_ref(),
        }
    }
}

#[derive(Debug)]
pub struct RouteTable {
    pub parent: ResourceRef,
    /// Matches and request filters of every route and rule.
    pub matcher: Arc<ServerPolicy>,
    /// `routes[i]` is `matcher.routes[i]`; `rules[j]` its rule `j`.
    pub routes: Vec<OutboundRoute>,
    /// The backends' endpoints' failure accrual, when the policy sets one.
    pub accrual: Option<Accrual>,
}

#[derive(Debug)]
pub struct OutboundRoute {
    pub meta: ResourceRef,
    pub rules: Vec<RuleParams>,
}

#[derive(Debug, Default)]
pub struct RuleParams {
    /// Covers the request until its response headers, retries included.
    pub timeout: Option<Duration>,
    /// Empty: the rule has nowhere to send requests (503).
    pub backends: Vec<WeightedBackend>,
    pub response_headers: Option<HeaderModifier>,
    pub retry: Option<Arc<RetryPolicy>>,
    /// Backends sent a copy of some requests (RequestMirror, weft's
    /// extension; http/mirror.rs); their answers are ignored. The rule's
    /// URLRewrite is one of its request filters (`policy::filters`).
    pub mirrors: Vec<MirrorParams>,
    /// A second copy after a delay (`retry.weft.io/hedge-after`, weft's
    /// extension).
    pub hedge: Option<Arc<HedgePolicy>>,
}

/// One RequestMirror: `numerator / denominator` of the rule's requests are
/// copied to `backend`.
#[derive(Clone, Debug)]
pub struct MirrorParams {
    pub backend: ResourceRef,
    pub target: BackendTarget,
    pub numerator: u32,
    pub denominator: u32,
}

impl MirrorParams {
    pub fn fires(&self) -> bool {
        self.denominator > 0 && rand::random_range(0..self.denominator) < self.numerator
    }
}

/// When to send a hedged copy of a request (http/hedge.rs), and what the
/// rule has learned for it: its recent latencies and its budget.
pub struct HedgePolicy {
    pub after: HedgeAfter,
    /// The rule's recent latencies, for a percentile delay.
    pub latencies: crate::http::hedge::Latencies,
    /// Copies allowed: 10% of the rule's requests over 10 s, plus 10 a
    /// second, so hedging can add at most that much load.
    pub budget: tower::retry::budget::TpsBudget,
    /// The route's hedge counters, registered on the rule's first request.
    counters: std::sync::OnceLock<crate::http::extensions::HedgeCounters>,
}

impl HedgePolicy {
    pub fn new(after: HedgeAfter) -> Self {
        HedgePolicy {
            after,
            latencies: Default::default(),
            budget: tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 10, 0.1),
            counters: Default::default(),
        }
    }

    /// How long the first try may go unanswered before a copy is sent;
    /// `None` while a percentile has too few latencies to go by.
    pub fn delay(&self) -> Option<Duration> {
        match self.after {
            HedgeAfter::Fixed(after) => Some(after),
            HedgeAfter::Percentile(p) => self.latencies.percentile(p),
        }
    }

    /// The counters of the route this rule is in (`route`: its metric
    /// labels), registered once.
    pub fn counters(&self, route: &[metrics::Label]) -> crate::http::extensions::HedgeCounters {
        self.counters.get_or_init(|| crate::http::hedge::register_counters(route)).clone()
    }
}

impl std::fmt::Debug for HedgePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgePolicy").field("after", &self.after).finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeAfter {
    /// A fixed delay.
    Fixed(Duration),
    /// A percentile (e.g. 95.0) of the rule's observed latency.
    Percentile(f64),
}

/// A rule's retries (`retry.linkerd.io/*`): what failed responses are
/// retried, how often, and how long each try may take.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// Larger request bodies are not held for replay: sent once.
    pub max_request_bytes: usize,
    pub on: RetryOn,
    /// Each try's own timeout (`retry.linkerd.io/timeout`); a try that
    /// exceeds it is retried.
    pub per_try_timeout: Option<Duration>,
    /// Waits between tries: exponential from `min` to `max`, jittered.
    pub backoff: Option<(Duration, Duration)>,
}

#[derive(Debug)]
pub enum RetryOn {
    /// HTTP status ranges, inclusive (`5xx` is 500..=599).
    Statuses(Vec<(u16, u16)>),
    /// gRPC status codes (cancelled 1, deadline-exceeded 4, ...), as the
    /// response headers (trailers-only responses) carry them.
    Grpc(Vec<u32>),
}

impl RetryOn {
    pub fn is_retryable(&self, rsp: &http::HeaderMap, status: http::StatusCode) -> bool {
        match self {
            RetryOn::Statuses(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status.as_u16())),
            RetryOn::Grpc(codes) => rsp
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
                .is_some_and(|code| codes.contains(&code)),
        }
    }
}

#[derive(Debug)]
pub struct WeightedBackend {
    pub weight: u32,
    pub meta: ResourceRef,
    pub target: BackendTarget,
    /// Applied to requests this backend was picked for.
    pub filters: BackendFilters,
}

#[derive(Debug, Default)]
pub struct BackendFilters {
    pub request_headers: Option<HeaderModifier>,
    pub failure: Option<InjectedFailure>,
}

/// Fails `numerator / denominator` of requests with `status` (weft-destination
/// fails a backend it cannot resolve this way, with the reason as message).
#[derive(Debug)]
pub struct InjectedFailure {
    pub status: http::StatusCode,
    pub message: String,
    pub numerator: u32,
    pub denominator: u32,
}

impl InjectedFailure {
    pub fn fires(&self) -> bool {
        self.denominator > 0 && rand::random_range(0..self.denominator) < self.numerator
    }
}

#[derive(Clone, Debug)]
pub enum BackendTarget {
    /// Balanced over the endpoints discovery gives for this path
    /// (`name.ns.svc.cluster.local:port`).
    Balance(Arc<str>),
    /// One address, over mTLS when it has an identity.
    Forward(SocketAddr, Arc<EndpointMeta>),
    /// A backend the control plane could not resolve (no kind): requests
    /// picking it fail.
    Invalid,
}

#[derive(Debug, Default)]
pub struct HeaderModifier {
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

impl RuleParams {
    /// Weighted random choice among the backends; `None` when there are
    /// none or every weight is zero.
    pub fn pick_backend(&self) -> Option<&WeightedBackend> {
        crate::http::split::pick(&self.backends, |b| b.weight)
    }
}
