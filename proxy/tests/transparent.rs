//! Transparent mode, as in a pod: network namespaces, iptables REDIRECT
//! rules excluding the proxy's UID, the proxy running as that UID, and
//! SO_ORIGINAL_DST telling it where each connection was going. Needs root
//! (CI is root); elsewhere each test says why it is skipped.

mod support;

use std::net::SocketAddr;

use support::{netns::*, *};

const PROXY_UID: u32 = 2102;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn outbound_redirect_http_and_opaque_over_ipv4_and_ipv6() {
    if skip() {
        return;
    }
    let ns = NetNs::new("out");
    for ipt in ["iptables", "ip6tables"] {
        for port in ["8080", "9090"] {
            ns.redirect_outbound(ipt, port, PROXY_UID);
        }
    }
    let wrapper = ns.exec_as(PROXY_UID);
    ns.run(move || async move {
        let http = HttpServer::start_on(addr("[::]:8080")).await;
        let echo = TcpServer::start(addr("[::]:9090"), None).await;
        let words: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let proxy = ProxyBuilder::new()
            .wrapper(&words)
            .fixed_addrs(addr("[::]:4140"), addr("0.0.0.0:4143"), addr("127.0.0.1:4191"))
            .spawn()
            .await;

        // The app just dials its server; iptables sends it to the proxy.
        for url in ["http://127.0.0.1:8080/v4", "http://[::1]:8080/v6"] {
            // A Host the proxy could not resolve: in transparent mode it must
            // route by the original destination, not by Host.
            let host = "Host: web.svc.example:8080";
            let out = curl(&["-w", "\n%{http_code}", "-H", host, "--data-binary", "transparent", url]).await;
            assert_eq!(out.code, 0, "{url}: {out:?}\n{}", proxy.stderr());
            assert_eq!(out.stdout, "transparent\n200", "{url}: {out:?}");
        }
        let seen = http.seen();
        assert_eq!(seen.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(), ["/v4", "/v6"]);
        assert!(seen.iter().all(|s| s.header("host") == Some("web.svc.example:8080")));
        let m = proxy.wait_metric("request_total", &[("direction", "outbound")], 2.0).await;
        assert_eq!(m.get("response_total", &[("direction", "outbound"), ("status_code", "200")]), 2.0);

        for dst in ["127.0.0.1:9090", "[::1]:9090"] {
            let data: Vec<u8> = b"\x00opaque ".iter().copied().cycle().take(100_000).collect();
            let back = echo_roundtrip(addr(dst), &data).await;
            assert!(back == data, "{dst}: echo differs");
        }
        // 2 HTTP + 2 opaque client connections went through the proxy, and
        // it dialed the servers itself.
        let src = [("direction", "outbound"), ("peer", "src")];
        let m = proxy.wait_metric("tcp_close_total", &src, 4.0).await;
        assert_eq!(m.get("tcp_open_total", &src), 4.0, "{}", m.0);
        assert!(m.get("tcp_read_bytes_total", &src) >= 200_000.0);
        assert_eq!(echo.peers().len(), 2);
    });
}

#[test]
fn inbound_redirect_reaches_an_app_on_loopback() {
    if skip() {
        return;
    }
    let pod = NetNs::new("pod");
    let client = NetNs::new("cli");
    pod.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", &client.name]);
    pod.exec(&["ip", "addr", "add", "10.250.0.1/24", "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    client.exec(&["ip", "addr", "add", "10.250.0.2/24", "dev", "peer0"]);
    client.exec(&["ip", "link", "set", "peer0", "up"]);
    for port in ["8080", "9090"] {
        pod.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            "eth0",
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "REDIRECT",
            "--to-ports",
            "4143",
        ]);
    }
    let wrapper = pod.exec_as(PROXY_UID);
    let client_ns = client.name.clone();
    pod.run(move || async move {
        // The app listens on loopback only: without the proxy no one outside
        // the pod could reach it.
        let http = HttpServer::start_on(addr("127.0.0.1:8080")).await;
        let echo = TcpServer::start(addr("127.0.0.1:9090"), None).await;
        let words: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let proxy = ProxyBuilder::new()
            .wrapper(&words)
            .fixed_addrs(addr("127.0.0.1:4140"), addr("0.0.0.0:4143"), addr("127.0.0.1:4191"))
            .spawn()
            .await;

        let from_outside = tokio::task::spawn_blocking(move || {
            run_in(&client_ns, || async {
                let out = curl(&[
                    "-w",
                    "\n%{http_code}",
                    "-H",
                    "l5d-client-id: spoofed",
                    "http://10.250.0.1:8080/in",
                ])
                .await;
                let data: Vec<u8> = (0..=255u8).cycle().take(50_000).collect();
                let back = echo_roundtrip(addr("10.250.0.1:9090"), &data).await;
                (out, back == data)
            })
        });
        let (out, echoed) = within("client in the other namespace", from_outside).await.unwrap();
        assert_eq!(out.code, 0, "{out:?}\n{}", proxy.stderr());
        assert!(out.stdout.ends_with("\n200"), "{out:?}");
        assert!(echoed, "opaque echo differs");

        let seen = http.last();
        assert_eq!(seen.uri, "/in");
        assert_eq!(seen.header("host"), Some("10.250.0.1:8080"));
        assert!(seen.header("l5d-client-id").is_none_or(|v| v != "spoofed"), "{:?}", seen.headers);
        assert!(seen.peer.ip().is_loopback(), "the app saw {} rather than the proxy", seen.peer);
        assert!(echo.peers().iter().all(|p| p.ip().is_loopback()));
        let m = proxy.wait_metric("request_total", &[("direction", "inbound")], 1.0).await;
        assert_eq!(m.get("tcp_open_total", &[("direction", "inbound"), ("peer", "src")]), 2.0, "{}", m.0);
    });
}
