//! A response body that tells an observer, exactly once, how it ended:
//! what golden metrics and tap both need, since a response's outcome (its
//! gRPC status, whether the client got all of it) is only known at its end.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};

use super::{BoxBody, BoxError};

/// How a body ended.
#[derive(Copy, Clone, Debug)]
pub struct BodyEnd {
    /// Read to its end, rather than failed or dropped part-way (the client
    /// or upstream went away).
    pub complete: bool,
    pub bytes: u64,
    /// From the trailers, or from the headers of a trailers-only response.
    pub grpc_status: Option<u32>,
}

pub trait OnBodyEnd: Send + 'static {
    fn on_end(self, end: BodyEnd);
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

pin_project_lite::pin_project! {
    pub struct ObservedBody<O: OnBodyEnd> {
        #[pin]
        inner: BoxBody,
        observer: Option<O>,
        bytes: u64,
        grpc_status: Option<u32>,
    }

    impl<O: OnBodyEnd> PinnedDrop for ObservedBody<O> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(observer) = this.observer.take() {
                // hyper may drop a body it knows is complete (empty, or all
                // of its content-length sent) without polling it to the end.
                let complete = this.inner.is_end_stream();
                observer.on_end(BodyEnd { complete, bytes: *this.bytes, grpc_status: *this.grpc_status });
            }
        }
    }
}

impl<O: OnBodyEnd> ObservedBody<O> {
    /// `headers` are the response's, for a trailers-only gRPC status.
    pub fn new(inner: BoxBody, headers: &HeaderMap, observer: O) -> Self {
        Self { inner, observer: Some(observer), bytes: 0, grpc_status: grpc_status(headers) }
    }
}

impl<O: OnBodyEnd> Body for ObservedBody<O> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let complete = match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                if let Some(code) = f.trailers_ref().and_then(grpc_status) {
                    *this.grpc_status = Some(code);
                }
                return Poll::Ready(frame);
            }
            Some(Err(_)) => false,
            None => true,
        };
        if let Some(observer) = this.observer.take() {
            observer.on_end(BodyEnd { complete, bytes: *this.bytes, grpc_status: *this.grpc_status });
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
