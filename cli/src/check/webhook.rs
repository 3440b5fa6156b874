//! The injecting webhook. Before installing (`pre-kubernetes-webhooks`): no
//! other mesh's injector mutates pods, and weft's is not there already.
//! After (`weft-webhook`): the configuration exists, its caBundle verifies
//! the injector's serving certificate (Secret `weft-injector-tls`) for the
//! name the API server dials, the injector's Service has ready endpoints,
//! and a server-side dry-run create of a pod in an annotated namespace
//! comes back injected.

use std::io::Write;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Value};
use weft_injector::annotations::INJECT;
use weft_injector::config::PROXY_CONTAINER;

use super::api::items;
use super::report::{Finding, Report};
use super::Ctx;

pub const WEBHOOK: &str = "weft-proxy-injector";
pub const SERVING_SECRET: &str = "weft-injector-tls";
const MWC_PATH: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const MWC: &str = "mutatingwebhookconfigurations.admissionregistration.k8s.io";

/// Names that give away another mesh's proxy injector.
const OTHER_MESHES: &[&str] =
    &["linkerd", "istio", "kuma", "consul", "osm", "open-service-mesh", "sidecar-injector"];

pub async fn check_pre<W: Write>(report: &mut Report<W>, ctx: &Ctx) {
    report.category("pre-kubernetes-webhooks");
    let list = match ctx.api.get::<Value>(MWC_PATH, MWC).await {
        Ok(l) => l,
        Err(e) => {
            report.add(
                "no other service mesh's injector mutates pods",
                Finding::error(e.to_string(), e.hint()),
            );
            return;
        }
    };
    let conflicts = conflicting(items(&list));
    let finding = if conflicts.is_empty() {
        Finding::ok()
    } else {
        Finding::error(
            format!(
                "{}\ninjects pods too: a pod meshed twice gets two proxies fighting over its traffic",
                conflicts.join("\n")
            ),
            "uninstall the other mesh first (weft uses Linkerd's resource kinds, so one mesh per cluster)",
        )
    };
    report.add("no other service mesh's injector mutates pods", finding);
    let installed =
        items(&list).iter().any(|w| w.pointer("/metadata/name").and_then(Value::as_str) == Some(WEBHOOK));
    let finding = if installed {
        Finding::warning(
            format!("mutatingwebhookconfiguration/{WEBHOOK} exists: weft is installed already"),
            "`weft check` to check it; `helm upgrade` rather than install",
        )
    } else {
        Finding::ok()
    };
    report.add("weft's webhook is not installed yet", finding);
}

/// Webhook configurations other than weft's, from another mesh, with a
/// webhook on pod creation.
pub fn conflicting(configurations: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for c in configurations {
        let name = c.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
        if name == WEBHOOK {
            continue;
        }
        for w in c.get("webhooks").and_then(Value::as_array).into_iter().flatten() {
            let hook = w.get("name").and_then(Value::as_str).unwrap_or("");
            let svc = w.pointer("/clientConfig/service/name").and_then(Value::as_str).unwrap_or("");
            let svc_ns = w.pointer("/clientConfig/service/namespace").and_then(Value::as_str).unwrap_or("");
            let text = format!("{name} {hook} {svc} {svc_ns}").to_ascii_lowercase();
            let mesh = OTHER_MESHES.iter().any(|m| text.contains(m));
            if mesh && creates_pods(w) {
                out.push(format!("mutatingwebhookconfiguration/{name} (webhook {hook})"));
            }
        }
    }
    out
}

fn creates_pods(w: &Value) -> bool {
    let has = |rule: &Value, key: &str, want: &str| {
        rule.get(key).and_then(Value::as_array).into_iter().flatten().any(|v| v == want || v == "*")
    };
    w.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| has(r, "resources", "pods") && has(r, "operations", "CREATE") && has(r, "apiGroups", ""))
}

pub async fn check<W: Write>(report: &mut Report<W>, ctx: &Ctx) {
    report.category("weft-webhook");
    let webhook =
        match ctx.api.get::<MutatingWebhookConfiguration>(&format!("{MWC_PATH}/{WEBHOOK}"), MWC).await {
            Ok(c) => c.webhooks.and_then(|w| w.into_iter().next()),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                report.add("webhook configuration exists", Finding::error(e.to_string(), e.hint()));
                return;
            }
        };
    let Some(webhook) = webhook else {
        report.add(
            "webhook configuration exists",
            Finding::error(
                format!("mutatingwebhookconfiguration/{WEBHOOK} does not exist or has no webhook: no pod is injected"),
                "charts/weft/README.md to install weft",
            ),
        );
        return;
    };
    report.add("webhook configuration exists", Finding::ok());

    let finding = ca_bundle(ctx, &webhook).await;
    report.add("webhook's caBundle verifies the injector's serving certificate", finding);

    let svc = webhook.client_config.service.as_ref();
    if let Some(svc) = svc {
        let finding = endpoints(ctx, &svc.namespace, &svc.name).await;
        report.add("injector Service has ready endpoints", finding);
    }

    let finding = dry_run(ctx).await;
    report.add("a dry-run pod in an annotated namespace is injected", finding);
}

/// The name the API server checks the injector's certificate against.
fn server_name(webhook: &MutatingWebhook) -> Option<String> {
    let cc = &webhook.client_config;
    if let Some(svc) = &cc.service {
        return Some(format!("{}.{}.svc", svc.name, svc.namespace));
    }
    let url = cc.url.as_deref()?;
    let uri: http::Uri = url.parse().ok()?;
    uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

async fn ca_bundle(ctx: &Ctx, webhook: &MutatingWebhook) -> Finding {
    let ns = webhook
        .client_config
        .service
        .as_ref()
        .map(|s| s.namespace.clone())
        .unwrap_or_else(|| ctx.cpns.clone());
    let hint = "charts/weft/README.md, \"Webhook certificate\": `helm upgrade` renders the caBundle and the Secret together";
    let Some(bundle) = webhook.client_config.ca_bundle.as_ref().filter(|b| !b.0.is_empty()) else {
        return Finding::error(format!("webhook {} has no caBundle", webhook.name), hint);
    };
    let Some(name) = server_name(webhook) else {
        return Finding::error(format!("webhook {} has neither a service nor a URL", webhook.name), hint);
    };
    let secret = match ctx
        .api
        .get::<Secret>(
            &format!("/api/v1/namespaces/{ns}/secrets/{SERVING_SECRET}"),
            &format!("secrets in namespace {ns}"),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return Finding::error(e.to_string(), e.hint()),
    };
    let Some(crt) = secret.data.as_ref().and_then(|d| d.get("tls.crt")) else {
        return Finding::error(format!("secret/{SERVING_SECRET} has no tls.crt"), hint);
    };
    match verify(&bundle.0, &crt.0, &name, UnixTime::now()) {
        Ok(()) => Finding::ok(),
        Err(why) => Finding::error(
            format!("the API server would refuse the injector's certificate (secret/{SERVING_SECRET}) for {name}: {why}"),
            hint,
        ),
    }
}

/// Verifies `chain_pem` (the serving certificate, then intermediates) for
/// `name` against `bundle_pem` as the API server does.
pub fn verify(bundle_pem: &[u8], chain_pem: &[u8], name: &str, now: UnixTime) -> Result<(), String> {
    let roots = weft_tls::pem::parse_cert_chain(bundle_pem).map_err(|e| format!("caBundle: {e}"))?;
    let chain = weft_tls::pem::parse_cert_chain(chain_pem).map_err(|e| format!("tls.crt: {e}"))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("tls.crt holds no certificate".into());
    };
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root).map_err(|e| format!("caBundle: {e}"))?;
    }
    if store.is_empty() {
        return Err("the caBundle holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| format!("caBundle: {e}"))?;
    let server = ServerName::try_from(name.to_string()).map_err(|e| format!("{name}: {e}"))?;
    let intermediates: Vec<CertificateDer<'static>> = intermediates.to_vec();
    verifier
        .verify_server_cert(leaf, &intermediates, &server, &[], now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn endpoints(ctx: &Ctx, ns: &str, svc: &str) -> Finding {
    let path = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{svc}");
    let list = match ctx
        .api
        .get::<Value>(&path, &format!("endpointslices.discovery.k8s.io in namespace {ns}"))
        .await
    {
        Ok(l) => l,
        Err(e) => return Finding::error(e.to_string(), e.hint()),
    };
    let ready = ready_endpoints(items(&list), svc);
    if ready > 0 {
        return Finding::ok();
    }
    Finding::error(
        format!("service/{svc} in namespace {ns} has no ready endpoint: the API server cannot reach the injector, so pods are created without a proxy (failurePolicy Ignore) or not at all (Fail)"),
        format!("`kubectl -n {ns} get pods -l app.kubernetes.io/name=weft-injector` and its logs"),
    )
}

/// Ready addresses of `svc`'s slices (a slice of another Service, which a
/// server ignoring the selector might send, does not count).
pub fn ready_endpoints(slices: &[Value], svc: &str) -> usize {
    slices
        .iter()
        .filter(|s| {
            s.pointer("/metadata/labels")
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .and_then(Value::as_str)
                == Some(svc)
        })
        .flat_map(|s| s.get("endpoints").and_then(Value::as_array).into_iter().flatten())
        // The API: a missing `ready` means ready.
        .filter(|e| e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false))
        .map(|e| e.get("addresses").and_then(Value::as_array).map_or(0, Vec::len))
        .sum()
}

/// The pod the dry run creates: opted in by its own annotation too.
pub fn probe_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "weft-check-",
            "labels": {"app.kubernetes.io/created-by": "weft-check"},
            "annotations": {INJECT: "enabled"},
        },
        "spec": {"containers": [{"name": "check", "image": "registry.k8s.io/pause:3.10"}]},
    })
}

async fn dry_run(ctx: &Ctx) -> Finding {
    let namespaces = match ctx.api.get::<Value>("/api/v1/namespaces", "namespaces").await {
        Ok(l) => l,
        Err(e) => return Finding::error(e.to_string(), e.hint()),
    };
    let annotated = items(&namespaces).iter().filter_map(|n| {
        let name = n.pointer("/metadata/name").and_then(Value::as_str)?;
        let on = n.pointer("/metadata/annotations").and_then(|a| a.get(INJECT)).and_then(Value::as_str)
            == Some("enabled");
        (on && name != ctx.cpns && name != "kube-system").then_some(name)
    });
    let Some(ns) = annotated.min() else {
        return Finding::warning(
            format!("no namespace is annotated {INJECT}=enabled, so nothing is meshed yet; skipped"),
            format!("`kubectl annotate namespace NAME {INJECT}=enabled`, then `weft check` again"),
        );
    };
    let path = format!("/api/v1/namespaces/{ns}/pods?dryRun=All");
    let pod = match ctx.api.post(&path, &probe_pod(), "create", &format!("pods in namespace {ns}")).await {
        Ok(p) => p,
        Err(e) => return Finding::error(format!("dry-run create of a pod in namespace {ns}: {e}"), e.hint()),
    };
    let names: Vec<&str> = ["/spec/initContainers", "/spec/containers"]
        .iter()
        .flat_map(|p| pod.pointer(p).and_then(Value::as_array).into_iter().flatten())
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    if names.contains(&PROXY_CONTAINER) {
        return Finding::ok();
    }
    Finding::error(
        format!(
            "a pod created (dry run) in namespace {ns} came back without {PROXY_CONTAINER} (containers: {}): the API server did not call the injector, or the injector did not inject",
            names.join(", ")
        ),
        format!(
            "the injector's logs (`kubectl -n {} logs deploy/weft-injector`) and the webhook's namespaceSelector (with webhook.onlyLabelledNamespaces the namespace needs the label {INJECT}=enabled too)",
            ctx.cpns
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_meshes_injectors_conflict() {
        let ours: Value = crate::check::fixture("mutatingwebhookconfiguration.json");
        assert!(conflicting(std::slice::from_ref(&ours)).is_empty());
        let mut linkerd = ours.clone();
        linkerd["metadata"]["name"] = json!("linkerd-proxy-injector-webhook-config");
        linkerd["webhooks"][0]["name"] = json!("linkerd-proxy-injector.linkerd.io");
        let mut unrelated = ours.clone();
        unrelated["metadata"]["name"] = json!("cert-manager-webhook");
        unrelated["webhooks"][0]["name"] = json!("webhook.cert-manager.io");
        let found = conflicting(&[ours, linkerd, unrelated]);
        assert_eq!(found, ["mutatingwebhookconfiguration/linkerd-proxy-injector-webhook-config (webhook linkerd-proxy-injector.linkerd.io)"]);
    }

    #[test]
    fn counts_ready_endpoints_of_the_service() {
        let list: Value = crate::check::fixture("endpointslices-emojivoto.list.json");
        // web-svc: web-v1-1 was ready at LIST time, web-v1-2 terminating.
        assert!(ready_endpoints(items(&list), "web-svc") >= 1);
        assert_eq!(ready_endpoints(items(&list), "weft-injector"), 0);
    }
}
