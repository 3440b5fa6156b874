//! The control plane's gRPC over TLS, with weft-destination's own mesh
//! identity (a certificate from weft-identity, like any workload's).
//!
//! Connections are accepted and their handshakes run here, each on its own
//! task, so a client that stalls mid-handshake holds up nobody; finished
//! ones are handed to tonic (`server::serve_incoming`). The server config
//! resolves the certificate per handshake from the identity's
//! `CurrentCert`, so a renewal takes effect for new connections without a
//! restart, and streams already open keep going on theirs.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, info_span, warn, Instrument};
use weft_tls::{rustls::ServerConfig, ClientAuth, LocalIdentity, ALPN_GRPC};

/// A client that connects and never finishes its handshake must not hold a
/// task and a socket forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server config: TLS 1.3, ALPN `h2` (gRPC; what linkerd2-proxy offers
/// its control plane), our current certificate for whatever SNI is sent.
///
/// No client certificate is asked for: proxies are identified by what they
/// ask for (the context token, PortSpec.workload), as in Linkerd, and one
/// still waiting for its own certificate must be able to discover.
pub fn server_config(local: &LocalIdentity) -> Result<Arc<ServerConfig>, weft_tls::ConfigError> {
    local.tls.server_config(ClientAuth::Disabled, &[ALPN_GRPC])
}

/// An accepted connection, past its TLS handshake.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

/// Accepts connections on `listener` once `local` has its first certificate
/// (until then they wait in the backlog rather than fail their handshake)
/// and completes their handshakes; the stream ends when the receiving
/// server goes away.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    local: LocalIdentity,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        tokio::select! {
            () = local.certified() => info!(identity = %local.name, "serving gRPC over TLS"),
            () = tx.closed() => return,
        }
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Nagle off, as for plaintext (server.rs says why).
            let _ = tcp.set_nodelay(true);
            let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(
                async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(TlsConn { stream, info })).await;
                        }
                        // Plaintext clients, wrong ALPN, scanners: theirs to fix.
                        Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
                .instrument(info_span!("tls", %peer)),
            );
        }
    });
    ReceiverStream::new(rx)
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
