//! Traffic split: picks the backend service for a request among the
//! profile's `dst_overrides`, by weight (SMI TrafficSplit, as Linkerd maps
//! it). With no overrides the backend is the service itself; a profile for
//! a lone pod sends straight to its endpoint.

use std::task::{Context, Poll};

use http::Request;
use rand::Rng;

use super::{
    extensions::{Backend, EndpointInfo, LogicalProfile},
    Endpoint,
};

#[derive(Copy, Clone, Debug, Default)]
pub struct SplitLayer;

impl<S> tower::Layer<S> for SplitLayer {
    type Service = Split<S>;
    fn layer(&self, inner: S) -> Split<S> {
        Split { inner }
    }
}

#[derive(Clone)]
pub struct Split<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Split<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        // A backend already chosen (by the outbound policy's route) stands.
        let chosen =
            req.extensions().get::<Backend>().is_some() || req.extensions().get::<Endpoint>().is_some();
        if let Some(logical) = req.extensions().get::<LogicalProfile>().filter(|_| !chosen).cloned() {
            let profile = &logical.profile;
            if !profile.fully_qualified_name.is_empty() {
                let backend = pick(&profile.dst_overrides, |d| d.weight)
                    .map(|d| normalize(&d.authority, logical.port))
                    .unwrap_or_else(|| format!("{}:{}", profile.fully_qualified_name, logical.port));
                req.extensions_mut().insert(Backend(backend.into()));
            } else if let Some((addr, meta)) = &profile.endpoint {
                req.extensions_mut().insert(Endpoint(*addr));
                req.extensions_mut().insert(EndpointInfo(meta.clone()));
            }
        }
        self.inner.call(req)
    }
}

/// Weighted random choice (TrafficSplit's backends, and OutboundPolicies'
/// RandomAvailable); `None` when there is nothing to choose from.
pub fn pick<T>(dsts: &[T], weight: impl Fn(&T) -> u32) -> Option<&T> {
    let total: u64 = dsts.iter().map(|d| u64::from(weight(d))).sum();
    if total == 0 {
        return None;
    }
    let mut n = rand::rng().random_range(0..total);
    for d in dsts {
        let w = u64::from(weight(d));
        if n < w {
            return Some(d);
        }
        n -= w;
    }
    None
}

/// Overrides name a service, with or without a port; the request's port
/// applies when it has none.
fn normalize(authority: &str, port: u16) -> String {
    let authority = authority.trim_end_matches('.');
    match authority.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => authority.to_string(),
        _ => format!("{authority}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::WeightedDst;

    #[test]
    fn weighted_choice_follows_weights() {
        let dsts = vec![
            WeightedDst { authority: "a".into(), weight: 900 },
            WeightedDst { authority: "b".into(), weight: 100 },
            WeightedDst { authority: "c".into(), weight: 0 },
        ];
        let n = 20_000;
        let a = (0..n).filter(|_| pick(&dsts, |d| d.weight).unwrap().authority == "a").count();
        let share = a as f64 / n as f64;
        assert!((0.88..0.92).contains(&share), "{share}");
        assert!((0..1000).all(|_| pick(&dsts, |d| d.weight).unwrap().authority != "c"));
        assert!(pick(&[WeightedDst { authority: "z".into(), weight: 0 }], |d| d.weight).is_none());
    }

    #[test]
    fn overrides_take_the_request_port_when_they_have_none() {
        assert_eq!(
            normalize("web-v2.emojivoto.svc.cluster.local.", 80),
            "web-v2.emojivoto.svc.cluster.local:80"
        );
        assert_eq!(normalize("web-v2:8080", 80), "web-v2:8080");
    }
}
