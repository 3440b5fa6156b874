//! A pod's inbound policy for one port, as a pure function of the index
//! (like [`crate::endpoints`] and [`crate::profile`]): which Server covers the
//! port, what it allows, who its AuthorizationPolicies authorize, and its
//! inbound HTTPRoutes. [`crate::policy_api`] serves it as Linkerd's
//! `InboundServerPolicies` API.

use std::net::IpAddr;

use crate::{
    index::State,
    model::{namespace_key, ObjKey, PodRec},
    policy::{
        AccessPolicy, AuthenticationRef, IdentityMatch, Network, PolicyTarget, PortRef, ProxyProtocol,
        RateLimitRec, ServerRec, WorkloadSelector,
    },
    route::HttpRouteRec,
    MeshConfig,
};

/// One way a client authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// A mesh TLS identity matching any of these.
    MeshTls(Vec<IdentityMatch>),
    /// A client address in any of these networks (authenticated or not).
    Network(Vec<Network>),
}

impl Authentication {
    pub fn allows(&self, identity: Option<&str>, addr: IpAddr) -> bool {
        match self {
            Self::MeshTls(ids) => identity.is_some_and(|id| ids.iter().any(|m| m.matches(id))),
            Self::Network(nets) => {
                nets.iter().any(|n| n.cidr.contains(addr) && !n.except.iter().any(|e| e.contains(addr)))
            }
        }
    }
}

/// An AuthorizationPolicy that applies to the Server, its references
/// resolved: a client is authorized when it satisfies every one of
/// `required`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub policy: ObjKey,
    pub required: Vec<Authentication>,
}

impl Authorization {
    pub fn allows(&self, identity: Option<&str>, addr: IpAddr) -> bool {
        self.required.iter().all(|a| a.allows(identity, addr))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundPolicy {
    /// The Server covering the port; `None`: the default policy applies.
    pub server: Option<ObjKey>,
    pub protocol: ProxyProtocol,
    /// The Server's `accessPolicy`, or the default policy: what applies to
    /// clients no authorization names.
    pub access: AccessPolicy,
    /// Server- and Namespace-targeted AuthorizationPolicies (route-targeted
    /// ones come with the routes), by name.
    pub authorizations: Vec<Authorization>,
    /// Policies that apply but name an authentication missing from the
    /// index: they authorize nobody (as in Linkerd), and are reported.
    pub unresolved: Vec<(ObjKey, String)>,
    pub rate_limit: Option<RateLimitRec>,
    /// HTTPRoutes whose parent is the Server, each with the policies
    /// targeting it, by (group, name).
    pub routes: Vec<InboundRoute>,
    /// Paths of the kubelet's httpGet probes on this port.
    pub probe_paths: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundRoute {
    pub route: HttpRouteRec,
    pub authorizations: Vec<Authorization>,
    pub unresolved: Vec<(ObjKey, String)>,
}

/// The Server covering `pod`'s `port`: a Pod-selecting Server of the pod's
/// namespace whose selector matches the pod's labels and whose port is the
/// number, or names a container port with that number. Several such Servers
/// are a conflict Linkerd resolves by age; weft takes the first by name,
/// which is stable.
pub fn server_for<'a>(state: &'a State, pod: &PodRec, port: u16) -> Option<&'a ServerRec> {
    state.servers.values().find(|s| {
        s.key.namespace == pod.key.namespace
            && matches!(&s.selector, WorkloadSelector::Pod(sel) if sel.matches(&pod.labels))
            && match &s.port {
                PortRef::Number(n) => *n == port,
                PortRef::Name(name) => pod.named_ports.iter().any(|(n, p)| n == name && *p == port),
            }
    })
}

/// The default policy of `pod`'s ports no Server covers: the pod's
/// annotation, else its Namespace's, else `cluster_default`.
pub fn default_policy(state: &State, pod: &PodRec, cluster_default: AccessPolicy) -> AccessPolicy {
    pod.default_inbound_policy
        .or_else(|| state.namespaces.get(&namespace_key(&pod.key.namespace))?.default_inbound_policy)
        .unwrap_or(cluster_default)
}

/// `pod`'s inbound policy on `port`. `cluster_default` applies where no
/// Server covers the port and neither the pod nor its Namespace names a
/// default of its own.
pub fn inbound_policy(
    state: &State,
    cfg: &MeshConfig,
    pod: &PodRec,
    port: u16,
    cluster_default: AccessPolicy,
) -> InboundPolicy {
    let probe_paths =
        pod.probe_paths.iter().filter(|(p, _)| *p == port).map(|(_, path)| path.clone()).collect();
    let Some(server) = server_for(state, pod, port) else {
        return InboundPolicy {
            server: None,
            protocol: if pod.opaque_ports.contains(port) {
                ProxyProtocol::Opaque
            } else {
                ProxyProtocol::Unknown
            },
            access: default_policy(state, pod, cluster_default),
            authorizations: Vec::new(),
            unresolved: Vec::new(),
            rate_limit: None,
            routes: Vec::new(),
            probe_paths,
        };
    };
    let ns = &server.key.namespace;
    let in_ns = || state.authorization_policies.values().filter(move |ap| &ap.key.namespace == ns);
    let (authorizations, unresolved) = resolve_all(
        state,
        cfg,
        in_ns().filter(|ap| match &ap.target {
            PolicyTarget::Server(name) => *name == server.key.name,
            PolicyTarget::Namespace => true,
            PolicyTarget::HttpRoute { .. } => false,
        }),
    );
    let routes = state
        .http_routes
        .values()
        .chain(state.gateway_http_routes.values())
        .filter(|r| &r.key.namespace == ns && r.parents.iter().any(|p| p.is_server(&server.key)))
        .map(|route| {
            let (authorizations, unresolved) = resolve_all(
                state,
                cfg,
                in_ns().filter(|ap| {
                    matches!(&ap.target, PolicyTarget::HttpRoute { group, name }
                        if *group == route.group && *name == route.key.name)
                }),
            );
            InboundRoute { route: route.clone(), authorizations, unresolved }
        })
        .collect();
    let rate_limit = state
        .rate_limits
        .values()
        .find(|rl| &rl.key.namespace == ns && rl.server == server.key.name)
        .cloned();
    InboundPolicy {
        server: Some(server.key.clone()),
        protocol: server.proxy_protocol,
        access: server.access_policy,
        authorizations,
        unresolved,
        rate_limit,
        routes,
        probe_paths,
    }
}

type Resolved = (Vec<Authorization>, Vec<(ObjKey, String)>);

/// Resolves each policy's authentication references; a policy naming one
/// missing from the index authorizes nobody (as in Linkerd) and is reported.
fn resolve_all<'a>(
    state: &State,
    cfg: &MeshConfig,
    policies: impl Iterator<Item = &'a crate::policy::AuthorizationPolicyRec>,
) -> Resolved {
    let mut authorizations = Vec::new();
    let mut unresolved = Vec::new();
    for ap in policies {
        let resolved: Result<Vec<_>, String> = ap
            .required
            .iter()
            .map(|r| match r {
                AuthenticationRef::MeshTls(k) => state
                    .meshtls_authentications
                    .get(k)
                    .map(|m| Authentication::MeshTls(m.identities.clone()))
                    .ok_or_else(|| format!("MeshTLSAuthentication {k} not found")),
                AuthenticationRef::Network(k) => state
                    .network_authentications
                    .get(k)
                    .map(|n| Authentication::Network(n.networks.clone()))
                    .ok_or_else(|| format!("NetworkAuthentication {k} not found")),
                AuthenticationRef::ServiceAccount(k) => weft_tls::name::IdentityName::new(
                    &k.name,
                    &k.namespace,
                    &cfg.control_plane_namespace,
                    &cfg.trust_domain,
                )
                .map(|n| Authentication::MeshTls(vec![IdentityMatch::Exact(n.dns_name().to_owned())]))
                .map_err(|e| format!("ServiceAccount {k}: {e}")),
            })
            .collect();
        // Two NetworkAuthentications must both hold: their intersection,
        // which the proxy's network list cannot say.
        let resolved = resolved.and_then(|required| {
            let networks = required.iter().filter(|a| matches!(a, Authentication::Network(_))).count();
            if networks > 1 {
                return Err(format!("{networks} NetworkAuthentications required; at most one is supported"));
            }
            Ok(required)
        });
        match resolved {
            Ok(required) => authorizations.push(Authorization { policy: ap.key.clone(), required }),
            Err(reason) => unresolved.push((ap.key.clone(), reason)),
        }
    }
    (authorizations, unresolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    const FIXTURES: [&str; 6] = [
        "servers.policy.linkerd.io-emojivoto.list.json",
        "authorizationpolicies.policy.linkerd.io-emojivoto.list.json",
        "meshtlsauthentications.policy.linkerd.io-emojivoto.list.json",
        "networkauthentications.policy.linkerd.io-emojivoto.list.json",
        "httplocalratelimitpolicies.policy.linkerd.io-emojivoto.list.json",
        "pods-emojivoto.list.json",
    ];

    fn index(skip: &[&str]) -> Index {
        let names: Vec<&str> = FIXTURES.iter().copied().filter(|n| !skip.contains(n)).collect();
        crate::fixtures::index(&names, &[])
    }

    fn policy(index: &Index, pod: &str, port: u16) -> InboundPolicy {
        let state = index.subscribe();
        let state = state.borrow();
        let pod = &state.pods[&ObjKey::new("emojivoto", pod)];
        inbound_policy(&state, &MeshConfig::default(), pod, port, AccessPolicy::AllUnauthenticated)
    }

    #[test]
    fn a_server_by_port_name_with_its_namespace_authorization_and_rate_limit() {
        let index = index(&[]);
        let p = policy(&index, "web-v1-0", 8080);
        assert_eq!(p.server, Some(ObjKey::new("emojivoto", "web-http")));
        assert_eq!((p.protocol, p.access), (ProxyProtocol::Http1, AccessPolicy::Deny));
        // The Namespace-targeted policy applies; the HTTPRoute-targeted
        // web-api waits for the routes.
        assert_eq!(p.authorizations.len(), 1);
        let cluster = &p.authorizations[0];
        assert_eq!(cluster.policy, ObjKey::new("emojivoto", "emojivoto-cluster-network"));
        assert!(cluster.allows(None, "10.42.0.31".parse().unwrap()));
        assert!(!cluster.allows(None, "10.1.2.3".parse().unwrap()), "except 10.1.2.0/24");
        assert!(!cluster.allows(None, "192.168.1.1".parse().unwrap()));
        assert_eq!(p.rate_limit.map(|r| (r.total, r.identity)), Some((Some(100), Some(20))));
        // The admin port is covered by no Server: the default policy.
        let admin = policy(&index, "web-v1-0", 4191);
        assert_eq!((admin.server, admin.access), (None, AccessPolicy::AllUnauthenticated));
    }

    #[test]
    fn port_numbers_selectors_and_identity_refs() {
        let index = index(&[]);
        // voting's container port is named `http`, not `grpc`: voting-grpc
        // does not cover 8080 ...
        assert_eq!(policy(&index, "voting-0", 8080).server, None);
        // ... but voting-prom (matchExpressions, port 8801) covers 8801.
        let prom = policy(&index, "voting-0", 8801);
        assert_eq!(prom.server, Some(ObjKey::new("emojivoto", "voting-prom")));
        assert_eq!(prom.protocol, ProxyProtocol::Unknown);
        // A pod whose labels no Server selects.
        assert_eq!(policy(&index, "web-v2-0", 8801).server, None);

        // voting-grpc's policy (MeshTLSAuthentication web-only → SA web) as it
        // would apply to a pod naming its port `grpc`.
        let state = index.subscribe();
        let state = state.borrow();
        let mut pod = state.pods[&ObjKey::new("emojivoto", "voting-0")].clone();
        pod.named_ports = vec![("grpc".into(), 8080)];
        let p = inbound_policy(&state, &MeshConfig::default(), &pod, 8080, AccessPolicy::Deny);
        assert_eq!(p.server, Some(ObjKey::new("emojivoto", "voting-grpc")));
        let web_only = p.authorizations.iter().find(|a| a.policy.name == "voting-grpc").expect("voting-grpc");
        let addr = "10.42.0.11".parse().unwrap();
        assert!(web_only.allows(Some("web.emojivoto.serviceaccount.identity.weft.cluster.local"), addr));
        assert!(!web_only.allows(Some("voting.emojivoto.serviceaccount.identity.weft.cluster.local"), addr));
        assert!(!web_only.allows(None, addr), "mesh TLS needs an identity");
    }

    #[test]
    fn a_missing_authentication_authorizes_nobody_and_is_reported() {
        let index = index(&["networkauthentications.policy.linkerd.io-emojivoto.list.json"]);
        let p = policy(&index, "web-v1-0", 8080);
        assert!(p.authorizations.is_empty());
        assert_eq!(p.unresolved.len(), 1);
        assert!(p.unresolved[0].1.contains("cluster-network"), "{:?}", p.unresolved);
    }

    #[test]
    fn two_network_authentications_authorize_nobody() {
        let index = index(&[]);
        let mut ap = index.subscribe().borrow().authorization_policies
            [&ObjKey::new("emojivoto", "emojivoto-cluster-network")]
            .clone();
        ap.required.push(ap.required[0].clone());
        index.apply(crate::model::Object::AuthorizationPolicy(ap));
        let p = policy(&index, "web-v1-0", 8080);
        assert!(p.authorizations.is_empty(), "{:?}", p.authorizations);
        assert!(p.unresolved[0].1.contains("2 NetworkAuthentications"), "{:?}", p.unresolved);
    }
}
