//! Shared by the integration tests: the captured Kubernetes fixtures and the
//! checks that make "a valid injected pod".

#![allow(dead_code)]

pub mod fake_api;

use std::collections::BTreeSet;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;
use weft_injector::patch::PatchOp;
use weft_injector::InjectorConfig;

pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("WEFT_K8S_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes"))
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name)).expect("fixture is JSON")
}

pub const TRUST_ANCHORS: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";

pub fn config() -> InjectorConfig {
    InjectorConfig {
        proxy_image: "example.test/weft-proxy:v1".into(),
        proxy_init_image: "example.test/weft-proxy-init:v1".into(),
        trust_anchors_pem: TRUST_ANCHORS.into(),
        ..InjectorConfig::default()
    }
}

/// Applies a patch with the json-patch crate (an implementation independent
/// of ours, strict like the apiserver's) and checks ours agrees.
pub fn apply(pod: &Value, ops: &[PatchOp]) -> Value {
    let json = serde_json::to_value(ops).expect("ops serialise");
    let parsed: json_patch::Patch = serde_json::from_value(json).expect("valid RFC 6902");
    let mut theirs = pod.clone();
    json_patch::patch(&mut theirs, &parsed).expect("patch applies");
    let mut ours = pod.clone();
    weft_injector::patch::apply(&mut ours, ops).expect("our apply");
    assert_eq!(ours, theirs, "our RFC 6902 apply disagrees with json-patch");
    theirs
}

/// Decodes the base64 JSON patch of an AdmissionReview response.
pub fn response_patch(review: &Value) -> Option<Vec<PatchOp>> {
    let b64 = review.pointer("/response/patch")?.as_str()?;
    assert_eq!(review.pointer("/response/patchType").and_then(Value::as_str), Some("JSONPatch"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    let ops: Value = serde_json::from_slice(&bytes).expect("patch is JSON");
    // Round-trip through our type to make sure only add/replace are used.
    let ops: Vec<Value> = serde_json::from_value(ops).expect("array");
    Some(
        ops.into_iter()
            .map(|op| {
                let path = op["path"].as_str().expect("path").to_string();
                let value = op["value"].clone();
                match op["op"].as_str() {
                    Some("add") => PatchOp::Add { path, value },
                    Some("replace") => PatchOp::Replace { path, value },
                    other => panic!("unexpected op {other:?}"),
                }
            })
            .collect(),
    )
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

pub fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap_or("").to_string(), e.clone()))
        .collect()
}

pub fn env_value(container: &Value, name: &str) -> Option<String> {
    env_of(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e["value"].as_str().map(String::from))
}

pub fn find<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod["spec"][list].as_array()?.iter().find(|c| c["name"] == name)
}

/// Checks the invariants of a pod the injector produced; `native` says where
/// the proxy must be. Returns the proxy container.
pub fn assert_injected(pod: &Value, native: bool) -> Value {
    let spec = &pod["spec"];
    let inits = names(spec.get("initContainers"));
    let containers = names(spec.get("containers"));
    let all: Vec<&String> = inits.iter().chain(&containers).collect();
    let unique: BTreeSet<&&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "duplicate container names: {all:?}");
    assert_eq!(all.iter().filter(|n| n.as_str() == "weft-proxy").count(), 1, "{all:?}");
    // weft-proxy-init, or in CNI mode the validator, comes first.
    let cni = inits.first().map(String::as_str) == Some("weft-network-validator");
    if !cni {
        assert_eq!(inits.first().map(String::as_str), Some("weft-proxy-init"), "{inits:?}");
    }
    let proxy = if native {
        assert_eq!(inits.get(1).map(String::as_str), Some("weft-proxy"), "{inits:?}");
        let p = find(pod, "initContainers", "weft-proxy").expect("proxy").clone();
        assert_eq!(p["restartPolicy"], "Always");
        assert_eq!(p["startupProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(p["startupProbe"]["httpGet"]["port"], 4191);
        p
    } else {
        assert_eq!(containers.first().map(String::as_str), Some("weft-proxy"));
        let p = find(pod, "containers", "weft-proxy").expect("proxy").clone();
        assert!(p.get("restartPolicy").is_none());
        assert!(p["lifecycle"]["postStart"]["exec"]["command"].is_array());
        p
    };
    assert_eq!(p_uid(&proxy), Some(2102));
    assert_eq!(
        proxy["securityContext"]["runAsGroup"].as_u64(),
        Some(2102),
        "the proxy's group is set, not the image's"
    );
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 4191);
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["port"], 4191);

    if cni {
        assert!(find(pod, "initContainers", "weft-proxy-init").is_none(), "{inits:?}");
        let v = find(pod, "initContainers", "weft-network-validator").expect("validator");
        assert_eq!(v["image"], proxy["image"], "the validator is the proxy image's `validate`");
        assert_eq!(v["args"][0], "validate");
        // Not root, and not the proxy's UID, whose traffic is not redirected.
        assert_eq!(p_uid(v), Some(2103));
        assert_eq!(v["securityContext"]["capabilities"], serde_json::json!({"drop": ["ALL"]}));
        assert_eq!(v["securityContext"]["allowPrivilegeEscalation"], false);
        assert!(v.get("restartPolicy").is_none(), "the validator runs to completion");
    } else {
        let init = find(pod, "initContainers", "weft-proxy-init").expect("init");
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            serde_json::json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(init["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(init["securityContext"]["privileged"], false);
    }

    // Every mount must name a volume of the pod, or the pod is rejected.
    let volumes: BTreeSet<String> = names(spec.get("volumes")).into_iter().collect();
    for c in spec["initContainers"].as_array().into_iter().chain(spec["containers"].as_array()).flatten() {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let v = m["name"].as_str().expect("mount name");
            assert!(volumes.contains(v), "mount of missing volume {v}");
        }
    }
    let token = spec["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "weft-identity-token"))
        .expect("token volume");
    let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], "identity.weft.io");
    assert_eq!(sat["expirationSeconds"], 86400);

    let env: Vec<String> = env_of(&proxy).into_iter().map(|(n, _)| n).collect();
    for required in [
        "WEFT_PROXY_LOG",
        "WEFT_PROXY_OPAQUE_PORTS",
        "WEFT_PROXY_IDENTITY_SVC_ADDR",
        "WEFT_PROXY_IDENTITY_SVC_NAME",
        "WEFT_PROXY_IDENTITY_LOCAL_NAME",
        "WEFT_PROXY_IDENTITY_TOKEN_FILE",
        "WEFT_PROXY_IDENTITY_TRUST_ANCHORS",
        "WEFT_PROXY_DESTINATION_SVC_ADDR",
        "WEFT_PROXY_DESTINATION_SVC_NAME",
        "WEFT_PROXY_INBOUND_PORTS",
        "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD",
    ] {
        assert!(env.iter().any(|e| e == required), "missing env {required}: {env:?}");
    }
    // $(VAR) references only resolve to variables defined earlier.
    let pos = |n: &str| env.iter().position(|e| e == n).expect(n);
    assert!(pos("_pod_sa") < pos("WEFT_PROXY_IDENTITY_LOCAL_NAME"));
    assert!(pos("_pod_ns") < pos("WEFT_PROXY_IDENTITY_LOCAL_NAME"));
    assert_eq!(pod["metadata"]["annotations"]["weft.io/injected"], "true");
    proxy
}

fn p_uid(c: &Value) -> Option<u64> {
    c["securityContext"]["runAsUser"].as_u64()
}
