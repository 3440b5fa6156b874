//! weft-proxy-init: installs the pod's redirect rules, then exits.
//!
//! Runs as an init container with NET_ADMIN/NET_RAW before any other
//! container of the pod starts, so no app traffic escapes the proxy.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use tracing::info;

use weft_proxy_init::cidr::parse_cidr_list;
use weft_proxy_init::ports::parse_port_list;
use weft_proxy_init::ruleset::ruleset;
use weft_proxy_init::{backend, install, Backend, Mode, RedirectConfig};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum IptablesMode {
    /// Use the backend that already holds rules in this network namespace,
    /// nf_tables if none does.
    Auto,
    Nft,
    Legacy,
}

/// Redirects the pod's inbound and outbound TCP to weft-proxy.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy-init", version)]
struct Args {
    /// UID the proxy runs as; its own connections are never redirected.
    #[arg(long, env = "WEFT_PROXY_INIT_PROXY_UID", default_value_t = 2102)]
    proxy_uid: u32,

    /// Port the proxy accepts inbound (redirected) connections on.
    #[arg(long, env = "WEFT_PROXY_INIT_INBOUND_PORT", default_value_t = 4143)]
    inbound_port: u16,

    /// Port the proxy accepts outbound (redirected) connections on.
    #[arg(long, env = "WEFT_PROXY_INIT_OUTBOUND_PORT", default_value_t = 4140)]
    outbound_port: u16,

    /// Inbound destination ports that reach the app directly, e.g. "4190,4191,22,8000-8100".
    /// The injector always includes the proxy's admin and tap ports.
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_INBOUND_PORTS", default_value = "")]
    skip_inbound_ports: String,

    /// Outbound destination ports that bypass the proxy, e.g. "25,3306".
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_OUTBOUND_PORTS", default_value = "")]
    skip_outbound_ports: String,

    /// Outbound destination networks that bypass the proxy, e.g. "169.254.169.254/32,fd00::/8".
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_OUTBOUND_CIDRS", default_value = "")]
    skip_outbound_cidrs: String,

    /// Which iptables backend to program.
    #[arg(long, env = "WEFT_PROXY_INIT_IPTABLES_MODE", value_enum, default_value_t = IptablesMode::Auto)]
    iptables_mode: IptablesMode,

    /// Also program ip6tables. Skipped (with a log line) when the kernel has
    /// IPv6 disabled, since there is then no IPv6 traffic to redirect.
    #[arg(long, env = "WEFT_PROXY_INIT_IPV6", default_value_t = true, action = clap::ArgAction::Set)]
    ipv6: bool,

    /// Print the rulesets without applying them (needs no privileges).
    #[arg(long)]
    dry_run: bool,
}

fn config(args: &Args) -> Result<RedirectConfig> {
    let cfg = RedirectConfig {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        skip_inbound_ports: parse_port_list(&args.skip_inbound_ports).context("--skip-inbound-ports")?,
        skip_outbound_ports: parse_port_list(&args.skip_outbound_ports).context("--skip-outbound-ports")?,
        skip_outbound_cidrs: parse_cidr_list(&args.skip_outbound_cidrs).context("--skip-outbound-cidrs")?,
    };
    if cfg.inbound_port == 0 || cfg.outbound_port == 0 {
        bail!("--inbound-port and --outbound-port must be non-zero");
    }
    if cfg.inbound_port == cfg.outbound_port {
        bail!("--inbound-port and --outbound-port must differ");
    }
    if cfg.proxy_uid == 0 {
        // Excluding UID 0 would let every root process in the pod bypass the mesh.
        bail!("--proxy-uid must not be 0");
    }
    Ok(cfg)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_PROXY_INIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let args = Args::parse();
    let cfg = config(&args)?;

    if args.dry_run {
        // A dry run assumes a fresh network namespace: it reads nothing, so
        // it works unprivileged and on a machine without iptables.
        for family in install::families(args.ipv6) {
            println!("# {family} (dry run, not applied)");
            print!("{}", ruleset(&cfg, family, &[]));
        }
        return Ok(());
    }

    let mode = match args.iptables_mode {
        IptablesMode::Nft => Mode::Nft,
        IptablesMode::Legacy => Mode::Legacy,
        IptablesMode::Auto => backend::detect().context("detecting the iptables backend")?,
    };
    let backend = Backend::new(mode);
    info!(%mode, "iptables backend");

    for family in install::families(args.ipv6) {
        let _span = tracing::info_span!("apply", %family, %mode).entered();
        let rules = install::apply(&backend, &cfg, family)
            .with_context(|| format!("applying the {family} ruleset with {}", backend.restore_bin(family)))?;
        println!("# {family} ({} applied)", backend.restore_bin(family));
        print!("{rules}");
        info!("rules applied");
    }
    Ok(())
}
