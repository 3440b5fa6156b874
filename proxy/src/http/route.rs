//! Matches the request to a route of its profile and applies the route's
//! timeout to the whole request, retries included (as Linkerd does).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Request;

use super::{logical::LogicalProfile, metrics::DstLabels, BoxError};
use crate::profile::Route;

#[derive(Clone)]
pub struct RouteParams(pub Arc<Route>);

#[derive(Debug, thiserror::Error)]
#[error("route timeout of {0:?} elapsed")]
pub struct RouteTimeout(pub Duration);

#[derive(Copy, Clone, Debug, Default)]
pub struct RouteLayer;

impl<S> tower::Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService { inner }
    }
}

#[derive(Clone)]
pub struct RouteService<S> {
    inner: S,
}

impl<S, B, RspB> tower::Service<Request<B>> for RouteService<S>
where
    S: tower::Service<Request<B>, Response = http::Response<RspB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = req.extensions().get::<LogicalProfile>().and_then(|l| l.profile.route_for(&req).cloned());
        let timeout = route.as_ref().and_then(|r| r.timeout);
        let labels =
            req.extensions().get::<LogicalProfile>().map(|l| DstLabels::new(&l.profile, route.as_deref()));
        if let Some(route) = route {
            req.extensions_mut().insert(RouteParams(route));
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut rsp = match timeout {
                None => fut.await.map_err(Into::into)?,
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(res) => res.map_err(Into::into)?,
                    Err(_) => return Err(RouteTimeout(t).into()),
                },
            };
            if let Some(labels) = labels {
                rsp.extensions_mut().insert(labels);
            }
            Ok(rsp)
        })
    }
}
