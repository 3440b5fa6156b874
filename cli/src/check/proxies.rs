//! `weft-data-plane` (`--proxy`): the meshed pods' weft-proxy containers are
//! ready, hold a valid certificate, and run the control plane's version.
//! Certificates and versions come from each proxy's admin `/metrics`
//! (`identity_cert_expiration_timestamp_seconds`, `proxy_build_info`),
//! read through the API server's pods proxy subresource.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use weft_injector::config::{ADMIN_PORT, PROXY_CONTAINER};

use super::api::items;
use super::report::{Finding, Report};
use super::Ctx;
use crate::demo::metrics::samples;
use crate::identity::inspect::human;

/// Pods whose metrics are read, at most: a check, not a scrape.
const MAX_SCRAPES: usize = 50;

pub async fn check<W: Write>(
    report: &mut Report<W>,
    ctx: &Ctx,
    namespace: Option<&str>,
    version: Option<&str>,
) {
    report.category("weft-data-plane");
    let (path, what) = match namespace {
        Some(ns) => {
            match ctx.api.get::<Value>(&format!("/api/v1/namespaces/{ns}"), &format!("namespace {ns}")).await
            {
                Ok(_) => report.add("data plane namespace exists", Finding::ok()),
                Err(e) => {
                    let f = if e.is_not_found() {
                        Finding::error(
                            format!("namespace {ns} does not exist"),
                            "-n: `kubectl get namespaces`",
                        )
                    } else {
                        Finding::error(e.to_string(), e.hint())
                    };
                    report.add("data plane namespace exists", f);
                    return;
                }
            };
            (format!("/api/v1/namespaces/{ns}/pods"), format!("pods in namespace {ns}"))
        }
        None => ("/api/v1/pods".to_string(), "pods in all namespaces".to_string()),
    };
    let list = match ctx.api.get::<Value>(&path, &what).await {
        Ok(l) => l,
        Err(e) => {
            report.add("data plane proxies are ready", Finding::error(e.to_string(), e.hint()));
            return;
        }
    };
    let meshed: Vec<&Value> = items(&list).iter().filter(|p| proxy_of(p).is_some()).collect();
    if meshed.is_empty() {
        report.add(
            "data plane proxies are ready",
            Finding::warning(
                format!("no meshed pod among {what}"),
                "`kubectl annotate namespace NAME weft.io/inject=enabled` and restart its workloads",
            ),
        );
        return;
    }

    let mut not_ready = Vec::new();
    let mut ready = Vec::new();
    for pod in &meshed {
        // Pods on their way out or finished are not the data plane's problem.
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        if pod.pointer("/metadata/deletionTimestamp").is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            continue;
        }
        match proxy_not_ready(pod) {
            Some(why) => not_ready.push(format!("{}: {why}", pod_name(pod))),
            None => ready.push(*pod),
        }
    }
    let finding = if not_ready.is_empty() {
        Finding::ok()
    } else {
        Finding::error(not_ready.join("\n"), "`kubectl describe pod` and `kubectl logs POD -c weft-proxy`")
    };
    report.add("data plane proxies are ready", finding);

    let mut certificate_problems = Vec::new();
    let mut unreadable = Vec::new();
    let mut versions_off = Vec::new();
    for pod in ready.iter().take(MAX_SCRAPES) {
        let (ns, name) = (pod_namespace(pod), pod_name(pod));
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}:{ADMIN_PORT}/proxy/metrics");
        let text = match ctx.api.get_text(&path, &format!("pods/proxy in namespace {ns}")).await {
            Ok(t) => t,
            Err(e) => {
                unreadable.push(format!("{ns}/{name}: {e}"));
                continue;
            }
        };
        let m = ProxyMetrics::parse(&text);
        match m.cert_expiry {
            None => certificate_problems.push(format!("{ns}/{name}: no certificate yet")),
            Some(expiry) => {
                let now = ctx.now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                if expiry <= now {
                    let ago = Duration::from_secs_f64((now - expiry).max(0.0));
                    certificate_problems.push(format!("{ns}/{name}: certificate expired {} ago", human(ago)));
                }
            }
        }
        match (&m.version, version) {
            (Some(v), Some(want)) if v == want => {}
            (Some(v), Some(want)) => versions_off.push(format!("{ns}/{name}: {v} (control plane: {want})")),
            (None, _) => versions_off.push(format!("{ns}/{name}: reports no version (no proxy_build_info)")),
            (Some(_), None) => {}
        }
    }
    let mut problems = certificate_problems;
    problems.extend(unreadable.iter().cloned());
    let finding = if problems.is_empty() {
        Finding::ok()
    } else {
        Finding::error(
            problems.join("\n"),
            "the proxy's logs (`kubectl logs POD -c weft-proxy`) and `weft check` for weft-identity",
        )
    };
    report.add("data plane proxies certificates are valid", finding);

    let description = match version {
        Some(v) => format!("data plane proxies run the control plane's version ({v})"),
        None => "data plane proxies run the control plane's version".to_string(),
    };
    let finding = if version.is_none() {
        Finding::warning(
            "the control plane's Deployments carry no app.kubernetes.io/version label to compare with",
            "`weft check` for the control plane",
        )
    } else if versions_off.is_empty() {
        Finding::ok()
    } else {
        Finding::warning(
            versions_off.join("\n"),
            "restart the workloads (`kubectl rollout restart`) so the injector gives them the current proxy",
        )
    };
    report.add(description, finding);
}

fn pod_name(pod: &Value) -> &str {
    pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?")
}

fn pod_namespace(pod: &Value) -> &str {
    pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default")
}

/// The pod's weft-proxy container spec, if it is meshed.
fn proxy_of(pod: &Value) -> Option<&Value> {
    ["/spec/initContainers", "/spec/containers"]
        .iter()
        .flat_map(|p| pod.pointer(p).and_then(Value::as_array).into_iter().flatten())
        .find(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER))
}

/// Why the pod's proxy is not ready, if it is not.
pub fn proxy_not_ready(pod: &Value) -> Option<String> {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Some("terminating".into());
    }
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Unknown");
    let status = ["/status/initContainerStatuses", "/status/containerStatuses"]
        .iter()
        .flat_map(|p| pod.pointer(p).and_then(Value::as_array).into_iter().flatten())
        .find(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER));
    let Some(status) = status else {
        return Some(format!("phase {phase}, no {PROXY_CONTAINER} status yet"));
    };
    if status.get("ready").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let waiting = status.pointer("/state/waiting/reason").and_then(Value::as_str);
    let restarts = status.get("restartCount").and_then(Value::as_u64).unwrap_or(0);
    Some(match waiting {
        Some(reason) => format!("{PROXY_CONTAINER} not ready ({reason}, {restarts} restarts)"),
        None => format!("{PROXY_CONTAINER} not ready (phase {phase}, {restarts} restarts)"),
    })
}

#[derive(Debug, Default, PartialEq)]
pub struct ProxyMetrics {
    pub cert_expiry: Option<f64>,
    pub version: Option<String>,
}

impl ProxyMetrics {
    pub fn parse(text: &str) -> Self {
        let mut m = ProxyMetrics::default();
        for (name, labels, value) in samples(text) {
            match name {
                "identity_cert_expiration_timestamp_seconds" if value > 0.0 => m.cert_expiry = Some(value),
                "proxy_build_info" => m.version = labels.get("version").cloned(),
                _ => {}
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_certificate_and_version_from_metrics() {
        let text = "# TYPE proxy_build_info gauge\nproxy_build_info{version=\"0.1.0\"} 1\n\
                    identity_cert_expiration_timestamp_seconds 1800000000\nrequest_total{direction=\"inbound\"} 3\n";
        assert_eq!(
            ProxyMetrics::parse(text),
            ProxyMetrics { cert_expiry: Some(1_800_000_000.0), version: Some("0.1.0".into()) }
        );
        assert_eq!(
            ProxyMetrics::parse("identity_cert_expiration_timestamp_seconds 0\n"),
            ProxyMetrics::default()
        );
    }

    #[test]
    fn captured_pods_readiness() {
        let list: Value = crate::check::fixture("pods-emojivoto.list.json");
        let meshed: Vec<(&str, Option<String>)> = items(&list)
            .iter()
            .filter(|p| proxy_of(p).is_some())
            .map(|p| (pod_name(p), proxy_not_ready(p)))
            .collect();
        assert!(meshed.iter().any(|(n, why)| *n == "web-v1-0" && why.is_none()), "{meshed:?}");
        assert!(
            meshed.iter().any(|(n, why)| *n == "web-v1-2" && why.as_deref() == Some("terminating")),
            "{meshed:?}"
        );
        assert_eq!(meshed.len(), 4, "voting-0, web-v1-0, web-v1-1, web-v1-2: {meshed:?}");
    }
}
