//! What both directions share: the per-connection front half (protocol
//! detection, opaque forwarding) and the parts each direction owns one of
//! (upstream connector and pool, metrics, limits).

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncRead, io::AsyncWrite, net::TcpStream};
use tracing::{debug, info};

use crate::{
    config::{Config, PortSet},
    connect::Connector,
    detect::{self, Protocol},
    drain::Drain,
    http::{client::Client, metrics::HttpMetricsLayer, server::ServerSettings, Version},
    io::{Activity, MeteredIo, PrefixedIo},
    metrics::{AuthorityLabels, Direction, TcpMetrics, Tls},
    opaque,
    tap::Taps,
};

/// Distinct `authority` label values per direction before `other`.
const MAX_AUTHORITY_LABELS: usize = 256;

#[derive(Clone)]
pub struct Stack {
    pub direction: Direction,
    pub detect_timeout: Duration,
    pub idle_timeout: Duration,
    pub opaque_ports: PortSet,
    pub server: ServerSettings,
    pub connector: Connector,
    pub client: Client,
    pub src_metrics: TcpMetrics,
    /// Accepted connections from a verified mesh peer (inbound).
    pub src_metrics_mtls: TcpMetrics,
    pub http_metrics: HttpMetricsLayer,
    pub drain: Drain,
    pub taps: Taps,
}

/// What detection made of a connection.
pub enum Detected<I> {
    Http(Version, I),
    Opaque(I),
}

pub type ClientIo = MeteredIo<TcpStream>;

impl Stack {
    pub fn new(direction: Direction, config: &Config, drain: Drain, taps: Taps) -> Self {
        let connector = Connector::new(
            config.connect_timeout,
            TcpMetrics::new(direction, "dst", Tls::NoIdentity),
            TcpMetrics::new(direction, "dst", Tls::Established),
        );
        Stack {
            direction,
            detect_timeout: config.detect_timeout,
            idle_timeout: config.idle_timeout,
            opaque_ports: config.opaque_ports.clone(),
            server: ServerSettings {
                header_read_timeout: config.detect_timeout,
                max_header_bytes: config.max_header_bytes,
                idle_timeout: config.idle_timeout,
                spawn_streams: config.worker_threads > 1,
            },
            client: Client::new(connector.clone(), config.pool_idle_timeout),
            connector,
            src_metrics: TcpMetrics::new(direction, "src", Tls::NoIdentity),
            src_metrics_mtls: TcpMetrics::new(direction, "src", Tls::Established),
            http_metrics: HttpMetricsLayer::new(
                direction,
                Tls::NoIdentity,
                AuthorityLabels::new(MAX_AUTHORITY_LABELS),
            ),
            drain,
            taps,
        }
    }

    pub fn meter(&self, stream: TcpStream, activity: &Activity) -> ClientIo {
        MeteredIo::new(stream, self.src_metrics.clone(), activity.clone())
    }

    /// A socket whose `tls` label waits for the TLS handshake (see
    /// [`MeteredIo::label`]); plaintext if it never gets that far.
    pub fn meter_unlabelled(&self, stream: TcpStream, activity: &Activity) -> ClientIo {
        MeteredIo::unlabelled(stream, self.src_metrics.clone(), activity.clone())
    }

    /// Detects the protocol unless `dst_port` is configured opaque. `None`
    /// means the connection was closed (and why was logged).
    pub async fn detect<I: AsyncRead + Unpin>(
        &self,
        io: I,
        dst_port: Option<u16>,
    ) -> Option<Detected<PrefixedIo<I>>> {
        self.detect_within(io, dst_port, self.detect_timeout).await
    }

    /// [`Stack::detect`] with another timeout (an inbound server's own).
    pub async fn detect_within<I: AsyncRead + Unpin>(
        &self,
        io: I,
        dst_port: Option<u16>,
        timeout: Duration,
    ) -> Option<Detected<PrefixedIo<I>>> {
        if dst_port.is_some_and(|p| self.opaque_ports.contains(p)) {
            return Some(Detected::Opaque(PrefixedIo::new(Default::default(), io)));
        }
        match detect::detect(io, timeout).await {
            Ok((Protocol::Http1, io)) => Some(Detected::Http(Version::Http1, io)),
            Ok((Protocol::Http2, io)) => Some(Detected::Http(Version::Http2, io)),
            Ok((Protocol::Opaque, io)) => Some(Detected::Opaque(io)),
            Err(error) => {
                info!(%error, "closing connection");
                None
            }
        }
    }

    /// Forwards bytes to `dst`, over mTLS when `tls` names the peer.
    pub async fn forward_opaque<I>(
        &self,
        client: I,
        dst: SocketAddr,
        tls: Option<&weft_tls::MeshClientConfig>,
        activity: &Activity,
    ) where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let upstream = match self.connector.connect(dst, tls, activity.clone()).await {
            Ok(upstream) => upstream,
            Err(error) => {
                // No way to tell an opaque client why: closing is the answer.
                info!(%error, "closing connection: upstream unreachable");
                return;
            }
        };
        match opaque::forward(client, upstream, activity, self.idle_timeout).await {
            Ok((sent, received)) => debug!(sent, received, "opaque connection closed"),
            Err(error) => info!(%error, "opaque connection closed"),
        }
    }

    pub fn server_settings(&self) -> &ServerSettings {
        &self.server
    }
}
