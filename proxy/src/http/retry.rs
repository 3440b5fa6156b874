//! Retries, within the service's retry budget, requests that failed on a
//! retryable route, and requests whose connection could not be made at all
//! (never sent, so always safe to send elsewhere).
//!
//! A request is only retried if its body can be replayed: bodies are
//! buffered up to `MAX_REPLAY_BODY`; a larger one goes out once, streaming.

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use metrics::Label;
use tower::{retry::budget::Budget, ServiceExt};

use super::{
    boxed,
    extensions::{LogicalProfile, RouteParams, RouteRetry, RouteTimeout},
    BoxBody, BoxError, LayerFuture,
};
use crate::{connect::is_connect_error, profile::MAX_REPLAY_BODY};

/// Tries per request, the first included. The budget is the real bound (as
/// in Linkerd, which has no per-request cap); this only stops one request
/// from looping for ever while the budget lasts. With a backend failing half
/// of all requests, ten tries leave one request in a thousand failing.
const MAX_ATTEMPTS: usize = 10;

#[derive(Copy, Clone, Debug, Default)]
pub struct RetryLayer;

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
}

impl<S> tower::Service<Request<BoxBody>> for Retry<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Response<BoxBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let upgrade =
            req.headers().contains_key(http::header::UPGRADE) || req.method() == http::Method::CONNECT;
        if let Some(retry) = req.extensions().get::<RouteRetry>().filter(|_| !upgrade).cloned() {
            return LayerFuture::own(retry_by_policy(self.inner.clone(), req, retry));
        }
        // Without a profile (no discovery) there is no other endpoint to try.
        let Some(logical) = req.extensions().get::<LogicalProfile>().cloned() else {
            return LayerFuture::inner(self.inner.call(req));
        };
        let route = req.extensions().get::<RouteParams>().cloned();
        let route_retries = route.as_ref().is_some_and(|r| r.0.may_retry(req.method()));
        if upgrade || (!route_retries && !req.body().is_end_stream()) {
            return LayerFuture::inner(self.inner.call(req));
        }
        let inner = self.inner.clone();
        LayerFuture::own(async move {
            let (parts, body) = req.into_parts();
            let replay = match buffer(body, MAX_REPLAY_BODY).await {
                Ok(replay) => replay,
                Err(streaming) => {
                    return inner.oneshot(Request::from_parts(parts, streaming)).await.map_err(Into::into)
                }
            };
            logical.budget.deposit();
            let mut attempt = 1;
            loop {
                let req = replay.request(&parts);
                let res = inner.clone().oneshot(req).await.map_err(Into::into);
                let retry = match &res {
                    Err(e) => is_connect_error(&**e) || route_retries,
                    Ok(rsp) => route_retries && route.as_ref().is_some_and(|r| r.0.is_failure(rsp.status())),
                };
                if !retry || attempt >= MAX_ATTEMPTS {
                    return res;
                }
                if !logical.budget.withdraw() {
                    count_retry(&logical, route.as_ref(), "budget_exhausted");
                    return res;
                }
                count_retry(&logical, route.as_ref(), "retried");
                attempt += 1;
            }
        })
    }
}

/// An outbound policy rule's retries (Linkerd's HTTPRoute/GRPCRoute
/// retries): up to the rule's limit, each try under its own timeout, on the
/// rule's statuses and on failures to get a response at all; no budget (as
/// Linkerd's route retries), the limit bounds them.
async fn retry_by_policy<S>(
    inner: S,
    req: Request<BoxBody>,
    retry: RouteRetry,
) -> Result<Response<BoxBody>, BoxError>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let RouteRetry { policy, counters } = retry;
    let (parts, body) = req.into_parts();
    let replay = match buffer(body, policy.max_request_bytes).await {
        Ok(replay) => replay,
        Err(streaming) => {
            return inner.oneshot(Request::from_parts(parts, streaming)).await.map_err(Into::into)
        }
    };
    let mut backoff = policy.backoff.map(|(min, _)| min);
    let mut retries = 0;
    loop {
        let attempt = inner.clone().oneshot(replay.request(&parts));
        let res = match policy.per_try_timeout {
            Some(t) => match tokio::time::timeout(t, attempt).await {
                Ok(res) => res.map_err(Into::into),
                Err(_) => Err(RouteTimeout(t).into()),
            },
            None => attempt.await.map_err(Into::into),
        };
        let failed = match &res {
            Ok(rsp) => policy.on.is_retryable(rsp.headers(), rsp.status()),
            Err(_) => true,
        };
        if !failed {
            if retries > 0 {
                counters.successes.increment(1);
            }
            return res;
        }
        if retries >= policy.max_retries {
            if policy.max_retries > 0 {
                counters.limit_exceeded.increment(1);
            }
            return res;
        }
        drop(res);
        retries += 1;
        counters.requests.increment(1);
        if let (Some(wait), Some((_, max))) = (backoff, policy.backoff) {
            tokio::time::sleep(rand::random_range(wait / 2..=wait)).await;
            backoff = Some((wait * 2).min(max));
        }
    }
}

fn count_retry(logical: &LogicalProfile, route: Option<&RouteParams>, result: &'static str) {
    let labels = [
        Label::new("dst", logical.profile.fully_qualified_name.clone()),
        Label::new("route", route.map(|r| r.0.name.clone()).unwrap_or_default()),
        Label::from_static_parts("result", result),
    ];
    metrics::counter!("route_retry_total", labels.iter()).increment(1);
}

/// A request body held in memory so it can be sent more than once.
pub(super) struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    pub(super) fn request(&self, parts: &http::request::Parts) -> Request<BoxBody> {
        let mut frames = Vec::with_capacity(2);
        if !self.data.is_empty() {
            frames.push(Ok::<_, BoxError>(Frame::data(self.data.clone())));
        }
        if let Some(t) = &self.trailers {
            frames.push(Ok(Frame::trailers(t.clone())));
        }
        let body = boxed(StreamBody::new(stream::iter(frames)));
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        req
    }
}

/// Reads the body into memory unless it is larger than `limit`; then hands
/// back a body that replays what was read and streams the rest.
pub(super) async fn buffer(mut body: BoxBody, limit: usize) -> Result<Replay, BoxBody> {
    if body.size_hint().lower() > limit as u64 {
        return Err(body);
    }
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // Let the failure reach the upstream request as it would
                // have without us.
                let read = Frame::data(data.freeze());
                return Err(boxed(StreamBody::new(stream::iter([Ok(read), Err(e)]))));
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    let read = stream::once(async move { Ok::<_, BoxError>(Frame::data(data.freeze())) });
                    return Err(boxed(StreamBody::new(read.chain(BodyStream::new(body)))));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(Replay { data: data.freeze(), trailers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::full;

    #[tokio::test]
    async fn small_bodies_replay_and_large_ones_stream_whole() {
        let replay = buffer(full("hello"), 16).await.ok().unwrap();
        let parts = Request::new(()).into_parts().0;
        for _ in 0..2 {
            let body = replay.request(&parts).into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello");
        }
        let big = "x".repeat(100);
        let streaming = buffer(full(big.clone()), 16).await.err().unwrap();
        assert_eq!(streaming.collect().await.unwrap().to_bytes(), big.as_bytes());
    }
}
