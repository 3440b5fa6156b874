//! The real `weft-destination` binary on a manifest directory.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Kills the child however the test ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Destination {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The binary's log lines (stderr) after `listening` ...
    pub logs: mpsc::Receiver<String>,
    /// ... and up to it.
    pub startup_logs: Vec<String>,
}

fn field(line: &str, name: &str) -> SocketAddr {
    let start = line.find(&format!("{name}=")).expect("field") + name.len() + 1;
    line[start..].split_whitespace().next().expect("value").parse().expect("address")
}

/// Starts the binary on a manifest directory (`extra` flags appended) and
/// waits for its `listening` line.
pub fn start(dir: &std::path::Path, extra: &[&str]) -> Destination {
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_weft-destination"))
            .args(["--dir", dir.to_str().unwrap(), "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args([
                "--control-plane-namespace",
                "weft-system",
                "--trust-domain",
                "example.org",
                "--poll-ms",
                "50",
            ])
            .args(extra)
            .env("WEFT_DESTINATION_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut startup_logs = Vec::new();
    let listening = loop {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no 'listening' log");
        startup_logs.push(line.clone());
        if line.contains("listening") {
            break line;
        }
    };
    Destination {
        addr: field(&listening, "addr"),
        admin: field(&listening, "admin"),
        proc: child,
        logs: rx,
        startup_logs,
    }
}

/// `GET /metrics` on the admin port.
pub fn metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the first metric line starting with `line_start`.
pub fn gauge(body: &str, line_start: &str) -> Option<f64> {
    body.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
