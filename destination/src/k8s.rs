//! The Kubernetes backend: one kube-runtime watcher per kind, cluster-wide,
//! feeding the shared index. Subscribers never talk to the API server, so
//! a thousand proxies cost the same API load as one.
//!
//! A watcher that fails (network error, 410 Gone after a compaction, a
//! restarted API server) is restarted by kube-runtime with backoff; its
//! relist arrives as `Init … InitDone` and replaces that kind's records in
//! one step. Subscribers stay connected throughout and see only the net
//! change, if any.

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{watcher, WatchStreamExt},
    Client, Resource,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch as channel;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{
    index::Index,
    model::{self, Kind, ModelError, ObjKey, Object},
    route_status, MeshConfig,
};

/// Which served version of `split.smi-spec.io` to watch. Both carry the same
/// `service`/`backends`; v1alpha4 adds `matches`, which weft ignores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitVersion {
    /// The newest of v1alpha4 and v1alpha2 the API server serves.
    Auto,
    V1alpha2,
    V1alpha4,
}

/// How often to look again for a CRD that is not installed yet.
const CRD_RECHECK: Duration = Duration::from_secs(30);

/// Marks the index synced once every watched kind has listed once.
struct SyncTracker {
    pending: Mutex<HashSet<Kind>>,
    index: Index,
}

impl SyncTracker {
    fn done(&self, kind: Kind) {
        let Ok(mut pending) = self.pending.lock() else { return };
        if pending.remove(&kind) && pending.is_empty() {
            info!("all kinds listed; serving");
            self.index.set_synced();
        }
    }
}

/// Starts every watcher; they run until the runtime shuts down.
pub fn spawn(client: Client, index: Index, cfg: MeshConfig, split_version: SplitVersion) {
    let mut pending: HashSet<Kind> = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Namespace,
        Kind::TrafficSplit,
        Kind::ServiceProfile,
    ]
    .into();
    pending.extend(POLICY_CRDS.iter().map(|crd| crd.kind));
    let sync = Arc::new(SyncTracker { pending: Mutex::new(pending), index: index.clone() });
    let shown = Arc::new(channel::Sender::new(ShownStatus::new()));
    tokio::spawn(
        write_route_statuses(client.clone(), index.clone(), shown.subscribe())
            .instrument(info_span!("route_status")),
    );

    tokio::spawn(
        watch_kind(
            Api::<core::Service>::all(client.clone()),
            Kind::Service,
            index.clone(),
            sync.clone(),
            false,
            |s| model::service(s).map(|r| Some(Object::Service(r))),
        )
        .instrument(info_span!("watch", kind = "Service")),
    );
    tokio::spawn(
        watch_kind(
            Api::<discovery::EndpointSlice>::all(client.clone()),
            Kind::EndpointSlice,
            index.clone(),
            sync.clone(),
            false,
            |s| model::endpoint_slice(s).map(|r| r.map(Object::EndpointSlice)),
        )
        .instrument(info_span!("watch", kind = "EndpointSlice")),
    );
    let pod_cfg = cfg.clone();
    tokio::spawn(
        watch_kind(
            Api::<core::Pod>::all(client.clone()),
            Kind::Pod,
            index.clone(),
            sync.clone(),
            false,
            move |p| model::pod(p, &pod_cfg).map(|r| Some(Object::Pod(r))),
        )
        .instrument(info_span!("watch", kind = "Pod")),
    );
    // Namespaces carry the namespace-wide default inbound policy.
    tokio::spawn(
        watch_kind(
            Api::<core::Namespace>::all(client.clone()),
            Kind::Namespace,
            index.clone(),
            sync.clone(),
            false,
            |n| model::namespace(n).map(|r| Some(Object::Namespace(r))),
        )
        .instrument(info_span!("watch", kind = "Namespace")),
    );
    tokio::spawn(
        watch_crd(
            client.clone(),
            CrdKind::TrafficSplit(split_version),
            index.clone(),
            sync.clone(),
            cfg.clone(),
            None,
        )
        .instrument(info_span!("watch", kind = "TrafficSplit")),
    );
    tokio::spawn(
        watch_crd(client.clone(), CrdKind::ServiceProfile, index.clone(), sync.clone(), cfg.clone(), None)
            .instrument(info_span!("watch", kind = "ServiceProfile")),
    );
    // Linkerd's policy resources: each CRD on its own, so a cluster serving
    // some of them (or none) still watches the rest.
    for crd in &POLICY_CRDS {
        tokio::spawn(
            watch_crd(
                client.clone(),
                CrdKind::Policy(crd),
                index.clone(),
                sync.clone(),
                cfg.clone(),
                Some(shown.clone()),
            )
            .instrument(info_span!("watch", kind = crd.kind.as_str())),
        );
    }
}

/// A policy or route kind indexed, watched in its storage version.
struct PolicyCrd {
    kind: Kind,
    /// The API's kind name (both HTTPRoute groups call it `HTTPRoute`).
    api_kind: &'static str,
    group_version: (&'static str, &'static str),
    plural: &'static str,
}

const fn policy_crd(
    kind: Kind,
    api_kind: &'static str,
    version: &'static str,
    plural: &'static str,
) -> PolicyCrd {
    PolicyCrd { kind, api_kind, group_version: ("policy.linkerd.io", version), plural }
}

static POLICY_CRDS: [PolicyCrd; 8] = [
    policy_crd(Kind::Server, "Server", "v1beta3", "servers"),
    policy_crd(Kind::AuthorizationPolicy, "AuthorizationPolicy", "v1alpha1", "authorizationpolicies"),
    policy_crd(Kind::MeshTLSAuthentication, "MeshTLSAuthentication", "v1alpha1", "meshtlsauthentications"),
    policy_crd(Kind::NetworkAuthentication, "NetworkAuthentication", "v1alpha1", "networkauthentications"),
    policy_crd(
        Kind::HTTPLocalRateLimitPolicy,
        "HTTPLocalRateLimitPolicy",
        "v1alpha1",
        "httplocalratelimitpolicies",
    ),
    policy_crd(Kind::HTTPRoute, "HTTPRoute", "v1beta3", "httproutes"),
    PolicyCrd {
        kind: Kind::GatewayHTTPRoute,
        api_kind: "HTTPRoute",
        group_version: ("gateway.networking.k8s.io", "v1"),
        plural: "httproutes",
    },
    PolicyCrd {
        kind: Kind::GRPCRoute,
        api_kind: "GRPCRoute",
        group_version: ("gateway.networking.k8s.io", "v1"),
        plural: "grpcroutes",
    },
];

#[derive(Clone, Copy)]
enum CrdKind {
    TrafficSplit(SplitVersion),
    ServiceProfile,
    Policy(&'static PolicyCrd),
}

impl CrdKind {
    fn kind(self) -> Kind {
        match self {
            CrdKind::TrafficSplit(_) => Kind::TrafficSplit,
            CrdKind::ServiceProfile => Kind::ServiceProfile,
            CrdKind::Policy(crd) => crd.kind,
        }
    }

    /// Candidate (group, version) pairs, preferred first.
    fn versions(self) -> &'static [(&'static str, &'static str)] {
        match self {
            CrdKind::TrafficSplit(SplitVersion::Auto) => {
                &[("split.smi-spec.io", "v1alpha4"), ("split.smi-spec.io", "v1alpha2")]
            }
            CrdKind::TrafficSplit(SplitVersion::V1alpha4) => &[("split.smi-spec.io", "v1alpha4")],
            CrdKind::TrafficSplit(SplitVersion::V1alpha2) => &[("split.smi-spec.io", "v1alpha2")],
            CrdKind::ServiceProfile => &[("linkerd.io", "v1alpha2")],
            CrdKind::Policy(crd) => std::slice::from_ref(&crd.group_version),
        }
    }

    fn plural(self) -> &'static str {
        match self {
            CrdKind::TrafficSplit(_) => "trafficsplits",
            CrdKind::ServiceProfile => "serviceprofiles",
            CrdKind::Policy(crd) => crd.plural,
        }
    }
}

/// Whether the API server serves `plural` in `group/version`.
async fn served(client: &Client, group: &str, version: &str, plural: &str) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(&format!("{group}/{version}")).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Watches a custom resource once its CRD is found. Until then the kind
/// counts as synced and empty: a cluster without SMI or ServiceProfiles is a
/// normal cluster, and must not keep discovery from becoming ready.
/// `shown`: where a route kind records each route's status as the API shows
/// it, for [`write_route_statuses`].
async fn watch_crd(
    client: Client,
    crd: CrdKind,
    index: Index,
    sync: Arc<SyncTracker>,
    cfg: MeshConfig,
    shown: Option<Arc<channel::Sender<ShownStatus>>>,
) {
    let kind = crd.kind();
    let (group, version) = loop {
        let mut found = None;
        let mut failed = false;
        for (group, version) in crd.versions() {
            match served(&client, group, version, crd.plural()).await {
                Ok(true) => {
                    found = Some((*group, *version));
                    break;
                }
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, group, version, "API discovery failed; retrying");
                    failed = true;
                }
            }
        }
        if let Some(found) = found {
            break found;
        }
        if !failed {
            debug!(kind = kind.as_str(), "CRD not installed; treating as empty and checking again later");
            index.replace(kind, Vec::new());
            sync.done(kind);
        }
        tokio::time::sleep(if failed { Duration::from_secs(2) } else { CRD_RECHECK }).await;
    };
    info!(group, version, "watching {}", crd.plural());
    let api_kind = match crd {
        CrdKind::Policy(crd) => crd.api_kind,
        _ => kind.as_str(),
    };
    let gvk = GroupVersionKind::gvk(group, version, api_kind);
    let api = Api::<DynamicObject>::all_with(client, &ApiResource::from_gvk_with_plural(&gvk, crd.plural()));
    // A CRD we may not list (a ClusterRole from before weft read it) counts
    // as empty, like a CRD that is not installed, rather than keeping the
    // whole index from ever becoming ready: it is optional.
    watch_kind(api, kind, index, sync, true, move |obj: &DynamicObject| {
        let key = ObjKey::from_meta(&obj.metadata)?;
        let spec = obj.data.get("spec").cloned().unwrap_or(serde_json::Value::Null);
        Ok(Some(match crd {
            CrdKind::TrafficSplit(_) => Object::TrafficSplit(model::traffic_split(key, &spec)?),
            CrdKind::ServiceProfile => Object::ServiceProfile(model::service_profile(key, &spec)?),
            CrdKind::Policy(crd) => {
                let meta = serde_json::to_value(&obj.metadata)?;
                if let Some(shown) = shown.as_ref().filter(|_| route_status::ROUTE_KINDS.contains(&crd.kind))
                {
                    let status = Shown {
                        resource_version: obj.metadata.resource_version.clone(),
                        parents: obj.data["status"]["parents"].as_array().cloned().unwrap_or_default(),
                    };
                    shown.send_if_modified(|all| {
                        let entry = (crd.kind, key.clone());
                        let changed = all.get(&entry) != Some(&status);
                        all.insert(entry, status);
                        changed
                    });
                }
                model::policy_object(crd.kind, key, &meta, &spec, &cfg)?
            }
        }))
    })
    .await
}

/// Feeds the index from one kind's watch. `optional`: a kind the mesh works
/// without (a custom resource), whose `403 Forbidden` on the first LIST marks
/// it synced and empty, with a warning, while the watcher keeps retrying, so
/// granting the permission later loads it.
async fn watch_kind<K>(
    api: Api<K>,
    kind: Kind,
    index: Index,
    sync: Arc<SyncTracker>,
    optional: bool,
    convert: impl Fn(&K) -> Result<Option<Object>, ModelError>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut listed = false;
    let mut forbidden_reported = false;
    let key = |obj: &K| {
        let key = ObjKey::from_meta(obj.meta()).ok()?;
        // Cluster-scoped: from_meta's "default" namespace is not theirs.
        Some(if kind == Kind::Namespace { model::namespace_key(&key.name) } else { key })
    };
    let converted = |obj: &K| match convert(obj) {
        Ok(o) => o,
        Err(error) => {
            // Reported, and the object treated as absent: serving a stale
            // version of something now invalid would hide the problem.
            metrics::counter!("destination_invalid_objects_total", "kind" => kind.as_str()).increment(1);
            warn!(object = ?key(obj), %error, "invalid object ignored");
            None
        }
    };
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut buffer = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                debug!("listing");
                buffer.clear();
            }
            Ok(watcher::Event::InitApply(obj)) => buffer.extend(converted(&obj)),
            Ok(watcher::Event::InitDone) => {
                debug!(objects = buffer.len(), "listed");
                metrics::counter!("destination_watch_resyncs_total", "kind" => kind.as_str()).increment(1);
                index.replace(kind, std::mem::take(&mut buffer));
                sync.done(kind);
                listed = true;
            }
            Ok(watcher::Event::Apply(obj)) => match (converted(&obj), key(&obj)) {
                (Some(o), _) => index.apply(o),
                (None, Some(k)) => index.delete(kind, &k),
                (None, None) => {}
            },
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(k) = key(&obj) {
                    index.delete(kind, &k);
                }
            }
            Err(error) => {
                // kube-runtime re-lists (410 Gone) or re-watches with backoff;
                // the index keeps serving the last known state meanwhile.
                metrics::counter!("destination_watch_errors_total", "kind" => kind.as_str()).increment(1);
                let forbidden = matches!(
                    &error,
                    watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 403
                );
                if optional && forbidden && !listed {
                    if !forbidden_reported {
                        warn!(%error, "not allowed to list this kind (RBAC); serving none until allowed");
                        index.replace(kind, Vec::new());
                        sync.done(kind);
                        forbidden_reported = true;
                    }
                } else {
                    warn!(%error, "watch error; resyncing");
                }
            }
        }
    }
}

// === Route status ===

/// A route's `status.parents` as the API last showed it, and the
/// resourceVersion it was shown at.
#[derive(Clone, Debug, PartialEq)]
struct Shown {
    resource_version: Option<String>,
    parents: Vec<Value>,
}

/// Kept for every route seen (a deleted route's entry stays, harmless: only
/// routes in the index are written).
type ShownStatus = HashMap<(Kind, ObjKey), Shown>;

/// Changes closer together than this are written once.
const STATUS_DEBOUNCE: Duration = Duration::from_secs(1);

/// The field manager of weft's status writes.
const FIELD_MANAGER: &str = "weft-destination";

/// Writes each mesh route's `status.parents` ([`route_status::desired`])
/// when it differs from what the API shows, after the index settles.
///
/// Every replica runs this, with no leader election: all compute the same
/// status from the same watches, a route already showing it is skipped, and
/// a merge patch carrying the resourceVersion it was computed against fails
/// (409) rather than overwrite a newer status, whether another replica's or
/// another controller's; the watch then shows the newer status and it is
/// computed again. A failed write is logged and retried on the next change.
/// It runs beside the watchers: discovery never waits for it.
async fn write_route_statuses(client: Client, index: Index, mut shown: channel::Receiver<ShownStatus>) {
    let mut state = index.subscribe();
    // What was last sent per route and the resourceVersion it was sent
    // against: not sent again until the watch shows the result.
    let mut sent: HashMap<(Kind, ObjKey), (Option<String>, Vec<Value>)> = HashMap::new();
    loop {
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            changed = shown.changed() => if changed.is_err() { return },
        }
        tokio::time::sleep(STATUS_DEBOUNCE).await;
        let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let writes: Vec<_> = {
            let state = state.borrow_and_update();
            let shown = shown.borrow_and_update();
            if !state.synced {
                continue;
            }
            route_status::routes(&state)
                .filter_map(|(kind, key)| {
                    let entry = (kind, key.clone());
                    let seen = shown.get(&entry);
                    let rv = seen.and_then(|s| s.resource_version.clone());
                    // Until the watch shows our last write, it stands for
                    // what the API has (its transition times included).
                    let pending = sent.get(&entry).filter(|(r, _)| *r == rv).map(|(_, p)| &p[..]);
                    let observed = pending.or(seen.map(|s| &s.parents[..])).unwrap_or_default();
                    let parents = route_status::desired(&state, kind, key, observed, &now)?;
                    let unchanged = parents == observed;
                    (!unchanged).then_some((entry, rv, parents))
                })
                .collect()
        };
        for ((kind, key), rv, parents) in writes {
            match patch_status(&client, kind, &key, rv.as_deref(), &parents).await {
                Ok(()) => {
                    debug!(route = %key, kind = kind.as_str(), "status written");
                    sent.insert((kind, key), (rv, parents));
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    debug!(route = %key, kind = kind.as_str(), "status changed meanwhile; computed again on the next change");
                    sent.remove(&(kind, key));
                }
                Err(error) => {
                    metrics::counter!("destination_route_status_errors_total", "kind" => kind.as_str())
                        .increment(1);
                    warn!(route = %key, kind = kind.as_str(), %error, "writing route status failed; retried on the next change");
                    sent.remove(&(kind, key));
                }
            }
        }
    }
}

/// A JSON merge patch of the `status` subresource: `parents` is replaced as
/// a whole (the list carries the other controllers' entries as shown), and
/// `resourceVersion` makes it fail if the route changed meanwhile.
async fn patch_status(
    client: &Client,
    kind: Kind,
    key: &ObjKey,
    resource_version: Option<&str>,
    parents: &[Value],
) -> Result<(), kube::Error> {
    let Some(crd) = POLICY_CRDS.iter().find(|c| c.kind == kind) else { return Ok(()) };
    let (group, version) = crd.group_version;
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, crd.api_kind), crd.plural);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &key.namespace, &resource);
    let mut body = serde_json::json!({ "status": { "parents": parents } });
    if let Some(rv) = resource_version {
        body["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch_status(&key.name, &params, &Patch::Merge(&body)).await.map(drop)
}
