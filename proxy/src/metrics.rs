//! Golden metrics, named and labelled as Linkerd's proxy names them so
//! existing dashboards and `linkerd viz`-style queries keep working.
//!
//! Handles for the fixed label sets are registered once when a stack is
//! built, so the per-connection cost is a few atomic adds.

use std::sync::{Arc, Mutex};

use foldhash::HashSet;
use metrics::{Counter, Gauge, Label};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Linkerd's `response_latency_ms` buckets.
const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1000.0, 2000.0,
    3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// linkerd2-proxy's request buckets for its per-route
/// `outbound_http_route_request_duration_seconds` (its route metrics'
/// `REQUEST_BUCKETS`, in seconds): few on purpose, as there is one
/// histogram per parent and route. Dashboards built for Linkerd query
/// `_bucket{le="0.05"}` and friends, so ours must have the same bounds.
const ROUTE_DURATION_BUCKETS_S: &[f64] = &[0.05, 0.5, 1.0, 10.0];

/// Installs the process-wide Prometheus recorder and returns the handle the
/// admin server renders `/metrics` from.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("response_latency_ms".into()), LATENCY_BUCKETS_MS)?
        .set_buckets_for_metric(
            Matcher::Full("outbound_http_route_request_duration_seconds".into()),
            ROUTE_DURATION_BUCKETS_S,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(metrics_exporter_prometheus::BuildError::FailedToSetGlobalRecorder)?;
    // Linkerd's `proxy_build_info`: `weft check --proxy` compares it with the
    // control plane's version.
    metrics::gauge!("proxy_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    crate::process_metrics::refresh();
    Ok(handle)
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Whether a connection is mutually authenticated; Linkerd's `tls` label.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tls {
    Established,
    NoIdentity,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Established => "true",
            Tls::NoIdentity => "no_identity",
        }
    }
}

/// `tcp_*` metrics of one side (`peer="src"` accepted, `peer="dst"` dialed)
/// of one direction.
#[derive(Clone)]
pub struct TcpMetrics {
    open_total: Counter,
    close_total: Counter,
    open_connections: Gauge,
    read_bytes: Counter,
    write_bytes: Counter,
}

impl TcpMetrics {
    pub fn new(direction: Direction, peer: &'static str, tls: Tls) -> Self {
        let labels = [
            Label::from_static_parts("direction", direction.as_str()),
            Label::from_static_parts("peer", peer),
            Label::from_static_parts("tls", tls.as_str()),
        ];
        Self {
            open_total: metrics::counter!("tcp_open_total", labels.iter()),
            close_total: metrics::counter!("tcp_close_total", labels.iter()),
            open_connections: metrics::gauge!("tcp_open_connections", labels.iter()),
            read_bytes: metrics::counter!("tcp_read_bytes_total", labels.iter()),
            write_bytes: metrics::counter!("tcp_write_bytes_total", labels.iter()),
        }
    }

    pub fn opened(&self) {
        self.open_total.increment(1);
        self.open_connections.increment(1.0);
    }

    pub fn closed(&self) {
        self.close_total.increment(1);
        self.open_connections.decrement(1.0);
    }

    pub fn read(&self, n: usize) {
        self.read_bytes.increment(n as u64);
    }

    pub fn wrote(&self, n: usize) {
        self.write_bytes.increment(n as u64);
    }
}

/// Bounds the `authority` label: the first `capacity` distinct authorities
/// are labelled as themselves and every later one as `other`, so a client
/// sending random Host headers cannot grow the metrics without bound.
#[derive(Clone)]
pub struct AuthorityLabels {
    seen: Arc<Mutex<HashSet<Arc<str>>>>,
    capacity: usize,
}

pub const OTHER_AUTHORITY: &str = "other";

impl AuthorityLabels {
    pub fn new(capacity: usize) -> Self {
        Self { seen: Arc::default(), capacity }
    }

    pub fn label(&self, authority: Option<&str>) -> Arc<str> {
        let Some(authority) = authority.filter(|a| !a.is_empty()) else {
            return Arc::from("");
        };
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(known) = seen.get(authority) {
            return known.clone();
        }
        let lower = authority.to_ascii_lowercase();
        if let Some(known) = seen.get(lower.as_str()) {
            return known.clone();
        }
        if seen.len() >= self.capacity {
            return Arc::from(OTHER_AUTHORITY);
        }
        let label: Arc<str> = Arc::from(lower);
        seen.insert(label.clone());
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_labels_are_bounded() {
        let labels = AuthorityLabels::new(2);
        assert_eq!(&*labels.label(Some("a.example:80")), "a.example:80");
        assert_eq!(&*labels.label(Some("b.example:80")), "b.example:80");
        assert_eq!(&*labels.label(Some("c.example:80")), OTHER_AUTHORITY);
        // Known authorities keep their own label once the set is full.
        assert_eq!(&*labels.label(Some("a.example:80")), "a.example:80");
        assert_eq!(&*labels.label(None), "");
    }
}
