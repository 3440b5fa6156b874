//! What the CLI's end-to-end tests share: sibling binaries built and found
//! the way the e2e harness finds them, child processes that are killed when
//! dropped, and a minimal HTTP/1.1 client and server on loopback.
#![allow(dead_code)]

pub mod apiserver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Workspace binaries that are not this package's (cargo does not build
/// them for `-p weft` tests), built and found as the e2e harness does.
pub fn sibling(package: &str) -> PathBuf {
    weft_e2e::bins::bin_of(package, package)
}

pub fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A child process killed and reaped on drop, its output in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(label: &str, mut cmd: Command) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "weft-cli-test-{}-{label}-{}.log",
            std::process::id(),
            rand_u64()
        ));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        Proc { child: cmd.spawn().unwrap(), log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output contains `needle` `count` times.
    pub fn wait_output(&self, needle: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.output().matches(needle).count() < count {
            assert!(Instant::now() < deadline, "no {needle:?} x{count} in output:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.output());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
pub fn request(addr: SocketAddr, method: &str, target: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // One write, no Nagle: small writes would meet delayed ACKs (40 ms).
    s.set_nodelay(true).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// GET `path` on `addr` until it answers 200, within `limit`.
pub fn wait_http_ok(addr: SocketAddr, path: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut line = String::new();
            if BufReader::new(s).read_line(&mut line).is_ok() && line.contains(" 200 ") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr}{path} not ready in {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An upstream app: `/…/slow` answers after 60 ms, `/…/fail` with 503,
/// anything else 200 with a small body. One thread per connection.
pub fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_app(stream));
        }
    });
    addr
}

fn serve_app(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
            if h == "\r\n" {
                break;
            }
        }
        let path = first.split(' ').nth(1).unwrap_or("/").to_string();
        let (status, body) = if path.ends_with("/slow") {
            std::thread::sleep(Duration::from_millis(60));
            ("200 OK", "slow")
        } else if path.ends_with("/fail") {
            ("503 Service Unavailable", "down")
        } else {
            ("200 OK", "hello")
        };
        let rsp = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let _ = stream.write_all(rsp.as_bytes());
        if close {
            return;
        }
    }
}

pub fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-cli-{tag}-{}-{}", std::process::id(), rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
