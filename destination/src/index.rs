//! The one in-memory index behind every stream.
//!
//! Backends write records ([`Object`]) into it; subscribers read it through a
//! `tokio::sync::watch` channel. A change wakes every subscriber, which
//! recomputes its own view (a few hash lookups) and sends only what changed.
//! Bursts coalesce: a slow subscriber sees the latest state, never a backlog.
//! Mutations that change nothing wake nobody.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use tokio::sync::watch;

use crate::{
    model::{
        Kind, NamespaceRec, ObjKey, Object, PodRec, ProfileRec, ServiceRec, SliceRec, SplitRec, StaticRec,
    },
    policy::{
        AuthorizationPolicyRec, MeshTlsAuthenticationRec, NetworkAuthenticationRec, RateLimitRec, ServerRec,
    },
    route::{GrpcRouteRec, HttpRouteRec},
};

#[derive(Debug, Default)]
pub struct State {
    /// False until the backend has loaded everything once. Streams wait for
    /// it: answering "no such service" from a half-loaded index would send
    /// proxies to their fallback for no reason.
    pub synced: bool,
    pub services: BTreeMap<ObjKey, ServiceRec>,
    pub slices: BTreeMap<ObjKey, SliceRec>,
    pub pods: BTreeMap<ObjKey, PodRec>,
    pub splits: BTreeMap<ObjKey, SplitRec>,
    pub profiles: BTreeMap<ObjKey, ProfileRec>,
    pub statics: BTreeMap<ObjKey, StaticRec>,
    // Inbound policy (policy.linkerd.io), read by later work as a pure
    // function of the index, like endpoints and profiles.
    pub servers: BTreeMap<ObjKey, ServerRec>,
    pub authorization_policies: BTreeMap<ObjKey, AuthorizationPolicyRec>,
    pub meshtls_authentications: BTreeMap<ObjKey, MeshTlsAuthenticationRec>,
    pub network_authentications: BTreeMap<ObjKey, NetworkAuthenticationRec>,
    pub rate_limits: BTreeMap<ObjKey, RateLimitRec>,
    /// Keyed by [`crate::model::namespace_key`].
    pub namespaces: BTreeMap<ObjKey, NamespaceRec>,
    /// HTTPRoutes of `policy.linkerd.io`, then of `gateway.networking.k8s.io`.
    pub http_routes: BTreeMap<ObjKey, HttpRouteRec>,
    pub gateway_http_routes: BTreeMap<ObjKey, HttpRouteRec>,
    pub grpc_routes: BTreeMap<ObjKey, GrpcRouteRec>,
    // Secondary indexes, maintained on every write.
    slices_by_service: HashMap<ObjKey, BTreeSet<String>>,
    splits_by_service: HashMap<ObjKey, BTreeSet<String>>,
    service_by_ip: HashMap<IpAddr, ObjKey>,
    pod_by_ip: HashMap<IpAddr, ObjKey>,
}

impl State {
    pub fn slices_of<'a>(&'a self, service: &'a ObjKey) -> impl Iterator<Item = &'a SliceRec> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(move |name| self.slices.get(&ObjKey::new(service.namespace.clone(), name.clone())))
    }

    /// The TrafficSplit for an apex service. Several splits for one apex is a
    /// misconfiguration; the first by name wins so the choice is stable.
    pub fn split_for(&self, service: &ObjKey) -> Option<&SplitRec> {
        let name = self.splits_by_service.get(service)?.iter().next()?;
        self.splits.get(&ObjKey::new(service.namespace.clone(), name.clone()))
    }

    pub fn service_by_ip(&self, ip: &IpAddr) -> Option<&ServiceRec> {
        self.services.get(self.service_by_ip.get(ip)?)
    }

    pub fn pod_by_ip(&self, ip: &IpAddr) -> Option<&PodRec> {
        self.pods.get(self.pod_by_ip.get(ip)?)
    }

    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.slices.len(),
            Kind::Pod => self.pods.len(),
            Kind::TrafficSplit => self.splits.len(),
            Kind::ServiceProfile => self.profiles.len(),
            Kind::StaticEndpoints => self.statics.len(),
            Kind::Server => self.servers.len(),
            Kind::AuthorizationPolicy => self.authorization_policies.len(),
            Kind::MeshTLSAuthentication => self.meshtls_authentications.len(),
            Kind::NetworkAuthentication => self.network_authentications.len(),
            Kind::HTTPLocalRateLimitPolicy => self.rate_limits.len(),
            Kind::Namespace => self.namespaces.len(),
            Kind::HTTPRoute => self.http_routes.len(),
            Kind::GatewayHTTPRoute => self.gateway_http_routes.len(),
            Kind::GRPCRoute => self.grpc_routes.len(),
        }
    }

    /// Returns whether anything changed.
    fn insert(&mut self, obj: Object) -> bool {
        let key = obj.key().clone();
        if self.get(obj.kind(), &key).is_some_and(|old| old == obj) {
            return false;
        }
        self.remove(obj.kind(), &key);
        match obj {
            Object::Service(r) => {
                for ip in &r.cluster_ips {
                    self.service_by_ip.insert(*ip, key.clone());
                }
                self.services.insert(key, r);
            }
            Object::EndpointSlice(r) => {
                self.slices_by_service
                    .entry(ObjKey::new(key.namespace.clone(), r.service.clone()))
                    .or_default()
                    .insert(key.name.clone());
                self.slices.insert(key, r);
            }
            Object::Pod(r) => {
                if !r.terminal {
                    for ip in &r.ips {
                        self.pod_by_ip.insert(*ip, key.clone());
                    }
                }
                self.pods.insert(key, r);
            }
            Object::TrafficSplit(r) => {
                self.splits_by_service
                    .entry(ObjKey::new(key.namespace.clone(), r.service.clone()))
                    .or_default()
                    .insert(key.name.clone());
                self.splits.insert(key, r);
            }
            Object::ServiceProfile(r) => {
                self.profiles.insert(key, r);
            }
            Object::StaticEndpoints(r) => {
                self.statics.insert(key, r);
            }
            Object::Server(r) => {
                self.servers.insert(key, r);
            }
            Object::AuthorizationPolicy(r) => {
                self.authorization_policies.insert(key, r);
            }
            Object::MeshTLSAuthentication(r) => {
                self.meshtls_authentications.insert(key, r);
            }
            Object::NetworkAuthentication(r) => {
                self.network_authentications.insert(key, r);
            }
            Object::HTTPLocalRateLimitPolicy(r) => {
                self.rate_limits.insert(key, r);
            }
            Object::Namespace(r) => {
                self.namespaces.insert(key, r);
            }
            Object::HTTPRoute(r) => {
                self.http_routes.insert(key, r);
            }
            Object::GatewayHTTPRoute(r) => {
                self.gateway_http_routes.insert(key, r);
            }
            Object::GRPCRoute(r) => {
                self.grpc_routes.insert(key, r);
            }
        }
        true
    }

    fn get(&self, kind: Kind, key: &ObjKey) -> Option<Object> {
        Some(match kind {
            Kind::Service => Object::Service(self.services.get(key)?.clone()),
            Kind::EndpointSlice => Object::EndpointSlice(self.slices.get(key)?.clone()),
            Kind::Pod => Object::Pod(self.pods.get(key)?.clone()),
            Kind::TrafficSplit => Object::TrafficSplit(self.splits.get(key)?.clone()),
            Kind::ServiceProfile => Object::ServiceProfile(self.profiles.get(key)?.clone()),
            Kind::StaticEndpoints => Object::StaticEndpoints(self.statics.get(key)?.clone()),
            Kind::Server => Object::Server(self.servers.get(key)?.clone()),
            Kind::AuthorizationPolicy => {
                Object::AuthorizationPolicy(self.authorization_policies.get(key)?.clone())
            }
            Kind::MeshTLSAuthentication => {
                Object::MeshTLSAuthentication(self.meshtls_authentications.get(key)?.clone())
            }
            Kind::NetworkAuthentication => {
                Object::NetworkAuthentication(self.network_authentications.get(key)?.clone())
            }
            Kind::HTTPLocalRateLimitPolicy => {
                Object::HTTPLocalRateLimitPolicy(self.rate_limits.get(key)?.clone())
            }
            Kind::Namespace => Object::Namespace(self.namespaces.get(key)?.clone()),
            Kind::HTTPRoute => Object::HTTPRoute(self.http_routes.get(key)?.clone()),
            Kind::GatewayHTTPRoute => Object::GatewayHTTPRoute(self.gateway_http_routes.get(key)?.clone()),
            Kind::GRPCRoute => Object::GRPCRoute(self.grpc_routes.get(key)?.clone()),
        })
    }

    fn remove(&mut self, kind: Kind, key: &ObjKey) -> bool {
        fn unindex(map: &mut HashMap<ObjKey, BTreeSet<String>>, parent: ObjKey, name: &str) {
            if let Some(set) = map.get_mut(&parent) {
                set.remove(name);
                if set.is_empty() {
                    map.remove(&parent);
                }
            }
        }
        match kind {
            Kind::Service => {
                let Some(old) = self.services.remove(key) else { return false };
                for ip in &old.cluster_ips {
                    // Another service may have taken the IP since.
                    if self.service_by_ip.get(ip) == Some(key) {
                        self.service_by_ip.remove(ip);
                    }
                }
            }
            Kind::EndpointSlice => {
                let Some(old) = self.slices.remove(key) else { return false };
                unindex(
                    &mut self.slices_by_service,
                    ObjKey::new(key.namespace.clone(), old.service),
                    &key.name,
                );
            }
            Kind::Pod => {
                let Some(old) = self.pods.remove(key) else { return false };
                for ip in &old.ips {
                    if self.pod_by_ip.get(ip) == Some(key) {
                        self.pod_by_ip.remove(ip);
                    }
                }
            }
            Kind::TrafficSplit => {
                let Some(old) = self.splits.remove(key) else { return false };
                unindex(
                    &mut self.splits_by_service,
                    ObjKey::new(key.namespace.clone(), old.service),
                    &key.name,
                );
            }
            Kind::ServiceProfile => return self.profiles.remove(key).is_some(),
            Kind::StaticEndpoints => return self.statics.remove(key).is_some(),
            Kind::Server => return self.servers.remove(key).is_some(),
            Kind::AuthorizationPolicy => return self.authorization_policies.remove(key).is_some(),
            Kind::MeshTLSAuthentication => return self.meshtls_authentications.remove(key).is_some(),
            Kind::NetworkAuthentication => return self.network_authentications.remove(key).is_some(),
            Kind::HTTPLocalRateLimitPolicy => return self.rate_limits.remove(key).is_some(),
            Kind::Namespace => return self.namespaces.remove(key).is_some(),
            Kind::HTTPRoute => return self.http_routes.remove(key).is_some(),
            Kind::GatewayHTTPRoute => return self.gateway_http_routes.remove(key).is_some(),
            Kind::GRPCRoute => return self.grpc_routes.remove(key).is_some(),
        }
        true
    }

    fn keys(&self, kind: Kind) -> Vec<ObjKey> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::EndpointSlice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::TrafficSplit => self.splits.keys().cloned().collect(),
            Kind::ServiceProfile => self.profiles.keys().cloned().collect(),
            Kind::StaticEndpoints => self.statics.keys().cloned().collect(),
            Kind::Server => self.servers.keys().cloned().collect(),
            Kind::AuthorizationPolicy => self.authorization_policies.keys().cloned().collect(),
            Kind::MeshTLSAuthentication => self.meshtls_authentications.keys().cloned().collect(),
            Kind::NetworkAuthentication => self.network_authentications.keys().cloned().collect(),
            Kind::HTTPLocalRateLimitPolicy => self.rate_limits.keys().cloned().collect(),
            Kind::Namespace => self.namespaces.keys().cloned().collect(),
            Kind::HTTPRoute => self.http_routes.keys().cloned().collect(),
            Kind::GatewayHTTPRoute => self.gateway_http_routes.keys().cloned().collect(),
            Kind::GRPCRoute => self.grpc_routes.keys().cloned().collect(),
        }
    }

    /// Makes the set of `kind` records exactly `objs`.
    fn replace(&mut self, kind: Kind, objs: Vec<Object>) -> bool {
        let mut changed = false;
        let incoming: BTreeSet<ObjKey> =
            objs.iter().filter(|o| o.kind() == kind).map(|o| o.key().clone()).collect();
        for key in self.keys(kind) {
            if !incoming.contains(&key) {
                changed |= self.remove(kind, &key);
            }
        }
        for obj in objs.into_iter().filter(|o| o.kind() == kind) {
            changed |= self.insert(obj);
        }
        changed
    }
}

/// A cheap, cloneable handle to the index.
#[derive(Clone)]
pub struct Index {
    tx: Arc<watch::Sender<State>>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    pub fn new() -> Self {
        Self { tx: Arc::new(watch::Sender::new(State::default())) }
    }

    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }

    pub fn is_synced(&self) -> bool {
        self.tx.borrow().synced
    }

    pub fn set_synced(&self) {
        self.tx.send_if_modified(|s| !std::mem::replace(&mut s.synced, true));
    }

    pub fn apply(&self, obj: Object) {
        let kind = obj.kind();
        self.modify(kind, |s| s.insert(obj));
    }

    pub fn delete(&self, kind: Kind, key: &ObjKey) {
        self.modify(kind, |s| s.remove(kind, key));
    }

    /// Replaces every record of `kind` at once (a watcher's relist, a
    /// directory rescan), waking subscribers once.
    pub fn replace(&self, kind: Kind, objs: Vec<Object>) {
        self.modify(kind, |s| s.replace(kind, objs));
    }

    /// Replaces every kind at once from a complete snapshot.
    pub fn replace_all(&self, objs: Vec<Object>) {
        self.tx.send_if_modified(|s| {
            let mut changed = false;
            for kind in Kind::ALL {
                changed |= s.replace(kind, objs.iter().filter(|o| o.kind() == kind).cloned().collect());
            }
            changed
        });
        self.record_sizes(&Kind::ALL);
    }

    fn modify(&self, kind: Kind, f: impl FnOnce(&mut State) -> bool) {
        self.tx.send_if_modified(f);
        self.record_sizes(&[kind]);
    }

    fn record_sizes(&self, kinds: &[Kind]) {
        let state = self.tx.borrow();
        for kind in kinds {
            metrics::gauge!("destination_index_objects", "kind" => kind.as_str())
                .set(state.count(*kind) as f64);
        }
    }
}
