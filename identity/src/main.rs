//! `weft-identity`: the mesh CA. See README.md for flags and set-up.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;
use weft_identity::config::Args;
use weft_identity::kubernetes::TokenReviewer;
use weft_identity::token_file::TokenFile;

fn main() -> Result<()> {
    let args = Args::parse();
    let filter =
        EnvFilter::try_new(&args.log).with_context(|| format!("invalid --log filter {:?}", args.log))?;
    // Colour only on a terminal: `kubectl logs` and log collectors would
    // otherwise carry escape codes on every line.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }

    // Certify is cheap (one signature) and mostly waits on token reviews:
    // two workers are plenty and keep the CA's footprint small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let metrics =
        PrometheusBuilder::new().install_recorder().context("cannot install the metrics recorder")?;
    let settings = args.settings();
    let running = if let Some(path) = &args.token_file {
        let tokens = Arc::new(TokenFile::load(path).context("cannot load --token-file")?);
        tracing::info!(path = %path.display(), tokens = tokens.len(), "validating tokens from a file");
        tokio::spawn(tokens.clone().watch(args.reload_interval));
        weft_identity::start(settings, tokens, Some(metrics)).await
    } else {
        if args.audience.is_empty() {
            anyhow::bail!("--audience must not be empty with --kubernetes");
        }
        let client = kube::Client::try_default()
            .await
            .context("cannot configure the Kubernetes client (not in a cluster and no usable KUBECONFIG?)")?;
        tracing::info!(audience = %args.audience, "validating tokens with Kubernetes TokenReview");
        let reviewer = Arc::new(TokenReviewer::new(client, args.audience.clone()));
        weft_identity::start(settings, reviewer, Some(metrics)).await
    }
    .context("cannot start weft-identity")?;

    shutdown_signal().await?;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
