//! `weft demo` as a user runs it: it starts the whole mesh, serves split
//! traffic through real proxies, and leaves no process behind, whether it
//! stops by itself (--duration) or on SIGINT.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn demo(port_base: u16, duration: &str) -> Proc {
    // The sibling binaries must sit next to `weft`.
    for bin in ["weft-proxy", "weft-identity", "weft-destination"] {
        sibling(bin);
    }
    let mut cmd = Command::new(weft());
    cmd.args(["demo", "--port-base", &port_base.to_string(), "--rps", "80", "--duration", duration]);
    Proc::spawn("demo", cmd)
}

fn pids(output: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in output.lines().filter(|l| l.contains("pid")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            if matches!(w[0], "pid" | "app" | "proxy") {
                if let Ok(p @ 1..) = w[1].parse::<u32>() {
                    pids.push(p);
                }
            }
        }
    }
    pids
}

fn wait_exit(p: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "demo did not exit:\n{}", p.output());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn requests(output: &str, name: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(name) && l.contains("requests="))
        .unwrap_or_else(|| panic!("no totals for {name}:\n{output}"));
    line.split_whitespace().find_map(|w| w.strip_prefix("requests=")).unwrap().parse().unwrap()
}

fn assert_all_gone(pids: &[u32], output: &str) {
    assert_eq!(pids.len(), 9, "identity, destination, 3 apps and 4 proxies: {pids:?}\n{output}");
    for pid in pids {
        // Reaped children leave no /proc entry (not even a zombie).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} still exists\n{output}");
    }
}

fn port_base(seed: u16) -> u16 {
    // Below the ephemeral range, away from other tests' random ports.
    let slot = (std::process::id() + u32::from(seed) * 137) % 360;
    12_000 + slot as u16 * 50
}

#[test]
fn demo_serves_split_traffic_and_leaves_nothing_behind() {
    let mut p = demo(port_base(0), "14s");
    let status = wait_exit(&mut p, Duration::from_secs(90));
    let out = p.output();
    assert!(status.success(), "{out}");
    assert!(out.contains("weft tap --addr 127.0.0.1:"), "{out}");
    assert!(out.contains("WORKLOAD") && out.contains("LATENCY_P99"), "{out}");

    let (v1, v2, web) = (requests(&out, "backend-v1"), requests(&out, "backend-v2"), requests(&out, "web"));
    assert!(web >= 300.0, "web served {web}\n{out}");
    assert!(v1 > 0.0 && v2 > 0.0, "both versions get traffic: v1 {v1} v2 {v2}\n{out}");
    let share = v2 / (v1 + v2);
    assert!((0.04..=0.18).contains(&share), "v2 share {share:.3} is not ~10%\n{out}");
    assert_all_gone(&pids(&out), &out);
}

#[test]
fn sigint_stops_everything() {
    let base = port_base(1);
    let mut p = demo(base, "5m");
    p.wait_output("WORKLOAD", 3, Duration::from_secs(60));

    // examples/demo/policy.yaml is enforced: backend-v1's proxy admits web
    // (the traffic above) and refuses anyone else, here a plaintext client
    // at its inbound port.
    let (backend_inbound, backend_admin) =
        (SocketAddr::from(([127, 0, 0, 1], base + 31)), SocketAddr::from(([127, 0, 0, 1], base + 32)));
    let (status, body) = request(backend_inbound, "GET", "/", "backend.demo.svc.cluster.local");
    assert_eq!(status, 403, "an unauthorized client is refused: {body}\n{}", p.output());
    let (_, metrics) = request(backend_admin, "GET", "/metrics", "localhost");
    let admitted = metrics.lines().any(|l| {
        l.starts_with("inbound_http_authz_allow_total{")
            && l.contains(r#"srv_name="backend-http""#)
            && l.contains(r#"authz_name="backend-clients""#)
            && l.contains(r#"client_id="web.demo.serviceaccount.identity.weft.cluster.local""#)
    });
    assert!(admitted, "web's requests admitted by backend-clients:\n{metrics}");
    let pids_before = pids(&p.output());
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGINT);
    }
    let status = wait_exit(&mut p, Duration::from_secs(20));
    let out = p.output();
    assert!(status.success(), "{out}");
    assert!(out.contains("every process of the demo has exited"), "{out}");
    assert_all_gone(&pids_before, &out);
}

#[test]
fn missing_sibling_binaries_are_named() {
    let dir = tmp_dir("lonely");
    let lonely = dir.join("weft");
    std::fs::copy(weft(), &lonely).unwrap();
    let out =
        Command::new(&lonely).args(["demo", "--duration", "1s"]).stdout(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("weft-proxy not found") && err.contains("cargo build --release"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
