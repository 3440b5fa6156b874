//! `weft inject` offline: multi-document YAML in, injected YAML out.

mod common;

use common::*;
use serde::Deserialize;
use serde_json::Value;
use weft_injector::{inject_manifests, inject_manifests_report};

const APP: &str = r#"# the app
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: emojivoto
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: web
      containers:
        - name: web
          image: example.test/web:1
          ports:
            - containerPort: 8080
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: example.test/report:1
---
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec:
      serviceName: db
      selector: {matchLabels: {app: db}}
      template:
        metadata:
          labels: {app: db}
          annotations:
            weft.io/inject: disabled
        spec:
          containers:
            - {name: db, image: example.test/db:1}
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: agent}
    spec:
      selector: {matchLabels: {app: agent}}
      template:
        metadata:
          labels: {app: agent}
          annotations:
            config.weft.io/native-sidecar: "false"
        spec:
          containers:
            - {name: agent, image: example.test/agent:1}
  - apiVersion: v1
    kind: Pod
    metadata: {name: node-exporter}
    spec:
      hostNetwork: true
      containers:
        - {name: exporter, image: example.test/exporter:1}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 8080
---
"#;

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).expect("yaml")).expect("json"))
        .filter(|v| !v.is_null())
        .collect()
}

fn pod_template(v: &Value, pointer: &str) -> Value {
    v.pointer(pointer).expect("template").clone()
}

#[test]
fn injects_workloads_and_leaves_the_rest() {
    let report = inject_manifests_report(APP, &config()).expect("inject");
    let out = docs(&report.yaml);
    let input = docs(APP);
    assert_eq!(out.len(), 5);

    // Other kinds pass through unchanged.
    assert_eq!(out[0], input[0]);
    assert_eq!(out[4], input[4]);

    let deploy = pod_template(&out[1], "/spec/template");
    let proxy = assert_injected(&deploy, true);
    assert_eq!(env_value(&proxy, "WEFT_PROXY_INBOUND_PORTS").as_deref(), Some("8080"));
    // The rest of the Deployment is intact.
    assert_eq!(out[1]["spec"]["replicas"], 2);
    assert_eq!(out[1]["spec"]["selector"], input[1]["spec"]["selector"]);

    let cron = pod_template(&out[2], "/spec/jobTemplate/spec/template");
    assert_injected(&cron, true);

    let items = out[3]["items"].as_array().expect("items");
    assert_eq!(items[0], input[3]["items"][0], "disabled StatefulSet changed");
    let ds = pod_template(&items[1], "/spec/template");
    assert_injected(&ds, false);
    assert_eq!(items[2], input[3]["items"][2], "hostNetwork pod changed");

    assert!(report.lines.contains(&"Deployment/web: injected".to_string()), "{:?}", report.lines);
    assert!(report.lines.iter().any(|l| l.starts_with("StatefulSet/db: not injected")), "{:?}", report.lines);
    assert!(
        report.lines.iter().any(|l| l.starts_with("Pod/node-exporter: not injected")),
        "{:?}",
        report.lines
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    let once = inject_manifests(APP, &config()).expect("first");
    let twice = inject_manifests(&once, &config()).expect("second");
    assert_eq!(docs(&once), docs(&twice));
}

#[test]
fn control_plane_workloads_are_skipped() {
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: weft-destination, namespace: weft}\nspec:\n  template:\n    spec:\n      containers: [{name: d, image: x}]\n";
    let out = inject_manifests(yaml, &config()).expect("inject");
    assert_eq!(docs(&out), docs(yaml));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(inject_manifests("kind: [unclosed", &config()).is_err());
    let bad_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n";
    let err = inject_manifests(bad_pod, &config()).unwrap_err();
    assert!(err.to_string().contains("Pod/p"), "{err}");
    // Empty input is empty output.
    assert_eq!(inject_manifests("", &config()).expect("empty"), "");
}
