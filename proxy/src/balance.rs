//! Request-level load balancing: power of two choices over peak-EWMA load,
//! with failing endpoints ejected and probed back.
//!
//! One `Balancer` per backend service, shared by every connection to it. It
//! follows the service's endpoint watch, keeping each endpoint's load and
//! health across updates so an endpoint that stays keeps what was learned.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use rand::Rng;
use tokio::time::Instant;

use crate::discovery::{EndpointMeta, EndpointSet, EndpointsRx, Resolution};

/// The latency assumed for an endpoint nothing has been learned about yet.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast old latency observations fade.
const DECAY: Duration = Duration::from_secs(10);
/// Failure accrual: `max_failures` failed requests in a row eject an
/// endpoint for `min_penalty`, doubled for each ejection in a row up to
/// `max_penalty`; once due back it gets one probe request, and a failed
/// probe ejects it again. A refused connection ejects at once: the endpoint
/// is plainly not there. The default (5, 1s, 60s) holds unless an outbound
/// policy sets its own (`balancer.linkerd.io/failure-accrual`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Accrual {
    pub max_failures: u32,
    pub min_penalty: Duration,
    pub max_penalty: Duration,
}

impl Default for Accrual {
    fn default() -> Self {
        Accrual { max_failures: 5, min_penalty: Duration::from_secs(1), max_penalty: Duration::from_secs(60) }
    }
}

pub struct Balancer {
    state: Mutex<State>,
}

struct State {
    rx: EndpointsRx,
    /// Endpoints in a Vec so that picking two at random is O(1).
    endpoints: Vec<Arc<Endpoint>>,
    resolution: Kind,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Pending,
    Unknown,
    Known { exists: bool },
}

pub enum Pick {
    Endpoint(Arc<Endpoint>),
    /// No answer yet from discovery.
    Pending,
    /// Discovery does not know this service: use the original destination.
    Unknown,
    /// The service exists (or not) but has no endpoints to send to.
    NoEndpoints {
        exists: bool,
    },
}

pub struct Endpoint {
    pub addr: SocketAddr,
    pub meta: Arc<EndpointMeta>,
    pending: AtomicUsize,
    stats: Mutex<Stats>,
}

struct Stats {
    /// Peak-EWMA round-trip estimate, in nanoseconds.
    rtt_ns: f64,
    stamp: Instant,
    consecutive_failures: u32,
    /// While set and in the future, the endpoint is not picked.
    ejected_until: Option<Instant>,
    ejections: u32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The connection could not even be made.
    Unreachable,
}

impl Balancer {
    pub fn new(rx: EndpointsRx) -> Self {
        let mut state = State { rx, endpoints: Vec::new(), resolution: Kind::Pending };
        state.refresh(true);
        Balancer { state: Mutex::new(state) }
    }

    /// A receiver that changes when the endpoint set does, to wait on while
    /// discovery is pending.
    pub fn watch(&self) -> EndpointsRx {
        lock(&self.state).rx.clone()
    }

    pub fn pick(&self) -> Pick {
        self.pick_avoiding(None)
    }

    /// As `pick`, but never `avoid` (a hedged request's first endpoint)
    /// while there is another.
    pub fn pick_avoiding(&self, avoid: Option<SocketAddr>) -> Pick {
        let mut state = lock(&self.state);
        state.refresh(false);
        match state.resolution {
            Kind::Pending => return Pick::Pending,
            Kind::Unknown => return Pick::Unknown,
            Kind::Known { exists } if state.endpoints.is_empty() => return Pick::NoEndpoints { exists },
            Kind::Known { .. } => {}
        }
        let now = Instant::now();
        let mut eps = &state.endpoints[..];
        let skipped;
        if let Some(i) = avoid.and_then(|a| eps.iter().position(|e| e.addr == a)).filter(|_| eps.len() > 1) {
            skipped = [&eps[..i], &eps[i + 1..]].concat();
            eps = &skipped;
        }
        let mut rng = rand::rng();
        let chosen = if eps.len() == 1 {
            eps[0].clone()
        } else {
            let a = rng.random_range(0..eps.len());
            let mut b = rng.random_range(0..eps.len() - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (&eps[a], &eps[b]);
            match (ea.available(now), eb.available(now)) {
                (true, false) => ea.clone(),
                (false, true) => eb.clone(),
                (false, false) => {
                    // Both ejected: look for any endpoint that is not, and
                    // only when all are, try the one due back soonest.
                    match eps.iter().find(|e| e.available(now)) {
                        Some(e) => e.clone(),
                        None => eps.iter().min_by_key(|e| e.ejected_until()).unwrap_or(ea).clone(),
                    }
                }
                (true, true) => {
                    if ea.cost(now) <= eb.cost(now) {
                        ea.clone()
                    } else {
                        eb.clone()
                    }
                }
            }
        };
        Pick::Endpoint(chosen)
    }
}

impl State {
    fn refresh(&mut self, force: bool) {
        if !force && !self.rx.has_changed().unwrap_or(false) {
            return;
        }
        let resolution = self.rx.borrow_and_update().clone();
        match resolution {
            Resolution::Pending => self.resolution = Kind::Pending,
            Resolution::Unknown => {
                self.resolution = Kind::Unknown;
                self.endpoints.clear();
            }
            Resolution::Known(set) => {
                self.resolution = Kind::Known { exists: set.exists };
                self.endpoints = merge(&self.endpoints, &set);
            }
        }
    }
}

/// The new set's endpoints, reusing the existing `Endpoint` (and its learned
/// load and health) for every address that stays with the same metadata.
fn merge(old: &[Arc<Endpoint>], set: &EndpointSet) -> Vec<Arc<Endpoint>> {
    let by_addr: HashMap<SocketAddr, &Arc<Endpoint>> = old.iter().map(|e| (e.addr, e)).collect();
    let mut merged: Vec<Arc<Endpoint>> = set
        .endpoints
        .iter()
        .map(|(addr, meta)| match by_addr.get(addr) {
            Some(existing) if existing.meta == *meta => Arc::clone(existing),
            _ => Arc::new(Endpoint::new(*addr, meta.clone())),
        })
        .collect();
    merged.sort_by_key(|e| e.addr);
    merged
}

impl Endpoint {
    pub fn new(addr: SocketAddr, meta: Arc<EndpointMeta>) -> Self {
        Endpoint {
            addr,
            meta,
            pending: AtomicUsize::new(0),
            stats: Mutex::new(Stats {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                stamp: Instant::now(),
                consecutive_failures: 0,
                ejected_until: None,
                ejections: 0,
            }),
        }
    }

    fn available(&self, now: Instant) -> bool {
        lock(&self.stats).ejected_until.is_none_or(|until| now >= until)
    }

    fn ejected_until(&self) -> Option<Instant> {
        lock(&self.stats).ejected_until
    }

    /// Peak-EWMA cost: the decayed latency estimate scaled by the requests
    /// already waiting on this endpoint, so a slow or busy endpoint loses
    /// the comparison.
    fn cost(&self, now: Instant) -> f64 {
        let rtt = lock(&self.stats).decayed_rtt(now);
        // Weights scale the cost down, so a weight-2 endpoint looks half as
        // loaded and takes about twice the traffic.
        rtt * (self.pending.load(Ordering::Relaxed) + 1) as f64 / f64::from(self.meta.weight.max(1))
    }

    /// Marks a request as started; the returned guard must be completed
    /// with the outcome, or dropped (counted as neither).
    pub fn start(self: &Arc<Self>, accrual: Accrual) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint: self.clone(), start: Instant::now(), accrual }
    }

    fn observe(&self, rtt: Duration, outcome: Outcome, accrual: Accrual) {
        let now = Instant::now();
        let mut stats = lock(&self.stats);
        let rtt_ns = rtt.as_nanos() as f64;
        let decayed = stats.decayed_rtt(now);
        stats.rtt_ns = if rtt_ns > decayed {
            rtt_ns
        } else {
            let w = (-(now.duration_since(stats.stamp).as_secs_f64()) / DECAY.as_secs_f64()).exp();
            decayed * w + rtt_ns * (1.0 - w)
        };
        stats.stamp = now;
        match outcome {
            Outcome::Success => {
                stats.consecutive_failures = 0;
                stats.ejections = 0;
                stats.ejected_until = None;
            }
            Outcome::Failure | Outcome::Unreachable => {
                stats.consecutive_failures += 1;
                let probing = stats.ejections > 0;
                if outcome == Outcome::Unreachable
                    || probing
                    || stats.consecutive_failures >= accrual.max_failures.max(1)
                {
                    // Each ejection in a row doubles the time out, so a dead
                    // endpoint is probed ever less often.
                    let backoff = accrual
                        .min_penalty
                        .saturating_mul(1 << stats.ejections.min(6))
                        .min(accrual.max_penalty.max(accrual.min_penalty));
                    stats.ejected_until = Some(now + backoff);
                    stats.ejections += 1;
                    stats.consecutive_failures = 0;
                    tracing::info!(endpoint = %self.addr, ?backoff, "endpoint ejected");
                }
            }
        }
    }

    pub fn is_ejected(&self) -> bool {
        !self.available(Instant::now())
    }
}

impl Stats {
    fn decayed_rtt(&self, now: Instant) -> f64 {
        let elapsed = now.duration_since(self.stamp).as_secs_f64();
        let w = (-elapsed / DECAY.as_secs_f64()).exp();
        // Decay toward the default so an endpoint that was slow long ago is
        // tried again.
        self.rtt_ns * w + DEFAULT_RTT.as_nanos() as f64 * (1.0 - w)
    }
}

pub struct InFlight {
    endpoint: Arc<Endpoint>,
    start: Instant,
    accrual: Accrual,
}

impl InFlight {
    pub fn complete(self, outcome: Outcome) {
        self.endpoint.observe(self.start.elapsed(), outcome, self.accrual);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    fn set(addrs: &[&str]) -> Resolution<Arc<EndpointSet>> {
        Resolution::Known(Arc::new(EndpointSet {
            exists: true,
            endpoints: addrs
                .iter()
                .map(|a| (a.parse().unwrap(), Arc::new(EndpointMeta { weight: 1, ..Default::default() })))
                .collect(),
        }))
    }

    fn picked(b: &Balancer) -> SocketAddr {
        match b.pick() {
            Pick::Endpoint(e) => e.addr,
            _ => panic!("no endpoint"),
        }
    }

    #[tokio::test]
    async fn prefers_the_faster_endpoint() {
        let (_tx, rx) = watch::channel(set(&["10.0.0.1:80", "10.0.0.2:80"]));
        let b = Balancer::new(rx);
        for _ in 0..20 {
            if let Pick::Endpoint(e) = b.pick() {
                let rtt = if e.addr.ip().to_string() == "10.0.0.1" { 200 } else { 2 };
                e.observe(Duration::from_millis(rtt), Outcome::Success, Accrual::default());
            }
        }
        let fast = (0..100).filter(|_| picked(&b).to_string() == "10.0.0.2:80").count();
        assert_eq!(fast, 100, "with two endpoints P2C always compares both");
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_ejected_until_their_backoff_ends() {
        let (_tx, rx) = watch::channel(set(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        let b = Balancer::new(rx);
        let dead: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let ep = b.state.lock().unwrap().endpoints.iter().find(|e| e.addr == dead).unwrap().clone();
        ep.start(Accrual::default()).complete(Outcome::Unreachable);
        assert!(ep.is_ejected());
        assert!((0..200).all(|_| picked(&b) != dead));
    }

    #[tokio::test]
    async fn updates_keep_learned_state_and_drop_removed_endpoints() {
        let (tx, rx) = watch::channel(set(&["10.0.0.1:80", "10.0.0.2:80"]));
        let b = Balancer::new(rx);
        let ep1 = b.state.lock().unwrap().endpoints[0].clone();
        ep1.start(Accrual::default()).complete(Outcome::Unreachable);
        tx.send(set(&["10.0.0.1:80", "10.0.0.3:80"])).unwrap();
        let _ = b.pick();
        let eps = b.state.lock().unwrap().endpoints.clone();
        assert_eq!(eps.len(), 2);
        assert!(Arc::ptr_eq(&eps[0], &ep1), "kept endpoint keeps its state");
        assert!(eps[0].is_ejected());
        assert_eq!(eps[1].addr.to_string(), "10.0.0.3:80");
    }

    #[tokio::test]
    async fn a_hedge_avoids_the_first_endpoint_unless_it_is_the_only_one() {
        let (_tx, rx) = watch::channel(set(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        let b = Balancer::new(rx);
        let first: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let picks: Vec<SocketAddr> = (0..200)
            .map(|_| match b.pick_avoiding(Some(first)) {
                Pick::Endpoint(e) => e.addr,
                _ => panic!("no endpoint"),
            })
            .collect();
        assert!(picks.iter().all(|&a| a != first));
        assert!(
            picks.iter().any(|a| a.to_string() == "10.0.0.1:80")
                && picks.iter().any(|a| a.to_string() == "10.0.0.3:80")
        );

        let (_tx, rx) = watch::channel(set(&["10.0.0.2:80"]));
        let lone = Balancer::new(rx);
        assert!(matches!(lone.pick_avoiding(Some(first)), Pick::Endpoint(e) if e.addr == first));
    }

    #[tokio::test]
    async fn reports_pending_unknown_and_empty() {
        let (tx, rx) = watch::channel(Resolution::Pending);
        let b = Balancer::new(rx);
        assert!(matches!(b.pick(), Pick::Pending));
        tx.send(Resolution::Unknown).unwrap();
        assert!(matches!(b.pick(), Pick::Unknown));
        tx.send(Resolution::Known(Arc::new(EndpointSet { exists: true, endpoints: HashMap::default() })))
            .unwrap();
        assert!(matches!(b.pick(), Pick::NoEndpoints { exists: true }));
    }
}
