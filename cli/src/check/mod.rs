//! `weft check`: is the cluster ready for weft (`--pre`), is weft healthy,
//! are the meshed pods' proxies healthy (`--proxy`). Each check asks the
//! Kubernetes API (and, through its pods proxy subresource, the control
//! plane's and the proxies' admin ports) and reports as `linkerd check`
//! does; any `×` makes the exit status non-zero.
//!
//! One module per thing checked: `kubernetes_api` (client, /version, the
//! Kubernetes version), `rbac` (what installing needs), `pod_security`,
//! `webhook` (other meshes' injectors, the caBundle, endpoints, a dry run),
//! `crds`, `control_plane` (Deployments, /ready), `certificates` (trust
//! anchors and issuer), `proxies` (the data plane).

// Shared with `weft authz`: the same client, timeouts and error messages.
pub(crate) mod api;
mod certificates;
mod control_plane;
mod crds;
mod kubernetes_api;
mod pod_security;
mod proxies;
mod rbac;
mod report;
mod webhook;

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};

use api::Api;
use report::{Format, Report};

/// Certificates expiring sooner than this are warned about.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(60 * 86_400);

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    weft check --pre            # before installing: API, version, RBAC, other meshes, Pod Security\n  \
    weft check                  # after installing: CRDs, control plane, webhook, certificates\n  \
    weft check --proxy -n shop  # and the proxies of the meshed pods in namespace shop\n\n\
    √ passed, ‼ warning, × failed; the exit status is 1 when any check failed. Needs read access \
    to the control plane's namespace (Deployments, Pods, Secrets, ConfigMaps, EndpointSlices), \
    to webhook configurations, CRDs and namespaces, `create` on pods with dryRun, and `get` on \
    pods/proxy for the admin endpoints.")]
pub struct Args {
    /// Check that the cluster can take weft, before installing it.
    #[arg(long, conflicts_with = "proxy")]
    pre: bool,

    /// Also check the data plane: the proxies of the meshed pods in
    /// --namespace (default: every namespace).
    #[arg(long)]
    proxy: bool,

    /// Namespace of the data plane checked by --proxy.
    #[arg(short, long, requires = "proxy")]
    namespace: Option<String>,

    /// Namespace the control plane is (to be) installed in.
    #[arg(long, default_value = "weft")]
    control_plane_namespace: String,

    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster configuration).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    context: Option<String>,

    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
}

/// A captured API object of tests/fixtures/kubernetes, for unit tests.
#[cfg(test)]
pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/../tests/fixtures/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What every check needs.
pub struct Ctx {
    pub api: Api,
    /// The control plane's namespace.
    pub cpns: String,
    pub now: SystemTime,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ok = rt.block_on(check(&args, std::io::stdout().lock()))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the checks `args` ask for, reporting to `out`; returns whether all
/// passed (warnings allowed).
async fn check<W: Write>(args: &Args, out: W) -> Result<bool> {
    let mut report = Report::new(args.output, out);
    if let Some(ctx) = kubernetes_api::check(&mut report, args).await {
        if args.pre {
            rbac::check(&mut report, &ctx).await;
            webhook::check_pre(&mut report, &ctx).await;
            pod_security::check(&mut report, &ctx).await;
        } else {
            let control_plane = control_plane::check(&mut report, &ctx).await;
            if control_plane.present {
                crds::check(&mut report, &ctx).await;
                certificates::check(&mut report, &ctx).await;
                webhook::check(&mut report, &ctx).await;
                if args.proxy {
                    let version = control_plane.version.as_deref();
                    proxies::check(&mut report, &ctx, args.namespace.as_deref(), version).await;
                }
            }
        }
    }
    report.finish().context("cannot write the report")
}
