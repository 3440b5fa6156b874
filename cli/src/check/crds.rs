//! `weft-config`: the CRDs weft reads are installed, established and serve
//! the versions weft-destination watches; which Gateway API versions the
//! cluster serves.

use std::io::Write;

use serde_json::Value;

use super::report::{Finding, Report};
use super::Ctx;

/// CRDs the chart installs and the versions weft reads.
const REQUIRED: &[(&str, &[&str])] = &[
    ("trafficsplits.split.smi-spec.io", &["v1alpha2", "v1alpha4"]),
    ("serviceprofiles.linkerd.io", &["v1alpha2"]),
    // Linkerd's policy resources, in the versions weft-destination watches.
    ("servers.policy.linkerd.io", &["v1beta3"]),
    ("authorizationpolicies.policy.linkerd.io", &["v1alpha1"]),
    ("meshtlsauthentications.policy.linkerd.io", &["v1alpha1"]),
    ("networkauthentications.policy.linkerd.io", &["v1alpha1"]),
    ("httplocalratelimitpolicies.policy.linkerd.io", &["v1alpha1"]),
];

const GATEWAY_API: &[&str] =
    &["httproutes.gateway.networking.k8s.io", "grpcroutes.gateway.networking.k8s.io"];

pub async fn check<W: Write>(report: &mut Report<W>, ctx: &Ctx) {
    report.category("weft-config");
    let mut problems = Vec::new();
    let mut hint =
        "`kubectl apply -f charts/weft/crds/` (Helm installs CRDs only when they are missing)".to_string();
    for (name, versions) in REQUIRED {
        match crd(ctx, name).await {
            Ok(Some(crd)) => {
                let served = served_versions(&crd);
                let missing: Vec<&str> =
                    versions.iter().copied().filter(|v| !served.contains(&v.to_string())).collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "{name} does not serve {} (serves: {})",
                        missing.join(", "),
                        list(&served)
                    ));
                } else if !established(&crd) {
                    problems.push(format!("{name} is not Established yet"));
                }
            }
            Ok(None) => problems.push(format!("{name} is not installed")),
            Err(e) => {
                hint = e.hint();
                problems.push(e.to_string());
            }
        }
    }
    let finding = if problems.is_empty() { Finding::ok() } else { Finding::error(problems.join("\n"), hint) };
    report.add("control plane CustomResourceDefinitions exist at the served versions", finding);

    let mut served = Vec::new();
    let mut absent = Vec::new();
    for name in GATEWAY_API {
        match crd(ctx, name).await {
            Ok(Some(crd)) => served.push(format!(
                "{} {}",
                name.split('.').next().unwrap_or(name),
                list(&served_versions(&crd))
            )),
            Ok(None) => absent.push(name.to_string()),
            Err(e) => absent.push(format!("{name} (cannot read it: {e})")),
        }
    }
    let finding = if absent.is_empty() {
        Finding::ok()
    } else {
        Finding::warning(
            format!("not installed: {}", absent.join(", ")),
            "the Gateway API release's CRDs, if you route with Gateway API HTTPRoutes or GRPCRoutes",
        )
    };
    let description = if served.is_empty() {
        "Gateway API CRDs are installed".to_string()
    } else {
        format!("Gateway API CRDs are installed ({})", served.join("; "))
    };
    report.add(description, finding);
}

async fn crd(ctx: &Ctx, name: &str) -> Result<Option<Value>, super::api::ApiError> {
    let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
    match ctx.api.get::<Value>(&path, &format!("customresourcedefinitions.apiextensions.k8s.io {name}")).await
    {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn served_versions(crd: &Value) -> Vec<String> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().any(|c| {
        c.get("type").and_then(Value::as_str) == Some("Established")
            && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        crate::check::fixture(&format!("crd-{name}.json"))
    }

    #[test]
    fn reads_the_served_versions_of_captured_crds() {
        let split = fixture("trafficsplits.split.smi-spec.io");
        assert_eq!(served_versions(&split), ["v1alpha2", "v1alpha4"]);
        assert!(established(&split));
        assert_eq!(served_versions(&fixture("serviceprofiles.linkerd.io")), ["v1alpha2"]);
        assert!(!served_versions(&fixture("httproutes.gateway.networking.k8s.io")).is_empty());
    }
}
