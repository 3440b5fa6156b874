//! Inbound policy (Linkerd's `policy.linkerd.io` model): which clients may
//! reach which port, by route, and how fast.
//!
//! Each inbound port has a [`ServerPolicy`], kept in a `watch` the data path
//! borrows per request or connection. It comes from the control plane's
//! InboundServerPolicies API ([`api`], decoded defensively by [`decode`]) or,
//! until that answers, while it is unreachable and when it does not know the
//! port, from the local default built from the environment ([`defaults`]).
//!
//! Enforcement: [`authorize`] (route match then authorizations, for HTTP;
//! server-level authorizations for opaque connections), [`rate_limit`] and
//! [`filters`] (what a matched route does to a request) are tower layers
//! the inbound HTTP stack is built from.

pub mod api;
pub mod authorize;
pub mod decode;
pub mod defaults;
pub mod filters;
pub mod metrics;
pub mod rate_limit;
pub mod routes;

use std::{collections::HashSet, net::IpAddr, sync::Arc, time::Duration};

use ipnet::IpNet;

pub use self::{api::Policies, defaults::DefaultPolicy};

/// What the policy of one inbound port says.
#[derive(Debug)]
pub struct ServerPolicy {
    pub meta: Meta,
    pub protocol: Protocol,
    /// Server-level authorizations: what opaque connections are checked
    /// against.
    pub authorizations: Vec<Authz>,
    /// HTTP (and gRPC) routes; empty for opaque and TLS servers.
    pub routes: Vec<Route>,
    pub rate_limit: Option<rate_limit::RateLimit>,
}

/// Linkerd's `(group, kind, name)` of a policy resource, the metrics'
/// `srv_*`, `route_*` and `authz_*` labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

impl Meta {
    pub fn default_named(name: &str) -> Self {
        Meta { group: "".into(), kind: "default".into(), name: name.into() }
    }

    pub fn is_default(&self, name: &str) -> bool {
        &*self.kind == "default" && &*self.name == name
    }
}

impl std::fmt::Display for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}:{}", self.kind, self.name)
        } else {
            write!(f, "{}.{}:{}", self.kind, self.group, self.name)
        }
    }
}

/// The server's proxyProtocol: whether to detect, and what.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Detect(Duration),
    Http1,
    Http2,
    Grpc,
    Opaque,
    Tls,
}

#[derive(Clone, Debug)]
pub struct Authz {
    pub meta: Meta,
    pub networks: Vec<Network>,
    pub authentication: Authentication,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl Network {
    pub fn all() -> Vec<Network> {
        vec![
            // ipnet's defaults are the unspecified networks, 0.0.0.0/0 and ::/0.
            Network { net: IpNet::V4(ipnet::Ipv4Net::default()), except: vec![] },
            Network { net: IpNet::V6(ipnet::Ipv6Net::default()), except: vec![] },
        ]
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Any client, TLS or not.
    Unauthenticated,
    /// Mesh TLS, with or without a client identity.
    TlsUnauthenticated,
    /// Mesh TLS with one of these identities, or one ending in one of these
    /// suffixes (an empty suffix: any identity).
    MeshTls { identities: HashSet<String>, suffixes: Vec<Vec<String>> },
}

/// How the client reached us, as authorizations see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTls {
    Plaintext,
    /// Mesh TLS; `None` when the client presented no certificate.
    Mesh(Option<Arc<str>>),
}

impl ClientTls {
    pub fn id(&self) -> Option<&str> {
        match self {
            ClientTls::Mesh(Some(id)) => Some(id),
            _ => None,
        }
    }
}

impl Authentication {
    fn permits(&self, tls: &ClientTls) -> bool {
        match (self, tls) {
            (Authentication::Unauthenticated, _) => true,
            (Authentication::TlsUnauthenticated, ClientTls::Mesh(_)) => true,
            (Authentication::MeshTls { identities, suffixes }, ClientTls::Mesh(Some(id))) => {
                identities.contains(&**id) || suffixes.iter().any(|s| has_suffix(id, s))
            }
            _ => false,
        }
    }
}

/// `id`'s dot-separated labels end with `suffix` (Linkerd's IdentitySuffix:
/// `["ns", "serviceaccount", ...]` is `*.ns.serviceaccount...`).
fn has_suffix(id: &str, suffix: &[String]) -> bool {
    let mut labels = id.rsplit('.');
    suffix.iter().rev().all(|part| labels.next() == Some(part.as_str()))
}

impl Authz {
    pub fn permits(&self, ip: IpAddr, tls: &ClientTls) -> bool {
        self.networks.iter().any(|n| n.contains(ip)) && self.authentication.permits(tls)
    }

    /// Linkerd's `audit` default policy: allowed, but logged as "would deny".
    pub fn is_audit(&self) -> bool {
        self.meta.is_default("audit")
    }
}

/// The first authorization that permits the client, if any.
pub fn authorized<'a>(authzs: &'a [Authz], ip: IpAddr, tls: &ClientTls) -> Option<&'a Authz> {
    authorized_index(authzs, ip, tls).map(|i| &authzs[i])
}

pub fn authorized_index(authzs: &[Authz], ip: IpAddr, tls: &ClientTls) -> Option<usize> {
    let ip = ip.to_canonical();
    authzs.iter().position(|a| a.permits(ip, tls))
}

/// An HTTP or gRPC route (gRPC rules match on the path `/service/method`).
#[derive(Debug)]
pub struct Route {
    pub meta: Meta,
    pub hosts: Vec<routes::HostMatch>,
    pub authorizations: Vec<Authz>,
    pub rules: Vec<routes::Rule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(id: &str) -> ClientTls {
        ClientTls::Mesh(Some(id.into()))
    }

    #[test]
    fn suffixes_match_whole_labels() {
        let s = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert!(has_suffix(
            "web.emojivoto.serviceaccount.identity.weft.cluster.local",
            &s(&["cluster", "local"])
        ));
        assert!(has_suffix("a.b", &s(&[])), "no parts: any identity");
        assert!(!has_suffix("web.xemojivoto.serviceaccount", &s(&["emojivoto", "serviceaccount"])));
        assert!(!has_suffix("local", &s(&["cluster", "local"])));
    }

    #[test]
    fn authentication_kinds() {
        let any_id = Authentication::MeshTls { identities: HashSet::new(), suffixes: vec![vec![]] };
        assert!(!any_id.permits(&ClientTls::Plaintext));
        assert!(!any_id.permits(&ClientTls::Mesh(None)));
        assert!(any_id.permits(&mesh("a.b")));
        let exact = Authentication::MeshTls { identities: ["a.b".to_string()].into(), suffixes: vec![] };
        assert!(exact.permits(&mesh("a.b")));
        assert!(!exact.permits(&mesh("x.a.b")));
        assert!(Authentication::TlsUnauthenticated.permits(&ClientTls::Mesh(None)));
        assert!(!Authentication::TlsUnauthenticated.permits(&ClientTls::Plaintext));
        assert!(Authentication::Unauthenticated.permits(&ClientTls::Plaintext));
    }

    #[test]
    fn networks_honour_except_and_v4_mapped_clients() {
        let authz = Authz {
            meta: Meta::default_named("x"),
            networks: vec![Network {
                net: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()],
            }],
            authentication: Authentication::Unauthenticated,
        };
        let authzs = [authz];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(authorized(&authzs, ip("10.2.3.4"), &ClientTls::Plaintext).is_some());
        assert!(authorized(&authzs, ip("::ffff:10.2.3.4"), &ClientTls::Plaintext).is_some());
        assert!(authorized(&authzs, ip("10.1.3.4"), &ClientTls::Plaintext).is_none());
        assert!(authorized(&authzs, ip("192.168.0.1"), &ClientTls::Plaintext).is_none());
    }
}
