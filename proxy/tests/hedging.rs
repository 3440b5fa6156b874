//! Hedged requests through the real proxy: two endpoints of
//! `web.test.svc.cluster.local` share a slow tail, and the route's rule
//! carries weft's hedge extension (`retry.weft.io/hedge-after`, field 1000
//! of the OutboundPolicy), from an in-test control plane.
//!
//! The tail: one request in ten is slow (300 ms) the first time it reaches
//! either endpoint, and fast when it arrives again. That is the tail hedging
//! is for, a stall of the endpoint at that moment (a pause, a full queue)
//! rather than of the request. An endpoint that is always slow is not: the
//! balancer already stops sending to it after its first slow answer.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::destination as dst;
use prost::Message;
use support::{outbound_api::*, *};
use tokio::net::TcpListener;

const PORT: u16 = 80;
const SLOW: Duration = Duration::from_millis(300);

/// What both endpoints saw, keyed by the requests' `x-id`.
struct Tail {
    /// Which endpoint (0 or 1) each arrival of an id reached, in order.
    arrivals: Mutex<HashMap<u64, Vec<usize>>>,
    /// Slow answers dropped before they were sent: their client gave up.
    cancelled: AtomicUsize,
    slow: fn(u64) -> bool,
    delay: Duration,
}

impl Tail {
    fn total(&self) -> usize {
        self.arrivals.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Ids that arrived more than once, with where they arrived.
    fn repeated(&self) -> Vec<(u64, Vec<usize>)> {
        let arrivals = self.arrivals.lock().unwrap();
        arrivals.iter().filter(|(_, at)| at.len() > 1).map(|(id, at)| (*id, at.clone())).collect()
    }

    async fn wait_cancelled(&self, n: usize) {
        within("the slow tries to be cancelled", async {
            while self.cancelled.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

/// Counts a slow answer in `cancelled` when dropped before it was sent.
struct Unfinished(Option<Arc<Tail>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(tail) = self.0.take() {
            tail.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn endpoint(index: usize, tail: Arc<Tail>) -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tail = tail.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    answer(index, req, tail.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, AbortOnDrop(task))
}

async fn answer(
    index: usize,
    req: Request<Incoming>,
    tail: Arc<Tail>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let id = req.headers().get("x-id").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(0);
    let first = {
        let mut arrivals = tail.arrivals.lock().unwrap();
        let at = arrivals.entry(id).or_default();
        at.push(index);
        at.len() == 1
    };
    let _ = req.into_body().collect().await;
    if first && (tail.slow)(id) {
        let mut unfinished = Unfinished(Some(tail.clone()));
        tokio::time::sleep(tail.delay).await;
        unfinished.0 = None;
    }
    Ok(Response::new(full(format!("{id}@{index}\n"))))
}

struct Mesh {
    tail: Arc<Tail>,
    proxy: Proxy,
    _endpoints: [AbortOnDrop; 2],
    _control_plane: AbortOnDrop,
}

/// Two endpoints of `web` with the tail `slow(id)` (`delay` long), and a
/// proxy whose policy for `web` sends everything to them through one rule
/// hedged as `hedge` says.
async fn mesh(hedge: Option<weft_api::Hedge>, slow: fn(u64) -> bool, delay: Duration) -> Mesh {
    let tail = Arc::new(Tail { arrivals: Mutex::default(), cancelled: AtomicUsize::new(0), slow, delay });
    let (a, task_a) = endpoint(0, tail.clone()).await;
    let (b, task_b) = endpoint(1, tail.clone()).await;
    let web = route("web", vec![rule(vec![prefix("/")], vec![], vec![backend("web", PORT, 1)])]);
    let extensions = hedge.map(|hedge| weft_api::RouteExtensions {
        rules: vec![weft_api::RuleExtension {
            route: web.metadata.clone(),
            rule_index: 0,
            hedge: Some(hedge),
            ..Default::default()
        }],
    });
    let policy = weft_api::OutboundPolicyWithExtensions { policy: policy(PORT, vec![web]), extensions };
    let endpoints = dst::Update {
        update: Some(dst::update::Update::Add(dst::WeightedAddrSet {
            addrs: [a, b]
                .iter()
                .map(|a| dst::WeightedAddr { addr: Some((*a).into()), weight: 1, ..Default::default() })
                .collect(),
            ..Default::default()
        })),
    };
    let (addr, control_plane) = control_plane(policy.encode_to_vec(), endpoints.encode_to_vec()).await;
    let proxy = Proxy::builder().env("WEFT_PROXY_DESTINATION_SVC_ADDR", addr).spawn().await;
    Mesh { tail, proxy, _endpoints: [task_a, task_b], _control_plane: control_plane }
}

/// A control plane as weft-destination serves one: OutboundPolicies/Watch
/// answers with `policy` (encoded with weft's extensions) and
/// Destination/Get with `endpoints`, each stream then kept open; GetProfile
/// says there is no profile.
async fn control_plane(policy: Vec<u8>, endpoints: Vec<u8>) -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (policy, endpoints) = (grpc_frame(&policy), grpc_frame(&endpoints));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (policy, endpoints) = (policy.clone(), endpoints.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let message = match req.uri().path() {
                        weft_api::OUTBOUND_POLICIES_WATCH => Some(policy.clone()),
                        "/io.linkerd.proxy.destination.Destination/Get" => Some(endpoints.clone()),
                        _ => None,
                    };
                    async move {
                        let rsp = Response::builder().header("content-type", "application/grpc");
                        let rsp = match message {
                            Some(message) => {
                                let first =
                                    futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(message))]);
                                let open =
                                    futures_util::StreamExt::chain(first, futures_util::stream::pending());
                                rsp.body(BodyExt::boxed(StreamBody::new(open)))
                            }
                            // INVALID_ARGUMENT: not a service with a profile.
                            None => rsp.header("grpc-status", "3").body(empty()),
                        };
                        Ok::<_, std::convert::Infallible>(rsp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, AbortOnDrop(task))
}

/// A gRPC message: uncompressed, its length, its bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

fn after(d: Duration) -> weft_api::Hedge {
    weft_api::Hedge { after: Some(d.try_into().unwrap()), percentile: 0.0 }
}

fn percentile(p: f64) -> weft_api::Hedge {
    weft_api::Hedge { after: None, percentile: p }
}

/// Sends requests with ids `first..first + n` over `conns` connections at
/// once (each a run of consecutive ids), each with `method` and `body`;
/// their latencies, in the order of their ids.
async fn load(
    proxy: &Proxy,
    (first, n): (u64, u64),
    conns: u64,
    method: http::Method,
    body: &'static [u8],
) -> Vec<Duration> {
    let per = n.div_ceil(conns);
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let (addr, method) = (proxy.outbound, method.clone());
            tokio::spawn(async move {
                let mut conn = h1_conn(addr).await;
                let mut took = Vec::new();
                for id in first + c * per..(first + (c + 1) * per).min(first + n) {
                    let req = Request::builder()
                        .method(method.clone())
                        .uri("http://web.test.svc.cluster.local/")
                        .header("x-id", id)
                        .body(full(body))
                        .unwrap();
                    let start = Instant::now();
                    within("ready", conn.ready()).await.expect("connection usable");
                    let rsp = within("response", conn.send_request(req)).await.expect("response");
                    let rsp = collect(rsp).await;
                    assert_eq!(rsp.status, StatusCode::OK, "{}", String::from_utf8_lossy(&rsp.body));
                    took.push((id, start.elapsed()));
                }
                took
            })
        })
        .collect();
    let mut by_id = vec![Duration::ZERO; n as usize];
    for task in tasks {
        for (id, took) in task.await.unwrap() {
            by_id[(id - first) as usize] = took;
        }
    }
    by_id
}

fn p99(latencies: &[Duration]) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

fn hedges(metrics: &Metrics) -> (f64, f64) {
    let route = [("route_name", "web"), ("parent_name", "web")];
    (
        metrics.get("outbound_http_route_hedge_requests_total", &route),
        metrics.get("outbound_http_route_hedge_wins_total", &route),
    )
}

fn one_in_ten(id: u64) -> bool {
    id % 10 == 9
}

#[tokio::test]
async fn hedging_after_20ms_cuts_the_p99_of_a_slow_tail_within_the_budget() {
    // Without a hedge: 30 of 300 requests wait out the stall.
    let m = mesh(None, one_in_ten, SLOW).await;
    let took = load(&m.proxy, (0, 300), 10, http::Method::GET, b"").await;
    assert!(p99(&took) >= SLOW, "p99 {:?} without hedging", p99(&took));
    assert_eq!(m.tail.total(), 300);

    let m = mesh(Some(after(Duration::from_millis(20))), one_in_ten, SLOW).await;
    let took = load(&m.proxy, (0, 300), 10, http::Method::GET, b"").await;
    assert!(p99(&took) < Duration::from_millis(60), "p99 {:?} with hedging after 20ms", p99(&took));

    // Every stalled first try was hedged, its copy answered and the stalled
    // try was dropped; each copy went to the other endpoint.
    m.tail.wait_cancelled(30).await;
    let repeated = m.tail.repeated();
    assert!(repeated.iter().all(|(_, at)| at.len() == 2 && at[0] != at[1]), "{repeated:?}");
    let stalled = (0..300).filter(|&id| one_in_ten(id)).collect::<Vec<_>>();
    assert!(stalled.iter().all(|id| repeated.iter().any(|(r, _)| r == id)), "every stall was hedged");

    // The extra load is the copies, counted, and within the budget (10 a
    // second over 10 s plus 10% of requests).
    let (copies, wins) = hedges(&m.proxy.metrics().await);
    assert_eq!(m.tail.total() as f64, 300.0 + copies);
    assert!((30.0..=130.0).contains(&copies), "{copies} copies");
    assert!(wins >= 30.0 && wins <= copies, "{wins} wins of {copies}");
}

#[tokio::test]
async fn the_budget_bounds_copies_when_every_request_stalls() {
    let m = mesh(Some(after(Duration::from_millis(20))), |_| true, Duration::from_millis(100)).await;
    let took = load(&m.proxy, (0, 300), 10, http::Method::GET, b"").await;
    let (copies, _) = hedges(&m.proxy.metrics().await);
    assert_eq!(m.tail.total() as f64, 300.0 + copies);
    assert!((100.0..=130.0).contains(&copies), "{copies} copies: 100 in reserve plus one per 10 requests");
    let waited = took.iter().filter(|&&t| t >= Duration::from_millis(100)).count();
    assert!(waited >= 170, "{waited} requests waited out the stall once the budget was spent");
}

#[tokio::test]
async fn posts_and_bodies_over_the_replay_limit_are_never_hedged() {
    let m = mesh(Some(after(Duration::from_millis(20))), |_| true, SLOW).await;
    let took = load(&m.proxy, (0, 5), 1, http::Method::POST, b"order").await;
    assert!(took.iter().all(|&t| t >= SLOW), "{took:?}");
    assert_eq!(m.tail.total(), 5, "a POST is sent once");

    static BIG: [u8; 70 * 1024] = [b'x'; 70 * 1024];
    let took = load(&m.proxy, (5, 3), 1, http::Method::PUT, &BIG).await;
    assert!(took.iter().all(|&t| t >= SLOW), "{took:?}");
    assert_eq!(m.tail.total(), 5 + 3, "a body over 64 KiB is streamed once, not held for a copy");
    assert_eq!(hedges(&m.proxy.metrics().await).0, 0.0);
}

#[tokio::test]
async fn a_percentile_delay_is_learned_from_the_routes_latencies() {
    // One request in twenty stalls; the p90 of the rule's latencies is a
    // fast answer's, once 20 of them have been seen.
    let m = mesh(Some(percentile(90.0)), |id| id % 20 == 19, SLOW).await;
    let took = load(&m.proxy, (0, 200), 1, http::Method::GET, b"").await;
    assert!(took[19] >= SLOW, "the 20th request comes before the 20th latency: not hedged ({:?})", took[19]);
    for id in (39..200).step_by(20) {
        assert!(took[id] < Duration::from_millis(100), "request {id} took {:?}", took[id]);
    }
    let (copies, wins) = hedges(&m.proxy.metrics().await);
    assert!(wins >= 9.0, "{wins} wins");
    assert!(copies <= 100.0 + 20.0, "{copies} copies");
}
