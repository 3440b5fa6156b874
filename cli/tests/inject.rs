//! `weft inject` as a real process on a multi-document manifest.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use support::*;

const APP: &str = r#"# an app with a bit of everything
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: shop
spec:
  template:
    metadata:
      annotations:
        weft.io/inject: disabled
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: migrate:1
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: shop
spec:
  serviceName: db
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
      annotations:
        config.weft.io/skip-inbound-ports: "5432"
    spec:
      containers:
      - name: db
        image: postgres:16
---
"#;

fn anchors(dir: &std::path::Path) -> String {
    let out = Command::new(weft())
        .args(["identity", "create-ca", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("trust-anchors.pem").to_str().unwrap().to_string()
}

fn inject(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(weft())
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A weft that fails before reading its input closes the pipe: its exit
    // status and stderr, not EPIPE here, are what the test should report.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
}

fn containers(pod_spec: &serde_yaml::Value) -> Vec<String> {
    let names = |key: &str| -> Vec<String> {
        pod_spec[key]
            .as_sequence()
            .map(|s| s.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut all = names("initContainers");
    all.extend(names("containers"));
    all
}

#[test]
fn injects_workloads_of_a_multi_document_manifest() {
    let dir = tmp_dir("inject");
    let anchors = anchors(&dir.join("ca"));
    let file = dir.join("app.yaml");
    std::fs::write(&file, APP).unwrap();

    let out = inject(
        &[
            file.to_str().unwrap(),
            "--trust-anchors",
            &anchors,
            "--proxy-image",
            "registry.local/weft-proxy:dev",
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let report = String::from_utf8(out.stderr).unwrap();
    let d = docs(&yaml);
    assert_eq!(d.len(), 5, "{yaml}");
    assert_eq!(d[0]["kind"], "Namespace");
    assert_eq!(d[2], docs(APP)[2], "the Service passes through unchanged");

    let web = &d[1]["spec"]["template"]["spec"];
    let names = containers(web);
    assert!(
        names.contains(&"weft-proxy-init".to_string()) && names.contains(&"weft-proxy".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"web".to_string()));
    assert!(yaml.contains("registry.local/weft-proxy:dev"));
    assert!(yaml.contains("BEGIN CERTIFICATE"), "the trust anchors reach the proxy env");

    let job = &d[3]["spec"]["template"]["spec"];
    assert_eq!(containers(job), vec!["migrate".to_string()], "disabled pods are left alone");
    assert!(containers(&d[4]["spec"]["template"]["spec"]).contains(&"weft-proxy".to_string()));
    assert!(report.contains("web") && report.contains("migrate") && report.contains("db"), "{report}");

    // Idempotent, and `-` reads standard input.
    let again =
        inject(&["-", "--trust-anchors", &anchors, "--proxy-image", "registry.local/weft-proxy:dev"], &yaml);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(docs(&String::from_utf8(again.stdout).unwrap()), d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kubernetes_version_below_1_29_gets_a_plain_sidecar() {
    let dir = tmp_dir("inject-old");
    let anchors = anchors(&dir.join("ca"));
    let where_is_proxy = |args: &[&str]| -> (bool, bool) {
        let mut all = vec!["-", "--trust-anchors", anchors.as_str()];
        all.extend_from_slice(args);
        let out = inject(&all, APP);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let d = docs(&String::from_utf8(out.stdout).unwrap());
        let web = &d[1]["spec"]["template"]["spec"];
        let has = |key: &str| {
            web[key].as_sequence().into_iter().flatten().any(|c| c["name"].as_str() == Some("weft-proxy"))
        };
        (has("initContainers"), has("containers"))
    };
    assert_eq!(where_is_proxy(&[]), (true, false), "native sidecar by default");
    assert_eq!(where_is_proxy(&["--kubernetes-version", "1.29"]), (true, false));
    assert_eq!(where_is_proxy(&["--kubernetes-version", "1.28"]), (false, true));
    assert_eq!(where_is_proxy(&["--kubernetes-version", "v1.28.3-gke.100"]), (false, true));

    let out = inject(&["-", "--trust-anchors", &anchors, "--kubernetes-version", "latest"], APP);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kubernetes-version") && err.contains("not a Kubernetes version"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cni_mode_adds_the_validator_not_proxy_init() {
    let dir = tmp_dir("inject-cni");
    let anchors = anchors(&dir.join("ca"));
    let out = inject(&["-", "--trust-anchors", &anchors, "--cni"], APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = docs(&String::from_utf8(out.stdout).unwrap());
    let web = &d[1]["spec"]["template"]["spec"];
    let names = containers(web);
    assert_eq!(names[..2], ["weft-network-validator".to_string(), "weft-proxy".to_string()], "{names:?}");
    assert!(!names.contains(&"weft-proxy-init".to_string()), "{names:?}");
    assert_eq!(web["initContainers"][0]["securityContext"]["runAsUser"].as_u64(), Some(2103));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_names_the_problem() {
    let dir = tmp_dir("inject-bad");
    let out = inject(&["-", "--trust-anchors", dir.join("missing.pem").to_str().unwrap()], APP);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--trust-anchors") && err.contains("missing.pem"), "{err}");

    let anchors = anchors(&dir.join("ca"));
    let out = inject(&["-", "--trust-anchors", &anchors], "kind: [unclosed\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input"));
    assert!(out.stdout.is_empty(), "nothing half-written to stdout");

    let out = inject(&["-", "--trust-anchors", &anchors, "--proxy-memory-limit", "lots"], APP);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proxy-memory-limit"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inbound_policy_flags_reach_the_proxy() {
    let dir = tmp_dir("inject-policy");
    let anchors = anchors(&dir.join("ca"));
    let proxy_env = |args: &[&str]| -> Vec<(String, String)> {
        let mut all = vec!["-", "--trust-anchors", anchors.as_str()];
        all.extend_from_slice(args);
        let out = inject(&all, APP);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let d = docs(&String::from_utf8(out.stdout).unwrap());
        let web = &d[1]["spec"]["template"]["spec"];
        let proxy = web["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some("weft-proxy"))
            .unwrap()
            .clone();
        proxy["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
            .collect()
    };
    let get = |env: &[(String, String)], name: &str| {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let env = proxy_env(&[]);
    assert_eq!(get(&env, "WEFT_PROXY_INBOUND_DEFAULT_POLICY"), "all-unauthenticated");
    assert_eq!(get(&env, "WEFT_PROXY_POLICY_WORKLOAD"), r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#);
    let env = proxy_env(&["--default-inbound-policy", "deny", "--cluster-networks", "10.42.0.0/16"]);
    assert_eq!(get(&env, "WEFT_PROXY_INBOUND_DEFAULT_POLICY"), "deny");
    assert_eq!(get(&env, "WEFT_PROXY_POLICY_CLUSTER_NETWORKS"), "10.42.0.0/16");

    let out = inject(&["-", "--trust-anchors", &anchors, "--default-inbound-policy", "allow"], APP);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--default-inbound-policy"));
    let out = inject(&["-", "--trust-anchors", &anchors, "--cluster-networks", "10.0.0.0/33"], APP);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster-networks"));
    let _ = std::fs::remove_dir_all(&dir);
}
