//! Pods set up in CNI mode: the `loopback`, `bridge` and `host-local` CNI
//! plugins give each pod its network and `weft-cni`, chained after them,
//! writes the redirect rules (no weft-proxy-init runs). Two such pods talk
//! through both proxies over mTLS, as in proxy-init mode; a pod that is not
//! meshed gets no rules. The validator init container (`weft-proxy
//! validate`, UID 2103) passes in the meshed pods before their proxies start,
//! and fails, naming weft-cni, in the pod without rules. Root and containernetworking-plugins only:
//! elsewhere the test prints why it is skipped and passes.

use weft_e2e::pod::*;
use weft_e2e::{within, TestServer, STEP};

const NS: &str = "demo";

fn nat_rules(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The validator in `pod`, to completion.
async fn validate(pod: &Pod, extra: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::from(pod.validator_command(extra));
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(STEP, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("weft-proxy validate in {}: {e}", pod.name)),
        Err(_) => panic!("weft-proxy validate in {} still running after {STEP:?}", pod.name),
    }
}

#[tokio::test]
async fn cni_pods_talk_over_mtls() {
    if skip() {
        return;
    }
    if let Some(reason) = cni_unavailable() {
        println!("{reason}");
        return;
    }
    within(STEP * 2, "two CNI-mode pods over mTLS", async {
        let mesh = Mesh::start("pods-cni", &[(NS, "client"), (NS, "server")]).await;
        let server = mesh.pod(PodSpec::new("server").cni().skip_inbound_ports("2222")).await;
        let client = mesh.pod(PodSpec::new("client").cni()).await;
        let plain = mesh.pod(PodSpec::new("plain").cni().meshed(false)).await;

        // The bridge and host-local gave each pod its addresses; weft-cni
        // passed their result on and wrote the rules, not weft-proxy-init.
        for pod in [&server, &client, &plain] {
            let result = pod.cni_result.as_ref().expect("CNI result");
            let ips = result["ips"].to_string();
            assert!(ips.contains(&format!("\"{}/24\"", pod.ip)), "{}: {result}", pod.name);
            assert!(ips.contains(&format!("\"{}/64\"", pod.ip6)), "{}: {result}", pod.name);
            assert!(pod.proxy_init_output.is_empty());
        }
        let nat = nat_rules(&server.exec("iptables-save", &["-t", "nat"]).await);
        assert!(
            nat.contains("-j WEFT_PROXY_INIT_REDIRECT") && nat.contains("--dports 2222,4190,4191"),
            "{nat}"
        );
        let nat6 = nat_rules(&client.exec("ip6tables-save", &["-t", "nat"]).await);
        assert!(nat6.contains("-j WEFT_PROXY_INIT_OUTPUT"), "{nat6}");
        for tool in ["iptables-save", "ip6tables-save"] {
            let nat = nat_rules(&plain.exec(tool, &["-t", "nat"]).await);
            assert!(!nat.contains("WEFT_PROXY_INIT"), "unmeshed pod got rules: {nat}");
        }

        // The validator init container ran in each meshed pod, as UID 2103
        // before its proxy, and found its connections redirected, IPv4 and
        // IPv6 (the pods are dual-stack).
        for pod in [&server, &client] {
            for arrival in
                ["(192.0.2.1:4149 arrived at 127.0.0.1:4140)", "([2001:db8::1]:4149 arrived at [::1]:4140)"]
            {
                assert!(pod.validator_output.contains(arrival), "{}: {}", pod.name, pod.validator_output);
            }
        }
        // Where weft-cni wrote no rules, it fails the pod and says why.
        let out = validate(&plain, &["--timeout=2s"]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        println!("validator without rules: {err}");
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("outbound TCP is not redirected to the proxy: connecting to 192.0.2.1:4149"),
            "{err}"
        );
        assert!(err.contains("the weft-cni plugin did not set up this pod's redirect rules"), "{err}");
        // With the proxy on its port, it cannot listen and says so.
        let out = validate(&client, &[]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("cannot listen on 127.0.0.1:4140"), "{err}");

        // The client app dials the server pod's IP; both proxies carry it
        // over mTLS and the server app sees the client's identity.
        let web = server.run(async { TestServer::start("server").await }).await;
        let url = format!("http://{}/hello", server.addr(web.addr.port()));
        let (code, body, status) = client.curl(&[&url]).await;
        assert_eq!((code, status.as_str()), (0, "200"), "{body}");
        let seen: serde_json::Value = serde_json::from_str(&body).expect("echo body");
        assert_eq!(seen["headers"]["l5d-client-id"].as_str(), Some(client.identity().as_str()), "{body}");
        client
            .wait_metric("request_total", &[("direction", "outbound"), ("tls", "true")], |v| v >= 1.0)
            .await;
        let inbound = [("direction", "inbound"), ("tls", "true"), ("client_id", &client.identity())];
        server.wait_metric("request_total", &inbound, |v| v >= 1.0).await;
    })
    .await;
}
