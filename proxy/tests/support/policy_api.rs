//! A small InboundServerPolicies server (the generated tonic service on
//! hyper's HTTP/2) that serves whatever `Server` message the test sets, to
//! every WatchPort stream, and can go away; plus builders for the messages.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use futures_util::Stream;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use linkerd2_proxy_api::{
    http_route as hr,
    inbound::{self as api, inbound_server_policies_server as srv},
    meta,
};
use tokio::{net::TcpListener, sync::watch, task::AbortHandle};
use tonic::{codegen::async_trait, Request, Response, Status};
use tower::Service;

use super::loopback;

/// What WatchPort answers: a `Server`, or NotFound.
pub type Reply = Option<api::Server>;

pub struct PolicyApi {
    pub addr: SocketAddr,
    reply: watch::Sender<Reply>,
    /// The PortSpecs asked for, in order.
    pub specs: Arc<Mutex<Vec<api::PortSpec>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    /// Answer every new call with bytes that are no protobuf at all.
    garbage: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Handler {
    reply: watch::Receiver<Reply>,
    specs: Arc<Mutex<Vec<api::PortSpec>>>,
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<api::Server, Status>> + Send>>;

#[async_trait]
impl srv::InboundServerPolicies for Handler {
    async fn get_port(&self, req: Request<api::PortSpec>) -> Result<Response<api::Server>, Status> {
        self.specs.lock().unwrap().push(req.into_inner());
        let current = self.reply.borrow().clone();
        current.map(Response::new).ok_or_else(|| Status::not_found("no such port"))
    }

    type WatchPortStream = ServerStream;

    async fn watch_port(&self, req: Request<api::PortSpec>) -> Result<Response<ServerStream>, Status> {
        self.specs.lock().unwrap().push(req.into_inner());
        let mut rx = self.reply.clone();
        if rx.borrow_and_update().is_none() {
            return Err(Status::not_found("no such port"));
        }
        // Yields the current reply, then each new one.
        let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let current = rx.borrow_and_update().clone();
            let item = current.ok_or_else(|| Status::not_found("no such port"));
            Some((item, (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl PolicyApi {
    pub async fn start(first: Reply) -> Self {
        let listener = TcpListener::bind(loopback(0)).await.expect("bind policy API");
        let addr = listener.local_addr().unwrap();
        let (reply, rx) = watch::channel(first);
        let specs = Arc::new(Mutex::new(Vec::new()));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let handler = Handler { reply: rx, specs: specs.clone() };
        let conns = tasks.clone();
        let garbage = Arc::new(AtomicBool::new(false));
        let garbled = garbage.clone();
        let accept = tokio::spawn(async move {
            let svc = srv::InboundServerPoliciesServer::new(handler);
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let svc = svc.clone();
                let garbled = garbled.clone();
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let mut svc = svc.clone();
                        let garbage = garbled.load(Ordering::SeqCst);
                        async move {
                            if garbage {
                                return Ok(garbage_response());
                            }
                            svc.call(req).await
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
        Self { addr, reply, specs, tasks, garbage }
    }

    pub fn send_garbage(&self, on: bool) {
        self.garbage.store(on, Ordering::SeqCst);
    }

    pub fn set(&self, reply: Reply) {
        self.reply.send_replace(reply);
    }

    /// The control plane goes away: the listener and every stream close.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// A gRPC response whose one message is not protobuf (an endless varint).
fn garbage_response() -> http::Response<tonic::body::Body> {
    let frame = bytes::Bytes::from_static(&[0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![
        Ok::<_, Status>(hyper::body::Frame::data(frame)),
        Ok(hyper::body::Frame::trailers(trailers)),
    ]));
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(tonic::body::Body::new(body))
        .unwrap()
}

impl Drop for PolicyApi {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Messages.

fn labels(kind: &str, name: &str) -> HashMap<String, String> {
    let group = if kind == "default" { "" } else { "policy.linkerd.io" };
    [("group", group), ("kind", kind), ("name", name)]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

fn resource(kind: &str, name: &str) -> Option<meta::Metadata> {
    Some(meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: "policy.linkerd.io".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: "test".into(),
            ..Default::default()
        })),
    })
}

pub fn network(cidr: &str) -> api::Network {
    let net: ipnet::IpNet = cidr.parse().unwrap();
    api::Network { net: Some(net.into()), except: vec![] }
}

/// An AuthorizationPolicy admitting any client from `nets`.
pub fn authz_unauthenticated(name: &str, nets: &[&str]) -> api::Authz {
    api::Authz {
        networks: nets.iter().map(|n| network(n)).collect(),
        authentication: Some(api::Authn {
            permit: Some(api::authn::Permit::Unauthenticated(api::authn::PermitUnauthenticated {})),
        }),
        labels: labels("authorizationpolicy", name),
        metadata: resource("AuthorizationPolicy", name),
    }
}

/// An AuthorizationPolicy admitting only mesh identities under `suffix`.
pub fn authz_mesh(name: &str, suffix: &[&str]) -> api::Authz {
    use api::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    api::Authz {
        networks: vec![network("0.0.0.0/0"), network("::/0")],
        authentication: Some(api::Authn {
            permit: Some(api::authn::Permit::MeshTls(api::authn::PermitMeshTls {
                clients: Some(Clients::Identities(PermitClientIdentities {
                    identities: vec![],
                    suffixes: vec![api::IdentitySuffix {
                        parts: suffix.iter().map(|s| s.to_string()).collect(),
                    }],
                })),
            })),
        }),
        labels: labels("authorizationpolicy", name),
        metadata: resource("AuthorizationPolicy", name),
    }
}

pub fn path_prefix(p: &str) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        path: Some(hr::PathMatch { kind: Some(hr::path_match::Kind::Prefix(p.into())) }),
        ..Default::default()
    }
}

pub fn path_exact(p: &str) -> hr::HttpRouteMatch {
    hr::HttpRouteMatch {
        path: Some(hr::PathMatch { kind: Some(hr::path_match::Kind::Exact(p.into())) }),
        ..Default::default()
    }
}

pub fn with_method(mut m: hr::HttpRouteMatch, method: http::Method) -> hr::HttpRouteMatch {
    m.method = Some(method.into());
    m
}

/// An HTTPRoute with one rule.
pub fn route(
    name: &str,
    matches: Vec<hr::HttpRouteMatch>,
    authorizations: Vec<api::Authz>,
) -> api::HttpRoute {
    api::HttpRoute {
        metadata: resource("HTTPRoute", name),
        hosts: vec![],
        authorizations,
        rules: vec![api::http_route::Rule { matches, filters: vec![] }],
    }
}

fn server(name: &str, kind: api::proxy_protocol::Kind, authorizations: Vec<api::Authz>) -> api::Server {
    api::Server {
        protocol: Some(api::ProxyProtocol { kind: Some(kind) }),
        server_ips: vec![],
        authorizations,
        labels: labels("server", name),
    }
}

/// A Server (protocol: detect) with these routes.
pub fn http_server(name: &str, routes: Vec<api::HttpRoute>, authorizations: Vec<api::Authz>) -> api::Server {
    http_server_limited(name, routes, authorizations, None)
}

pub fn http_server_limited(
    name: &str,
    http_routes: Vec<api::HttpRoute>,
    authorizations: Vec<api::Authz>,
    total_rps: Option<u32>,
) -> api::Server {
    let limit = total_rps.map(|rps| api::HttpLocalRateLimit {
        metadata: resource("HTTPLocalRateLimitPolicy", "limit"),
        total: Some(api::http_local_rate_limit::Limit { requests_per_second: rps }),
        identity: None,
        overrides: vec![],
    });
    let detect = api::proxy_protocol::Detect {
        timeout: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
        http_routes,
        http_local_rate_limit: limit,
    };
    server(name, api::proxy_protocol::Kind::Detect(detect), authorizations)
}

/// A Server with proxyProtocol opaque.
pub fn opaque_server(name: &str, authorizations: Vec<api::Authz>) -> api::Server {
    server(name, api::proxy_protocol::Kind::Opaque(api::proxy_protocol::Opaque {}), authorizations)
}

/// The HTTP routes of a Server whose protocol is detect.
pub fn http_routes_mut(server: &mut api::Server) -> &mut Vec<api::HttpRoute> {
    match server.protocol.as_mut().and_then(|p| p.kind.as_mut()) {
        Some(api::proxy_protocol::Kind::Detect(d)) => &mut d.http_routes,
        _ => panic!("not a detect server"),
    }
}

/// A GRPCRoute matching one `service` (and `method`, unless empty).
pub fn grpc_route(
    name: &str,
    service: &str,
    method: &str,
    authorizations: Vec<api::Authz>,
) -> api::GrpcRoute {
    use linkerd2_proxy_api::grpc_route as gr;
    api::GrpcRoute {
        metadata: resource("GRPCRoute", name),
        hosts: vec![],
        authorizations,
        rules: vec![api::grpc_route::Rule {
            matches: vec![gr::GrpcRouteMatch {
                rpc: Some(gr::GrpcRpcMatch { service: service.into(), method: method.into() }),
                headers: vec![],
            }],
            filters: vec![],
        }],
    }
}

/// A Server with proxyProtocol gRPC.
pub fn grpc_server(name: &str, routes: Vec<api::GrpcRoute>) -> api::Server {
    server(name, api::proxy_protocol::Kind::Grpc(api::proxy_protocol::Grpc { routes }), vec![])
}
