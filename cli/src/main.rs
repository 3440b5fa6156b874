//! `weft`: the mesh's command line. One module per subcommand.

mod identity;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Command line for the weft service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mesh identity: create a trust anchor and issuer, inspect certificates.
    #[command(subcommand)]
    Identity(identity::Command),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Identity(cmd) => identity::run(cmd),
    }
}
