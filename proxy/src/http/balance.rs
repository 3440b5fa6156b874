//! Sends each request to one endpoint of its backend service, chosen by the
//! backend's balancer, and reports back how the request went so slow and
//! failing endpoints get less traffic.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use foldhash::HashMap;
use http::{Request, Response};
use tokio::time::Instant;
use tracing::debug;

use super::{
    extensions::{Backend, EndpointInfo, FailureAccrual, HedgeEndpoint, RouteError},
    BoxError, Endpoint, LayerFuture,
};
use crate::{
    balance::{Balancer, Outcome, Pick},
    connect::is_connect_error,
    discovery::{Discovery, Resolution},
};

/// A balancer and when a request last used it.
type LastUsed = (Arc<Balancer>, Instant);

/// One balancer per backend service, shared by all connections, dropped
/// once unused for the idle timeout.
#[derive(Clone)]
pub struct Balancers {
    discovery: Discovery,
    discovery_timeout: Duration,
    idle_timeout: Duration,
    map: Arc<Mutex<HashMap<Arc<str>, LastUsed>>>,
}

impl Balancers {
    pub fn new(discovery: Discovery, discovery_timeout: Duration, idle_timeout: Duration) -> Self {
        let balancers = Self { discovery, discovery_timeout, idle_timeout, map: Arc::default() };
        let weak = Arc::downgrade(&balancers.map);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                let Some(map) = weak.upgrade() else { return };
                let now = Instant::now();
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|_, (_, used)| now.duration_since(*used) < idle_timeout);
            }
        });
        balancers
    }

    fn get(&self, backend: &Arc<str>) -> Arc<Balancer> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some((b, used)) = map.get_mut(backend) {
            *used = now;
            return b.clone();
        }
        let b = Arc::new(Balancer::new(self.discovery.endpoints(backend)));
        map.insert(backend.clone(), (b.clone(), now));
        b
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// An endpoint of `backend`, waiting up to the discovery timeout for a
    /// first answer about it.
    pub async fn pick(&self, backend: &Arc<str>) -> Pick {
        self.pick_avoiding(backend, None).await
    }

    /// As `pick`, but not `avoid` while the backend has another endpoint.
    pub async fn pick_avoiding(&self, backend: &Arc<str>, avoid: Option<SocketAddr>) -> Pick {
        let balancer = self.get(backend);
        let pick = balancer.pick_avoiding(avoid);
        if !matches!(pick, Pick::Pending) {
            return pick;
        }
        let mut rx = balancer.watch();
        let waited =
            tokio::time::timeout(self.discovery_timeout, rx.wait_for(|r| !matches!(r, Resolution::Pending)))
                .await;
        if waited.is_ok() {
            balancer.pick_avoiding(avoid)
        } else {
            Pick::Pending
        }
    }
}

#[derive(Clone)]
pub struct BalanceLayer {
    balancers: Balancers,
}

impl BalanceLayer {
    pub fn new(balancers: Balancers) -> Self {
        Self { balancers }
    }
}

impl<S> tower::Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance { inner, balancers: self.balancers.clone() }
    }
}

#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    balancers: Balancers,
}

impl<S, B, RspB> tower::Service<Request<B>> for Balance<S>
where
    S: tower::Service<Request<B>, Response = Response<RspB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
    RspB: Send + 'static,
{
    type Response = Response<RspB>;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Response<RspB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Requests for a lone pod, or without a profile, already know where
        // they go.
        let Some(Backend(name)) = req.extensions().get::<Backend>().cloned() else {
            return LayerFuture::inner(self.inner.call(req));
        };
        let accrual = req.extensions().get::<FailureAccrual>().map(|a| a.0).unwrap_or_default();
        let hedge = req.extensions().get::<HedgeEndpoint>().cloned();
        let mut inner = super::take_ready(&mut self.inner);
        let balancers = self.balancers.clone();
        LayerFuture::own(async move {
            let avoid = hedge.as_ref().and_then(|first| first.0.get().copied());
            let endpoint = match balancers.pick_avoiding(&name, avoid).await {
                Pick::Endpoint(endpoint) => endpoint,
                Pick::NoEndpoints { exists: true } => {
                    return Err(RouteError::NoEndpoints(name.to_string()).into())
                }
                Pick::Pending | Pick::Unknown | Pick::NoEndpoints { exists: false } => {
                    debug!(backend = %name, "not discovered; using the original destination");
                    return inner.call(req).await.map_err(Into::into);
                }
            };
            if let Some(first) = hedge {
                let _ = first.0.set(endpoint.addr);
            }
            req.extensions_mut().insert(Endpoint(endpoint.addr));
            req.extensions_mut().insert(EndpointInfo(endpoint.meta.clone()));
            let in_flight = endpoint.start(accrual);
            let res = inner.call(req).await.map_err(Into::into);
            in_flight.complete(match &res {
                Ok(rsp) if rsp.status().is_server_error() => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(e) if is_connect_error(&**e) => Outcome::Unreachable,
                Err(_) => Outcome::Failure,
            });
            res
        })
    }
}
