//! Matches the request to a route of its profile and applies the route's
//! timeout to the whole request, retries included (as Linkerd does).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Request;

use super::{
    extensions::{DstLabels, LogicalProfile, RouteParams, RouteTimeout},
    BoxError,
};

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
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RouteFuture<S::Future>;

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
        RouteFuture {
            inner: self.inner.call(req),
            deadline: timeout.map(|t| (Box::pin(tokio::time::sleep(t)), t)),
            labels,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner response, labelled with its service and route, or a
    /// timeout error once the route's deadline passes.
    pub struct RouteFuture<F> {
        #[pin]
        inner: F,
        deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
        labels: Option<DstLabels>,
    }
}

impl<F, RspB, E> Future for RouteFuture<F>
where
    F: Future<Output = Result<http::Response<RspB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<RspB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = match this.inner.poll(cx) {
            Poll::Ready(res) => res.map_err(Into::into)?,
            Poll::Pending => {
                if let Some((sleep, timeout)) = this.deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(RouteTimeout(*timeout).into()));
                    }
                }
                return Poll::Pending;
            }
        };
        if let Some(labels) = this.labels.take() {
            rsp.extensions_mut().insert(labels);
        }
        Poll::Ready(Ok(rsp))
    }
}
