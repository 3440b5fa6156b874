//! A small control plane for outbound routing: Destination (`Get`,
//! `GetProfile`) and OutboundPolicies (`Watch`) on one port, as
//! weft-destination serves them. Endpoints and profiles are fixed per name;
//! the outbound policy is whatever the test sets (with weft's extensions in
//! field 1000, as weft-destination sends them, or without, as Linkerd's
//! control plane does), pushed to every open Watch. Plus builders for
//! OutboundPolicies messages.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::Stream;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::{
    destination::{self as dst, destination_server as dst_srv},
    http_route as hr, meta, outbound as api,
};
use tokio::{net::TcpListener, sync::watch, task::AbortHandle};
use tonic::{codegen::async_trait, Request, Response, Status};
use tower::Service;
use weft_api::OutboundPolicyWithExtensions;

use super::loopback;

pub struct OutboundApi {
    pub addr: SocketAddr,
    policy: watch::Sender<Option<OutboundPolicyWithExtensions>>,
    /// The TrafficSpecs asked for, in order.
    pub specs: Arc<Mutex<Vec<api::TrafficSpec>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

#[derive(Clone)]
struct Handler {
    policy: watch::Receiver<Option<OutboundPolicyWithExtensions>>,
    specs: Arc<Mutex<Vec<api::TrafficSpec>>>,
    endpoints: Arc<HashMap<String, Vec<SocketAddr>>>,
    profiles: Arc<HashMap<String, dst::DestinationProfile>>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One message, then the stream stays open (as a real control plane's).
fn once_then_open<T: Send + 'static>(item: T) -> Boxed<T> {
    Box::pin(futures_util::stream::unfold(Some(item), |item| async move {
        match item {
            Some(item) => Some((Ok(item), None)),
            None => std::future::pending().await,
        }
    }))
}

impl Handler {
    fn watch(
        &self,
        req: Request<api::TrafficSpec>,
    ) -> Result<Response<Boxed<OutboundPolicyWithExtensions>>, Status> {
        self.specs.lock().unwrap().push(req.into_inner());
        let mut rx = self.policy.clone();
        if rx.borrow_and_update().is_none() {
            return Err(Status::not_found("no policy"));
        }
        let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let current = rx.borrow_and_update().clone();
            Some((current.ok_or_else(|| Status::not_found("no policy")), (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// OutboundPolicies `Watch` served by hand (as weft-destination does), so
/// that answers carry weft's extensions; `Get` is unimplemented.
#[derive(Clone)]
struct PoliciesServer(Handler);

impl tonic::server::ServerStreamingService<api::TrafficSpec> for PoliciesServer {
    type Response = OutboundPolicyWithExtensions;
    type ResponseStream = Boxed<OutboundPolicyWithExtensions>;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Self::ResponseStream>, Status>> + Send>>;

    fn call(&mut self, req: Request<api::TrafficSpec>) -> Self::Future {
        let watched = self.0.watch(req);
        Box::pin(async move { watched })
    }
}

impl PoliciesServer {
    async fn call(
        self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        if req.uri().path() != weft_api::OUTBOUND_POLICIES_WATCH {
            return Ok(Status::unimplemented("watch only").into_http());
        }
        let codec = tonic_prost::ProstCodec::<OutboundPolicyWithExtensions, api::TrafficSpec>::default();
        Ok(tonic::server::Grpc::new(codec).server_streaming(self, req).await)
    }
}

#[async_trait]
impl dst_srv::Destination for Handler {
    type GetStream = Boxed<dst::Update>;

    async fn get(&self, req: Request<dst::GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let path = req.into_inner().path;
        let addrs = self.endpoints.get(&path).ok_or_else(|| Status::invalid_argument("unknown name"))?;
        let add = dst::WeightedAddrSet {
            addrs: addrs
                .iter()
                .map(|a| dst::WeightedAddr { addr: Some((*a).into()), weight: 1, ..Default::default() })
                .collect(),
            ..Default::default()
        };
        Ok(Response::new(once_then_open(dst::Update { update: Some(dst::update::Update::Add(add)) })))
    }

    type GetProfileStream = Boxed<dst::DestinationProfile>;

    async fn get_profile(
        &self,
        req: Request<dst::GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        let path = req.into_inner().path;
        let profile = self.profiles.get(&path).cloned().ok_or_else(|| Status::invalid_argument("unknown"))?;
        Ok(Response::new(once_then_open(profile)))
    }
}

impl OutboundApi {
    /// `endpoints`: discovery path → an endpoint `Get` gives it (a path
    /// listed more than once has them all);
    /// `profiles`: path → the profile `GetProfile` gives it.
    pub async fn start(
        endpoints: &[(&str, SocketAddr)],
        profiles: Vec<(&str, dst::DestinationProfile)>,
        first: Option<api::OutboundPolicy>,
    ) -> Self {
        let listener = TcpListener::bind(loopback(0)).await.expect("bind control plane");
        let addr = listener.local_addr().unwrap();
        let (policy, rx) = watch::channel(first.map(plain));
        let specs = Arc::new(Mutex::new(Vec::new()));
        let handler = Handler {
            policy: rx,
            specs: specs.clone(),
            endpoints: Arc::new(endpoints.iter().fold(HashMap::new(), |mut m, (k, v)| {
                m.entry(k.to_string()).or_insert_with(Vec::new).push(*v);
                m
            })),
            profiles: Arc::new(profiles.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        };
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            let policies = PoliciesServer(handler.clone());
            let destination = dst_srv::DestinationServer::new(handler);
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (policies, destination) = (policies.clone(), destination.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let (policies, mut destination) = (policies.clone(), destination.clone());
                        async move {
                            if req.uri().path().starts_with("/io.linkerd.proxy.destination.") {
                                destination.call(req).await
                            } else {
                                policies.call(req).await
                            }
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Self { addr, policy, specs, tasks }
    }

    pub fn set(&self, policy: Option<api::OutboundPolicy>) {
        self.policy.send_replace(policy.map(plain));
    }

    /// A policy with weft's rule extensions.
    pub fn set_extended(&self, policy: api::OutboundPolicy, rules: Vec<weft_api::RuleExtension>) {
        let extensions = Some(weft_api::RouteExtensions { rules });
        self.policy.send_replace(Some(OutboundPolicyWithExtensions { policy, extensions }));
    }

    /// The control plane goes away: the listener and every stream close.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for OutboundApi {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Messages.

/// A Linkerd policy, without weft's extensions.
fn plain(policy: api::OutboundPolicy) -> OutboundPolicyWithExtensions {
    OutboundPolicyWithExtensions { policy, extensions: None }
}

fn resource(group: &str, kind: &str, name: &str, port: u32) -> Option<meta::Metadata> {
    Some(meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: "test".into(),
            section: String::new(),
            port,
        })),
    })
}

/// A backend balanced over `name.test.svc.cluster.local:port`.
pub fn backend(name: &str, port: u16, weight: u32) -> api::http_route::WeightedRouteBackend {
    use api::backend::{balance_p2c, endpoint_discovery, BalanceP2c, EndpointDiscovery, Kind};
    let path = format!("{name}.test.svc.cluster.local:{port}");
    api::http_route::WeightedRouteBackend {
        weight,
        backend: Some(api::http_route::RouteBackend {
            backend: Some(api::Backend {
                metadata: resource("core", "Service", name, u32::from(port)),
                queue: None,
                kind: Some(Kind::Balancer(BalanceP2c {
                    discovery: Some(EndpointDiscovery {
                        kind: Some(endpoint_discovery::Kind::Dst(endpoint_discovery::DestinationGet {
                            path,
                        })),
                    }),
                    load: Some(balance_p2c::Load::PeakEwma(balance_p2c::PeakEwma::default())),
                })),
            }),
            filters: vec![],
            ..Default::default()
        }),
    }
}

pub fn rule(
    matches: Vec<hr::HttpRouteMatch>,
    filters: Vec<api::http_route::filter::Kind>,
    backends: Vec<api::http_route::WeightedRouteBackend>,
) -> api::http_route::Rule {
    api::http_route::Rule {
        matches,
        filters: filters.into_iter().map(|k| api::http_route::Filter { kind: Some(k) }).collect(),
        backends: Some(api::http_route::Distribution {
            kind: Some(api::http_route::distribution::Kind::RandomAvailable(
                api::http_route::distribution::RandomAvailable { backends },
            )),
        }),
        ..Default::default()
    }
}

pub fn with_timeout(mut rule: api::http_route::Rule, timeout: Duration) -> api::http_route::Rule {
    rule.timeouts = Some(hr::Timeouts { request: Some(timeout.try_into().unwrap()), ..Default::default() });
    rule
}

pub fn route(name: &str, rules: Vec<api::http_route::Rule>) -> api::HttpRoute {
    api::HttpRoute {
        metadata: resource("gateway.networking.k8s.io", "HTTPRoute", name, 0),
        hosts: vec![],
        rules,
    }
}

/// The policy of Service `web` port `port` in namespace `test`.
pub fn policy(port: u16, routes: Vec<api::HttpRoute>) -> api::OutboundPolicy {
    use api::proxy_protocol::{Detect, Http1, Http2, Kind};
    api::OutboundPolicy {
        metadata: resource("core", "Service", "web", u32::from(port)),
        protocol: Some(api::ProxyProtocol {
            kind: Some(Kind::Detect(Detect {
                timeout: Some(Duration::from_secs(10).try_into().unwrap()),
                opaque: None,
                http1: Some(Http1 { routes: routes.clone(), failure_accrual: None }),
                http2: Some(Http2 { routes, failure_accrual: None }),
            })),
        }),
    }
}

pub fn header_exact(name: &str, value: &str) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        headers: vec![hr::HeaderMatch {
            name: name.into(),
            value: Some(hr::header_match::Value::Exact(value.as_bytes().to_vec())),
        }],
        ..Default::default()
    }
}

pub fn prefix(p: &str) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        path: Some(hr::PathMatch { kind: Some(hr::path_match::Kind::Prefix(p.into())) }),
        ..Default::default()
    }
}

pub fn regex_path(re: &str) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        path: Some(hr::PathMatch { kind: Some(hr::path_match::Kind::Regex(re.into())) }),
        ..Default::default()
    }
}

/// A profile for `name.test.svc.cluster.local`, with a route when `route`.
pub fn profile(name: &str, route: bool) -> dst::DestinationProfile {
    let routes = if route {
        vec![dst::Route {
            condition: Some(dst::RequestMatch {
                r#match: Some(dst::request_match::Match::Path(dst::PathMatch { regex: "/.*".into() })),
            }),
            metrics_labels: [("route".to_string(), "all".to_string())].into_iter().collect(),
            ..Default::default()
        }]
    } else {
        vec![]
    };
    dst::DestinationProfile {
        fully_qualified_name: format!("{name}.test.svc.cluster.local"),
        routes,
        ..Default::default()
    }
}

/// A gRPC route with one rule per `(service, method)`, each to `backend`
/// (`name.test.svc.cluster.local:port`).
pub fn grpc_route(name: &str, methods: &[(&str, &str)], backend_name: &str, port: u16) -> api::GrpcRoute {
    use linkerd2_proxy_api::grpc_route as gr;
    let http = backend(backend_name, port, 1);
    let route_backend = http.backend.unwrap();
    let rules = methods
        .iter()
        .map(|(service, method)| api::grpc_route::Rule {
            matches: vec![gr::GrpcRouteMatch {
                rpc: Some(gr::GrpcRpcMatch { service: service.to_string(), method: method.to_string() }),
                headers: vec![],
            }],
            filters: vec![],
            backends: Some(api::grpc_route::Distribution {
                kind: Some(api::grpc_route::distribution::Kind::RandomAvailable(
                    api::grpc_route::distribution::RandomAvailable {
                        backends: vec![api::grpc_route::WeightedRouteBackend {
                            weight: 1,
                            backend: Some(api::grpc_route::RouteBackend {
                                backend: route_backend.backend.clone(),
                                filters: vec![],
                                ..Default::default()
                            }),
                        }],
                    },
                )),
            }),
            ..Default::default()
        })
        .collect();
    api::GrpcRoute {
        metadata: resource("gateway.networking.k8s.io", "GRPCRoute", name, 0),
        hosts: vec![],
        rules,
    }
}

/// The policy of Service `web` port `port` with protocol gRPC.
pub fn grpc_policy(port: u16, routes: Vec<api::GrpcRoute>) -> api::OutboundPolicy {
    api::OutboundPolicy {
        metadata: resource("core", "Service", "web", u32::from(port)),
        protocol: Some(api::ProxyProtocol {
            kind: Some(api::proxy_protocol::Kind::Grpc(api::proxy_protocol::Grpc {
                routes,
                failure_accrual: None,
            })),
        }),
    }
}

/// A backend sent straight to `addr` (a Forward backend: no discovery).
pub fn forward(name: &str, addr: SocketAddr, weight: u32) -> api::http_route::WeightedRouteBackend {
    api::http_route::WeightedRouteBackend {
        weight,
        backend: Some(api::http_route::RouteBackend {
            backend: Some(api::Backend {
                metadata: resource("core", "Pod", name, u32::from(addr.port())),
                queue: None,
                kind: Some(api::backend::Kind::Forward(dst::WeightedAddr {
                    addr: Some(addr.into()),
                    weight: 1,
                    ..Default::default()
                })),
            }),
            filters: vec![],
            ..Default::default()
        }),
    }
}

/// `rule` retried up to `max` times on statuses `lo..=hi`, each try limited
/// to `per_try` when set.
pub fn with_retry(
    mut rule: api::http_route::Rule,
    max: u32,
    (lo, hi): (u32, u32),
    per_try: Option<Duration>,
) -> api::http_route::Rule {
    use api::http_route::retry::{conditions::StatusRange, Conditions};
    rule.retry = Some(api::http_route::Retry {
        max_retries: max,
        max_request_bytes: 0,
        conditions: Some(Conditions { status_ranges: vec![StatusRange { start: lo, end: hi }] }),
        timeout: per_try.map(|t| t.try_into().unwrap()),
        backoff: None,
    });
    rule
}

/// Consecutive-failures accrual on every protocol of `policy`.
pub fn with_accrual(
    mut policy: api::OutboundPolicy,
    max_failures: u32,
    penalty: Duration,
) -> api::OutboundPolicy {
    use api::{failure_accrual, proxy_protocol::Kind, ExponentialBackoff, FailureAccrual};
    let accrual = Some(FailureAccrual {
        ejection: None,
        kind: Some(failure_accrual::Kind::ConsecutiveFailures(failure_accrual::ConsecutiveFailures {
            max_failures,
            backoff: Some(ExponentialBackoff {
                min_backoff: Some(penalty.try_into().unwrap()),
                max_backoff: Some(penalty.try_into().unwrap()),
                jitter_ratio: 0.0,
                respect_retry_after_hint: false,
            }),
        })),
    });
    if let Some(Kind::Detect(d)) = policy.protocol.as_mut().and_then(|p| p.kind.as_mut()) {
        for h in [
            d.http1.as_mut().map(|h| &mut h.failure_accrual),
            d.http2.as_mut().map(|h| &mut h.failure_accrual),
        ]
        .into_iter()
        .flatten()
        {
            *h = accrual;
        }
    }
    policy
}

/// A backend the control plane could not resolve, as weft-destination sends
/// it: no kind, and a filter failing its requests with 500 and `message`.
pub fn invalid_backend(message: &str, weight: u32) -> api::http_route::WeightedRouteBackend {
    api::http_route::WeightedRouteBackend {
        weight,
        backend: Some(api::http_route::RouteBackend {
            backend: Some(api::Backend {
                metadata: Some(meta::Metadata {
                    kind: Some(meta::metadata::Kind::Default("invalid".into())),
                }),
                queue: None,
                kind: None,
            }),
            filters: vec![api::http_route::Filter {
                kind: Some(api::http_route::filter::Kind::FailureInjector(hr::HttpFailureInjector {
                    status: 500,
                    message: message.into(),
                    ratio: None,
                })),
            }],
            ..Default::default()
        }),
    }
}

/// `b` with a request header set when it is picked.
pub fn with_backend_header(
    mut b: api::http_route::WeightedRouteBackend,
    name: &str,
    value: &str,
) -> api::http_route::WeightedRouteBackend {
    let set = Some(linkerd2_proxy_api::http_types::Headers {
        headers: vec![linkerd2_proxy_api::http_types::headers::Header {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }],
    });
    b.backend.as_mut().unwrap().filters.push(api::http_route::Filter {
        kind: Some(api::http_route::filter::Kind::RequestHeaderModifier(hr::RequestHeaderModifier {
            set,
            ..Default::default()
        })),
    });
    b
}
