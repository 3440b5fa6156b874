//! Dialing upstreams: TCP connect with a deadline, Nagle off, metered.

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use crate::{
    io::{Activity, MeteredIo},
    metrics::TcpMetrics,
};

#[derive(Clone)]
pub struct Connector {
    timeout: Duration,
    metrics: TcpMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, #[source] io::Error),
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
        if e.is::<ConnectError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

pub type Upstream = MeteredIo<TcpStream>;

impl Connector {
    pub fn new(timeout: Duration, metrics: TcpMetrics) -> Self {
        Self { timeout, metrics }
    }

    pub async fn connect(&self, addr: SocketAddr, activity: Activity) -> Result<Upstream, ConnectError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr, self.timeout))?
            .map_err(|e| ConnectError::Io(addr, e))?;
        // Proxied requests are latency-sensitive and already batched by the
        // HTTP codecs; Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        Ok(MeteredIo::new(stream, self.metrics.clone(), activity))
    }
}
