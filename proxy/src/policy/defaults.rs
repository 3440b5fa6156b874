//! The local default policy (`WEFT_PROXY_INBOUND_DEFAULT_POLICY`), built in
//! the shape the control plane gives a port no Server covers: route
//! `default` (PathPrefix "/") with the server's authorizations, plus route
//! `probe` for the kubelet's probes on that port, open to any client.

use std::{collections::HashSet, time::Duration};

use http::Method;
use ipnet::IpNet;

use super::{
    routes::{PathMatch, RequestMatch, Rule},
    Authentication, Authz, Meta, Network, Protocol, Route, ServerPolicy,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterAuthenticated,
    ClusterUnauthenticated,
    Deny,
    Audit,
}

/// The control plane's default detect timeout.
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 6] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::ClusterUnauthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::ClusterUnauthenticated => "cluster-unauthenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }

    /// The server-level authorizations: none for `deny`.
    fn authorizations(self, cluster_networks: &[IpNet]) -> Vec<Authz> {
        let cluster =
            || cluster_networks.iter().map(|net| Network { net: *net, except: vec![] }).collect::<Vec<_>>();
        let any_identity = || Authentication::MeshTls { identities: HashSet::new(), suffixes: vec![vec![]] };
        let (networks, authentication) = match self {
            DefaultPolicy::Deny => return vec![],
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => {
                (Network::all(), Authentication::Unauthenticated)
            }
            DefaultPolicy::AllAuthenticated => (Network::all(), any_identity()),
            DefaultPolicy::ClusterAuthenticated => (cluster(), any_identity()),
            DefaultPolicy::ClusterUnauthenticated => (cluster(), Authentication::Unauthenticated),
        };
        vec![Authz { meta: Meta::default_named(self.name()), networks, authentication }]
    }

    /// The policy of inbound `port` until (or unless) the control plane
    /// gives one; `probes` are `(port, path)` of the kubelet's probes.
    pub fn server(self, port: u16, probes: &[(u16, String)], cluster_networks: &[IpNet]) -> ServerPolicy {
        let mut routes = vec![Route {
            meta: Meta::default_named("default"),
            hosts: vec![],
            authorizations: self.authorizations(cluster_networks),
            rules: vec![Rule {
                matches: vec![RequestMatch {
                    path: Some(PathMatch::Prefix("/".into())),
                    ..Default::default()
                }],
                filters: vec![],
            }],
        }];
        let probe_matches: Vec<RequestMatch> = probes
            .iter()
            .filter(|(p, _)| *p == port)
            .map(|(_, path)| RequestMatch {
                path: Some(PathMatch::Exact(path.clone())),
                method: Some(Method::GET),
                ..Default::default()
            })
            .collect();
        if !probe_matches.is_empty() {
            routes.push(Route {
                meta: Meta::default_named("probe"),
                hosts: vec![],
                authorizations: vec![Authz {
                    meta: Meta::default_named("probe"),
                    networks: Network::all(),
                    authentication: Authentication::Unauthenticated,
                }],
                rules: vec![Rule { matches: probe_matches, filters: vec![] }],
            });
        }
        ServerPolicy {
            meta: Meta::default_named(self.name()),
            protocol: Protocol::Detect(DETECT_TIMEOUT),
            authorizations: self.authorizations(cluster_networks),
            routes,
            rate_limit: None,
        }
    }
}

/// Parses `WEFT_PROXY_INBOUND_DEFAULT_POLICY`.
impl std::str::FromStr for DefaultPolicy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        DefaultPolicy::ALL.iter().copied().find(|p| p.name() == s).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::policy::{authorized, ClientTls};

    #[test]
    fn each_default_policy_authorizes_as_documented() {
        let cluster: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let id = ClientTls::Mesh(Some("a.ns.serviceaccount.identity.weft.cluster.local".into()));
        let allows = |p: DefaultPolicy, from: &str, tls: &ClientTls| {
            authorized(&p.server(80, &[], &cluster).authorizations, ip(from), tls).is_some()
        };
        use DefaultPolicy::*;
        assert!(allows(AllUnauthenticated, "8.8.8.8", &ClientTls::Plaintext));
        assert!(allows(Audit, "8.8.8.8", &ClientTls::Plaintext));
        assert!(!allows(Deny, "10.1.1.1", &id));
        assert!(allows(ClusterUnauthenticated, "10.1.1.1", &ClientTls::Plaintext));
        assert!(!allows(ClusterUnauthenticated, "8.8.8.8", &ClientTls::Plaintext));
        assert!(allows(AllAuthenticated, "8.8.8.8", &id));
        assert!(!allows(AllAuthenticated, "8.8.8.8", &ClientTls::Mesh(None)));
        assert!(allows(ClusterAuthenticated, "10.1.1.1", &id));
        assert!(!allows(ClusterAuthenticated, "10.1.1.1", &ClientTls::Plaintext));
        assert!(!allows(ClusterAuthenticated, "8.8.8.8", &id));
        for p in DefaultPolicy::ALL {
            assert_eq!(p.name().parse::<DefaultPolicy>(), Ok(p));
        }
    }
}
