//! `weft-control-plane`: the namespace exists, the Deployments are
//! available, and weft-identity and weft-destination answer their admin
//! `/ready` (reached through the API server's pods proxy subresource, so the
//! check needs no port-forward and RBAC on `pods/proxy` decides who may).
//! weft-identity's `/ready` means its issuer is loaded and it serves
//! Certify; weft-destination's that its Kubernetes watches have synced.

use std::io::Write;

use serde_json::Value;

use super::api::items;
use super::report::{Finding, Report};
use super::Ctx;

/// Deployment, admin port, and whether `/ready` is checked here (the
/// injector's readiness is the webhook checks' business).
const COMPONENTS: &[(&str, u16, bool)] =
    &[("weft-identity", 9990, true), ("weft-destination", 9996, true), ("weft-injector", 9995, false)];

pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// What the rest of the checks learn here.
pub struct ControlPlane {
    /// The namespace exists (or could not be read): worth checking the rest.
    pub present: bool,
    /// Its Deployments' `app.kubernetes.io/version`.
    pub version: Option<String>,
}

pub async fn check<W: Write>(report: &mut Report<W>, ctx: &Ctx) -> ControlPlane {
    report.category("weft-control-plane");
    let ns = &ctx.cpns;
    match ctx.api.get::<Value>(&format!("/api/v1/namespaces/{ns}"), &format!("namespace {ns}")).await {
        Ok(_) => report.add("control plane namespace exists", Finding::ok()),
        Err(e) if e.is_not_found() => {
            // Nothing else can be there: say this once rather than twenty times.
            report.add(
                "control plane namespace exists",
                Finding::error(
                    format!("namespace {ns} does not exist: weft is not installed there"),
                    "charts/weft/README.md to install it (`weft check --pre` first), or --control-plane-namespace",
                ),
            );
            return ControlPlane { present: false, version: None };
        }
        Err(e) => report.add("control plane namespace exists", Finding::error(e.to_string(), e.hint())),
    };

    let mut problems = Vec::new();
    let mut hint = format!("`kubectl -n {ns} describe deploy` and `kubectl -n {ns} get events`");
    let mut version = None;
    for (name, _, _) in COMPONENTS {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}");
        match ctx.api.get::<Value>(&path, &format!("deployments.apps in namespace {ns}")).await {
            Ok(d) => {
                if let Some(v) =
                    d.pointer("/metadata/labels").and_then(|l| l.get(VERSION_LABEL)).and_then(Value::as_str)
                {
                    version.get_or_insert_with(|| v.to_string());
                }
                if let Some(why) = unavailable(&d) {
                    problems.push(format!("deploy/{name}: {why}"));
                }
            }
            Err(e) if e.is_not_found() => problems.push(format!("deploy/{name} does not exist")),
            Err(e) => {
                hint = e.hint();
                problems.push(e.to_string());
            }
        }
    }
    let finding = if problems.is_empty() { Finding::ok() } else { Finding::error(problems.join("\n"), hint) };
    report.add("control plane Deployments are available", finding);

    for (name, port, checked) in COMPONENTS {
        if *checked {
            let finding = ready(ctx, name, *port).await;
            report.add(format!("{name} answers /ready"), finding);
        }
    }
    ControlPlane { present: true, version }
}

/// Why a Deployment is not available, if it is not.
fn unavailable(d: &Value) -> Option<String> {
    let available = d.pointer("/status/availableReplicas").and_then(Value::as_u64).unwrap_or(0);
    let wanted = d.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(1);
    let condition = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"));
    let condition_true = condition.and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True");
    if available >= 1 && condition_true {
        return None;
    }
    let message =
        condition.and_then(|c| c.get("message")).and_then(Value::as_str).unwrap_or("no Available condition");
    Some(format!("{available}/{wanted} replicas available ({message})"))
}

/// True if the pod is Ready and not terminating.
pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
}

async fn ready(ctx: &Ctx, component: &str, port: u16) -> Finding {
    let ns = &ctx.cpns;
    let path = format!("/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io%2Fname%3D{component}");
    let pods = match ctx.api.get::<Value>(&path, &format!("pods in namespace {ns}")).await {
        Ok(list) => list,
        Err(e) => return Finding::error(e.to_string(), e.hint()),
    };
    // Filtered here too: a server (or proxy) ignoring the selector must not
    // make another component's pod answer for this one.
    let of_component = |p: &&Value| {
        p.pointer("/metadata/labels").and_then(|l| l.get("app.kubernetes.io/name")).and_then(Value::as_str)
            == Some(component)
    };
    let Some(pod) = items(&pods).iter().filter(of_component).find(|p| pod_ready(p)) else {
        return Finding::error(
            format!("no ready {component} pod in namespace {ns}"),
            format!("`kubectl -n {ns} logs deploy/{component}`"),
        );
    };
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/ready");
    match ctx.api.get_text(&path, &format!("pods/proxy in namespace {ns}")).await {
        Ok(_) => Finding::ok(),
        Err(e) => Finding::error(
            format!("pod/{name} admin port {port}: {e}"),
            format!("`kubectl -n {ns} logs {name}`"),
        ),
    }
}
