//! Linkerd's policy metrics (`inbound_http_authz_allow_total` and kin),
//! labelled per connection (`target_addr`, `tls`, `client_id`) and per
//! decision (`srv_*`, `route_*`, `authz_*`).
//!
//! Allowed requests are by far the most frequent, so each connection keeps
//! the counters it has already looked up, keyed by the policy and
//! authorization they were for: an allowed request on a connection that has
//! seen its route before builds no labels and allocates nothing.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use metrics::{Counter, Label};

use super::{ClientTls, Meta, ServerPolicy};

/// Counters cached per connection before the oldest is dropped (a
/// connection sees few routes; a policy change makes new entries).
const CACHED_COUNTERS: usize = 16;

/// The labels every policy metric of one connection shares.
pub struct ConnMetrics {
    base: Vec<Label>,
    allowed: Mutex<Vec<Cached>>,
}

struct Cached {
    policy: Arc<ServerPolicy>,
    route: usize,
    authz: usize,
    counter: Counter,
}

fn meta_labels(prefix: [&'static str; 3], meta: &Meta) -> [Label; 3] {
    [
        Label::new(prefix[0], meta.group.clone()),
        Label::new(prefix[1], meta.kind.clone()),
        Label::new(prefix[2], meta.name.clone()),
    ]
}

const SRV: [&str; 3] = ["srv_group", "srv_kind", "srv_name"];
const ROUTE: [&str; 3] = ["route_group", "route_kind", "route_name"];
const AUTHZ: [&str; 3] = ["authz_group", "authz_kind", "authz_name"];

impl ConnMetrics {
    pub fn new(target: SocketAddr, tls: &ClientTls) -> Self {
        let mut base = vec![
            Label::new("target_addr", target.to_string()),
            Label::from_static_parts(
                "tls",
                if matches!(tls, ClientTls::Mesh(_)) { "true" } else { "disabled" },
            ),
        ];
        if let Some(id) = tls.id() {
            base.push(Label::new("client_id", id.to_string()));
        }
        Self { base, allowed: Mutex::new(Vec::new()) }
    }

    fn counter(
        &self,
        name: &'static str,
        metas: &[([&'static str; 3], &Meta)],
        extra: Option<Label>,
    ) -> Counter {
        let mut labels = self.base.clone();
        for (prefix, meta) in metas {
            labels.extend(meta_labels(*prefix, meta));
        }
        labels.extend(extra);
        metrics::counter!(name, labels)
    }

    /// Counts a request on `policy.routes[route]` allowed by that route's
    /// authorization number `authz`.
    pub fn http_allowed(&self, policy: &Arc<ServerPolicy>, route: usize, authz: usize) {
        let mut cached = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        let hit =
            cached.iter().find(|c| c.route == route && c.authz == authz && Arc::ptr_eq(&c.policy, policy));
        if let Some(c) = hit {
            return c.counter.increment(1);
        }
        let counter = self.counter(
            "inbound_http_authz_allow_total",
            &[
                (SRV, &policy.meta),
                (ROUTE, &policy.routes[route].meta),
                (AUTHZ, &policy.routes[route].authorizations[authz].meta),
            ],
            None,
        );
        counter.increment(1);
        if cached.len() >= CACHED_COUNTERS {
            cached.remove(0);
        }
        cached.push(Cached { policy: policy.clone(), route, authz, counter });
    }

    pub fn http_denied(&self, srv: &Meta, route: &Meta) {
        self.counter("inbound_http_authz_deny_total", &[(SRV, srv), (ROUTE, route)], None).increment(1);
    }

    pub fn http_route_not_found(&self, srv: &Meta) {
        self.counter("inbound_http_route_not_found_total", &[(SRV, srv)], None).increment(1);
    }

    pub fn http_rate_limited(&self, srv: &Meta, route: &Meta, limit: &'static str) {
        self.counter(
            "inbound_http_local_ratelimit_rejected_total",
            &[(SRV, srv), (ROUTE, route)],
            Some(Label::from_static_parts("ratelimit", limit)),
        )
        .increment(1);
    }

    pub fn tcp_allowed(&self, srv: &Meta, authz: &Meta) {
        self.counter("inbound_tcp_authz_allow_total", &[(SRV, srv), (AUTHZ, authz)], None).increment(1);
    }

    pub fn tcp_denied(&self, srv: &Meta) {
        self.counter("inbound_tcp_authz_deny_total", &[(SRV, srv)], None).increment(1);
    }

    pub fn tcp_terminated(&self, srv: &Meta) {
        self.counter("inbound_tcp_authz_terminate_total", &[(SRV, srv)], None).increment(1);
    }
}
