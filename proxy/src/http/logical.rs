//! Looks up the service profile of the request's logical destination and
//! attaches it, with the service's retry budget, for the layers below; and,
//! with OutboundPolicies on, the destination's outbound policy (asked by
//! address for an original destination or IP, by authority otherwise).
//!
//! The name looked up is the original destination `IP:port` (transparent
//! mode: the destination service maps a ClusterIP to its service and a pod
//! IP to its endpoint) or the request's authority when it is an IP or a
//! name in the cluster's domains (explicit mode). Anything else, or no
//! answer within the discovery timeout, goes on without a profile to its
//! original destination.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::Request;
use tower::retry::budget::TpsBudget;
use tracing::debug;

use super::{
    extensions::{LogicalPolicy, LogicalProfile},
    headers::{ip_literal, request_authority},
    BoxError, LayerFuture,
};
use crate::{
    discovery::{Discovery, ProfileRx, Resolution},
    outbound_policy::{api::Target, OutboundPolicies, OutboundPolicy, PolicyRx},
    profile::{Profile, RetryBudget},
};

/// A service's retry budget and the parameters it was built with.
type BudgetEntry = (RetryBudget, Arc<TpsBudget>);

/// Where the proxy looks things up, shared by every connection.
#[derive(Clone)]
pub struct Profiles {
    discovery: Discovery,
    /// Name suffixes the destination service answers for, e.g.
    /// `svc.cluster.local`.
    suffixes: Arc<[String]>,
    timeout: Duration,
    budgets: Arc<Mutex<HashMap<String, BudgetEntry>>>,
    /// OutboundPolicies on the same control-plane connection.
    policies: Option<OutboundPolicies>,
}

impl Profiles {
    pub fn new(discovery: Discovery, suffixes: Vec<String>, timeout: Duration) -> Self {
        Self { discovery, suffixes: suffixes.into(), timeout, budgets: Arc::default(), policies: None }
    }

    /// Also route by OutboundPolicies (HTTPRoute/GRPCRoute), asked over
    /// discovery's connection as `workload` (`WEFT_PROXY_POLICY_WORKLOAD`).
    pub fn with_outbound_policies(mut self, workload: Option<String>, idle_timeout: Duration) -> Self {
        self.policies = Some(OutboundPolicies::new(self.discovery.channel(), workload, idle_timeout));
        self
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lookup_name<B>(&self, fixed: Option<SocketAddr>, req: &Request<B>) -> Option<(String, u16)> {
        if let Some(addr) = fixed {
            return Some((addr.to_string(), addr.port()));
        }
        let authority = request_authority(req)?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_end_matches('.');
        let is_ip = ip_literal(&authority).is_some();
        let in_cluster = self.suffixes.iter().any(|s| host.ends_with(s.trim_end_matches('.')));
        (is_ip || in_cluster).then(|| (format!("{host}:{port}"), port))
    }

    /// The profile for `name` once discovery has answered, or `None` when it
    /// does not know the name or did not answer within the timeout.
    pub async fn get(&self, name: &str) -> Option<Arc<Profile>> {
        self.wait(self.discovery.profile(name)).await
    }

    async fn wait<T: Clone>(&self, mut rx: tokio::sync::watch::Receiver<Resolution<T>>) -> Option<T> {
        let resolved =
            tokio::time::timeout(self.timeout, rx.wait_for(|r| !matches!(r, Resolution::Pending))).await;
        match resolved.ok()?.ok()?.clone() {
            Resolution::Known(known) => Some(known),
            Resolution::Pending | Resolution::Unknown => None,
        }
    }

    /// The retry budget of a service, kept across profile updates unless its
    /// parameters change.
    fn budget(&self, profile: &Profile) -> Arc<TpsBudget> {
        let params = profile.retry_budget.unwrap_or_default();
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        if budgets.len() > 10_000 {
            // Bounded: budgets of services no longer profiled are rebuilt
            // on next use.
            budgets.clear();
        }
        let entry = budgets
            .entry(profile.fully_qualified_name.clone())
            .or_insert_with(|| (params, new_budget(params)));
        if entry.0 != params {
            *entry = (params, new_budget(params));
        }
        entry.1.clone()
    }
}

fn new_budget(b: RetryBudget) -> Arc<TpsBudget> {
    // TpsBudget takes the ratio as a fraction of requests (0.2 = 20%).
    Arc::new(TpsBudget::new(
        b.ttl.clamp(Duration::from_secs(1), Duration::from_secs(60)),
        b.min_retries_per_second,
        b.retry_ratio,
    ))
}

#[derive(Clone)]
pub struct LogicalLayer {
    profiles: Profiles,
    /// The connection's original destination, in transparent mode.
    fixed: Option<SocketAddr>,
}

impl LogicalLayer {
    pub fn new(profiles: Profiles, fixed: Option<SocketAddr>) -> Self {
        Self { profiles, fixed }
    }
}

impl<S> tower::Layer<S> for LogicalLayer {
    type Service = Logical<S>;
    fn layer(&self, inner: S) -> Logical<S> {
        Logical { inner, layer: self.clone(), cached: None }
    }
}

#[derive(Clone)]
pub struct Logical<S> {
    inner: S,
    layer: LogicalLayer,
    /// Transparent mode looks up one name per connection: keep its watches.
    cached: Option<(ProfileRx, Option<PolicyRx>)>,
}

impl<S> Logical<S> {
    fn watch(&mut self, name: &str) -> (ProfileRx, Option<PolicyRx>) {
        if let (Some(rxs), Some(_)) = (&self.cached, self.layer.fixed) {
            return rxs.clone();
        }
        let profiles = &self.layer.profiles;
        // An address (transparent mode, or an IP authority) is asked for
        // as one, so the control plane maps a ClusterIP to its Service.
        let target = match self.layer.fixed.or_else(|| name.parse().ok()) {
            Some(addr) => Target::Addr(addr),
            None => Target::Authority(name.to_string()),
        };
        let rxs = (profiles.discovery.profile(name), profiles.policies.as_ref().map(|p| p.watch(target)));
        if self.layer.fixed.is_some() {
            self.cached = Some(rxs.clone());
        }
        rxs
    }
}

fn attach<B>(
    profiles: &Profiles,
    req: &mut Request<B>,
    profile: Option<Arc<Profile>>,
    policy: Option<Arc<OutboundPolicy>>,
    port: u16,
) {
    if let Some(profile) = profile {
        let budget = profiles.budget(&profile);
        req.extensions_mut().insert(LogicalProfile { profile, port, budget });
    }
    if let Some(policy) = policy {
        req.extensions_mut().insert(LogicalPolicy(policy));
    }
}

fn known<T: Clone>(r: &Resolution<T>) -> Option<T> {
    match r {
        Resolution::Known(t) => Some(t.clone()),
        Resolution::Pending | Resolution::Unknown => None,
    }
}

impl<S, B> tower::Service<Request<B>> for Logical<S>
where
    S: tower::Service<Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some((name, port)) = self.layer.profiles.lookup_name(self.layer.fixed, &req) else {
            return LayerFuture::inner(self.inner.call(req));
        };
        let (profile_rx, policy_rx) = self.watch(&name);
        let pending = matches!(*profile_rx.borrow(), Resolution::Pending)
            || policy_rx.as_ref().is_some_and(|rx| matches!(*rx.borrow(), Resolution::Pending));
        // Once discovery has answered (every request after a name's first),
        // the profile and policy are at hand: no waiting, nothing to allocate.
        if !pending {
            let profile = known(&profile_rx.borrow());
            let policy = policy_rx.as_ref().and_then(|rx| known(&rx.borrow()));
            attach(&self.layer.profiles, &mut req, profile, policy, port);
            return LayerFuture::inner(self.inner.call(req));
        }
        let mut inner = super::take_ready(&mut self.inner);
        let profiles = self.layer.profiles.clone();
        LayerFuture::own(async move {
            let policy = async {
                match policy_rx {
                    Some(rx) => profiles.wait(rx).await,
                    None => None,
                }
            };
            let (profile, policy) = tokio::join!(profiles.wait(profile_rx), policy);
            if profile.is_none() && policy.is_none() {
                debug!(%name, "no profile or policy within the discovery timeout; using the original destination");
            }
            attach(&profiles, &mut req, profile, policy, port);
            inner.call(req).await.map_err(Into::into)
        })
    }
}
