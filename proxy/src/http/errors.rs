//! Turns proxy failures into HTTP responses the client can act on: 502 when
//! the upstream failed, 504 when it took too long, 400 for a request the
//! proxy cannot route. The reason travels in `l5d-proxy-error` (and the
//! body); gRPC clients get a gRPC status instead, which they understand.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tracing::info;

use super::{
    extensions::{ClientError, RouteError, RouteTimeout},
    full,
    headers::is_grpc,
    BoxBody, BoxError,
};
use crate::{connect::ConnectError, policy::authorize::PolicyError};

#[derive(Copy, Clone, Debug, Default)]
pub struct RespondOnErrorLayer;

impl<S> tower::Layer<S> for RespondOnErrorLayer {
    type Service = RespondOnError<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RespondOnError { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RespondOnError<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for RespondOnError<S>
where
    S: tower::Service<Request<B>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = RespondOnErrorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner stack is always ready (it has no backpressure of its own
        // yet); an error here would be reported per request below.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc(&req);
        RespondOnErrorFuture { inner: self.inner.call(req), grpc }
    }
}

pin_project_lite::pin_project! {
    pub struct RespondOnErrorFuture<F> {
        #[pin]
        inner: F,
        grpc: bool,
    }
}

impl<F, E> Future for RespondOnErrorFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<BoxBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(rsp) => rsp,
            Err(error) => {
                let error: BoxError = error.into();
                let status = status_for(&*error);
                // Policy decisions were logged where they were made.
                if !error.is::<PolicyError>() {
                    info!(%status, error = %ErrorChain(&*error), "request failed");
                }
                error_response(status, &error, *this.grpc)
            }
        }))
    }
}

pub fn status_for(error: &(dyn std::error::Error + 'static)) -> StatusCode {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<PolicyError>() {
            return match e {
                PolicyError::Unauthorized => StatusCode::FORBIDDEN,
                PolicyError::NoRoute => StatusCode::NOT_FOUND,
                PolicyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            };
        }
        if let Some(e) = e.downcast_ref::<RouteError>() {
            return match e {
                RouteError::MissingAuthority | RouteError::InvalidAuthority(_) => StatusCode::BAD_REQUEST,
                RouteError::Resolve { .. } | RouteError::Loop(_) | RouteError::NoEndpoint => {
                    StatusCode::BAD_GATEWAY
                }
                RouteError::NoEndpoints(_) | RouteError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
                RouteError::NoRoute => StatusCode::NOT_FOUND,
                RouteError::InvalidBackend(_) => StatusCode::INTERNAL_SERVER_ERROR,
                RouteError::Injected(status, _) => *status,
            };
        }
        if let Some(ConnectError::Timeout(..)) = e.downcast_ref::<ConnectError>() {
            return StatusCode::GATEWAY_TIMEOUT;
        }
        // `Connect` is `#[error(transparent)]`: its source() skips the
        // ConnectError, so it must be matched here.
        if let Some(ClientError::Connect(ConnectError::Timeout(..))) = e.downcast_ref::<ClientError>() {
            return StatusCode::GATEWAY_TIMEOUT;
        }
        if e.is::<tokio::time::error::Elapsed>() || e.is::<RouteTimeout>() {
            return StatusCode::GATEWAY_TIMEOUT;
        }
        cause = e.source();
    }
    StatusCode::BAD_GATEWAY
}

/// An error and its causes on one line: "a: b: c".
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let s = e.to_string();
            // thiserror's `transparent` and `{0}` formats often repeat the
            // source's message; print each distinct message once.
            if !self.0.to_string().ends_with(&s) {
                write!(f, ": {s}")?;
            }
            cause = e.source();
        }
        Ok(())
    }
}

fn error_response(status: StatusCode, error: &BoxError, grpc: bool) -> Response<BoxBody> {
    let message = ErrorChain(&**error).to_string();
    // Header values must be visible ASCII; an upstream's error text may not be.
    let sanitized: String =
        message.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    let reason = HeaderValue::from_str(&sanitized).unwrap_or(HeaderValue::from_static("proxy error"));
    let mut rsp = if grpc {
        // A trailers-only gRPC response: HTTP 200 with the status in headers.
        let code = match status {
            StatusCode::FORBIDDEN => "7",
            StatusCode::NOT_FOUND => "5",
            StatusCode::TOO_MANY_REQUESTS => "8",
            StatusCode::GATEWAY_TIMEOUT => "4",
            StatusCode::BAD_REQUEST => "13",
            _ => "14",
        };
        let mut rsp = Response::new(full(""));
        let headers = rsp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static(code));
        headers.insert("grpc-message", reason.clone());
        rsp
    } else {
        let mut rsp = Response::new(full(format!("weft-proxy: {sanitized}\n")));
        *rsp.status_mut() = status;
        rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        rsp
    };
    rsp.headers_mut().insert("l5d-proxy-error", reason);
    if status == StatusCode::TOO_MANY_REQUESTS {
        rsp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_cause() {
        let timeout: BoxError = Box::new(ConnectError::Timeout(
            "127.0.0.1:1".parse().unwrap(),
            std::time::Duration::from_secs(1),
        ));
        assert_eq!(status_for(&*timeout), StatusCode::GATEWAY_TIMEOUT);
        let wrapped: BoxError = Box::new(ClientError::Connect(ConnectError::Timeout(
            "127.0.0.1:1".parse().unwrap(),
            std::time::Duration::from_secs(1),
        )));
        assert_eq!(status_for(&*wrapped), StatusCode::GATEWAY_TIMEOUT);
        let refused: BoxError = Box::new(ClientError::Connect(ConnectError::Io(
            "127.0.0.1:1".parse().unwrap(),
            std::io::ErrorKind::ConnectionRefused.into(),
        )));
        assert_eq!(status_for(&*refused), StatusCode::BAD_GATEWAY);
        let missing: BoxError = Box::new(RouteError::MissingAuthority);
        assert_eq!(status_for(&*missing), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn grpc_requests_get_a_grpc_status() {
        let err: BoxError = Box::new(RouteError::NoEndpoint);
        let rsp = error_response(StatusCode::BAD_GATEWAY, &err, true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()["l5d-proxy-error"], "no endpoint chosen for request");
    }
}
