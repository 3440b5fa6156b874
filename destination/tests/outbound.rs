//! The real `weft-destination` binary serving `OutboundPolicies` from a
//! directory of manifests, to a tonic client calling it as linkerd2-proxy
//! does (its `TrafficSpec`s: a Service's cluster IP, an authority, a pod IP).

mod common;

use std::{net::SocketAddr, process::Command, time::Duration};

use common::{
    binary::{gauge, metrics, start},
    temp_dir, write,
};
use linkerd2_proxy_api::{
    meta, net,
    outbound::{
        self as pb, backend, http_route::distribution::Kind as Dist,
        outbound_policies_client::OutboundPoliciesClient, proxy_protocol, traffic_spec::Target,
    },
};
use tonic::{transport::Channel, Code, Streaming};

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: demo}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec:
  clusterIP: 10.96.0.22
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo}
spec:
  serviceAccountName: web
  containers: [{name: web}, {name: weft-proxy}]
status: {phase: Running, podIP: 10.42.0.11}
"#;

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-route, namespace: demo}
spec:
  parentRefs: [{group: core, kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
"#;

async fn client(addr: SocketAddr) -> OutboundPoliciesClient<Channel> {
    OutboundPoliciesClient::connect(format!("http://{addr}")).await.unwrap()
}

fn authority(a: &str) -> pb::TrafficSpec {
    pb::TrafficSpec {
        source_workload: r#"{"ns":"demo","pod":"client-0"}"#.into(),
        target: Some(Target::Authority(a.into())),
    }
}

fn addr(a: &str) -> pb::TrafficSpec {
    let a: SocketAddr = a.parse().unwrap();
    pb::TrafficSpec { source_workload: String::new(), target: Some(Target::Addr(net::TcpAddress::from(a))) }
}

async fn next(s: &mut Streaming<pb::OutboundPolicy>, what: &str) -> pb::OutboundPolicy {
    match tokio::time::timeout(Duration::from_secs(5), s.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(other) => panic!("{what}: stream ended: {other:?}"),
        Err(_) => panic!("{what}: nothing within 5s"),
    }
}

/// The HTTP/1 routes of a `Detect` policy (HTTP/2 carries the same).
fn routes(p: &pb::OutboundPolicy) -> Vec<pb::HttpRoute> {
    match p.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(proxy_protocol::Kind::Detect(d)) => {
            let h1 = d.http1.as_ref().expect("http1").routes.clone();
            assert_eq!(Some(&h1), d.http2.as_ref().map(|h| &h.routes));
            h1
        }
        other => panic!("not Detect: {other:?}"),
    }
}

/// A rule as (header names matched, [(weight, Destination path)]).
type RuleView = (Vec<String>, Vec<(u32, String)>);

fn rules(route: &pb::HttpRoute) -> Vec<RuleView> {
    let path = |b: &pb::Backend| match &b.kind {
        Some(backend::Kind::Balancer(p2c)) => match p2c.discovery.as_ref().and_then(|d| d.kind.as_ref()) {
            Some(backend::endpoint_discovery::Kind::Dst(d)) => d.path.clone(),
            None => "none".into(),
        },
        other => format!("{other:?}"),
    };
    route
        .rules
        .iter()
        .map(|r| {
            let headers = r.matches.iter().flat_map(|m| m.headers.iter().map(|h| h.name.clone())).collect();
            let backends = match r.backends.as_ref().and_then(|d| d.kind.as_ref()) {
                Some(Dist::RandomAvailable(ra)) => ra
                    .backends
                    .iter()
                    .map(|w| (w.weight, path(w.backend.as_ref().and_then(|b| b.backend.as_ref()).unwrap())))
                    .collect(),
                Some(Dist::FirstAvailable(fa)) => {
                    fa.backends.iter().map(|b| (0, path(b.backend.as_ref().unwrap()))).collect()
                }
                other => panic!("{other:?}"),
            };
            (headers, backends)
        })
        .collect()
}

fn route_name(r: &pb::HttpRoute) -> String {
    match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(meta::metadata::Kind::Default(n)) => format!("default:{n}"),
        Some(meta::metadata::Kind::Resource(r)) => r.name.clone(),
        None => String::new(),
    }
}

const V1: &str = "web-v1.demo.svc.cluster.local:80";
const V2: &str = "web-v2.demo.svc.cluster.local:80";

#[tokio::test]
async fn get_and_watch_follow_the_routes() {
    let dir = temp_dir("outbound");
    write(&dir.join("services.yaml"), SERVICES);
    write(&dir.join("route.yaml"), ROUTE);
    let d = start(&dir, &[]);
    let mut c = client(d.addr).await;

    // Get by authority: a header-matched canary, then the 90/10 split.
    let first = c.get(authority("web.demo.svc.cluster.local:80")).await.expect("Get").into_inner();
    let r = routes(&first);
    assert_eq!(r.iter().map(route_name).collect::<Vec<_>>(), ["web-route"]);
    assert_eq!(
        rules(&r[0]),
        [
            (vec!["x-canary".to_owned()], vec![(1, V2.to_owned())]),
            (vec![], vec![(90, V1.into()), (10, V2.into())])
        ]
    );
    // linkerd2-proxy asks by the ClusterIP it dialled: the same answer.
    assert_eq!(c.get(addr("10.96.0.20:80")).await.expect("Get by IP").into_inner(), first);
    // A Service without routes: its default route, to itself.
    let v1 = c.get(addr("10.96.0.21:80")).await.expect("web-v1").into_inner();
    assert_eq!(routes(&v1).iter().map(route_name).collect::<Vec<_>>(), ["default:http"]);
    assert_eq!(rules(&routes(&v1)[0]), [(vec![], vec![(0, V1.to_owned())])]);

    // The backends' Destination paths resolve: linkerd2-proxy's next call.
    let mut dst = common::client(d.addr).await;
    let mut endpoints = common::get(&mut dst, V1).await;
    assert_eq!(
        common::u(common::next(&mut endpoints, Duration::from_secs(5), "Destination/Get").await),
        common::U::NoEndpoints(true),
        "web-v1 exists (no endpoints in the manifests)"
    );

    // Watch: the same policy at once ...
    let mut watch = c.watch(addr("10.96.0.20:80")).await.expect("Watch").into_inner();
    assert_eq!(next(&mut watch, "first").await, first);
    let body = tokio::task::spawn_blocking(move || metrics(d.admin)).await.unwrap();
    assert_eq!(gauge(&body, "destination_streams{rpc=\"outbound_watch\"}"), Some(1.0), "{body}");

    // ... then after the route file changes: 50/50.
    write(
        &dir.join("route.yaml"),
        &ROUTE.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50"),
    );
    let updated = next(&mut watch, "after the route edit").await;
    assert_eq!(rules(&routes(&updated)[0])[1].1, [(50, V1.to_owned()), (50, V2.to_owned())]);
    // A change that does not change the answer sends nothing.
    write(
        &dir.join("other.yaml"),
        &SERVICES.split("---").nth(3).unwrap().replace("web-0", "web-1").replace("10.42.0.11", "10.42.0.12"),
    );
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(800), watch.message()).await {
        panic!("expected no message after an unrelated change, got {m:?}");
    }
    // The route removed: back to the default route.
    std::fs::remove_file(dir.join("route.yaml")).unwrap();
    let default = next(&mut watch, "after the route is deleted").await;
    assert_eq!(routes(&default).iter().map(route_name).collect::<Vec<_>>(), ["default:http"]);

    // SIGTERM ends open streams.
    let pid = d.proc.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    match tokio::time::timeout(Duration::from_secs(5), watch.message()).await {
        Ok(Ok(None)) | Ok(Err(_)) => {}
        other => panic!("stream still open after SIGTERM: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pod IP: forwarded straight to the pod, with its identity (meshed).
#[tokio::test]
async fn a_pod_ip_is_forwarded_with_its_identity() {
    let dir = temp_dir("outbound-pod");
    write(&dir.join("services.yaml"), SERVICES);
    let d = start(&dir, &[]);
    let mut c = client(d.addr).await;
    let p = c.get(addr("10.42.0.11:8080")).await.expect("pod IP").into_inner();
    let r = routes(&p);
    let Some(Dist::FirstAvailable(fa)) = r[0].rules[0].backends.as_ref().and_then(|d| d.kind.as_ref()) else {
        panic!("{r:?}")
    };
    let Some(backend::Kind::Forward(w)) = fa.backends[0].backend.as_ref().and_then(|b| b.kind.clone()) else {
        panic!("{fa:?}")
    };
    assert_eq!(w.addr, Some(net::TcpAddress::from("10.42.0.11:8080".parse::<SocketAddr>().unwrap())));
    let id = format!("{:?}", w.tls_identity);
    assert!(id.contains("web.demo.serviceaccount.identity.weft-system.example.org"), "{id}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_requests_are_refused_and_never_kill_the_server() {
    let dir = temp_dir("outbound-bad");
    write(&dir.join("services.yaml"), SERVICES);
    let d = start(&dir, &[]);
    let mut c = client(d.addr).await;

    let long = format!("{}.demo.svc.cluster.local:80", "x".repeat(100_000));
    for rpc in ["Get", "Watch"] {
        let call = |s: pb::TrafficSpec| {
            let mut c = c.clone();
            async move {
                match rpc {
                    "Get" => c.get(s).await.map(|_| ()),
                    _ => c.watch(s).await.map(|_| ()),
                }
            }
        };
        for (spec, code) in [
            (authority("nope.demo.svc.cluster.local:80"), Code::NotFound),
            (authority("a.b.c.example.com:443"), Code::NotFound),
            (addr("192.0.2.1:80"), Code::NotFound),
            (pb::TrafficSpec { source_workload: String::new(), target: None }, Code::InvalidArgument),
            (addr("10.96.0.20:0"), Code::InvalidArgument),
            (
                pb::TrafficSpec {
                    source_workload: String::new(),
                    target: Some(Target::Addr(net::TcpAddress { ip: None, port: 80 })),
                },
                Code::InvalidArgument,
            ),
            (
                pb::TrafficSpec {
                    source_workload: String::new(),
                    target: Some(Target::Addr(net::TcpAddress {
                        port: 70_000,
                        ..net::TcpAddress::from("10.96.0.20:80".parse::<SocketAddr>().unwrap())
                    })),
                },
                Code::InvalidArgument,
            ),
            (authority("bad path/x"), Code::InvalidArgument),
            (authority("http://web.demo:80"), Code::InvalidArgument),
            (authority(""), Code::InvalidArgument),
            (authority("\u{0}\u{1}:\u{ff}"), Code::InvalidArgument),
            (authority(&long), Code::InvalidArgument),
        ] {
            let shown = format!("{:.60?}", spec.target);
            let err = call(spec).await.expect_err("refused");
            assert_eq!(err.code(), code, "{rpc} {shown}: {err:?}");
            assert!(err.message().len() < 300, "{rpc}: the error quotes too much: {}", err.message().len());
        }
    }
    // A route whose regex does not compile is refused whole and counted;
    // the Service keeps its default route.
    write(
        &dir.join("bad-route.yaml"),
        &ROUTE.replace(
            "[{headers: [{name: x-canary, value: \"true\"}]}]",
            "[{path: {type: RegularExpression, value: \"/api/((\"}}]",
        ),
    );
    let admin = d.admin;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = tokio::task::spawn_blocking(move || metrics(admin)).await.unwrap();
        let line = "destination_invalid_objects_total{kind=\"HTTPRoute.gateway.networking.k8s.io\"}";
        if gauge(&body, line).is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the bad route was not counted: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still serving, and still alive.
    let p = c.get(authority("web.demo.svc.cluster.local:80")).await.expect("after garbage").into_inner();
    assert_eq!(routes(&p).iter().map(route_name).collect::<Vec<_>>(), ["default:http"]);
    let mut proc = d.proc;
    assert!(proc.0.try_wait().unwrap().is_none(), "the server exited");
    let _ = std::fs::remove_dir_all(&dir);
}
