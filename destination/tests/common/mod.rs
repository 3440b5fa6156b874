//! Shared test harness: a real server on 127.0.0.1:0 and a real tonic client.
#![allow(dead_code)]

pub mod binary;

use std::{net::SocketAddr, time::Duration};

use linkerd2_proxy_api::destination::{
    self as pb, destination_client::DestinationClient, update::Update as Up,
};
use tokio::{net::TcpListener, sync::watch};
use tonic::{transport::Channel, Streaming};
use weft_destination::{index::Index, policy_api, server, MeshConfig};

pub struct Server {
    pub addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

pub async fn start(index: Index, cfg: MeshConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let policies =
        policy_api::PolicyService::new(index.clone(), cfg.clone(), Default::default(), stop_rx.clone());
    let service = server::DestinationService::new(index, cfg, stop_rx.clone());
    let mut stopped = stop_rx;
    tokio::spawn(server::serve(listener, service, policies, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Server { addr, _stop: stop }
}

pub async fn client(addr: SocketAddr) -> DestinationClient<Channel> {
    DestinationClient::connect(format!("http://{addr}")).await.unwrap()
}

pub fn req(path: &str) -> pb::GetDestination {
    pb::GetDestination { scheme: "k8s".into(), path: path.into(), context_token: String::new() }
}

pub async fn get(c: &mut DestinationClient<Channel>, path: &str) -> Streaming<pb::Update> {
    c.get(req(path)).await.unwrap().into_inner()
}

pub async fn get_profile(
    c: &mut DestinationClient<Channel>,
    path: &str,
) -> Streaming<pb::DestinationProfile> {
    c.get_profile(req(path)).await.unwrap().into_inner()
}

/// The next message, or a panic naming what we waited for.
pub async fn next<T: std::fmt::Debug>(s: &mut Streaming<T>, within: Duration, what: &str) -> T {
    match tokio::time::timeout(within, s.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(other) => panic!("{what}: stream ended: {other:?}"),
        Err(_) => panic!("{what}: nothing within {within:?}"),
    }
}

/// Asserts nothing arrives for `d`.
pub async fn quiet<T: std::fmt::Debug>(s: &mut Streaming<T>, d: Duration) {
    if let Ok(m) = tokio::time::timeout(d, s.message()).await {
        panic!("expected no message, got {m:?}");
    }
}

/// A resolved endpoint as a proxy would record it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ep {
    pub addr: String,
    pub identity: Option<String>,
    pub h2: bool,
}

pub fn addr_str(a: &linkerd2_proxy_api::net::TcpAddress) -> String {
    use linkerd2_proxy_api::net::ip_address::Ip;
    let ip = a.ip.as_ref().and_then(|ip| ip.ip.as_ref());
    let ip: std::net::IpAddr = match ip {
        Some(Ip::Ipv4(v4)) => std::net::Ipv4Addr::from(*v4).into(),
        Some(Ip::Ipv6(v6)) => std::net::Ipv6Addr::from(*v6).into(),
        None => panic!("address without IP"),
    };
    SocketAddr::new(ip, a.port as u16).to_string()
}

pub fn ep(w: &pb::WeightedAddr) -> Ep {
    let identity = w.tls_identity.as_ref().and_then(|t| match &t.strategy {
        Some(pb::tls_identity::Strategy::DnsLikeIdentity(d)) => Some(d.name.clone()),
        _ => None,
    });
    let h2 = matches!(
        w.protocol_hint.as_ref().and_then(|h| h.protocol.as_ref()),
        Some(pb::protocol_hint::Protocol::H2(_))
    );
    Ep { addr: addr_str(w.addr.as_ref().unwrap()), identity, h2 }
}

/// What an update says, in a form tests can compare.
#[derive(Debug, PartialEq, Eq)]
pub enum U {
    Add(Vec<Ep>),
    Remove(Vec<String>),
    NoEndpoints(bool),
}

pub fn u(update: pb::Update) -> U {
    match update.update.expect("empty update") {
        Up::Add(set) => {
            let mut v: Vec<Ep> = set.addrs.iter().map(ep).collect();
            v.sort();
            U::Add(v)
        }
        Up::Remove(set) => {
            let mut v: Vec<String> = set.addrs.iter().map(addr_str).collect();
            v.sort();
            U::Remove(v)
        }
        Up::NoEndpoints(n) => U::NoEndpoints(n.exists),
    }
}

pub fn plain(addr: &str) -> Ep {
    Ep { addr: addr.into(), identity: None, h2: false }
}

pub fn meshed(addr: &str, identity: &str) -> Ep {
    Ep { addr: addr.into(), identity: Some(identity.into()), h2: true }
}

/// `(authority, weight)` of a profile's dst_overrides.
pub fn overrides(p: &pb::DestinationProfile) -> Vec<(String, u32)> {
    p.dst_overrides.iter().map(|d| (d.authority.clone(), d.weight)).collect()
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weft-destination-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes atomically (temp file + rename), as editors and ConfigMaps do.
pub fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub const SECOND: Duration = Duration::from_secs(1);

/// An expected `Add`, in any order.
pub fn add(mut v: Vec<Ep>) -> U {
    v.sort();
    U::Add(v)
}
