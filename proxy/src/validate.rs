//! `weft-proxy validate`: the init container that proves, before the proxy
//! and the app start, that the pod's outbound TCP is redirected to the
//! proxy (what Linkerd calls the network validator).
//!
//! In CNI mode no init container writes the pod's iptables rules: weft-cni
//! writes them from the node when the sandbox is created. If the plugin did
//! not run (not installed on this node, removed from the conflist by the
//! primary plugin), the app would start with traffic that bypasses the mesh.
//! The validator catches that: it listens on the proxy's outbound port on
//! loopback (the proxy has not started yet), connects to an address that is
//! never routed (`192.0.2.1`, TEST-NET-1), and expects the connection to
//! arrive at its own listener, which proves it by sending a random token.
//! The redirect exempts only the proxy's UID (2102), so the validator must
//! run as another one.
//!
//! It never runs in the proxy process: this module is only used by the
//! binary's `validate` subcommand.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Where the validator connects: TEST-NET-1 (RFC 5737) and the IPv6
/// documentation prefix (RFC 3849), reserved and never routed, so a
/// connection to them only succeeds when the redirect catches it. Each
/// family is checked when the pod has a route for it (an IPv6-only pod has
/// none for IPv4).
pub const DEFAULT_CONNECT_IPS: [IpAddr; 2] =
    [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))];
pub const DEFAULT_CONNECT_PORT: u16 = 4149;
/// The proxy's outbound port, where weft-proxy-init's (and weft-cni's)
/// rules send the pod's outbound TCP.
pub const DEFAULT_OUTBOUND_PORT: u16 = 4140;
/// The proxy's UID, whose traffic the rules exempt: a validator running as
/// it would never be redirected.
pub const PROXY_UID: u32 = 2102;

const TOKEN_LEN: usize = 16;

/// Where the fix is documented.
pub const HELP: &str = "the weft-cni plugin did not set up this pod's redirect rules: is the weft-cni \
DaemonSet running on this node (chart value cni.enabled=true) and is weft-cni still in the node's CNI \
conflist? See cni/README.md (https://github.com/weft-mesh/weft/blob/main/cni/README.md); until it is \
fixed, delete the pod once the plugin runs, or inject without CNI mode";

#[derive(Clone, Debug)]
pub struct Validation {
    /// Listened on, as the proxy's outbound listener would be.
    pub listen: Vec<SocketAddr>,
    /// Connected to, those the pod has a route for; each must be an address
    /// the redirect catches.
    pub connect: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl Validation {
    /// `127.0.0.1:PORT` and `[::1]:PORT`, as the proxy's default outbound
    /// listeners (the IPv6 one is skipped on a pod without IPv6).
    pub fn new(outbound_port: u16, connect: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self {
            listen: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), outbound_port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), outbound_port),
            ],
            connect,
            timeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("running as UID {PROXY_UID}, the proxy's, whose traffic the redirect exempts: run the validator as another non-root UID (the injector uses 2103)")]
    ProxyUid,
    #[error("cannot listen on {addr} (is something already on the proxy's outbound port?): {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("the pod has no route to any of {}: it has no network to check", addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    NoRoute { addrs: Vec<SocketAddr> },
    #[error("outbound TCP is not redirected to the proxy: connecting to {addr} {cause}; {HELP}")]
    NotRedirected { addr: SocketAddr, cause: String },
    #[error("the connection to {addr} reached something other than this validator ({cause}): outbound TCP is not redirected to the proxy's port {port}; {HELP}")]
    Elsewhere { addr: SocketAddr, port: u16, cause: String },
}

/// Runs the check; `Ok` carries, for each address checked, the local
/// address its redirected connection arrived at.
pub fn validate(v: &Validation) -> Result<Vec<(SocketAddr, SocketAddr)>, ValidateError> {
    if current_uid() == PROXY_UID {
        return Err(ValidateError::ProxyUid);
    }
    let targets: Vec<SocketAddr> = v.connect.iter().copied().filter(|a| routed(*a)).collect();
    if targets.is_empty() {
        return Err(ValidateError::NoRoute { addrs: v.connect.clone() });
    }
    let listeners = listen(&v.listen)?;
    targets.into_iter().map(|t| check(&listeners, t, v.timeout).map(|at| (t, at))).collect()
}

/// Whether the pod has a route to `addr`: a UDP connect looks the route up
/// and sends nothing.
fn routed(addr: SocketAddr) -> bool {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let routed = UdpSocket::bind(local).and_then(|s| s.connect(addr)).is_ok();
    if !routed {
        tracing::debug!(%addr, "no route: not checked");
    }
    routed
}

/// One connection to `connect`, which must arrive at one of `listeners`.
fn check(
    listeners: &[TcpListener],
    connect: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, ValidateError> {
    let port = listeners.first().and_then(|l| l.local_addr().ok()).map_or(0, |a| a.port());
    let token: [u8; TOKEN_LEN] = rand::random();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver outlives this thread unless the caller is gone.
        let _ = done_tx.send(connect_and_read(connect, timeout));
    });
    // Accepted connections are kept open until the client has read.
    let mut accepted = Vec::new();
    let mut arrived_at = None;
    let outcome = loop {
        for l in listeners {
            match l.accept() {
                Ok((mut stream, peer)) => {
                    let local = stream.local_addr().ok();
                    tracing::debug!(%peer, ?local, "accepted a connection");
                    // Non-blocking listeners give non-blocking streams on
                    // some systems; the token is 16 bytes, written at once.
                    let _ = stream.set_nonblocking(false);
                    if stream.write_all(&token).is_ok() {
                        arrived_at = arrived_at.or(local);
                    }
                    accepted.push(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
        match done_rx.recv_timeout(Duration::from_millis(10)) {
            Ok(outcome) => break outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(Failure::Connect("failed: the connecting thread stopped".into()))
            }
        }
    };
    match outcome {
        Ok(received) if received == token => Ok(arrived_at.unwrap_or(connect)),
        Ok(_) => Err(ValidateError::Elsewhere {
            addr: connect,
            port,
            cause: "it did not answer with this validator's token".into(),
        }),
        Err(Failure::Connect(cause)) => Err(ValidateError::NotRedirected { addr: connect, cause }),
        Err(Failure::Read(cause)) => Err(ValidateError::Elsewhere { addr: connect, port, cause }),
    }
}

fn listen(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ValidateError> {
    let mut listeners = Vec::new();
    for &addr in addrs {
        match TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true).map_err(|source| ValidateError::Listen { addr, source })?;
                listeners.push(l);
            }
            // A pod without IPv6 has no ::1: the proxy falls back to IPv4
            // alone there, and so does the validator.
            Err(e) if addr.is_ipv6() && !listeners.is_empty() => {
                tracing::debug!(%addr, error = %e, "no IPv6 loopback; IPv4 alone");
            }
            Err(source) => return Err(ValidateError::Listen { addr, source }),
        }
    }
    Ok(listeners)
}

enum Failure {
    Connect(String),
    Read(String),
}

fn connect_and_read(addr: SocketAddr, timeout: Duration) -> Result<[u8; TOKEN_LEN], Failure> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        Failure::Connect(if e.kind() == io::ErrorKind::TimedOut {
            format!("timed out after {timeout:?} (nothing caught it)")
        } else {
            format!("failed: {e}")
        })
    })?;
    let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(100));
    stream.set_read_timeout(Some(left)).map_err(|e| Failure::Read(e.to_string()))?;
    let mut token = [0u8; TOKEN_LEN];
    stream.read_exact(&mut token).map_err(|e| Failure::Read(format!("reading the token: {e}")))?;
    Ok(token)
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_listener_port() -> u16 {
        // A free port: bound, read, released.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[test]
    fn succeeds_when_the_connection_reaches_the_validator() {
        if current_uid() == PROXY_UID {
            return;
        }
        // What the redirect does, without it: the "remote" address is the
        // validator's own listener.
        let port = loopback_listener_port();
        let v = Validation::new(port, vec![SocketAddr::from(([127, 0, 0, 1], port))], Duration::from_secs(5));
        let checked = validate(&v).expect("validates");
        assert_eq!(checked.len(), 1);
        assert_eq!(checked[0].1.port(), port);
    }

    #[test]
    fn fails_naming_the_cause_when_nothing_redirects() {
        if current_uid() == PROXY_UID {
            return;
        }
        let port = loopback_listener_port();
        // Another free port: refused, as an unredirected connection would be
        // lost; the error says why and what to do.
        let other = loopback_listener_port();
        let v =
            Validation::new(port, vec![SocketAddr::from(([127, 0, 0, 2], other))], Duration::from_secs(2));
        let e = validate(&v).expect_err("must fail").to_string();
        assert!(e.contains("outbound TCP is not redirected"), "{e}");
        assert!(e.contains("weft-cni"), "{e}");
        assert!(e.contains("127.0.0.2"), "{e}");
    }

    #[test]
    fn fails_when_the_outbound_port_is_taken() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let v = Validation::new(port, vec![SocketAddr::from(([127, 0, 0, 1], port))], Duration::from_secs(1));
        if current_uid() == PROXY_UID {
            return;
        }
        let e = validate(&v).expect_err("port taken").to_string();
        assert!(e.contains("cannot listen on 127.0.0.1"), "{e}");
    }

    #[test]
    fn a_family_without_a_route_is_not_checked() {
        // fe80::/10 needs an interface: no route for a bare address.
        let unroutable = SocketAddr::from((Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1), 4149));
        assert!(!routed(unroutable));
        assert!(routed(SocketAddr::from(([127, 0, 0, 1], 4149))));
        if current_uid() == PROXY_UID {
            return;
        }
        let v = Validation::new(0, vec![unroutable], Duration::from_secs(1));
        let e = validate(&v).expect_err("nothing to check").to_string();
        assert!(e.contains("no route to any of [fe80::1]:4149"), "{e}");
    }
}
