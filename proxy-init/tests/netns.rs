//! Real rules in real network namespaces: apply with the binary, read them
//! back with iptables-save, and check that connections are (or are not)
//! redirected. Needs root; skipped with a message otherwise.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy-init");
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 2);

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: creating network namespaces needs CAP_SYS_ADMIN".into());
    }
    for tool in ["ip", "iptables-nft-restore", "iptables-legacy-restore"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed (apt-get install iptables iproute2)"));
        }
    }
    None
}

macro_rules! require_root {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace that is deleted when the test ends, pass or fail.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Self {
        let name = format!("weft-test-{role}-{:08x}", rand::random::<u32>());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    fn proxy_init(&self, args: &[&str]) -> Output {
        let mut full = vec![BIN];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    fn nat(&self, mode: &str) -> String {
        String::from_utf8(self.exec(&[&format!("iptables-{mode}-save"), "-t", "nat"]).stdout).expect("utf8")
    }

    /// Runs `f` on a thread that has entered this namespace, optionally with
    /// its effective UID changed. Sockets keep the namespace they were
    /// created in, so they can be returned and used from any thread.
    fn enter<T: Send + 'static>(&self, euid: Option<u32>, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: a valid namespace fd; setns only affects this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            if let Some(uid) = euid {
                // The raw syscall changes only this thread's credentials (glibc's
                // setresuid would change every thread of the test process). The
                // owner match looks at the socket's fsuid, which follows euid.
                // SAFETY: plain syscall with integer arguments.
                let rc =
                    unsafe { libc::syscall(libc::SYS_setresuid, libc::uid_t::MAX, uid, libc::uid_t::MAX) };
                assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    fn listen(&self, addr: SocketAddr) -> TcpListener {
        self.enter(None, move || {
            let l = TcpListener::bind(addr).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
    }

    fn connect(&self, euid: Option<u32>, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.enter(euid, move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.write_all(b"hi")?;
            Ok(s)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A "pod" namespace wired to a "peer" namespace with a veth pair.
fn pod_and_peer() -> (Netns, Netns) {
    let pod = Netns::new("pod");
    let peer = Netns::new("peer");
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", &peer.name]);
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "peer0"]);
    peer.ip(&["link", "set", "peer0", "up"]);
    (pod, peer)
}

/// Waits (bounded) for a connection and returns it with its original
/// destination as the proxy would see it through SO_ORIGINAL_DST (None when
/// the connection was not NATed).
fn accept(l: &TcpListener, within: Duration) -> Option<(TcpStream, Option<SocketAddrV4>)> {
    let deadline = Instant::now() + within;
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                let mut buf = [0u8; 2];
                s.read_exact(&mut buf).expect("read greeting");
                assert_eq!(&buf, b"hi");
                return Some((s.try_clone().expect("clone"), original_dst(&s)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn original_dst(s: &TcpStream) -> Option<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain old data; the kernel fills at most `len` bytes.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // ENOENT: conntrack has no NAT for this connection.
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "SO_ORIGINAL_DST: {err}");
            return None;
        }
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    }
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

const ARGS: &[&str] = &[
    "--skip-inbound-ports",
    "4190,4191",
    "--skip-outbound-ports",
    "5432",
    "--skip-outbound-cidrs",
    "10.253.0.3/32,fd00::/8",
];

fn redirects_traffic(mode: &str) {
    let (pod, peer) = pod_and_peer();
    // Someone else's chain in the same table: we must leave it alone.
    pod.exec(&[&format!("iptables-{mode}"), "-t", "nat", "-N", "SOMEONE_ELSE"]);
    pod.exec(&[&format!("iptables-{mode}"), "-t", "nat", "-A", "OUTPUT", "-j", "SOMEONE_ELSE"]);

    let mut args = vec!["--iptables-mode", mode];
    args.extend_from_slice(ARGS);
    let first = pod.proxy_init(&args);
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(printed.contains("-A WEFT_PROXY_INIT_OUTPUT"), "{printed}");
    let after_first = pod.nat(mode);
    // Twice: the second run must converge on the same table.
    pod.proxy_init(&args);
    let after_second = pod.nat(mode);
    let rules = |s: &str| -> Vec<String> {
        s.lines().filter(|l| l.starts_with('-') || l.starts_with(':')).map(|l| l.to_string()).collect()
    };
    assert_eq!(rules(&after_first), rules(&after_second));
    let nat = after_second;
    assert_eq!(nat.matches("-j WEFT_PROXY_INIT_REDIRECT").count(), 1, "{nat}");
    assert_eq!(nat.matches("-j WEFT_PROXY_INIT_OUTPUT").count(), 1, "{nat}");
    assert!(nat.contains("-A OUTPUT -j SOMEONE_ELSE"), "{nat}");
    assert!(nat.contains(":SOMEONE_ELSE"), "{nat}");
    for expected in [
        "--uid-owner 2102",
        "-o lo",
        "--dports 4190,4191",
        "--dports 5432",
        "-d 10.253.0.3/32",
        "--to-ports 4143",
        "--to-ports 4140",
    ] {
        assert!(nat.contains(expected), "missing {expected:?} in\n{nat}");
    }
    let nat6 =
        String::from_utf8(pod.exec(&[&format!("ip6tables-{mode}-save"), "-t", "nat"]).stdout).expect("utf8");
    assert_eq!(nat6.matches("-j WEFT_PROXY_INIT_OUTPUT").count(), 1, "{nat6}");
    assert!(nat6.contains("-d fd00::/8"), "{nat6}");

    let outbound_proxy = pod.listen(v4(Ipv4Addr::LOCALHOST, 4140));
    let inbound_proxy = pod.listen(v4(Ipv4Addr::UNSPECIFIED, 4143));
    let admin = pod.listen(v4(Ipv4Addr::UNSPECIFIED, 4191));
    let app = pod.listen(v4(Ipv4Addr::LOCALHOST, 8080));
    let peer_server = peer.listen(v4(PEER_IP, 8080));
    let peer_db = peer.listen(v4(PEER_IP, 5432));
    let wait = Duration::from_secs(3);

    // The app's outbound connection lands on the proxy, which can recover
    // where it was going.
    pod.connect(None, v4(PEER_IP, 8080)).expect("app connect");
    let (_c, orig) = accept(&outbound_proxy, wait).expect("outbound not redirected");
    assert_eq!(orig, Some(SocketAddrV4::new(PEER_IP, 8080)));

    // The proxy's own connection (UID 2102) goes straight out.
    pod.connect(Some(2102), v4(PEER_IP, 8080)).expect("proxy connect");
    let (_c, orig) = accept(&peer_server, wait).expect("proxy UID was redirected");
    assert_eq!(orig, None);
    assert!(accept(&outbound_proxy, Duration::from_millis(200)).is_none());

    // A skipped outbound port goes straight out.
    pod.connect(None, v4(PEER_IP, 5432)).expect("db connect");
    assert!(accept(&peer_db, wait).is_some(), "skip port was redirected");

    // Loopback stays loopback.
    pod.connect(None, v4(Ipv4Addr::LOCALHOST, 8080)).expect("loopback connect");
    assert!(accept(&app, wait).is_some(), "loopback was redirected");
    assert!(accept(&outbound_proxy, Duration::from_millis(200)).is_none());

    // Inbound from the network goes to the inbound proxy...
    peer.connect(None, v4(POD_IP, 8080)).expect("inbound connect");
    let (_c, orig) = accept(&inbound_proxy, wait).expect("inbound not redirected");
    assert_eq!(orig, Some(SocketAddrV4::new(POD_IP, 8080)));

    // ...except for the admin port, which the kubelet probes directly.
    peer.connect(None, v4(POD_IP, 4191)).expect("admin connect");
    assert!(accept(&admin, wait).is_some(), "admin port was redirected");
    assert!(accept(&inbound_proxy, Duration::from_millis(200)).is_none());
}

#[test]
fn redirects_traffic_with_nft() {
    require_root!();
    redirects_traffic("nft");
}

#[test]
fn redirects_traffic_with_legacy() {
    require_root!();
    redirects_traffic("legacy");
}

#[test]
fn auto_mode_follows_existing_rules() {
    require_root!();
    let fresh = Netns::new("auto");
    let out = fresh.proxy_init(&["--iptables-mode", "auto"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("iptables-nft-restore applied"), "{out:?}");

    let legacy = Netns::new("auto");
    legacy.exec(&["iptables-legacy", "-t", "nat", "-N", "CNI_SOMETHING"]);
    let out = legacy.proxy_init(&["--iptables-mode", "auto"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("iptables-legacy-restore applied"), "{out:?}");
    assert!(legacy.nat("legacy").contains("WEFT_PROXY_INIT_OUTPUT"));
    assert!(!legacy.nat("nft").contains("WEFT_PROXY_INIT_OUTPUT"));
}

#[test]
fn dry_run_changes_nothing() {
    require_root!();
    let ns = Netns::new("dry");
    let out = ns.proxy_init(&["--dry-run", "--skip-outbound-ports", "25"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("--dports 25"), "{printed}");
    assert!(printed.contains("dry run"), "{printed}");
    assert!(!ns.nat("nft").contains("WEFT_PROXY_INIT"));
    assert!(!ns.nat("legacy").contains("WEFT_PROXY_INIT"));
}

#[test]
fn bad_arguments_fail_without_touching_anything() {
    require_root!();
    let ns = Netns::new("bad");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN, "--skip-outbound-ports", "http"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--skip-outbound-ports"));
    assert!(!ns.nat("nft").contains("WEFT_PROXY_INIT"));
}
