//! InboundServerPolicies' `Server` message → [`ServerPolicy`]. Anything
//! malformed (a bad CIDR, a missing oneof, an unknown enum value, an
//! invalid header or regex, absurd sizes) rejects the whole message: the
//! caller keeps the policy it had rather than enforce half of one.

use std::{collections::HashSet, time::Duration};

use http::{HeaderName, HeaderValue, Method, StatusCode};
use linkerd2_proxy_api::{grpc_route as grpc, http_route as api_http, inbound as api, meta as api_meta};
use regex::{Regex, RegexBuilder};

use super::{
    filters::{Failure, Filter, PathModifier, Redirect},
    rate_limit::{Bucket, Override, RateLimit},
    routes::{HeaderMatch, HostMatch, PathMatch, QueryParamMatch, RequestMatch, Rule, ValueMatch},
    Authentication, Authz, Meta, Network, Protocol, Route, ServerPolicy,
};

/// Bounds on what one message may hold: far above any real policy, far
/// below what would hurt the proxy.
const MAX_ITEMS: usize = 1024;
const MAX_REGEX_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("too many {0} (more than {MAX_ITEMS})")]
    TooMany(&'static str),
    #[error("invalid regex: {0}")]
    Regex(#[from] regex::Error),
}

type Result<T> = std::result::Result<T, DecodeError>;

fn bounded<T>(items: Vec<T>, what: &'static str) -> Result<Vec<T>> {
    if items.len() > MAX_ITEMS {
        return Err(DecodeError::TooMany(what));
    }
    Ok(items)
}

pub fn server(pb: api::Server) -> Result<ServerPolicy> {
    let label = |k: &str| pb.labels.get(k).map(|v| v.as_str()).unwrap_or("");
    let meta = Meta { group: label("group").into(), kind: label("kind").into(), name: label("name").into() };
    if meta.name.is_empty() {
        return Err(DecodeError::Missing("server name label"));
    }
    let authorizations = authzs(pb.authorizations)?;
    use api::proxy_protocol::Kind;
    let kind = pb.protocol.and_then(|p| p.kind).ok_or(DecodeError::Missing("protocol"))?;
    let (protocol, routes, rate_limit) = match kind {
        Kind::Detect(d) => {
            let timeout = match d.timeout {
                Some(t) => Duration::try_from(t).map_err(|_| DecodeError::Invalid("detect timeout"))?,
                None => Duration::from_secs(10),
            };
            (
                Protocol::Detect(timeout),
                http_routes(d.http_routes)?,
                d.http_local_rate_limit.map(rate_limit).transpose()?,
            )
        }
        Kind::Http1(h) => {
            (Protocol::Http1, http_routes(h.routes)?, h.local_rate_limit.map(rate_limit).transpose()?)
        }
        Kind::Http2(h) => {
            (Protocol::Http2, http_routes(h.routes)?, h.local_rate_limit.map(rate_limit).transpose()?)
        }
        Kind::Grpc(g) => (Protocol::Grpc, grpc_routes(g.routes)?, None),
        Kind::Opaque(_) => (Protocol::Opaque, vec![], None),
        Kind::Tls(_) => (Protocol::Tls, vec![], None),
    };
    // A control plane that sends an HTTP server no routes (older ones did)
    // means its authorizations for every request, as Linkerd's proxy takes it.
    let routes = if routes.is_empty()
        && matches!(protocol, Protocol::Detect(_) | Protocol::Http1 | Protocol::Http2 | Protocol::Grpc)
    {
        vec![default_route(&authorizations)]
    } else {
        routes
    };
    Ok(ServerPolicy { meta, protocol, authorizations, routes, rate_limit })
}

fn default_route(authorizations: &[Authz]) -> Route {
    Route {
        meta: Meta::default_named("default"),
        hosts: vec![],
        authorizations: authorizations.to_vec(),
        rules: vec![Rule {
            matches: vec![RequestMatch { path: Some(PathMatch::Prefix("/".into())), ..Default::default() }],
            filters: vec![],
        }],
    }
}

fn meta(pb: Option<api_meta::Metadata>) -> Result<Meta> {
    match pb.and_then(|m| m.kind).ok_or(DecodeError::Missing("metadata"))? {
        api_meta::metadata::Kind::Default(name) => Ok(Meta::default_named(&name)),
        api_meta::metadata::Kind::Resource(r) => {
            Ok(Meta { group: r.group.into(), kind: r.kind.into(), name: r.name.into() })
        }
    }
}

fn authzs(pb: Vec<api::Authz>) -> Result<Vec<Authz>> {
    bounded(pb, "authorizations")?.into_iter().map(authz).collect()
}

fn authz(pb: api::Authz) -> Result<Authz> {
    let meta = match pb.metadata {
        Some(m) => meta(Some(m))?,
        // Older control planes label authorizations instead.
        None => {
            let label = |k: &str| pb.labels.get(k).map(|v| v.as_str()).unwrap_or("");
            if label("name").is_empty() {
                return Err(DecodeError::Missing("authorization metadata"));
            }
            Meta { group: label("group").into(), kind: label("kind").into(), name: label("name").into() }
        }
    };
    let networks = bounded(pb.networks, "networks")?
        .into_iter()
        .map(|n| {
            let net = n.net.ok_or(DecodeError::Missing("network"))?;
            Ok(Network {
                net: ipnet::IpNet::try_from(net).map_err(|_| DecodeError::Invalid("network"))?.trunc(),
                except: bounded(n.except, "network exceptions")?
                    .into_iter()
                    .map(|e| {
                        ipnet::IpNet::try_from(e)
                            .map(|e| e.trunc())
                            .map_err(|_| DecodeError::Invalid("network exception"))
                    })
                    .collect::<Result<_>>()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    use api::authn::{permit_mesh_tls::Clients, Permit};
    let authentication = match pb
        .authentication
        .and_then(|a| a.permit)
        .ok_or(DecodeError::Missing("authentication"))?
    {
        Permit::Unauthenticated(_) => Authentication::Unauthenticated,
        Permit::MeshTls(m) => match m.clients.ok_or(DecodeError::Missing("mesh TLS clients"))? {
            Clients::Unauthenticated(_) => Authentication::TlsUnauthenticated,
            Clients::Identities(ids) => Authentication::MeshTls {
                identities: bounded(ids.identities, "identities")?
                    .into_iter()
                    .map(|i| i.name)
                    .collect::<HashSet<_>>(),
                suffixes: bounded(ids.suffixes, "identity suffixes")?.into_iter().map(|s| s.parts).collect(),
            },
        },
    };
    Ok(Authz { meta, networks, authentication })
}

fn hosts(pb: Vec<api_http::HostMatch>) -> Result<Vec<HostMatch>> {
    use api_http::host_match::Match;
    bounded(pb, "hosts")?
        .into_iter()
        .map(|h| match h.r#match.ok_or(DecodeError::Missing("host match"))? {
            Match::Exact(e) => Ok(HostMatch::Exact(e)),
            Match::Suffix(s) => Ok(HostMatch::Suffix(s.reverse_labels)),
        })
        .collect()
}

fn regex(re: &str) -> Result<Regex> {
    // Anchored: Gateway API regexes match the whole value.
    Ok(RegexBuilder::new(&format!("^(?:{re})$")).size_limit(MAX_REGEX_BYTES * 16).build()?)
}

fn header_matches(pb: Vec<api_http::HeaderMatch>) -> Result<Vec<HeaderMatch>> {
    use api_http::header_match::Value;
    bounded(pb, "header matches")?
        .into_iter()
        .map(|h| {
            let name = HeaderName::try_from(h.name).map_err(|_| DecodeError::Invalid("header name"))?;
            let value = match h.value.ok_or(DecodeError::Missing("header match value"))? {
                Value::Exact(v) => ValueMatch::Exact(v),
                Value::Regex(re) => ValueMatch::Regex(regex(&re)?),
            };
            Ok(HeaderMatch { name, value })
        })
        .collect()
}

fn http_routes(pb: Vec<api::HttpRoute>) -> Result<Vec<Route>> {
    bounded(pb, "routes")?.into_iter().map(http_route).collect()
}

fn http_route(pb: api::HttpRoute) -> Result<Route> {
    let rules = bounded(pb.rules, "rules")?
        .into_iter()
        .map(|r| {
            let matches =
                bounded(r.matches, "matches")?.into_iter().map(http_match).collect::<Result<_>>()?;
            let filters = bounded(r.filters, "filters")?
                .into_iter()
                .map(|f| http_filter(f.kind.ok_or(DecodeError::Missing("filter"))?))
                .collect::<Result<_>>()?;
            Ok(Rule { matches, filters })
        })
        .collect::<Result<_>>()?;
    Ok(Route {
        meta: meta(pb.metadata)?,
        hosts: hosts(pb.hosts)?,
        authorizations: authzs(pb.authorizations)?,
        rules,
    })
}

fn http_match(pb: api_http::HttpRouteMatch) -> Result<RequestMatch> {
    use api_http::{path_match::Kind, query_param_match::Value};
    let path = match pb.path {
        None => None,
        Some(p) => Some(match p.kind.ok_or(DecodeError::Missing("path match"))? {
            Kind::Exact(e) => PathMatch::Exact(e),
            Kind::Prefix(p) => PathMatch::Prefix(p),
            Kind::Regex(re) => PathMatch::Regex(regex(&re)?),
        }),
    };
    let query_params = bounded(pb.query_params, "query parameter matches")?
        .into_iter()
        .map(|q| {
            let value = match q.value.ok_or(DecodeError::Missing("query parameter match value"))? {
                Value::Exact(v) => ValueMatch::Exact(v),
                Value::Regex(re) => ValueMatch::Regex(regex(&re)?),
            };
            Ok(QueryParamMatch { name: q.name, value })
        })
        .collect::<Result<_>>()?;
    let method = match pb.method {
        None => None,
        Some(m) => Some(Method::try_from(m).map_err(|_| DecodeError::Invalid("method"))?),
    };
    Ok(RequestMatch { path, headers: header_matches(pb.headers)?, query_params, method })
}

fn header_modifier(pb: api_http::RequestHeaderModifier) -> Result<Filter> {
    let pairs =
        |headers: Option<linkerd2_proxy_api::http_types::Headers>| -> Result<Vec<(HeaderName, HeaderValue)>> {
            bounded(headers.map(|h| h.headers).unwrap_or_default(), "headers")?
                .into_iter()
                .map(|h| {
                    Ok((
                        HeaderName::try_from(h.name).map_err(|_| DecodeError::Invalid("header name"))?,
                        HeaderValue::try_from(h.value).map_err(|_| DecodeError::Invalid("header value"))?,
                    ))
                })
                .collect()
        };
    Ok(Filter::RequestHeaders {
        add: pairs(pb.add)?,
        set: pairs(pb.set)?,
        remove: bounded(pb.remove, "headers")?
            .into_iter()
            .map(|n| HeaderName::try_from(n).map_err(|_| DecodeError::Invalid("header name")))
            .collect::<Result<_>>()?,
    })
}

fn ratio(r: Option<api_http::Ratio>) -> Result<(u32, u32)> {
    match r {
        None => Ok((1, 1)),
        Some(r) if r.denominator == 0 || r.numerator > r.denominator => {
            Err(DecodeError::Invalid("failure ratio"))
        }
        Some(r) => Ok((r.numerator, r.denominator)),
    }
}

fn http_filter(pb: api::http_route::filter::Kind) -> Result<Filter> {
    use api::http_route::filter::Kind;
    match pb {
        Kind::RequestHeaderModifier(m) => header_modifier(m),
        Kind::FailureInjector(f) => {
            let status = u16::try_from(f.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or(DecodeError::Invalid("failure status"))?;
            let (numerator, denominator) = ratio(f.ratio)?;
            Ok(Filter::Fail { failure: Failure::Http(status), message: f.message, numerator, denominator })
        }
        Kind::Redirect(r) => {
            let scheme = match r.scheme {
                None => None,
                Some(s) => Some(
                    http::uri::Scheme::try_from(s).map_err(|_| DecodeError::Invalid("redirect scheme"))?,
                ),
            };
            let path = match r.path.map(|p| p.replace) {
                None => None,
                Some(None) => return Err(DecodeError::Missing("redirect path")),
                Some(Some(api_http::path_modifier::Replace::Full(f))) => Some(PathModifier::Full(f)),
                Some(Some(api_http::path_modifier::Replace::Prefix(p))) => Some(PathModifier::Prefix(p)),
            };
            let port = match r.port {
                0 => None,
                p => Some(u16::try_from(p).map_err(|_| DecodeError::Invalid("redirect port"))?),
            };
            let status = match r.status {
                0 => StatusCode::FOUND,
                s @ 300..=399 => {
                    StatusCode::from_u16(s as u16).map_err(|_| DecodeError::Invalid("redirect status"))?
                }
                _ => return Err(DecodeError::Invalid("redirect status")),
            };
            let host = Some(r.host).filter(|h| !h.is_empty());
            Ok(Filter::Redirect(Redirect { scheme, host, path, port, status }))
        }
    }
}

fn grpc_routes(pb: Vec<api::GrpcRoute>) -> Result<Vec<Route>> {
    bounded(pb, "routes")?.into_iter().map(grpc_route).collect()
}

fn grpc_route(pb: api::GrpcRoute) -> Result<Route> {
    let rules = bounded(pb.rules, "rules")?
        .into_iter()
        .map(|r| {
            let matches =
                bounded(r.matches, "matches")?.into_iter().map(grpc_match).collect::<Result<_>>()?;
            let filters = bounded(r.filters, "filters")?
                .into_iter()
                .map(|f| {
                    use api::grpc_route::filter::Kind;
                    match f.kind.ok_or(DecodeError::Missing("filter"))? {
                        Kind::RequestHeaderModifier(m) => header_modifier(m),
                        Kind::FailureInjector(f) => {
                            let (numerator, denominator) = ratio(f.ratio)?;
                            if f.code > 16 {
                                return Err(DecodeError::Invalid("gRPC failure code"));
                            }
                            Ok(Filter::Fail {
                                failure: Failure::Grpc(f.code),
                                message: f.message,
                                numerator,
                                denominator,
                            })
                        }
                    }
                })
                .collect::<Result<_>>()?;
            Ok(Rule { matches, filters })
        })
        .collect::<Result<_>>()?;
    Ok(Route {
        meta: meta(pb.metadata)?,
        hosts: hosts(pb.hosts)?,
        authorizations: authzs(pb.authorizations)?,
        rules,
    })
}

/// gRPC's service and method are the path `/service/method`.
fn grpc_match(pb: grpc::GrpcRouteMatch) -> Result<RequestMatch> {
    let path = match pb.rpc {
        None => None,
        Some(rpc) => match (rpc.service.as_str(), rpc.method.as_str()) {
            ("", "") => None,
            (s, "") => Some(PathMatch::Prefix(format!("/{s}"))),
            ("", m) => Some(PathMatch::Regex(regex(&format!("/[^/]+/{}", regex::escape(m)))?)),
            (s, m) => Some(PathMatch::Exact(format!("/{s}/{m}"))),
        },
    };
    Ok(RequestMatch {
        path,
        headers: header_matches(pb.headers)?,
        query_params: vec![],
        method: Some(Method::POST),
    })
}

/// The rate limit, when it sets any limit.
fn rate_limit(pb: api::HttpLocalRateLimit) -> Result<RateLimit> {
    let rps =
        |l: Option<api::http_local_rate_limit::Limit>| l.map(|l| l.requests_per_second).filter(|r| *r > 0);
    let overrides = bounded(pb.overrides, "rate limit overrides")?
        .into_iter()
        .filter_map(|o| {
            let limit = rps(o.limit)?;
            let clients =
                o.clients.map(|c| c.identities.into_iter().map(|i| i.name).collect()).unwrap_or_default();
            Some(Override { clients, bucket: Bucket::new(limit) })
        })
        .collect();
    Ok(RateLimit::new(
        meta(pb.metadata).unwrap_or_else(|_| Meta::default_named("ratelimit")),
        rps(pb.total),
        rps(pb.identity),
        overrides,
    ))
}

#[cfg(test)]
mod tests {
    use linkerd2_proxy_api::net;

    use super::*;

    fn labels() -> std::collections::HashMap<String, String> {
        [("group", "policy.linkerd.io"), ("kind", "server"), ("name", "web")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn opaque_server(authorizations: Vec<api::Authz>) -> api::Server {
        api::Server {
            protocol: Some(api::ProxyProtocol {
                kind: Some(api::proxy_protocol::Kind::Opaque(api::proxy_protocol::Opaque {})),
            }),
            server_ips: vec![],
            authorizations,
            labels: labels(),
        }
    }

    fn authz(net: net::IpNetwork) -> api::Authz {
        api::Authz {
            networks: vec![api::Network { net: Some(net), except: vec![] }],
            authentication: Some(api::Authn {
                permit: Some(api::authn::Permit::Unauthenticated(api::authn::PermitUnauthenticated {})),
            }),
            labels: Default::default(),
            metadata: Some(api_meta::Metadata { kind: Some(api_meta::metadata::Kind::Default("x".into())) }),
        }
    }

    #[test]
    fn a_well_formed_server_decodes() {
        let ok = server(opaque_server(vec![authz(net::IpNetwork::from((std::net::Ipv4Addr::LOCALHOST, 8)))]))
            .unwrap();
        assert_eq!(ok.protocol, Protocol::Opaque);
        assert_eq!(&*ok.meta.name, "web");
        assert_eq!(ok.authorizations.len(), 1);
    }

    #[test]
    fn an_http_server_without_routes_gets_the_default_route() {
        let mut pb = opaque_server(vec![authz(net::IpNetwork::from((std::net::Ipv4Addr::LOCALHOST, 8)))]);
        pb.protocol = Some(api::ProxyProtocol {
            kind: Some(api::proxy_protocol::Kind::Http1(api::proxy_protocol::Http1::default())),
        });
        let policy = server(pb).unwrap();
        assert_eq!(policy.routes.len(), 1);
        assert!(policy.routes[0].meta.is_default("default"));
        assert_eq!(policy.routes[0].authorizations.len(), 1);
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let bad_prefix =
            net::IpNetwork { ip: Some(std::net::IpAddr::from([10, 0, 0, 0]).into()), prefix_len: 33 };
        assert!(server(opaque_server(vec![authz(bad_prefix)])).is_err(), "bad CIDR");
        let mut no_authn = authz(net::IpNetwork::from((std::net::Ipv4Addr::LOCALHOST, 8)));
        no_authn.authentication = None;
        assert!(server(opaque_server(vec![no_authn])).is_err(), "missing oneof");
        let mut no_protocol = opaque_server(vec![]);
        no_protocol.protocol = None;
        assert!(server(no_protocol).is_err());
        let many =
            (0..2000).map(|_| authz(net::IpNetwork::from((std::net::Ipv4Addr::LOCALHOST, 8)))).collect();
        assert!(server(opaque_server(many)).is_err(), "absurd sizes");
    }
}
