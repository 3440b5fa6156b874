//! Kubernetes side of `weft tap`: which pods a resource means, and a gRPC
//! channel to each one's tap port through the API server's port-forward
//! (the tap port is loopback-only in the pod, so this is the only way in,
//! and RBAC on `pods/portforward` decides who may use it).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::Client;
use tonic::transport::Endpoint;

use super::Target;

/// The container the injector adds; a pod without it has no tap port.
const PROXY_CONTAINER: &str = weft_injector::config::PROXY_CONTAINER;

/// What a resource resolved to: the namespace its pods live in (`ns/NAME`
/// names its own), the pods to tap, and the pods it names that cannot be
/// tapped, with why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub namespace: String,
    pub pods: Vec<String>,
    pub skipped: Vec<(String, String)>,
}

/// Why a pod of the resource cannot be tapped.
#[derive(Debug, PartialEq, Eq)]
enum Untappable {
    Terminating,
    NotMeshed,
    NotRunning(String),
    NoSpec,
}

impl std::fmt::Display for Untappable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untappable::Terminating => f.write_str("terminating"),
            Untappable::NotMeshed => write!(f, "not meshed (no {PROXY_CONTAINER} container)"),
            Untappable::NotRunning(phase) => write!(f, "not running yet (phase {phase})"),
            Untappable::NoSpec => f.write_str("no spec"),
        }
    }
}

pub async fn targets(
    config: kube::Config,
    resource: &str,
    namespace: Option<&str>,
    tap_port: u16,
) -> Result<Vec<Target>> {
    let ns = namespace.map(str::to_string).unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("cannot build a Kubernetes client from the kubeconfig")?;
    let resolved = resolve(client.clone(), resource, &ns).await?;
    for (pod, why) in &resolved.skipped {
        eprintln!("weft tap: skipping pod/{pod}: {why}");
    }
    let (targets, unreachable) = connect(client, &resolved, tap_port).await;
    for (pod, why) in &unreachable {
        eprintln!("weft tap: skipping pod/{pod}: {why}");
    }
    if targets.is_empty() {
        bail!(
            "cannot port-forward to any pod of {resource} in namespace {} (port {tap_port})",
            resolved.namespace
        );
    }
    Ok(targets)
}

/// Opens a port-forward to each resolved pod's tap port. A pod that cannot
/// be reached (its kubelet down, RBAC) is reported, not fatal: the others
/// are still worth watching.
async fn connect(client: Client, resolved: &Resolved, tap_port: u16) -> (Vec<Target>, Vec<(String, String)>) {
    let mut targets = Vec::new();
    let mut unreachable = Vec::new();
    for pod in &resolved.pods {
        let pods = Api::namespaced(client.clone(), &resolved.namespace);
        match port_forward_channel(pods, pod.clone(), tap_port).await {
            Ok(channel) => targets.push(Target { name: format!("pod/{pod}"), channel }),
            Err(e) => unreachable.push((pod.clone(), port_forward_error(&e, tap_port))),
        }
    }
    (targets, unreachable)
}

/// What went wrong opening a port-forward, said once: the API server's own
/// answer when it gave one (only a 403 is about RBAC), else the root cause.
fn port_forward_error(e: &anyhow::Error, port: u16) -> String {
    let api = e.chain().find_map(|c| match c.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => Some(status),
        _ => None,
    });
    match api {
        Some(s) if s.code == 403 => format!(
            "forbidden: {} (tapping needs `create` on pods/portforward in the pod's namespace)",
            s.message
        ),
        Some(s) => {
            format!("the API server answered {} to the port-forward of port {port}: {}", s.code, s.message)
        }
        None => format!("cannot port-forward to port {port}: {}", e.root_cause()),
    }
}

/// A channel whose every (re)connection opens a fresh port-forward.
async fn port_forward_channel(pods: Api<Pod>, pod: String, port: u16) -> Result<tonic::transport::Channel> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let (pods, pod) = (pods.clone(), pod.clone());
        // A boxed kube::Error, not an anyhow one, so port_forward_error can
        // find the API server's Status in the chain tonic wraps it in.
        async move {
            let mut forwarder = pods.portforward(&pod, &[port]).await?;
            let stream = forwarder
                .take_stream(port)
                .ok_or_else(|| format!("the API server gave no stream for port {port}"))?;
            // The forwarder pumps bytes until the stream closes; keep it
            // running beside the connection.
            tokio::spawn(async move {
                let _ = forwarder.join().await;
            });
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(stream))
        }
    });
    // The URI is only a placeholder: the connector decides where bytes go.
    Ok(Endpoint::from_static("http://tap.pod").connect_with_connector(connector).await?)
}

/// `kind/name` → the pods to tap.
pub async fn resolve(client: Client, resource: &str, ns: &str) -> Result<Resolved> {
    let (kind, name) = resource.split_once('/').filter(|(k, n)| !k.is_empty() && !n.is_empty()).ok_or_else(|| {
        anyhow!("{resource:?} is not KIND/NAME; use deploy/NAME, sts/NAME, ds/NAME, rs/NAME, job/NAME, svc/NAME, pod/NAME or ns/NAME")
    })?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let what = format!("{kind}/{name} in namespace {ns}");
    let mut resolved = Resolved { namespace: ns.to_string(), ..Resolved::default() };
    let candidates: Vec<Pod> = match kind.to_ascii_lowercase().as_str() {
        "po" | "pod" | "pods" => vec![pods.get(name).await.map_err(|e| api_error(e, &what))?],
        "ns" | "namespace" | "namespaces" => {
            resolved.namespace = name.to_string();
            Api::<Pod>::namespaced(client, name)
                .list(&ListParams::default())
                .await
                .map_err(|e| api_error(e, &what))?
                .items
        }
        "svc" | "service" | "services" => {
            let svc =
                Api::<Service>::namespaced(client, ns).get(name).await.map_err(|e| api_error(e, &what))?;
            let selector = svc.spec.and_then(|s| s.selector).filter(|s| !s.is_empty()).ok_or_else(|| {
                anyhow!("{what} has no pod selector (a headless or external Service); tap its pods instead")
            })?;
            select(&pods, &LabelSelector { match_labels: Some(selector), match_expressions: None }, &what)
                .await?
        }
        k => {
            let selector = match k {
                "deploy" | "deployment" | "deployments" => {
                    Api::<Deployment>::namespaced(client, ns).get(name).await.map(|d| d.spec.map(|s| s.selector))
                }
                "sts" | "statefulset" | "statefulsets" => {
                    Api::<StatefulSet>::namespaced(client, ns).get(name).await.map(|d| d.spec.map(|s| s.selector))
                }
                "ds" | "daemonset" | "daemonsets" => {
                    Api::<DaemonSet>::namespaced(client, ns).get(name).await.map(|d| d.spec.map(|s| s.selector))
                }
                "rs" | "replicaset" | "replicasets" => {
                    Api::<ReplicaSet>::namespaced(client, ns).get(name).await.map(|d| d.spec.map(|s| s.selector))
                }
                "job" | "jobs" => {
                    Api::<Job>::namespaced(client, ns).get(name).await.map(|d| d.spec.and_then(|s| s.selector))
                }
                _ => bail!(
                    "cannot tap a {kind:?}; use deploy/NAME, sts/NAME, ds/NAME, rs/NAME, job/NAME, svc/NAME, pod/NAME or ns/NAME"
                ),
            }
            .map_err(|e| api_error(e, &what))?
            .ok_or_else(|| anyhow!("{what} has no pod selector"))?;
            select(&pods, &selector, &what).await?
        }
    };
    let mut unmeshed = false;
    for pod in candidates {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match tappable(&pod) {
            Ok(()) => resolved.pods.push(name),
            Err(why) => {
                unmeshed |= why == Untappable::NotMeshed;
                resolved.skipped.push((name, why.to_string()));
            }
        }
    }
    resolved.pods.sort();
    resolved.skipped.sort();
    if resolved.pods.is_empty() {
        if resolved.skipped.is_empty() {
            bail!("{what} has no pods");
        }
        let why: Vec<String> = resolved.skipped.iter().map(|(p, w)| format!("pod/{p}: {w}")).collect();
        // The hint fits the reason: meshing helps only pods without a proxy.
        let hint = if unmeshed {
            "mesh the workload with `weft inject` or the namespace annotation weft.io/inject=enabled"
        } else {
            "its meshed pods are not running yet or are going away; see `kubectl get pods`"
        };
        bail!("{what} has no pod to tap ({}); {hint}", why.join("; "));
    }
    Ok(resolved)
}

/// Lists the selector's pods: filtered by the API server, and again here so
/// a server (or proxy) that ignores the selector cannot widen the tap.
async fn select(pods: &Api<Pod>, selector: &LabelSelector, what: &str) -> Result<Vec<Pod>> {
    let query = selector_query(selector);
    if query.is_empty() {
        bail!("{what} has an empty selector; it would match every pod, refusing to guess");
    }
    let list = pods.list(&ListParams::default().labels(&query)).await.map_err(|e| api_error(e, what))?;
    Ok(list.items.into_iter().filter(|p| selects(selector, p.metadata.labels.as_ref())).collect())
}

/// A LabelSelector in the API's `labelSelector` query syntax.
fn selector_query(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

fn selects(s: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let labels_ok = s.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Why a pod cannot be tapped, if it cannot.
fn tappable(pod: &Pod) -> Result<(), Untappable> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Untappable::Terminating);
    }
    let spec = pod.spec.as_ref().ok_or(Untappable::NoSpec)?;
    let meshed = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    if !meshed {
        return Err(Untappable::NotMeshed);
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    if phase != "Running" {
        return Err(Untappable::NotRunning(phase.to_string()));
    }
    Ok(())
}

fn api_error(e: kube::Error, what: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => anyhow!("{what} not found"),
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "not allowed to read {what}: {} (tapping needs get/list on the workload and pods, and create on pods/portforward)",
            s.message
        ),
        _ => anyhow::Error::new(e).context(format!("cannot read {what} from the Kubernetes API")),
    }
}

#[cfg(test)]
mod tests {
    //! Resolution against a local HTTP server that replays the pod LIST a
    //! real kube-apiserver answered (tests/fixtures/kubernetes).

    use super::*;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::{Request, Response};
    use serde_json::{json, Value};

    fn fixture() -> Value {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kubernetes/pods-emojivoto.list.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The API paths the fake server answers. The Deployment is written
    /// here (the fixtures hold none): only its selector matters.
    fn answer(path: &str, pods: &Value, services: &Value) -> (u16, Value) {
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
        let ns_pods = "/api/v1/namespaces/emojivoto/pods";
        match path {
            p if p == ns_pods => (200, pods.clone()),
            // What a real apiserver answers when it cannot reach the node's
            // kubelet, and when RBAC denies the port-forward.
            "/api/v1/namespaces/emojivoto/pods/web-v1-0/portforward" => (
                500,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 500,
                       "message": "error dialing backend: dial tcp 10.0.0.1:10250: connect: connection refused"}),
            ),
            "/api/v1/namespaces/emojivoto/pods/web-v1-1/portforward" => (
                403,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
                       "message": "pods \"web-v1-1\" is forbidden: User \"dev\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"emojivoto\""}),
            ),
            // A meshed pod the scheduler has not placed yet.
            "/api/v1/namespaces/emojivoto/pods/web-v1-pending" => {
                let mut pod = pods["items"][0].clone();
                pod["kind"] = json!("Pod");
                pod["apiVersion"] = json!("v1");
                pod["metadata"]["name"] = json!("web-v1-pending");
                pod["status"] = json!({"phase": "Pending"});
                (200, pod)
            }
            p if p.starts_with(&format!("{ns_pods}/")) => {
                let name = &p[ns_pods.len() + 1..];
                match pods["items"].as_array().unwrap().iter().find(|i| i["metadata"]["name"] == name) {
                    Some(pod) => {
                        let mut pod = pod.clone();
                        pod["kind"] = json!("Pod");
                        pod["apiVersion"] = json!("v1");
                        (200, pod)
                    }
                    None => (404, not_found),
                }
            }
            "/api/v1/namespaces/emojivoto/services/web-svc" => {
                let mut svc = services["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["metadata"]["name"] == "web-svc")
                    .unwrap()
                    .clone();
                svc["kind"] = json!("Service");
                svc["apiVersion"] = json!("v1");
                (200, svc)
            }
            "/apis/apps/v1/namespaces/emojivoto/deployments/web-v1" => (
                200,
                json!({
                    "kind": "Deployment", "apiVersion": "apps/v1",
                    "metadata": {"name": "web-v1", "namespace": "emojivoto"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "version", "operator": "In", "values": ["v1"]}]},
                        "template": {"metadata": {"labels": {"app": "web", "version": "v1"}}, "spec": {"containers": [{"name": "web", "image": "web"}]}}
                    }
                }),
            ),
            _ => (404, not_found),
        }
    }

    async fn server(seen: Arc<Mutex<Vec<String>>>) -> String {
        let pods = Arc::new(fixture());
        let services: Arc<Value> = Arc::new(
            serde_json::from_str(
                &std::fs::read_to_string(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/fixtures/kubernetes/services-emojivoto.list.json"
                ))
                .unwrap(),
            )
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (pods, services, seen) = (pods.clone(), services.clone(), seen.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(req.uri().to_string());
                        let (code, body) = answer(req.uri().path(), &pods, &services);
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    async fn client(seen: Arc<Mutex<Vec<String>>>) -> Client {
        let url = server(seen).await;
        Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn resources_resolve_to_meshed_running_pods() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let c = client(seen.clone()).await;

        // Service selector app=web: the v2 pods have no proxy, v1-2 is terminating.
        let r = resolve(c.clone(), "svc/web-svc", "emojivoto").await.unwrap();
        assert_eq!(r.pods, names(&["web-v1-0", "web-v1-1"]));
        assert_eq!(
            r.skipped,
            vec![
                ("web-v1-2".to_string(), "terminating".to_string()),
                ("web-v2-0".to_string(), "not meshed (no weft-proxy container)".to_string()),
                ("web-v2-1".to_string(), "not meshed (no weft-proxy container)".to_string()),
            ]
        );
        assert!(seen.lock().unwrap().iter().any(|u| u.contains("labelSelector=app%3Dweb")), "{seen:?}");

        // The replayed LIST ignores the selector; the client filters again.
        let r = resolve(c.clone(), "deploy/web-v1", "emojivoto").await.unwrap();
        assert_eq!(r.pods, names(&["web-v1-0", "web-v1-1"]));
        assert_eq!(r.skipped.len(), 1);
        assert!(seen.lock().unwrap().iter().any(|u| u.contains("version+in+%28v1%29")), "{seen:?}");

        // ns/NAME taps the pods of NAME, whatever the context's namespace.
        let r = resolve(c.clone(), "ns/emojivoto", "default").await.unwrap();
        assert_eq!(r.pods, names(&["voting-0", "web-v1-0", "web-v1-1"]));
        assert_eq!(r.namespace, "emojivoto");
        assert!(
            seen.lock().unwrap().iter().any(|u| u.starts_with("/api/v1/namespaces/emojivoto/pods?")),
            "{seen:?}"
        );
        let r = resolve(c.clone(), "svc/web-svc", "emojivoto").await.unwrap();
        assert_eq!(r.namespace, "emojivoto");

        let r = resolve(c.clone(), "po/voting-0", "emojivoto").await.unwrap();
        assert_eq!(r.pods, names(&["voting-0"]));
    }

    #[tokio::test]
    async fn errors_name_the_problem_and_the_fix() {
        let c = client(Arc::new(Mutex::new(Vec::new()))).await;
        let e = format!("{:#}", resolve(c.clone(), "pod/voting-1", "emojivoto").await.unwrap_err());
        assert!(e.contains("not meshed") && e.contains("weft inject"), "{e}");
        // A meshed pod that is not running yet needs no meshing, only time.
        let e = format!("{:#}", resolve(c.clone(), "pod/web-v1-pending", "emojivoto").await.unwrap_err());
        assert!(e.contains("not running yet (phase Pending)") && !e.contains("weft inject"), "{e}");
        let e = format!("{:#}", resolve(c.clone(), "deploy/nope", "emojivoto").await.unwrap_err());
        assert_eq!(e, "deploy/nope in namespace emojivoto not found");
        let e = format!("{:#}", resolve(c.clone(), "cm/x", "emojivoto").await.unwrap_err());
        assert!(e.contains("cannot tap a \"cm\""), "{e}");
        let e = format!("{:#}", resolve(c, "web", "emojivoto").await.unwrap_err());
        assert!(e.contains("not KIND/NAME"), "{e}");
    }

    #[tokio::test]
    async fn port_forward_failures_say_what_the_api_said_and_spare_the_other_pods() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let c = client(seen.clone()).await;
        let resolved = resolve(c.clone(), "ns/emojivoto", "default").await.unwrap();
        let (targets, unreachable) = connect(c, &resolved, 4190).await;
        // The fake server answers voting-0's port-forward 404: every pod is
        // tried, and no failure aborts the rest.
        assert!(targets.is_empty());
        let why: BTreeMap<_, _> = unreachable.into_iter().collect();
        assert_eq!(why.len(), 3, "{why:?}");
        let kubelet = &why["web-v1-0"];
        assert!(kubelet.contains("answered 500") && kubelet.contains("connection refused"), "{kubelet}");
        assert!(!kubelet.contains("RBAC") && !kubelet.contains("pods/portforward"), "{kubelet}");
        assert_eq!(kubelet.matches("error dialing backend").count(), 1, "{kubelet}");
        let rbac = &why["web-v1-1"];
        assert!(
            rbac.starts_with("forbidden: pods \"web-v1-1\" is forbidden")
                && rbac.contains("pods/portforward"),
            "{rbac}"
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().any(|u| u.starts_with("/api/v1/namespaces/emojivoto/pods/voting-0/portforward?")
                && u.ends_with("ports=4190")),
            "{seen:?}"
        );
    }
}
