//! `Get`: the endpoint set a target resolves to, as a pure function of the
//! index, and the `Update`s that move a client from one set to the next.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use linkerd2_proxy_api::{
    destination::{self as pb, update::Update as Up},
    net::TcpAddress,
};

use crate::{
    index::State,
    model::{ObjKey, PodRec, DEFAULT_WEIGHT},
    target::Target,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Not meshed: no hint, the client speaks the app's protocol.
    None,
    /// Meshed: the peer proxy accepts HTTP/2 (so HTTP/1 may be upgraded).
    H2,
    /// Meshed, and the port is marked opaque: plain TCP, no detection.
    Opaque,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    pub identity: Option<String>,
    pub hint: Hint,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// No such service (or IP): the client may fall back to the original
    /// destination.
    Unknown,
    /// The service exists and has no usable endpoint right now.
    Empty,
    Endpoints {
        set_labels: BTreeMap<String, String>,
        endpoints: BTreeMap<SocketAddr, EndpointMeta>,
    },
}

/// What `target` resolves to in `state`.
pub fn view(state: &State, target: &Target) -> View {
    match target {
        Target::External => View::Unknown,
        Target::Service { key, port } => service_view(state, key, *port),
        Target::Ip(addr) => {
            if let Some(svc) = state.service_by_ip(&addr.ip()) {
                return service_view(state, &svc.key, addr.port());
            }
            match state.pod_by_ip(&addr.ip()) {
                // A pod IP resolves to itself, with the pod's identity, so a
                // client dialling a pod directly still gets mTLS.
                Some(pod) => View::Endpoints {
                    set_labels: [("namespace".to_owned(), pod.key.namespace.clone())].into(),
                    endpoints: [(*addr, pod_meta(Some(pod), addr.port(), None))].into(),
                },
                None => View::Unknown,
            }
        }
    }
}

fn service_view(state: &State, key: &ObjKey, port: u16) -> View {
    let service = state.services.get(key);
    let statics = state.statics.get(key);
    if service.is_none() && statics.is_none() {
        return View::Unknown;
    }
    let mut endpoints = BTreeMap::new();

    if let Some(svc) = service {
        // The Service port's name is what ties it to the slices' target
        // ports. A port the Service does not declare is dialled as-is on each
        // endpoint (Linkerd's behaviour), which keeps headless-style use working.
        let port_name = svc.ports.iter().find(|(_, p)| *p == port).map(|(n, _)| n.as_str());
        let opaque = svc.opaque_ports.contains(port);

        // Ready endpoints are served. Only when none is ready are serving,
        // terminating ones used, as kube-proxy does: it keeps connections
        // flowing during a rollout that briefly leaves no ready pod, without
        // ever preferring a pod that is going away.
        let mut ready = HashMap::new();
        let mut fallback = HashMap::new();
        for slice in state.slices_of(key) {
            let target_port = match port_name {
                Some(name) => match slice.ports.iter().find(|(n, _)| n == name) {
                    Some((_, p)) => *p,
                    None => continue,
                },
                None => port,
            };
            for ep in &slice.endpoints {
                let addr = SocketAddr::new(ep.ip, target_port);
                if ep.ready && !ep.terminating {
                    ready.insert(addr, ep);
                } else if ep.serving && ep.terminating {
                    fallback.insert(addr, ep);
                }
            }
        }
        let chosen = if ready.is_empty() { fallback } else { ready };
        for (addr, ep) in chosen {
            let pod = ep
                .pod
                .as_ref()
                .and_then(|name| state.pods.get(&ObjKey::new(key.namespace.clone(), name.clone())))
                .or_else(|| state.pod_by_ip(&ep.ip));
            let mut meta = pod_meta(pod, addr.port(), ep.zone.as_deref());
            if opaque && meta.hint == Hint::H2 {
                meta.hint = Hint::Opaque;
            }
            endpoints.insert(addr, meta);
        }
    }

    if let Some(st) = statics {
        let opaque = st.opaque_ports.contains(port);
        for ep in st.ports.get(&port).into_iter().flatten() {
            let hint = match (&ep.identity, opaque) {
                (None, _) => Hint::None,
                (Some(_), false) => Hint::H2,
                (Some(_), true) => Hint::Opaque,
            };
            endpoints.insert(
                ep.addr,
                EndpointMeta {
                    identity: ep.identity.clone(),
                    hint,
                    weight: ep.weight,
                    labels: BTreeMap::new(),
                },
            );
        }
    }

    if endpoints.is_empty() {
        return View::Empty;
    }
    let set_labels =
        [("namespace".to_owned(), key.namespace.clone()), ("service".to_owned(), key.name.clone())].into();
    View::Endpoints { set_labels, endpoints }
}

fn pod_meta(pod: Option<&PodRec>, port: u16, zone: Option<&str>) -> EndpointMeta {
    let mut labels = BTreeMap::new();
    if let Some(zone) = zone {
        labels.insert("zone".to_owned(), zone.to_owned());
    }
    let Some(pod) = pod else {
        return EndpointMeta { identity: None, hint: Hint::None, weight: DEFAULT_WEIGHT, labels };
    };
    labels.insert("pod".to_owned(), pod.key.name.clone());
    labels.insert("serviceaccount".to_owned(), pod.service_account.clone());
    // A skipped inbound port reaches the app directly, not its proxy: a
    // client that started mTLS there would be talking TLS to the app.
    let meshed = pod.meshed && !pod.skip_inbound_ports.contains(port);
    let hint = match (meshed, pod.opaque_ports.contains(port)) {
        (false, _) => Hint::None,
        (true, false) => Hint::H2,
        (true, true) => Hint::Opaque,
    };
    let identity = if meshed { pod.identity.clone() } else { None };
    EndpointMeta { identity, hint, weight: DEFAULT_WEIGHT, labels }
}

pub fn weighted_addr(addr: SocketAddr, meta: &EndpointMeta) -> pb::WeightedAddr {
    let tls_identity = meta.identity.as_ref().map(|name| pb::TlsIdentity {
        strategy: Some(pb::tls_identity::Strategy::DnsLikeIdentity(pb::tls_identity::DnsLikeIdentity {
            name: name.clone(),
        })),
        // The SNI a client sends is the identity itself (Linkerd does the same).
        server_name: Some(pb::tls_identity::DnsLikeIdentity { name: name.clone() }),
    });
    let protocol_hint = match meta.hint {
        Hint::None => None,
        Hint::H2 => Some(pb::ProtocolHint {
            protocol: Some(pb::protocol_hint::Protocol::H2(pb::protocol_hint::H2 {})),
            opaque_transport: None,
        }),
        // `opaque_transport` stays unset: it promises the Linkerd transport
        // header on the peer's inbound port, which weft proxies do not speak.
        Hint::Opaque => Some(pb::ProtocolHint {
            protocol: Some(pb::protocol_hint::Protocol::Opaque(pb::protocol_hint::Opaque {})),
            opaque_transport: None,
        }),
    };
    pb::WeightedAddr {
        addr: Some(TcpAddress::from(addr)),
        weight: meta.weight,
        metric_labels: meta.labels.clone().into_iter().collect(),
        tls_identity,
        protocol_hint,
        authority_override: None,
        http2: None,
        resource_ref: None,
    }
}

fn update(u: Up) -> pb::Update {
    pb::Update { update: Some(u) }
}

fn add(set_labels: &BTreeMap<String, String>, addrs: Vec<pb::WeightedAddr>) -> pb::Update {
    update(Up::Add(pb::WeightedAddrSet { addrs, metric_labels: set_labels.clone().into_iter().collect() }))
}

/// The messages that move a client that has seen `prev` (`None`: nothing yet,
/// a new stream) to `next`, following the proto's rules:
/// - the first message says everything: `Add` with the whole set, or
///   `NoEndpoints{exists}`, never `NoEndpoints` when there are endpoints;
/// - later changes are `Remove` of what left and `Add` of what is new or
///   whose metadata changed (an `Add` of a known address replaces it);
/// - losing the last endpoint is `NoEndpoints{exists: true}` (equivalent to
///   removing them all, and unambiguous); the service disappearing is
///   `NoEndpoints{exists: false}`.
pub fn diff(prev: Option<&View>, next: &View) -> Vec<pb::Update> {
    if prev == Some(next) {
        return Vec::new();
    }
    match next {
        View::Unknown => vec![update(Up::NoEndpoints(pb::NoEndpoints { exists: false }))],
        View::Empty => vec![update(Up::NoEndpoints(pb::NoEndpoints { exists: true }))],
        View::Endpoints { set_labels, endpoints } => {
            let Some(View::Endpoints { endpoints: old, .. }) = prev else {
                return vec![add(set_labels, endpoints.iter().map(|(a, m)| weighted_addr(*a, m)).collect())];
            };
            let mut out = Vec::new();
            let removed: Vec<TcpAddress> =
                old.keys().filter(|a| !endpoints.contains_key(a)).map(|a| TcpAddress::from(*a)).collect();
            if !removed.is_empty() {
                out.push(update(Up::Remove(pb::AddrSet { addrs: removed })));
            }
            let added: Vec<pb::WeightedAddr> = endpoints
                .iter()
                .filter(|(a, m)| old.get(a) != Some(m))
                .map(|(a, m)| weighted_addr(*a, m))
                .collect();
            if !added.is_empty() {
                out.push(add(set_labels, added));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PodRec, ServiceRec, SliceEndpoint, SliceRec};

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> SliceEndpoint {
        SliceEndpoint { ip: ip.parse().unwrap(), ready, serving, terminating, pod: None, zone: None }
    }

    fn state_with(endpoints: Vec<SliceEndpoint>) -> crate::index::Index {
        let index = crate::index::Index::new();
        index.apply(crate::model::Object::Service(ServiceRec {
            key: ObjKey::new("ns", "svc"),
            cluster_ips: vec![],
            ports: vec![("http".into(), 80)],
            opaque_ports: Default::default(),
            app_protocols: Default::default(),
            annotations: Default::default(),
        }));
        index.apply(crate::model::Object::EndpointSlice(SliceRec {
            key: ObjKey::new("ns", "svc-abc"),
            service: "svc".into(),
            ports: vec![("http".into(), 8080)],
            endpoints,
        }));
        index
    }

    fn addrs(v: &View) -> Vec<String> {
        match v {
            View::Endpoints { endpoints, .. } => endpoints.keys().map(|a| a.to_string()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn terminating_serving_only_when_none_ready() {
        let t = Target::Service { key: ObjKey::new("ns", "svc"), port: 80 };
        let index = state_with(vec![ep("10.0.0.1", true, true, false), ep("10.0.0.2", false, true, true)]);
        assert_eq!(addrs(&view(&index.subscribe().borrow(), &t)), ["10.0.0.1:8080"]);

        let index = state_with(vec![ep("10.0.0.1", false, false, false), ep("10.0.0.2", false, true, true)]);
        assert_eq!(addrs(&view(&index.subscribe().borrow(), &t)), ["10.0.0.2:8080"]);

        let index = state_with(vec![ep("10.0.0.1", false, false, false), ep("10.0.0.2", false, false, true)]);
        assert_eq!(view(&index.subscribe().borrow(), &t), View::Empty);
    }

    #[test]
    fn diffs_follow_the_proto() {
        let meta = EndpointMeta { identity: None, hint: Hint::None, weight: 1, labels: BTreeMap::new() };
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let v1 = View::Endpoints {
            set_labels: BTreeMap::new(),
            endpoints: [(a, meta.clone()), (b, meta.clone())].into(),
        };
        let v2 = View::Endpoints { set_labels: BTreeMap::new(), endpoints: [(a, meta.clone())].into() };
        assert!(
            matches!(diff(None, &v1)[..], [pb::Update { update: Some(Up::Add(ref s)) }] if s.addrs.len() == 2)
        );
        assert!(
            matches!(diff(Some(&v1), &v2)[..], [pb::Update { update: Some(Up::Remove(ref s)) }] if s.addrs.len() == 1)
        );
        assert!(diff(Some(&v2), &v2).is_empty());
        assert!(matches!(
            diff(Some(&v2), &View::Empty)[..],
            [pb::Update { update: Some(Up::NoEndpoints(pb::NoEndpoints { exists: true })) }]
        ));
        assert!(matches!(
            diff(None, &View::Unknown)[..],
            [pb::Update { update: Some(Up::NoEndpoints(pb::NoEndpoints { exists: false })) }]
        ));
    }

    #[test]
    fn skipped_inbound_ports_are_served_unmeshed() {
        let pod = PodRec {
            key: ObjKey::new("ns", "web-0"),
            ips: vec!["10.0.0.1".parse().unwrap()],
            service_account: "web".into(),
            identity: Some("web.ns.serviceaccount.identity.weft.cluster.local".into()),
            meshed: true,
            opaque_ports: Default::default(),
            skip_inbound_ports: crate::model::PortSet::parse("7000-7001", "test", &"test"),
            terminal: false,
            labels: Default::default(),
            named_ports: Vec::new(),
            default_inbound_policy: None,
            probe_paths: Vec::new(),
        };
        let proxied = pod_meta(Some(&pod), 8080, None);
        assert_eq!(proxied.hint, Hint::H2);
        assert!(proxied.identity.is_some());
        let skipped = pod_meta(Some(&pod), 7001, None);
        assert_eq!(skipped.hint, Hint::None, "the app, not its proxy, answers a skipped port");
        assert_eq!(skipped.identity, None);
    }
}
