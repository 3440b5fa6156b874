//! Accepting connections: a bounded number at once, each in its own task
//! and span, until the proxy drains.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{info_span, warn, Instrument};

use crate::{drain::Drain, metrics::Direction, orig_dst::original_dst};

pub struct Accepted {
    pub stream: TcpStream,
    pub client: SocketAddr,
    /// Where the client meant to connect, when iptables redirected it here.
    pub orig_dst: Option<SocketAddr>,
}

pub async fn serve<F, Fut>(
    listener: TcpListener,
    direction: Direction,
    max_connections: usize,
    drain: Drain,
    handle: F,
) where
    F: Fn(Accepted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, client) = tokio::select! {
            () = drain.signal().cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(%error, direction = direction.as_str(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%client, max_connections, direction = direction.as_str(), "connection limit reached; closing new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let orig_dst = original_dst(&stream);
        let span = match orig_dst {
            Some(dst) => info_span!("conn", dir = direction.as_str(), client.addr = %client, orig_dst = %dst),
            None => info_span!("conn", dir = direction.as_str(), client.addr = %client),
        };
        let conn = handle(Accepted { stream, client, orig_dst });
        drain.tracker().spawn(
            async move {
                conn.await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}
