//! The real `weft-destination` binary serving `InboundServerPolicies` from a
//! directory of manifests, to a tonic client as a proxy would call it.

mod common;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    binary::{gauge, metrics, start},
    temp_dir, write,
};
use linkerd2_proxy_api::{
    inbound::{self as pb, inbound_server_policies_client::InboundServerPoliciesClient, proxy_protocol},
    meta,
};
use tonic::{transport::Channel, Code, Streaming};

const NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
  - name: web
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /ready, port: http}}
status: {phase: Running, podIP: 10.42.0.11}
"#;

const SERVER: &str = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-http, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  port: http
  proxyProtocol: HTTP/1
  accessPolicy: deny
"#;

const AUTHZ: &str = r#"
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: clients, namespace: demo}
spec:
  identities: ["*.demo.serviceaccount.identity.weft-system.example.org"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-clients, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: clients}
"#;

async fn client(addr: SocketAddr) -> InboundServerPoliciesClient<Channel> {
    InboundServerPoliciesClient::connect(format!("http://{addr}")).await.unwrap()
}

fn spec(workload: &str, port: u32) -> pb::PortSpec {
    pb::PortSpec { workload: workload.into(), port }
}

const WEB: &str = r#"{"ns":"demo","pod":"web-0"}"#;

async fn next(s: &mut Streaming<pb::Server>, what: &str) -> pb::Server {
    match tokio::time::timeout(Duration::from_secs(5), s.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(other) => panic!("{what}: stream ended: {other:?}"),
        Err(_) => panic!("{what}: nothing within 5s"),
    }
}

fn authz_names(s: &pb::Server) -> Vec<String> {
    s.authorizations.iter().map(|a| a.labels.get("name").cloned().unwrap_or_default()).collect()
}

fn routes(s: &pb::Server) -> Vec<String> {
    let routes = match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(proxy_protocol::Kind::Http1(h)) => &h.routes,
        Some(proxy_protocol::Kind::Detect(d)) => &d.http_routes,
        other => panic!("no HTTP routes in {other:?}"),
    };
    routes
        .iter()
        .map(|r| match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(meta::metadata::Kind::Default(n)) => n.clone(),
            Some(meta::metadata::Kind::Resource(r)) => r.name.clone(),
            None => String::new(),
        })
        .collect()
}

#[tokio::test]
async fn get_port_and_watch_port_follow_the_manifests() {
    let dir = temp_dir("policy");
    write(&dir.join("ns.yaml"), NAMESPACE);
    write(&dir.join("pod.yaml"), POD);
    write(&dir.join("server.yaml"), SERVER);
    let d = start(
        &dir,
        &["--default-inbound-policy", "cluster-authenticated", "--cluster-networks", "10.0.0.0/8"],
    );
    let mut c = client(d.addr).await;

    // GetPort: the Server, its deny access policy (no authorization), the
    // default route and the kubelet's probe route.
    let first = c.get_port(spec(WEB, 8080)).await.expect("GetPort").into_inner();
    assert_eq!(first.labels.get("kind").map(String::as_str), Some("server"));
    assert_eq!(first.labels.get("name").map(String::as_str), Some("web-http"));
    assert!(first.authorizations.is_empty(), "{:?}", first.authorizations);
    assert_eq!(routes(&first), ["default", "probe"]);
    // The older `ns:pod` form names the same pod.
    assert_eq!(c.get_port(spec("demo:web-0", 8080)).await.expect("ns:pod").into_inner(), first);

    // A port no Server covers: the flag's default policy on the flag's
    // cluster networks.
    let uncovered = c.get_port(spec(WEB, 9000)).await.expect("uncovered").into_inner();
    assert_eq!(uncovered.labels.get("name").map(String::as_str), Some("cluster-authenticated"));
    assert_eq!(authz_names(&uncovered), ["cluster-authenticated"]);
    assert_eq!(uncovered.authorizations[0].networks.len(), 1);

    // WatchPort: the same answer at once ...
    let mut watch = c.watch_port(spec(WEB, 8080)).await.expect("WatchPort").into_inner();
    assert_eq!(next(&mut watch, "first").await, first);
    let body = tokio::task::spawn_blocking(move || metrics(d.admin)).await.unwrap();
    assert_eq!(gauge(&body, "destination_streams{rpc=\"watch_port\"}"), Some(1.0), "{body}");

    // ... then once per change that changes it: a new AuthorizationPolicy.
    write(&dir.join("authz.yaml"), AUTHZ);
    let updated = next(&mut watch, "after the AuthorizationPolicy").await;
    assert_eq!(authz_names(&updated), ["web-clients"]);
    // A change elsewhere in the index (another pod) sends nothing.
    write(&dir.join("other.yaml"), &POD.replace("web-0", "web-1").replace("10.42.0.11", "10.42.0.12"));
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(800), watch.message()).await {
        panic!("expected no message after an unrelated change, got {m:?}");
    }
    // A policy naming a missing authentication authorizes nobody: the
    // answer is unchanged (nothing sent) and the log says why.
    write(
        &dir.join("dangling.yaml"),
        &AUTHZ
            .split("---")
            .nth(1)
            .unwrap()
            .replace("web-clients", "dangling")
            .replace("name: clients", "name: gone"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line =
            d.logs.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no warning");
        if line.contains("authorizes nobody") && line.contains("demo/dangling") && line.contains("demo/gone")
        {
            break;
        }
    }
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), watch.message()).await {
        panic!("expected no message for a policy that authorizes nobody, got {m:?}");
    }
    // The Server's protocol changes: sent again.
    write(&dir.join("server.yaml"), &SERVER.replace("HTTP/1", "opaque"));
    let opaque = next(&mut watch, "after the protocol change").await;
    assert!(matches!(opaque.protocol.and_then(|p| p.kind), Some(proxy_protocol::Kind::Opaque(_))));

    // SIGTERM ends open streams, so the server's shutdown is not held up.
    let pid = d.proc.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    match tokio::time::timeout(Duration::from_secs(5), watch.message()).await {
        Ok(Ok(None)) | Ok(Err(_)) => {}
        other => panic!("stream still open after SIGTERM: {other:?}"),
    }
    drop(d.logs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_requests_are_refused_and_never_kill_the_server() {
    let dir = temp_dir("policy-bad");
    write(&dir.join("pod.yaml"), POD);
    let d = start(&dir, &[]);
    let mut c = client(d.addr).await;

    for rpc in ["GetPort", "WatchPort"] {
        let call = |c: &mut InboundServerPoliciesClient<Channel>, s: pb::PortSpec| {
            let mut c = c.clone();
            async move {
                match rpc {
                    "GetPort" => c.get_port(s).await.map(|_| ()),
                    _ => c.watch_port(s).await.map(|_| ()),
                }
            }
        };
        let err = call(&mut c, spec(r#"{"ns":"demo","pod":"nope"}"#, 8080)).await.expect_err("unknown pod");
        assert_eq!(err.code(), Code::NotFound, "{rpc}: {err:?}");
        assert!(err.message().contains("demo/nope"), "{rpc}: {}", err.message());

        let err = call(&mut c, spec("web-0", 8080)).await.expect_err("no namespace");
        assert_eq!(err.code(), Code::InvalidArgument, "{rpc}: {err:?}");
        assert!(err.message().contains("NAMESPACE:NAME"), "{rpc}: {}", err.message());
        let err = call(&mut c, spec(WEB, 0)).await.expect_err("port 0");
        assert_eq!(err.code(), Code::InvalidArgument, "{rpc}: {err:?}");
        let err = call(&mut c, spec(WEB, 70_000)).await.expect_err("port 70000");
        assert_eq!(err.code(), Code::InvalidArgument, "{rpc}: {err:?}");

        let long = "x".repeat(100_000);
        let garbage = [
            "",
            "{",
            "{}",
            r#"{"ns":1,"pod":[]}"#,
            r#"{"ns":"demo","external_workload":"vm-0"}"#,
            "\u{0}\u{1}:\u{ff}",
            "../..:/etc/passwd",
            long.as_str(),
        ];
        for w in garbage {
            let err = call(&mut c, spec(w, 8080)).await.expect_err("garbage");
            assert_eq!(err.code(), Code::InvalidArgument, "{rpc} {:?}: {err:?}", &w[..w.len().min(40)]);
        }
    }
    // Still serving, and still alive.
    let ok = c.get_port(spec(WEB, 8080)).await.expect("after garbage").into_inner();
    assert_eq!(ok.labels.get("name").map(String::as_str), Some("all-unauthenticated"));
    let mut proc = d.proc;
    assert!(proc.0.try_wait().unwrap().is_none(), "the server exited");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_are_startup_errors() {
    for (flag, value, needle) in [
        ("--default-inbound-policy", "allow-everything", "allow-everything"),
        ("--cluster-networks", "10.0.0.0/8,not-a-cidr", "not-a-cidr"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weft-destination"))
            .args(["--dir", "/", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle) && stderr.contains(flag), "{stderr}");
    }
}
