//! Local rate limiting (Linkerd's HTTPLocalRateLimitPolicy): token buckets
//! for the whole server (`total`), for each client identity (`identity`;
//! clients without one share a bucket) and for listed identities
//! (`overrides`, which replace the per-identity limit for those clients).
//! A bucket holds one second's worth of tokens, its burst.
//!
//! The buckets live in the policy; an update that keeps a limit as it was
//! keeps its buckets too (the control plane resends a port's policy when
//! unrelated resources change, which must not hand out a fresh burst).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use tracing::debug;

use super::{
    authorize::{Client, Matched, PolicyError},
    Meta,
};
use crate::http::{BoxBody, BoxError, LayerFuture};

/// Identities tracked before the least useful buckets are dropped: the
/// identities are verified mesh names, but a limit on memory is cheap.
const MAX_IDENTITIES: usize = 10_000;

#[derive(Debug)]
pub struct RateLimit {
    pub meta: Meta,
    pub total: Option<Bucket>,
    /// Requests per second allowed to each identity.
    pub identity: Option<u32>,
    pub overrides: Vec<Override>,
    identities: Mutex<HashMap<Option<Arc<str>>, Bucket>>,
}

#[derive(Debug)]
pub struct Override {
    pub clients: Vec<String>,
    pub bucket: Bucket,
}

#[derive(Debug)]
pub struct Bucket {
    rps: u32,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rps: u32) -> Self {
        Bucket { rps, state: Mutex::new((f64::from(rps), Instant::now())) }
    }

    pub fn rps(&self) -> u32 {
        self.rps
    }

    fn snapshot(&self) -> Bucket {
        let state = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        Bucket { rps: self.rps, state: Mutex::new(state) }
    }

    fn inherit(&mut self, old: &Bucket) {
        if self.rps == old.rps {
            *self = old.snapshot();
        }
    }

    fn take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        take(&mut state, self.rps, now)
    }
}

fn take((tokens, last): &mut (f64, Instant), rps: u32, now: Instant) -> bool {
    let rate = f64::from(rps);
    *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(rate);
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

impl RateLimit {
    pub fn new(meta: Meta, total: Option<u32>, identity: Option<u32>, overrides: Vec<Override>) -> Self {
        RateLimit { meta, total: total.map(Bucket::new), identity, overrides, identities: Mutex::default() }
    }

    /// Takes over `old`'s buckets for the limits that did not change.
    pub fn inherit(&mut self, old: &RateLimit) {
        if let (Some(new), Some(old)) = (&mut self.total, &old.total) {
            new.inherit(old);
        }
        if self.identity.is_some() && self.identity == old.identity {
            let old = old.identities.lock().unwrap_or_else(|p| p.into_inner());
            let mut new = self.identities.lock().unwrap_or_else(|p| p.into_inner());
            for (id, bucket) in old.iter() {
                new.insert(id.clone(), bucket.snapshot());
            }
        }
        for o in &mut self.overrides {
            if let Some(prev) = old.overrides.iter().find(|p| p.clients == o.clients) {
                o.bucket.inherit(&prev.bucket);
            }
        }
    }

    /// `Err` names the limit (`ratelimit` label) the request exceeded.
    /// The client's own share is checked first: a request over it never
    /// spends the total, so one client flooding the server cannot use up
    /// what the others are entitled to (per-identity fairness).
    pub fn check(&self, client: Option<&Arc<str>>) -> Result<(), &'static str> {
        let now = Instant::now();
        self.check_client(client, now)?;
        if self.total.as_ref().is_some_and(|b| !b.take(now)) {
            return Err("total");
        }
        Ok(())
    }

    fn check_client(&self, client: Option<&Arc<str>>, now: Instant) -> Result<(), &'static str> {
        if let Some(id) = client {
            if let Some(o) = self.overrides.iter().find(|o| o.clients.iter().any(|c| **c == **id)) {
                return if o.bucket.take(now) { Ok(()) } else { Err("override") };
            }
        }
        let Some(rps) = self.identity else { return Ok(()) };
        let mut buckets = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_IDENTITIES && !buckets.contains_key(&client.cloned()) {
            // Full buckets carry no state worth keeping.
            buckets.retain(|_, b| b.state.get_mut().map(|s| s.0 < f64::from(rps)).unwrap_or(false));
        }
        let bucket = buckets.entry(client.cloned()).or_insert_with(|| Bucket::new(rps));
        let state = bucket.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if take(state, rps, now) {
            Ok(())
        } else {
            Err("identity")
        }
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    client: Arc<Client>,
}

impl RateLimitLayer {
    pub fn new(client: Arc<Client>) -> Self {
        Self { client }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService { inner, client: self.client.clone() }
    }
}

/// Applies the rate limit of the policy the request was authorized in (see
/// [`Matched`]); requests without one pass untouched.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    client: Arc<Client>,
}

impl<S> tower::Service<Request<BoxBody>> for RateLimitService<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Response<BoxBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        if let Some(Matched { policy, route }) = req.extensions().get::<Matched>() {
            if let Some(limit) = &policy.rate_limit {
                let id = match &self.client.tls {
                    super::ClientTls::Mesh(Some(id)) => Some(id),
                    _ => None,
                };
                if let Err(which) = limit.check(id) {
                    let route = &policy.routes[route.route].meta;
                    self.client.metrics.http_rate_limited(&policy.meta, route, which);
                    // debug, not info: a flood would otherwise become a log
                    // flood; inbound_http_local_ratelimit_rejected_total counts.
                    debug!(server = %policy.meta, route = %route, ratelimit = which, client.ip = %self.client.addr.ip(), client.id = id.map(|i| &**i).unwrap_or("-"), "request rate limited");
                    return LayerFuture::own(async { Err(PolicyError::RateLimited.into()) });
                }
            }
        }
        LayerFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_allow_a_second_of_burst_then_the_rate() {
        let start = Instant::now();
        let mut state = (10.0, start);
        let allowed = (0..20).filter(|_| take(&mut state, 10, start)).count();
        assert_eq!(allowed, 10, "the burst is one second's worth");
        let later = start + Duration::from_millis(500);
        let allowed = (0..20).filter(|_| take(&mut state, 10, later)).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn an_unchanged_limit_keeps_its_buckets_across_updates() {
        let old = RateLimit::new(Meta::default_named("rl"), Some(10), Some(1), vec![]);
        assert_eq!(old.check(None), Ok(()));
        assert_eq!(old.check(None), Err("identity"));
        let mut same = RateLimit::new(Meta::default_named("rl"), Some(10), Some(1), vec![]);
        same.inherit(&old);
        assert_eq!(same.check(None), Err("identity"), "no fresh burst");
        let mut changed = RateLimit::new(Meta::default_named("rl"), Some(5), Some(5), vec![]);
        changed.inherit(&old);
        assert_eq!(changed.check(None), Ok(()), "a new limit starts full");
    }

    #[test]
    fn overrides_replace_the_identity_limit() {
        let limit = RateLimit::new(
            Meta::default_named("rl"),
            None,
            Some(1),
            vec![Override { clients: vec!["vip".into()], bucket: Bucket::new(3) }],
        );
        let vip: Arc<str> = "vip".into();
        let other: Arc<str> = "other".into();
        assert_eq!((0..5).filter(|_| limit.check(Some(&vip)).is_ok()).count(), 3);
        assert_eq!(limit.check(Some(&other)), Ok(()));
        assert_eq!(limit.check(Some(&other)), Err("identity"));
        assert_eq!(limit.check(None), Ok(()), "unauthenticated clients share their own bucket");
        assert_eq!(limit.check(None), Err("identity"));
    }

    #[test]
    fn a_client_over_its_share_does_not_spend_the_total() {
        let limit = RateLimit::new(Meta::default_named("rl"), Some(4), Some(2), vec![]);
        let (greedy, polite): (Arc<str>, Arc<str>) = ("greedy".into(), "polite".into());
        let greedy_ok = (0..10).filter(|_| limit.check(Some(&greedy)).is_ok()).count();
        assert_eq!(greedy_ok, 2, "greedy gets its share of the burst");
        assert_eq!(
            (0..10).filter(|_| limit.check(Some(&polite)).is_ok()).count(),
            2,
            "polite still gets its own"
        );
        assert_eq!(limit.check(None), Err("total"), "and the total is spent only by admitted requests");
    }
}
