//! A pool of upstream HTTP connections shared by every accepted connection.
//!
//! HTTP/1 connections serve one request at a time, so each endpoint keeps a
//! stack of idle ones; HTTP/2 multiplexes, so each endpoint keeps one. The
//! pool is keyed by endpoint address, not by the request's authority, so the
//! authority and Host the client sent reach the upstream unchanged.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use foldhash::HashMap;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use weft_tls::{rustls::pki_types::ServerName, MeshClientConfig};

use super::{http2, BoxBody, Version};
use crate::{
    connect::{ConnectError, Connector},
    io::Activity,
};

/// Idle HTTP/1 connections kept per endpoint; enough for a burst of
/// concurrent requests to find warm connections afterwards.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    idle_timeout: Duration,
    http1: Mutex<HashMap<Key, Vec<Idle<http1::SendRequest<BoxBody>>>>>,
    http2: Mutex<HashMap<Key, Idle<http2::Connection>>>,
    /// One connection attempt at a time per HTTP/2 endpoint.
    http2_connecting: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where a request goes: an address, and the identity its proxy must prove
/// when the connection is meshed.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<MeshClientConfig>,
}

/// Connections are shared only between requests for the same address *and*
/// the same peer identity: a plaintext connection never carries a request
/// meant for mTLS.
type Key = (SocketAddr, Option<ServerName<'static>>);

impl Target {
    fn key(&self) -> Key {
        (self.addr, self.tls.as_ref().map(|t| t.server_name.clone()))
    }
}

/// A connection and when it last finished (HTTP/1) or started (HTTP/2) a
/// request.
struct Idle<S> {
    since: Instant,
    sender: S,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP handshake with {0}: {1}")]
    Handshake(SocketAddr, #[source] hyper::Error),
    #[error("upstream {0}: {1}")]
    Upstream(SocketAddr, #[source] hyper::Error),
    #[error("HTTP/2 handshake with {0}: {1}")]
    Http2Handshake(SocketAddr, #[source] h2::Error),
    #[error("upstream {0}: {1}")]
    Http2(SocketAddr, #[source] h2::Error),
}

impl Client {
    pub fn new(connector: Connector, idle_timeout: Duration) -> Self {
        let client = Client {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                http1: Mutex::default(),
                http2: Mutex::default(),
                http2_connecting: Mutex::default(),
            }),
        };
        client.spawn_sweeper();
        client
    }

    pub async fn send(
        &self,
        target: &Target,
        version: Version,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, ClientError> {
        match version {
            Version::Http1 => self.send_http1(target, req).await,
            Version::Http2 => self.send_http2(target, req).await,
        }
    }

    async fn send_http1(
        &self,
        target: &Target,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, ClientError> {
        let key = target.key();
        let endpoint = target.addr;
        let mut sender = match self.checkout_http1(&key) {
            Some(sender) => sender,
            None => self.connect_http1(target).await?,
        };
        let rsp = sender.send_request(req).await.map_err(|e| ClientError::Upstream(endpoint, e))?;
        // The connection may serve another request once this response's
        // body has been read to the end.
        let checkin = Checkin { pool: self.clone(), key, sender };
        Ok(rsp.map(|body| BoxBody::new(CheckinOnEnd { body, checkin: Some(checkin) })))
    }

    fn checkout_http1(&self, key: &Key) -> Option<http1::SendRequest<BoxBody>> {
        let mut pools = lock(&self.inner.http1);
        let idle = pools.get_mut(key)?;
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            if conn.sender.is_ready() && now.duration_since(conn.since) < self.inner.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    fn checkin_http1(&self, key: Key, sender: http1::SendRequest<BoxBody>) {
        let mut pools = lock(&self.inner.http1);
        let idle = pools.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle { since: Instant::now(), sender });
        }
    }

    async fn connect_http1(&self, target: &Target) -> Result<http1::SendRequest<BoxBody>, ClientError> {
        let endpoint = target.addr;
        let io = self.inner.connector.connect(endpoint, target.tls.as_ref(), Activity::default()).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Handshake(endpoint, e))?;
        tokio::spawn(
            async move {
                if let Err(error) = conn.with_upgrades().await {
                    debug!(%error, "upstream HTTP/1 connection ended");
                }
            }
            .instrument(tracing::debug_span!("upstream", %endpoint, version = "h1")),
        );
        Ok(sender)
    }

    async fn send_http2(
        &self,
        target: &Target,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, ClientError> {
        let key = target.key();
        let endpoint = target.addr;
        let conn = match self.cached_http2(&key) {
            Some(conn) => conn,
            None => self.connect_http2_once(target, key).await?,
        };
        conn.send(req).await.map_err(|e| ClientError::Http2(endpoint, e))
    }

    fn cached_http2(&self, key: &Key) -> Option<http2::Connection> {
        lock(&self.inner.http2).get_mut(key).filter(|c| !c.sender.is_closed()).map(|c| {
            c.since = Instant::now();
            c.sender.clone()
        })
    }

    /// Requests that arrive together before an endpoint's HTTP/2 connection
    /// exists wait for one connection attempt instead of each making their
    /// own: the point of HTTP/2 is one multiplexed connection.
    async fn connect_http2_once(&self, target: &Target, key: Key) -> Result<http2::Connection, ClientError> {
        let gate = lock(&self.inner.http2_connecting).entry(key.clone()).or_default().clone();
        let result = {
            let _turn = gate.lock().await;
            match self.cached_http2(&key) {
                Some(sender) => Ok(sender),
                None => self.connect_http2(target).await.inspect(|sender| {
                    let idle = Idle { since: Instant::now(), sender: sender.clone() };
                    lock(&self.inner.http2).insert(key.clone(), idle);
                }),
            }
        };
        let mut connecting = lock(&self.inner.http2_connecting);
        // The map's reference and ours: nobody else is waiting on this gate.
        if Arc::strong_count(&gate) <= 2 {
            connecting.remove(&key);
        }
        result
    }

    async fn connect_http2(&self, target: &Target) -> Result<http2::Connection, ClientError> {
        let endpoint = target.addr;
        let io = self.inner.connector.connect(endpoint, target.tls.as_ref(), Activity::default()).await?;
        http2::handshake(io, endpoint).await.map_err(|e| ClientError::Http2Handshake(endpoint, e))
    }

    /// Closes idle connections past the idle timeout and forgets endpoints
    /// with nothing left, so the pool never grows with every address ever
    /// dialed.
    fn spawn_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        let every = (self.inner.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = Instant::now();
                lock(&inner.http1).retain(|_, idle| {
                    idle.retain(|c| {
                        now.duration_since(c.since) < inner.idle_timeout && !c.sender.is_closed()
                    });
                    !idle.is_empty()
                });
                // An HTTP/2 connection with streams still open stays open when
                // dropped from the pool; it closes once they finish.
                lock(&inner.http2)
                    .retain(|_, c| now.duration_since(c.since) < inner.idle_timeout && !c.sender.is_closed());
            }
        });
    }
}

/// An HTTP/1 connection lent to one request, and where to return it.
struct Checkin {
    pool: Client,
    key: Key,
    sender: http1::SendRequest<BoxBody>,
}

impl Checkin {
    /// Returns the connection to the pool. By the time the response body
    /// has ended, the connection's task has nearly always read it to the
    /// end and is waiting for the next request; if not (or the body was
    /// dropped unread), a task waits for it, and for a connection hyper
    /// closes instead, waits in vain and drops it.
    fn finish(self) {
        let Checkin { pool, key, mut sender } = self;
        if sender.is_ready() {
            return pool.checkin_http1(key, sender);
        }
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.checkin_http1(key, sender);
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/1 response body that hands its connection back to the pool
    /// when it ends.
    struct CheckinOnEnd {
        #[pin]
        body: Incoming,
        checkin: Option<Checkin>,
    }

    impl PinnedDrop for CheckinOnEnd {
        fn drop(this: Pin<&mut Self>) {
            if let Some(checkin) = this.project().checkin.take() {
                checkin.finish();
            }
        }
    }
}

impl Body for CheckinOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = this.body.as_mut().poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || this.body.is_end_stream() {
            if let Some(checkin) = this.checkin.take() {
                checkin.finish();
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map of connections in a
    // state worse than stale entries, which checkout already tolerates.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
