//! weft-proxy: the sidecar data plane. See ARCHITECTURE.md for the path a
//! connection takes through these modules.

pub mod admin;
pub mod await_ready;
pub mod balance;
pub mod config;
pub mod connect;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod io;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod opaque;
pub mod orig_dst;
pub mod outbound;
pub mod outbound_policy;
pub mod policy;
pub mod process_metrics;
pub mod profile;
pub mod stack;
pub mod tap;
pub mod tls;
pub mod validate;

use std::sync::{atomic::AtomicBool, Arc};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::Admin,
    config::Config,
    drain::Drain,
    inbound::Inbound,
    listen::{bind_all, BindError, BoundAddrs},
    metrics::Direction,
    outbound::Outbound,
    stack::Stack,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("reading the listeners' addresses: {0}")]
    LocalAddr(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("DNS resolver configuration: {0}")]
    Dns(#[from] hickory_resolver::net::NetError),
    #[error(transparent)]
    Discovery(#[from] discovery::InvalidAddr),
    #[error("identity: {0}")]
    Identity(#[from] identity::IdentityError),
    #[error("mesh TLS: {0}")]
    Tls(#[from] weft_tls::ConfigError),
    #[error("installing signal handler: {0}")]
    Signal(std::io::Error),
}

/// Tap: one loopback address, exactly as configured.
fn bind_one(
    what: &'static str,
    var: &'static str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, Error> {
    Ok(listen::bind(addr, false).map_err(|source| BindError { what, var, addr, source })?)
}

/// Runs the proxy until SIGTERM, SIGINT or `POST /shutdown`, then drains.
pub async fn run(config: Config, log: Option<log::LogLevel>) -> Result<(), Error> {
    let prometheus = metrics::install()?;
    let dns = Arc::new(http::resolve::system_resolver()?);
    let drain = Drain::default();

    let outbound_listeners = bind_all("outbound", &config.outbound_addrs)?;
    let inbound_listeners = bind_all("inbound", &config.inbound_addrs)?;
    let admin_listeners = bind_all("admin", &config.admin_addrs)?;
    let tap_listener = bind_one("tap", "WEFT_PROXY_TAP_ADDR", config.tap_addr)?;
    let taps = tap::Taps::default();
    tokio::spawn(tap::serve(tap_listener, taps.clone()));
    let outbound_addrs = BoundAddrs::of(&outbound_listeners).map_err(Error::LocalAddr)?;
    let inbound_addrs = BoundAddrs::of(&inbound_listeners).map_err(Error::LocalAddr)?;
    let admin_addrs = BoundAddrs::of(&admin_listeners).map_err(Error::LocalAddr)?;

    let identity = config.identity.clone().map(identity::start).transpose()?;
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let admin = Admin {
        metrics: prometheus.clone(),
        log,
        ready: ready.clone(),
        identity: identity.clone(),
        shutdown: shutdown.clone(),
    };
    for listener in admin_listeners {
        tokio::spawn(admin::serve(listener, admin.clone()));
    }
    // Histograms need periodic upkeep to bound their memory.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            prometheus.run_upkeep();
        }
    });

    let discovery = match &config.destination_addr {
        Some(addr) => {
            let tls = discovery::control_plane_tls(
                "destination",
                addr,
                config.destination_name.as_ref(),
                identity.as_ref(),
            )
            .map_err(identity::IdentityError::from)?;
            let discovery = discovery::Discovery::new(
                addr,
                tls,
                config.destination_context.clone(),
                config.discovery_idle_timeout,
            )?;
            let profiles = http::logical::Profiles::new(
                discovery.clone(),
                config.destination_suffixes.clone(),
                config.discovery_timeout,
            )
            .with_outbound_policies(config.policy_workload.clone(), config.discovery_idle_timeout);
            let balancers = http::balance::Balancers::new(
                discovery,
                config.discovery_timeout,
                config.discovery_idle_timeout,
            );
            info!(destination = %addr, "discovery enabled");
            Some((profiles, balancers))
        }
        None => None,
    };
    let outbound = Arc::new(Outbound::new(
        Stack::new(Direction::Outbound, &config, drain.clone(), taps.clone()),
        dns.clone(),
        discovery,
        identity.clone().map(tls::MeshClients::new),
        outbound_addrs.clone(),
    ));
    let mesh_server = match &identity {
        Some(local) => {
            Some(inbound::MeshServer { local: local.clone(), config: tls::inbound_server_config(local)? })
        }
        None => None,
    };
    let policy_api = match (&config.policy_addr, &config.policy_workload) {
        (Some(addr), Some(workload)) => {
            info!(policy = %addr, workload = %workload, "inbound policy discovery enabled");
            let tls =
                discovery::control_plane_tls("policy", addr, config.policy_name.as_ref(), identity.as_ref())
                    .map_err(identity::IdentityError::from)?;
            Some((addr.as_str(), tls, workload.clone()))
        }
        _ => None,
    };
    let policies = policy::Policies::new(
        policy_api,
        config.default_policy,
        config.inbound_probes.clone(),
        config.cluster_networks.clone(),
        config.inbound_ports.clone(),
        config.discovery_idle_timeout,
        config.detect_timeout,
    )?;
    // The app's declared ports have their policy before their first
    // connection.
    policies.prefetch();
    let inbound = Arc::new(Inbound::new(
        Stack::new(Direction::Inbound, &config, drain.clone(), taps),
        dns,
        config.inbound_app_addr,
        inbound_addrs.clone(),
        mesh_server,
        config.inbound_ports_require_identity.clone(),
        policies,
    ));
    let max = config.max_connections;
    tokio::spawn(listen::serve(outbound_listeners, Direction::Outbound, max, drain.clone(), move |conn| {
        outbound.clone().handle(conn)
    }));
    tokio::spawn(listen::serve(inbound_listeners, Direction::Inbound, max, drain.clone(), move |conn| {
        inbound.clone().handle(conn)
    }));

    ready.store(true, std::sync::atomic::Ordering::Release);
    info!(outbound = %outbound_addrs, inbound = %inbound_addrs, admin = %admin_addrs, "listening");
    // "ready" is said when `/ready` turns 200: with an identity, that waits
    // for the first certificate.
    match identity.clone() {
        Some(identity) => {
            tokio::spawn(async move {
                identity.certified().await;
                info!(identity = %identity.name, "proxy ready");
            });
        }
        None => info!("proxy ready"),
    }

    wait_for_shutdown(&shutdown).await?;
    ready.store(false, std::sync::atomic::Ordering::Release);
    info!(grace_period = ?config.shutdown_grace_period, "draining");
    match drain.drain(config.shutdown_grace_period).await {
        0 => info!("drained"),
        open => warn!(open, "grace period over; closing connections still open"),
    }
    Ok(())
}

async fn wait_for_shutdown(admin_shutdown: &CancellationToken) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
        () = admin_shutdown.cancelled() => {}
    }
    Ok(())
}
