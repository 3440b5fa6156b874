//! Upstream HTTP/2 connections, driven with the h2 crate directly.
//!
//! hyper's HTTP/2 client hands every request to its connection task over a
//! channel, spawns a task per request to wait for the response and answers
//! through a oneshot. A proxy already has a task per request (the stream's,
//! on the server side), so here the request is opened on the shared
//! connection from that task and its response awaited there: no hop, no
//! spawn unless the request has a body to stream.

use std::{
    future::poll_fn,
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
use http::{header, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, Instrument};

use super::BoxBody;

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
            tokio::spawn(send_body(body, stream).in_current_span());
        }
        let rsp = response.await?;
        Ok(rsp.map(|recv| BoxBody::new(RecvBody { recv, data_done: false })))
    }
}

/// As hyper decides when to add a length: methods whose body means
/// something get one even when it is empty.
pub(super) fn has_payload_semantics(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT)
}

/// Streams a request body to the upstream as the peer's flow control
/// allows, ending with its trailers or an empty end-of-stream frame.
async fn send_body(mut body: BoxBody, mut stream: h2::SendStream<Bytes>) {
    loop {
        let frame = match body.frame().await {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(error)) => {
                debug!(%error, "request body failed");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => frame,
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
                // response (or its error) tells the client.
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

/// A response body read from an h2 stream, handing its bytes' window back
/// to the peer as they are taken.
struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
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
        SizeHint::default()
    }
}
