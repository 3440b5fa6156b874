//! `pre-pod-security`: namespaces whose Pod Security admission enforces
//! `baseline` or `restricted` reject weft-proxy-init, which adds the
//! NET_ADMIN and NET_RAW capabilities to write the pod's iptables rules.
//! Where weft already runs in CNI mode (the weft-cni DaemonSet exists), the
//! injector adds no such container and meshed pods pass `restricted`.

use std::io::Write;

use serde_json::Value;
use weft_injector::annotations::INJECT;

use super::api::items;
use super::report::{Finding, Report};
use super::Ctx;

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

pub async fn check<W: Write>(report: &mut Report<W>, ctx: &Ctx) {
    report.category("pre-pod-security");
    let description = "no meshed namespace enforces a Pod Security level that rejects weft-proxy-init";
    let list = match ctx.api.get::<Value>("/api/v1/namespaces", "namespaces").await {
        Ok(list) => list,
        Err(e) => {
            report.add(description, Finding::error(e.to_string(), e.hint()));
            return;
        }
    };
    let cni_mode = ctx
        .api
        .get::<Value>(&format!("/apis/apps/v1/namespaces/{}/daemonsets/weft-cni", ctx.cpns), "daemonsets")
        .await
        .is_ok();
    report.add(description, finding(items(&list), cni_mode));
}

/// Meshed (annotated `weft.io/inject: enabled`) namespaces enforcing
/// baseline or restricted are errors; other enforcing namespaces a warning,
/// since meshing them later would fail the same way.
pub fn finding(namespaces: &[Value], cni_mode: bool) -> Finding {
    if cni_mode {
        return Finding::ok();
    }
    let mut meshed = Vec::new();
    let mut others = Vec::new();
    for ns in namespaces {
        let name = ns.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
        let level = ns.pointer("/metadata/labels").and_then(|l| l.get(ENFORCE_LABEL)).and_then(Value::as_str);
        let Some(level @ ("baseline" | "restricted")) = level else { continue };
        let annotated =
            ns.pointer("/metadata/annotations").and_then(|a| a.get(INJECT)).and_then(Value::as_str)
                == Some("enabled");
        if annotated { &mut meshed } else { &mut others }.push(format!("{name} ({level})"));
    }
    let hint = "weft-proxy-init needs NET_ADMIN and NET_RAW, which only the `privileged` level allows: install \
                weft in CNI mode (helm --set cni.enabled=true: the weft-cni DaemonSet writes the rules from the \
                node and the injector adds only an unprivileged validator, so meshed pods pass `restricted`), or \
                label meshed namespaces pod-security.kubernetes.io/enforce=privileged (keep `warn`/`audit` at \
                restricted to see the rest), or leave them unmeshed";
    if !meshed.is_empty() {
        return Finding::error(
            format!(
                "namespaces annotated {INJECT}=enabled enforce a Pod Security level that rejects their injected pods: {}",
                meshed.join(", ")
            ),
            hint,
        );
    }
    if !others.is_empty() {
        return Finding::warning(
            format!(
                "these namespaces enforce a Pod Security level that would reject meshed pods: {}",
                others.join(", ")
            ),
            hint,
        );
    }
    Finding::ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Outcome;
    use serde_json::json;

    #[test]
    fn enforcing_namespaces_are_reported() {
        let list: Value = crate::check::fixture("namespaces.list.json");
        let mut namespaces = items(&list).to_vec();
        assert_eq!(finding(&namespaces, false), Finding::ok());
        namespaces.push(json!({"metadata": {"name": "locked", "labels": {ENFORCE_LABEL: "restricted"}}}));
        let f = finding(&namespaces, false);
        assert_eq!(f.outcome, Outcome::Warning);
        assert!(f.message.unwrap().contains("locked (restricted)"));
        let emojivoto = namespaces.iter_mut().find(|n| n["metadata"]["name"] == "emojivoto").unwrap();
        emojivoto["metadata"]["labels"][ENFORCE_LABEL] = json!("baseline");
        let f = finding(&namespaces, false);
        assert_eq!(f.outcome, Outcome::Error);
        assert!(f.message.unwrap().contains("emojivoto (baseline)"));
        assert!(f.hint.unwrap_or_default().contains("cni.enabled=true"));
        // In CNI mode the same namespaces take meshed pods.
        assert_eq!(finding(&namespaces, true), Finding::ok());
    }
}
