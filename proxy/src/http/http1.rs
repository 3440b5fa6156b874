//! Upstream HTTP/1.1 connections, driven from the request's own task.
//!
//! hyper's HTTP/1 client runs every connection in a task of its own: each
//! request crosses a channel to that task, which writes it, parses the
//! response, answers through a oneshot and feeds the body through another
//! channel. A proxy already has a task for the request (the accepted
//! connection's), so here that task writes the request and reads the
//! response itself, and the response body reads straight from the socket:
//! one task wakes per socket event instead of two.
//!
//! A connection serves one request at a time. When the response body has
//! been read to its end, and both sides left the connection reusable, the
//! body hands it back through [`GiveBack`]; otherwise it is closed.

use std::{
    future::poll_fn,
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll, Waker},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::BoxBody;
use crate::connect::Upstream;

/// As hyper's client: more headers than this is a broken or hostile peer.
const MAX_HEADERS: usize = 100;
/// The largest response head (or chunk-size line, or trailer block) read.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Request bytes encoded ahead of the socket before the body is asked for
/// more: bounds memory per request when the upstream reads slowly.
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// Reads start at this size and double, up to the max, while they come
/// back full: small responses stay in small buffers, and a large body
/// moves in few large reads.
const READ_CHUNK: usize = 8 * 1024;
const MAX_READ_CHUNK: usize = 256 * 1024;

/// One HTTP/1.1 connection to an upstream, idle or lent to a request.
pub struct Connection {
    io: Upstream,
    /// Bytes read from the socket and not yet consumed.
    read: BytesMut,
    read_size: usize,
}

/// Where a connection goes when a response is done with it.
pub trait GiveBack: Send + 'static {
    fn give_back(self, conn: Connection);
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    #[error("connection closed in the middle of the response head")]
    ClosedInHead,
    #[error("connection closed before the end of the response body")]
    ClosedInBody,
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("malformed chunked response body")]
    Chunked,
    #[error("request body: {0}")]
    RequestBody(#[source] super::BoxError),
    #[error("request body length differs from its content-length")]
    RequestLength,
    #[error("101 Switching Protocols in answer to a request that asked for no upgrade")]
    UnaskedUpgrade,
}

impl Error {
    /// The upstream closed or reset the connection: what a connection it
    /// timed out while idle looks like when a request races its close.
    fn is_connection_gone(&self) -> bool {
        match self {
            Error::ClosedBeforeResponse => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// A request that failed, and the request itself when sending it again on
/// another connection is safe: it has no body, an idempotent method (RFC
/// 9110 §9.2.2), and the connection was gone before any of a response came.
pub struct SendError {
    pub error: Error,
    pub retry: Option<Request<BoxBody>>,
}

impl From<Error> for SendError {
    fn from(error: Error) -> Self {
        SendError { error, retry: None }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The upstream side of a connection that switched protocols (101, or a
/// CONNECT's 2xx), in the response's extensions: the socket, and whatever
/// the upstream sent after the response head.
#[derive(Clone)]
pub struct Upgraded(Arc<Mutex<Option<(Upstream, Bytes)>>>);

impl Upgraded {
    pub fn take(&self) -> Option<(Upstream, Bytes)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Connection {
    pub fn new(io: Upstream) -> Self {
        Connection { io, read: BytesMut::new(), read_size: READ_CHUNK }
    }

    /// Whether an idle connection can take another request: the peer has
    /// not closed it, and sent nothing unasked (which would be a protocol
    /// error). Checked without waiting, before a pooled connection is used,
    /// so a connection the upstream timed out is not handed a request.
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        self.read.is_empty() && Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// Sends a request whose headers have already lost everything
    /// hop-by-hop, and waits for the response head. Informational (1xx)
    /// responses other than 101 are skipped, as hyper's client does.
    pub async fn send<G: GiveBack>(
        mut self,
        req: Request<BoxBody>,
        give_back: G,
    ) -> Result<Response<BoxBody>, SendError> {
        let (mut parts, body) = req.into_parts();
        let replayable = body.is_end_stream() && is_idempotent(&parts.method);
        let upgrade = parts.method == Method::CONNECT || parts.headers.contains_key(header::UPGRADE);
        let framing = request_framing(&mut parts, &body).map_err(SendError::from)?;
        let mut head = BytesMut::with_capacity(256);
        encode_request_head(&parts, &mut head);
        let mut writer = Some(RequestWriter::new(head, body, framing));
        let mut write_error = None;
        let head = poll_fn(|cx| {
            // The upstream may have answered early and stopped reading (a
            // 413, say): its response says more than the broken pipe does.
            if let Some(error) = poll_request(&mut writer, cx, &mut self.io)? {
                write_error = Some(error);
            }
            self.poll_read_head(cx, &parts.method)
        })
        .await;
        let head = match head {
            Ok(head) => head,
            Err(error) => {
                let error = write_error.take().unwrap_or(error);
                let unanswered = self.read.is_empty() && error.is_connection_gone();
                let retry = (replayable && unanswered)
                    .then(|| Request::from_parts(parts, BoxBody::new(http_body_util::Empty::new())));
                return Err(SendError { error, retry });
            }
        };

        let ResponseHead { mut rsp, framing, mut reusable } = head;
        if write_error.is_some() {
            reusable = false;
        }
        if framing == BodyFraming::Upgrade {
            if !upgrade {
                return Err(Error::UnaskedUpgrade.into());
            }
            let leftover = self.read.split().freeze();
            let io = Upgraded(Arc::new(Mutex::new(Some((self.io, leftover)))));
            rsp.extensions_mut().insert(io);
            return Ok(rsp.map(|()| BoxBody::new(http_body_util::Empty::new())));
        }
        let mut body =
            ResponseBody { conn: Some(self), framing, reusable, writer, give_back: Some(give_back) };
        if body.framing == BodyFraming::Done {
            body.finish();
            return Ok(rsp.map(|()| BoxBody::new(http_body_util::Empty::new())));
        }
        Ok(rsp.map(|()| BoxBody::new(body)))
    }

    fn poll_read_head(&mut self, cx: &mut Context<'_>, method: &Method) -> Poll<Result<ResponseHead, Error>> {
        loop {
            if !self.read.is_empty() {
                if let Some(head) = parse_response_head(&mut self.read, method)? {
                    if head.rsp.status().is_informational()
                        && head.rsp.status() != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    return Poll::Ready(Ok(head));
                }
                if self.read.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(Error::HeadTooLarge));
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                let error =
                    if self.read.is_empty() { Error::ClosedBeforeResponse } else { Error::ClosedInHead };
                return Poll::Ready(Err(error));
            }
        }
    }

    /// Reads what the socket has into the buffer; 0 means end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(self.read_size);
        let n = ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read))?;
        if n >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ_CHUNK);
        }
        Poll::Ready(Ok(n))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum RequestFraming {
    Length(u64),
    Chunked,
}

/// Decides how the request body is delimited (RFC 9112 §6), setting
/// Content-Length when the body's size is known, as hyper does.
fn request_framing(parts: &mut http::request::Parts, body: &BoxBody) -> Result<RequestFraming, Error> {
    // Hop-by-hop, already stripped; the framing written is this proxy's.
    parts.headers.remove(header::TRANSFER_ENCODING);
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        let length = content_length(length).ok_or(Error::RequestLength)?;
        return Ok(RequestFraming::Length(length));
    }
    let length = if body.is_end_stream() { Some(0) } else { body.size_hint().exact() };
    match length {
        Some(0) if !super::http2::has_payload_semantics(&parts.method) => Ok(RequestFraming::Length(0)),
        Some(length) => {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            Ok(RequestFraming::Length(length))
        }
        None => {
            parts.headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            Ok(RequestFraming::Chunked)
        }
    }
}

fn encode_request_head(parts: &http::request::Parts, out: &mut BytesMut) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = if parts.method == Method::CONNECT {
        parts.uri.authority().map(|a| a.as_str())
    } else {
        parts.uri.path_and_query().map(|p| p.as_str())
    };
    out.put_slice(target.unwrap_or("/").as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    encode_headers(&parts.headers, out);
    out.put_slice(b"\r\n");
}

fn encode_headers(headers: &HeaderMap, out: &mut BytesMut) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// A Content-Length value, or several equal ones folded by a peer (RFC 9110
/// §8.6); anything else is malformed.
fn content_length(value: &HeaderValue) -> Option<u64> {
    let mut length = None;
    for part in value.to_str().ok()?.split(',') {
        let part = part.trim();
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = part.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Moves the rest of the request along, if any is left; `writer` becomes
/// `None` once it is all written. A socket that broke stops the writing and
/// is returned, for the response may still be readable; a request that
/// itself broke (its body failed or ran past its length) is an error, for
/// the upstream would wait for the rest of it.
fn poll_request(
    writer: &mut Option<RequestWriter>,
    cx: &mut Context<'_>,
    io: &mut Upstream,
) -> Result<Option<Error>, Error> {
    let Some(w) = writer.as_mut() else { return Ok(None) };
    match w.poll_write(cx, io) {
        Poll::Pending => Ok(None),
        Poll::Ready(Ok(())) => {
            *writer = None;
            Ok(None)
        }
        Poll::Ready(Err(error @ Error::Io(_))) => {
            *writer = None;
            Ok(Some(error))
        }
        Poll::Ready(Err(error)) => Err(error),
    }
}

/// Writes the request head and body as the body yields it, encoded as
/// decided: a small request goes out in one write.
struct RequestWriter {
    out: BytesMut,
    /// `None` once the body has ended and its end been encoded.
    body: Option<BoxBody>,
    framing: RequestFraming,
    flushed: bool,
}

impl RequestWriter {
    fn new(head: BytesMut, body: BoxBody, framing: RequestFraming) -> Self {
        let mut writer = RequestWriter { out: head, body: Some(body), framing, flushed: false };
        if writer.framing == RequestFraming::Length(0)
            && writer.body.as_ref().is_some_and(|b| b.is_end_stream())
        {
            writer.body = None;
        }
        writer
    }

    /// Ready once the whole request is written and flushed.
    fn poll_write(&mut self, cx: &mut Context<'_>, io: &mut Upstream) -> Poll<Result<(), Error>> {
        loop {
            let body_pending = self.poll_encode_body(cx)?;
            if self.out.is_empty() {
                if body_pending {
                    return Poll::Pending;
                }
                if !self.flushed {
                    ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    self.flushed = true;
                }
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.out.advance(n);
            self.flushed = false;
        }
    }

    /// Encodes what the body has ready into `out`; true if the body has
    /// more to come but not yet.
    fn poll_encode_body(&mut self, cx: &mut Context<'_>) -> Result<bool, Error> {
        while self.out.len() < MAX_WRITE_BUFFER {
            let Some(body) = self.body.as_mut() else { return Ok(false) };
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(true),
                Poll::Ready(None) => {
                    self.end(None)?;
                    continue;
                }
                Poll::Ready(Some(Err(error))) => return Err(Error::RequestBody(error)),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => self.encode_data(data)?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.end(Some(trailers))?;
                        continue;
                    }
                }
            }
            if self.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                self.end(None)?;
            }
        }
        Ok(false)
    }

    fn encode_data(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            RequestFraming::Length(remaining) => {
                *remaining = remaining.checked_sub(data.len() as u64).ok_or(Error::RequestLength)?;
            }
            RequestFraming::Chunked => {
                self.out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
        }
        self.out.put_slice(&data);
        if self.framing == RequestFraming::Chunked {
            self.out.put_slice(b"\r\n");
        }
        Ok(())
    }

    /// Encodes the end of the body. Trailers survive only chunked encoding.
    fn end(&mut self, trailers: Option<HeaderMap>) -> Result<(), Error> {
        self.body = None;
        match self.framing {
            RequestFraming::Length(0) => Ok(()),
            RequestFraming::Length(_) => Err(Error::RequestLength),
            RequestFraming::Chunked => {
                self.out.put_slice(b"0\r\n");
                if let Some(trailers) = trailers {
                    encode_headers(&trailers, &mut self.out);
                }
                self.out.put_slice(b"\r\n");
                Ok(())
            }
        }
    }
}

struct ResponseHead {
    rsp: Response<()>,
    framing: BodyFraming,
    /// The upstream keeps the connection open after this response.
    reusable: bool,
}

/// Parses a complete response head off the front of `read`, or returns
/// `None` if more bytes are needed. Header values share the read buffer's
/// memory rather than being copied.
fn parse_response_head(read: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, Error> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        read,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(Error::Parse(error)),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(Error::Malformed("status"))?;
    let http10 = parsed.version == Some(0);
    let base = read.as_ptr() as usize;
    let mut spans = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Malformed("header name"))?;
        let start = h.value.as_ptr() as usize - base;
        spans.push((name, start, start + h.value.len()));
    }
    let head = read.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Error::Malformed("header value"))?;
        map.append(name, value);
    }

    let reusable = keeps_alive(&map, http10);
    let framing = response_framing(method, status, &map)?;
    let reusable = reusable && framing != BodyFraming::Close;
    let mut rsp = Response::new(());
    *rsp.status_mut() = status;
    *rsp.version_mut() = if http10 { http::Version::HTTP_10 } else { http::Version::HTTP_11 };
    *rsp.headers_mut() = map;
    Ok(Some(ResponseHead { rsp, framing, reusable }))
}

fn keeps_alive(headers: &HeaderMap, http10: bool) -> bool {
    let has = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if http10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum BodyFraming {
    /// No body, or all of it read.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    /// The connection now carries another protocol.
    Upgrade,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

fn response_framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<BodyFraming, Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success()) {
        return Ok(BodyFraming::Upgrade);
    }
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyFraming::Done);
    }
    if let Some(te) = headers.get_all(header::TRANSFER_ENCODING).iter().next_back() {
        let last = te.to_str().ok().and_then(|v| v.rsplit(',').next()).map(str::trim);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => BodyFraming::Chunked(Chunk::Size),
            _ => BodyFraming::Close,
        });
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else { return Ok(BodyFraming::Close) };
    let length = content_length(first).ok_or(Error::Malformed("content-length"))?;
    if lengths.any(|v| content_length(v) != Some(length)) {
        return Err(Error::Malformed("content-length"));
    }
    Ok(if length == 0 { BodyFraming::Done } else { BodyFraming::Length(length) })
}

/// A response body read straight off the upstream connection, which goes
/// back to the pool when the body ends.
struct ResponseBody<G: GiveBack> {
    /// `None` once the body has ended and the connection gone back or closed.
    conn: Option<Connection>,
    framing: BodyFraming,
    reusable: bool,
    /// The request body, when the upstream answered before it was all sent
    /// (a streaming exchange): it keeps being written as this is read.
    writer: Option<RequestWriter>,
    give_back: Option<G>,
}

impl<G: GiveBack> ResponseBody<G> {
    /// The body has ended: the connection is returned if nothing is left
    /// half-done on it, and closed otherwise.
    fn finish(&mut self) {
        self.framing = BodyFraming::Done;
        let Some(mut conn) = self.conn.take() else { return };
        let clean = self.reusable && self.writer.is_none() && conn.read.is_empty();
        if let (true, Some(give_back)) = (clean, self.give_back.take()) {
            conn.read = BytesMut::new();
            conn.read_size = READ_CHUNK;
            give_back.give_back(conn);
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(conn) = self.conn.as_mut() {
            if let Some(error) = poll_request(&mut self.writer, cx, &mut conn.io)? {
                tracing::debug!(%error, "request body not sent whole");
                self.reusable = false;
            }
        }
        loop {
            let framing = self.framing;
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            match framing {
                BodyFraming::Done | BodyFraming::Upgrade => return Poll::Ready(None),
                BodyFraming::Length(remaining) => {
                    if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::ClosedInBody)));
                    }
                    let data = take(&mut conn.read, remaining);
                    let remaining = remaining - data.len() as u64;
                    self.framing = BodyFraming::Length(remaining);
                    if remaining == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::Close => {
                    if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(conn.read.split().freeze()))));
                }
                BodyFraming::Chunked(chunk) => {
                    if let Some(frame) = ready!(self.poll_chunked(cx, chunk))? {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
            }
        }
    }

    /// Advances the chunked decoder by one step; a frame when one is ready.
    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
        chunk: Chunk,
    ) -> Poll<Result<Option<Frame<Bytes>>, Error>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(Ok(None)) };
        let need_more = match chunk {
            Chunk::Size => match httparse::parse_chunk_size(&conn.read) {
                Ok(httparse::Status::Complete((len, size))) => {
                    conn.read.advance(len);
                    let next = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    self.framing = BodyFraming::Chunked(next);
                    return Poll::Ready(Ok(None));
                }
                Ok(httparse::Status::Partial) => true,
                Err(_) => return Poll::Ready(Err(Error::Chunked)),
            },
            Chunk::Data(remaining) => {
                if !conn.read.is_empty() {
                    let data = take(&mut conn.read, remaining);
                    let remaining = remaining - data.len() as u64;
                    let next = if remaining == 0 { Chunk::DataEnd } else { Chunk::Data(remaining) };
                    self.framing = BodyFraming::Chunked(next);
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                true
            }
            Chunk::DataEnd => {
                if conn.read.len() >= 2 {
                    if &conn.read[..2] != b"\r\n" {
                        return Poll::Ready(Err(Error::Chunked));
                    }
                    conn.read.advance(2);
                    self.framing = BodyFraming::Chunked(Chunk::Size);
                    return Poll::Ready(Ok(None));
                }
                true
            }
            Chunk::Trailers => {
                if conn.read.starts_with(b"\r\n") {
                    conn.read.advance(2);
                    self.finish();
                    return Poll::Ready(Ok(None));
                }
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(&conn.read, &mut headers) {
                    Ok(httparse::Status::Complete((len, parsed))) => {
                        let trailers = trailer_map(parsed);
                        conn.read.advance(len);
                        self.finish();
                        return Poll::Ready(Ok(Some(Frame::trailers(trailers?))));
                    }
                    Ok(httparse::Status::Partial) => true,
                    Err(error) => return Poll::Ready(Err(Error::Parse(error))),
                }
            }
        };
        debug_assert!(need_more);
        if conn.read.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(Error::HeadTooLarge));
        }
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(Error::ClosedInBody));
        }
        Poll::Ready(Ok(None))
    }
}

fn trailer_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Malformed("trailer name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Malformed("trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Up to `limit` bytes off the front of the buffer, without copying.
fn take(read: &mut BytesMut, limit: u64) -> Bytes {
    let n = usize::try_from(limit).unwrap_or(usize::MAX).min(read.len());
    read.split_to(n).freeze()
}

// Nothing in the body is pinned structurally.
impl<G: GiveBack> Unpin for ResponseBody<G> {}

impl<G: GiveBack> Body for ResponseBody<G> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let frame = ready!(this.poll_body(cx));
        if let Some(Err(_)) = frame {
            // The connection is in an unknown state: close it.
            this.conn = None;
            this.framing = BodyFraming::Done;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.framing == BodyFraming::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Done => SizeHint::with_exact(0),
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<ResponseHead>, Error> {
        parse_response_head(&mut BytesMut::from(raw), &method)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use BodyFraming::*;
        let cases = [
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::GET, Length(5)),
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD, Done),
            ("HTTP/1.1 204 No Content\r\n\r\n", Method::GET, Done),
            ("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", Method::GET, Done),
            // Transfer-Encoding wins over Content-Length; chunked must be last.
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
                Method::GET,
                Chunked(Chunk::Size),
            ),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Method::GET, Close),
            ("HTTP/1.1 200 OK\r\n\r\n", Method::GET, Close),
            ("HTTP/1.1 200 OK\r\n\r\n", Method::CONNECT, Upgrade),
            ("HTTP/1.1 101 Switching\r\nupgrade: websocket\r\n\r\n", Method::GET, Upgrade),
            ("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", Method::GET, Length(7)),
        ];
        for (raw, method, want) in cases {
            assert_eq!(head(raw, method).unwrap().unwrap().framing, want, "{raw}");
        }
    }

    #[test]
    fn conflicting_or_invalid_lengths_are_malformed() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        ] {
            assert!(matches!(head(raw, Method::GET), Err(Error::Malformed(_))), "{raw}");
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection_header() {
        let reusable = |raw: &str| head(raw, Method::GET).unwrap().unwrap().reusable;
        assert!(reusable("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!reusable("HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"));
        assert!(!reusable("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(reusable("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"));
        // Delimited by the close itself.
        assert!(!reusable("HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[test]
    fn partial_heads_wait_and_garbage_is_an_error() {
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", Method::GET).unwrap().is_none());
        assert!(matches!(head("SSH-2.0-OpenSSH\r\n\r\n", Method::GET), Err(Error::Parse(_))));
        assert!(matches!(
            head("HTTP/1.1 999999 X\r\n\r\n", Method::GET),
            Err(Error::Parse(_) | Error::Malformed(_))
        ));
    }

    #[test]
    fn header_values_and_the_rest_of_the_buffer_survive_parsing() {
        let mut read =
            BytesMut::from("HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b: two words\r\ncontent-length: 3\r\n\r\nabc");
        let head = parse_response_head(&mut read, &Method::GET).unwrap().unwrap();
        assert_eq!(head.rsp.headers()["x-a"], "1");
        assert_eq!(head.rsp.headers()["x-b"], "two words");
        assert_eq!(&read[..], b"abc");
    }

    #[test]
    fn request_heads_carry_their_framing() {
        let frame = |req: Request<BoxBody>| {
            let (mut parts, body) = req.into_parts();
            let framing = request_framing(&mut parts, &body).unwrap();
            let mut out = BytesMut::new();
            encode_request_head(&parts, &mut out);
            (framing, String::from_utf8(out.to_vec()).unwrap())
        };
        let get = Request::get("/a?b")
            .header("host", "x")
            .body(BoxBody::new(http_body_util::Empty::new()))
            .unwrap();
        assert_eq!(frame(get), (RequestFraming::Length(0), "GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n".into()));
        let post = Request::post("/").body(super::super::full("hello")).unwrap();
        assert_eq!(
            frame(post),
            (RequestFraming::Length(5), "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n".into())
        );
        let connect =
            Request::connect("example.com:443").body(BoxBody::new(http_body_util::Empty::new())).unwrap();
        assert_eq!(frame(connect).1, "CONNECT example.com:443 HTTP/1.1\r\n\r\n");
    }
}
