//! `pre-kubernetes-setup`: the control plane's namespace is free, and the
//! user may create every kind of object the chart creates, asked with
//! SelfSubjectAccessReviews (what `kubectl auth can-i` sends).

use std::io::Write;

use serde_json::{json, Value};

use super::report::{Finding, Report};
use super::Ctx;

/// What the chart creates: (description, API group, resource, namespaced).
const CREATES: &[(&str, &str, &str, bool)] = &[
    ("Namespaces", "", "namespaces", false),
    ("ClusterRoles", "rbac.authorization.k8s.io", "clusterroles", false),
    ("ClusterRoleBindings", "rbac.authorization.k8s.io", "clusterrolebindings", false),
    ("CustomResourceDefinitions", "apiextensions.k8s.io", "customresourcedefinitions", false),
    ("MutatingWebhookConfigurations", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", false),
    ("ServiceAccounts", "", "serviceaccounts", true),
    ("Services", "", "services", true),
    ("Deployments", "apps", "deployments", true),
    ("ConfigMaps", "", "configmaps", true),
    ("Secrets", "", "secrets", true),
    ("PodDisruptionBudgets", "policy", "poddisruptionbudgets", true),
];

pub async fn check<W: Write>(report: &mut Report<W>, ctx: &Ctx) {
    report.category("pre-kubernetes-setup");
    let ns = &ctx.cpns;
    let finding = match ctx.api.get::<Value>(&format!("/api/v1/namespaces/{ns}"), &format!("namespace {ns}")).await {
        Ok(_) => Finding::warning(
            format!("namespace {ns} already exists"),
            "whether weft is installed already (`weft check`), or choose another namespace with --control-plane-namespace",
        ),
        Err(e) if e.is_not_found() => Finding::ok(),
        Err(e) => Finding::error(e.to_string(), e.hint()),
    };
    report.add("control plane namespace does not already exist", finding);

    for (what, group, resource, namespaced) in CREATES {
        let finding = can_create(ctx, group, resource, namespaced.then_some(ns.as_str())).await;
        report.add(format!("can create {what}"), finding);
    }
}

async fn can_create(ctx: &Ctx, group: &str, resource: &str, namespace: Option<&str>) -> Finding {
    let mut attributes = json!({"verb": "create", "group": group, "resource": resource});
    if let Some(ns) = namespace {
        attributes["namespace"] = json!(ns);
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    });
    let qualified = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
    let answer = ctx
        .api
        .post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &review,
            "create",
            "selfsubjectaccessreviews.authorization.k8s.io",
        )
        .await;
    let where_ = namespace.map(|ns| format!(" in namespace {ns}")).unwrap_or_default();
    match answer {
        Ok(v) if v.pointer("/status/allowed").and_then(Value::as_bool) == Some(true) => Finding::ok(),
        Ok(v) => {
            let reason = v.pointer("/status/reason").and_then(Value::as_str).unwrap_or("").trim();
            let reason = if reason.is_empty() { String::new() } else { format!(" ({reason})") };
            Finding::error(
                format!("RBAC denies `create` on {qualified}{where_}, which installing weft needs{reason}"),
                format!(
                    "`kubectl auth can-i create {qualified}{}`; install as a cluster admin",
                    namespace.map(|ns| format!(" -n {ns}")).unwrap_or_default()
                ),
            )
        }
        Err(e) => Finding::error(e.to_string(), e.hint()),
    }
}
