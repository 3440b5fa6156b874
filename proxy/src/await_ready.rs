//! `weft-proxy await`: blocks until the local proxy is ready.
//!
//! Kubernetes starts a pod's containers in order but does not wait for one
//! to be ready before the next, unless the proxy is a native sidecar. For
//! the classic layout the injector puts this in the proxy container's
//! postStart hook, which holds back the app containers until it returns.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::listen::AddrList;

/// Polls `GET /ready` on the admin listeners (`WEFT_PROXY_ADMIN_ADDR`'s
/// addresses, wildcards asked on loopback) until one answers 200 or
/// `timeout` passes.
pub fn await_ready(admin: &[SocketAddr], timeout: Duration) -> Result<(), String> {
    let targets = probe_targets(admin);
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        for &target in &targets {
            match probe(target) {
                Ok(true) => return Ok(()),
                Ok(false) => last = format!("{target}: not ready"),
                Err(e) => last = format!("{target}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("proxy admin ({}) not ready after {timeout:?} ({last})", AddrList(&targets)))
}

/// Where to ask: `0.0.0.0` on `127.0.0.1`; `[::]` on `127.0.0.1` (a
/// dual-stack socket takes IPv4, and the default falls back to `0.0.0.0`
/// without IPv6) and on `[::1]` (an IPv6-only socket); any other address
/// as it is.
fn probe_targets(admin: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut targets = Vec::new();
    for addr in admin {
        let ips: &[IpAddr] = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            IpAddr::V6(ip) if ip.is_unspecified() => {
                &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
            }
            _ => &[addr.ip()],
        };
        for &ip in ips {
            let target = SocketAddr::new(ip, addr.port());
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    targets
}

fn probe(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(&head[9..12] == b"200")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &str) -> Vec<SocketAddr> {
        list.split(',').map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn wildcards_are_asked_on_loopback() {
        assert_eq!(probe_targets(&addrs("[::]:4191")), addrs("127.0.0.1:4191,[::1]:4191"));
        assert_eq!(probe_targets(&addrs("0.0.0.0:4191")), addrs("127.0.0.1:4191"));
        assert_eq!(probe_targets(&addrs("0.0.0.0:4191,[::]:4191")), addrs("127.0.0.1:4191,[::1]:4191"));
        assert_eq!(probe_targets(&addrs("[::1]:4191,10.0.0.5:4191")), addrs("[::1]:4191,10.0.0.5:4191"));
    }
}
