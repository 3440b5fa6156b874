//! The address a connection was meant for before iptables REDIRECT sent it
//! to the proxy.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Returns the pre-NAT destination, or `None` when the connection was not
/// redirected (explicit mode: the client dialed the proxy itself).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    // An IPv4 connection accepted on a dual-stack `[::]` listener has a
    // v4-mapped local address, but its NAT entry is IPv4: ask with SOL_IP.
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let orig = if local.is_ipv4() { sock.original_dst_v4() } else { sock.original_dst_v6() };
    // Without a conntrack NAT entry the kernel answers ENOENT; with one that
    // did not rewrite the address it answers the local address itself.
    let orig = orig.ok()?.as_socket()?;
    (orig != local).then_some(orig)
}
