//! HTTPRoutes (`policy.linkerd.io/v1beta3` and `gateway.networking.k8s.io/v1`)
//! and GRPCRoutes (`gateway.networking.k8s.io/v1`) as index records, and
//! their matches and filters as Linkerd's proto types.
//!
//! Both groups share one schema for what weft reads: parentRefs, hostnames,
//! rules with matches, filters and backendRefs. Inbound policy reads routes
//! whose parent is a Server; outbound routing (Service parents) reads the same
//! records. The apiserver's schema checks the enums, but not that a
//! `RegularExpression` compiles: such a route is refused here as a whole
//! (skipped with a warning and `destination_invalid_objects_total{kind}`),
//! since serving it without the broken match would widen what it matches.

use std::{collections::BTreeMap, time::Duration};

use linkerd2_proxy_api::{http_route as proto, http_types};
use serde::Deserialize;

use crate::model::{invalid, parse_go_duration, ModelError, ObjKey};

pub const POLICY_GROUP: &str = "policy.linkerd.io";
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The core API group as parentRefs and backendRefs may spell it.
pub const CORE_GROUP: &str = "core";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    /// Defaults to the route's namespace.
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    pub section_name: Option<String>,
}

impl ParentRef {
    /// Whether this names `server` (a Server of the route's namespace).
    pub fn is_server(&self, server: &ObjKey) -> bool {
        self.group == POLICY_GROUP
            && self.kind == "Server"
            && self.name == server.name
            && self.namespace == server.namespace
    }

    /// Whether this names port `port` of the Service `service` (group `core`
    /// or empty; no port means every port).
    pub fn is_service(&self, service: &ObjKey, port: u16) -> bool {
        (self.group.is_empty() || self.group == CORE_GROUP)
            && self.kind == "Service"
            && self.name == service.name
            && self.namespace == service.namespace
            && self.port.is_none_or(|p| p == port)
    }
}

/// Gateway API precedence between routes: the oldest first, then by name
/// (then namespace, for a stable order); routes without a timestamp (from
/// files) after those with one.
pub fn precedence(
    (a_created, a): (&Option<String>, &ObjKey),
    (b_created, b): (&Option<String>, &ObjKey),
) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let by_age = match (a_created, b_created) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_age.then_with(|| a.name.cmp(&b.name)).then_with(|| a.namespace.cmp(&b.namespace))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<(String, ValueMatch)>,
    pub query_params: Vec<(String, ValueMatch)>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    /// A filter type weft does not apply (ExtensionRef, CORS, ...): kept by
    /// name so a consumer can report it.
    Unsupported(String),
}

/// RequestMirror: a copy of `numerator / denominator` of the rule's
/// requests goes to `backend`, its answer ignored. Kept beside the filters,
/// not among them: only weft's extension to OutboundPolicies carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub backend: BackendRef,
    pub numerator: u32,
    pub denominator: u32,
}

/// URLRewrite: the Host and path the backend sees (weft's extension too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    pub weight: u32,
}

/// A rule's `timeouts` (Gateway API): `request` bounds the whole request,
/// retries included; `backendRequest` each try.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleTimeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Never empty: a rule without matches matches every request (`/` prefix).
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub timeouts: RuleTimeouts,
    pub mirrors: Vec<Mirror>,
    pub url_rewrite: Option<UrlRewrite>,
}

impl Rule {
    /// Every Service the rule sends to: its backends and its mirrors.
    pub fn backend_refs(&self) -> impl Iterator<Item = &BackendRef> {
        self.backends.iter().chain(self.mirrors.iter().map(|m| &m.backend))
    }
}

/// Annotation prefixes outbound policy reads (Linkerd's retry, timeout and
/// balancer annotations, weft's hedging); others are not kept, so an
/// unrelated annotation edit wakes no subscriber.
pub const POLICY_ANNOTATION_PREFIXES: [&str; 4] =
    ["retry.linkerd.io/", "timeout.linkerd.io/", "balancer.linkerd.io/", "retry.weft.io/"];

/// The annotations of `meta` (an object's `metadata` as JSON) that outbound
/// policy reads.
pub fn policy_annotations(meta: &serde_json::Value) -> BTreeMap<String, String> {
    meta.get("annotations")
        .and_then(|a| a.as_object())
        .into_iter()
        .flatten()
        .filter(|(k, _)| POLICY_ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p)))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Logs what outbound policy will skip in an object's annotations, once,
/// as it arrives.
pub fn report_annotations(owner: &ObjKey, kind: &str, annotations: &BTreeMap<String, String>) {
    for problem in crate::outbound::annotation_problems(annotations) {
        tracing::warn!(object = %owner, kind, %problem, "ignoring an invalid annotation");
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRouteRec {
    pub key: ObjKey,
    /// `policy.linkerd.io` or `gateway.networking.k8s.io`.
    pub group: String,
    pub parents: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<Rule>,
    /// Linkerd's retry/timeout annotations ([`policy_annotations`]).
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (RFC 3339, UTC: sorts as text), the
    /// first key of Gateway API precedence between routes.
    pub created: Option<String>,
    /// `metadata.generation`, published as the status' `observedGeneration`
    /// (it changes only with the spec, so it wakes no extra subscriber).
    pub generation: Option<i64>,
}

// === Parsing ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    parent_refs: Option<Vec<ParentSpec>>,
    #[serde(default)]
    hostnames: Option<Vec<String>>,
    #[serde(default)]
    rules: Option<Vec<RuleSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentSpec {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    port: Option<u16>,
    section_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    matches: Option<Vec<MatchSpec>>,
    #[serde(default)]
    filters: Option<Vec<FilterSpec>>,
    #[serde(default)]
    backend_refs: Option<Vec<BackendSpec>>,
    #[serde(default)]
    timeouts: Option<TimeoutsSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeoutsSpec {
    request: Option<String>,
    backend_request: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MatchSpec {
    path: Option<TypedValue>,
    #[serde(default)]
    headers: Option<Vec<NamedValue>>,
    #[serde(default)]
    query_params: Option<Vec<NamedValue>>,
    method: Option<String>,
}

#[derive(Deserialize)]
struct TypedValue {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct NamedValue {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterSpec {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<ModifierSpec>,
    response_header_modifier: Option<ModifierSpec>,
    request_redirect: Option<RedirectSpec>,
    request_mirror: Option<MirrorSpec>,
    url_rewrite: Option<UrlRewriteSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MirrorSpec {
    backend_ref: BackendSpec,
    percent: Option<u32>,
    fraction: Option<FractionSpec>,
}

#[derive(Deserialize)]
struct FractionSpec {
    numerator: u32,
    denominator: Option<u32>,
}

#[derive(Deserialize)]
struct UrlRewriteSpec {
    hostname: Option<String>,
    path: Option<RedirectPathSpec>,
}

#[derive(Deserialize)]
struct ModifierSpec {
    #[serde(default)]
    set: Option<Vec<HeaderSpec>>,
    #[serde(default)]
    add: Option<Vec<HeaderSpec>>,
    #[serde(default)]
    remove: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct HeaderSpec {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectSpec {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<RedirectPathSpec>,
    port: Option<u16>,
    status_code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectPathSpec {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
struct BackendSpec {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    port: Option<u16>,
    weight: Option<u32>,
}

fn parent_refs(list: Option<Vec<ParentSpec>>, ns: &str) -> Vec<ParentRef> {
    list.unwrap_or_default()
        .into_iter()
        .map(|p| ParentRef {
            group: p.group.unwrap_or_else(|| GATEWAY_GROUP.into()),
            kind: p.kind.unwrap_or_else(|| "Gateway".into()),
            namespace: p.namespace.unwrap_or_else(|| ns.to_owned()),
            name: p.name,
            port: p.port,
            section_name: p.section_name,
        })
        .collect()
}

fn backend_refs(list: Option<Vec<BackendSpec>>, ns: &str) -> Vec<BackendRef> {
    list.unwrap_or_default().into_iter().map(|b| backend_ref(b, ns)).collect()
}

fn backend_ref(b: BackendSpec, ns: &str) -> BackendRef {
    BackendRef {
        group: b.group.unwrap_or_default(),
        kind: b.kind.unwrap_or_else(|| "Service".into()),
        namespace: b.namespace.unwrap_or_else(|| ns.to_owned()),
        name: b.name,
        port: b.port,
        weight: b.weight.unwrap_or(1),
    }
}

/// A rule's filters: those Linkerd's protos carry, its mirrors and its URL
/// rewrite (the last one wins; the apiserver allows one).
type RuleFilters = (Vec<Filter>, Vec<Mirror>, Option<UrlRewrite>);

fn rule_filters(list: Option<Vec<FilterSpec>>, ns: &str) -> Result<RuleFilters, ModelError> {
    let (mut filters, mut mirrors, mut url_rewrite) = (Vec::new(), Vec::new(), None);
    for f in list.unwrap_or_default() {
        match f.kind.as_str() {
            "RequestMirror" => mirrors.push(mirror(f.request_mirror, ns)?),
            "URLRewrite" => url_rewrite = Some(rewrite(f.url_rewrite)?),
            _ => filters.push(filter(f)?),
        }
    }
    Ok((filters, mirrors, url_rewrite))
}

/// `percent` (0-100) or `fraction` (denominator 100 unless given); neither:
/// every request.
fn mirror(m: Option<MirrorSpec>, ns: &str) -> Result<Mirror, ModelError> {
    const WHAT: &str = "HTTPRoute RequestMirror";
    let m = m.ok_or_else(|| invalid(WHAT, "missing requestMirror"))?;
    let (numerator, denominator) = match (m.percent, m.fraction) {
        (Some(_), Some(_)) => return Err(invalid(WHAT, "both percent and fraction")),
        (Some(p), None) if p <= 100 => (p, 100),
        (Some(p), None) => return Err(invalid(WHAT, format!("percent {p} is over 100"))),
        (None, Some(f)) => match f.denominator.unwrap_or(100) {
            d if d > 0 && f.numerator <= d => (f.numerator, d),
            d => return Err(invalid(WHAT, format!("fraction {}/{d}", f.numerator))),
        },
        (None, None) => (1, 1),
    };
    Ok(Mirror { backend: backend_ref(m.backend_ref, ns), numerator, denominator })
}

fn rewrite(r: Option<UrlRewriteSpec>) -> Result<UrlRewrite, ModelError> {
    const WHAT: &str = "HTTPRoute URLRewrite";
    let r = r.ok_or_else(|| invalid(WHAT, "missing urlRewrite"))?;
    let hostname = r.hostname.filter(|h| !h.is_empty());
    if let Some(h) = &hostname {
        http::uri::Authority::try_from(h.as_str())
            .map_err(|e| invalid(WHAT, format!("hostname {h:?}: {e}")))?;
    }
    Ok(UrlRewrite {
        hostname,
        path: r.path.map(|p| path_modifier(p, "HTTPRoute URLRewrite path")).transpose()?,
    })
}

fn path_modifier(p: RedirectPathSpec, what: &'static str) -> Result<PathModifier, ModelError> {
    match (p.kind.as_str(), p.replace_full_path, p.replace_prefix_match) {
        ("ReplaceFullPath", Some(full), _) => Ok(PathModifier::Full(full)),
        ("ReplacePrefixMatch", _, Some(prefix)) => Ok(PathModifier::Prefix(prefix)),
        (kind, _, _) => Err(invalid(what, format!("type {kind:?} without its value"))),
    }
}

/// An HTTPRoute of `group` (its `metadata` and `spec`).
pub fn http_route(
    group: &str,
    key: ObjKey,
    meta: &serde_json::Value,
    spec: &serde_json::Value,
) -> Result<HttpRouteRec, ModelError> {
    let spec: Spec = serde_json::from_value(spec.clone())?;
    let ns = &key.namespace;
    let parents = parent_refs(spec.parent_refs, ns);
    let mut rules = Vec::new();
    for r in spec.rules.unwrap_or_default() {
        let mut matches =
            r.matches.unwrap_or_default().into_iter().map(route_match).collect::<Result<Vec<_>, _>>()?;
        if matches.is_empty() {
            matches.push(RouteMatch {
                path: Some(PathMatch::Prefix("/".into())),
                headers: Vec::new(),
                query_params: Vec::new(),
                method: None,
            });
        }
        let (filters, mirrors, url_rewrite) = rule_filters(r.filters, ns)?;
        let backends = backend_refs(r.backend_refs, ns);
        let timeouts = rule_timeouts(r.timeouts)?;
        rules.push(Rule { matches, filters, backends, timeouts, mirrors, url_rewrite });
    }
    let annotations = policy_annotations(meta);
    report_annotations(&key, "HTTPRoute", &annotations);
    Ok(HttpRouteRec {
        key,
        group: group.into(),
        parents,
        hostnames: spec.hostnames.unwrap_or_default(),
        rules,
        annotations,
        created: meta.get("creationTimestamp").and_then(|t| t.as_str()).map(str::to_owned),
        generation: meta.get("generation").and_then(|g| g.as_i64()),
    })
}

/// Gateway API durations (`10s`, `500ms`, `1h`; `0s` means none) are a
/// subset of Go's syntax.
fn rule_timeouts(t: Option<TimeoutsSpec>) -> Result<RuleTimeouts, ModelError> {
    let Some(t) = t else { return Ok(RuleTimeouts::default()) };
    let parse = |v: Option<String>, what: &'static str| -> Result<Option<Duration>, ModelError> {
        match v {
            None => Ok(None),
            Some(v) => match parse_go_duration(&v).map_err(|e| invalid(what, e))? {
                d if d.is_zero() => Ok(None),
                d => Ok(Some(d)),
            },
        }
    };
    Ok(RuleTimeouts {
        request: parse(t.request, "HTTPRoute timeouts.request")?,
        backend_request: parse(t.backend_request, "HTTPRoute timeouts.backendRequest")?,
    })
}

fn check_regex(what: &'static str, re: &str) -> Result<(), ModelError> {
    regex::Regex::new(re).map(|_| ()).map_err(|e| invalid(what, format!("{re:?}: {e}")))
}

fn route_match(m: MatchSpec) -> Result<RouteMatch, ModelError> {
    let path = match m.path {
        None => Some(PathMatch::Prefix("/".into())),
        Some(p) => {
            let value = p.value.unwrap_or_else(|| "/".into());
            Some(match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::Prefix(value),
                "RegularExpression" => {
                    check_regex("HTTPRoute path regex", &value)?;
                    PathMatch::Regex(value)
                }
                other => return Err(invalid("HTTPRoute path match", format!("type {other:?}"))),
            })
        }
    };
    let values = header_values;
    let method = match m.method {
        Some(method) if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() => {
            return Err(invalid("HTTPRoute method", format!("{method:?}")))
        }
        m => m,
    };
    Ok(RouteMatch {
        path,
        headers: values(m.headers, "HTTPRoute header match")?,
        query_params: values(m.query_params, "HTTPRoute query parameter match")?,
        method,
    })
}

fn header_values(
    list: Option<Vec<NamedValue>>,
    what: &'static str,
) -> Result<Vec<(String, ValueMatch)>, ModelError> {
    list.unwrap_or_default()
        .into_iter()
        .map(|v| {
            let m = match v.kind.as_deref().unwrap_or("Exact") {
                "Exact" => ValueMatch::Exact(v.value),
                "RegularExpression" => {
                    check_regex(what, &v.value)?;
                    ValueMatch::Regex(v.value)
                }
                other => return Err(invalid(what, format!("type {other:?} for {:?}", v.name))),
            };
            Ok((v.name, m))
        })
        .collect()
}

fn modifier(m: Option<ModifierSpec>, what: &'static str) -> Result<HeaderModifier, ModelError> {
    let m = m.ok_or_else(|| invalid(what, "missing its configuration"))?;
    let pairs =
        |l: Option<Vec<HeaderSpec>>| l.unwrap_or_default().into_iter().map(|h| (h.name, h.value)).collect();
    Ok(HeaderModifier { set: pairs(m.set), add: pairs(m.add), remove: m.remove.unwrap_or_default() })
}

fn filter(f: FilterSpec) -> Result<Filter, ModelError> {
    Ok(match f.kind.as_str() {
        "RequestHeaderModifier" => Filter::RequestHeaderModifier(modifier(
            f.request_header_modifier,
            "HTTPRoute RequestHeaderModifier",
        )?),
        "ResponseHeaderModifier" => Filter::ResponseHeaderModifier(modifier(
            f.response_header_modifier,
            "HTTPRoute ResponseHeaderModifier",
        )?),
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .ok_or_else(|| invalid("HTTPRoute RequestRedirect", "missing requestRedirect"))?;
            let path = r.path.map(|p| path_modifier(p, "HTTPRoute RequestRedirect path")).transpose()?;
            Filter::RequestRedirect(Redirect {
                scheme: r.scheme,
                hostname: r.hostname,
                path,
                port: r.port,
                status: r.status_code,
            })
        }
        other => Filter::Unsupported(other.to_owned()),
    })
}

// === GRPCRoute (gateway.networking.k8s.io/v1) ===

/// A gRPC method match; both parts optional (the apiserver requires one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcMethodMatch {
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcRouteMatch {
    /// `None` matches every call.
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<(String, ValueMatch)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRule {
    /// Never empty: a rule without matches matches every call.
    pub matches: Vec<GrpcRouteMatch>,
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub mirrors: Vec<Mirror>,
}

impl GrpcRule {
    /// Every Service the rule sends to: its backends and its mirrors.
    pub fn backend_refs(&self) -> impl Iterator<Item = &BackendRef> {
        self.backends.iter().chain(self.mirrors.iter().map(|m| &m.backend))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRouteRec {
    pub key: ObjKey,
    pub parents: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRule>,
    pub annotations: BTreeMap<String, String>,
    pub created: Option<String>,
    pub generation: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrpcSpec {
    #[serde(default)]
    parent_refs: Option<Vec<ParentSpec>>,
    #[serde(default)]
    hostnames: Option<Vec<String>>,
    #[serde(default)]
    rules: Option<Vec<GrpcRuleSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrpcRuleSpec {
    #[serde(default)]
    matches: Option<Vec<GrpcMatchSpec>>,
    #[serde(default)]
    filters: Option<Vec<FilterSpec>>,
    #[serde(default)]
    backend_refs: Option<Vec<BackendSpec>>,
}

#[derive(Deserialize)]
struct GrpcMatchSpec {
    method: Option<GrpcMethodSpec>,
    #[serde(default)]
    headers: Option<Vec<NamedValue>>,
}

#[derive(Deserialize)]
struct GrpcMethodSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

/// A GRPCRoute (its `metadata` and `spec`). A `RegularExpression` method
/// match is refused with the route: the proxy's gRPC match is exact only, and
/// serving the route without it would widen what it matches.
pub fn grpc_route(
    key: ObjKey,
    meta: &serde_json::Value,
    spec: &serde_json::Value,
) -> Result<GrpcRouteRec, ModelError> {
    let spec: GrpcSpec = serde_json::from_value(spec.clone())?;
    let ns = &key.namespace;
    let mut rules = Vec::new();
    for r in spec.rules.unwrap_or_default() {
        let mut matches = Vec::new();
        for m in r.matches.unwrap_or_default() {
            let method = match m.method {
                None => None,
                Some(mm) => match mm.kind.as_deref().unwrap_or("Exact") {
                    "Exact" => Some(GrpcMethodMatch { service: mm.service, method: mm.method }),
                    other => return Err(invalid("GRPCRoute method match", format!("type {other:?}"))),
                },
            };
            let headers = header_values(m.headers, "GRPCRoute header match")?;
            matches.push(GrpcRouteMatch { method, headers });
        }
        if matches.is_empty() {
            matches.push(GrpcRouteMatch::default());
        }
        // GRPCRoute has no URLRewrite (the apiserver refuses one).
        let (filters, mirrors, _) = rule_filters(r.filters, ns)?;
        rules.push(GrpcRule { matches, filters, backends: backend_refs(r.backend_refs, ns), mirrors });
    }
    let annotations = policy_annotations(meta);
    report_annotations(&key, "GRPCRoute", &annotations);
    Ok(GrpcRouteRec {
        parents: parent_refs(spec.parent_refs, ns),
        key,
        hostnames: spec.hostnames.unwrap_or_default(),
        rules,
        annotations,
        created: meta.get("creationTimestamp").and_then(|t| t.as_str()).map(str::to_owned),
        generation: meta.get("generation").and_then(|g| g.as_i64()),
    })
}

// === Proto conversion ===

pub fn proto_grpc_match(m: &GrpcRouteMatch) -> linkerd2_proxy_api::grpc_route::GrpcRouteMatch {
    use linkerd2_proxy_api::grpc_route as grpc;
    grpc::GrpcRouteMatch {
        rpc: m.method.as_ref().map(|mm| grpc::GrpcRpcMatch {
            service: mm.service.clone().unwrap_or_default(),
            method: mm.method.clone().unwrap_or_default(),
        }),
        headers: proto_header_matches(&m.headers),
    }
}

/// `hostnames` as host matches: `*.example.com` matches by suffix.
pub fn proto_hosts(hostnames: &[String]) -> Vec<proto::HostMatch> {
    hostnames
        .iter()
        .map(|h| proto::HostMatch {
            r#match: Some(match h.strip_prefix("*.") {
                Some(suffix) => proto::host_match::Match::Suffix(proto::host_match::Suffix {
                    reverse_labels: suffix.split('.').rev().map(str::to_owned).collect(),
                }),
                None => proto::host_match::Match::Exact(h.clone()),
            }),
        })
        .collect()
}

pub fn proto_match(m: &RouteMatch) -> proto::HttpRouteMatch {
    use proto::{path_match, query_param_match};
    proto::HttpRouteMatch {
        path: m.path.as_ref().map(|p| proto::PathMatch {
            kind: Some(match p {
                PathMatch::Exact(s) => path_match::Kind::Exact(s.clone()),
                PathMatch::Prefix(s) => path_match::Kind::Prefix(s.clone()),
                PathMatch::Regex(s) => path_match::Kind::Regex(s.clone()),
            }),
        }),
        headers: proto_header_matches(&m.headers),
        query_params: m
            .query_params
            .iter()
            .map(|(name, v)| proto::QueryParamMatch {
                name: name.clone(),
                value: Some(match v {
                    ValueMatch::Exact(s) => query_param_match::Value::Exact(s.clone()),
                    ValueMatch::Regex(s) => query_param_match::Value::Regex(s.clone()),
                }),
            })
            .collect(),
        method: m.method.as_deref().and_then(|s| http::Method::from_bytes(s.as_bytes()).ok()).map(Into::into),
    }
}

fn proto_header_matches(headers: &[(String, ValueMatch)]) -> Vec<proto::HeaderMatch> {
    use proto::header_match;
    headers
        .iter()
        .map(|(name, v)| proto::HeaderMatch {
            name: name.clone(),
            value: Some(match v {
                ValueMatch::Exact(s) => header_match::Value::Exact(s.clone().into_bytes()),
                ValueMatch::Regex(s) => header_match::Value::Regex(s.clone()),
            }),
        })
        .collect()
}

fn proto_headers(pairs: &[(String, String)]) -> Option<http_types::Headers> {
    (!pairs.is_empty()).then(|| http_types::Headers {
        headers: pairs
            .iter()
            .map(|(name, value)| http_types::headers::Header {
                name: name.clone(),
                value: value.clone().into_bytes(),
            })
            .collect(),
    })
}

pub fn proto_header_modifier(m: &HeaderModifier) -> proto::RequestHeaderModifier {
    proto::RequestHeaderModifier {
        add: proto_headers(&m.add),
        set: proto_headers(&m.set),
        remove: m.remove.clone(),
    }
}

pub fn proto_path_modifier(p: &PathModifier) -> proto::PathModifier {
    proto::PathModifier {
        replace: Some(match p {
            PathModifier::Full(s) => proto::path_modifier::Replace::Full(s.clone()),
            PathModifier::Prefix(s) => proto::path_modifier::Replace::Prefix(s.clone()),
        }),
    }
}

pub fn proto_redirect(r: &Redirect) -> proto::RequestRedirect {
    use http_types::scheme::{Registered, Type};
    proto::RequestRedirect {
        scheme: r.scheme.as_deref().map(|s| http_types::Scheme {
            r#type: Some(match s.to_ascii_lowercase().as_str() {
                "http" => Type::Registered(Registered::Http.into()),
                "https" => Type::Registered(Registered::Https.into()),
                _ => Type::Unregistered(s.to_owned()),
            }),
        }),
        host: r.hostname.clone().unwrap_or_default(),
        path: r.path.as_ref().map(proto_path_modifier),
        port: r.port.map(u32::from).unwrap_or_default(),
        status: r.status.map(u32::from).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> serde_json::Value {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
    }

    fn first(name: &str, group: &str) -> HttpRouteRec {
        let list = fixture(name);
        let item = &list["items"][0];
        let key = ObjKey::new(
            item["metadata"]["namespace"].as_str().expect("ns"),
            item["metadata"]["name"].as_str().expect("name"),
        );
        http_route(group, key, &item["metadata"], &item["spec"]).expect("valid route")
    }

    #[test]
    fn a_policy_route_with_a_server_parent() {
        let r = first("httproutes.policy.linkerd.io-emojivoto.list.json", POLICY_GROUP);
        assert!(r.parents[0].is_server(&ObjKey::new("emojivoto", "web-http")));
        assert!(!r.parents[0].is_server(&ObjKey::new("other", "web-http")));
        assert_eq!(r.rules.len(), 2);
        assert_eq!(r.rules[0].matches[0].path, Some(PathMatch::Exact("/api/list".into())));
        assert_eq!(r.rules[0].matches[0].method.as_deref(), Some("GET"));
        assert_eq!(r.rules[1].matches[0].path, Some(PathMatch::Prefix("/api/vote".into())));
        let m = proto_match(&r.rules[0].matches[0]);
        assert_eq!(m.method, Some(http::Method::GET.into()));
    }

    #[test]
    fn a_gateway_route_with_headers_and_filters() {
        let r = first("httproutes.gateway.networking.k8s.io-emojivoto.list.json", GATEWAY_GROUP);
        assert_eq!((r.parents[0].kind.as_str(), r.parents[0].port), ("Service", Some(8080)));
        assert_eq!(r.rules[0].matches[0].headers, [("x-canary".into(), ValueMatch::Exact("true".into()))]);
        assert_eq!(r.rules[1].backends.len(), 2);
        assert_eq!(r.rules[1].backends[0].weight, 90);
        assert!(
            matches!(&r.rules[1].filters[0], Filter::RequestHeaderModifier(m) if m.remove == ["x-debug"])
        );
        assert_eq!(r.rules[1].filters.len(), 1);
        let mirror = &r.rules[1].mirrors[0];
        assert_eq!((mirror.backend.name.as_str(), mirror.backend.port), ("voting-v2", Some(8080)));
        assert_eq!((mirror.numerator, mirror.denominator), (1, 1), "no percent: every request");
        assert!(r.rules[1].url_rewrite.is_none());
    }

    /// The fixture's GRPCRoute: exact method matches, the apiserver's
    /// defaults (weight 1, kind Service), Linkerd's annotations only.
    #[test]
    fn the_fixture_grpc_route() {
        let list = fixture("grpcroutes.gateway.networking.k8s.io-emojivoto.list.json");
        let item = &list["items"][0];
        let r = grpc_route(ObjKey::new("emojivoto", "emoji-route"), &item["metadata"], &item["spec"])
            .expect("valid route");
        assert!(r.parents[0].is_service(&ObjKey::new("emojivoto", "emoji-svc"), 8080));
        assert!(!r.parents[0].is_service(&ObjKey::new("emojivoto", "emoji-svc"), 9090));
        assert_eq!(r.rules.len(), 2);
        assert_eq!(
            r.rules[1].matches[0].method,
            Some(GrpcMethodMatch {
                service: Some("emojivoto.v1.EmojiService".into()),
                method: Some("ListAll".into())
            })
        );
        assert_eq!((r.rules[0].backends[0].weight, r.rules[0].backends[0].kind.as_str()), (1, "Service"));
        assert_eq!(
            r.annotations.keys().collect::<Vec<_>>(),
            ["retry.linkerd.io/grpc", "retry.linkerd.io/limit", "timeout.linkerd.io/request"]
        );
        let no_matches =
            grpc_route(ObjKey::new("ns", "r"), &serde_json::Value::Null, &serde_json::json!({"rules": [{}]}))
                .expect("valid");
        assert_eq!(no_matches.rules[0].matches, [GrpcRouteMatch::default()]);
    }

    #[test]
    fn rule_timeouts() {
        let spec = serde_json::json!({"rules": [{"timeouts": {"request": "10s", "backendRequest": "500ms"}}, {"timeouts": {"request": "0s"}}]});
        let r = http_route(GATEWAY_GROUP, ObjKey::new("ns", "r"), &serde_json::Value::Null, &spec)
            .expect("valid");
        assert_eq!(
            r.rules[0].timeouts,
            RuleTimeouts {
                request: Some(Duration::from_secs(10)),
                backend_request: Some(Duration::from_millis(500))
            }
        );
        assert_eq!(r.rules[1].timeouts, RuleTimeouts::default(), "0s disables the timeout");
        let bad = serde_json::json!({"rules": [{"timeouts": {"request": "soon"}}]});
        assert!(http_route(GATEWAY_GROUP, ObjKey::new("ns", "r"), &serde_json::Value::Null, &bad).is_err());
    }

    #[test]
    fn bad_regexes_and_unknown_match_types_are_refused() {
        let key = ObjKey::new("ns", "r");
        let bad = [
            serde_json::json!({"rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/a/(("}}]}]}),
            serde_json::json!({"rules": [{"matches": [{"path": {"type": "Glob", "value": "/a/*"}}]}]}),
            serde_json::json!({"rules": [{"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "["}]}]}]}),
            serde_json::json!({"rules": [{"matches": [{"method": "GE T"}]}]}),
        ];
        for spec in bad {
            assert!(
                http_route(POLICY_GROUP, key.clone(), &serde_json::Value::Null, &spec).is_err(),
                "{spec}"
            );
        }
        let ok = serde_json::json!({"hostnames": ["*.example.com"], "rules": [{}]});
        let r = http_route(POLICY_GROUP, key, &serde_json::Value::Null, &ok).expect("valid");
        assert_eq!(r.rules[0].matches[0].path, Some(PathMatch::Prefix("/".into())));
        let hosts = proto_hosts(&r.hostnames);
        assert_eq!(
            hosts[0].r#match,
            Some(proto::host_match::Match::Suffix(proto::host_match::Suffix {
                reverse_labels: vec!["com".into(), "example".into()]
            }))
        );
    }
}
