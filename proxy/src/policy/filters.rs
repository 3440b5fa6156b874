//! What a matched route's rule does to a request before it reaches the app:
//! modify its headers, redirect it (3xx), or fail it on purpose (fault
//! injection).

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

#[derive(Debug)]
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
        }
    }
    None
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
    let path = uri.path();
    let path = match &redirect.path {
        None => path.to_string(),
        Some(PathModifier::Full(full)) => full.clone(),
        Some(PathModifier::Prefix(replacement)) => {
            let matched = rule.matches.iter().find_map(|m| match &m.path {
                Some(PathMatch::Prefix(p)) if path.starts_with(p.as_str()) => Some(p.as_str()),
                _ => None,
            });
            match matched {
                Some(p) => {
                    format!("{}{}", replacement.trim_end_matches('/'), &path[p.trim_end_matches('/').len()..])
                }
                None => path.to_string(),
            }
        }
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
