//! The Kubernetes backend with the real kube-rs client against a local HTTP
//! server that replays API traffic captured from a kube-apiserver v1.32
//! (tests/fixtures/kubernetes, see its README): LISTs, then WATCH
//! streams whose events the test releases one at a time, so each step of the
//! captured scenario can be checked as a proxy would see it.

mod common;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use weft_destination::{
    index::Index,
    k8s::{self, SplitVersion},
    MeshConfig,
};

const ID_WEB: &str = "web.emojivoto.serviceaccount.identity.weft.cluster.local";
const ID_VOTING: &str = "voting.emojivoto.serviceaccount.identity.weft.cluster.local";
const WEB_SVC: &str = "web-svc.emojivoto.svc.cluster.local:80";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes")
}

fn fixture(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A captured watch stream whose events are released by the test.
struct Gated {
    lines: Vec<(u64, String)>,
    released: watch::Sender<usize>,
}

impl Gated {
    fn new(file: &str) -> Self {
        let lines = fixture(file)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let rv = v["object"]["metadata"]["resourceVersion"].as_str().unwrap_or("0").parse().unwrap();
                (rv, format!("{l}\n"))
            })
            .collect();
        Self { lines, released: watch::Sender::new(0) }
    }
}

struct Replay {
    addr: SocketAddr,
    /// Every request as `METHOD path?query`.
    log: Arc<Mutex<Vec<String>>>,
    watches: Arc<HashMap<&'static str, Gated>>,
    /// Paths answered `403 Forbidden`, as without an RBAC rule for them.
    forbidden: Arc<Mutex<Vec<&'static str>>>,
    /// Every PATCH as `(path?query, content-type, body)`, answered 200.
    patches: Arc<Mutex<Vec<(String, String, serde_json::Value)>>>,
    /// A `status` the Gateway HTTPRoute LIST gives voting-route, as if
    /// written before.
    voting_route_status: Arc<Mutex<Option<serde_json::Value>>>,
}

impl Replay {
    /// `expire_first_split_watch`: the first TrafficSplit watch gets the
    /// captured `410 Expired` ERROR event instead of events.
    async fn start(split_version: &'static str, expire_first_split_watch: bool) -> Self {
        Self::start_with(split_version, expire_first_split_watch, false).await
    }

    /// `policy`: whether the `policy.linkerd.io` CRDs are served (otherwise
    /// their discovery is a 404, as on a cluster without them).
    async fn start_with(split_version: &'static str, expire_first_split_watch: bool, policy: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut watches = HashMap::new();
        watches.insert("endpointslices", Gated::new("endpointslices-emojivoto.watch.jsonl"));
        watches.insert("trafficsplits", Gated::new(&format!("trafficsplits-{split_version}.watch.jsonl")));
        watches.insert("servers", Gated::new("servers.policy.linkerd.io-emojivoto.watch.jsonl"));
        watches
            .insert("httproutes", Gated::new("httproutes.gateway.networking.k8s.io-emojivoto.watch.jsonl"));
        let watches = Arc::new(watches);
        let expired = Arc::new(Mutex::new(expire_first_split_watch));
        let forbidden = Arc::new(Mutex::new(Vec::new()));
        let patches = Arc::new(Mutex::new(Vec::new()));
        let voting_route_status = Arc::new(Mutex::new(None));
        let (log2, watches2, forbidden2, patches2, status2) =
            (log.clone(), watches.clone(), forbidden.clone(), patches.clone(), voting_route_status.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (log, watches, expired, forbidden, patches, status) = (
                    log2.clone(),
                    watches2.clone(),
                    expired.clone(),
                    forbidden2.clone(),
                    patches2.clone(),
                    status2.clone(),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            if req.method() == hyper::Method::PATCH {
                                let patches = patches.clone();
                                return futures_util::future::Either::Left(async move {
                                    Ok::<_, Infallible>(record_patch(req, &patches).await)
                                });
                            }
                            let rsp = if forbidden.lock().unwrap().contains(&req.uri().path()) {
                                log.lock().unwrap().push(format!("FORBIDDEN {}", req.uri().path()));
                                json(
                                    403,
                                    r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden","reason":"Forbidden","details":{},"code":403}"#.into(),
                                )
                            } else {
                                route(&req, &log, &watches, &expired, policy, &status)
                            };
                            futures_util::future::Either::Right(async move { Ok::<_, Infallible>(rsp) })
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, log, watches, forbidden, patches, voting_route_status }
    }

    fn release(&self, resource: &str, n: usize) {
        self.watches[resource].released.send_modify(|r| *r += n);
    }

    fn count(&self, prefix: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).count()
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// A status PATCH, recorded and answered as the apiserver does (the object;
/// here only the patch echoed, which kube-rs accepts as a DynamicObject).
async fn record_patch(
    req: hyper::Request<hyper::body::Incoming>,
    patches: &Mutex<Vec<(String, String, serde_json::Value)>>,
) -> hyper::Response<Body> {
    let target = req.uri().to_string();
    let content_type =
        req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    patches.lock().unwrap().push((target, content_type, body.clone()));
    let mut obj = body;
    obj["apiVersion"] = "gateway.networking.k8s.io/v1".into();
    obj["kind"] = "HTTPRoute".into();
    json(200, obj.to_string())
}

fn json(status: u16, body: String) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

fn route(
    req: &hyper::Request<hyper::body::Incoming>,
    log: &Mutex<Vec<String>>,
    watches: &Arc<HashMap<&'static str, Gated>>,
    expired: &Mutex<bool>,
    policy: bool,
    voting_route_status: &Mutex<Option<serde_json::Value>>,
) -> hyper::Response<Body> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    log.lock().unwrap().push(format!(
        "{} {path} {}",
        if watching { "WATCH" } else { "GET" },
        req.uri().query().unwrap_or("")
    ));
    // The cluster-wide paths kube-rs uses map to the captured namespaced
    // responses: every object of the scenario is in `emojivoto`.
    let (list, resource) = match path.as_str() {
        "/apis/split.smi-spec.io/v1alpha4" => return json(200, fixture("discovery-apis-split.smi-spec.io-v1alpha4.json")),
        "/apis/split.smi-spec.io/v1alpha2" => return json(200, fixture("discovery-apis-split.smi-spec.io-v1alpha2.json")),
        "/apis/linkerd.io/v1alpha2" => return json(200, fixture("discovery-apis-linkerd.io-v1alpha2.json")),
        "/api/v1/services" => ("services-emojivoto.list.json", None),
        "/api/v1/pods" => ("pods-emojivoto.list.json", None),
        "/api/v1/namespaces" => ("namespaces.list.json", None),
        "/apis/discovery.k8s.io/v1/endpointslices" => ("endpointslices-emojivoto.list.json", Some("endpointslices")),
        "/apis/split.smi-spec.io/v1alpha2/trafficsplits" => ("trafficsplits-v1alpha2.list.json", Some("trafficsplits")),
        "/apis/split.smi-spec.io/v1alpha4/trafficsplits" => ("trafficsplits-v1alpha4.list.json", Some("trafficsplits")),
        "/apis/linkerd.io/v1alpha2/serviceprofiles" => ("serviceprofiles.list.json", None),
        "/apis/policy.linkerd.io/v1beta3" if policy => {
            return json(200, fixture("discovery-apis-policy.linkerd.io-v1beta3.json"))
        }
        "/apis/policy.linkerd.io/v1alpha1" if policy => {
            return json(200, fixture("discovery-apis-policy.linkerd.io-v1alpha1.json"))
        }
        "/apis/gateway.networking.k8s.io/v1" if policy => {
            return json(200, fixture("discovery-apis-gateway.networking.k8s.io-v1.json"))
        }
        "/apis/policy.linkerd.io/v1beta3/httproutes" => ("httproutes.policy.linkerd.io-emojivoto.list.json", None),
        "/apis/gateway.networking.k8s.io/v1/httproutes" => {
            ("httproutes.gateway.networking.k8s.io-emojivoto.list.json", Some("httproutes"))
        }
        "/apis/gateway.networking.k8s.io/v1/grpcroutes" => {
            ("grpcroutes.gateway.networking.k8s.io-emojivoto.list.json", None)
        }
        "/apis/policy.linkerd.io/v1beta3/servers" => ("servers.policy.linkerd.io-emojivoto.list.json", Some("servers")),
        "/apis/policy.linkerd.io/v1alpha1/authorizationpolicies" => {
            ("authorizationpolicies.policy.linkerd.io-emojivoto.list.json", None)
        }
        "/apis/policy.linkerd.io/v1alpha1/meshtlsauthentications" => {
            ("meshtlsauthentications.policy.linkerd.io-emojivoto.list.json", None)
        }
        "/apis/policy.linkerd.io/v1alpha1/networkauthentications" => {
            ("networkauthentications.policy.linkerd.io-emojivoto.list.json", None)
        }
        "/apis/policy.linkerd.io/v1alpha1/httplocalratelimitpolicies" => {
            ("httplocalratelimitpolicies.policy.linkerd.io-emojivoto.list.json", None)
        }
        _ => {
            return json(
                404,
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#.into(),
            )
        }
    };
    if !watching {
        if let Some(status) =
            voting_route_status.lock().unwrap().clone().filter(|_| list.starts_with("httproutes.gateway"))
        {
            let mut l: serde_json::Value = serde_json::from_str(&fixture(list)).unwrap();
            l["items"][0]["status"] = status;
            return json(200, l.to_string());
        }
        if list.starts_with("networkauthentications.") {
            // The list as the apiserver would give it had the object it
            // accepted (`cidr: not-a-cidr`) stayed: weft must skip it alone.
            let mut l: serde_json::Value = serde_json::from_str(&fixture(list)).unwrap();
            let bogus: serde_json::Value =
                serde_json::from_str(&fixture("accepted-networkauthentication-not-a-cidr.response.json"))
                    .unwrap();
            l["items"].as_array_mut().unwrap().push(bogus);
            return json(200, l.to_string());
        }
        return json(200, fixture(list));
    }
    if resource == Some("trafficsplits") && std::mem::take(&mut *expired.lock().unwrap()) {
        return json(200, fixture("trafficsplits-v1alpha2.watch-expired.jsonl"));
    }
    let from: u64 = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
    // Lines newer than the requested RV, each sent once the test releases it;
    // then the stream stays open, as a real watch does until its timeout.
    let events: Vec<(usize, String)> = match resource {
        Some(r) => watches[r]
            .lines
            .iter()
            .enumerate()
            .filter(|(_, (rv, _))| *rv > from)
            .map(|(i, (_, l))| (i, l.clone()))
            .collect(),
        None => Vec::new(),
    };
    let released = resource.map(|r| watches[r].released.subscribe());
    let stream = futures_util::stream::iter(events)
        .then(move |(i, line)| {
            let mut released = released.clone();
            async move {
                if let Some(r) = released.as_mut() {
                    let _ = r.wait_for(|n| *n > i).await;
                }
                Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
            }
        })
        .chain(futures_util::stream::pending());
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

async fn start_mesh(replay: &Replay, split_version: SplitVersion) -> Server {
    let cfg = MeshConfig::default();
    let index = Index::new();
    k8s::spawn(replay.client(), index.clone(), cfg.clone(), split_version);
    start(index, cfg).await
}

const STEP: Duration = Duration::from_secs(5);

#[tokio::test]
async fn kubernetes_scenario_as_a_proxy_sees_it() {
    let replay = Replay::start("v1alpha4", false).await;
    let server = start_mesh(&replay, SplitVersion::Auto).await;
    let mut c = client(server.addr).await;

    // Initial state (RV 331): ready endpoints only, the terminating web-v1-2
    // (10.42.0.13, ready=false serving=true terminating=true) dropped because
    // others are ready. Injected pods carry their ServiceAccount identity and
    // the h2 hint; web-v2-* are not injected.
    let mut web = get(&mut c, WEB_SVC).await;
    assert_eq!(
        u(next(&mut web, STEP, "web-svc initial").await),
        add(vec![
            plain("10.42.0.22:8080"),
            meshed("10.42.0.11:8080", ID_WEB),
            meshed("10.42.1.12:8080", ID_WEB),
            plain("10.42.1.21:8080"),
        ])
    );
    let mut web_v1 = get(&mut c, "web-v1.emojivoto.svc.cluster.local:80").await;
    assert_eq!(
        u(next(&mut web_v1, STEP, "web-v1 initial").await),
        add(vec![meshed("10.42.0.11:8080", ID_WEB), meshed("10.42.1.12:8080", ID_WEB)])
    );
    let mut voting = get(&mut c, "voting-svc.emojivoto.svc.cluster.local:8080").await;
    assert_eq!(
        u(next(&mut voting, STEP, "voting initial").await),
        add(vec![meshed("10.42.0.31:8080", ID_VOTING), plain("10.42.1.32:8080")])
    );
    // By cluster IP, too.
    let mut by_ip = get(&mut c, "127.1.84.92:80").await;
    assert!(matches!(u(next(&mut by_ip, STEP, "by cluster ip").await), U::Add(v) if v.len() == 4));

    // Profiles: ServiceProfile routes and the TrafficSplit as dst_overrides.
    let mut web_profile = get_profile(&mut c, WEB_SVC).await;
    let p = next(&mut web_profile, STEP, "web profile").await;
    assert_eq!(p.fully_qualified_name, "web-svc.emojivoto.svc.cluster.local");
    assert_eq!(
        overrides(&p),
        [
            ("web-v1.emojivoto.svc.cluster.local:80".to_owned(), 9_000_000),
            ("web-v2.emojivoto.svc.cluster.local:80".to_owned(), 1_000_000)
        ]
    );
    let routes: Vec<(&str, bool)> =
        p.routes.iter().map(|r| (r.metrics_labels["route"].as_str(), r.is_retryable)).collect();
    assert_eq!(routes, [("GET /api/list", true), ("POST /api/vote", false)]);
    assert_eq!(p.routes[0].timeout, Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 }));
    let mut voting_profile = get_profile(&mut c, "voting-svc.emojivoto.svc.cluster.local:8080").await;
    let p = next(&mut voting_profile, STEP, "voting profile").await;
    // No TrafficSplit for voting-svc: the profile's own dstOverrides, as written.
    assert_eq!(
        overrides(&p),
        [
            ("voting-svc.emojivoto.svc.cluster.local.:8080".to_owned(), 9_000_000),
            ("voting-svc-canary.emojivoto.svc.cluster.local.:8080".to_owned(), 1_000_000)
        ]
    );
    assert_eq!(p.routes.len(), 2);
    assert!(p.routes[1].response_classes[0].is_failure);

    // Step 1: pod web-v2-2 (10.42.1.23) becomes ready → added to web-svc.
    replay.release("endpointslices", 1);
    assert_eq!(u(next(&mut web, STEP, "step 1").await), add(vec![plain("10.42.1.23:8080")]));
    replay.release("endpointslices", 1); // web-v2's slice: web-svc unchanged.

    // Step 2: web-v1-1 flips to not ready → removed from web-svc and web-v1.
    replay.release("endpointslices", 1);
    assert_eq!(u(next(&mut web, STEP, "step 2").await), U::Remove(vec!["10.42.1.12:8080".into()]));
    replay.release("endpointslices", 1);
    assert_eq!(u(next(&mut web_v1, STEP, "step 2 web-v1").await), U::Remove(vec!["10.42.1.12:8080".into()]));

    // Step 3: the split goes 500/500.
    replay.release("trafficsplits", 1);
    let p = next(&mut web_profile, STEP, "step 3").await;
    assert_eq!(overrides(&p).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [5_000_000, 5_000_000]);

    // Step 4: voting's slice is deleted and recreated under a new name: the
    // subscriber sees the gap and the return (keyed by service label).
    replay.release("endpointslices", 1);
    assert_eq!(u(next(&mut voting, STEP, "step 4 delete").await), U::NoEndpoints(true));
    replay.release("endpointslices", 1);
    assert_eq!(
        u(next(&mut voting, STEP, "step 4 recreate").await),
        add(vec![meshed("10.42.0.31:8080", ID_VOTING), plain("10.42.1.32:8080")])
    );

    // Step 5: a second split for web-svc is created and deleted. The first by
    // name (web-split) stays in force, so profile subscribers see nothing.
    replay.release("trafficsplits", 2);
    quiet(&mut web_profile, Duration::from_millis(500)).await;
    quiet(&mut web, Duration::from_millis(100)).await;

    // One LIST and one WATCH per kind, however many subscribers.
    assert_eq!(replay.count("GET /apis/discovery.k8s.io/v1/endpointslices"), 1);
    assert_eq!(replay.count("WATCH /apis/discovery.k8s.io/v1/endpointslices"), 1);
    assert_eq!(replay.count("GET /apis/split.smi-spec.io/v1alpha4/trafficsplits"), 1);
    assert_eq!(replay.count("GET /apis/split.smi-spec.io/v1alpha2/trafficsplits"), 0);
}

#[tokio::test]
async fn a_410_gone_resyncs_without_dropping_subscribers() {
    let replay = Replay::start("v1alpha2", true).await;
    let server = start_mesh(&replay, SplitVersion::V1alpha2).await;
    let mut c = client(server.addr).await;

    let mut profile = get_profile(&mut c, WEB_SVC).await;
    let p = next(&mut profile, STEP, "initial").await;
    assert_eq!(overrides(&p).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [9_000_000, 1_000_000]);

    // The first watch ends in `410 Expired`; kube-runtime lists again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while replay.count("GET /apis/split.smi-spec.io/v1alpha2/trafficsplits") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relist after 410: {:#?}",
            replay.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The relist changed nothing, so the subscriber heard nothing...
    quiet(&mut profile, Duration::from_millis(300)).await;
    // ...and is still subscribed: the next change reaches it.
    replay.release("trafficsplits", 1);
    let p = next(&mut profile, STEP, "after resync").await;
    assert_eq!(overrides(&p).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [5_000_000, 5_000_000]);
}

/// The captured history replay includes freshly created slices with
/// `"endpoints": null` and `"ports": null`; they must load as empty, not fail.
#[test]
fn captured_history_slices_with_null_fields_convert() {
    let mut empty = 0;
    for line in fixture("endpointslices-emojivoto.watch-history.jsonl").lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(event["object"].clone()).unwrap();
        let rec = weft_destination::model::endpoint_slice(&slice).unwrap().expect("a service's slice");
        assert!(rec.service.ends_with("-svc") || rec.service.starts_with("web-v"));
        if rec.endpoints.is_empty() {
            assert!(rec.ports.is_empty());
            empty += 1;
        }
    }
    assert_eq!(empty, 4, "the four slices are created empty");
}

/// Linkerd's policy resources through the real kube-rs client: the
/// captured LISTs, then the Server watch (emoji-grpc added, voting-grpc's
/// accessPolicy patched to all-authenticated, emoji-grpc deleted, two
/// bookmarks) released one event at a time, each reaching the index.
#[tokio::test]
async fn policy_resources_list_and_watch_into_the_index() {
    use weft_destination::{model::ObjKey, policy::AccessPolicy};
    let replay = Replay::start_with("v1alpha4", false, true).await;
    let index = Index::new();
    k8s::spawn(replay.client(), index.clone(), MeshConfig::default(), SplitVersion::Auto);
    let mut state = index.subscribe();
    let names = |keys: Vec<&ObjKey>| keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
    let wait = |state: &mut watch::Receiver<weft_destination::index::State>,
                what: &'static str,
                f: fn(&weft_destination::index::State) -> bool| {
        let mut state = state.clone();
        async move {
            tokio::time::timeout(STEP, state.wait_for(f))
                .await
                .unwrap_or_else(|_| panic!("{what}: not within {STEP:?}"))
                .map(|_| ())
                .unwrap_or_else(|_| panic!("{what}: index dropped"));
        }
    };
    wait(&mut state, "synced", |s| s.synced).await;
    {
        let s = state.borrow();
        assert_eq!(names(s.servers.keys().collect()), ["voting-grpc", "voting-prom", "web-http"]);
        assert_eq!(
            names(s.authorization_policies.keys().collect()),
            ["emojivoto-cluster-network", "voting-grpc", "web-api"]
        );
        assert_eq!(names(s.meshtls_authentications.keys().collect()), ["emojivoto-accounts", "web-only"]);
        // bogus-network (not a CIDR) is refused; the rest of its kind loads.
        assert_eq!(names(s.network_authentications.keys().collect()), ["cluster-network"]);
        assert_eq!(names(s.rate_limits.keys().collect()), ["web-rl"]);
        let voting = &s.servers[&ObjKey::new("emojivoto", "voting-grpc")];
        assert_eq!(voting.access_policy, AccessPolicy::Deny);
        // HTTPRoutes of both groups, each in its own kind, and Namespaces.
        assert_eq!(names(s.http_routes.keys().collect()), ["web-api"]);
        assert_eq!(names(s.gateway_http_routes.keys().collect()), ["voting-route"]);
        // GRPCRoutes, with Linkerd's annotations and creation time kept.
        assert_eq!(names(s.grpc_routes.keys().collect()), ["emoji-route"]);
        let emoji = &s.grpc_routes[&ObjKey::new("emojivoto", "emoji-route")];
        assert_eq!(emoji.annotations["retry.linkerd.io/grpc"], "internal,unavailable");
        assert!(!emoji.annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert_eq!(emoji.created.as_deref(), Some("2026-12-03T14:55:35Z"));
        assert!(s.namespaces.contains_key(&weft_destination::model::namespace_key("emojivoto")));
    }
    replay.release("servers", 1);
    wait(&mut state, "emoji-grpc added", |s| s.servers.contains_key(&ObjKey::new("emojivoto", "emoji-grpc")))
        .await;
    replay.release("servers", 1);
    wait(&mut state, "voting-grpc patched", |s| {
        s.servers
            .get(&ObjKey::new("emojivoto", "voting-grpc"))
            .is_some_and(|v| v.access_policy == AccessPolicy::AllAuthenticated)
    })
    .await;
    replay.release("servers", 1);
    wait(&mut state, "emoji-grpc deleted", |s| {
        !s.servers.contains_key(&ObjKey::new("emojivoto", "emoji-grpc"))
    })
    .await;
    replay.release("servers", 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(names(state.borrow().servers.keys().collect()), ["voting-grpc", "voting-prom", "web-http"]);
    assert_eq!(replay.count("WATCH /apis/policy.linkerd.io/v1beta3/servers"), 1);
}

/// Gateway API HTTPRoutes through the real kube-rs client to
/// `OutboundPolicies` watchers: the captured LIST, then the watch (web-route
/// added on web-svc, voting-route's split 90/10 → 50/50, web-route deleted,
/// two bookmarks), each event reaching only the Service it concerns.
#[tokio::test]
async fn http_route_watch_events_reach_outbound_policy_watchers() {
    use linkerd2_proxy_api::{
        meta::metadata::Kind as Meta,
        net::TcpAddress,
        outbound::{
            http_route::distribution::Kind as Dist, outbound_policies_client::OutboundPoliciesClient,
            proxy_protocol::Kind as Proto, traffic_spec::Target, HttpRoute, OutboundPolicy, TrafficSpec,
        },
    };
    let replay = Replay::start_with("v1alpha4", false, true).await;
    let server = start_mesh(&replay, SplitVersion::Auto).await;
    let mut c = OutboundPoliciesClient::connect(format!("http://{}", server.addr)).await.unwrap();
    // As linkerd2-proxy asks: the cluster IP it dialled.
    let by_ip = |ip: &str| TrafficSpec {
        source_workload: String::new(),
        target: Some(Target::Addr(TcpAddress::from(ip.parse::<SocketAddr>().unwrap()))),
    };
    let routes = |p: &OutboundPolicy| -> Vec<HttpRoute> {
        match p.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(Proto::Detect(d)) => d.http1.as_ref().unwrap().routes.clone(),
            Some(Proto::Http2(h)) => h.routes.clone(),
            other => panic!("{other:?}"),
        }
    };
    let names = |p: &OutboundPolicy| -> Vec<String> {
        routes(p)
            .iter()
            .map(|r| match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
                Some(Meta::Default(n)) => format!("default:{n}"),
                Some(Meta::Resource(r)) => r.name.clone(),
                None => String::new(),
            })
            .collect()
    };
    let weights = |p: &OutboundPolicy| -> Vec<u32> {
        match routes(p)[0].rules[1].backends.as_ref().and_then(|d| d.kind.as_ref()) {
            Some(Dist::RandomAvailable(r)) => r.backends.iter().map(|b| b.weight).collect(),
            other => panic!("{other:?}"),
        }
    };
    let mut web = c.watch(by_ip("127.1.84.92:80")).await.expect("web-svc").into_inner();
    let mut voting = c.watch(by_ip("127.1.243.49:8080")).await.expect("voting-svc").into_inner();
    assert_eq!(names(&next(&mut web, STEP, "web initial").await), ["default:http"]);
    let v = next(&mut voting, STEP, "voting initial").await;
    assert_eq!((names(&v), weights(&v)), (vec!["voting-route".to_owned()], vec![90, 10]));

    replay.release("httproutes", 1);
    let w = next(&mut web, STEP, "web-route added").await;
    assert_eq!(names(&w), ["web-route"]);
    let timeouts = routes(&w)[0].rules[0].timeouts.expect("timeout.linkerd.io/request");
    assert_eq!(timeouts.request.map(|d| d.seconds), Some(5));
    quiet(&mut voting, Duration::from_millis(300)).await;

    replay.release("httproutes", 1);
    assert_eq!(weights(&next(&mut voting, STEP, "voting-route 50/50").await), [50, 50]);
    quiet(&mut web, Duration::from_millis(300)).await;

    replay.release("httproutes", 1);
    assert_eq!(names(&next(&mut web, STEP, "web-route deleted").await), ["default:http"]);
    replay.release("httproutes", 2);
    quiet(&mut web, Duration::from_millis(300)).await;
    quiet(&mut voting, Duration::from_millis(100)).await;
    assert_eq!(replay.count("WATCH /apis/gateway.networking.k8s.io/v1/httproutes"), 1);
}

/// A ClusterRole from before weft read GRPCRoutes: the LIST is forbidden,
/// and the controller still becomes ready, with no GRPCRoutes.
#[tokio::test]
async fn a_forbidden_optional_crd_counts_as_empty() {
    let replay = Replay::start_with("v1alpha4", false, true).await;
    replay.forbidden.lock().unwrap().push("/apis/gateway.networking.k8s.io/v1/grpcroutes");
    let index = Index::new();
    k8s::spawn(replay.client(), index.clone(), MeshConfig::default(), SplitVersion::Auto);
    let mut state = index.subscribe();
    tokio::time::timeout(STEP, state.wait_for(|s| s.synced))
        .await
        .expect("synced despite the forbidden GRPCRoutes")
        .expect("index");
    let s = state.borrow();
    assert!(s.grpc_routes.is_empty());
    assert_eq!(s.gateway_http_routes.len(), 1, "the other kinds loaded");
    assert!(replay.count("FORBIDDEN /apis/gateway.networking.k8s.io/v1/grpcroutes") >= 1);
}

/// weft's status on the captured Gateway HTTPRoutes, through the real kube-rs
/// client: one merge PATCH of `/status` per route once the index settles,
/// with the conditions a user reads in `kubectl get httproute -o yaml`
/// (voting-route accepted, its canary voting-v2 missing), and no second
/// PATCH when a later change leaves the status as it was.
#[tokio::test]
async fn route_status_is_patched_once_per_change() {
    let replay = Replay::start_with("v1alpha4", false, true).await;
    let index = Index::new();
    k8s::spawn(replay.client(), index.clone(), MeshConfig::default(), SplitVersion::Auto);
    let patches = || replay.patches.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + STEP;
    while patches().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Room for a second, redundant write to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let voting: Vec<_> = patches()
        .into_iter()
        .filter(|(target, _, _)| {
            target.starts_with(
                "/apis/gateway.networking.k8s.io/v1/namespaces/emojivoto/httproutes/voting-route/status",
            )
        })
        .collect();
    assert_eq!(voting.len(), 1, "{:?}", patches());
    let (target, content_type, body) = &voting[0];
    assert!(target.contains("fieldManager=weft-destination"), "{target}");
    assert_eq!(content_type, "application/merge-patch+json");
    assert_eq!(body["metadata"]["resourceVersion"], "320", "{body}");
    let parents = body["status"]["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 1);
    assert_eq!(parents[0]["controllerName"], "weft.io/destination");
    assert_eq!(
        parents[0]["parentRef"],
        serde_json::json!({"group": "core", "kind": "Service", "namespace": "emojivoto", "name": "voting-svc", "port": 8080})
    );
    let conds: Vec<_> = parents[0]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap(), c["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(conds, [("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "BackendNotFound")]);
    assert_eq!(parents[0]["conditions"][0]["observedGeneration"], 1);
    assert!(parents[0]["conditions"][0]["lastTransitionTime"].as_str().unwrap().ends_with('Z'));
    let grpc = patches().iter().filter(|(t, _, _)| t.contains("/grpcroutes/")).count();
    assert_eq!(grpc, 1, "the GRPCRoute on a Service too");

    // A Server watch event changes the index but no route's status: the
    // routes are computed again and nothing is sent.
    let before = patches().len();
    replay.release("servers", 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(patches().len(), before, "{:?}", patches());
}

/// voting-route already shows weft's status (written earlier, by this or
/// another replica) beside a gateway's entry: weft leaves it alone, while
/// the routes without one get theirs.
#[tokio::test]
async fn a_route_already_showing_its_status_is_not_patched() {
    let replay = Replay::start_with("v1alpha4", false, true).await;
    let condition = |t: &str, s: &str, r: &str, m: &str| {
        serde_json::json!({"type": t, "status": s, "reason": r, "message": m,
            "observedGeneration": 1, "lastTransitionTime": "2026-12-01T10:00:00Z"})
    };
    *replay.voting_route_status.lock().unwrap() = Some(serde_json::json!({"parents": [
        {
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
            "controllerName": "example.com/gateway",
            "conditions": [condition("Accepted", "True", "Accepted", "")],
        },
        {
            "parentRef": {"group": "core", "kind": "Service", "namespace": "emojivoto", "name": "voting-svc", "port": 8080},
            "controllerName": "weft.io/destination",
            "conditions": [
                condition("Accepted", "True", "Accepted", ""),
                condition("ResolvedRefs", "False", "BackendNotFound", "Service emojivoto/voting-v2 not found"),
            ],
        },
    ]}));
    let index = Index::new();
    k8s::spawn(replay.client(), index.clone(), MeshConfig::default(), SplitVersion::Auto);
    let patches = || replay.patches.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + STEP;
    while patches().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let targets: Vec<String> = patches().into_iter().map(|(t, _, _)| t).collect();
    assert!(targets.iter().any(|t| t.contains("/grpcroutes/emoji-route/")), "{targets:?}");
    assert!(!targets.iter().any(|t| t.contains("/httproutes/voting-route/")), "{targets:?}");
}
