//! What a matched route's rule does to a request before it goes on: modify
//! its headers, redirect it (3xx), fail it on purpose (fault injection), or
//! (outbound only, weft's extension) rewrite its Host and path.

use std::task::{Context, Poll};

use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};

use super::{
    authorize::Matched,
    routes::{PathMatch, Rule},
};
use crate::http::{full, BoxBody, BoxError, LayerFuture};

#[derive(Debug)]
pub enum Filter {
    RequestHeaders {
        add: Vec<(HeaderName, HeaderValue)>,
        set: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    },
    Redirect(Redirect),
    /// Fails `numerator / denominator` of requests with `status` (HTTP) or
    /// `grpc-status` (gRPC routes).
    Fail {
        failure: Failure,
        message: String,
        numerator: u32,
        denominator: u32,
    },
    /// URLRewrite: the Host / `:authority` and the path the backend sees.
    UrlRewrite {
        host: Option<http::uri::Authority>,
        path: Option<PathModifier>,
    },
}

#[derive(Debug)]
pub enum Failure {
    Http(StatusCode),
    Grpc(u32),
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<http::uri::Scheme>,
    pub host: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

#[derive(Clone, Debug)]
pub enum PathModifier {
    Full(String),
    /// Replaces the prefix the rule matched.
    Prefix(String),
}

#[derive(Copy, Clone, Debug, Default)]
pub struct FiltersLayer;

impl<S> tower::Layer<S> for FiltersLayer {
    type Service = Filters<S>;
    fn layer(&self, inner: S) -> Filters<S> {
        Filters { inner }
    }
}

#[derive(Clone)]
pub struct Filters<S> {
    inner: S,
}

impl<S> tower::Service<Request<BoxBody>> for Filters<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Response<BoxBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let Some(Matched { policy, route }) = req.extensions_mut().remove::<Matched>() else {
            return LayerFuture::inner(self.inner.call(req));
        };
        let rule = &policy.routes[route.route].rules[route.rule];
        if let Some(rsp) = apply(rule, &mut req) {
            return LayerFuture::own(async move { Ok(rsp) });
        }
        LayerFuture::inner(self.inner.call(req))
    }
}

/// Applies `rule`'s filters in order; `Some` answers the request instead of
/// the app.
fn apply<B>(rule: &Rule, req: &mut Request<B>) -> Option<Response<BoxBody>> {
    for filter in &rule.filters {
        match filter {
            Filter::RequestHeaders { add, set, remove } => {
                let headers = req.headers_mut();
                for (name, value) in add {
                    headers.append(name, value.clone());
                }
                for (name, value) in set {
                    headers.insert(name, value.clone());
                }
                for name in remove {
                    headers.remove(name);
                }
            }
            Filter::Redirect(redirect) => return Some(redirect_response(rule, redirect, req)),
            Filter::Fail { failure, message, numerator, denominator } => {
                if *denominator > 0 && rand::random_range(0..*denominator) < *numerator {
                    return Some(failure_response(failure, message));
                }
            }
            Filter::UrlRewrite { host, path } => rewrite(rule, host.as_ref(), path.as_ref(), req),
        }
    }
    None
}

/// The path `modifier` makes of `path`: replaced whole, or the prefix the
/// rule matched replaced (`/old` → `/new` makes `/old/x` `/new/x`).
fn modified_path(rule: &Rule, modifier: &PathModifier, path: &str) -> String {
    match modifier {
        PathModifier::Full(full) => full.clone(),
        PathModifier::Prefix(replacement) => {
            let matched = rule.matches.iter().find_map(|m| match &m.path {
                Some(PathMatch::Prefix(p)) if path.starts_with(p.as_str()) => Some(p.as_str()),
                _ => None,
            });
            match matched {
                Some(p) => {
                    let rest = &path[p.trim_end_matches('/').len()..];
                    match format!("{}{rest}", replacement.trim_end_matches('/')) {
                        // `/old` replaced by `/` on `/old` itself.
                        empty if empty.is_empty() => "/".to_string(),
                        path => path,
                    }
                }
                None => path.to_string(),
            }
        }
    }
}

/// URLRewrite: the new path keeps the query; the new host replaces the
/// Host header and, where the request has one (HTTP/2, absolute form), the
/// URI's authority.
fn rewrite<B>(
    rule: &Rule,
    host: Option<&http::uri::Authority>,
    path: Option<&PathModifier>,
    req: &mut Request<B>,
) {
    let mut parts = req.uri().clone().into_parts();
    if let Some(modifier) = path {
        let uri = req.uri();
        let path = modified_path(rule, modifier, uri.path());
        let path_and_query = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        match http::uri::PathAndQuery::try_from(path_and_query) {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(error) => tracing::debug!(%error, "URL rewrite made an invalid path; path kept"),
        }
    }
    if let Some(host) = host {
        if parts.authority.is_some() {
            parts.authority = Some(host.clone());
        }
        if let Ok(value) = HeaderValue::from_str(host.as_str()) {
            if req.version() != http::Version::HTTP_2 || req.headers().contains_key(header::HOST) {
                req.headers_mut().insert(header::HOST, value);
            }
        }
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

fn redirect_response<B>(rule: &Rule, redirect: &Redirect, req: &Request<B>) -> Response<BoxBody> {
    let uri = req.uri();
    let scheme = redirect.scheme.as_ref().map(|s| s.as_str()).or(uri.scheme_str()).unwrap_or("http");
    let host = redirect
        .host
        .as_deref()
        .or(uri.host())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h))
        })
        .unwrap_or("");
    let path = match &redirect.path {
        None => uri.path().to_string(),
        Some(modifier) => modified_path(rule, modifier, uri.path()),
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let location = match redirect.port {
        Some(port) => format!("{scheme}://{host}:{port}{path}{query}"),
        None => format!("{scheme}://{host}{path}{query}"),
    };
    let mut rsp = Response::new(full(""));
    *rsp.status_mut() = redirect.status;
    if let Ok(location) = HeaderValue::from_str(&location) {
        rsp.headers_mut().insert(header::LOCATION, location);
    }
    rsp
}

fn failure_response(failure: &Failure, message: &str) -> Response<BoxBody> {
    let reason = HeaderValue::from_str(message).unwrap_or(HeaderValue::from_static("injected failure"));
    match failure {
        Failure::Http(status) => {
            let mut rsp = Response::new(full(message.to_string()));
            *rsp.status_mut() = *status;
            rsp.headers_mut().insert("l5d-proxy-error", reason);
            rsp
        }
        Failure::Grpc(code) => {
            let mut rsp = Response::new(full(""));
            let headers = rsp.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(*code));
            headers.insert("grpc-message", reason);
            rsp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::routes::RequestMatch;

    #[test]
    fn headers_are_modified_and_prefix_redirects_keep_the_rest() {
        let rule = Rule {
            matches: vec![RequestMatch {
                path: Some(PathMatch::Prefix("/old".into())),
                ..Default::default()
            }],
            filters: vec![
                Filter::RequestHeaders {
                    add: vec![("x-a".parse().unwrap(), HeaderValue::from_static("1"))],
                    set: vec![],
                    remove: vec!["x-gone".parse().unwrap()],
                },
                Filter::Redirect(Redirect {
                    scheme: None,
                    host: Some("new.example".into()),
                    path: Some(PathModifier::Prefix("/new".into())),
                    port: None,
                    status: StatusCode::MOVED_PERMANENTLY,
                }),
            ],
        };
        let mut req = Request::get("/old/x?q=1").header("x-gone", "y").body(()).unwrap();
        let rsp = apply(&rule, &mut req).expect("redirected");
        assert_eq!(req.headers()["x-a"], "1");
        assert!(req.headers().get("x-gone").is_none());
        assert_eq!(rsp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(rsp.headers()[header::LOCATION], "http://new.example/new/x?q=1");
    }

    fn prefix_rule(prefix: &str, filter: Filter) -> Rule {
        Rule {
            matches: vec![RequestMatch {
                path: Some(PathMatch::Prefix(prefix.into())),
                ..Default::default()
            }],
            filters: vec![filter],
        }
    }

    #[test]
    fn url_rewrites_replace_the_matched_prefix_or_the_whole_path_and_the_host() {
        let rewrite =
            |host: Option<&str>, path| Filter::UrlRewrite { host: host.map(|h| h.parse().unwrap()), path };
        let cases = [
            ("/old", rewrite(None, Some(PathModifier::Prefix("/new".into()))), "/old/x?q=1", "/new/x?q=1"),
            ("/old/", rewrite(None, Some(PathModifier::Prefix("/".into()))), "/old/x", "/x"),
            ("/old", rewrite(None, Some(PathModifier::Prefix("/".into()))), "/old", "/"),
            ("/", rewrite(None, Some(PathModifier::Prefix("/v2".into()))), "/a", "/v2/a"),
            ("/old", rewrite(None, Some(PathModifier::Full("/all".into()))), "/old/x?q=1", "/all?q=1"),
        ];
        for (prefix, filter, before, after) in cases {
            let mut req = Request::get(before).header(header::HOST, "web:80").body(()).unwrap();
            assert!(apply(&prefix_rule(prefix, filter), &mut req).is_none());
            assert_eq!(req.uri(), after, "{prefix} on {before}");
            assert_eq!(req.headers()[header::HOST], "web:80");
        }
        // HTTP/1 origin form: the Host header; HTTP/2: the authority.
        let rule = prefix_rule("/", rewrite(Some("shop.example"), None));
        let mut req = Request::get("/a?b").header(header::HOST, "web:80").body(()).unwrap();
        apply(&rule, &mut req);
        assert_eq!(req.uri(), "/a?b");
        assert_eq!(req.headers()[header::HOST], "shop.example");
        let mut req = Request::get("http://web:80/a").version(http::Version::HTTP_2).body(()).unwrap();
        apply(&rule, &mut req);
        assert_eq!(req.uri(), "http://shop.example/a");
        assert!(req.headers().get(header::HOST).is_none());
    }

    #[test]
    fn failures_are_injected_at_their_ratio() {
        let rule = |n| Rule {
            matches: vec![],
            filters: vec![Filter::Fail {
                failure: Failure::Http(StatusCode::SERVICE_UNAVAILABLE),
                message: "chaos".into(),
                numerator: n,
                denominator: 1,
            }],
        };
        let mut req = Request::get("/").body(()).unwrap();
        assert_eq!(apply(&rule(1), &mut req).unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(apply(&rule(0), &mut req).is_none());
    }
}
