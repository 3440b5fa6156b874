//! `weft`: the mesh's command line. One module per subcommand.

mod authz;
mod check;
mod demo;
mod identity;
mod inject;
mod kubeconfig;
mod tap;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "Command line for the weft service mesh",
    long_about = "Command line for the weft service mesh: watch live requests (tap), check a cluster and \
                  weft in it (check), mesh Kubernetes manifests (inject), run the whole mesh on this machine (demo) and manage identity material."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch live requests through weft proxies, in Linkerd's tap format.
    Tap(tap::Args),
    /// Check the cluster before installing weft (--pre), weft's control
    /// plane, and the meshed pods' proxies (--proxy), as `linkerd check` does.
    Check(check::Args),
    /// Show which inbound policy applies to each port of a workload's pods
    /// (Servers, HTTPRoutes, AuthorizationPolicies, the default policy), as
    /// `linkerd authz` does.
    Authz(authz::Args),
    /// Add the weft proxy to the workloads in Kubernetes manifests (offline,
    /// as the admission webhook would), printing the result.
    Inject(inject::Args),
    /// Run the whole mesh on this machine: CA, identity, destination, demo
    /// services behind their own proxies, a 90/10 traffic split, load, and a
    /// live summary. Loopback only; no root, no Kubernetes.
    Demo(demo::Args),
    /// A demo workload (started by `weft demo`).
    #[command(hide = true)]
    DemoService(demo::service::Args),
    /// Mesh identity: create a trust anchor and issuer, inspect certificates.
    #[command(subcommand)]
    Identity(identity::Command),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tap(args) => tap::run(args),
        Command::Check(args) => check::run(args),
        Command::Authz(args) => authz::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Demo(args) => demo::run(args),
        Command::DemoService(args) => demo::service::run(args),
        Command::Identity(cmd) => identity::run(cmd),
    }
}
