//! `GetProfile`: a target's `DestinationProfile` as a pure function of the
//! index.

use std::time::Duration;

use linkerd2_proxy_api::{destination as pb, meta};

use crate::{
    endpoints::{self, View},
    index::State,
    model::{proto_duration, ObjKey},
    target::Target,
    MeshConfig,
};

/// Linkerd's default budget, used whenever no ServiceProfile sets one: 20 %
/// extra load, at least 10 retries a second, over a 10 s window.
pub fn default_retry_budget() -> pb::RetryBudget {
    pb::RetryBudget {
        retry_ratio: 0.2,
        min_retries_per_second: 10,
        ttl: Some(proto_duration(Duration::from_secs(10))),
    }
}

/// The profile of something we know nothing about: no name (the proto says
/// `fully_qualified_name` MUST be empty then), no routes, no overrides, no
/// endpoint, the default retry budget. Linkerd sends the same default rather
/// than an error for names in the cluster domain; we send it for every
/// well-formed name so a proxy never has to treat an error as "unknown".
pub fn default_profile() -> pb::DestinationProfile {
    pb::DestinationProfile { retry_budget: Some(default_retry_budget()), ..Default::default() }
}

fn fqdn(key: &ObjKey, cfg: &MeshConfig) -> String {
    format!("{}.{}.svc.{}", key.name, key.namespace, cfg.cluster_domain)
}

fn resource(group: &str, kind: &str, key: &ObjKey, port: u16) -> meta::Metadata {
    meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: group.into(),
            kind: kind.into(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            section: String::new(),
            port: port.into(),
        })),
    }
}

pub fn profile(state: &State, target: &Target, cfg: &MeshConfig) -> pb::DestinationProfile {
    match target {
        Target::External => default_profile(),
        Target::Service { key, port } => service_profile(state, key, *port, cfg),
        Target::Ip(addr) => {
            if let Some(svc) = state.service_by_ip(&addr.ip()) {
                return service_profile(state, &svc.key, addr.port(), cfg);
            }
            // A pod IP: the profile carries the endpoint itself, so the proxy
            // connects straight to it (with mTLS when meshed) and skips
            // service discovery, as the proto describes.
            let mut profile = default_profile();
            if let Some(pod) = state.pod_by_ip(&addr.ip()) {
                if let View::Endpoints { endpoints, .. } = endpoints::view(state, target) {
                    if let Some(meta) = endpoints.get(addr) {
                        profile.endpoint = Some(endpoints::weighted_addr(*addr, meta));
                    }
                }
                profile.opaque_protocol = pod.opaque_ports.contains(addr.port());
            }
            profile
        }
    }
}

fn service_profile(state: &State, key: &ObjKey, port: u16, cfg: &MeshConfig) -> pb::DestinationProfile {
    let service = state.services.get(key);
    let statics = state.statics.get(key);
    if service.is_none() && statics.is_none() {
        return default_profile();
    }
    let name = fqdn(key, cfg);
    let mut profile = default_profile();
    profile.fully_qualified_name = name.clone();
    profile.opaque_protocol = service.is_some_and(|s| s.opaque_ports.contains(port))
        || statics.is_some_and(|s| s.opaque_ports.contains(port));
    profile.parent_ref = Some(resource("core", "Service", key, port));

    // A ServiceProfile lives in the service's namespace and is named after
    // its FQDN. (Linkerd also reads client-namespace profiles through the
    // context token; weft does not yet.)
    if let Some(sp) = state.profiles.get(&ObjKey::new(key.namespace.clone(), name)) {
        profile.routes = sp.routes.clone();
        if let Some(budget) = &sp.retry_budget {
            profile.retry_budget = Some(*budget);
        }
        profile.dst_overrides = sp.dst_overrides.clone();
        profile.profile_ref = Some(resource("linkerd.io", "ServiceProfile", &sp.key, 0));
    }

    // A TrafficSplit for this apex wins over the profile's own dstOverrides:
    // in Linkerd the SMI adaptor writes the split into the profile, so the
    // split is the source of truth whenever both exist. Backends are
    // addressed with the port the client dialled, as Linkerd does.
    if let Some(split) = state.split_for(key) {
        profile.dst_overrides = split
            .backends
            .iter()
            .map(|(backend, weight)| {
                let backend = ObjKey::new(key.namespace.clone(), backend.clone());
                pb::WeightedDst {
                    authority: format!("{}:{port}", fqdn(&backend, cfg)),
                    weight: *weight,
                    backend_ref: Some(resource("core", "Service", &backend, port)),
                }
            })
            .collect();
    }
    profile
}
