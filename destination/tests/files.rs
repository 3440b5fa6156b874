//! The file backend end to end: manifests on disk → index → gRPC streams.

mod common;

use std::time::Duration;

use common::*;
use weft_destination::{files, index::Index, MeshConfig};

const ID_WEB: &str = "web.emojivoto.serviceaccount.identity.weft.cluster.local";

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: emojivoto}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: emojivoto}
spec:
  serviceAccountName: web
  containers: [{name: web}, {name: weft-proxy}]
status: {phase: Running, podIP: 10.42.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: emojivoto}
spec:
  serviceAccountName: web
  containers: [{name: web}]
status: {phase: Running, podIP: 10.42.0.12}
---
# Ignored: discovery does not use Deployments.
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: emojivoto}
"#;

fn slice(endpoints: &[(&str, &str, bool)]) -> String {
    let mut s = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-svc-abcde\n  namespace: emojivoto\n  labels: {kubernetes.io/service-name: web-svc}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for (ip, pod, ready) in endpoints {
        s.push_str(&format!(
            "- addresses: [{ip}]\n  conditions: {{ready: {ready}, serving: {ready}, terminating: false}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: emojivoto}}\n"
        ));
    }
    s
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{name: web-split, namespace: emojivoto}}\nspec:\n  service: web-svc\n  backends:\n  - {{service: web-v1, weight: {v1}}}\n  - {{service: web-v2, weight: {v2}}}\n"
    )
}

async fn start_files(dir: &std::path::Path) -> Server {
    let index = Index::new();
    let loader = files::Loader::new(dir, MeshConfig::default());
    tokio::spawn(files::run(loader, index.clone(), files::DEFAULT_POLL_INTERVAL));
    start(index, MeshConfig::default()).await
}

#[tokio::test]
async fn get_serves_endpoints_and_file_edits_push_adds_and_removes() {
    let dir = temp_dir("edits");
    write(&dir.join("web.yaml"), SERVICE);
    write(&dir.join("slice.yaml"), &slice(&[("10.42.0.11", "web-0", true)]));
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;

    let mut s = get(&mut c, "web-svc.emojivoto.svc.cluster.local:80").await;
    // The meshed pod comes with its identity and the HTTP/2 hint.
    assert_eq!(u(next(&mut s, SECOND, "initial").await), U::Add(vec![meshed("10.42.0.11:8080", ID_WEB)]));

    // Short forms and the cluster IP resolve to the same service.
    for path in ["web-svc.emojivoto.svc:80", "web-svc.emojivoto:80", "10.96.0.10:80"] {
        let mut other = get(&mut c, path).await;
        assert_eq!(u(next(&mut other, SECOND, path).await), U::Add(vec![meshed("10.42.0.11:8080", ID_WEB)]));
    }

    // An unmeshed pod appears: pushed within a second, without identity.
    write(&dir.join("slice.yaml"), &slice(&[("10.42.0.11", "web-0", true), ("10.42.0.12", "web-1", true)]));
    assert_eq!(u(next(&mut s, SECOND, "add").await), U::Add(vec![plain("10.42.0.12:8080")]));

    // The meshed one becomes not ready: removed.
    write(&dir.join("slice.yaml"), &slice(&[("10.42.0.11", "web-0", false), ("10.42.0.12", "web-1", true)]));
    assert_eq!(u(next(&mut s, SECOND, "remove").await), U::Remove(vec!["10.42.0.11:8080".into()]));

    // The last one goes: the service still exists, so exists=true.
    write(&dir.join("slice.yaml"), &slice(&[]));
    assert_eq!(u(next(&mut s, SECOND, "empty").await), U::NoEndpoints(true));

    // The service file is deleted: the service no longer exists.
    std::fs::remove_file(dir.join("web.yaml")).unwrap();
    assert_eq!(u(next(&mut s, SECOND, "gone").await), U::NoEndpoints(false));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pod_ip_lookups_resolve_to_the_pod() {
    let dir = temp_dir("podip");
    write(&dir.join("web.yaml"), SERVICE);
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;

    let mut s = get(&mut c, "10.42.0.11:8080").await;
    assert_eq!(u(next(&mut s, SECOND, "pod ip").await), U::Add(vec![meshed("10.42.0.11:8080", ID_WEB)]));

    let mut p = get_profile(&mut c, "10.42.0.11:8080").await;
    let profile = next(&mut p, SECOND, "pod profile").await;
    assert_eq!(profile.fully_qualified_name, "");
    assert_eq!(
        ep(profile.endpoint.as_ref().expect("endpoint set for a pod IP")),
        meshed("10.42.0.11:8080", ID_WEB)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dual-stack pod: either of its `podIPs` finds it, and a proxy asking
/// for `[ip]:port` gets the endpoint back with the same IPv6 address.
#[tokio::test]
async fn both_ips_of_a_dual_stack_pod_resolve_to_the_pod() {
    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: emojivoto}
spec:
  serviceAccountName: web
  containers: [{name: web}, {name: weft-proxy}]
status:
  phase: Running
  podIP: 10.42.0.11
  podIPs: [{ip: 10.42.0.11}, {ip: "fd00:42::11"}]
"#;
    let dir = temp_dir("dualstack");
    write(&dir.join("web.yaml"), POD);
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;

    for addr in ["[fd00:42::11]:8080", "10.42.0.11:8080"] {
        let mut s = get(&mut c, addr).await;
        assert_eq!(u(next(&mut s, SECOND, addr).await), U::Add(vec![meshed(addr, ID_WEB)]), "{addr}");
        let mut p = get_profile(&mut c, addr).await;
        let profile = next(&mut p, SECOND, addr).await;
        let endpoint = profile.endpoint.as_ref().unwrap_or_else(|| panic!("{addr}: no endpoint"));
        assert_eq!(ep(endpoint), meshed(addr, ID_WEB), "{addr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unknown_names_get_no_endpoints_and_a_default_profile() {
    let dir = temp_dir("unknown");
    write(&dir.join("web.yaml"), SERVICE);
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;

    for path in ["nope.emojivoto.svc.cluster.local:80", "192.0.2.1:80", "www.example.com:443"] {
        let mut s = get(&mut c, path).await;
        assert_eq!(u(next(&mut s, SECOND, path).await), U::NoEndpoints(false), "{path}");
        let mut p = get_profile(&mut c, path).await;
        let profile = next(&mut p, SECOND, path).await;
        assert_eq!(profile.fully_qualified_name, "", "{path}");
        assert!(profile.routes.is_empty() && profile.dst_overrides.is_empty() && profile.endpoint.is_none());
        let budget = profile.retry_budget.expect("default retry budget");
        assert_eq!((budget.retry_ratio, budget.min_retries_per_second), (0.2, 10));
    }

    // A path that is not HOST:PORT is a client bug: InvalidArgument.
    for path in ["web:notaport", "bad path/x", "http://web-svc.emojivoto:80"] {
        let err = c.get(req(path)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{path}");
        assert!(err.message().contains("invalid destination path"), "{path}: {}", err.message());
    }

    // An unknown service that appears later is pushed to the open stream.
    let mut s = get(&mut c, "late.emojivoto.svc.cluster.local:80").await;
    assert_eq!(u(next(&mut s, SECOND, "late initial").await), U::NoEndpoints(false));
    write(
        &dir.join("late.yaml"),
        "apiVersion: weft.io/v1alpha1\nkind: StaticEndpoints\nmetadata: {name: late, namespace: emojivoto}\nspec:\n  ports:\n  - port: 80\n    endpoints:\n    - address: 127.0.0.1:18080\n",
    );
    assert_eq!(u(next(&mut s, SECOND, "late add").await), U::Add(vec![plain("127.0.0.1:18080")]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn static_endpoints_with_identities_and_weights() {
    let dir = temp_dir("static");
    write(
        &dir.join("db.yml"),
        r#"
apiVersion: weft.io/v1alpha1
kind: StaticEndpoints
metadata: {name: db, namespace: prod}
spec:
  ports:
  - port: 5432
    endpoints:
    - {address: "127.0.0.1:15432", serviceAccount: db, weight: 3}
    - {address: "[::1]:15432", identity: "db.prod.serviceaccount.identity.weft.cluster.local"}
    - {address: "127.0.0.2:15432"}
"#,
    );
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;
    let mut s = get(&mut c, "db.prod.svc.cluster.local:5432").await;
    let id = "db.prod.serviceaccount.identity.weft.cluster.local";
    let update = next(&mut s, SECOND, "static").await;
    let weights: Vec<u32> = match &update.update {
        Some(linkerd2_proxy_api::destination::update::Update::Add(set)) => {
            set.addrs.iter().map(|a| a.weight).collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(weights.iter().sum::<u32>(), 3 + 10_000 + 10_000);
    assert_eq!(
        u(update),
        U::Add(vec![meshed("127.0.0.1:15432", id), plain("127.0.0.2:15432"), meshed("[::1]:15432", id)])
    );
    // A port the static service does not list exists but has no endpoints.
    let mut s = get(&mut c, "db.prod.svc.cluster.local:80").await;
    assert_eq!(u(next(&mut s, SECOND, "other port").await), U::NoEndpoints(true));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn traffic_split_weight_change_reaches_profile_subscribers_within_a_second() {
    let dir = temp_dir("split");
    write(&dir.join("web.yaml"), SERVICE);
    write(&dir.join("split.yaml"), &split(900, 100));
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;

    let mut p = get_profile(&mut c, "web-svc.emojivoto.svc.cluster.local:80").await;
    let profile = next(&mut p, SECOND, "initial profile").await;
    assert_eq!(profile.fully_qualified_name, "web-svc.emojivoto.svc.cluster.local");
    assert_eq!(
        overrides(&profile),
        [
            ("web-v1.emojivoto.svc.cluster.local:80".to_owned(), 9_000_000),
            ("web-v2.emojivoto.svc.cluster.local:80".to_owned(), 1_000_000)
        ]
    );

    let changed_at = std::time::Instant::now();
    write(&dir.join("split.yaml"), &split(500, 500));
    let profile = next(&mut p, SECOND, "split change").await;
    assert!(changed_at.elapsed() < SECOND);
    assert_eq!(overrides(&profile).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [5_000_000, 5_000_000]);

    // An unrelated change sends nothing.
    write(&dir.join("other.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    quiet(&mut p, Duration::from_millis(1200)).await;

    // The split removed: no overrides any more.
    std::fs::remove_file(dir.join("split.yaml")).unwrap();
    let profile = next(&mut p, SECOND, "split removed").await;
    assert!(profile.dst_overrides.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn malformed_manifests_are_reported_and_skipped() {
    let dir = temp_dir("malformed");
    write(&dir.join("web.yaml"), SERVICE);
    write(&dir.join("slice.yaml"), &slice(&[("10.42.0.11", "web-0", true)]));
    // Not YAML at all.
    write(&dir.join("broken.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n");
    // Valid YAML, one bad document among good ones.
    write(
        &dir.join("mixed.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: good, namespace: emojivoto}\nspec: {ports: [{port: 81}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: emojivoto}\nspec: {ports: [{port: \"eighty\"}]}\n",
    );

    let mut loader = files::Loader::new(&dir, MeshConfig::default());
    let scan = loader.scan();
    let mut reported: Vec<String> = scan.errors.iter().map(|e| e.to_string()).collect();
    reported.sort();
    assert_eq!(reported.len(), 2, "{reported:#?}");
    assert!(reported[0].contains("broken.yaml") && reported[0].contains("invalid YAML"), "{}", reported[0]);
    assert!(reported[1].contains("mixed.yaml") && reported[1].contains("document 2 (Service emojivoto/bad)"));
    let names: Vec<String> = loader.objects().iter().map(|o| o.key().name.clone()).collect();
    assert!(names.contains(&"good".to_owned()) && names.contains(&"web-svc".to_owned()));
    assert!(!names.contains(&"bad".to_owned()));
    // Reported once per change, not on every poll.
    assert!(loader.scan().errors.is_empty());

    // The server keeps serving everything else.
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;
    let mut s = get(&mut c, "web-svc.emojivoto.svc.cluster.local:80").await;
    assert_eq!(u(next(&mut s, SECOND, "served").await), U::Add(vec![meshed("10.42.0.11:8080", ID_WEB)]));

    // Breaking a good file keeps its last good contents in effect.
    write(&dir.join("slice.yaml"), "endpoints: [oops\n");
    quiet(&mut s, Duration::from_millis(1200)).await;
    // Fixing it applies the fix.
    write(&dir.join("slice.yaml"), &slice(&[("10.42.0.12", "web-1", true)]));
    let mut got = vec![u(next(&mut s, SECOND, "fixed").await)];
    if let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(300), s.message()).await {
        got.push(u(m));
    }
    assert!(got.contains(&U::Add(vec![plain("10.42.0.12:8080")])), "{got:?}");
    assert!(got.contains(&U::Remove(vec!["10.42.0.11:8080".into()])), "{got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn service_profiles_become_routes_and_invalid_regexes_are_rejected() {
    let dir = temp_dir("profile");
    write(&dir.join("web.yaml"), SERVICE);
    write(
        &dir.join("sp.yaml"),
        r#"
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web-svc.emojivoto.svc.cluster.local, namespace: emojivoto}
spec:
  retryBudget: {retryRatio: 0.1, minRetriesPerSecond: 5, ttl: 30s}
  routes:
  - name: GET /api/list
    condition: {method: GET, pathRegex: /api/list}
    isRetryable: true
    timeout: 300ms
    responseClasses:
    - condition: {status: {min: 500, max: 599}}
      isFailure: true
  - name: broken
    condition: {pathRegex: "/api/(vote"}
  - name: POST /api/vote
    condition:
      all:
      - method: POST
      - not: {pathRegex: /api/vote/admin.*}
"#,
    );
    let server = start_files(&dir).await;
    let mut c = client(server.addr).await;
    let mut p = get_profile(&mut c, "web-svc.emojivoto.svc.cluster.local:80").await;
    let profile = next(&mut p, SECOND, "profile").await;
    let names: Vec<&str> = profile.routes.iter().map(|r| r.metrics_labels["route"].as_str()).collect();
    assert_eq!(names, ["GET /api/list", "POST /api/vote"], "the invalid route is skipped");
    let list = &profile.routes[0];
    assert!(list.is_retryable);
    assert_eq!(list.timeout, Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 }));
    assert!(list.response_classes[0].is_failure);
    let budget = profile.retry_budget.unwrap();
    assert_eq!((budget.retry_ratio, budget.min_retries_per_second), (0.1, 5));
    assert_eq!(budget.ttl, Some(prost_types::Duration { seconds: 30, nanos: 0 }));
    assert!(profile.profile_ref.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Linkerd's policy resources load from files exactly as the API served
/// them (the fixtures' LIST responses, copied as they are); the objects the
/// apiserver accepted but weft refuses are reported by name and reason and
/// skipped, and the rest loads.
#[test]
fn policy_resources_load_and_invalid_ones_are_refused() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes");
    let dir = temp_dir("policy");
    for name in [
        "servers.policy.linkerd.io-emojivoto.list.json",
        "authorizationpolicies.policy.linkerd.io-emojivoto.list.json",
        "meshtlsauthentications.policy.linkerd.io-emojivoto.list.json",
        "networkauthentications.policy.linkerd.io-emojivoto.list.json",
        "httplocalratelimitpolicies.policy.linkerd.io-emojivoto.list.json",
        "accepted-networkauthentication-not-a-cidr.request.json",
        "accepted-server-unknown-proxyprotocol.request.json",
        "accepted-httplocalratelimitpolicy-identity-above-total.request.json",
        "httproutes.policy.linkerd.io-emojivoto.list.json",
        "httproutes.gateway.networking.k8s.io-emojivoto.list.json",
        "namespaces.list.json",
        // Kinds not indexed yet are ignored, not errors.
        "egressnetworks.policy.linkerd.io-emojivoto.list.json",
    ] {
        std::fs::copy(fixtures.join(name), dir.join(name)).unwrap();
    }
    // The apiserver accepts a regex that does not compile; weft refuses the
    // route, and only it.
    write(
        &dir.join("zz-bad-route.yaml"),
        "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: {name: bad-regex, namespace: emojivoto}\nspec:\n  parentRefs: [{group: policy.linkerd.io, kind: Server, name: web-http}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/api/((\"}}]\n",
    );
    let mut loader = files::Loader::new(&dir, MeshConfig::default());
    let scan = loader.scan();
    let mut reported: Vec<String> = scan.errors.iter().map(|e| e.to_string()).collect();
    reported.sort();
    assert_eq!(reported.len(), 4, "{reported:#?}");
    assert!(
        reported[3].contains("HTTPRoute emojivoto/bad-regex") && reported[3].contains("regex"),
        "{}",
        reported[3]
    );
    assert!(reported[0].contains("HTTPLocalRateLimitPolicy emojivoto/web-rl-inverted"), "{}", reported[0]);
    assert!(reported[1].contains("NetworkAuthentication emojivoto/bogus-network"), "{}", reported[1]);
    assert!(reported[1].contains("not-a-cidr"), "{}", reported[1]);
    assert!(
        reported[2].contains("Server emojivoto/web-http3") && reported[2].contains("HTTP/3"),
        "{}",
        reported[2]
    );

    let index = Index::new();
    index.replace_all(loader.objects());
    let state = index.subscribe();
    let state = state.borrow();
    let names =
        |keys: Vec<&weft_destination::model::ObjKey>| keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(state.servers.keys().collect()), ["voting-grpc", "voting-prom", "web-http"]);
    assert_eq!(
        names(state.authorization_policies.keys().collect()),
        ["emojivoto-cluster-network", "voting-grpc", "web-api"]
    );
    assert_eq!(names(state.meshtls_authentications.keys().collect()), ["emojivoto-accounts", "web-only"]);
    assert_eq!(names(state.network_authentications.keys().collect()), ["cluster-network"]);
    assert_eq!(names(state.rate_limits.keys().collect()), ["web-rl"]);
    assert_eq!(names(state.http_routes.keys().collect()), ["web-api"]);
    assert_eq!(names(state.gateway_http_routes.keys().collect()), ["voting-route"]);
    assert_eq!(state.namespaces.len(), 6);
    let _ = std::fs::remove_dir_all(&dir);
}
