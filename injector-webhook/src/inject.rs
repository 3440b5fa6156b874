//! The injection decision and the JSON patch that carries it out.
//!
//! Everything here is a pure function of the pod, its namespace and the
//! injector's configuration, so the webhook and `weft inject` cannot drift
//! apart and the logic is tested without a cluster.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use weft_proxy_init::PortRange;

use crate::annotations::{self, Annotations, ProxyOverrides};
use crate::config::{
    InjectorConfig, Resources, ADMIN_PORT, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER,
    PROXY_UID, TAP_PORT, TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_EXPIRATION_SECONDS, TOKEN_VOLUME,
    VALIDATOR_CONTAINER, VALIDATOR_UID, XTABLES_VOLUME,
};
use crate::patch::{escape, PatchOp};
use crate::redirect::redirect_config;

pub const CONTROL_PLANE_NS_LABEL: &str = "weft.io/control-plane-ns";
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Ports the proxy binds in the pod's network namespace; an app container
/// declaring one of them could not run next to it.
const PROXY_PORTS: [u16; 4] = [OUTBOUND_PORT, INBOUND_PORT, TAP_PORT, ADMIN_PORT];

/// The pod's namespace, as far as the decision needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: Option<String>,
    pub annotations: Annotations,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    AlreadyInjected,
    HostNetwork,
    ControlPlane,
    NotEnabled,
    Disabled,
    UnknownInjectValue(String),
    InvalidAnnotations,
    PortConflict(u16),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::AlreadyInjected => f.write_str("already injected"),
            SkipReason::HostNetwork => f.write_str("pod uses the host network"),
            SkipReason::ControlPlane => f.write_str("pod is in the control-plane namespace"),
            SkipReason::NotEnabled => f.write_str("injection not enabled for pod or namespace"),
            SkipReason::Disabled => f.write_str("injection disabled by annotation"),
            SkipReason::UnknownInjectValue(v) => {
                write!(f, "{}={v:?} is neither \"enabled\" nor \"disabled\"", annotations::INJECT)
            }
            SkipReason::InvalidAnnotations => f.write_str("invalid config.weft.io annotations"),
            SkipReason::PortConflict(p) => {
                write!(f, "an app container declares port {p}, which the proxy uses")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Injected,
    Skipped(SkipReason),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    /// Empty unless injected.
    pub patch: Vec<PatchOp>,
    /// For the user (AdmissionReview warnings, `weft inject` stderr).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("not a pod: {0}")]
    Malformed(String),
}

fn malformed(what: &str) -> InjectError {
    InjectError::Malformed(what.to_string())
}

fn optional_object<'a>(v: &'a Value, key: &str) -> Result<Option<&'a Map<String, Value>>, InjectError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(malformed(&format!("{key} is not an object"))),
    }
}

fn optional_array<'a>(v: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Vec<Value>>, InjectError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(malformed(&format!("spec.{key} is not an array"))),
    }
}

fn string_map(m: Option<&Map<String, Value>>, what: &str) -> Result<Annotations, InjectError> {
    let mut out = Annotations::new();
    for (k, v) in m.into_iter().flatten() {
        let v = v.as_str().ok_or_else(|| malformed(&format!("{what} {k} is not a string")))?;
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

fn container_name(c: &Value) -> Option<&str> {
    c.get("name").and_then(Value::as_str)
}

fn skipped(reason: SkipReason, warnings: Vec<String>) -> Outcome {
    Outcome { decision: Decision::Skipped(reason), patch: Vec::new(), warnings }
}

/// Decides whether `pod` (a Pod, or a pod template: an object with
/// `metadata` and `spec`) gets a proxy and, if so, returns the JSON patch
/// that adds it. Never mutates anything; an unparseable pod is an error and
/// the caller admits it unchanged.
pub fn inject(
    pod: &Value,
    namespace: &NamespaceInfo,
    config: &InjectorConfig,
) -> Result<Outcome, InjectError> {
    if !pod.is_object() {
        return Err(malformed("object is not a JSON object"));
    }
    let metadata = optional_object(pod, "metadata")?;
    let spec = optional_object(pod, "spec")?.ok_or_else(|| malformed("no spec"))?;
    let containers = optional_array(spec, "containers")?.ok_or_else(|| malformed("no spec.containers"))?;
    let init_containers = optional_array(spec, "initContainers")?;
    let empty = Vec::new();
    let all_containers = || containers.iter().chain(init_containers.unwrap_or(&empty));
    if all_containers().any(|c| !c.is_object()) {
        return Err(malformed("a container is not an object"));
    }
    let pod_annotations =
        string_map(metadata.and_then(|m| m.get("annotations")).and_then(Value::as_object), "annotation")?;

    if pod_annotations.contains_key(annotations::INJECTED)
        || all_containers().any(|c| {
            matches!(container_name(c), Some(PROXY_CONTAINER | INIT_CONTAINER | VALIDATOR_CONTAINER))
        })
    {
        return Ok(skipped(SkipReason::AlreadyInjected, Vec::new()));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(skipped(SkipReason::HostNetwork, Vec::new()));
    }
    let pod_namespace =
        metadata.and_then(|m| m.get("namespace")).and_then(Value::as_str).or(namespace.name.as_deref());
    if pod_namespace == Some(config.control_plane_namespace.as_str()) {
        return Ok(skipped(SkipReason::ControlPlane, Vec::new()));
    }
    let wanted =
        pod_annotations.get(annotations::INJECT).or_else(|| namespace.annotations.get(annotations::INJECT));
    match wanted.map(String::as_str) {
        Some("enabled") => {}
        Some("disabled") => return Ok(skipped(SkipReason::Disabled, Vec::new())),
        None => return Ok(skipped(SkipReason::NotEnabled, Vec::new())),
        Some(other) => {
            let reason = SkipReason::UnknownInjectValue(other.to_string());
            let warning = format!("weft: proxy not injected: {reason}");
            return Ok(skipped(reason, vec![warning]));
        }
    }

    let parsed = annotations::parse(&pod_annotations, &namespace.annotations, config);
    let mut warnings: Vec<String> = parsed.warnings.iter().map(|w| format!("weft: {w}")).collect();
    let mut overrides = match parsed.overrides {
        Ok(o) => o,
        Err(errors) => {
            warnings.extend(errors.iter().map(|e| format!("weft: proxy not injected: {e}")));
            return Ok(skipped(SkipReason::InvalidAnnotations, warnings));
        }
    };

    let app_ports = container_ports(all_containers())?;
    if let Some(p) = app_ports.iter().find(|p| PROXY_PORTS.contains(p)) {
        let reason = SkipReason::PortConflict(*p);
        warnings.push(format!("weft: proxy not injected: {reason}"));
        return Ok(skipped(reason, warnings));
    }
    let restarts = spec.get("restartPolicy").and_then(Value::as_str).unwrap_or("Always") == "Always";
    if overrides.native_sidecar && !config.native_sidecars() {
        // The cluster predates native sidecars: a plain container is the
        // only proxy it can run. Say so to whoever asked for a native one.
        overrides.native_sidecar = false;
        let version = config.kubernetes_version.map(|v| v.to_string()).unwrap_or_default();
        let asked = pod_annotations
            .get(annotations::NATIVE_SIDECAR)
            .or_else(|| namespace.annotations.get(annotations::NATIVE_SIDECAR));
        if asked.map(String::as_str) == Some("true") {
            warnings.push(format!(
                "weft: {}=true ignored: Kubernetes {version} has no native sidecars (1.29+); weft-proxy added as a plain container",
                annotations::NATIVE_SIDECAR
            ));
        }
        if !restarts {
            warnings.push(format!(
                "weft: Kubernetes {version} has no native sidecars (1.29+), so weft-proxy is a plain container: this pod, which does not restart, will not complete while the proxy runs"
            ));
        }
    } else if !overrides.native_sidecar && !restarts {
        warnings.push(format!(
            "weft: {}=false on a pod that does not restart: it will not complete while the proxy runs",
            annotations::NATIVE_SIDECAR
        ));
    }

    let grace = spec.get("terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30);
    let probes = http_probes(all_containers(), &redirect_config(&overrides).skip_inbound_ports);
    let proxy = proxy_container(config, &overrides, &app_ports, &probes, grace);
    // CNI mode: weft-cni writes the rules from the node (it keys on the
    // weft-proxy container and weft.io/injected, and leaves alone a pod that
    // has weft-proxy-init); the validator fails the pod if it did not.
    let init =
        if config.cni { validator_container(config, &overrides) } else { init_container(config, &overrides) };

    let mut ops = Vec::new();
    if metadata.is_none() {
        ops.push(PatchOp::Add { path: "/metadata".into(), value: json!({}) });
    }
    let mut new_annotations = vec![(annotations::INJECTED, "true".to_string())];
    if !pod_annotations.contains_key(DEFAULT_CONTAINER) {
        // Keeps `kubectl logs/exec` on the app, not on the proxy that may now
        // be the first container.
        if let Some(first) = containers.first().and_then(container_name) {
            new_annotations.push((DEFAULT_CONTAINER, first.to_string()));
        }
    }
    add_map_entries(&mut ops, metadata, "annotations", &new_annotations);
    add_map_entries(
        &mut ops,
        metadata,
        "labels",
        &[(CONTROL_PLANE_NS_LABEL, config.control_plane_namespace.clone())],
    );

    // proxy-init (or the validator) runs first; a native-sidecar proxy comes right after it, so
    // the pod's own init containers already run with a working proxy.
    let mut new_inits = vec![init];
    let mut regular_proxy = None;
    if overrides.native_sidecar {
        new_inits.push(proxy);
    } else {
        regular_proxy = Some(proxy);
    }
    if init_containers.is_none() {
        ops.push(PatchOp::Add { path: "/spec/initContainers".into(), value: Value::Array(new_inits) });
    } else {
        for (i, c) in new_inits.into_iter().enumerate() {
            ops.push(PatchOp::Add { path: format!("/spec/initContainers/{i}"), value: c });
        }
    }
    if let Some(proxy) = regular_proxy {
        // First, so its postStart hook holds back the app until it is ready.
        ops.push(PatchOp::Add { path: "/spec/containers/0".into(), value: proxy });
    }
    let mut volumes = vec![json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE,
                "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                "path": "token",
            }}]},
    })];
    if !config.cni {
        volumes.push(json!({"name": XTABLES_VOLUME, "emptyDir": {}}));
    }
    match optional_array(spec, "volumes")? {
        None => ops.push(PatchOp::Add { path: "/spec/volumes".into(), value: Value::Array(volumes) }),
        Some(_) => {
            ops.extend(volumes.into_iter().map(|v| PatchOp::Add { path: "/spec/volumes/-".into(), value: v }))
        }
    }

    Ok(Outcome { decision: Decision::Injected, patch: ops, warnings })
}

/// Adds entries to `metadata.<field>`, creating the map when absent (a
/// JSON-patch add into a missing parent fails the whole pod).
fn add_map_entries(
    ops: &mut Vec<PatchOp>,
    metadata: Option<&Map<String, Value>>,
    field: &str,
    entries: &[(&str, String)],
) {
    let exists = metadata.and_then(|m| m.get(field)).is_some_and(Value::is_object);
    if exists {
        for (k, v) in entries {
            ops.push(PatchOp::Add {
                path: format!("/metadata/{field}/{}", escape(k)),
                value: Value::String(v.clone()),
            });
        }
    } else {
        let map: Map<String, Value> =
            entries.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect();
        ops.push(PatchOp::Add { path: format!("/metadata/{field}"), value: Value::Object(map) });
    }
}

/// TCP ports the pod's containers declare, sorted: what the proxy accepts
/// inbound connections for.
fn container_ports<'a>(containers: impl Iterator<Item = &'a Value>) -> Result<Vec<u16>, InjectError> {
    let mut ports = BTreeSet::new();
    for c in containers {
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            if protocol != "TCP" {
                continue;
            }
            let port = p
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
                .ok_or_else(|| malformed("a containerPort is not a port number"))?;
            ports.insert(port);
        }
    }
    Ok(ports.into_iter().collect())
}

/// The kubelet's httpGet probes of the pod's containers as `PORT:PATH`,
/// sorted and deduplicated: the proxy authorizes them under its local
/// default policy, so a pod whose policy forbids unauthenticated clients
/// still passes its probes. A port given by name is the container's own
/// port of that name. Left out: probes on ports that skip the proxy (the
/// kubelet reaches the app directly), HTTPS probes (the proxy sees TLS, not
/// requests), and what the comma list cannot carry.
fn http_probes<'a>(
    containers: impl Iterator<Item = &'a Value>,
    skip_inbound: &[PortRange],
) -> Vec<(u16, String)> {
    let mut probes = BTreeSet::new();
    for c in containers {
        for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(get) = c.get(kind).and_then(|p| p.get("httpGet")) else { continue };
            if get.get("scheme").and_then(Value::as_str).is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
                continue;
            }
            let port = match get.get("port") {
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Some(Value::String(name)) => named_port(c, name),
                _ => None,
            };
            let Some(port) = port.filter(|p| *p != 0) else { continue };
            if skip_inbound.iter().any(|r| (r.first..=r.last).contains(&port)) {
                continue;
            }
            // The proxy matches the path alone; the kubelet sends any query as given.
            let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
            let path = path.split('?').next().unwrap_or_default();
            let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
            if !path.starts_with('/') || path.contains(',') || path.chars().any(char::is_whitespace) {
                continue;
            }
            probes.insert((port, path));
        }
    }
    probes.into_iter().collect()
}

/// A container's port by name; a numeric string is the port itself, as the
/// kubelet reads an IntOrString.
fn named_port(container: &Value, name: &str) -> Option<u16> {
    if let Ok(n) = name.parse::<u16>() {
        return Some(n);
    }
    container.get("ports").and_then(Value::as_array)?.iter().find_map(|p| {
        (p.get("name").and_then(Value::as_str) == Some(name))
            .then(|| p.get("containerPort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()))
            .flatten()
    })
}

/// `a,b,c-d`, the syntax of the annotations, proxy-init and the proxy's env.
fn port_list(ports: &[PortRange]) -> String {
    let mut ports = ports.to_vec();
    ports.sort();
    ports.dedup();
    ports
        .iter()
        .map(|p| if p.first == p.last { p.first.to_string() } else { format!("{}-{}", p.first, p.last) })
        .collect::<Vec<_>>()
        .join(",")
}

fn resources(r: &Resources) -> Value {
    let mut requests = Map::new();
    let mut limits = Map::new();
    let put = |m: &mut Map<String, Value>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    };
    put(&mut requests, "cpu", &r.cpu_request);
    put(&mut requests, "memory", &r.memory_request);
    put(&mut limits, "cpu", &r.cpu_limit);
    put(&mut limits, "memory", &r.memory_limit);
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), Value::Object(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), Value::Object(limits));
    }
    Value::Object(out)
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn env_field(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn http_probe(path: &str) -> Value {
    json!({"httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"}})
}

fn proxy_container(
    config: &InjectorConfig,
    o: &ProxyOverrides,
    app_ports: &[u16],
    probes: &[(u16, String)],
    grace_seconds: u64,
) -> Value {
    let inbound_ports = app_ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let probes = probes.iter().map(|(port, path)| format!("{port}:{path}")).collect::<Vec<_>>().join(",");
    let cluster_networks =
        config.cluster_networks.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let env = vec![
        // Downward API first: later values refer to them as $(...).
        env_field("_pod_name", "metadata.name"),
        env_field("_pod_ns", "metadata.namespace"),
        env_field("_pod_sa", "spec.serviceAccountName"),
        env("WEFT_PROXY_LOG", o.log_level.clone()),
        // WEFT_PROXY_INBOUND_ADDR, _OUTBOUND_ADDR and _ADMIN_ADDR stay
        // unset: the proxy's defaults (INBOUND_PORT, OUTBOUND_PORT,
        // ADMIN_PORT) listen on IPv4 and IPv6, as weft-proxy-init redirects
        // both and the kubelet probes the pod's primary IP (IPv6 on an
        // IPv6-primary cluster), and fall back to IPv4 on a node without
        // IPv6, where an explicit IPv6 address would stop the proxy.
        env("WEFT_PROXY_INBOUND_PORTS", inbound_ports),
        env("WEFT_PROXY_OPAQUE_PORTS", port_list(&o.opaque_ports)),
        env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", format!("{grace_seconds}s")),
        env("WEFT_PROXY_IDENTITY_SVC_ADDR", config.identity_svc_addr()),
        env("WEFT_PROXY_IDENTITY_SVC_NAME", config.identity_svc_name()),
        env("WEFT_PROXY_IDENTITY_LOCAL_NAME", config.local_identity_template()),
        env("WEFT_PROXY_IDENTITY_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        env("WEFT_PROXY_IDENTITY_TRUST_ANCHORS", config.trust_anchors_pem.clone()),
        env("WEFT_PROXY_DESTINATION_SVC_ADDR", config.destination_svc_addr()),
        env("WEFT_PROXY_DESTINATION_SVC_NAME", config.destination_svc_name()),
        // Inbound policy (InboundServerPolicies on weft-destination): the
        // kubelet expands $(_pod_ns) and $(_pod_name) declared above.
        env("WEFT_PROXY_POLICY_SVC_ADDR", config.policy_svc_addr()),
        env("WEFT_PROXY_POLICY_WORKLOAD", r#"{"ns":"$(_pod_ns)","pod":"$(_pod_name)"}"#),
        env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", o.default_inbound_policy.as_str()),
        env("WEFT_PROXY_POLICY_CLUSTER_NETWORKS", cluster_networks),
        env("WEFT_PROXY_INBOUND_PROBES", probes),
    ];
    let mut readiness = http_probe("/ready");
    readiness["initialDelaySeconds"] = json!(2);
    readiness["timeoutSeconds"] = json!(1);
    let mut liveness = http_probe("/live");
    liveness["initialDelaySeconds"] = json!(10);
    liveness["timeoutSeconds"] = json!(1);
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "ports": [
            {"name": "weft-proxy", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "weft-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": readiness,
        "livenessProbe": liveness,
        "resources": resources(&o.resources),
        "securityContext": restricted_security_context(PROXY_UID),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
    });
    if o.native_sidecar {
        c["restartPolicy"] = json!("Always");
        // The kubelet starts the next container only once this passes, so
        // the app never runs without its proxy; 2 minutes covers a slow
        // identity bootstrap.
        let mut startup = http_probe("/ready");
        startup["periodSeconds"] = json!(1);
        startup["failureThreshold"] = json!(120);
        startup["timeoutSeconds"] = json!(1);
        c["startupProbe"] = startup;
    } else {
        c["lifecycle"] = json!({"postStart": {"exec": {"command": config.await_command}}});
    }
    c
}

/// The restricted securityContext of the proxy and the validator: Pod
/// Security `restricted` accepts it.
fn restricted_security_context(uid: u32) -> Value {
    json!({
        "runAsUser": uid,
        // Set, not left to the image: an image whose User names no group
        // would run the container in group 0.
        "runAsGroup": uid,
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The port the validator connects to (on never-routed TEST-NET
/// addresses): the first from 4149 that the pod's skip-outbound-ports leave
/// redirected.
fn validator_connect_port(o: &ProxyOverrides) -> u16 {
    let rules = redirect_config(o);
    (4149..=u16::MAX)
        .find(|p| !rules.skip_outbound_ports.iter().any(|r| (r.first..=r.last).contains(p)))
        .unwrap_or(4149)
}

/// CNI mode's first init container: `weft-proxy validate`, from the proxy
/// image, unprivileged, as [`VALIDATOR_UID`].
fn validator_container(config: &InjectorConfig, o: &ProxyOverrides) -> Value {
    json!({
        "name": VALIDATOR_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["validate", "--timeout=10s", format!("--connect-port={}", validator_connect_port(o))],
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "50Mi"},
        },
        "securityContext": restricted_security_context(VALIDATOR_UID),
        // Its message (what failed, and the fix) shows in `kubectl describe`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

fn init_container(config: &InjectorConfig, o: &ProxyOverrides) -> Value {
    // weft-cni writes the same rules from the same config (redirect.rs).
    let rules = redirect_config(o);
    let mut args = vec![
        "--proxy-uid".to_string(),
        rules.proxy_uid.to_string(),
        "--inbound-port".into(),
        rules.inbound_port.to_string(),
        "--outbound-port".into(),
        rules.outbound_port.to_string(),
        "--skip-inbound-ports".into(),
        port_list(&rules.skip_inbound_ports),
    ];
    if !rules.skip_outbound_ports.is_empty() {
        args.push("--skip-outbound-ports".into());
        args.push(port_list(&rules.skip_outbound_ports));
    }
    json!({
        "name": INIT_CONTAINER,
        "image": config.proxy_init_image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "50Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        // iptables-legacy takes its lock under /run; the root filesystem is
        // read-only.
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
    })
}
