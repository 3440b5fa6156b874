//! `weft authz` as a real process against the stub API server, serving the
//! emojivoto policy resources a kube-apiserver v1.32 sent
//! (tests/fixtures/kubernetes): Servers web-http (HTTP/1, deny) and
//! voting-prom (port 8801), the HTTPRoute web-api and its
//! AuthorizationPolicy, the Namespace-wide emojivoto-cluster-network, and
//! the rate limit web-rl. Deployments are not in the fixtures; the ones
//! here have the API's shape.

mod support;

use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use support::apiserver::{Answer, ApiServer, State};
use support::{tmp_dir, weft};

const NS: &str = "emojivoto";

fn fixture(name: &str) -> Value {
    let path = format!("{}/../tests/fixtures/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn deployment(name: &str, selector: Value) -> Value {
    json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"matchLabels": selector}, "template": {"metadata": {"labels": selector}}},
    })
}

fn namespace(annotations: Value) -> Value {
    let mut ns = fixture("namespaces.list.json")["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["metadata"]["name"] == NS)
        .unwrap()
        .clone();
    ns["kind"] = json!("Namespace");
    ns["apiVersion"] = json!("v1");
    for (k, v) in annotations.as_object().unwrap() {
        ns["metadata"]["annotations"][k] = v.clone();
    }
    ns
}

/// The cluster: emojivoto's pods and deployments; with `policy`, the
/// policy.linkerd.io and Gateway API resources too.
fn apiserver(policy: bool, ns_annotations: Value) -> ApiServer {
    apiserver_with_pods(policy, ns_annotations, fixture("pods-emojivoto.list.json"))
}

fn apiserver_with_pods(policy: bool, ns_annotations: Value, pods: Value) -> ApiServer {
    let api = ApiServer::start(State::default());
    api.set(&format!("/api/v1/namespaces/{NS}/pods"), Answer::json(200, &pods));
    for pod in pods["items"].as_array().unwrap() {
        let mut pod = pod.clone();
        pod["kind"] = json!("Pod");
        pod["apiVersion"] = json!("v1");
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        api.set(&format!("/api/v1/namespaces/{NS}/pods/{name}"), Answer::json(200, &pod));
    }
    api.set(&format!("/api/v1/namespaces/{NS}"), Answer::json(200, &namespace(ns_annotations)));
    api.set(
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/web"),
        Answer::json(200, &deployment("web", json!({"app": "web", "version": "v1"}))),
    );
    api.set(
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/voting"),
        Answer::json(200, &deployment("voting", json!({"app": "voting"}))),
    );
    if policy {
        for (path, file) in [
            ("policy.linkerd.io/v1beta3", "servers.policy.linkerd.io-emojivoto.list.json"),
            ("policy.linkerd.io/v1alpha1", "authorizationpolicies.policy.linkerd.io-emojivoto.list.json"),
            ("policy.linkerd.io/v1alpha1", "meshtlsauthentications.policy.linkerd.io-emojivoto.list.json"),
            ("policy.linkerd.io/v1alpha1", "networkauthentications.policy.linkerd.io-emojivoto.list.json"),
            (
                "policy.linkerd.io/v1alpha1",
                "httplocalratelimitpolicies.policy.linkerd.io-emojivoto.list.json",
            ),
            ("policy.linkerd.io/v1beta3", "httproutes.policy.linkerd.io-emojivoto.list.json"),
            ("gateway.networking.k8s.io/v1", "httproutes.gateway.networking.k8s.io-emojivoto.list.json"),
            ("policy.linkerd.io/v1beta1", "serverauthorizations.policy.linkerd.io-emojivoto.list.json"),
        ] {
            let plural = file.split('.').next().unwrap();
            api.set(&format!("/apis/{path}/namespaces/{NS}/{plural}"), Answer::json(200, &fixture(file)));
        }
    }
    api
}

fn authz(api: &ApiServer, args: &[&str]) -> Output {
    let dir = tmp_dir("authz");
    let kubeconfig = api.kubeconfig(&dir);
    let out = Command::new(weft())
        .arg("authz")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "weft authz failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The table's rows (after the header), split on runs of spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines().skip_while(|l| !l.starts_with("POD "));
    let header = lines.next().expect("a header line");
    assert!(
        header.split_whitespace().eq([
            "POD",
            "PORT",
            "ROUTE",
            "SERVER",
            "AUTHORIZATION_POLICY",
            "SERVER_AUTHORIZATION"
        ]),
        "{header}"
    );
    lines
        .take_while(|l| !l.is_empty())
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect())
        .collect()
}

#[test]
fn a_deployments_port_shows_its_server_routes_policies_and_rate_limit() {
    let api = apiserver(true, json!({}));
    let table = stdout(&authz(&api, &["-n", NS, "deploy/web"]));
    let rows = rows(&table);
    // The three web-v1 pods share one answer; web-v2's are not selected.
    assert_eq!(
        rows,
        vec![vec![
            "web-v1-0,web-v1-1,web-v1-2",
            "8080",
            "web-api",
            "web-http",
            "authorizationpolicy/web-api",
            "-"
        ]],
        "{table}"
    );
    assert!(!table.contains("web-v2"), "{table}");
    assert!(table.contains("port 8080: Server web-http (HTTP/1), accessPolicy deny"), "{table}");
    assert!(
        table.contains("rate limit httplocalratelimitpolicy/web-rl: total 100/s; 20/s per client identity; 50/s for serviceaccount emojivoto/web"),
        "{table}"
    );

    // A bare name is a Deployment, and -o json carries the same answer.
    let json: Value = serde_json::from_str(&stdout(&authz(&api, &["-n", NS, "web", "-o", "json"]))).unwrap();
    assert_eq!(json["policy_resources_installed"], true);
    let pods = json["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3, "{json:#}");
    let port = &pods[0]["ports"][0];
    assert_eq!(port["port"], 8080);
    assert_eq!(port["server"], "web-http");
    assert_eq!(port["protocol"], "HTTP/1");
    assert_eq!(port["routes"][0]["name"], "web-api");
    assert_eq!(port["routes"][0]["authorizations"], json!([{"authorization_policy": "web-api"}]));
    // The Namespace-wide policy is in the server-level list (what non-HTTP
    // connections would meet), not on the route.
    assert_eq!(port["authorizations"], json!([{"authorization_policy": "emojivoto-cluster-network"}]));
    assert_eq!(port["rate_limit"]["name"], "web-rl");
    assert_eq!(port["rate_limit"]["total"], 100);
}

#[test]
fn a_port_no_server_covers_gets_the_default_policy() {
    let api = apiserver(true, json!({}));
    let table = stdout(&authz(&api, &["-n", NS, "pod/voting-0"]));
    let got = rows(&table);
    // 8080 ("http"): voting-grpc names port "grpc", so nothing covers it.
    // 8801: voting-prom selects the pod by expression, protocol unknown.
    assert_eq!(
        got,
        vec![
            vec![
                "voting-0",
                "8080",
                "default",
                "default:all-unauthenticated",
                "default/all-unauthenticated",
                "-"
            ],
            vec![
                "voting-0",
                "8801",
                "default",
                "voting-prom",
                "authorizationpolicy/emojivoto-cluster-network",
                "-"
            ],
        ],
        "{table}"
    );
    assert!(table.contains("port 8080: no Server covers it: default policy all-unauthenticated"), "{table}");

    // The namespace's annotation decides the default policy of uncovered ports.
    let api = apiserver(true, json!({"config.weft.io/default-inbound-policy": "deny"}));
    let table = stdout(&authz(&api, &["-n", NS, "pod/voting-0"]));
    assert!(
        rows(&table).contains(&vec![
            "voting-0".into(),
            "8080".into(),
            "default".into(),
            "default:deny".into(),
            "(none: denied)".into(),
            "-".into()
        ]),
        "{table}"
    );
    assert!(table.contains("namespace emojivoto's default-inbound-policy annotation"), "{table}");

    // And --default-inbound-policy stands in for the cluster's.
    let api = apiserver(true, json!({}));
    let table = stdout(&authz(
        &api,
        &["-n", NS, "pod/voting-0", "--default-inbound-policy", "cluster-authenticated"],
    ));
    assert!(table.contains("default:cluster-authenticated"), "{table}");
}

#[test]
fn without_the_policy_crds_every_port_uses_the_default_policy() {
    let api = apiserver(false, json!({}));
    let table = stdout(&authz(&api, &["-n", NS, "deploy/web"]));
    assert!(
        table.starts_with("no policy resources installed; every port uses the default policy"),
        "{table}"
    );
    assert_eq!(
        rows(&table),
        vec![vec![
            "web-v1-0,web-v1-1,web-v1-2",
            "8080",
            "default",
            "default:all-unauthenticated",
            "default/all-unauthenticated",
            "-"
        ]],
        "{table}"
    );
}

#[test]
fn a_missing_workload_is_a_clear_error() {
    let api = apiserver(true, json!({}));
    let out = authz(&api, &["-n", NS, "deploy/nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deploy/nope in namespace emojivoto not found"), "{err}");
    assert!(out.stdout.is_empty());

    let out = authz(&api, &["-n", NS, "svc/web"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use deploy/NAME"));
}

#[test]
fn probes_legacy_server_authorizations_and_unmeshed_pods_are_shown_for_what_they_are() {
    // voting's app container also serves gRPC on a port named "grpc" (which
    // the Server voting-grpc and, in Linkerd's deprecated form, the
    // ServerAuthorization voting-grpc name) and has an httpGet probe.
    let mut pods = fixture("pods-emojivoto.list.json");
    for pod in pods["items"].as_array_mut().unwrap() {
        if pod["metadata"]["labels"]["app"] == "voting" {
            let app = &mut pod["spec"]["containers"][0];
            app["ports"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "grpc", "containerPort": 8081, "protocol": "TCP"}));
            app["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": "http"}});
        }
    }
    let api = apiserver_with_pods(true, json!({}), pods);
    let table = stdout(&authz(&api, &["-n", NS, "deploy/voting"]));
    let voting0: Vec<Vec<String>> = rows(&table).into_iter().filter(|r| r[0] == "voting-0").collect();
    assert_eq!(
        voting0,
        vec![
            vec![
                "voting-0",
                "8080",
                "default",
                "default:all-unauthenticated",
                "default/all-unauthenticated",
                "-"
            ],
            vec!["voting-0", "8080", "probe", "default:all-unauthenticated", "default/probe", "-"],
            // The Namespace-wide policy applies to every Server of the namespace.
            vec![
                "voting-0",
                "8081",
                "default",
                "voting-grpc",
                "authorizationpolicy/emojivoto-cluster-network",
                "-"
            ],
            vec!["voting-0", "8081", "default", "voting-grpc", "authorizationpolicy/voting-grpc", "-"],
            vec![
                "voting-0",
                "8081",
                "*",
                "voting-grpc",
                "-",
                "serverauthorization/voting-grpc (not enforced)"
            ],
            vec![
                "voting-0",
                "8801",
                "default",
                "voting-prom",
                "authorizationpolicy/emojivoto-cluster-network",
                "-"
            ],
        ],
        "{table}"
    );
    // voting-1 has no proxy: the same rows, marked, and a warning that nothing enforces them.
    let voting1: Vec<Vec<String>> = rows(&table)
        .into_iter()
        .filter(|r| r[0] == "voting-1 (not meshed)")
        .map(|r| r[1..].to_vec())
        .collect();
    assert_eq!(voting1, voting0.iter().map(|r| r[1..].to_vec()).collect::<Vec<_>>(), "{table}");
    assert!(table.contains("pod voting-1 is not meshed: no proxy enforces this policy"), "{table}");
    assert!(table.contains("weft does not enforce"), "{table}");

    let json: Value =
        serde_json::from_str(&stdout(&authz(&api, &["-n", NS, "deploy/voting", "-o", "json"]))).unwrap();
    let pod = json["pods"].as_array().unwrap().iter().find(|p| p["name"] == "voting-0").unwrap().clone();
    assert_eq!(pod["meshed"], true);
    let port = pod["ports"].as_array().unwrap().iter().find(|p| p["port"] == 8080).unwrap().clone();
    assert_eq!(port["probe_paths"], json!(["/healthz"]));
    assert_eq!(port["default_policy"], "all-unauthenticated");
}

#[test]
fn policy_resources_the_user_may_not_read_are_an_error_not_a_default() {
    let api = apiserver(true, json!({}));
    api.set(
        &format!("/apis/policy.linkerd.io/v1alpha1/namespaces/{NS}/authorizationpolicies"),
        Answer::status(
            403,
            "Forbidden",
            "authorizationpolicies.policy.linkerd.io is forbidden: User \"dev\" cannot list resource",
        ),
    );
    let out = authz(&api, &["-n", NS, "deploy/web"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authorizationpolicies.policy.linkerd.io in namespace emojivoto"), "{err}");
    assert!(
        err.contains("kubectl auth can-i list authorizationpolicies.policy.linkerd.io -n emojivoto"),
        "{err}"
    );
}
