//! A pool of upstream HTTP connections shared by every accepted connection.
//!
//! HTTP/1 connections serve one request at a time, so each endpoint keeps a
//! stack of idle ones; HTTP/2 multiplexes, so each endpoint keeps one. The
//! pool is keyed by endpoint address, not by the request's authority, so the
//! authority and Host the client sent reach the upstream unchanged.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use foldhash::HashMap;
use http::{Request, Response};
use tokio::time::Instant;
use tracing::debug;

use weft_tls::{rustls::pki_types::ServerName, MeshClientConfig};

pub use super::extensions::ClientError;
use super::{http1, http2, BoxBody, Version};
use crate::{connect::Connector, io::Activity};

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
    http1: Mutex<HashMap<Key, Vec<Idle<http1::Connection>>>>,
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
struct Idle<C> {
    since: Instant,
    conn: C,
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
        let (conn, pooled) = match self.checkout_http1(&key) {
            Some(conn) => (conn, true),
            None => (self.connect_http1(target).await?, false),
        };
        // The connection comes back once the response body has been read
        // to its end.
        let checkin = || Checkin { pool: self.clone(), key: key.clone() };
        let error = match conn.send(req, checkin()).await {
            Ok(rsp) => return Ok(rsp),
            // The upstream closed the idle connection as the request went
            // out (its keep-alive timeout): once more, on a new connection.
            Err(http1::SendError { retry: Some(req), error }) if pooled => {
                debug!(%endpoint, %error, "pooled connection was closed; sending on a new one");
                let conn = self.connect_http1(target).await?;
                match conn.send(req, checkin()).await {
                    Ok(rsp) => return Ok(rsp),
                    Err(e) => e.error,
                }
            }
            Err(e) => e.error,
        };
        Err(ClientError::Http1(endpoint, error))
    }

    fn checkout_http1(&self, key: &Key) -> Option<http1::Connection> {
        let mut pools = lock(&self.inner.http1);
        let idle = pools.get_mut(key)?;
        let now = Instant::now();
        while let Some(mut idle) = idle.pop() {
            if now.duration_since(idle.since) < self.inner.idle_timeout && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn checkin_http1(&self, key: Key, conn: http1::Connection) {
        let mut pools = lock(&self.inner.http1);
        let idle = pools.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle { since: Instant::now(), conn });
        }
    }

    async fn connect_http1(&self, target: &Target) -> Result<http1::Connection, ClientError> {
        let io = self.inner.connector.connect(target.addr, target.tls.as_ref(), Activity::default()).await?;
        Ok(http1::Connection::new(io))
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
        lock(&self.inner.http2).get_mut(key).filter(|c| !c.conn.is_closed()).map(|c| {
            c.since = Instant::now();
            c.conn.clone()
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
                None => self.connect_http2(target).await.inspect(|conn| {
                    let idle = Idle { since: Instant::now(), conn: conn.clone() };
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
                    idle.retain_mut(|c| {
                        now.duration_since(c.since) < inner.idle_timeout && c.conn.is_usable()
                    });
                    !idle.is_empty()
                });
                // An HTTP/2 connection with streams still open stays open when
                // dropped from the pool; it closes once they finish.
                lock(&inner.http2)
                    .retain(|_, c| now.duration_since(c.since) < inner.idle_timeout && !c.conn.is_closed());
            }
        });
    }
}

/// Where an HTTP/1 connection lent to one request goes back to.
struct Checkin {
    pool: Client,
    key: Key,
}

impl http1::GiveBack for Checkin {
    fn give_back(self, conn: http1::Connection) {
        self.pool.checkin_http1(self.key, conn);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map of connections in a
    // state worse than stale entries, which checkout already tolerates.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
