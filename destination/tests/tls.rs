//! The real `weft-destination` binary's TLS settings: the `--identity-*`
//! group, and the warning when it serves plaintext off loopback. Serving
//! TLS with a certificate from a real weft-identity, and proxies and a
//! linkerd2-proxy-style client using it, are tested end to end in
//! tests/tests/control_plane_tls.rs.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::temp_dir;

/// The binary on an empty manifest directory, removed when dropped.
struct Destination(PathBuf);

impl Destination {
    fn new() -> Destination {
        Destination(temp_dir("tls"))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-destination"));
        cmd.arg("--dir").arg(&self.0).args(["--admin-addr", "127.0.0.1:0"]);
        cmd
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn identity_flags_come_as_a_group_and_bad_anchors_are_named() {
    let d = Destination::new();
    let destination = || d.command();
    let out =
        destination().args(["--addr", "127.0.0.1:0", "--identity-addr", "127.0.0.1:8080"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--identity-token-file") && stderr.contains("--trust-anchors"), "{stderr}");

    let out = destination()
        .args(["--addr", "127.0.0.1:0", "--identity-addr", "127.0.0.1:8080"])
        .args(["--identity-token-file", "/nonexistent/token", "--trust-anchors", "/nonexistent/anchors.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--trust-anchors") && stderr.contains("/nonexistent/anchors.pem"), "{stderr}");

    let out = destination()
        .args([
            "--addr",
            "127.0.0.1:0",
            "--identity-name",
            "identity.weft.serviceaccount.identity.weft.cluster.local",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "--identity-name without --identity-addr");
}

#[test]
fn plaintext_off_loopback_is_warned_about() {
    let d = Destination::new();
    let mut child = d
        .command()
        .args(["--addr", "0.0.0.0:0"])
        .env("WEFT_DESTINATION_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let warned = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("WARN") && line.contains("plaintext") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning about plaintext on 0.0.0.0:\n{}", seen.join("\n"));
}
