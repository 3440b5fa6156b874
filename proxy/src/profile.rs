//! Service profiles as the proxy uses them: compiled once when the
//! destination service pushes them, matched on every request.

use std::{sync::Arc, time::Duration};

use http::Method;
use linkerd2_proxy_api::destination as api;
use regex::Regex;
use tracing::warn;

use crate::discovery::EndpointMeta;

/// Largest request body buffered so a retry can replay it (Linkerd's bound).
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Profile {
    /// The service this name resolved to; empty when it is no service
    /// (e.g. a pod IP), in which case `endpoint` may describe it.
    pub fully_qualified_name: String,
    pub routes: Vec<Arc<Route>>,
    pub retry_budget: Option<RetryBudget>,
    /// Traffic split: weighted backend authorities. Empty means the service
    /// itself.
    pub dst_overrides: Vec<WeightedDst>,
    pub endpoint: Option<(std::net::SocketAddr, Arc<EndpointMeta>)>,
    pub opaque_protocol: bool,
}

#[derive(Clone, Debug)]
pub struct WeightedDst {
    pub authority: String,
    pub weight: u32,
}

#[derive(Debug)]
pub struct Route {
    pub condition: RequestMatch,
    /// A bounded label for metrics: the route's `route` metric label, else
    /// its path regex.
    pub name: String,
    pub response_classes: Vec<ResponseClass>,
    pub is_retryable: bool,
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub enum RequestMatch {
    All(Vec<RequestMatch>),
    Any(Vec<RequestMatch>),
    Not(Box<RequestMatch>),
    Path(Regex),
    Method(Method),
}

#[derive(Debug)]
pub struct ResponseClass {
    pub condition: ResponseMatch,
    pub is_failure: bool,
}

#[derive(Debug)]
pub enum ResponseMatch {
    All(Vec<ResponseMatch>),
    Any(Vec<ResponseMatch>),
    Not(Box<ResponseMatch>),
    Status { min: u16, max: u16 },
}

#[derive(Copy, Clone, Debug, PartialEq)]
pub struct RetryBudget {
    pub retry_ratio: f32,
    pub min_retries_per_second: u32,
    pub ttl: Duration,
}

impl Default for RetryBudget {
    /// Linkerd's default: retries may add 20% to the request rate, plus 10
    /// per second, over a 10 s window.
    fn default() -> Self {
        Self { retry_ratio: 0.2, min_retries_per_second: 10, ttl: Duration::from_secs(10) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("invalid path regex {0:?}: {1}")]
    Regex(String, regex::Error),
    #[error("empty request match")]
    EmptyMatch,
    #[error("unsupported method")]
    Method,
}

impl Profile {
    pub fn from_api(pb: api::DestinationProfile) -> Self {
        let routes = pb
            .routes
            .into_iter()
            .filter_map(|r| match Route::from_api(r) {
                Ok(route) => Some(Arc::new(route)),
                Err(error) => {
                    // One bad route must not take the others down with it.
                    warn!(%error, "ignoring a profile route");
                    None
                }
            })
            .collect();
        let retry_budget = pb.retry_budget.map(|b| RetryBudget {
            retry_ratio: b.retry_ratio.clamp(0.0, 1000.0),
            min_retries_per_second: b.min_retries_per_second,
            ttl: b
                .ttl
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10)),
        });
        let dst_overrides = pb
            .dst_overrides
            .into_iter()
            .filter(|d| !d.authority.is_empty())
            .map(|d| WeightedDst { authority: d.authority, weight: d.weight })
            .collect();
        let endpoint = pb.endpoint.and_then(crate::discovery::endpoint_from_api);
        Profile {
            fully_qualified_name: pb.fully_qualified_name.trim_end_matches('.').to_string(),
            routes,
            retry_budget,
            dst_overrides,
            endpoint,
            opaque_protocol: pb.opaque_protocol,
        }
    }

    /// The first route whose condition matches, as Linkerd orders them.
    pub fn route_for<B>(&self, req: &http::Request<B>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.condition.matches(req))
    }
}

impl Route {
    fn from_api(pb: api::Route) -> Result<Self, ProfileError> {
        let condition = RequestMatch::from_api(pb.condition.ok_or(ProfileError::EmptyMatch)?)?;
        let name = pb.metrics_labels.get("route").cloned().unwrap_or_else(|| condition.describe());
        let response_classes = pb
            .response_classes
            .into_iter()
            .filter_map(|c| {
                Some(ResponseClass {
                    condition: ResponseMatch::from_api(c.condition?)?,
                    is_failure: c.is_failure,
                })
            })
            .collect();
        let timeout = pb.timeout.and_then(|d| Duration::try_from(d).ok()).filter(|d| !d.is_zero());
        Ok(Route { condition, name, response_classes, is_retryable: pb.is_retryable, timeout })
    }

    /// Whether a response is a failure: the first matching response class
    /// decides, else 5xx is failure.
    pub fn is_failure(&self, status: http::StatusCode) -> bool {
        self.response_classes
            .iter()
            .find(|c| c.condition.matches(status))
            .map_or(status.is_server_error(), |c| c.is_failure)
    }

    /// Retrying a request must not repeat a side effect the client did not
    /// agree to: idempotent methods are always safe on a retryable route;
    /// other methods only when the route's own condition names the method,
    /// i.e. its author marked exactly these requests retryable.
    pub fn may_retry(&self, method: &Method) -> bool {
        self.is_retryable && (is_idempotent(method) || self.condition.names_method(method))
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl RequestMatch {
    fn from_api(pb: api::RequestMatch) -> Result<Self, ProfileError> {
        use api::request_match::Match;
        let seq = |s: api::request_match::Seq| -> Result<Vec<RequestMatch>, ProfileError> {
            s.matches.into_iter().map(RequestMatch::from_api).collect()
        };
        match pb.r#match.ok_or(ProfileError::EmptyMatch)? {
            Match::All(s) => Ok(RequestMatch::All(seq(s)?)),
            Match::Any(s) => Ok(RequestMatch::Any(seq(s)?)),
            Match::Not(m) => Ok(RequestMatch::Not(Box::new(RequestMatch::from_api(*m)?))),
            Match::Path(p) => {
                // Profiles' regexes match the whole path, as in Linkerd.
                let anchored = format!("^(?:{})$", p.regex);
                Regex::new(&anchored).map(RequestMatch::Path).map_err(|e| ProfileError::Regex(p.regex, e))
            }
            Match::Method(m) => {
                Method::try_from(m).map(RequestMatch::Method).map_err(|_| ProfileError::Method)
            }
        }
    }

    pub fn matches<B>(&self, req: &http::Request<B>) -> bool {
        match self {
            RequestMatch::All(ms) => ms.iter().all(|m| m.matches(req)),
            RequestMatch::Any(ms) => ms.iter().any(|m| m.matches(req)),
            RequestMatch::Not(m) => !m.matches(req),
            RequestMatch::Path(re) => re.is_match(req.uri().path()),
            RequestMatch::Method(m) => req.method() == m,
        }
    }

    fn names_method(&self, method: &Method) -> bool {
        match self {
            RequestMatch::All(ms) | RequestMatch::Any(ms) => ms.iter().any(|m| m.names_method(method)),
            RequestMatch::Not(_) | RequestMatch::Path(_) => false,
            RequestMatch::Method(m) => m == method,
        }
    }

    fn describe(&self) -> String {
        match self {
            RequestMatch::Path(re) => {
                re.as_str().trim_start_matches("^(?:").trim_end_matches(")$").to_string()
            }
            RequestMatch::Method(m) => m.to_string(),
            RequestMatch::Not(m) => format!("not {}", m.describe()),
            RequestMatch::All(ms) | RequestMatch::Any(ms) => {
                ms.iter().map(|m| m.describe()).collect::<Vec<_>>().join(" ")
            }
        }
    }
}

impl ResponseMatch {
    fn from_api(pb: api::ResponseMatch) -> Option<Self> {
        use api::response_match::Match;
        let seq = |s: api::response_match::Seq| -> Option<Vec<ResponseMatch>> {
            s.matches.into_iter().map(ResponseMatch::from_api).collect()
        };
        Some(match pb.r#match? {
            Match::All(s) => ResponseMatch::All(seq(s)?),
            Match::Any(s) => ResponseMatch::Any(seq(s)?),
            Match::Not(m) => ResponseMatch::Not(Box::new(ResponseMatch::from_api(*m)?)),
            Match::Status(r) => ResponseMatch::Status {
                min: u16::try_from(r.min).unwrap_or(u16::MAX),
                max: u16::try_from(r.max).unwrap_or(u16::MAX),
            },
        })
    }

    fn matches(&self, status: http::StatusCode) -> bool {
        match self {
            ResponseMatch::All(ms) => ms.iter().all(|m| m.matches(status)),
            ResponseMatch::Any(ms) => ms.iter().any(|m| m.matches(status)),
            ResponseMatch::Not(m) => !m.matches(status),
            ResponseMatch::Status { min, max } => (*min..=*max).contains(&status.as_u16()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::request_match::{Match, Seq};

    fn path(re: &str) -> api::RequestMatch {
        api::RequestMatch { r#match: Some(Match::Path(api::PathMatch { regex: re.into() })) }
    }
    fn method(m: Method) -> api::RequestMatch {
        api::RequestMatch { r#match: Some(Match::Method(m.into())) }
    }
    fn req(m: Method, p: &str) -> http::Request<()> {
        http::Request::builder().method(m).uri(p).body(()).unwrap()
    }

    #[test]
    fn routes_match_method_and_whole_path() {
        let pb = api::DestinationProfile {
            routes: vec![api::Route {
                condition: Some(api::RequestMatch {
                    r#match: Some(Match::All(Seq {
                        matches: vec![method(Method::GET), path("/books/[0-9]+")],
                    })),
                }),
                is_retryable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let profile = Profile::from_api(pb);
        assert!(profile.route_for(&req(Method::GET, "/books/12")).is_some());
        assert!(profile.route_for(&req(Method::GET, "/books/12/x")).is_none());
        assert!(profile.route_for(&req(Method::POST, "/books/12")).is_none());
    }

    #[test]
    fn an_invalid_regex_drops_only_its_route() {
        let pb = api::DestinationProfile {
            routes: vec![
                api::Route { condition: Some(path("/a[")), ..Default::default() },
                api::Route { condition: Some(path("/b")), ..Default::default() },
            ],
            ..Default::default()
        };
        let profile = Profile::from_api(pb);
        assert_eq!(profile.routes.len(), 1);
        assert!(profile.route_for(&req(Method::GET, "/b")).is_some());
    }

    #[test]
    fn retries_need_idempotence_or_a_route_naming_the_method() {
        let route = |cond| {
            Route::from_api(api::Route { condition: Some(cond), is_retryable: true, ..Default::default() })
                .unwrap()
        };
        let by_path = route(path("/x"));
        assert!(by_path.may_retry(&Method::GET));
        assert!(!by_path.may_retry(&Method::POST));
        let post_route = route(api::RequestMatch {
            r#match: Some(Match::All(Seq { matches: vec![method(Method::POST), path("/x")] })),
        });
        assert!(post_route.may_retry(&Method::POST));
    }

    #[test]
    fn response_classes_decide_failure() {
        let route = Route::from_api(api::Route {
            condition: Some(path("/x")),
            response_classes: vec![api::ResponseClass {
                condition: Some(api::ResponseMatch {
                    r#match: Some(api::response_match::Match::Status(api::HttpStatusRange {
                        min: 500,
                        max: 503,
                    })),
                }),
                is_failure: false,
            }],
            ..Default::default()
        })
        .unwrap();
        assert!(!route.is_failure(http::StatusCode::SERVICE_UNAVAILABLE));
        assert!(route.is_failure(http::StatusCode::GATEWAY_TIMEOUT));
        assert!(!route.is_failure(http::StatusCode::NOT_FOUND));
    }
}
