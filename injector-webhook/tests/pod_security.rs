//! Pod Security `restricted` (PSA v1.32, reproduced by `weft_injector::psa`)
//! on the captured AdmissionReview pods: a pod injected in CNI mode passes
//! it, one injected with weft-proxy-init does not, for the reasons PSA gives.

mod common;

use common::*;
use serde_json::{json, Value};
use weft_injector::psa::{restricted_violations, Violation};
use weft_injector::{inject, Decision, InjectorConfig, NamespaceInfo};

const FIXTURES: [&str; 5] = [
    "admissionreview-pod-create-bare.json",
    "admissionreview-pod-create-plain.json",
    "admissionreview-pod-create-replicaset.json",
    "admissionreview-pod-create-job.json",
    "admissionreview-pod-create-deployment.json",
];

fn enabled_ns() -> NamespaceInfo {
    NamespaceInfo {
        name: Some("emojivoto".into()),
        annotations: [("weft.io/inject".to_string(), "enabled".to_string())].into(),
    }
}

/// The captured pod as a user of a `restricted` namespace would write it:
/// the captured apps set no securityContext, which `restricted` rejects
/// with or without weft.
fn hardened(file: &str) -> Value {
    let mut pod = fixture(file)["request"]["object"].clone();
    pod["metadata"]["namespace"] = json!("emojivoto");
    pod["spec"]["securityContext"] =
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
    for c in pod["spec"]["containers"].as_array_mut().expect("containers") {
        c["securityContext"] = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    }
    pod
}

fn injected(pod: &Value, config: &InjectorConfig) -> Value {
    let o = inject(pod, &enabled_ns(), config).expect("inject");
    assert_eq!(o.decision, Decision::Injected);
    apply(pod, &o.patch)
}

fn cni() -> InjectorConfig {
    InjectorConfig { cni: true, ..config() }
}

#[test]
fn captured_pods_pass_restricted_before_injection() {
    for file in FIXTURES {
        assert_eq!(restricted_violations(&hardened(file)), Vec::<Violation>::new(), "{file}");
    }
}

#[test]
fn cni_mode_pods_pass_restricted() {
    for file in FIXTURES {
        for native in ["true", "false"] {
            let mut pod = hardened(file);
            pod["metadata"]["annotations"]["config.weft.io/native-sidecar"] = json!(native);
            let meshed = injected(&pod, &cni());
            assert_eq!(
                restricted_violations(&meshed),
                Vec::<Violation>::new(),
                "{file} (native sidecar {native}) in CNI mode"
            );
        }
        // Injection adds nothing to what an unhardened app already breaks.
        let raw = fixture(file)["request"]["object"].clone();
        let mut raw_ns = raw.clone();
        raw_ns["metadata"]["namespace"] = json!("emojivoto");
        assert_eq!(
            restricted_violations(&injected(&raw_ns, &cni())),
            restricted_violations(&raw),
            "{file}: CNI-mode injection must add no violation"
        );
    }
}

#[test]
fn proxy_init_mode_fails_restricted_for_its_capabilities_and_root() {
    for file in FIXTURES {
        let meshed = injected(&hardened(file), &config());
        let violations = restricted_violations(&meshed);
        assert!(!violations.is_empty(), "{file}: the checker must reject weft-proxy-init");
        // Every one is weft-proxy-init's: the proxy itself is restricted.
        for v in &violations {
            assert!(v.detail.contains("\"weft-proxy-init\""), "{file}: {v}");
        }
        let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
        let has = |check: &str, needle: &str| {
            violations.iter().any(|v| v.check == check && v.detail.contains(needle))
        };
        assert!(has("capabilities", "NET_ADMIN") && has("capabilities", "NET_RAW"), "{file}: {text:?}");
        assert!(has("runAsUser=0", "UID 0"), "{file}: {text:?}");
        assert!(has("runAsNonRoot != true", "runAsNonRoot=false"), "{file}: {text:?}");
        // baseline forbids NET_ADMIN and NET_RAW as well.
        assert!(has("capabilities", "beyond baseline's"), "{file}: {text:?}");
    }
}
