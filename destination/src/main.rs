//! weft-destination: serves the Destination API from Kubernetes or a
//! directory of manifests. See README.md for flags and formats.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};
use weft_destination::{admin, files, index::Index, k8s, policy::Cidr, policy_api, server, MeshConfig};
use weft_tls::{IdentityConfig, IdentityName, TrustAnchors};

mod tls;

/// A whole list as one flag value (clap would otherwise take it per item).
type Networks = Vec<Cidr>;

#[derive(Parser, Debug)]
#[command(name = "weft-destination", version, about = "weft's service discovery (Linkerd Destination API)")]
struct Args {
    /// gRPC listen address for the Destination and policy APIs: TLS with
    /// --identity-addr, else plaintext.
    #[arg(long, env = "WEFT_DESTINATION_ADDR", default_value = "0.0.0.0:8086")]
    addr: SocketAddr,

    /// Admin listen address: /ready, /live, /metrics.
    #[arg(long, env = "WEFT_DESTINATION_ADMIN_ADDR", default_value = "0.0.0.0:9996")]
    admin_addr: SocketAddr,

    /// Watch the Kubernetes API (in-cluster config or KUBECONFIG).
    #[arg(long, env = "WEFT_DESTINATION_KUBERNETES", conflicts_with = "dir")]
    kubernetes: bool,

    /// Serve the manifests in this directory, reloading them as they change
    /// (the default backend).
    #[arg(long, env = "WEFT_DESTINATION_DIR", default_value = "/etc/weft/destination")]
    dir: PathBuf,

    /// How often the manifest directory is checked for changes.
    #[arg(long, env = "WEFT_DESTINATION_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    poll_ms: u64,

    #[arg(long, env = "WEFT_DESTINATION_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,

    #[arg(long, env = "WEFT_DESTINATION_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,

    #[arg(long, env = "WEFT_DESTINATION_CONTROL_PLANE_NAMESPACE", default_value = "weft")]
    control_plane_namespace: String,

    /// Access policy of ports no Server covers, unless the pod or its
    /// Namespace says otherwise (`config.weft.io/default-inbound-policy`).
    #[arg(long, env = "WEFT_DESTINATION_DEFAULT_INBOUND_POLICY", default_value = "all-unauthenticated", value_parser = policy_api::parse_access_policy)]
    default_inbound_policy: weft_destination::policy::AccessPolicy,

    /// The cluster's pod and node networks (comma-separated CIDRs): what the
    /// `cluster-*` policies allow.
    #[arg(long, env = "WEFT_DESTINATION_CLUSTER_NETWORKS", default_value = policy_api::DEFAULT_CLUSTER_NETWORKS, value_parser = policy_api::parse_networks)]
    cluster_networks: Networks,

    /// TrafficSplit API version to watch.
    #[arg(long, env = "WEFT_DESTINATION_TRAFFIC_SPLIT_VERSION", value_enum, default_value = "auto")]
    traffic_split_version: k8s::SplitVersion,

    /// weft-identity's HOST:PORT. Set, the gRPC port serves TLS with the
    /// certificate weft-identity issues this process (and not before).
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_ADDR", requires_all = ["identity_token_file", "trust_anchors"])]
    identity_addr: Option<String>,

    /// The identity weft-identity's certificate must carry (default
    /// `identity.NS.serviceaccount.identity.NS.TRUST_DOMAIN`, NS the control
    /// plane namespace).
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_NAME", requires = "identity_addr")]
    identity_name: Option<IdentityName>,

    /// The identity this process asks for and serves with (default
    /// `weft-destination.NS.serviceaccount.identity.NS.TRUST_DOMAIN`); the
    /// token must be its ServiceAccount's.
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_LOCAL_NAME", requires = "identity_addr")]
    identity_local_name: Option<IdentityName>,

    /// The ServiceAccount token weft-identity checks, read at every renewal
    /// (projected tokens rotate).
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_TOKEN_FILE", requires = "identity_addr")]
    identity_token_file: Option<PathBuf>,

    /// PEM file of the mesh's trust anchors.
    #[arg(long, env = "WEFT_DESTINATION_TRUST_ANCHORS", requires = "identity_addr")]
    trust_anchors: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_DESTINATION_LOG", default_value = "info")]
    log: String,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "WEFT_DESTINATION_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }

    // Fail fast on names that could never form a valid identity.
    weft_tls::name::check_trust_domain(&args.trust_domain).context("invalid --trust-domain")?;
    weft_tls::name::check_dns_label("control plane namespace", &args.control_plane_namespace)
        .context("invalid --control-plane-namespace")?;
    let cfg = MeshConfig {
        cluster_domain: args.cluster_domain.trim_end_matches('.').to_owned(),
        trust_domain: args.trust_domain.clone(),
        control_plane_namespace: args.control_plane_namespace.clone(),
    };

    let metrics = admin::install_metrics().context("installing the metrics recorder")?;
    // After the recorder: the renewal task registers its metrics as it starts.
    let identity = identity_config(&args)?
        .map(|config| {
            info!(identity = %config.local_name, ca = %config.svc_addr, "gRPC over TLS once certified");
            weft_tls::certify::start(config, log_renewal)
        })
        .transpose()
        .context("starting the identity client")?;
    let index = Index::new();

    if args.kubernetes {
        let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
        info!("backend: kubernetes");
        k8s::spawn(client, index.clone(), cfg.clone(), args.traffic_split_version);
    } else {
        if !args.dir.is_dir() {
            bail!(
                "manifest directory {} does not exist (pass --dir, or --kubernetes to watch a cluster)",
                args.dir.display()
            );
        }
        info!(dir = %args.dir.display(), "backend: files");
        let loader = files::Loader::new(&args.dir, cfg.clone());
        tokio::spawn(files::run(loader, index.clone(), std::time::Duration::from_millis(args.poll_ms)));
    }

    let admin_listener =
        TcpListener::bind(args.admin_addr).await.with_context(|| format!("binding {}", args.admin_addr))?;
    let admin_addr = admin_listener.local_addr().context("admin local address")?;
    tokio::spawn(admin::serve(admin_listener, index.clone(), identity.clone(), Some(metrics)));

    let listener = TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    // Both bound addresses are logged so tools and tests can use port 0.
    info!(addr = %listener.local_addr().context("local address")?, admin = %admin_addr, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let policies = policy_api::PolicyService::new(
        index.clone(),
        cfg.clone(),
        policy_api::PolicyConfig {
            default_policy: args.default_inbound_policy,
            cluster_networks: args.cluster_networks.clone(),
        },
        stop_rx.clone(),
    );
    let service = server::DestinationService::new(index, cfg, stop_rx);
    let shutdown = async move {
        shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    };
    match identity {
        Some(local) => {
            let config = tls::server_config(&local).context("building the TLS server config")?;
            server::serve_incoming(tls::incoming(listener, config, local), service, policies, shutdown)
                .await
                .context("serving the Destination API")?;
        }
        None => {
            if !args.addr.ip().is_loopback() {
                warn!(
                    addr = %args.addr,
                    "serving discovery and policy in plaintext on a non-loopback address: linkerd2-proxy \
                     refuses it, and weft-proxy refuses it when it expects an identity; pass --identity-addr"
                );
            }
            server::serve(listener, service, policies, shutdown)
                .await
                .context("serving the Destination API")?;
        }
    }
    Ok(())
}

/// The identity client reports; logged here under this binary's target, as the
/// proxy logs its own (proxy/src/identity.rs).
fn log_renewal(event: &weft_tls::certify::Renewal<'_>) {
    use weft_tls::certify::Renewal;
    match *event {
        Renewal::Certified { name, valid_for, renew_in } => {
            info!(identity = %name, ?valid_for, ?renew_in, "certified")
        }
        Renewal::Failed { name, error, retry_in, still_valid } => {
            warn!(identity = %name, %error, ?retry_in, still_valid, "certification failed")
        }
    }
}

/// The `--identity-*` group; `None` without --identity-addr.
fn identity_config(args: &Args) -> anyhow::Result<Option<IdentityConfig>> {
    let Some(svc_addr) = &args.identity_addr else { return Ok(None) };
    let ns = &args.control_plane_namespace;
    let named = |sa: &str| IdentityName::new(sa, ns, ns, &args.trust_domain);
    let svc_name = match &args.identity_name {
        Some(name) => name.clone(),
        None => named("identity").context("deriving --identity-name")?,
    };
    let local_name = match &args.identity_local_name {
        Some(name) => name.clone(),
        None => named("weft-destination").context("deriving --identity-local-name")?,
    };
    // clap's `requires_all` guarantees both alongside --identity-addr.
    let (Some(token_file), Some(anchors)) = (&args.identity_token_file, &args.trust_anchors) else {
        bail!("--identity-addr needs --identity-token-file and --trust-anchors");
    };
    let trust_anchors = TrustAnchors::load(anchors).context("loading --trust-anchors")?;
    Ok(Some(IdentityConfig {
        svc_addr: svc_addr.clone(),
        svc_name,
        local_name,
        trust_anchors,
        token_file: token_file.clone(),
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
