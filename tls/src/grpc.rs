//! gRPC clients over mesh TLS: a tonic channel whose connections verify the
//! server's identity (the CA's, the destination service's).

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::MeshClientConfig;

/// A channel for `endpoint` that dials `addr` (`host:port`) itself and
/// speaks TLS with `tls` (its expected identity is the SNI sent, as
/// linkerd2-proxy does towards the control plane). Connects lazily and
/// reconnects by itself.
pub fn connect_lazy(endpoint: Endpoint, addr: &str, tls: MeshClientConfig) -> Channel {
    let addr = addr.to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let (addr, tls) = (addr.clone(), tls.clone());
        async move {
            let tcp = TcpStream::connect(addr.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls.config).connect(tls.server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector_lazy(connector)
}
