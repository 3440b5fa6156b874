//! `weft authz`: which inbound policy applies to each port of a workload's
//! pods, as `linkerd authz` shows it. The policy is computed here, from the
//! namespace's Servers, AuthorizationPolicies, authentications, rate limits
//! and HTTPRoutes, with weft-destination's own library
//! ([`weft_destination::inbound::inbound_policy`]), so it is what
//! weft-destination serves the pods' proxies, not a second reading of the
//! resources.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use weft_destination::inbound::{inbound_policy, Authorization, InboundPolicy};
use weft_destination::index::{Index, State};
use weft_destination::model::{ObjKey, PodRec};
use weft_destination::policy::{AccessPolicy, PortRef, ProxyProtocol, RateLimitRec, WorkloadSelector};
use weft_destination::MeshConfig;

use crate::check::api::{self, Api, ApiError};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    weft authz -n emojivoto deploy/web      # every port of web's pods\n  \
    weft authz -n emojivoto web             # the same: a bare name is a Deployment\n  \
    weft authz -n emojivoto pod/web-5d9c-x  # one pod\n  \
    weft authz -n emojivoto sts/db -o json\n\n\
    For each port of the pods: the Server that covers it (or default:POLICY, the default policy, \
    where none does), each HTTP route (`default` and `probe` are the ones weft-destination makes \
    when the Server has no HTTPRoute; `*` is what non-HTTP connections are checked against), and \
    the AuthorizationPolicies that authorize it (`default/POLICY`: the Server's accessPolicy or \
    the default policy). Computed with weft-destination's code from the namespace's \
    policy.linkerd.io resources and Gateway API HTTPRoutes. Needs get/list on the workload, pods, \
    the namespace and those resources.")]
pub struct Args {
    /// deploy/NAME, sts/NAME, ds/NAME or pod/NAME; a bare NAME is a Deployment.
    #[arg(value_name = "RESOURCE")]
    resource: String,

    /// Namespace of RESOURCE (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,

    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then the
    /// pod's service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    context: Option<String>,

    /// Namespace of the control plane (where weft-destination's Deployment
    /// says which default policy and trust domain the cluster uses).
    #[arg(long, default_value = "weft")]
    control_plane_namespace: String,

    /// The cluster's default inbound policy (default: weft-destination's
    /// --default-inbound-policy, read from its Deployment, else
    /// all-unauthenticated). Namespace and pod annotations still win.
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    default_inbound_policy: Option<AccessPolicy>,

    /// Trust domain of identities (default: weft-destination's, else cluster.local).
    #[arg(long)]
    trust_domain: Option<String>,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn parse_policy(s: &str) -> Result<AccessPolicy, String> {
    AccessPolicy::parse(s).ok_or_else(|| {
        format!("{s:?} is not one of all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit")
    })
}

/// The policy resources weft-destination watches, at the versions it
/// watches them (destination/src/k8s.rs): (group, version, plural).
const POLICY_RESOURCES: [(&str, &str, &str); 6] = [
    ("policy.linkerd.io", "v1beta3", "servers"),
    ("policy.linkerd.io", "v1alpha1", "authorizationpolicies"),
    ("policy.linkerd.io", "v1alpha1", "meshtlsauthentications"),
    ("policy.linkerd.io", "v1alpha1", "networkauthentications"),
    ("policy.linkerd.io", "v1alpha1", "httplocalratelimitpolicies"),
    ("policy.linkerd.io", "v1beta3", "httproutes"),
];
/// Linkerd's deprecated ServerAuthorizations, which weft-destination does
/// not index: listed only to say they are not in force.
const SERVER_AUTHORIZATIONS: (&str, &str, &str) = ("policy.linkerd.io", "v1beta1", "serverauthorizations");
/// Optional: clusters without the Gateway API simply have no such routes.
const GATEWAY_HTTPROUTES: (&str, &str, &str) = ("gateway.networking.k8s.io", "v1", "httproutes");

/// The pods a RESOURCE names: (kind for messages, API path of the workload).
enum Workload {
    Pod(String),
    Controller { what: String, path: String },
}

fn workload(resource: &str, ns: &str) -> Result<Workload> {
    let (kind, name) = match resource.split_once('/') {
        None => ("deploy", resource),
        Some((k, n)) => (k, n),
    };
    if name.is_empty() || kind.is_empty() || name.contains('/') {
        bail!("{resource:?} is not a resource; use deploy/NAME, sts/NAME, ds/NAME, pod/NAME or a Deployment's NAME");
    }
    let controller = |short: &str, plural: &str| Workload::Controller {
        what: format!("{short}/{name} in namespace {ns}"),
        path: format!("/apis/apps/v1/namespaces/{ns}/{plural}/{name}"),
    };
    Ok(match kind.to_ascii_lowercase().as_str() {
        "deploy" | "deployment" | "deployments" => controller("deploy", "deployments"),
        "sts" | "statefulset" | "statefulsets" => controller("sts", "statefulsets"),
        "ds" | "daemonset" | "daemonsets" => controller("ds", "daemonsets"),
        "po" | "pod" | "pods" => Workload::Pod(name.to_string()),
        _ => bail!("cannot show the policy of a {kind:?}; use deploy/NAME, sts/NAME, ds/NAME or pod/NAME"),
    })
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(authz(&args))?;
    let mut out = match args.output {
        Output::Table => table(&report),
        Output::Json => serde_json::to_string_pretty(&report.to_json()).context("cannot write JSON")?,
    };
    out.push('\n');
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())
        .context("cannot write to standard output")?;
    Ok(())
}

/// What the cluster's weft-destination defaults to, and where that came from.
struct ClusterDefaults {
    policy: AccessPolicy,
    policy_source: String,
    trust_domain: String,
}

/// weft-destination's own flags, read from its Deployment, so the answer is
/// what it serves. Not readable (not installed, no RBAC): the built-in
/// defaults, said so.
async fn cluster_defaults(api: &Api, args: &Args) -> ClusterDefaults {
    let cpns = &args.control_plane_namespace;
    let path = format!("/apis/apps/v1/namespaces/{cpns}/deployments/weft-destination");
    let deployment = api.get::<Value>(&path, &format!("deploy/weft-destination in namespace {cpns}")).await;
    let unreadable = deployment.as_ref().err().map(ToString::to_string);
    let flag = |name: &str| deployment.as_ref().ok().and_then(|d| destination_flag(d, name));
    let (policy, policy_source) = match (args.default_inbound_policy, flag("default-inbound-policy")) {
        (Some(p), _) => (p, "--default-inbound-policy".to_string()),
        (None, Some(v)) => match AccessPolicy::parse(&v) {
            Some(p) => (p, "weft-destination's --default-inbound-policy".to_string()),
            None => (AccessPolicy::AllUnauthenticated, format!("weft-destination's {v:?} is not a policy")),
        },
        (None, None) => (
            AccessPolicy::AllUnauthenticated,
            match unreadable {
                Some(e) => {
                    format!("the built-in default, as weft-destination's Deployment is not readable: {e}")
                }
                None => "weft-destination's built-in default".into(),
            },
        ),
    };
    let trust_domain = args
        .trust_domain
        .clone()
        .or_else(|| flag("trust-domain"))
        .unwrap_or_else(|| "cluster.local".to_string());
    ClusterDefaults { policy, policy_source, trust_domain }
}

/// `--NAME=VALUE` / `--NAME VALUE` in the destination container's args,
/// else its `WEFT_DESTINATION_*` env.
fn destination_flag(deployment: &Value, name: &str) -> Option<String> {
    let containers = deployment.pointer("/spec/template/spec/containers")?.as_array()?;
    let c = containers
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("destination"))
        .or(containers.first())?;
    let args: Vec<&str> =
        c.get("args").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let flag = format!("--{name}");
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
        if *a == flag {
            return args.get(i + 1).map(|v| v.to_string());
        }
    }
    let env = format!("WEFT_DESTINATION_{}", name.to_ascii_uppercase().replace('-', "_"));
    c.get("env").and_then(Value::as_array)?.iter().find_map(|e| {
        (e.get("name").and_then(Value::as_str) == Some(env.as_str()))
            .then(|| e.get("value").and_then(Value::as_str).map(str::to_string))
            .flatten()
    })
}

/// The answer, before it is printed.
struct Report {
    namespace: String,
    resource: String,
    cluster_default: AccessPolicy,
    cluster_default_source: String,
    /// No policy.linkerd.io resource is served at all.
    no_policy_crds: bool,
    pods: Vec<PodReport>,
    notes: Vec<String>,
}

struct PodReport {
    name: String,
    meshed: bool,
    /// Where the default policy of its uncovered ports comes from.
    default_source: String,
    ports: Vec<PortReport>,
}

struct PortReport {
    port: u16,
    /// `None`: the proxy never sees the port (skip-inbound-ports).
    policy: Option<InboundPolicy>,
    /// ServerAuthorizations of its Server: shown, not enforced.
    server_authorizations: Vec<String>,
}

async fn authz(args: &Args) -> Result<Report> {
    let (api, context_ns) = api::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let ns = args.namespace.clone().unwrap_or(context_ns);
    let defaults = cluster_defaults(&api, args).await;
    let cfg = MeshConfig {
        trust_domain: defaults.trust_domain.clone(),
        control_plane_namespace: args.control_plane_namespace.clone(),
        ..MeshConfig::default()
    };

    let pods = workload_pods(&api, &args.resource, &ns).await?;
    let mut texts = vec![pods.to_string()];
    let mut notes = Vec::new();

    let mut missing = Vec::new();
    let mut servers = Value::Null;
    let mut server_authorizations = Value::Null;
    for resource in POLICY_RESOURCES.into_iter().chain([GATEWAY_HTTPROUTES, SERVER_AUTHORIZATIONS]) {
        let (group, version, plural) = resource;
        let path = format!("/apis/{group}/{version}/namespaces/{ns}/{plural}");
        let what = format!("{plural}.{group} in namespace {ns}");
        match api.get_text(&path, &what).await {
            Ok(text) if resource == SERVER_AUTHORIZATIONS => {
                server_authorizations = serde_json::from_str(&text).unwrap_or_default()
            }
            Ok(text) => {
                if resource == POLICY_RESOURCES[0] {
                    servers = serde_json::from_str(&text).unwrap_or_default();
                }
                texts.push(text)
            }
            Err(ApiError::NotFound(_)) => missing.push((group, version, plural)),
            // Shown only to say they are not enforced: not worth failing for.
            Err(e) if resource == SERVER_AUTHORIZATIONS => notes.push(format!("{what} not listed: {e}")),
            Err(ApiError::Denied { message, .. }) => bail!(
                "not allowed to list {what}: {message}; `kubectl auth can-i list {plural}.{group} -n {ns}` must say yes"
            ),
            Err(e) => bail!("cannot list {what}: {e}; see {}", e.hint()),
        }
    }
    let no_policy_crds = POLICY_RESOURCES.iter().all(|r| missing.contains(r));
    if !no_policy_crds {
        for (group, version, plural) in missing.iter().filter(|(g, ..)| *g == "policy.linkerd.io") {
            notes.push(format!("{plural}.{group} {version} is not served: none applies"));
        }
    }
    // The namespace's default-inbound-policy annotation; unreadable: said so.
    match api.get_text(&format!("/api/v1/namespaces/{ns}"), &format!("namespace {ns}")).await {
        Ok(text) => texts.push(text),
        Err(e) => notes.push(format!("cannot read namespace {ns} ({e}): its default-inbound-policy annotation is not taken into account")),
    }

    let mut objects = Vec::new();
    for text in &texts {
        let (parsed, problems) = weft_destination::files::parse_manifests(text, &cfg);
        objects.extend(parsed.unwrap_or_default());
        // weft-destination skips an invalid object the same way.
        notes.extend(problems.into_iter().map(|p| format!("ignored, as weft-destination ignores it: {p}")));
    }
    let index = Index::new();
    index.replace_all(objects);
    let state = index.subscribe();
    let state = state.borrow();

    let legacy = legacy_authorizations(&servers, &server_authorizations);
    if !legacy.is_empty() {
        notes.push(
            "serverauthorization: Linkerd's deprecated ServerAuthorization, which weft does not enforce; write an AuthorizationPolicy instead"
                .into(),
        );
    }
    let mut reports = Vec::new();
    for pod in pods.get("items").and_then(Value::as_array).into_iter().flatten() {
        let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let Some(rec) = state.pods.get(&ObjKey::new(ns.as_str(), name)) else {
            notes.push(format!("pod {name} could not be read as weft-destination reads pods; left out"));
            continue;
        };
        reports.push(pod_report(&state, &cfg, rec, pod, &defaults, &legacy));
    }
    if reports.is_empty() {
        bail!("{} in namespace {ns} has no pods", args.resource);
    }
    Ok(Report {
        namespace: ns,
        resource: args.resource.clone(),
        cluster_default: defaults.policy,
        cluster_default_source: defaults.policy_source,
        no_policy_crds,
        pods: reports,
        notes,
    })
}

/// Server name → the ServerAuthorizations naming it (`spec.server.name`) or
/// selecting it (`spec.server.selector` on the Server's labels).
fn legacy_authorizations(servers: &Value, server_authorizations: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let items = |list: &Value| list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    let servers = items(servers);
    for sa in items(server_authorizations) {
        let Some(name) = sa.pointer("/metadata/name").and_then(Value::as_str) else { continue };
        let target = sa.pointer("/spec/server");
        for server in &servers {
            let Some(server_name) = server.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            let named = target.and_then(|t| t.get("name")).and_then(Value::as_str) == Some(server_name);
            let selected = target
                .and_then(|t| t.get("selector"))
                .is_some_and(|sel| selects(sel, server.pointer("/metadata/labels")));
            if named || selected {
                out.entry(server_name.to_string()).or_default().push(name.to_string());
            }
        }
    }
    out
}

/// The workload's pods, as a `PodList`.
async fn workload_pods(api: &Api, resource: &str, ns: &str) -> Result<Value> {
    let (what, selector) = match workload(resource, ns)? {
        Workload::Pod(name) => {
            let what = format!("pod/{name} in namespace {ns}");
            let pod: Value =
                api.get(&format!("/api/v1/namespaces/{ns}/pods/{name}"), &what).await.map_err(api_error)?;
            return Ok(json!({"kind": "PodList", "apiVersion": "v1", "items": [pod]}));
        }
        Workload::Controller { what, path } => {
            let w: Value = api.get(&path, &what).await.map_err(api_error)?;
            let selector = w.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
            (what, selector)
        }
    };
    let query = selector_query(&selector);
    if query.is_empty() {
        bail!("{what} has an empty selector; it would match every pod, refusing to guess");
    }
    let path = format!("/api/v1/namespaces/{ns}/pods?labelSelector={}", percent_encode(&query));
    let mut list: Value = api.get(&path, &format!("pods of {what}")).await.map_err(api_error)?;
    // Again here: a server (or proxy) that ignores the selector must not widen the answer.
    if let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) {
        items.retain(|p| selects(&selector, p.pointer("/metadata/labels")));
        if items.is_empty() {
            bail!("{what} has no pods");
        }
    }
    Ok(list)
}

/// An API error as a message: "... not found" for a 404, else the error and what to look at.
fn api_error(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::NotFound(what) => anyhow!("{what} not found"),
        e => {
            let hint = e.hint();
            anyhow!("{e}; see {hint}")
        }
    }
}

/// A LabelSelector in the API's `labelSelector` query syntax.
fn selector_query(s: &Value) -> String {
    let mut parts: Vec<String> = s
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in s.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let values = values.join(",");
        parts.push(match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

fn selects(s: &Value, labels: Option<&Value>) -> bool {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let labels_ok = s
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let exprs_ok = s.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let value = label(key);
        match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The ports the proxy could get connections for: the app containers' TCP
/// ports, and any port a Server selecting the pod names by number.
fn pod_ports(state: &State, rec: &PodRec, pod: &Value) -> Vec<u16> {
    let proxy = weft_injector::config::PROXY_CONTAINER;
    let mut ports = BTreeSet::new();
    let spec = pod.get("spec");
    let containers = ["containers", "initContainers"]
        .into_iter()
        .flat_map(|k| spec.and_then(|s| s.get(k)).and_then(Value::as_array).into_iter().flatten());
    for c in containers.filter(|c| c.get("name").and_then(Value::as_str) != Some(proxy)) {
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") != "TCP" {
                continue;
            }
            if let Some(n) =
                p.get("containerPort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok())
            {
                ports.insert(n);
            }
        }
    }
    for s in state.servers.values().filter(|s| s.key.namespace == rec.key.namespace) {
        if let (WorkloadSelector::Pod(sel), PortRef::Number(n)) = (&s.selector, &s.port) {
            if sel.matches(&rec.labels) {
                ports.insert(*n);
            }
        }
    }
    ports.into_iter().collect()
}

fn pod_report(
    state: &State,
    cfg: &MeshConfig,
    rec: &PodRec,
    pod: &Value,
    d: &ClusterDefaults,
    legacy: &BTreeMap<String, Vec<String>>,
) -> PodReport {
    let ns_default = state
        .namespaces
        .get(&weft_destination::model::namespace_key(&rec.key.namespace))
        .and_then(|n| n.default_inbound_policy);
    let default_source = if rec.default_inbound_policy.is_some() {
        "the pod's default-inbound-policy annotation".to_string()
    } else if ns_default.is_some() {
        format!("namespace {}'s default-inbound-policy annotation", rec.key.namespace)
    } else {
        d.policy_source.clone()
    };
    let ports = pod_ports(state, rec, pod)
        .into_iter()
        .map(|port| {
            let skipped = rec.skip_inbound_ports.contains(port);
            let policy = (!skipped).then(|| inbound_policy(state, cfg, rec, port, d.policy));
            let server_authorizations = policy
                .as_ref()
                .and_then(|p| p.server.as_ref())
                .and_then(|s| legacy.get(&s.name))
                .cloned()
                .unwrap_or_default();
            PortReport { port, policy, server_authorizations }
        })
        .collect();
    PodReport { name: rec.key.name.clone(), meshed: rec.meshed, default_source, ports }
}

// === What applies, as rows ===

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    port: u16,
    route: String,
    server: String,
    authorization_policy: String,
    server_authorization: String,
}

fn is_http(p: ProxyProtocol) -> bool {
    matches!(p, ProxyProtocol::Unknown | ProxyProtocol::Http1 | ProxyProtocol::Http2 | ProxyProtocol::Grpc)
}

fn protocol_name(p: ProxyProtocol) -> &'static str {
    match p {
        ProxyProtocol::Unknown => "unknown",
        ProxyProtocol::Http1 => "HTTP/1",
        ProxyProtocol::Http2 => "HTTP/2",
        ProxyProtocol::Grpc => "gRPC",
        ProxyProtocol::Opaque => "opaque",
        ProxyProtocol::Tls => "TLS",
    }
}

fn server_name(p: &InboundPolicy) -> String {
    match &p.server {
        Some(k) => k.name.clone(),
        None => format!("default:{}", p.access.as_str()),
    }
}

/// What authorizes a list: each AuthorizationPolicy, those whose
/// authentications are missing (they authorize nobody), and the
/// Server's accessPolicy or the default policy unless it is `deny`.
fn authorized_by(
    authz: &[Authorization],
    unresolved: &[(ObjKey, String)],
    access: Option<AccessPolicy>,
) -> Vec<String> {
    let mut out: Vec<String> =
        authz.iter().map(|a| format!("authorizationpolicy/{}", a.policy.name)).collect();
    out.extend(
        unresolved
            .iter()
            .map(|(k, why)| format!("authorizationpolicy/{} (authorizes nobody: {why})", k.name)),
    );
    if let Some(a) = access.filter(|a| *a != AccessPolicy::Deny) {
        out.push(format!("default/{}", a.as_str()));
    }
    if out.is_empty() {
        out.push("(none: denied)".into());
    }
    out
}

/// Routes and what authorizes each, as the proxy gets them (the contract of
/// issue 18): a Server without HTTPRoutes, and every default-policy port,
/// get `default` (the server-level list) and `probe`; HTTPRoutes carry only
/// the policies targeting them; `*` is what non-HTTP connections meet.
fn rows(port: u16, p: &InboundPolicy, server_authorizations: &[String]) -> Vec<Row> {
    let server = server_name(p);
    let row = |route: &str, authz: String| Row {
        port,
        route: route.to_string(),
        server: server.clone(),
        authorization_policy: authz,
        server_authorization: String::new(),
    };
    let server_level = authorized_by(&p.authorizations, &p.unresolved, Some(p.access));
    // Listed last, after what is in force.
    let legacy: Vec<Row> = server_authorizations
        .iter()
        .map(|sa| Row {
            server_authorization: format!("serverauthorization/{sa} (not enforced)"),
            ..row("*", "-".into())
        })
        .collect();
    let mut out = Vec::new();
    if !is_http(p.protocol) {
        out.extend(server_level.into_iter().map(|a| row("*", a)));
        out.extend(legacy);
        return out;
    }
    if p.routes.is_empty() {
        out.extend(server_level.iter().cloned().map(|a| row("default", a)));
        if !p.probe_paths.is_empty() {
            out.push(row("probe", "default/probe".into()));
        }
    } else {
        for r in &p.routes {
            let name = r.route.key.name.as_str();
            out.extend(
                authorized_by(&r.authorizations, &r.unresolved, None).into_iter().map(|a| row(name, a)),
            );
        }
        if p.protocol == ProxyProtocol::Unknown {
            // Detection may find no HTTP: such connections meet the server-level list.
            out.extend(server_level.into_iter().map(|a| row("*", a)));
        }
    }
    out.extend(legacy);
    out
}

fn rate_limit_text(rl: &RateLimitRec) -> String {
    let mut parts = Vec::new();
    if let Some(t) = rl.total {
        parts.push(format!("total {t}/s"));
    }
    if let Some(i) = rl.identity {
        parts.push(format!("{i}/s per client identity"));
    }
    for o in &rl.overrides {
        let clients: Vec<String> = o.clients.iter().map(|c| format!("{}/{}", c.namespace, c.name)).collect();
        parts.push(format!("{}/s for serviceaccount {}", o.requests_per_second, clients.join(", ")));
    }
    if parts.is_empty() {
        parts.push("no limits set".into());
    }
    format!("httplocalratelimitpolicy/{}: {}", rl.key.name, parts.join("; "))
}

// === Output ===

fn pod_rows(pod: &PodReport) -> Vec<Row> {
    let mut out = Vec::new();
    for port in &pod.ports {
        match &port.policy {
            Some(p) => out.extend(rows(port.port, p, &port.server_authorizations)),
            None => out.push(Row {
                port: port.port,
                route: "-".into(),
                server: "(skips the proxy: skip-inbound-ports)".into(),
                authorization_policy: "-".into(),
                server_authorization: String::new(),
            }),
        }
    }
    out
}

fn table(r: &Report) -> String {
    let mut lines = Vec::new();
    if r.no_policy_crds {
        lines.push("no policy resources installed; every port uses the default policy".to_string());
        lines.push(String::new());
    }
    // Pods with the same answer share their rows; unmeshed ones (whose
    // policy nothing enforces) are marked and never share with meshed ones.
    let mut groups: Vec<(Vec<String>, bool, Vec<Row>)> = Vec::new();
    for pod in &r.pods {
        let rows = pod_rows(pod);
        let name = if pod.meshed { pod.name.clone() } else { format!("{} (not meshed)", pod.name) };
        match groups.iter_mut().find(|(_, meshed, g)| *meshed == pod.meshed && *g == rows) {
            Some((names, ..)) => names.push(name),
            None => groups.push((vec![name], pod.meshed, rows)),
        }
    }
    let header = ["POD", "PORT", "ROUTE", "SERVER", "AUTHORIZATION_POLICY", "SERVER_AUTHORIZATION"];
    let mut cells: Vec<[String; 6]> = vec![header.map(str::to_string)];
    for (names, _, rows) in &groups {
        let pods = if names.len() > 3 {
            format!("{} (+{} more)", names[..2].join(","), names.len() - 2)
        } else {
            names.join(",")
        };
        for row in rows {
            cells.push([
                pods.clone(),
                row.port.to_string(),
                row.route.clone(),
                row.server.clone(),
                row.authorization_policy.clone(),
                if row.server_authorization.is_empty() {
                    "-".into()
                } else {
                    row.server_authorization.clone()
                },
            ]);
        }
    }
    let widths: Vec<usize> =
        (0..6).map(|i| cells.iter().map(|c| c[i].chars().count()).max().unwrap_or(0)).collect();
    for c in &cells {
        let line: Vec<String> = c.iter().zip(&widths).map(|(s, w)| format!("{s:w$}")).collect();
        lines.push(line.join("  ").trim_end().to_string());
    }

    let mut notes = BTreeSet::new();
    for pod in &r.pods {
        if !pod.meshed {
            notes.insert(format!("pod {} is not meshed: no proxy enforces this policy", pod.name));
        }
        for port in &pod.ports {
            let Some(p) = &port.policy else { continue };
            match &p.server {
                None => {
                    notes.insert(format!(
                        "port {}: no Server covers it: default policy {} (from {})",
                        port.port,
                        p.access.as_str(),
                        pod.default_source
                    ));
                }
                Some(s) => {
                    notes.insert(format!(
                        "port {}: Server {} ({}), accessPolicy {}",
                        port.port,
                        s.name,
                        protocol_name(p.protocol),
                        p.access.as_str()
                    ));
                }
            }
            if let Some(rl) = p.rate_limit.as_ref().filter(|_| is_http(p.protocol)) {
                notes.insert(format!("port {}: rate limit {}", port.port, rate_limit_text(rl)));
            }
            if !p.routes.is_empty() && !p.probe_paths.is_empty() {
                notes.insert(format!(
                    "port {}: the kubelet's probes ({}) are authorized only where an HTTPRoute's policy says so",
                    port.port,
                    p.probe_paths.join(", ")
                ));
            }
        }
    }
    let notes: Vec<String> = notes.into_iter().chain(r.notes.iter().cloned()).collect();
    if !notes.is_empty() {
        lines.push(String::new());
        lines.extend(notes);
    }
    lines.join("\n")
}

impl Report {
    fn to_json(&self) -> Value {
        let authz_json = |a: &[Authorization], u: &[(ObjKey, String)]| -> Vec<Value> {
            a.iter()
                .map(|a| json!({"authorization_policy": a.policy.name}))
                .chain(u.iter().map(|(k, why)| json!({"authorization_policy": k.name, "unresolved": why})))
                .collect()
        };
        let pods: Vec<Value> = self
            .pods
            .iter()
            .map(|pod| {
                let ports: Vec<Value> = pod
                    .ports
                    .iter()
                    .map(|port| match &port.policy {
                        None => json!({"port": port.port, "skipped": true}),
                        Some(p) => json!({
                            "port": port.port,
                            "server": p.server.as_ref().map(|s| s.name.clone()),
                            "default_policy": p.server.is_none().then(|| p.access.as_str()),
                            "default_policy_source": p.server.is_none().then(|| pod.default_source.clone()),
                            "access_policy": p.access.as_str(),
                            "protocol": protocol_name(p.protocol),
                            "authorizations": authz_json(&p.authorizations, &p.unresolved),
                            "routes": p.routes.iter().map(|r| json!({
                                "name": r.route.key.name,
                                "group": r.route.group,
                                "authorizations": authz_json(&r.authorizations, &r.unresolved),
                            })).collect::<Vec<_>>(),
                            "probe_paths": p.probe_paths,
                            "rate_limit": p.rate_limit.as_ref().map(|rl| json!({
                                "name": rl.key.name,
                                "total": rl.total,
                                "identity": rl.identity,
                                "overrides": rl.overrides.iter().map(|o| json!({
                                    "requests_per_second": o.requests_per_second,
                                    "service_accounts": o.clients.iter().map(|c| format!("{}/{}", c.namespace, c.name)).collect::<Vec<_>>(),
                                })).collect::<Vec<_>>(),
                            })),
                            "server_authorizations": port.server_authorizations.iter()
                                .map(|sa| json!({"name": sa, "enforced": false})).collect::<Vec<_>>(),
                            "rows": rows(port.port, p, &port.server_authorizations).into_iter().map(|r| json!({
                                "route": r.route,
                                "server": r.server,
                                "authorization_policy": r.authorization_policy,
                                "server_authorization": r.server_authorization,
                            })).collect::<Vec<_>>(),
                        }),
                    })
                    .collect();
                json!({"name": pod.name, "meshed": pod.meshed, "ports": ports})
            })
            .collect();
        json!({
            "namespace": self.namespace,
            "resource": self.resource,
            "cluster_default_policy": self.cluster_default.as_str(),
            "cluster_default_policy_source": self.cluster_default_source,
            "policy_resources_installed": !self.no_policy_crds,
            "pods": pods,
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_name_workloads() {
        assert!(
            matches!(workload("web", "ns").unwrap(), Workload::Controller { path, .. } if path == "/apis/apps/v1/namespaces/ns/deployments/web")
        );
        assert!(
            matches!(workload("sts/db", "ns").unwrap(), Workload::Controller { path, .. } if path == "/apis/apps/v1/namespaces/ns/statefulsets/db")
        );
        assert!(matches!(workload("pod/web-0", "ns").unwrap(), Workload::Pod(n) if n == "web-0"));
        assert!(workload("svc/web", "ns").is_err());
        assert!(workload("deploy/", "ns").is_err());
        assert!(workload("a/b/c", "ns").is_err());
    }

    #[test]
    fn selectors_query_and_match() {
        let s = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert_eq!(selector_query(&s), "app=web,tier in (a,b)");
        assert_eq!(percent_encode("app=web,tier in (a,b)"), "app%3Dweb%2Ctier%20in%20%28a%2Cb%29");
        assert!(selects(&s, Some(&json!({"app": "web", "tier": "a"}))));
        assert!(!selects(&s, Some(&json!({"app": "web", "tier": "c"}))));
        assert!(!selects(&s, None));
    }

    #[test]
    fn destination_flags_from_its_deployment() {
        let d = json!({"spec": {"template": {"spec": {"containers": [{"name": "destination",
            "args": ["--kubernetes", "--default-inbound-policy=deny", "--trust-domain", "example.org"],
            "env": [{"name": "WEFT_DESTINATION_CLUSTER_NETWORKS", "value": "10.0.0.0/8"}]}]}}}});
        assert_eq!(destination_flag(&d, "default-inbound-policy").as_deref(), Some("deny"));
        assert_eq!(destination_flag(&d, "trust-domain").as_deref(), Some("example.org"));
        assert_eq!(destination_flag(&d, "cluster-networks").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(destination_flag(&d, "log"), None);
    }
}
