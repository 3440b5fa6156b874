//! Pod Security Admission's `restricted` level (Kubernetes v1.32), which
//! includes `baseline`, reproduced on a pod's JSON: what the API server's
//! PodSecurity admission would reject, and why. It shows that a pod meshed
//! in CNI mode stays `restricted`, and that weft-proxy-init does not
//! (`tests/pod_security.rs`); `weft check` can reuse it.
//!
//! The checks follow <https://kubernetes.io/docs/concepts/security/pod-security-standards/>
//! and the `k8s.io/pod-security-admission` policy package of v1.32.

use serde_json::Value;

/// One rule a pod breaks: the PSA check's name (as in its error messages)
/// and what breaks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.check, self.detail)
    }
}

/// `baseline` allows these added capabilities; `restricted` only the last.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];
const SELINUX_TYPES: [&str; 5] =
    ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Every `restricted` (and so `baseline`) rule `pod` breaks; empty when the
/// API server would admit it in a namespace enforcing `restricted`. `pod` is
/// a Pod or a pod template (`metadata` and `spec`).
pub fn restricted_violations(pod: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut v = |check: &'static str, detail: String| out.push(Violation { check, detail });
    let spec = &pod["spec"];
    let psc = &spec["securityContext"];
    let containers: Vec<(String, &Value)> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().into_iter().flatten())
        .map(|c| (format!("container {:?}", c["name"].as_str().unwrap_or("")), c))
        .collect();

    // baseline
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == Value::Bool(true) {
            v("host namespaces", format!("{field}=true"));
        }
    }
    if psc["windowsOptions"]["hostProcess"] == Value::Bool(true)
        || containers
            .iter()
            .any(|(_, c)| c["securityContext"]["windowsOptions"]["hostProcess"] == Value::Bool(true))
    {
        v("hostProcess", "windowsOptions.hostProcess=true".into());
    }
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        let name = vol["name"].as_str().unwrap_or("");
        let kind = vol.as_object().and_then(|m| m.keys().find(|k| *k != "name").cloned()).unwrap_or_default();
        if kind == "hostPath" {
            v("hostPath volumes", format!("volume {name:?}"));
        } else if !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
            v("restricted volume types", format!("volume {name:?} uses {kind}"));
        }
    }
    for (name, c) in &containers {
        let sc = &c["securityContext"];
        if sc["privileged"] == Value::Bool(true) {
            v("privileged", format!("{name} must not set securityContext.privileged=true"));
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_u64().is_some_and(|h| h != 0) {
                v("hostPort", format!("{name} uses hostPort {}", p["hostPort"]));
            }
        }
        if !matches!(sc["procMount"].as_str(), None | Some("Default")) {
            v("procMount", format!("{name} sets procMount {}", sc["procMount"]));
        }
        let added: Vec<&str> =
            sc["capabilities"]["add"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let beyond_baseline: Vec<&str> =
            added.iter().copied().filter(|c| !BASELINE_CAPABILITIES.contains(c)).collect();
        if !beyond_baseline.is_empty() {
            v("capabilities", format!("{name} adds {beyond_baseline:?}, beyond baseline's"));
        }
        let beyond_restricted: Vec<&str> =
            added.iter().copied().filter(|c| *c != "NET_BIND_SERVICE").collect();
        if !beyond_restricted.is_empty() {
            v("capabilities", format!("{name} must not add {beyond_restricted:?} (only NET_BIND_SERVICE)"));
        }
        let drops_all =
            sc["capabilities"]["drop"].as_array().into_iter().flatten().any(|d| d.as_str() == Some("ALL"));
        if !drops_all {
            v("capabilities", format!("{name} must set securityContext.capabilities.drop=[\"ALL\"]"));
        }
        if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
            v(
                "allowPrivilegeEscalation != false",
                format!("{name} must set securityContext.allowPrivilegeEscalation=false"),
            );
        }
        match (sc["runAsNonRoot"].as_bool(), psc["runAsNonRoot"].as_bool()) {
            (Some(false), _) => v("runAsNonRoot != true", format!("{name} sets runAsNonRoot=false")),
            (Some(true), _) | (None, Some(true)) => {}
            _ => v("runAsNonRoot != true", format!("{name}: neither it nor the pod sets runAsNonRoot=true")),
        }
        if sc["runAsUser"].as_u64() == Some(0) {
            v("runAsUser=0", format!("{name} runs as UID 0"));
        }
        match (sc["seccompProfile"]["type"].as_str(), psc["seccompProfile"]["type"].as_str()) {
            (Some("RuntimeDefault" | "Localhost"), _) | (None, Some("RuntimeDefault" | "Localhost")) => {}
            (Some(t), _) | (None, Some(t)) => {
                v("seccompProfile", format!("{name}: seccompProfile.type {t} (RuntimeDefault or Localhost)"))
            }
            (None, None) => v(
                "seccompProfile",
                format!(
                    "{name}: neither it nor the pod sets seccompProfile.type RuntimeDefault or Localhost"
                ),
            ),
        }
        check_selinux(&mut v, name, &sc["seLinuxOptions"]);
        check_apparmor(&mut v, name, &sc["appArmorProfile"]);
    }
    if psc["runAsUser"].as_u64() == Some(0) {
        v("runAsUser=0", "the pod runs as UID 0".into());
    }
    check_selinux(&mut v, "the pod", &psc["seLinuxOptions"]);
    check_apparmor(&mut v, "the pod", &psc["appArmorProfile"]);
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&name) {
            v("forbidden sysctls", name.to_string());
        }
    }
    for (key, value) in pod["metadata"]["annotations"].as_object().into_iter().flatten() {
        if key.starts_with(APPARMOR_ANNOTATION) {
            let value = value.as_str().unwrap_or("");
            if value != "runtime/default" && !value.starts_with("localhost/") {
                v("appArmorProfile", format!("{key}={value}"));
            }
        }
    }
    out
}

fn check_selinux(v: &mut impl FnMut(&'static str, String), who: &str, se: &Value) {
    if se.is_null() {
        return;
    }
    if !SELINUX_TYPES.contains(&se["type"].as_str().unwrap_or("")) {
        v("seLinuxOptions", format!("{who} sets seLinuxOptions.type {}", se["type"]));
    }
    for field in ["user", "role"] {
        if se[field].as_str().is_some_and(|s| !s.is_empty()) {
            v("seLinuxOptions", format!("{who} sets seLinuxOptions.{field}"));
        }
    }
}

fn check_apparmor(v: &mut impl FnMut(&'static str, String), who: &str, profile: &Value) {
    if let Some(t) = profile["type"].as_str() {
        if !matches!(t, "RuntimeDefault" | "Localhost") {
            v("appArmorProfile", format!("{who} sets appArmorProfile.type {t}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn restricted_pod() -> Value {
        json!({
            "metadata": {"name": "p"},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "app", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}
                }}],
                "volumes": [{"name": "cfg", "configMap": {"name": "c"}}]
            }
        })
    }

    fn checks(pod: &Value) -> Vec<&'static str> {
        restricted_violations(pod).into_iter().map(|v| v.check).collect()
    }

    #[test]
    fn a_restricted_pod_passes() {
        assert_eq!(restricted_violations(&restricted_pod()), Vec::new());
    }

    #[test]
    fn every_rule_catches_its_breach() {
        let cases: [(&str, Value, &str); 14] = [
            ("/spec/hostNetwork", json!(true), "host namespaces"),
            ("/spec/hostPID", json!(true), "host namespaces"),
            ("/spec/volumes/0", json!({"name": "h", "hostPath": {"path": "/"}}), "hostPath volumes"),
            ("/spec/volumes/0", json!({"name": "n", "nfs": {}}), "restricted volume types"),
            ("/spec/containers/0/securityContext/privileged", json!(true), "privileged"),
            ("/spec/containers/0/ports", json!([{"containerPort": 80, "hostPort": 80}]), "hostPort"),
            ("/spec/containers/0/securityContext/capabilities/add", json!(["NET_ADMIN"]), "capabilities"),
            ("/spec/containers/0/securityContext/capabilities/drop", json!([]), "capabilities"),
            (
                "/spec/containers/0/securityContext/allowPrivilegeEscalation",
                json!(true),
                "allowPrivilegeEscalation != false",
            ),
            ("/spec/containers/0/securityContext/runAsNonRoot", json!(false), "runAsNonRoot != true"),
            ("/spec/containers/0/securityContext/runAsUser", json!(0), "runAsUser=0"),
            ("/spec/securityContext/seccompProfile/type", json!("Unconfined"), "seccompProfile"),
            (
                "/spec/securityContext/sysctls",
                json!([{"name": "net.core.somaxconn", "value": "1"}]),
                "forbidden sysctls",
            ),
            ("/spec/containers/0/securityContext/seLinuxOptions", json!({"type": "spc_t"}), "seLinuxOptions"),
        ];
        for (path, value, check) in cases {
            let mut pod = restricted_pod();
            let (parent, key) = path.rsplit_once('/').expect("path");
            let target = pod.pointer_mut(parent).expect(parent);
            match target {
                Value::Array(a) => a[key.parse::<usize>().expect("index")] = value,
                other => other[key] = value,
            }
            assert!(checks(&pod).contains(&check), "{path}: {:?}", restricted_violations(&pod));
        }
        // NET_BIND_SERVICE is the one capability restricted allows.
        let mut pod = restricted_pod();
        pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE"]);
        assert_eq!(restricted_violations(&pod), Vec::new());
        // Without the pod-level runAsNonRoot nor the container's: rejected.
        let mut pod = restricted_pod();
        pod["spec"]["securityContext"] = json!({"seccompProfile": {"type": "RuntimeDefault"}});
        assert_eq!(checks(&pod), ["runAsNonRoot != true"]);
        let mut pod = restricted_pod();
        pod["metadata"]["annotations"] =
            json!({"container.apparmor.security.beta.kubernetes.io/app": "unconfined"});
        assert_eq!(checks(&pod), ["appArmorProfile"]);
    }
}
