//! Dialing upstreams: TCP connect with a deadline, Nagle off, metered, and
//! wrapped in mutual TLS when the peer is a meshed proxy.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;
use weft_tls::MeshClientConfig;

use crate::{
    io::{Activity, MeteredIo},
    metrics::TcpMetrics,
};

#[derive(Clone)]
pub struct Connector {
    timeout: Duration,
    plain: TcpMetrics,
    tls: TcpMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, #[source] io::Error),
    #[error("TLS handshake with {0} ({1}): {2}")]
    Tls(SocketAddr, String, #[source] io::Error),
}

impl ConnectError {
    pub fn is_refused(&self) -> bool {
        matches!(self, ConnectError::Io(_, e) if e.kind() == io::ErrorKind::ConnectionRefused)
    }
}

/// Whether a failure was a connection that could not be made, meaning the
/// request never left the proxy.
pub fn is_connect_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        // `ClientError::Connect` is `#[error(transparent)]`: its source()
        // skips the ConnectError, so it must be matched itself.
        if e.is::<ConnectError>()
            || matches!(e.downcast_ref(), Some(crate::http::client::ClientError::Connect(_)))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// An upstream connection, in the clear or mutually authenticated.
pub enum Upstream {
    Plain(MeteredIo<TcpStream>),
    Tls(Box<TlsStream<MeteredIo<TcpStream>>>),
}

impl Connector {
    pub fn new(timeout: Duration, plain: TcpMetrics, tls: TcpMetrics) -> Self {
        Self { timeout, plain, tls }
    }

    pub async fn connect(
        &self,
        addr: SocketAddr,
        tls: Option<&MeshClientConfig>,
        activity: Activity,
    ) -> Result<Upstream, ConnectError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr, self.timeout))?
            .map_err(|e| ConnectError::Io(addr, e))?;
        // Proxied requests are latency-sensitive and already batched by the
        // HTTP codecs; Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Upstream::Plain(MeteredIo::new(stream, self.plain.clone(), activity)));
        };
        let io = MeteredIo::new(stream, self.tls.clone(), activity);
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let handshake = connector.connect(tls.server_name.clone(), io);
        let peer = || tls.server_name.to_str().into_owned();
        let stream = tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout(addr, self.timeout))?
            .map_err(|e| ConnectError::Tls(addr, peer(), e))?;
        let kx = weft_tls::pq::key_exchange_group(stream.get_ref().1);
        tracing::debug!(server.id = %peer(), kx, "mesh TLS handshake");
        Ok(Upstream::Tls(Box::new(stream)))
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Upstream::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Upstream::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Upstream::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(io) => io.is_write_vectored(),
            Upstream::Tls(io) => io.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_flush(cx),
            Upstream::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Upstream::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
