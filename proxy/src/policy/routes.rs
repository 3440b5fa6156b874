//! Matching a request to a route and rule, with Gateway API precedence:
//! among the rules that match, an exact path beats a longer prefix beats a
//! shorter one (regexes rank below prefixes), then a method match, then
//! more header matches, then more query parameter matches; ties go to the
//! route listed first.
//!
//! Both directions use it: inbound policy's routes, and outbound policy's
//! (HTTPRoute/GRPCRoute with a Service parent), which `outbound_policy`
//! keeps in the same shape.

use http::{Method, Request};
use regex::Regex;

use super::{filters::Filter, Route, ServerPolicy};

#[derive(Debug)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` as ["com", "example"] (reversed labels).
    Suffix(Vec<String>),
}

#[derive(Debug)]
pub struct Rule {
    /// Empty: matches every request.
    pub matches: Vec<RequestMatch>,
    pub filters: Vec<Filter>,
}

#[derive(Debug, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
    pub method: Option<Method>,
}

#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    pub value: ValueMatch<Vec<u8>>,
}

#[derive(Debug)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: ValueMatch<String>,
}

#[derive(Debug)]
pub enum ValueMatch<T> {
    Exact(T),
    Regex(Regex),
}

/// Where a request landed: indexes into its [`ServerPolicy`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: usize,
    pub rule: usize,
}

/// How specific a match is; larger wins.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query_params: usize,
}

impl ServerPolicy {
    /// The route and rule serving `req`, if any.
    pub fn route_for<B>(&self, req: &Request<B>) -> Option<RouteMatch> {
        let mut best: Option<(Score, RouteMatch)> = None;
        let host = request_host(req);
        for (r, route) in self.routes.iter().enumerate() {
            if !route.matches_host(host) {
                continue;
            }
            for (i, rule) in route.rules.iter().enumerate() {
                // No matches: every request, as `PathPrefix /` would.
                let score = if rule.matches.is_empty() {
                    Some(Score { path_kind: 2, path_len: 1, method: false, headers: 0, query_params: 0 })
                } else {
                    rule.matches.iter().filter_map(|m| m.score(req)).max()
                };
                if let Some(score) = score {
                    if best.is_none_or(|(b, _)| score > b) {
                        best = Some((score, RouteMatch { route: r, rule: i }));
                    }
                }
            }
        }
        best.map(|(_, m)| m)
    }
}

impl Route {
    fn matches_host(&self, host: Option<&str>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some(host) = host else { return false };
        self.hosts.iter().any(|m| match m {
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
            HostMatch::Suffix(reversed) => {
                let mut labels = host.rsplit('.');
                reversed.iter().all(|l| labels.next().is_some_and(|h| h.eq_ignore_ascii_case(l)))
                    && labels.next().is_some()
            }
        })
    }
}

/// The request's host without its port (the URI's for HTTP/2, else Host).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(host) = req.uri().host() {
        return Some(host);
    }
    let authority = req.headers().get(http::header::HOST)?.to_str().ok()?;
    if authority.starts_with('[') {
        return authority.find(']').map(|end| &authority[..=end]);
    }
    Some(match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    })
}

impl RequestMatch {
    fn score<B>(&self, req: &Request<B>) -> Option<Score> {
        let path = req.uri().path();
        let (path_kind, path_len) = match &self.path {
            // Gateway API: a match without a path is `PathPrefix /`, so it
            // ranks with that prefix and its headers or method decide.
            None => (2, 1),
            Some(PathMatch::Exact(p)) => (p == path).then_some((3, p.len()))?,
            Some(PathMatch::Prefix(p)) => prefix_matches(p, path).then_some((2, p.len()))?,
            Some(PathMatch::Regex(re)) => re.is_match(path).then_some((1, 0))?,
        };
        if self.method.as_ref().is_some_and(|m| m != req.method()) {
            return None;
        }
        for h in &self.headers {
            let matched = req.headers().get_all(&h.name).iter().any(|v| match &h.value {
                ValueMatch::Exact(want) => v.as_bytes() == want.as_slice(),
                ValueMatch::Regex(re) => v.to_str().is_ok_and(|v| re.is_match(v)),
            });
            if !matched {
                return None;
            }
        }
        if !self.query_params.is_empty() {
            let query = req.uri().query().unwrap_or("");
            for q in &self.query_params {
                let matched = query.split('&').filter_map(|kv| kv.split_once('=')).any(|(k, v)| {
                    k == q.name
                        && match &q.value {
                            ValueMatch::Exact(want) => v == want,
                            ValueMatch::Regex(re) => re.is_match(v),
                        }
                });
                if !matched {
                    return None;
                }
            }
        }
        Some(Score {
            path_kind,
            path_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query_params: self.query_params.len(),
        })
    }
}

/// Gateway API's PathPrefix matches whole path segments: `/foo` matches
/// `/foo` and `/foo/bar`, not `/foobar`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{defaults::DefaultPolicy, Meta, Protocol};

    fn req(method: &str, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    fn rule(matches: Vec<RequestMatch>) -> Rule {
        Rule { matches, filters: vec![] }
    }

    fn route(name: &str, rules: Vec<Rule>) -> Route {
        Route { meta: Meta::default_named(name), hosts: vec![], authorizations: vec![], rules }
    }

    fn policy(routes: Vec<Route>) -> ServerPolicy {
        ServerPolicy {
            meta: Meta::default_named("test"),
            protocol: Protocol::Http1,
            authorizations: vec![],
            routes,
            rate_limit: None,
        }
    }

    fn path(p: PathMatch) -> RequestMatch {
        RequestMatch { path: Some(p), ..Default::default() }
    }

    #[test]
    fn most_specific_path_wins() {
        let p = policy(vec![
            route("prefix", vec![rule(vec![path(PathMatch::Prefix("/".into()))])]),
            route("api", vec![rule(vec![path(PathMatch::Prefix("/api".into()))])]),
            route("exact", vec![rule(vec![path(PathMatch::Exact("/api/x".into()))])]),
        ]);
        let name = |uri: &str| p.route_for(&req("GET", uri)).map(|m| p.routes[m.route].meta.name.to_string());
        assert_eq!(name("/api/x").as_deref(), Some("exact"));
        assert_eq!(name("/api/y").as_deref(), Some("api"));
        assert_eq!(name("/apix").as_deref(), Some("prefix"), "prefixes match whole segments");
        assert_eq!(name("/").as_deref(), Some("prefix"));
    }

    #[test]
    fn methods_headers_and_query_params_must_all_match() {
        let m = RequestMatch {
            path: Some(PathMatch::Prefix("/".into())),
            headers: vec![HeaderMatch {
                name: "x-a".parse().unwrap(),
                value: ValueMatch::Exact(b"1".to_vec()),
            }],
            query_params: vec![QueryParamMatch {
                name: "q".into(),
                value: ValueMatch::Regex(Regex::new("^a+$").unwrap()),
            }],
            method: Some(Method::POST),
        };
        let p = policy(vec![route("r", vec![rule(vec![m])])]);
        let mut ok = req("POST", "/x?q=aaa");
        ok.headers_mut().insert("x-a", "1".parse().unwrap());
        assert!(p.route_for(&ok).is_some());
        let mut wrong_method = req("GET", "/x?q=aaa");
        wrong_method.headers_mut().insert("x-a", "1".parse().unwrap());
        assert!(p.route_for(&wrong_method).is_none());
        assert!(p.route_for(&req("POST", "/x?q=aaa")).is_none(), "header missing");
    }

    #[test]
    fn a_header_match_without_a_path_beats_the_catch_all_prefix() {
        let canary = RequestMatch {
            headers: vec![HeaderMatch {
                name: "x-canary".parse().unwrap(),
                value: ValueMatch::Exact(b"true".to_vec()),
            }],
            ..Default::default()
        };
        let p = policy(vec![route(
            "r",
            vec![rule(vec![canary]), rule(vec![path(PathMatch::Prefix("/".into()))])],
        )]);
        let mut with_header = req("GET", "/x");
        with_header.headers_mut().insert("x-canary", "true".parse().unwrap());
        assert_eq!(p.route_for(&with_header).map(|m| m.rule), Some(0));
        assert_eq!(p.route_for(&req("GET", "/x")).map(|m| m.rule), Some(1));
    }

    #[test]
    fn hosts_restrict_routes() {
        let mut r = route("r", vec![rule(vec![])]);
        r.hosts =
            vec![HostMatch::Suffix(vec!["com".into(), "example".into()]), HostMatch::Exact("a.test".into())];
        let p = policy(vec![r]);
        let with_host = |h: &str| {
            let mut q = req("GET", "/");
            q.headers_mut().insert(http::header::HOST, h.parse().unwrap());
            p.route_for(&q).is_some()
        };
        assert!(with_host("www.example.com:8080"));
        assert!(with_host("a.test"));
        assert!(!with_host("example.com"), "a suffix needs a label before it");
        assert!(!with_host("b.test"));
    }

    #[test]
    fn probes_beat_the_default_route() {
        let p = DefaultPolicy::Deny.server(8080, &[(8080, "/ready".into())], &[]);
        let m = p.route_for(&req("GET", "/ready")).unwrap();
        assert!(p.routes[m.route].meta.is_default("probe"));
        let m = p.route_for(&req("POST", "/ready")).unwrap();
        assert!(p.routes[m.route].meta.is_default("default"));
    }
}
