//! The Gateway API `status.parents` weft publishes on mesh routes, so
//! `kubectl get httproute -o yaml` tells whether weft took a route.
//!
//! A pure function of the index and of what the API last showed: for each
//! parentRef weft handles (a core `Service`, or a `policy.linkerd.io`
//! `Server`), one `RouteParentStatus` with `controllerName`
//! [`CONTROLLER_NAME`], conditions `Accepted` and `ResolvedRefs`, and
//! `observedGeneration`. Entries of other controllers are kept as the API
//! showed them; a condition whose status and reason did not change keeps its
//! `lastTransitionTime`, so an unchanged route computes to exactly what it
//! already has and nothing is written.

use serde_json::{json, Value};

use crate::{
    index::State,
    model::{Kind, ObjKey},
    route::{BackendRef, ParentRef, CORE_GROUP, POLICY_GROUP},
};

/// weft's `controllerName` (a domain-prefixed path, as the Gateway API
/// requires; Linkerd's is `linkerd.io/policy-controller`).
pub const CONTROLLER_NAME: &str = "weft.io/destination";

/// The route kinds weft publishes status on.
pub const ROUTE_KINDS: [Kind; 3] = [Kind::HTTPRoute, Kind::GatewayHTTPRoute, Kind::GRPCRoute];

/// What status needs of a route, whichever its kind.
struct RouteView<'a> {
    parents: &'a [ParentRef],
    backends: Vec<&'a BackendRef>,
    generation: Option<i64>,
}

fn view<'a>(state: &'a State, kind: Kind, key: &ObjKey) -> Option<RouteView<'a>> {
    match kind {
        Kind::HTTPRoute | Kind::GatewayHTTPRoute => {
            let routes =
                if kind == Kind::HTTPRoute { &state.http_routes } else { &state.gateway_http_routes };
            let r = routes.get(key)?;
            Some(RouteView {
                parents: &r.parents,
                backends: r.rules.iter().flat_map(|r| r.backend_refs()).collect(),
                generation: r.generation,
            })
        }
        Kind::GRPCRoute => {
            let r = state.grpc_routes.get(key)?;
            Some(RouteView {
                parents: &r.parents,
                backends: r.rules.iter().flat_map(|r| r.backend_refs()).collect(),
                generation: r.generation,
            })
        }
        _ => None,
    }
}

/// Every route of the kinds above in the index.
pub fn routes(state: &State) -> impl Iterator<Item = (Kind, &ObjKey)> {
    let http = state.http_routes.keys().map(|k| (Kind::HTTPRoute, k));
    let gateway = state.gateway_http_routes.keys().map(|k| (Kind::GatewayHTTPRoute, k));
    let grpc = state.grpc_routes.keys().map(|k| (Kind::GRPCRoute, k));
    http.chain(gateway).chain(grpc)
}

fn is_core(group: &str) -> bool {
    group.is_empty() || group == CORE_GROUP
}

fn handled(p: &ParentRef) -> bool {
    (is_core(&p.group) && p.kind == "Service") || (p.group == POLICY_GROUP && p.kind == "Server")
}

fn parent_exists(state: &State, p: &ParentRef) -> bool {
    let key = ObjKey::new(&p.namespace, &p.name);
    if p.kind == "Service" {
        state.services.contains_key(&key)
    } else {
        state.servers.contains_key(&key)
    }
}

/// The parentRef as published: the route's reference with its defaults
/// filled in (namespace, group), which is how Linkerd writes it too.
fn parent_ref_json(p: &ParentRef) -> Value {
    let mut v = json!({ "group": p.group, "kind": p.kind, "namespace": p.namespace, "name": p.name });
    if let Some(port) = p.port {
        v["port"] = json!(port);
    }
    if let Some(section) = &p.section_name {
        v["sectionName"] = json!(section);
    }
    v
}

/// `(status, reason, message)` of `ResolvedRefs`: the first backend that is
/// not a Service, or names one that does not exist, decides.
fn resolved_refs(state: &State, backends: &[&BackendRef]) -> (bool, &'static str, String) {
    for b in backends {
        if !(is_core(&b.group) && b.kind == "Service") {
            return (false, "InvalidKind", format!("backend {}/{} is not a Service", b.kind, b.name));
        }
        if !state.services.contains_key(&ObjKey::new(&b.namespace, &b.name)) {
            return (false, "BackendNotFound", format!("Service {}/{} not found", b.namespace, b.name));
        }
    }
    (true, "ResolvedRefs", String::new())
}

fn condition(
    kind: &str,
    (status, reason, message): (bool, &str, String),
    generation: Option<i64>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    // Gateway API: the time of the last change of status, kept otherwise.
    let kept = previous
        .and_then(|p| p["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .filter(|c| c["status"] == status && c["reason"] == reason)
        .and_then(|c| c["lastTransitionTime"].as_str());
    let mut c = json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": kept.unwrap_or(now),
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

/// The `status.parents` to publish on route `key` of `kind`, given the list
/// the API shows now (`observed`) and the time to stamp on changed
/// conditions (RFC 3339); `None` when the index has no such route.
pub fn desired(state: &State, kind: Kind, key: &ObjKey, observed: &[Value], now: &str) -> Option<Vec<Value>> {
    let route = view(state, kind, key)?;
    let ours = |p: &&Value| p["controllerName"] == CONTROLLER_NAME;
    let mut parents: Vec<Value> = observed.iter().filter(|p| !ours(p)).cloned().collect();
    let resolved = resolved_refs(state, &route.backends);
    for p in route.parents.iter().filter(|p| handled(p)) {
        let parent_ref = parent_ref_json(p);
        let previous = observed.iter().filter(ours).find(|o| o["parentRef"] == parent_ref);
        let accepted = if parent_exists(state, p) {
            (true, "Accepted", String::new())
        } else {
            (false, "NoMatchingParent", format!("{} {}/{} not found", p.kind, p.namespace, p.name))
        };
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", accepted, route.generation, previous, now),
                condition("ResolvedRefs", resolved.clone(), route.generation, previous, now),
            ],
        }));
    }
    Some(parents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{index::Index, model::Object, route};

    const NOW: &str = "2026-12-03T20:00:00Z";

    fn fixture(name: &str) -> Value {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
    }

    fn key_of(item: &Value) -> ObjKey {
        ObjKey::new(
            item["metadata"]["namespace"].as_str().expect("ns"),
            item["metadata"]["name"].as_str().expect("name"),
        )
    }

    /// The captured Services and Gateway HTTPRoutes (voting-route on
    /// voting-svc, with the canary voting-v2 that does not exist), plus
    /// `extra` routes.
    fn state(extra: &[Value]) -> tokio::sync::watch::Receiver<State> {
        state_with(extra, Vec::new())
    }

    fn state_with(extra: &[Value], mut objs: Vec<Object>) -> tokio::sync::watch::Receiver<State> {
        let index = Index::new();
        for item in fixture("services-emojivoto.list.json")["items"].as_array().expect("items") {
            let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(item.clone()).expect("svc");
            objs.push(Object::Service(crate::model::service(&svc).expect("service")));
        }
        let routes = fixture("httproutes.gateway.networking.k8s.io-emojivoto.list.json");
        for item in routes["items"].as_array().expect("items").iter().chain(extra) {
            let r = route::http_route(route::GATEWAY_GROUP, key_of(item), &item["metadata"], &item["spec"])
                .expect("route");
            objs.push(Object::GatewayHTTPRoute(r));
        }
        index.replace_all(objs);
        index.subscribe()
    }

    fn service(name: &str) -> Object {
        let svc = json!({"metadata": {"name": name, "namespace": "emojivoto"},
            "spec": {"ports": [{"port": 8080}], "clusterIP": "10.0.0.9"}});
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(svc).expect("svc");
        Object::Service(crate::model::service(&svc).expect("service"))
    }

    fn conditions(parent: &Value) -> Vec<(String, String, String)> {
        parent["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| {
                let s = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
                (s("type"), s("status"), s("reason"))
            })
            .collect()
    }

    fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
        (t.into(), s.into(), r.into())
    }

    #[test]
    fn a_route_to_an_existing_service_is_accepted_and_resolved() {
        let web = json!({
            "metadata": {"name": "web-route", "namespace": "emojivoto", "generation": 3},
            "spec": {
                "parentRefs": [{"group": "core", "kind": "Service", "name": "web-svc", "port": 80}],
                "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}, {"name": "web-v2", "port": 80}]}],
            },
        });
        let rx = state(&[web]);
        let s = rx.borrow();
        let got = desired(&s, Kind::GatewayHTTPRoute, &ObjKey::new("emojivoto", "web-route"), &[], NOW)
            .expect("route indexed");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0]["parentRef"],
            json!({"group": "core", "kind": "Service", "namespace": "emojivoto", "name": "web-svc", "port": 80})
        );
        assert_eq!(got[0]["controllerName"], CONTROLLER_NAME);
        assert_eq!(
            conditions(&got[0]),
            [cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "True", "ResolvedRefs")]
        );
        assert_eq!(got[0]["conditions"][0]["observedGeneration"], 3);
        assert_eq!(got[0]["conditions"][0]["lastTransitionTime"], NOW);
    }

    #[test]
    fn the_canary_to_a_missing_service_is_accepted_but_not_resolved() {
        let rx = state(&[]);
        let s = rx.borrow();
        let got = desired(&s, Kind::GatewayHTTPRoute, &ObjKey::new("emojivoto", "voting-route"), &[], NOW)
            .expect("route indexed");
        assert_eq!(
            conditions(&got[0]),
            [cond("Accepted", "True", "Accepted"), cond("ResolvedRefs", "False", "BackendNotFound")]
        );
        assert!(got[0]["conditions"][1]["message"].as_str().unwrap_or_default().contains("voting-v2"));
    }

    #[test]
    fn a_parent_service_that_does_not_exist_is_not_accepted() {
        let r = json!({
            "metadata": {"name": "ghost-route", "namespace": "emojivoto"},
            "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "ghost-svc", "port": 80}]},
        });
        let rx = state(&[r]);
        let s = rx.borrow();
        let got = desired(&s, Kind::GatewayHTTPRoute, &ObjKey::new("emojivoto", "ghost-route"), &[], NOW)
            .expect("route indexed");
        assert_eq!(conditions(&got[0])[0], cond("Accepted", "False", "NoMatchingParent"));
    }

    #[test]
    fn a_non_service_backend_is_an_invalid_kind_and_gateway_parents_are_not_ours() {
        let r = json!({
            "metadata": {"name": "mixed", "namespace": "emojivoto"},
            "spec": {
                "parentRefs": [
                    {"name": "some-gateway"},
                    {"kind": "Service", "group": "", "name": "web-svc"},
                ],
                "rules": [{"backendRefs": [{"kind": "Bucket", "group": "example.com", "name": "b"}]}],
            },
        });
        let rx = state(&[r]);
        let s = rx.borrow();
        let got = desired(&s, Kind::GatewayHTTPRoute, &ObjKey::new("emojivoto", "mixed"), &[], NOW)
            .expect("route indexed");
        assert_eq!(got.len(), 1, "the Gateway parent is left to its controller");
        assert_eq!(got[0]["parentRef"]["name"], "web-svc");
        assert_eq!(conditions(&got[0])[1], cond("ResolvedRefs", "False", "InvalidKind"));
        assert!(got[0]["conditions"][0].get("observedGeneration").is_none());
    }

    #[test]
    fn other_controllers_entries_are_kept_and_an_unchanged_status_computes_equal() {
        let rx = state(&[]);
        let s = rx.borrow();
        let key = ObjKey::new("emojivoto", "voting-route");
        let theirs = json!({
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
            "controllerName": "example.com/gateway",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}],
        });
        let first = desired(&s, Kind::GatewayHTTPRoute, &key, std::slice::from_ref(&theirs), NOW)
            .expect("route indexed");
        assert_eq!(first[0], theirs);
        assert_eq!(first.len(), 2);
        // Later, nothing changed: the same list, times kept, so no write.
        let later =
            desired(&s, Kind::GatewayHTTPRoute, &key, &first, "2026-12-03T21:00:00Z").expect("indexed");
        assert_eq!(later, first);
    }

    #[test]
    fn only_the_condition_that_changed_gets_a_new_transition_time() {
        let key = ObjKey::new("emojivoto", "voting-route");
        let before = desired(&state(&[]).borrow(), Kind::GatewayHTTPRoute, &key, &[], NOW).expect("indexed");
        // voting-v2 appears: ResolvedRefs turns True, Accepted stays.
        let rx = state_with(&[], vec![service("voting-v2")]);
        let s = rx.borrow();
        let later = "2026-12-03T21:00:00Z";
        let after = desired(&s, Kind::GatewayHTTPRoute, &key, &before, later).expect("indexed");
        assert_eq!(after[0]["conditions"][0]["lastTransitionTime"], NOW);
        assert_eq!(after[0]["conditions"][1]["lastTransitionTime"], later);
        assert_eq!(after[0]["conditions"][1]["status"], "True");
    }
    #[test]
    fn a_mirror_to_a_missing_service_is_not_resolved() {
        let r = json!({
            "metadata": {"name": "mirrored", "namespace": "emojivoto"},
            "spec": {
                "parentRefs": [{"group": "core", "kind": "Service", "name": "web-svc", "port": 80}],
                "rules": [{
                    "backendRefs": [{"name": "web-svc", "port": 80}],
                    "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 80}}}],
                }],
            },
        });
        let rx = state(&[r]);
        let s = rx.borrow();
        let got = desired(&s, Kind::GatewayHTTPRoute, &ObjKey::new("emojivoto", "mirrored"), &[], NOW)
            .expect("route indexed");
        assert_eq!(conditions(&got[0])[1], cond("ResolvedRefs", "False", "BackendNotFound"));
        assert!(got[0]["conditions"][1]["message"].as_str().unwrap_or_default().contains("emojivoto/shadow"));
    }
}
