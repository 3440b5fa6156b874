//! HTTP/2 driven with the h2 crate directly: the upstream connections the
//! pool keeps, and the accepted connections the proxy serves.
//!
//! hyper's HTTP/2 client hands every request to its connection task over a
//! channel, spawns a task per request to wait for the response and answers
//! through a oneshot; its server spawns a task per stream. A proxy needs
//! neither: each stream's request is answered by a future polled from the
//! accepted connection's own task, and that future opens the upstream
//! request on the shared upstream connection and awaits its response
//! itself. No hop, no spawn unless a body has to stream on its own.

use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use futures_util::{stream::FuturesUnordered, StreamExt};
use http::{header, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;
use tracing::{debug, Instrument};

use super::{
    server::{Graceful, ServerSettings},
    BoxBody,
};

// hyper's client defaults, which these connections used before.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// A quiet multiplexed connection is pinged this often, and closed when a
/// ping goes unanswered as long: a dead peer is noticed before a request
/// waits on it.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// One multiplexed connection; clones share it.
#[derive(Clone)]
pub struct Connection {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Performs the HTTP/2 handshake on `io` and spawns the task that drives
/// the connection until the peer or the pool is done with it.
pub async fn handshake<I>(io: I, endpoint: SocketAddr) -> Result<Connection, h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ping = conn.ping_pong();
    let done = closed.clone();
    tokio::spawn(
        async move {
            tokio::select! {
                result = &mut conn => if let Err(error) = result {
                    debug!(%error, "upstream HTTP/2 connection ended");
                },
                () = keepalive(ping) => debug!("upstream HTTP/2 peer stopped answering pings"),
            }
            done.store(true, Ordering::Release);
        }
        .instrument(tracing::debug_span!("upstream", %endpoint, version = "h2")),
    );
    Ok(Connection { send, closed })
}

/// Returns once a ping goes unanswered (or cannot be sent).
async fn keepalive(ping: Option<h2::PingPong>) {
    let Some(mut ping) = ping else { return std::future::pending().await };
    loop {
        tokio::time::sleep(KEEPALIVE).await;
        match tokio::time::timeout(KEEPALIVE, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            _ => return,
        }
    }
}

impl Connection {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends a request whose headers have already lost everything
    /// hop-by-hop (HTTP/2 forbids it), and waits for the response head.
    pub async fn send(&self, req: Request<BoxBody>) -> Result<Response<BoxBody>, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let (parts, body) = req.into_parts();
        let mut head = Request::from_parts(parts, ());
        let length = body.size_hint().exact();
        if let Some(len) = length.filter(|&len| len != 0 || has_payload_semantics(head.method())) {
            head.headers_mut().entry(header::CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
        }
        if let Some(protocol) = head.extensions_mut().remove::<hyper::ext::Protocol>() {
            head.extensions_mut().insert(h2::ext::Protocol::from(protocol.as_str()));
        }
        let end_of_stream = body.is_end_stream();
        let (response, stream) = send.send_request(head, end_of_stream)?;
        if !end_of_stream {
            tokio::spawn(stream_body(body, stream).in_current_span());
        }
        let rsp = response.await?;
        let (parts, recv) = rsp.into_parts();
        let body = RecvBody::new(recv, &parts.headers);
        Ok(Response::from_parts(parts, BoxBody::new(body)))
    }
}

/// As hyper decides when to add a length: methods whose body means
/// something get one even when it is empty.
pub(super) fn has_payload_semantics(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT)
}

/// Streams a body onto an h2 stream (a request's to the upstream, a
/// response's to the client) as the peer's flow control allows, ending with
/// its trailers or an empty end-of-stream frame. Stops when the peer resets
/// the stream, even while the body has nothing to send: a cancelled gRPC
/// stream must not keep its other side open.
async fn stream_body(mut body: BoxBody, mut stream: h2::SendStream<Bytes>) {
    loop {
        let frame = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Ok(frame)),
            Poll::Pending => stream.poll_reset(cx).map(|reset| Err(reset.unwrap_or(h2::Reason::CANCEL))),
        });
        let frame = match frame.await {
            Err(reason) => return debug!(?reason, "stream reset by peer"),
            Ok(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(error))) => {
                debug!(%error, "body failed");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
                continue;
            }
        };
        let last = body.is_end_stream();
        if !data.has_remaining() {
            if last {
                let _ = stream.send_data(data, true);
                return;
            }
            continue;
        }
        while data.has_remaining() {
            stream.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                // The stream was reset or the connection closed: the
                // other side has its answer already.
                Some(Err(_)) | None => return,
            };
            let chunk = data.split_to(granted.min(data.len()));
            if stream.send_data(chunk, last && !data.has_remaining()).is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// A body read from an h2 stream (a response from the upstream, a request
/// from the client), handing its bytes' window back to the peer as they are
/// taken.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    /// From Content-Length, which h2 holds the peer to: what is left of it.
    remaining: Option<u64>,
}

impl RecvBody {
    fn new(recv: h2::RecvStream, headers: &http::HeaderMap) -> Self {
        let remaining = if recv.is_end_stream() {
            Some(0)
        } else {
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
        };
        Self { recv, data_done: false, remaining }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut self.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

// hyper's server defaults, which accepted connections were served with
// before.
const SERVER_STREAM_WINDOW: u32 = 1024 * 1024;
const SERVER_CONNECTION_WINDOW: u32 = 1024 * 1024;
const SERVER_MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Streams this proxy may reset for a client's protocol errors before the
/// connection is closed (the rapid-reset defences keep h2's own defaults).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Performs the server side of the HTTP/2 handshake on an accepted
/// connection; `server::drive` then serves it until the client closes it,
/// the proxy drains or it idles out.
pub async fn accept<I, S>(
    io: I,
    service: S,
    settings: &ServerSettings,
) -> Result<ServerConnection<I, S, impl Future<Output = ()> + Send + 'static>, h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = h2::server::Builder::new()
        .initial_window_size(SERVER_STREAM_WINDOW)
        .initial_connection_window_size(SERVER_CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(SERVER_MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .handshake::<_, Bytes>(io)
        .await?;
    Ok(ServerConnection {
        conn,
        service,
        answer: answer::<S>,
        streams: FuturesUnordered::new(),
        spawn_streams: settings.spawn_streams,
    })
}

/// An accepted HTTP/2 connection, as a future that serves it to its end.
///
/// With one worker, every stream is answered by a future polled from the
/// connection's task, streams first and then the connection, so what a
/// stream queued is written in the same poll that produced it rather than
/// after waking another task.
pub struct ServerConnection<I, S, F> {
    conn: h2::server::Connection<I, Bytes>,
    service: S,
    /// `answer` for this service; `F` is the type of its future, which has
    /// no name to write.
    answer: fn(S, Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> F,
    streams: FuturesUnordered<F>,
    spawn_streams: bool,
}

// Nothing here is pinned in place: the stream futures live on the heap
// inside `FuturesUnordered`, and the service is only cloned.
impl<I: Unpin, S, F> Unpin for ServerConnection<I, S, F> {}

impl<I, S, F> Future for ServerConnection<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Clone,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            match ready!(this.conn.poll_accept(cx)) {
                Some(Ok((req, respond))) => {
                    let answer = (this.answer)(this.service.clone(), req, respond);
                    if this.spawn_streams {
                        tokio::spawn(answer.in_current_span());
                    } else {
                        this.streams.push(answer);
                    }
                }
                Some(Err(error)) => return Poll::Ready(Err(error)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<I, S, F> Graceful for ServerConnection<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Clone,
    F: Future<Output = ()> + Send + 'static,
{
    type Error = h2::Error;

    fn shutdown(self: Pin<&mut Self>) {
        self.get_mut().conn.graceful_shutdown();
    }
}

/// Answers one stream: the request through the service, the response back
/// onto the stream. A client that resets the stream cancels the request.
async fn answer<S>(service: S, req: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>)
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>,
{
    let req = {
        let (parts, recv) = req.into_parts();
        let body = RecvBody::new(recv, &parts.headers);
        Request::from_parts(parts, BoxBody::new(body))
    };
    let rsp = tokio::select! {
        biased;
        rsp = service.oneshot(req) => match rsp {
            Ok(rsp) => rsp,
            Err(never) => match never {},
        },
        reset = poll_fn(|cx| respond.poll_reset(cx)) => {
            return debug!(reason = ?reset.ok(), "stream reset by client");
        }
    };
    let (parts, body) = rsp.into_parts();
    let mut head = Response::from_parts(parts, ());
    head.headers_mut().entry(header::DATE).or_insert_with(date::now);
    let end_of_stream = body.is_end_stream();
    if !end_of_stream {
        if let Some(len) = body.size_hint().exact() {
            head.headers_mut().entry(header::CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
        }
    }
    match respond.send_response(head, end_of_stream) {
        Ok(stream) if !end_of_stream => stream_body(body, stream).await,
        Ok(_) => {}
        Err(error) => {
            debug!(%error, "response not sent");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

/// The Date header a response without one gets (RFC 9110 §6.6.1, as hyper
/// adds it on HTTP/1): formatted once a second per thread, not per response.
mod date {
    use std::{cell::RefCell, time::SystemTime};

    use http::HeaderValue;

    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }

    pub fn now() -> HeaderValue {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|cached| match cached {
            Some((at, value)) if *at == second => value.clone(),
            _ => {
                let value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
                *cached = Some((second, value.clone()));
                value
            }
        })
    }
}
