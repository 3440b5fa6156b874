//! Authorization: each HTTP request is matched to a route of the port's
//! current policy and checked against that route's authorizations (first
//! match wins); an opaque connection is checked once against the server's
//! and closed when a policy change stops permitting it.
//!
//! Denials are errors ([`PolicyError`]) that the errors layer above turns
//! into 403 / 404 (gRPC: PERMISSION_DENIED / NOT_FOUND), with the reason in
//! `l5d-proxy-error`.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tokio::sync::watch;
use tracing::info;

use super::{
    authorized, authorized_index, metrics::ConnMetrics, routes::RouteMatch, ClientTls, ServerPolicy,
};
use crate::http::{BoxBody, BoxError, LayerFuture};

pub type PolicyRx = watch::Receiver<Arc<ServerPolicy>>;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("unauthorized request on route")]
    Unauthorized,
    #[error("no route found for request")]
    NoRoute,
    #[error("too many requests")]
    RateLimited,
}

/// Who is on the other end of one inbound connection, and its metrics.
pub struct Client {
    pub addr: SocketAddr,
    pub tls: ClientTls,
    pub metrics: ConnMetrics,
}

impl Client {
    pub fn new(addr: SocketAddr, target: SocketAddr, tls: ClientTls) -> Arc<Self> {
        let metrics = ConnMetrics::new(target, &tls);
        Arc::new(Client { addr, tls, metrics })
    }

    fn id(&self) -> &str {
        self.tls.id().unwrap_or("-")
    }
}

/// The route an authorized request matched, in the policy it matched in;
/// put in the request's extensions when a later layer needs it (the
/// route's filters, the server's rate limit).
#[derive(Clone)]
pub struct Matched {
    pub policy: Arc<ServerPolicy>,
    pub route: RouteMatch,
}

#[derive(Clone)]
pub struct AuthorizeLayer {
    policy: PolicyRx,
    client: Arc<Client>,
}

impl AuthorizeLayer {
    pub fn new(policy: PolicyRx, client: Arc<Client>) -> Self {
        Self { policy, client }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner, policy: self.policy.clone(), client: self.client.clone() }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: PolicyRx,
    client: Arc<Client>,
}

impl<S> tower::Service<Request<BoxBody>> for Authorize<S>
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

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        match check(&self.policy.borrow(), &self.client, &req) {
            Ok(Some(matched)) => {
                req.extensions_mut().insert(matched);
            }
            Ok(None) => {}
            Err(error) => return LayerFuture::own(async move { Err(error.into()) }),
        }
        LayerFuture::inner(self.inner.call(req))
    }
}

/// Checks one request against `policy`; `Ok(Some)` when a later layer
/// needs to know the route.
pub fn check<B>(
    policy: &Arc<ServerPolicy>,
    client: &Client,
    req: &Request<B>,
) -> Result<Option<Matched>, PolicyError> {
    let Some(m) = policy.route_for(req) else {
        client.metrics.http_route_not_found(&policy.meta);
        info!(server = %policy.meta, client.ip = %client.addr.ip(), client.id = client.id(), path = req.uri().path(), "request denied: no route");
        return Err(PolicyError::NoRoute);
    };
    let route = &policy.routes[m.route];
    let Some(i) = authorized_index(&route.authorizations, client.addr.ip(), &client.tls) else {
        client.metrics.http_denied(&policy.meta, &route.meta);
        info!(server = %policy.meta, route = %route.meta, client.ip = %client.addr.ip(), client.id = client.id(), "request denied");
        return Err(PolicyError::Unauthorized);
    };
    if route.authorizations[i].is_audit() {
        info!(server = %policy.meta, route = %route.meta, client.ip = %client.addr.ip(), client.id = client.id(), "would deny (audit)");
    }
    client.metrics.http_allowed(policy, m.route, i);
    let needed = policy.rate_limit.is_some() || !route.rules[m.rule].filters.is_empty();
    Ok(needed.then(|| Matched { policy: policy.clone(), route: m }))
}

/// Checks an opaque connection against the server-level authorizations.
pub fn check_tcp(policy: &ServerPolicy, client: &Client) -> bool {
    match authorized(&policy.authorizations, client.addr.ip(), &client.tls) {
        Some(authz) => {
            if authz.is_audit() {
                info!(server = %policy.meta, client.ip = %client.addr.ip(), client.id = client.id(), "would deny (audit)");
            }
            client.metrics.tcp_allowed(&policy.meta, &authz.meta);
            true
        }
        None => {
            client.metrics.tcp_denied(&policy.meta);
            info!(server = %policy.meta, client.ip = %client.addr.ip(), client.id = client.id(), "connection denied");
            false
        }
    }
}

/// Resolves when a policy change no longer permits the connection (counted
/// in `inbound_tcp_authz_terminate_total`); never while it is permitted.
pub async fn revoked(mut policy: PolicyRx, client: &Client) {
    loop {
        if policy.changed().await.is_err() {
            // The policy can no longer change.
            return std::future::pending().await;
        }
        let current = policy.borrow_and_update().clone();
        if authorized(&current.authorizations, client.addr.ip(), &client.tls).is_none() {
            client.metrics.tcp_terminated(&current.meta);
            info!(server = %current.meta, client.ip = %client.addr.ip(), client.id = client.id(), "connection denied by a policy change; closing it");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DefaultPolicy;

    fn client(ip: &str) -> Arc<Client> {
        Client::new(
            SocketAddr::new(ip.parse().unwrap(), 5000),
            "10.0.0.1:80".parse().unwrap(),
            ClientTls::Plaintext,
        )
    }

    #[test]
    fn deny_refuses_all_but_probes() {
        let p = Arc::new(DefaultPolicy::Deny.server(80, &[(80, "/live".into())], &[]));
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert!(matches!(check(&p, &client("10.1.1.1"), &get("/")), Err(PolicyError::Unauthorized)));
        assert!(matches!(check(&p, &client("10.1.1.1"), &get("/live")), Ok(None)));
        assert!(!check_tcp(&p, &client("10.1.1.1")));
    }

    /// A policy shaped like a real one: probes, the default route, and a
    /// few routes with mesh and network authorizations.
    fn realistic_policy() -> ServerPolicy {
        use crate::policy::{
            routes::{PathMatch, RequestMatch, Rule},
            Authentication, Authz, Meta, Network, Route,
        };
        let mut p =
            DefaultPolicy::AllUnauthenticated.server(80, &[(80, "/live".into()), (80, "/ready".into())], &[]);
        for name in ["users", "orders", "items", "admin"] {
            p.routes.push(Route {
                meta: Meta::default_named(name),
                hosts: vec![],
                authorizations: vec![
                    Authz {
                        meta: Meta::default_named("mesh"),
                        networks: Network::all(),
                        authentication: Authentication::MeshTls {
                            identities: Default::default(),
                            suffixes: vec![vec!["ns".into(), "serviceaccount".into()]],
                        },
                    },
                    Authz {
                        meta: Meta::default_named("cluster"),
                        networks: vec![Network { net: "10.0.0.0/8".parse().unwrap(), except: vec![] }],
                        authentication: Authentication::Unauthenticated,
                    },
                ],
                rules: vec![Rule {
                    matches: vec![RequestMatch {
                        path: Some(PathMatch::Prefix(format!("/api/{name}"))),
                        method: Some(http::Method::GET),
                        ..Default::default()
                    }],
                    filters: vec![],
                }],
            });
        }
        p
    }

    /// Counts this thread's allocations, so the allow path can be shown to
    /// make none.
    struct CountingAlloc;

    thread_local! {
        static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    // SAFETY: forwards to the system allocator unchanged.
    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: as above.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOC: CountingAlloc = CountingAlloc;

    #[test]
    fn an_allowed_request_allocates_nothing_once_its_counter_is_cached() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            let (_tx, rx) = watch::channel(Arc::new(realistic_policy()));
            let client = client("10.1.1.1");
            let req = Request::get("/api/items/42").header("host", "web.ns:80").body(()).unwrap();
            let first = ALLOCATIONS.with(|n| n.get());
            assert!(matches!(check(&rx.borrow(), &client, &req), Ok(None)));
            let before = ALLOCATIONS.with(|n| n.get());
            assert!(before > first, "the first request builds its counter (and the count works)");
            for _ in 0..100 {
                assert!(matches!(check(&rx.borrow(), &client, &req), Ok(None)));
            }
            assert_eq!(ALLOCATIONS.with(|n| n.get()) - before, 0);
        });
        let rendered = recorder.handle().render();
        assert!(rendered.contains("authz_name=\"cluster\""), "{rendered}");
        assert!(rendered.contains("route_name=\"items\""), "{rendered}");
    }

    /// The data path's cost per allowed request: the policy borrowed from
    /// its watch, the route matched among several, the authorizations
    /// checked, the allow counter (a real Prometheus recorder) counted.
    #[test]
    #[ignore = "a measurement: cargo test -p weft-proxy --lib -- --ignored --nocapture authorization_cost"]
    fn authorization_cost() {
        use std::time::Instant;

        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            let (_tx, rx) = watch::channel(Arc::new(realistic_policy()));
            let client = client("10.1.1.1");
            let req = Request::get("/api/items/42").header("host", "web.ns:80").body(()).unwrap();
            let n = 200_000u32;
            for _ in 0..1000 {
                assert!(matches!(check(&rx.borrow(), &client, &req), Ok(None)));
            }
            let start = Instant::now();
            for _ in 0..n {
                let allowed = check(&rx.borrow(), &client, &req);
                std::hint::black_box(allowed.is_ok());
            }
            let ns = start.elapsed().as_nanos() / u128::from(n);
            println!("{ns} ns per authorization check of an allowed request (this build's profile)");
        });
    }
}
