//! The `weft-injector` binary as deployed: flags, certificate files, a
//! kubeconfig pointing at a replaying API server, readiness, one admission.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake_api::start_server_with_version;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;

/// Kills the injector when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn get_status(addr: &str, path: &str) -> Option<StatusCode> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", "x").body(Full::new(Bytes::new())).ok()?;
    Some(s.send_request(req).await.ok()?.status())
}

#[tokio::test]
async fn binary_serves_admission_reviews() {
    // The replayed server answers 404 to GET /version: the injector keeps
    // native sidecars.
    let resp = admit_with(None, fixture("admissionreview-pod-create-replicaset.json"), "native").await;
    assert!(resp["response"].get("warnings").is_none(), "{resp}");
}

#[tokio::test]
async fn binary_in_cni_mode_adds_the_validator() {
    // WEFT_INJECTOR_CNI=true, as the chart sets --cni: the validator, no
    // weft-proxy-init (assert_injected checks which, and the validator).
    let resp = admit_with(None, fixture("admissionreview-pod-create-replicaset.json"), "cni").await;
    let patch = response_patch(&resp).expect("patch");
    let text = serde_json::to_string(&patch).expect("patch");
    assert!(text.contains("weft-network-validator") && !text.contains("weft-proxy-init"), "{text}");
}

#[tokio::test]
async fn binary_injects_plain_sidecars_below_kubernetes_1_29() {
    let mut version = fixture("version.json");
    version["minor"] = "28".into();
    version["gitVersion"] = "v1.28.3-gke.100".into();
    let mut review = fixture("admissionreview-pod-create-replicaset.json");
    review["request"]["object"]["metadata"]["annotations"]["config.weft.io/native-sidecar"] = "true".into();
    let resp = admit_with(Some(version), review, "plain").await;
    let warnings = resp["response"]["warnings"].to_string();
    assert!(warnings.contains("native-sidecar=true ignored: Kubernetes 1.28.3"), "{resp}");
}

/// Runs the injector against a replaying API server whose `GET /version`
/// answers `version`, sends it `review` and returns its answer, checking the
/// proxy was injected (`native` or `plain`, or `cni`: native, in CNI mode;
/// the others run with `WEFT_INJECTOR_CNI=false`).
async fn admit_with(version: Option<Value>, review: Value, how: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("weft-injector-bin-{}-{how}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    std::fs::write(dir.join("tls.crt"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).expect("key");
    std::fs::write(dir.join("ca.crt"), ck.cert.pem()).expect("anchors");
    let (_api, url) = start_server_with_version(fixture("namespaces.list.json"), version).await;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\ncurrent-context: c\n"
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig).expect("kubeconfig");

    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_weft-injector"))
        .args(["--listen-addr", &listen, "--admin-addr", &admin])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .arg("--trust-anchors")
        .arg(dir.join("ca.crt"))
        .args(["--proxy-image", "example.test/weft-proxy:v1"])
        // As the chart passes proxy.defaultInboundPolicy and clusterNetworks.
        .args(["--default-inbound-policy=deny", "--cluster-networks=10.42.0.0/16,fd00:10::/56"])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("WEFT_INJECTOR_CNI", if how == "cni" { "true" } else { "false" })
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft-injector");
    let _running = Running(child);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get_status(&admin, "/ready").await == Some(StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "weft-injector never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_status(&admin, "/live").await, Some(StatusCode::OK));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let client =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(&listen).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("http");
    tokio::spawn(conn);
    let req = Request::post("/inject?timeout=5s")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let resp: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(resp["response"]["uid"], review["request"]["uid"]);
    let ops = response_patch(&resp).expect("patch");
    let injected = apply(&review["request"]["object"], &ops);
    let proxy = assert_injected(&injected, how != "plain");
    assert_eq!(proxy["image"], "example.test/weft-proxy:v1");
    // The trust anchors file reached the proxy's environment.
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_IDENTITY_TRUST_ANCHORS").as_deref(),
        Some(ck.cert.pem().as_str())
    );
    assert_eq!(env_value(&proxy, "WEFT_PROXY_INBOUND_DEFAULT_POLICY").as_deref(), Some("deny"));
    assert_eq!(
        env_value(&proxy, "WEFT_PROXY_POLICY_CLUSTER_NETWORKS").as_deref(),
        Some("10.42.0.0/16,fd00:10::/56")
    );
    let _ = std::fs::remove_dir_all(&dir);
    resp
}

#[test]
fn binary_refuses_a_bad_default_policy_or_cluster_network() {
    for (flag, needle) in [
        ("--default-inbound-policy=allow", "--default-inbound-policy"),
        ("--cluster-networks=10.0.0.0/33", "--cluster-networks"),
    ] {
        let dir = std::env::temp_dir().join(format!("weft-injector-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("ca.crt"), TRUST_ANCHORS).expect("anchors");
        let out = Command::new(env!("CARGO_BIN_EXE_weft-injector"))
            .args(["--tls-cert", "/nonexistent/tls.crt", "--tls-key", "/nonexistent/tls.key"])
            .arg("--trust-anchors")
            .arg(dir.join("ca.crt"))
            .arg(flag)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run weft-injector");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!out.status.success(), "{flag} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{flag}: {err}");
    }
}
