//! The `weft-identity` binary as a real process: flags, start-up errors,
//! Certify over TLS, and the admin endpoint's metrics and readiness.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tls::PrivateKey;

/// Kills the CA when the test ends, also when it panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ca {
    _child: KillOnDrop,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn command(pki: &TestPki, tokens: &std::path::Path) -> Command {
    let mut cmd = plain_command(pki, tokens);
    cmd.arg("--log-json");
    cmd
}

/// The CA with its default, human-readable log format.
fn plain_command(pki: &TestPki, tokens: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-identity"));
    cmd.env_clear()
        .arg("--trust-anchors")
        .arg(pki.dir.path("anchors.pem"))
        .arg("--issuer-cert")
        .arg(pki.dir.path("issuer.crt"))
        .arg("--issuer-key")
        .arg(pki.dir.path("issuer.key"))
        .arg("--token-file")
        .arg(tokens)
        .args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--reload-interval", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts the CA and reads the bound addresses from its start-up log line.
fn spawn(pki: &TestPki, tokens: &std::path::Path) -> Ca {
    let mut child = KillOnDrop(command(pki, tokens).spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("no start-up line from weft-identity");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == "serving Certify" {
            let addr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
            let admin = v["fields"]["admin_addr"].as_str().unwrap().parse().unwrap();
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return Ca { _child: child, addr, admin };
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut buf)).await.unwrap().unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serves_certify_metrics_and_readiness() {
    let pki = TestPki::new("proc");
    let tokens = write_tokens(&pki.dir);
    let ca = spawn(&pki, &tokens);

    let (status, body) = get(ca.admin, "/ready").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let server = weft_tls::IdentityName::new("identity", "weft", "weft", "cluster.local").unwrap();
    let mut client = client(ca.addr, &pki.anchors(), &server).await;
    let key = PrivateKey::generate().unwrap();
    certify(&mut client, request(&name("web"), &key, "web-token")).await.unwrap();
    let refused = certify(&mut client, request(&name("web"), &key, "bad-token")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let (status, metrics) = get(ca.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("identity_certificates_issued_total 1"), "{metrics}");
    assert!(metrics.contains("identity_certify_refusals_total{reason=\"invalid_token\"} 1"), "{metrics}");
    assert!(metrics.contains("identity_issuer_expiry_timestamp_seconds "), "{metrics}");
    assert_eq!(get(ca.admin, "/nope").await.0, 404);

    // The token file is re-read when it changes.
    atomic_write(&tokens, b"new-token emojivoto/web\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while certify(&mut client, request(&name("web"), &key, "new-token")).await.is_err() {
        assert!(Instant::now() < deadline, "token file not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn text_logs_carry_no_colour_codes_when_not_a_terminal() {
    let pki = TestPki::new("plainlog");
    let tokens = write_tokens(&pki.dir);
    let mut child = KillOnDrop(plain_command(&pki, &tokens).spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let serving = line.contains("serving Certify");
        lines.push(line);
        if serving {
            break;
        }
    }
    assert!(lines.last().is_some_and(|l| l.contains("serving Certify")), "{lines:#?}");
    assert!(lines.iter().all(|l| !l.contains('\x1b')), "escape codes in a pipe: {lines:#?}");
}

#[test]
fn bad_configuration_fails_with_a_message_naming_it() {
    let pki = TestPki::new("badcfg");
    let tokens = write_tokens(&pki.dir);

    let out = command(&pki, &tokens).arg("--cert-lifetime").arg("forever").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cert-lifetime"), "{err}");

    std::fs::remove_file(pki.dir.path("issuer.key")).unwrap();
    let out = command(&pki, &tokens).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("issuer.key"), "{err}");

    let out = command(&pki, &pki.dir.path("missing-tokens")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing-tokens"), "{err}");
}
