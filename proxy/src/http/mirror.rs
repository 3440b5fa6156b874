//! RequestMirror (weft's extension to OutboundPolicies): a copy of some of
//! a policy rule's requests goes to another backend, its answer drained and
//! ignored. The client only ever sees the primary's answer, and nothing the
//! mirror does (answering slowly, failing, refusing connections, reading
//! its body slowly) delays the primary:
//!
//! - each copy is a task of its own through the rest of the stack (a clone
//!   of the inner service), bounded by [`MIRROR_TIMEOUT`] and by
//!   [`MAX_IN_FLIGHT`] copies per proxy;
//! - the request body is teed: the primary's frames pass unchanged, and
//!   each is offered to every copy through a small bounded channel without
//!   waiting; a copy whose channel is full is cut off (its body ends with
//!   an error), never the primary.
//!
//! Copies carry no retry or hedging of the rule; they are counted in
//! `outbound_http_route_mirror_requests_total{result="sent|failed|dropped"}`.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};
use tower::ServiceExt;
use tracing::{debug, debug_span, Instrument};

use super::{
    extensions::{Backend, EndpointInfo, MirrorCounters, MirrorResult, RouteHedge, RouteMirrors, RouteRetry},
    BoxBody, BoxError, Endpoint, LayerFuture,
};
use crate::outbound_policy::{BackendTarget, MirrorParams, ResourceRef};

/// A copy still without an answer (and its body read) after this is
/// abandoned.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Copies in flight per proxy; past this, copies are dropped rather than
/// let a mirror that never answers pile up tasks and connections.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Body frames a copy may lag behind the primary before it is cut off.
const BODY_FRAMES: usize = 16;

static IN_FLIGHT: Semaphore = Semaphore::const_new(MAX_IN_FLIGHT);

#[derive(Copy, Clone, Debug, Default)]
pub struct MirrorLayer;

impl<S> tower::Layer<S> for MirrorLayer {
    type Service = Mirror<S>;
    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror { inner }
    }
}

#[derive(Clone)]
pub struct Mirror<S> {
    inner: S,
}

impl<S> tower::Service<Request<BoxBody>> for Mirror<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Response<BoxBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let Some(route) = req.extensions_mut().remove::<RouteMirrors>() else {
            return LayerFuture::inner(self.inner.call(req));
        };
        // A tunnel cannot be copied: its bytes after the response belong to
        // one peer.
        let upgrade =
            req.method() == http::Method::CONNECT || req.headers().contains_key(http::header::UPGRADE);
        let mut tees = Vec::new();
        for mirror in route.mirrors().iter().filter(|m| !upgrade && m.fires()) {
            if let Some(tee) = self.send_copy(&req, mirror, &route.counters) {
                tees.push(tee);
            }
        }
        if !tees.is_empty() {
            req = req.map(|inner| BoxBody::new(Tee { inner, copies: tees }));
        }
        LayerFuture::inner(self.inner.call(req))
    }
}

impl<S> Mirror<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    /// Spawns `req`'s copy to `mirror`; the sending end of its body when the
    /// request has one.
    fn send_copy(
        &self,
        req: &Request<BoxBody>,
        mirror: &MirrorParams,
        counters: &Arc<dyn MirrorCounters>,
    ) -> Option<CopyTx> {
        let dropped = || counters.count(&mirror.backend, MirrorResult::Dropped);
        if matches!(mirror.target, BackendTarget::Invalid) {
            dropped();
            return None;
        }
        let Ok(permit) = IN_FLIGHT.try_acquire() else {
            debug!(backend = %mirror.backend.name, "too many mirrored requests in flight; dropping a copy");
            dropped();
            return None;
        };
        let shared = Arc::new(Shared::default());
        let (body, tee) = if req.body().is_end_stream() {
            shared.state.store(COMPLETE, Ordering::Release);
            (BoxBody::new(http_body_util::Empty::new()), None)
        } else {
            let (tx, rx) = mpsc::channel(BODY_FRAMES);
            let body = CopyBody { rx, shared: shared.clone(), size_hint: req.body().size_hint() };
            (BoxBody::new(body), Some(CopyTx { tx, shared: shared.clone() }))
        };
        let copy = copy_of(req, mirror, body);
        let span = debug_span!("mirror", backend = %mirror.backend.name, ns = %mirror.backend.namespace);
        tokio::spawn(
            send(self.inner.clone(), copy, shared, counters.clone(), mirror.backend.clone(), permit)
                .instrument(span),
        );
        tee
    }
}

/// The request's head with `body`, sent to the mirror's backend; the
/// rule's retries and hedging stay with the primary.
fn copy_of(req: &Request<BoxBody>, mirror: &MirrorParams, body: BoxBody) -> Request<BoxBody> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    let mut extensions = req.extensions().clone();
    extensions.remove::<RouteRetry>();
    extensions.remove::<RouteHedge>();
    extensions.remove::<Backend>();
    extensions.remove::<Endpoint>();
    extensions.remove::<EndpointInfo>();
    match &mirror.target {
        BackendTarget::Balance(path) => {
            extensions.insert(Backend(path.clone()));
        }
        BackendTarget::Forward(addr, meta) => {
            extensions.insert(Endpoint(*addr));
            extensions.insert(EndpointInfo(meta.clone()));
        }
        BackendTarget::Invalid => {}
    }
    *copy.extensions_mut() = extensions;
    copy
}

async fn send<S>(
    svc: S,
    copy: Request<BoxBody>,
    shared: Arc<Shared>,
    counters: Arc<dyn MirrorCounters>,
    backend: ResourceRef,
    _permit: SemaphorePermit<'static>,
) where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
{
    let answered = async {
        let rsp = svc.oneshot(copy).await.map_err(Into::into)?;
        let status = rsp.status();
        // Read to the end so an HTTP/1 connection goes back to the pool.
        let mut body = rsp.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frame?;
        }
        Ok::<_, BoxError>(status)
    };
    let result = match tokio::time::timeout(MIRROR_TIMEOUT, answered).await {
        _ if shared.state.load(Ordering::Acquire) == ABORTED => {
            debug!("copy cut off: it fell behind the request's body");
            MirrorResult::Dropped
        }
        Ok(Ok(status)) => {
            debug!(%status, "mirror answered");
            MirrorResult::Sent
        }
        Ok(Err(error)) => {
            debug!(%error, "mirror failed");
            MirrorResult::Failed
        }
        Err(_) => {
            debug!(timeout = ?MIRROR_TIMEOUT, "mirror did not answer in time");
            MirrorResult::Failed
        }
    };
    counters.count(&backend, result);
}

const STREAMING: u8 = 0;
const COMPLETE: u8 = 1;
const ABORTED: u8 = 2;

/// How a copy's body ended, as the tee saw the primary's.
#[derive(Default)]
struct Shared {
    state: AtomicU8,
}

/// The tee's end of one copy's body.
struct CopyTx {
    tx: mpsc::Sender<Frame<Bytes>>,
    shared: Arc<Shared>,
}

impl CopyTx {
    /// Offers `frame` without waiting; `false` once this copy is done with
    /// (cut off because its channel is full, or gone).
    fn offer(&self, frame: &Frame<Bytes>) -> bool {
        let copy = if let Some(data) = frame.data_ref() {
            Frame::data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            Frame::trailers(trailers.clone())
        } else {
            return true;
        };
        match self.tx.try_send(copy) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.finish(false);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn finish(&self, complete: bool) {
        let state = if complete { COMPLETE } else { ABORTED };
        let _ = self.shared.state.compare_exchange(STREAMING, state, Ordering::AcqRel, Ordering::Acquire);
    }
}

pin_project_lite::pin_project! {
    /// The primary's body, unchanged, each frame also offered to the copies.
    struct Tee {
        #[pin]
        inner: BoxBody,
        copies: Vec<CopyTx>,
    }

    impl PinnedDrop for Tee {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body dropped at its end (hyper need not poll past it) is
            // complete; dropped part-way, the copies fail too.
            let complete = this.inner.is_end_stream();
            for copy in this.copies.drain(..) {
                copy.finish(complete);
            }
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                this.copies.retain(|copy| copy.offer(f));
                if this.inner.is_end_stream() {
                    this.copies.drain(..).for_each(|copy| copy.finish(true));
                }
            }
            Some(Err(_)) => this.copies.drain(..).for_each(|copy| copy.finish(false)),
            None => this.copies.drain(..).for_each(|copy| copy.finish(true)),
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

/// The copy's side of a tee'd body.
#[derive(Debug, thiserror::Error)]
#[error("mirrored copy cut off: it fell behind the request's body, or that body failed")]
pub struct CopyCutOff;

struct CopyBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
    shared: Arc<Shared>,
    size_hint: SizeHint,
}

impl Body for CopyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(self.rx.poll_recv(cx)) {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None if self.shared.state.load(Ordering::Acquire) == COMPLETE => Poll::Ready(None),
            None => Poll::Ready(Some(Err(CopyCutOff.into()))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn tee(body: BoxBody) -> (Tee, CopyBody, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(BODY_FRAMES);
        let copy = CopyBody { rx, shared: shared.clone(), size_hint: body.size_hint() };
        (Tee { inner: body, copies: vec![CopyTx { tx, shared: shared.clone() }] }, copy, shared)
    }

    fn streamed(frames: usize) -> BoxBody {
        let chunks = (0..frames).map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(format!("{i};")))));
        BoxBody::new(http_body_util::StreamBody::new(futures_util::stream::iter(chunks)))
    }

    #[tokio::test]
    async fn both_sides_get_the_whole_body() {
        let (primary, copy, _) = tee(streamed(BODY_FRAMES));
        let primary = primary.collect().await.expect("primary").to_bytes();
        let copy = copy.collect().await.expect("copy").to_bytes();
        assert_eq!(primary, copy);
        assert!(primary.starts_with(b"0;1;") && primary.ends_with(b"15;"));
    }

    /// A copy nobody reads is cut off once its channel is full; the primary
    /// streams on, whole.
    #[tokio::test]
    async fn a_copy_that_falls_behind_is_cut_off_not_the_primary() {
        let (primary, copy, shared) = tee(streamed(BODY_FRAMES * 4));
        let primary = primary.collect().await.expect("primary").to_bytes();
        assert!(primary.ends_with(b"63;"));
        assert_eq!(shared.state.load(Ordering::Acquire), ABORTED);
        let err = copy.collect().await.expect_err("cut off");
        assert!(err.is::<CopyCutOff>(), "{err}");
    }

    /// A primary body that fails part-way fails the copy's, rather than
    /// ending it as if complete.
    #[tokio::test]
    async fn a_failing_primary_body_fails_the_copy() {
        let chunks =
            vec![Ok(Frame::data(Bytes::from_static(b"a"))), Err::<Frame<Bytes>, BoxError>("reset".into())];
        let body = BoxBody::new(http_body_util::StreamBody::new(futures_util::stream::iter(chunks)));
        let (primary, copy, _) = tee(body);
        assert!(primary.collect().await.is_err());
        assert!(copy.collect().await.is_err());
    }
}
