//! The real `weft-destination` binary with the file backend: flags, logs,
//! admin endpoints and a gRPC client.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use common::*;

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[tokio::test]
async fn the_binary_serves_a_directory_and_reports_bad_input() {
    let dir = temp_dir("binary");
    write(
        &dir.join("web.yaml"),
        "apiVersion: weft.io/v1alpha1\nkind: StaticEndpoints\nmetadata: {name: web, namespace: demo}\nspec:\n  ports:\n  - port: 80\n    endpoints:\n    - {address: \"127.0.0.1:18080\", serviceAccount: web}\n",
    );
    write(&dir.join("broken.yaml"), "kind: [this is not yaml\n");
    write(
        &dir.join("sp.yaml"),
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.demo.svc.cluster.local, namespace: demo}\nspec:\n  routes:\n  - name: bad-regex\n    condition: {pathRegex: \"/x/(\"}\n",
    );

    let binary::Destination { proc: _proc, addr, admin, logs: rx, startup_logs: mut logs } =
        binary::start(&dir, &[]);

    let mut c = client(addr).await;
    let mut s = get(&mut c, "web.demo.svc.cluster.local:80").await;
    assert_eq!(
        u(next(&mut s, Duration::from_secs(5), "binary get").await),
        U::Add(vec![meshed("127.0.0.1:18080", "web.demo.serviceaccount.identity.weft-system.example.org")])
    );
    let mut s = get(&mut c, "unknown.demo.svc.cluster.local:80").await;
    assert_eq!(u(next(&mut s, Duration::from_secs(5), "unknown").await), U::NoEndpoints(false));

    let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/ready")).await.unwrap();
    assert_eq!(status, 200);
    let (status, body) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("destination_streams"), "{body}");
    assert!(body.contains("destination_manifest_errors_total"), "{body}");

    // The malformed file and the invalid regex were both reported, by name.
    logs.extend(rx.try_iter());
    let all = logs.join("\n");
    assert!(
        logs.iter()
            .any(|l| l.contains("bad manifest") && l.contains("broken.yaml") && l.contains("invalid YAML")),
        "{all}"
    );
    assert!(
        logs.iter().any(|l| l.contains("route rejected")
            && l.contains("bad-regex")
            && l.contains("invalid pathRegex")),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_directory_is_a_clear_startup_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-destination"))
        .args(["--dir", "/nonexistent/weft", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/weft") && stderr.contains("does not exist"), "{stderr}");
}
