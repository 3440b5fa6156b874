//! Binding the listeners, and accepting connections: a bounded number at
//! once per direction, each in its own task and span, until the proxy
//! drains.

use std::{
    fmt,
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{info, info_span, warn, Instrument};

use crate::{config::ListenAddrs, drain::Drain, metrics::Direction, orig_dst::original_dst};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {what} address {addr} ({var}): {source}")]
pub struct BindError {
    pub what: &'static str,
    /// The variable the address comes from (or defaults for).
    pub var: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds every address of `listen`. The defaults' IPv6 addresses give way
/// to IPv4 on a host without IPv6 (logged at info); addresses an operator
/// set must all bind.
pub fn bind_all(what: &'static str, listen: &ListenAddrs) -> Result<Vec<TcpListener>, BindError> {
    let error = |addr, source| BindError { what, var: listen.var, addr, source };
    let mut listeners = Vec::with_capacity(listen.addrs.len());
    for &addr in &listen.addrs {
        // Two sockets cannot both take IPv4 on one port: with `0.0.0.0`
        // listed too, `[::]` takes IPv6 alone.
        let v6_only = listen.addrs.contains(&SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()));
        match bind(addr, v6_only) {
            Ok(listener) => listeners.push(listener),
            Err(source) if listen.defaulted && is_no_ipv6(addr, &source) => {
                let ipv4 = ipv4_counterpart(addr);
                info!(what, %addr, %ipv4, error = %source, "no IPv6 on this host; listening on IPv4 only");
                if !listen.addrs.contains(&ipv4) {
                    listeners.push(bind(ipv4, false).map_err(|source| error(ipv4, source))?);
                }
            }
            Err(source) => return Err(error(addr, source)),
        }
    }
    Ok(listeners)
}

/// A listening socket on `addr`. An IPv6 wildcard takes IPv4 too (arriving
/// v4-mapped) unless `v6_only`, whatever the host's `net.ipv6.bindv6only`.
pub fn bind(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(v6_only)?;
    }
    // As tokio's own bind: a restarted proxy rebinds at once, connections
    // of its previous run in TIME_WAIT notwithstanding.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// IPv6 disabled (no `::1` on lo: EADDRNOTAVAIL) or absent from the kernel
/// (EAFNOSUPPORT): not a mistake of the operator's.
fn is_no_ipv6(addr: SocketAddr, error: &io::Error) -> bool {
    addr.is_ipv6() && matches!(error.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT))
}

/// `[::]` → `0.0.0.0`, `[::1]` (or any other) → `127.0.0.1`, same port.
fn ipv4_counterpart(addr: SocketAddr) -> SocketAddr {
    let ip = if addr.ip().is_unspecified() { Ipv4Addr::UNSPECIFIED } else { Ipv4Addr::LOCALHOST };
    SocketAddr::new(ip.into(), addr.port())
}

/// What one direction's listeners really bound (chosen ports included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundAddrs(Arc<[SocketAddr]>);

impl BoundAddrs {
    pub fn of(listeners: &[TcpListener]) -> io::Result<Self> {
        listeners.iter().map(TcpListener::local_addr).collect::<io::Result<Vec<_>>>().map(|a| Self(a.into()))
    }

    /// Whether a connection to `dst` would come back to one of these
    /// listeners, as far as can be told without listing the host's
    /// interfaces: the same address, or loopback on a wildcard's port.
    pub fn contains(&self, dst: SocketAddr) -> bool {
        let ip = dst.ip().to_canonical();
        self.0.iter().any(|own| {
            let own_ip = own.ip().to_canonical();
            own.port() == dst.port()
                && (own_ip == ip || (own_ip.is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        })
    }
}

/// `127.0.0.1:4140,[::1]:4140`, as the variables are written.
impl fmt::Display for BoundAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        AddrList(&self.0).fmt(f)
    }
}

/// Addresses as the listen variables write them: `127.0.0.1:4140,[::1]:4140`.
pub struct AddrList<'a>(pub &'a [SocketAddr]);

impl fmt::Display for AddrList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

pub struct Accepted {
    pub stream: TcpStream,
    pub client: SocketAddr,
    /// Where the client meant to connect, when iptables redirected it here.
    pub orig_dst: Option<SocketAddr>,
}

/// Accepts on every listener of one direction; `max_connections` bounds
/// them together.
pub async fn serve<F, Fut>(
    listeners: Vec<TcpListener>,
    direction: Direction,
    max_connections: usize,
    drain: Drain,
    handle: F,
) where
    F: Fn(Accepted) -> Fut + Clone,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    let loops = listeners.into_iter().map(|listener| {
        accept_loop(listener, direction, (limit.clone(), max_connections), drain.clone(), handle.clone())
    });
    futures_util::future::join_all(loops).await;
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    direction: Direction,
    (limit, max_connections): (Arc<Semaphore>, usize),
    drain: Drain,
    handle: F,
) where
    F: Fn(Accepted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        // An IPv4 client of a dual-stack socket is `::ffff:a.b.c.d`: logs,
        // tap and metrics show it as the IPv4 address it is.
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn bound(list: &[&str]) -> BoundAddrs {
        BoundAddrs(list.iter().map(|a| addr(a)).collect())
    }

    #[test]
    fn a_request_for_any_outbound_listener_is_a_loop() {
        let own = bound(&["127.0.0.1:4140", "[::1]:4140"]);
        assert!(own.contains(addr("127.0.0.1:4140")));
        assert!(own.contains(addr("[::1]:4140")));
        assert!(own.contains(addr("[::ffff:127.0.0.1]:4140")));
        assert!(!own.contains(addr("127.0.0.1:4141")));
        assert!(!own.contains(addr("10.0.0.1:4140")));

        let wildcard = bound(&["[::]:4140"]);
        for dst in ["127.0.0.1:4140", "[::1]:4140", "0.0.0.0:4140", "[::]:4140"] {
            assert!(wildcard.contains(addr(dst)), "{dst}");
        }
        assert!(!wildcard.contains(addr("10.0.0.1:80")));
    }

    #[test]
    fn bound_addrs_print_as_the_variables_are_written() {
        assert_eq!(bound(&["127.0.0.1:4140", "[::1]:4140"]).to_string(), "127.0.0.1:4140,[::1]:4140");
    }

    #[test]
    fn the_defaults_ipv6_gives_way_to_ipv4() {
        assert_eq!(ipv4_counterpart(addr("[::]:4143")), addr("0.0.0.0:4143"));
        assert_eq!(ipv4_counterpart(addr("[::1]:4140")), addr("127.0.0.1:4140"));
        let unavailable = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(is_no_ipv6(addr("[::1]:4140"), &unavailable));
        assert!(!is_no_ipv6(addr("127.0.0.1:4140"), &unavailable));
        let in_use = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert!(!is_no_ipv6(addr("[::1]:4140"), &in_use));
    }

    #[tokio::test]
    async fn an_ipv6_wildcard_takes_ipv4_too() {
        let Ok(dual) = bind(addr("[::]:0"), false) else {
            return println!("skipping: no IPv6 on this host");
        };
        let port = dual.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { dual.accept().await.map(|(_, peer)| peer) });
        TcpStream::connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)).await.unwrap();
        let peer = accepted.await.unwrap().unwrap();
        assert!(peer.is_ipv6(), "{peer}");
        assert_eq!(peer.ip().to_canonical(), IpAddr::from(Ipv4Addr::LOCALHOST), "v4-mapped");
    }

    #[tokio::test]
    async fn an_ipv6_wildcard_beside_an_ipv4_one_takes_ipv6_alone() {
        if bind(addr("[::]:0"), false).is_err() {
            return println!("skipping: no IPv6 on this host");
        }
        let port = bind(addr("0.0.0.0:0"), false).unwrap().local_addr().unwrap().port();
        let both = format!("0.0.0.0:{port},[::]:{port}");
        let listen = ListenAddrs {
            var: "WEFT_PROXY_INBOUND_ADDR",
            addrs: both.split(',').map(addr).collect(),
            defaulted: false,
        };
        let listeners = bind_all("inbound", &listen).expect("both on one port");
        assert_eq!(BoundAddrs::of(&listeners).unwrap().to_string(), both);
    }

    #[tokio::test]
    async fn an_explicit_address_that_cannot_be_bound_names_its_variable() {
        let taken = bind(addr("127.0.0.1:0"), false).unwrap();
        let listen = ListenAddrs {
            var: "WEFT_PROXY_OUTBOUND_ADDR",
            addrs: vec![taken.local_addr().unwrap()],
            defaulted: false,
        };
        let error = bind_all("outbound", &listen).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("cannot listen on outbound address 127.0.0.1:"), "{message}");
        assert!(message.contains("(WEFT_PROXY_OUTBOUND_ADDR)"), "{message}");
    }
}
