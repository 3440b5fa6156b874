//! Hedged requests (`retry.weft.io/hedge-after`): when a policy rule asks
//! for it, an idempotent request whose first try has no response headers
//! after the rule's delay is sent once more, to another endpoint of the
//! backend when it has one; the first response headers win and the other
//! try is dropped, which cancels it (its HTTP/1 connection is closed, its
//! HTTP/2 stream reset).
//!
//! The delay is fixed, or a percentile of the latencies the rule's own
//! requests saw (`Latencies`: no hedging until it has `MIN_SAMPLES`).
//! Copies draw on the rule's budget (`HedgePolicy::budget`: 10% of its
//! requests over 10 s, plus 10 a second); when it is spent the first try is
//! simply awaited. Counted per route as `outbound_http_route_hedge_requests_total`
//! (copies sent) and `outbound_http_route_hedge_wins_total` (requests
//! answered by their copy).
//!
//! A request without `RouteHedge` costs one extension lookup here.

use std::{
    pin::pin,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use http::{Method, Request, Response};
use metrics::Label;
use tokio::time::Instant;
use tower::{retry::budget::Budget, ServiceExt};
use tracing::debug;

use super::{
    extensions::{HedgeCounters, HedgeEndpoint, RouteHedge},
    retry::{buffer, Replay},
    BoxBody, BoxError, LayerFuture,
};
use crate::profile::MAX_REPLAY_BODY;

#[derive(Copy, Clone, Debug, Default)]
pub struct HedgeLayer;

impl<S> tower::Layer<S> for HedgeLayer {
    type Service = Hedge<S>;
    fn layer(&self, inner: S) -> Hedge<S> {
        Hedge { inner }
    }
}

#[derive(Clone)]
pub struct Hedge<S> {
    inner: S,
}

impl<S> tower::Service<Request<BoxBody>> for Hedge<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Response<BoxBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        match req.extensions().get::<RouteHedge>() {
            Some(hedge) if may_hedge(&req) => {
                let hedge = hedge.clone();
                LayerFuture::own(hedged(self.inner.clone(), req, hedge))
            }
            _ => LayerFuture::inner(self.inner.call(req)),
        }
    }
}

/// Only a request that means the same sent twice: an idempotent method,
/// and no upgrade (its connection becomes something else).
fn may_hedge<B>(req: &Request<B>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent && !req.headers().contains_key(http::header::UPGRADE)
}

async fn hedged<S>(inner: S, req: Request<BoxBody>, hedge: RouteHedge) -> Result<Response<BoxBody>, BoxError>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let RouteHedge { policy, counters } = hedge;
    let (mut parts, body) = req.into_parts();
    let replay = match buffer(body, MAX_REPLAY_BODY).await {
        Ok(replay) => replay,
        // Too large to hold for a second copy: sent once, streaming.
        Err(streaming) => {
            return inner.oneshot(Request::from_parts(parts, streaming)).await.map_err(Into::into)
        }
    };
    policy.budget.deposit();
    parts.extensions.insert(HedgeEndpoint::default());
    let start = Instant::now();
    let first = inner.clone().oneshot(replay.request(&parts));
    let res = match policy.delay() {
        Some(delay) => race(inner, first, delay, &replay, &parts, &policy.budget, &counters).await,
        None => first.await.map_err(Into::into),
    };
    if res.is_ok() {
        policy.latencies.observe(start.elapsed());
    }
    res
}

/// The first try, and after `delay` a copy if the budget allows; the first
/// response wins. A try that fails without a response leaves the other to
/// answer.
async fn race<S>(
    inner: S,
    first: tower::util::Oneshot<S, Request<BoxBody>>,
    delay: Duration,
    replay: &Replay,
    parts: &http::request::Parts,
    budget: &impl Budget,
    counters: &HedgeCounters,
) -> Result<Response<BoxBody>, BoxError>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Send + 'static,
    S::Error: Into<BoxError>,
{
    let mut first = pin!(first);
    tokio::select! {
        biased;
        res = &mut first => return res.map_err(Into::into),
        () = tokio::time::sleep(delay) => {}
    }
    if !budget.withdraw() {
        debug!(?delay, "no response yet; hedge budget spent");
        return first.await.map_err(Into::into);
    }
    debug!(?delay, "no response yet; hedging");
    counters.requests.increment(1);
    let mut copy = pin!(inner.oneshot(replay.request(parts)));
    let (copy_first, res): (bool, Result<_, BoxError>) = tokio::select! {
        biased;
        res = &mut first => (false, res.map_err(Into::into)),
        res = &mut copy => (true, res.map_err(Into::into)),
    };
    let (copy_won, res) = match res {
        Ok(rsp) => (copy_first, Ok(rsp)),
        Err(_) if copy_first => (false, first.await.map_err(Into::into)),
        Err(_) => (true, copy.await.map_err(Into::into)),
    };
    if copy_won && res.is_ok() {
        counters.wins.increment(1);
    }
    res
}

/// A route's hedge counters, registered once per rule (`HedgePolicy::counters`).
pub fn register_counters(route: &[Label]) -> HedgeCounters {
    HedgeCounters {
        requests: metrics::counter!("outbound_http_route_hedge_requests_total", route.iter()),
        wins: metrics::counter!("outbound_http_route_hedge_wins_total", route.iter()),
    }
}

/// Latencies below this share the first bucket.
const FIRST_BUCKET: Duration = Duration::from_micros(100);
/// Buckets per doubling: bounds ~19% apart.
const PER_DOUBLING: f64 = 4.0;
/// 100 µs × 2^(79/4): the last bucket starts at ~85 s.
const BUCKETS: usize = 80;
/// A percentile delay needs this many recent latencies; until then the
/// rule does not hedge.
pub const MIN_SAMPLES: u64 = 20;
/// Every period the counts are halved, so the estimate follows the last
/// tens of seconds.
const DECAY: Duration = Duration::from_secs(10);

/// A rule's recent latencies in log-spaced buckets: fixed size, no
/// allocation or lock per request (relaxed atomics; a count lost to a race
/// with the halving moves a percentile by nothing that matters).
pub struct Latencies {
    counts: [AtomicU32; BUCKETS],
    epoch: Instant,
    /// When the counts were last halved, in ms since `epoch`.
    halved_ms: AtomicU64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
            epoch: Instant::now(),
            halved_ms: AtomicU64::new(0),
        }
    }
}

impl Latencies {
    pub fn observe(&self, latency: Duration) {
        self.decay();
        self.counts[bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding the `p`th percentile (0–100),
    /// once there are `MIN_SAMPLES` latencies.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        self.decay();
        let counts: [u32; BUCKETS] = std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed));
        let total: u64 = counts.iter().map(|&n| u64::from(n)).sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = ((total as f64) * p.clamp(0.0, 100.0) / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }

    fn decay(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.halved_ms.load(Ordering::Relaxed);
        let periods = now.saturating_sub(last) / DECAY.as_millis() as u64;
        if periods == 0 {
            return;
        }
        // One caller halves; the others go on with the counts as they are.
        if self.halved_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let shift = periods.min(31) as u32;
        for count in &self.counts {
            let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n >> shift));
        }
    }
}

fn bucket(latency: Duration) -> usize {
    let ratio = latency.as_secs_f64() / FIRST_BUCKET.as_secs_f64();
    if ratio <= 1.0 {
        return 0;
    }
    ((ratio.log2() * PER_DOUBLING).ceil() as usize).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> Duration {
    FIRST_BUCKET.mul_f64((bucket as f64 / PER_DOUBLING).exp2())
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::Pin,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc, Mutex,
        },
    };

    use super::*;
    use crate::{
        http::full,
        outbound_policy::{HedgeAfter, HedgePolicy},
    };
    use http_body_util::BodyExt;
    use tower::{Layer, Service};

    #[test]
    fn buckets_bound_their_latencies_within_a_fifth() {
        for ms in [0.05, 0.1, 1.0, 2.5, 20.0, 300.0, 10_000.0] {
            let d = Duration::from_secs_f64(ms / 1000.0);
            let upper = upper_bound(bucket(d));
            assert!(upper >= d, "{ms} ms in a bucket ending at {upper:?}");
            assert!(
                upper.as_secs_f64() <= (d.as_secs_f64() * 1.19).max(FIRST_BUCKET.as_secs_f64()),
                "{ms} ms"
            );
        }
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_need_twenty_samples_and_follow_recent_latencies() {
        let l = Latencies::default();
        for _ in 0..19 {
            l.observe(Duration::from_millis(2));
        }
        assert_eq!(l.percentile(95.0), None, "19 samples are too few");
        l.observe(Duration::from_millis(300));
        let p95 = l.percentile(95.0).unwrap();
        assert!((Duration::from_millis(2)..Duration::from_millis(3)).contains(&p95), "{p95:?}");
        let p99 = l.percentile(99.0).unwrap();
        assert!((Duration::from_millis(300)..Duration::from_millis(360)).contains(&p99), "{p99:?}");

        // Each 10 s halves the counts: 20 samples become 10, too few.
        tokio::time::advance(DECAY).await;
        assert_eq!(l.percentile(95.0), None);
        for _ in 0..100 {
            l.observe(Duration::from_millis(50));
        }
        let p50 = l.percentile(50.0).unwrap();
        assert!((Duration::from_millis(50)..Duration::from_millis(60)).contains(&p50), "{p50:?}");
    }

    /// What the inner service saw: (try number, endpoint cell shared).
    #[derive(Clone, Default)]
    struct Tries {
        n: Arc<AtomicUsize>,
        cells: Arc<Mutex<Vec<HedgeEndpoint>>>,
        /// Tries dropped before they answered.
        dropped: Arc<AtomicUsize>,
    }

    /// An inner service whose `n`th try answers after `delays[n]` with
    /// status 200 + n.
    #[derive(Clone)]
    struct Svc {
        tries: Tries,
        delays: Arc<Vec<Duration>>,
    }

    struct DropGuard(Option<Arc<AtomicUsize>>);
    impl Drop for DropGuard {
        fn drop(&mut self) {
            if let Some(d) = self.0.take() {
                d.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl Service<Request<BoxBody>> for Svc {
        type Response = Response<BoxBody>;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
            let n = self.tries.n.fetch_add(1, Ordering::SeqCst);
            if let Some(cell) = req.extensions().get::<HedgeEndpoint>() {
                self.tries.cells.lock().unwrap().push(cell.clone());
            }
            let delay = self.delays.get(n).copied().unwrap_or_default();
            let dropped = self.tries.dropped.clone();
            Box::pin(async move {
                let mut guard = DropGuard(Some(dropped));
                let body = req.into_body().collect().await?.to_bytes();
                tokio::time::sleep(delay).await;
                guard.0 = None;
                let mut rsp = Response::new(full(body));
                *rsp.status_mut() = http::StatusCode::from_u16(200 + n as u16).unwrap();
                Ok(rsp)
            })
        }
    }

    fn hedge(after: HedgeAfter) -> RouteHedge {
        let policy = Arc::new(HedgePolicy::new(after));
        RouteHedge { counters: policy.counters(&[]), policy }
    }

    async fn send(
        hedge: &RouteHedge,
        method: Method,
        body: BoxBody,
        delays: &[u64],
    ) -> (http::StatusCode, Tries) {
        let tries = Tries::default();
        let svc = Svc {
            tries: tries.clone(),
            delays: Arc::new(delays.iter().map(|&ms| Duration::from_millis(ms)).collect()),
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        req.extensions_mut().insert(hedge.clone());
        let rsp = HedgeLayer.layer(svc).oneshot(req).await.unwrap();
        let status = rsp.status();
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "body", "the copy replays the body");
        (status, tries)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_try_is_hedged_and_the_first_answer_wins() {
        let h = hedge(HedgeAfter::Fixed(Duration::from_millis(20)));
        let (status, tries) = send(&h, Method::GET, full("body"), &[300, 5]).await;
        assert_eq!(status.as_u16(), 201, "the copy answered first");
        assert_eq!(tries.n.load(Ordering::SeqCst), 2);
        assert_eq!(tries.dropped.load(Ordering::SeqCst), 1, "the first try was cancelled");
        let cells = tries.cells.lock().unwrap().clone();
        assert!(Arc::ptr_eq(&cells[0].0, &cells[1].0), "the copy knows where the first try went");

        let (status, tries) = send(&h, Method::GET, full("body"), &[10]).await;
        assert_eq!(status.as_u16(), 200);
        assert_eq!(tries.n.load(Ordering::SeqCst), 1, "answered before the delay: no copy");

        let (status, tries) = send(&h, Method::PUT, full("body"), &[30, 100]).await;
        assert_eq!(status.as_u16(), 200, "hedged, but the first try still answered first");
        assert_eq!(tries.n.load(Ordering::SeqCst), 2);
        assert_eq!(tries.dropped.load(Ordering::SeqCst), 1, "the copy was cancelled");
    }

    #[tokio::test(start_paused = true)]
    async fn posts_and_large_bodies_are_not_hedged() {
        let h = hedge(HedgeAfter::Fixed(Duration::from_millis(20)));
        let (_, tries) = send(&h, Method::POST, full("body"), &[300, 5]).await;
        assert_eq!(tries.n.load(Ordering::SeqCst), 1);

        let big = "x".repeat(MAX_REPLAY_BODY + 1);
        let tries = Tries::default();
        let svc = Svc { tries: tries.clone(), delays: Arc::new(vec![Duration::from_millis(300)]) };
        let mut req = Request::new(full(big.clone()));
        req.extensions_mut().insert(h.clone());
        let rsp = HedgeLayer.layer(svc).oneshot(req).await.unwrap();
        assert_eq!(
            rsp.into_body().collect().await.unwrap().to_bytes(),
            big.as_bytes(),
            "streamed whole, once"
        );
        assert_eq!(tries.n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_copies() {
        let h = hedge(HedgeAfter::Fixed(Duration::from_millis(1)));
        let mut copies = 0;
        for _ in 0..300 {
            let (_, tries) = send(&h, Method::GET, full("body"), &[5, 5]).await;
            copies += tries.n.load(Ordering::SeqCst) - 1;
        }
        // 10 a second for 10 s in reserve, plus one per 10 requests.
        assert_eq!(copies, 100 + 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_percentile_delay_waits_for_twenty_samples() {
        let h = hedge(HedgeAfter::Percentile(90.0));
        for _ in 0..20 {
            let (_, tries) = send(&h, Method::GET, full("body"), &[300, 2]).await;
            assert_eq!(tries.n.load(Ordering::SeqCst), 1, "not hedged before the estimate has 20 samples");
        }
        for _ in 0..20 {
            send(&h, Method::GET, full("body"), &[2]).await;
        }
        let p90 = h.policy.delay().unwrap();
        assert!(p90 >= Duration::from_millis(300), "{p90:?}: half the requests so far took 300 ms");
        for _ in 0..200 {
            send(&h, Method::GET, full("body"), &[2]).await;
        }
        let p90 = h.policy.delay().unwrap();
        assert!(p90 < Duration::from_millis(3), "{p90:?}");
        let (status, tries) = send(&h, Method::GET, full("body"), &[300, 2]).await;
        assert_eq!((status.as_u16(), tries.n.load(Ordering::SeqCst)), (201, 2), "hedged at the learned p90");
    }
}
