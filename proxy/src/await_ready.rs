//! `weft-proxy await`: blocks until the local proxy is ready.
//!
//! Kubernetes starts a pod's containers in order but does not wait for one
//! to be ready before the next, unless the proxy is a native sidecar. For
//! the classic layout the injector puts this in the proxy container's
//! postStart hook, which holds back the app containers until it returns.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// Polls `GET /ready` on the admin port (on loopback, whatever address the
/// admin server binds) until it answers 200 or `timeout` passes.
pub fn await_ready(admin: SocketAddr, timeout: Duration) -> Result<(), String> {
    let target = SocketAddr::new(
        if admin.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        },
        admin.port(),
    );
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match probe(target) {
            Ok(true) => return Ok(()),
            Ok(false) => last = "not ready".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("proxy at {target} not ready after {timeout:?} ({last})"))
}

fn probe(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(&head[9..12] == b"200")
}
