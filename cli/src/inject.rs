//! `weft inject`: the admission webhook's injection applied offline to YAML
//! manifests, so `weft inject app.yaml | kubectl apply -f -` meshes a
//! workload exactly as the webhook would have.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use weft_injector::config::{parse_cluster_networks, DefaultInboundPolicy, Resources};
use weft_injector::kube_version::KubeVersion;
use weft_injector::InjectorConfig;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    weft inject app.yaml --trust-anchors ca/trust-anchors.pem | kubectl apply -f -\n  \
    kubectl get deploy web -o yaml | weft inject - --trust-anchors ca/trust-anchors.pem | kubectl apply -f -\n\n\
    Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and Lists of them get the \
    weft-proxy sidecar and the weft-proxy-init init container; every other document passes through \
    unchanged. A pod template annotated weft.io/inject: disabled is left alone, and running it twice \
    changes nothing. config.weft.io/* annotations on the pod template tune each proxy. What happened \
    to each workload is reported on stderr.")]
pub struct Args {
    /// Manifest file to inject, or `-` for standard input. Any number of
    /// `---`-separated documents.
    #[arg(value_name = "FILE|-")]
    input: String,

    /// PEM file of the mesh's trust anchors, handed to every proxy (the
    /// `trust-anchors.pem` that `weft identity create-ca` wrote and the
    /// control plane was installed with).
    #[arg(long, env = "WEFT_TRUST_ANCHORS", value_name = "FILE")]
    trust_anchors: PathBuf,

    /// Namespace the control plane runs in (where the proxies find
    /// weft-identity and weft-destination).
    #[arg(long, default_value = "weft")]
    control_plane_namespace: String,

    /// Trust domain of the mesh's identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,

    /// The cluster's DNS domain (Service names end in `svc.<domain>`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,

    /// Image of the injected weft-proxy container.
    #[arg(long, default_value = weft_injector::config::DEFAULT_PROXY_IMAGE)]
    proxy_image: String,

    /// Image of the injected weft-proxy-init init container.
    #[arg(long, default_value = weft_injector::config::DEFAULT_PROXY_INIT_IMAGE)]
    proxy_init_image: String,

    /// Proxy log filter, unless a pod's config.weft.io/proxy-log-level says otherwise.
    #[arg(long, default_value = "warn,weft_proxy=info")]
    proxy_log_level: String,

    /// Proxy CPU request; empty for none. Pod annotations override it.
    #[arg(long, default_value = "100m")]
    proxy_cpu_request: String,

    /// Proxy CPU limit; empty (the default) for none, since CFS throttling
    /// shows up as tail latency.
    #[arg(long, default_value = "")]
    proxy_cpu_limit: String,

    /// Proxy memory request; empty for none.
    #[arg(long, default_value = "20Mi")]
    proxy_memory_request: String,

    /// Proxy memory limit; empty for none.
    #[arg(long, default_value = "250Mi")]
    proxy_memory_limit: String,

    /// Kubernetes version of the cluster the manifests are for (e.g. 1.28 or
    /// v1.28.3-gke.100): below 1.29, which has no native sidecars,
    /// weft-proxy is added as a plain container, as the webhook does on such
    /// a cluster. Default: native sidecars.
    #[arg(long, value_name = "VERSION", value_parser = parse_kubernetes_version)]
    kubernetes_version: Option<KubeVersion>,

    /// CNI mode, as the webhook's --cni: for clusters where weft-cni writes
    /// the pods' redirect rules, pods get the unprivileged
    /// weft-network-validator init container instead of the NET_ADMIN
    /// weft-proxy-init.
    #[arg(long)]
    cni: bool,

    /// The proxies' inbound policy for ports no Server covers (and until a
    /// port's policy arrives), unless a pod's or namespace's
    /// config.weft.io/default-inbound-policy says otherwise; as the webhook's
    /// --default-inbound-policy.
    #[arg(long, default_value = "all-unauthenticated", value_name = "POLICY")]
    default_inbound_policy: DefaultInboundPolicy,

    /// Comma-separated CIDRs the `cluster-*` policies count as the cluster,
    /// as the webhook's --cluster-networks.
    #[arg(long, default_value = weft_injector::config::DEFAULT_CLUSTER_NETWORKS, value_name = "CIDRS")]
    cluster_networks: String,
}

fn parse_kubernetes_version(s: &str) -> Result<KubeVersion, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn config(args: &Args) -> Result<InjectorConfig> {
    let trust_anchors_pem = std::fs::read_to_string(&args.trust_anchors)
        .with_context(|| format!("cannot read --trust-anchors {}", args.trust_anchors.display()))?;
    if !trust_anchors_pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!(
            "--trust-anchors {} holds no PEM certificate; pass the trust-anchors.pem written by `weft identity create-ca`",
            args.trust_anchors.display()
        );
    }
    weft_tls::name::check_trust_domain(&args.trust_domain).context("--trust-domain")?;
    weft_tls::name::check_dns_label("--control-plane-namespace", &args.control_plane_namespace)?;
    let resources = Resources {
        cpu_request: non_empty(&args.proxy_cpu_request),
        cpu_limit: non_empty(&args.proxy_cpu_limit),
        memory_request: non_empty(&args.proxy_memory_request),
        memory_limit: non_empty(&args.proxy_memory_limit),
    };
    for (flag, q) in [
        ("--proxy-cpu-request", &resources.cpu_request),
        ("--proxy-cpu-limit", &resources.cpu_limit),
        ("--proxy-memory-request", &resources.memory_request),
        ("--proxy-memory-limit", &resources.memory_limit),
    ] {
        if let Some(q) = q {
            weft_injector::quantity::parse(q).with_context(|| format!("{flag} {q:?}"))?;
        }
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
        kubernetes_version: args.kubernetes_version,
        cni: args.cni,
        default_inbound_policy: args.default_inbound_policy,
        cluster_networks: parse_cluster_networks(&args.cluster_networks).context("--cluster-networks")?,
        ..InjectorConfig::default()
    })
}

pub fn run(args: Args) -> Result<()> {
    let config = config(&args)?;
    let (name, yaml) = if args.input == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read manifests from standard input")?;
        ("standard input".to_string(), s)
    } else {
        let s =
            std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input))?;
        (args.input.clone(), s)
    };
    let report = weft_injector::inject_manifests_report(&yaml, &config).with_context(|| name.clone())?;
    // Output first, complete, so a pipe into kubectl never sees half a file.
    let mut out = std::io::stdout().lock();
    out.write_all(report.yaml.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")?;
    for line in &report.lines {
        eprintln!("{line}");
    }
    if report.lines.is_empty() {
        eprintln!("no workloads found in {name}: nothing injected");
    }
    Ok(())
}
