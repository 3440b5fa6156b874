//! Both address families: weft-proxy-init redirects IPv6 with ip6tables just
//! as it redirects IPv4, so the proxy must listen on both by default, fall
//! back to IPv4 alone on a host without IPv6, and bind exactly what an
//! operator lists. The default ports are fixed, so those tests run in a
//! namespace of their own (root only; elsewhere they say why they skip).

mod support;

use std::net::SocketAddr;

use support::{netns::*, *};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Why IPv6 loopback tests cannot run here, if they cannot.
fn no_ipv6_loopback() -> Option<String> {
    std::net::TcpListener::bind("[::1]:0")
        .err()
        .map(|e| format!("skipping: this host has no IPv6 loopback ([::1]: {e})"))
}

/// A request through the proxy's outbound listener at `proxy` in explicit
/// mode (as an HTTP proxy) to `url`: the body the app echoed.
async fn via_outbound(proxy: &str, url: &str) -> CurlOutput {
    curl(&["-x", &format!("http://{proxy}"), "-w", "\n%{http_code}", "--data-binary", proxy, url]).await
}

#[tokio::test]
async fn an_outbound_list_takes_explicit_http_on_both_loopbacks() {
    if let Some(reason) = no_ipv6_loopback() {
        return println!("{reason}");
    }
    let server = HttpServer::start().await;
    let port = free_port();
    let list = format!("127.0.0.1:{port},[::1]:{port}");
    let proxy = Proxy::builder().env("WEFT_PROXY_OUTBOUND_ADDR", &list).spawn().await;
    let url = format!("http://127.0.0.1:{}/both", server.addr.port());
    for listener in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let out = via_outbound(&listener, &url).await;
        assert_eq!(out.code, 0, "{listener}: {out:?}\n{}", proxy.stderr());
        assert_eq!(out.stdout, format!("{listener}\n200"), "{listener}: {out:?}");
    }
    assert_eq!(server.seen().len(), 2);
    assert!(proxy.stderr().contains(&format!("outbound={list}")), "proxy ready line:\n{}", proxy.stderr());

    // A request naming either listener would loop: refused, not forwarded.
    for own in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let out = via_outbound(&format!("127.0.0.1:{port}"), &format!("http://{own}/loop")).await;
        assert_eq!(out.http_code(), 502, "{own}: {out:?}");
    }
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn an_unconfigured_proxy_listens_on_both_families() {
    if skip() {
        return;
    }
    let ns = NetNs::new("dual");
    ns.run(|| async {
        let server = HttpServer::start().await;
        let proxy = ProxyBuilder::new().default_listeners().inbound_app(server.addr).spawn().await;
        let stderr = proxy.stderr();
        let ready = "outbound=127.0.0.1:4140,[::1]:4140 inbound=[::]:4143 admin=[::]:4191";
        assert!(stderr.contains(ready), "{stderr}");
        assert!(!stderr.contains("no IPv6"), "{stderr}");

        // The admin server answers on both families (the kubelet probes the
        // pod's primary IP, IPv6 on an IPv6-primary cluster), and an IPv4
        // loopback client, v4-mapped on the dual-stack socket, is still
        // loopback for the endpoints only the pod may use.
        for admin in [addr("127.0.0.1:4191"), addr("[::1]:4191")] {
            let rsp = admin_request(admin, "GET", "/ready", "").await.expect("admin /ready");
            assert_eq!(rsp.status, 200, "{admin}: {rsp:?}");
            let rsp = admin_request(admin, "GET", "/proxy-log-level", "").await.expect("admin log level");
            assert_eq!(rsp.status, 200, "{admin} is loopback: {rsp:?}");
        }
        let (status, out) = await_ready_in_this_namespace();
        assert!(status.success(), "weft-proxy await: {out}");

        let url = format!("http://127.0.0.1:{}/out", server.addr.port());
        for listener in ["127.0.0.1:4140", "[::1]:4140"] {
            let out = via_outbound(listener, &url).await;
            assert_eq!(out.code, 0, "{listener}: {out:?}\n{}", proxy.stderr());
            assert_eq!(out.stdout, format!("{listener}\n200"), "{listener}: {out:?}");
        }
        // One dual-stack inbound socket takes both families.
        for url in ["http://127.0.0.1:4143/in", "http://[::1]:4143/in"] {
            let out = curl(&["-w", "\n%{http_code}", "--data-binary", url, url]).await;
            assert_eq!(out.code, 0, "{url}: {out:?}\n{}", proxy.stderr());
            assert_eq!(out.stdout, format!("{url}\n200"), "{url}: {out:?}");
        }
        let m = proxy.wait_metric("request_total", &[("direction", "inbound")], 2.0).await;
        assert_eq!(m.get("request_total", &[("direction", "outbound")]), 2.0);
    });
}

/// `net.ipv6.conf.all.disable_ipv6=1`: no `::1`, so binding it fails with
/// EADDRNOTAVAIL (a wildcard `[::]` still binds, and still takes IPv4).
fn disable_ipv6(ns: &NetNs) {
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
}

#[test]
fn without_ipv6_the_defaults_fall_back_to_ipv4() {
    if skip() {
        return;
    }
    let ns = NetNs::new("v4only");
    disable_ipv6(&ns);
    ns.run(|| async {
        let server = HttpServer::start().await;
        let proxy = ProxyBuilder::new().default_listeners().spawn().await;
        let stderr = proxy.stderr();
        assert!(stderr.contains("no IPv6 on this host; listening on IPv4 only"), "{stderr}");
        assert!(stderr.contains("outbound=127.0.0.1:4140 inbound="), "{stderr}");
        // `[::]` still binds with IPv6 disabled (and then takes IPv4), so
        // the admin server is reachable on IPv4 either way; the readiness
        // wait above went through 127.0.0.1:4191.
        assert!(stderr.contains(" admin=[::]:4191") || stderr.contains(" admin=0.0.0.0:4191"), "{stderr}");
        // `weft-proxy await` finds it with the same (default) configuration.
        let (status, out) = await_ready_in_this_namespace();
        assert!(status.success(), "weft-proxy await: {out}");
        let url = format!("http://127.0.0.1:{}/v4", server.addr.port());
        let out = via_outbound("127.0.0.1:4140", &url).await;
        assert_eq!(out.stdout, "127.0.0.1:4140\n200", "{out:?}\n{}", proxy.stderr());
    });
}

#[test]
fn without_ipv6_an_explicit_ipv6_address_stops_start_up() {
    if skip() {
        return;
    }
    let ns = NetNs::new("v6gone");
    disable_ipv6(&ns);
    let wrapper = ns.exec_as(0);
    let words: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (status, stderr) = ProxyBuilder::new()
        .wrapper(&words)
        .env("WEFT_PROXY_OUTBOUND_ADDR", "127.0.0.1:4140,[::1]:4140")
        .run_to_exit();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot listen on outbound address [::1]:4140 (WEFT_PROXY_OUTBOUND_ADDR)"),
        "{stderr}"
    );
}

/// `weft-proxy await` with the default admin address, run from the calling
/// thread's namespace: its exit status and output.
fn await_ready_in_this_namespace() -> (std::process::ExitStatus, String) {
    let mut cmd = std::process::Command::new(proxy_bin());
    cmd.args(["await", "--timeout=10s"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("WEFT_PROXY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run weft-proxy await");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}
