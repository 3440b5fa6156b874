//! weft-injector: the mutating admission webhook that meshes pods.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use weft_injector::config::{
    parse_cluster_networks, DefaultInboundPolicy, Resources, DEFAULT_CLUSTER_NETWORKS, DEFAULT_PROXY_IMAGE,
    DEFAULT_PROXY_INIT_IMAGE,
};
use weft_injector::kube_version;
use weft_injector::namespaces::KubeNamespaces;
use weft_injector::tls::CertReloader;
use weft_injector::webhook::{serve_admin, serve_tls, Injector};
use weft_injector::InjectorConfig;

#[derive(Debug, Parser)]
#[command(name = "weft-injector", version, about = "Mutating admission webhook that adds weft-proxy to pods")]
struct Args {
    /// HTTPS address of the webhook (`POST /inject`).
    #[arg(long, env = "WEFT_INJECTOR_LISTEN_ADDR", default_value = "0.0.0.0:8443")]
    listen_addr: SocketAddr,
    /// Plain-HTTP address serving `/ready` and `/live`.
    #[arg(long, env = "WEFT_INJECTOR_ADMIN_ADDR", default_value = "0.0.0.0:9995")]
    admin_addr: SocketAddr,
    /// PEM certificate chain the webhook serves; re-read when it changes.
    #[arg(long, env = "WEFT_INJECTOR_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, env = "WEFT_INJECTOR_TLS_KEY")]
    tls_key: PathBuf,
    /// PEM file with the mesh's trust anchors, handed to every proxy.
    #[arg(long, env = "WEFT_INJECTOR_TRUST_ANCHORS")]
    trust_anchors: PathBuf,
    /// Namespace of the control plane; its pods are never injected.
    #[arg(long, env = "WEFT_INJECTOR_CONTROL_PLANE_NAMESPACE", default_value = "weft")]
    control_plane_namespace: String,
    /// Trust domain of proxy identities (`SA.NS.serviceaccount.identity.CPNS.TRUST_DOMAIN`).
    #[arg(long, env = "WEFT_INJECTOR_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// DNS suffix of cluster Services, used for the control-plane addresses.
    #[arg(long, env = "WEFT_INJECTOR_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Image of the injected weft-proxy container.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Image of the injected weft-proxy-init init container.
    #[arg(
        long,
        env = "WEFT_INJECTOR_PROXY_INIT_IMAGE",
        default_value = DEFAULT_PROXY_INIT_IMAGE
    )]
    proxy_init_image: String,
    /// Proxy log filter unless config.weft.io/proxy-log-level says otherwise.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_LOG_LEVEL", default_value = "warn,weft_proxy=info")]
    proxy_log_level: String,
    /// Proxy resources unless config.weft.io/proxy-* annotations say otherwise; empty: unset.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_CPU_REQUEST", default_value = "100m")]
    proxy_cpu_request: String,
    /// Empty: no CPU limit (throttling shows up as tail latency).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_CPU_LIMIT", default_value = "")]
    proxy_cpu_limit: String,
    #[arg(long, env = "WEFT_INJECTOR_PROXY_MEMORY_REQUEST", default_value = "20Mi")]
    proxy_memory_request: String,
    #[arg(long, env = "WEFT_INJECTOR_PROXY_MEMORY_LIMIT", default_value = "250Mi")]
    proxy_memory_limit: String,
    /// CNI mode: weft-cni writes the pods' redirect rules from the node, so
    /// pods get the unprivileged weft-network-validator init container
    /// instead of the NET_ADMIN weft-proxy-init (Pod Security `restricted`).
    #[arg(long, env = "WEFT_INJECTOR_CNI")]
    cni: bool,
    /// The proxies' inbound policy for ports no Server covers (and until a
    /// port's policy arrives), unless the pod's or its namespace's
    /// config.weft.io/default-inbound-policy says otherwise: all-unauthenticated,
    /// all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit.
    #[arg(long, env = "WEFT_INJECTOR_DEFAULT_INBOUND_POLICY", default_value = "all-unauthenticated")]
    default_inbound_policy: DefaultInboundPolicy,
    /// Comma-separated CIDRs the `cluster-*` policies count as the cluster.
    #[arg(long, env = "WEFT_INJECTOR_CLUSTER_NETWORKS", default_value = DEFAULT_CLUSTER_NETWORKS)]
    cluster_networks: String,
    /// Log filter of the injector itself.
    #[arg(long, env = "WEFT_INJECTOR_LOG", default_value = "info")]
    log: String,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_string())
}

fn config(args: &Args) -> Result<InjectorConfig> {
    let trust_anchors_pem = std::fs::read_to_string(&args.trust_anchors)
        .with_context(|| format!("reading trust anchors from {}", args.trust_anchors.display()))?;
    if !trust_anchors_pem.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!("{} holds no PEM certificate", args.trust_anchors.display());
    }
    let resources = Resources {
        cpu_request: non_empty(&args.proxy_cpu_request),
        cpu_limit: non_empty(&args.proxy_cpu_limit),
        memory_request: non_empty(&args.proxy_memory_request),
        memory_limit: non_empty(&args.proxy_memory_limit),
    };
    for q in
        [&resources.cpu_request, &resources.cpu_limit, &resources.memory_request, &resources.memory_limit]
            .into_iter()
            .flatten()
    {
        weft_injector::quantity::parse(q).context("default proxy resources")?;
    }
    Ok(InjectorConfig {
        control_plane_namespace: args.control_plane_namespace.clone(),
        trust_domain: args.trust_domain.clone(),
        cluster_domain: args.cluster_domain.clone(),
        proxy_image: args.proxy_image.clone(),
        proxy_init_image: args.proxy_init_image.clone(),
        trust_anchors_pem,
        default_log_level: args.proxy_log_level.clone(),
        default_resources: resources,
        cni: args.cni,
        default_inbound_policy: args.default_inbound_policy,
        cluster_networks: parse_cluster_networks(&args.cluster_networks).context("--cluster-networks")?,
        ..InjectorConfig::default()
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .init();
    let mut config = config(&args)?;

    let certs =
        CertReloader::new(&args.tls_cert, &args.tls_key).context("loading the serving certificate")?;
    let tls = Arc::new(certs.server_config()?);
    tokio::spawn(certs.clone().watch(Duration::from_secs(30)));

    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster config or KUBECONFIG)")?;
    config.kubernetes_version = match kube_version::detect(&client, Duration::from_secs(10)).await {
        Ok(v) if v.supports_native_sidecars() => {
            info!(kubernetes = %v, "native sidecars supported; weft-proxy is injected as one");
            Some(v)
        }
        Ok(v) => {
            warn!(
                kubernetes = %v,
                "Kubernetes older than {}: weft-proxy is injected as a plain container",
                kube_version::NATIVE_SIDECARS
            );
            Some(v)
        }
        Err(error) => {
            warn!(%error, "cannot tell the Kubernetes version; injecting weft-proxy as a native sidecar (needs 1.29+)");
            None
        }
    };
    let (namespaces, watch) = KubeNamespaces::new(client);
    tokio::spawn(watch);
    let ready = Arc::new(AtomicBool::new(false));
    {
        let namespaces = namespaces.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            if namespaces.ready().await {
                ready.store(true, Ordering::Release);
                info!(namespaces = namespaces.cached(), "namespace cache loaded");
            } else {
                error!("namespace cache writer dropped before loading");
            }
        });
    }

    let listener =
        TcpListener::bind(args.listen_addr).await.with_context(|| format!("binding {}", args.listen_addr))?;
    let admin =
        TcpListener::bind(args.admin_addr).await.with_context(|| format!("binding {}", args.admin_addr))?;
    if args.cni {
        info!(
            "CNI mode: pods get weft-network-validator, not weft-proxy-init; weft-cni must run on every node"
        );
    }
    info!(addr = %args.listen_addr, admin = %args.admin_addr, cni = args.cni, "serving");

    let injector = Arc::new(Injector::new(config, namespaces));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let admin_task = tokio::spawn(serve_admin(admin, ready, admin_stop));
    serve_tls(listener, tls, injector, shutdown_signal()).await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    Ok(())
}
