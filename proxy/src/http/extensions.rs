//! What the layers of the HTTP stack hand one another: request and
//! response extensions and the errors that travel between them. Each layer
//! imports this module, never a sibling layer, so the stack can be
//! reordered or extended without import cycles.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use metrics::Counter;
use tower::retry::budget::TpsBudget;

use super::http1;
use crate::{
    balance::Accrual,
    connect::ConnectError,
    discovery::EndpointMeta,
    outbound_policy::{HedgePolicy, OutboundPolicy, RetryPolicy},
    profile::{Profile, Route},
};

/// The service-profile route a request matched.
#[derive(Clone)]
pub struct RouteParams(pub Arc<Route>);

/// A route's whole-request timeout passed (504, gRPC DEADLINE_EXCEEDED).
#[derive(Debug, thiserror::Error)]
#[error("route timeout of {0:?} elapsed")]
pub struct RouteTimeout(pub Duration);

/// The backend service (`name:port`) a request is balanced across.
#[derive(Clone, Debug)]
pub struct Backend(pub Arc<str>);

/// What discovery said about the endpoint a request goes to.
#[derive(Clone, Debug)]
pub struct EndpointInfo(pub Arc<EndpointMeta>);

/// The profile in force for a request, and its service's retry budget.
#[derive(Clone)]
pub struct LogicalProfile {
    pub profile: Arc<Profile>,
    pub port: u16,
    pub budget: Arc<TpsBudget>,
}

/// The service and route a response came from, as discovery named them;
/// bounded because the control plane, not the client, chooses them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DstLabels {
    pub service: Arc<str>,
    pub namespace: Arc<str>,
    pub route: Option<Arc<str>>,
}

impl DstLabels {
    pub fn new(profile: &Profile, route: Option<&Route>) -> Self {
        // `svc.ns.svc.cluster.local`: the first two labels.
        let mut parts = profile.fully_qualified_name.split('.');
        let service = parts.next().unwrap_or_default();
        let namespace = parts.next().unwrap_or_default();
        Self {
            service: service.into(),
            namespace: namespace.into(),
            route: route.map(|r| r.name.as_str().into()),
        }
    }
}

/// Put on a response by the layer that sent its request over mTLS, so the
/// outbound `tls` label says how the request actually travelled.
#[derive(Copy, Clone, Debug)]
pub struct SentOverMtls;

/// Failures decided by the proxy itself rather than by an upstream.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("request has no authority or Host header to route by")]
    MissingAuthority,
    #[error("invalid authority {0:?}")]
    InvalidAuthority(String),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("request to {0} would loop back into this proxy")]
    Loop(std::net::SocketAddr),
    #[error("no endpoint chosen for request")]
    NoEndpoint,
    #[error("service {0} has no ready endpoints")]
    NoEndpoints(String),
    /// The destination's outbound policy has routes and none matches.
    #[error("no route found for request")]
    NoRoute,
    #[error("route {0} has no backends")]
    NoBackend(String),
    #[error("backend {0} is invalid")]
    InvalidBackend(String),
    /// A backend's failure filter fired; the message is the control plane's.
    #[error("{1}")]
    Injected(http::StatusCode, String),
}

/// The destination's outbound policy (OutboundPolicies), when the control
/// plane has one for it.
#[derive(Clone)]
pub struct LogicalPolicy(pub Arc<OutboundPolicy>);

/// The failure accrual an outbound policy sets for its backends' endpoints.
#[derive(Copy, Clone, Debug)]
pub struct FailureAccrual(pub Accrual);

/// The matched policy rule's retries, and its route's retry counters
/// (Linkerd's `outbound_http_route_retry_*_total`).
#[derive(Clone)]
pub struct RouteRetry {
    pub policy: Arc<RetryPolicy>,
    pub counters: RetryCounters,
}

#[derive(Clone)]
pub struct RetryCounters {
    /// Retries sent.
    pub requests: Counter,
    /// Requests that succeeded after at least one retry.
    pub successes: Counter,
    /// Requests that still failed when the rule's retry limit was reached.
    pub limit_exceeded: Counter,
}

/// How the pooled upstream client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream {0}: {1}")]
    Http1(SocketAddr, #[source] http1::Error),
    #[error("HTTP/2 handshake with {0}: {1}")]
    Http2Handshake(SocketAddr, #[source] h2::Error),
    #[error("upstream {0}: {1}")]
    Http2(SocketAddr, #[source] h2::Error),
}

/// The matched policy rule hedges (`retry.weft.io/hedge-after`): its
/// policy (delay, latency estimate, budget) and its route's counters.
#[derive(Clone)]
pub struct RouteHedge {
    pub policy: Arc<HedgePolicy>,
    pub counters: HedgeCounters,
}

/// weft's `outbound_http_route_hedge_*_total`, with the route's labels.
#[derive(Clone, Debug)]
pub struct HedgeCounters {
    /// Copies sent.
    pub requests: Counter,
    /// Requests answered by their copy.
    pub wins: Counter,
}

/// Where a hedged request's first try went: the balancer sets it for the
/// first try, and the copy, carrying the same cell, goes to another
/// endpoint when the backend has one.
#[derive(Clone, Debug, Default)]
pub struct HedgeEndpoint(pub Arc<std::sync::OnceLock<SocketAddr>>);

/// The matched policy rule's RequestMirrors (http/mirror.rs), and where to
/// count what became of each copy.
#[derive(Clone)]
pub struct RouteMirrors {
    pub table: Arc<crate::outbound_policy::RouteTable>,
    pub route: crate::policy::routes::RouteMatch,
    pub counters: Arc<dyn MirrorCounters>,
}

impl RouteMirrors {
    pub fn mirrors(&self) -> &[crate::outbound_policy::MirrorParams] {
        let rule = self.table.routes.get(self.route.route).and_then(|r| r.rules.get(self.route.rule));
        rule.map_or(&[], |r| &r.mirrors)
    }
}

/// What became of a mirrored copy.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MirrorResult {
    /// The mirror answered (whatever its status).
    Sent,
    /// The mirror did not answer: refused, failed or timed out.
    Failed,
    /// Not sent, or cut short: the copy fell behind the request's body,
    /// too many copies were in flight, or the mirror has no usable backend.
    Dropped,
}

impl MirrorResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorResult::Sent => "sent",
            MirrorResult::Failed => "failed",
            MirrorResult::Dropped => "dropped",
        }
    }
}

/// `outbound_http_route_mirror_requests_total` of the route the mirrors
/// belong to.
pub trait MirrorCounters: Send + Sync {
    fn count(&self, backend: &crate::outbound_policy::ResourceRef, result: MirrorResult);
}
