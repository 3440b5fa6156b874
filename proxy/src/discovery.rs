//! Discovery: what the destination service says about a name, kept as a
//! `watch` per name so every connection and request to that name shares one
//! gRPC stream.
//!
//! Each stream is owned by a task that reconnects with jittered backoff when
//! the control plane goes away, keeping the last state it heard meanwhile
//! (traffic never stops because the control plane did), and that ends, and
//! removes its name from the cache, once nobody has watched it for the idle
//! timeout.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use foldhash::HashMap;
use linkerd2_proxy_api::destination::{
    self as api, destination_client::DestinationClient, protocol_hint, tls_identity, update,
};
use rand::Rng;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, info_span, warn, Instrument};
use weft_tls::{ConfigError, IdentityName, LocalIdentity, MeshClientConfig, ALPN_GRPC};

use crate::profile::Profile;

/// What is known about a name so far.
#[derive(Clone, Debug)]
pub enum Resolution<T> {
    /// No answer yet: requests wait for one, up to the discovery timeout.
    Pending,
    /// The destination service does not know the name (or refused it):
    /// traffic goes to the original destination.
    Unknown,
    Known(T),
}

/// An endpoint as the destination service describes it.
#[derive(Debug, Default, PartialEq)]
pub struct EndpointMeta {
    pub weight: u32,
    /// The identity the endpoint's proxy proves with TLS, when it is meshed.
    pub identity: Option<String>,
    /// The endpoint's proxy accepts HTTP/2 from other proxies.
    pub http2: bool,
    pub labels: Vec<(String, String)>,
}

/// A service's endpoints. `exists` distinguishes "no such service" from "a
/// service with no ready endpoints right now".
#[derive(Clone, Debug, Default)]
pub struct EndpointSet {
    pub exists: bool,
    pub endpoints: HashMap<SocketAddr, Arc<EndpointMeta>>,
}

pub type ProfileRx = watch::Receiver<Resolution<Arc<Profile>>>;
pub type EndpointsRx = watch::Receiver<Resolution<Arc<EndpointSet>>>;

#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    /// Kept for the other control-plane APIs (policies) on the same server.
    channel: Channel,
    client: DestinationClient<Channel>,
    context_token: String,
    idle_timeout: Duration,
    profiles: Cache<Arc<Profile>>,
    endpoints: Cache<Arc<EndpointSet>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid destination service address {0:?}: expected HOST:PORT")]
pub struct InvalidAddr(pub String);

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Discovery {
    /// `addr` is the destination service's `host:port`, `tls` how to reach
    /// it ([`control_plane_tls`]); the channel connects lazily and
    /// reconnects by itself, so a control plane that is not up yet is not an
    /// error here.
    pub fn new(
        addr: &str,
        tls: Option<MeshClientConfig>,
        context_token: String,
        idle_timeout: Duration,
    ) -> Result<Self, InvalidAddr> {
        Ok(Self::with_channel(control_plane_channel(addr, tls)?, context_token, idle_timeout))
    }

    pub fn with_channel(channel: Channel, context_token: String, idle_timeout: Duration) -> Self {
        Discovery {
            inner: Arc::new(Inner {
                client: DestinationClient::new(channel.clone()),
                channel,
                context_token,
                idle_timeout,
                profiles: Cache::default(),
                endpoints: Cache::default(),
            }),
        }
    }

    /// The channel to the destination service, for other APIs it serves
    /// (one connection for all of them).
    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    pub fn profile(&self, name: &str) -> ProfileRx {
        let inner = self.inner.clone();
        watch_cached(&self.inner.profiles, name, self.inner.idle_timeout, discover_span, move |name, tx| {
            follow_profile(inner, name, tx)
        })
    }

    pub fn endpoints(&self, name: &str) -> EndpointsRx {
        let inner = self.inner.clone();
        watch_cached(&self.inner.endpoints, name, self.inner.idle_timeout, discover_span, move |name, tx| {
            follow_endpoints(inner, name, tx)
        })
    }
}

/// A gRPC channel to a control-plane service at `host:port`, over TLS
/// when `tls` says so, connecting lazily and reconnecting by itself.
pub fn control_plane_channel(addr: &str, tls: Option<MeshClientConfig>) -> Result<Channel, InvalidAddr> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Channel::from_shared(format!("{scheme}://{addr}"))
        .map_err(|_| InvalidAddr(addr.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    Ok(match tls {
        Some(tls) => weft_tls::grpc::connect_lazy(endpoint, addr, tls),
        None => endpoint.connect_lazy(),
    })
}

/// How to reach the control-plane API at `addr`: TLS (ALPN `h2`, SNI the
/// name, the certificate required to carry it, as linkerd2-proxy does) when
/// config.rs resolved a `name` for it, else plaintext.
///
/// config.rs gives a name only to a proxy with an identity; a name without
/// one is refused here rather than silently sent in the clear.
pub fn control_plane_tls(
    api: &'static str,
    addr: &str,
    name: Option<&IdentityName>,
    identity: Option<&LocalIdentity>,
) -> Result<Option<MeshClientConfig>, ConfigError> {
    match (name, identity) {
        (Some(name), Some(local)) => {
            info!(api, %addr, identity = %name, "control plane over TLS");
            local.tls.client_config(name, &[ALPN_GRPC]).map(Some)
        }
        (Some(name), None) => {
            Err(ConfigError::ServerName(format!("{name} (no local identity to verify it)")))
        }
        (None, _) => {
            if !crate::config::is_loopback_host(addr) {
                warn!(api, %addr, "control plane in plaintext off loopback: no identity (WEFT_PROXY_IDENTITY_*) to verify it with");
            }
            Ok(None)
        }
    }
}

type Cache<T> = WatchCache<String, T>;

/// Watches by key, each fed by one task while anyone holds its receiver.
pub(crate) type WatchCache<K, T> = Arc<Mutex<HashMap<K, watch::Receiver<Resolution<T>>>>>;

/// `key`'s watch from `cache`, or a new one fed by `follow`'s task (in
/// `span`), which ends, taking the entry with it, once only the cache has
/// held the receiver for `idle_timeout`. Shared by discovery and the
/// OutboundPolicies client.
pub(crate) fn watch_cached<K, Q, T, F, Fut>(
    cache: &WatchCache<K, T>,
    key: &Q,
    idle_timeout: Duration,
    span: impl FnOnce(&K) -> tracing::Span,
    follow: F,
) -> watch::Receiver<Resolution<T>>
where
    K: std::borrow::Borrow<Q> + Clone + Eq + std::hash::Hash + Send + 'static,
    Q: ToOwned<Owned = K> + Eq + std::hash::Hash + ?Sized,
    T: Send + Sync + 'static,
    F: FnOnce(K, watch::Sender<Resolution<T>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut entries = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rx) = entries.get(key) {
        return rx.clone();
    }
    let key = key.to_owned();
    let (tx, rx) = watch::channel(Resolution::Pending);
    entries.insert(key.clone(), rx.clone());
    drop(entries);
    let stream = follow(key.clone(), tx.clone());
    let cache = cache.clone();
    let span = span(&key);
    tokio::spawn(
        async move {
            tokio::select! {
                () = stream => {}
                () = idle(&tx, idle_timeout) => debug!("no longer watched"),
            }
            cache.lock().unwrap_or_else(|p| p.into_inner()).remove::<K>(&key);
        }
        .instrument(span),
    );
    rx
}

fn discover_span(name: &String) -> tracing::Span {
    info_span!("discover", name = %name)
}

/// Resolves once only the cache itself has held the name for `timeout`.
async fn idle<T>(tx: &watch::Sender<T>, timeout: Duration) {
    let mut quiet_since = None;
    let tick = (timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(tick).await;
        // One receiver is the cache's own.
        if tx.receiver_count() <= 1 {
            let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= timeout {
                return;
            }
        } else {
            quiet_since = None;
        }
    }
}

async fn follow_profile(inner: Arc<Inner>, name: String, tx: watch::Sender<Resolution<Arc<Profile>>>) {
    let open = |mut client: DestinationClient<Channel>, req| async move { client.get_profile(req).await };
    // Every profile message is complete in itself.
    let per_stream = || |pb: api::DestinationProfile| Some(Arc::new(Profile::from_api(pb)));
    follow(&inner, &name, &tx, open, per_stream).await
}

async fn follow_endpoints(inner: Arc<Inner>, name: String, tx: watch::Sender<Resolution<Arc<EndpointSet>>>) {
    let open = |mut client: DestinationClient<Channel>, req| async move { client.get(req).await };
    // Endpoint updates are deltas, and each stream starts from nothing: the
    // server sends the whole set again after a reconnect.
    let per_stream = || {
        let mut set = EndpointSet { exists: true, endpoints: HashMap::default() };
        move |pb: api::Update| {
            apply(&mut set, pb.update?);
            debug!(endpoints = set.endpoints.len(), exists = set.exists, "endpoints updated");
            Some(Arc::new(set.clone()))
        }
    };
    follow(&inner, &name, &tx, open, per_stream).await
}

/// Follows one name's stream forever: opens it, publishes what each message
/// makes of the state, and when the stream fails keeps the last state and
/// reopens it after a jittered backoff.
async fn follow<T, M, Open, Opened, PerStream, Apply>(
    inner: &Inner,
    name: &str,
    tx: &watch::Sender<Resolution<T>>,
    mut open: Open,
    mut per_stream: PerStream,
) where
    Open: FnMut(DestinationClient<Channel>, api::GetDestination) -> Opened,
    Opened: Future<Output = Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>>,
    PerStream: FnMut() -> Apply,
    Apply: FnMut(M) -> Option<T>,
{
    let mut backoff = Backoff::default();
    loop {
        let req = api::GetDestination {
            scheme: "k8s".into(),
            path: name.to_string(),
            context_token: inner.context_token.clone(),
        };
        match open(inner.client.clone(), req).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                let mut apply = per_stream();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            backoff.reset();
                            if let Some(state) = apply(msg) {
                                let _ = tx.send(Resolution::Known(state));
                            }
                        }
                        Ok(None) => break debug!("stream ended"),
                        Err(status) => {
                            break info!(code = ?status.code(), message = status.message(), "stream failed; keeping the last known state")
                        }
                    }
                }
            }
            Err(status) if is_unknown(&status) => {
                debug!(code = ?status.code(), "the destination service does not serve this name");
                let _ = tx.send(Resolution::Unknown);
                // Names the control plane refuses stay refused for a while:
                // ask again slowly, not in a tight loop.
                backoff.max_out();
            }
            Err(status) => {
                info!(code = ?status.code(), message = status.message(), "destination service unavailable; keeping the last known state");
                // A name with no answer yet goes to its original destination
                // instead of waiting for a control plane that is down.
                tx.send_if_modified(|r| {
                    let pending = matches!(r, Resolution::Pending);
                    if pending {
                        *r = Resolution::Unknown;
                    }
                    pending
                });
            }
        }
        backoff.wait().await;
    }
}

/// Linkerd's destination service answers InvalidArgument for names it does
/// not serve (outside the cluster's domains); NotFound is treated alike.
fn is_unknown(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound)
}

fn apply(set: &mut EndpointSet, update: update::Update) {
    match update {
        update::Update::Add(add) => {
            set.exists = true;
            for addr in add.addrs {
                if let Some((sa, meta)) = endpoint_from_api(addr) {
                    set.endpoints.insert(sa, meta);
                }
            }
        }
        update::Update::Remove(remove) => {
            for addr in remove.addrs {
                if let Ok(sa) = SocketAddr::try_from(addr) {
                    set.endpoints.remove(&sa);
                }
            }
        }
        update::Update::NoEndpoints(none) => {
            set.exists = none.exists;
            set.endpoints.clear();
        }
    }
}

pub fn endpoint_from_api(pb: api::WeightedAddr) -> Option<(SocketAddr, Arc<EndpointMeta>)> {
    let addr = SocketAddr::try_from(pb.addr?).ok()?;
    let identity = pb.tls_identity.and_then(|id| match id.strategy? {
        tls_identity::Strategy::DnsLikeIdentity(dns) => Some(dns.name),
        // We only issue DNS-like identities; a URI identity is one we could
        // not verify, so the endpoint is treated as unmeshed.
        tls_identity::Strategy::UriLikeIdentity(_) => None,
    });
    let http2 = matches!(pb.protocol_hint.and_then(|h| h.protocol), Some(protocol_hint::Protocol::H2(_)));
    let mut labels: Vec<(String, String)> = pb.metric_labels.into_iter().collect();
    labels.sort();
    // Weight 0 would never be picked; the proto's default weight is 0, so
    // treat it as "unweighted".
    let weight = if pb.weight == 0 { 1 } else { pb.weight };
    Some((addr, Arc::new(EndpointMeta { weight, identity, http2, labels })))
}

/// Exponential backoff with full jitter, so proxies that lost the control
/// plane together do not all return at the same instant.
pub struct Backoff {
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { current: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.current = BACKOFF_MIN;
    }

    pub fn max_out(&mut self) {
        self.current = BACKOFF_MAX;
    }

    pub async fn wait(&mut self) {
        let jittered = rand::rng().random_range(self.current / 2..=self.current);
        tokio::time::sleep(jittered).await;
        self.current = (self.current * 2).min(BACKOFF_MAX);
    }
}
