//! `kuma-dp`: the sidecar identity agent. Only `kuma-dp version` exists so far.

use clap::{Parser, Subcommand};

/// The sidecar identity agent of the mesh.
#[derive(Debug, Parser)]
#[command(name = "kuma-dp", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version of kuma-dp.
    Version,
}

fn main() {
    match Cli::parse().command {
        Command::Version => println!("kuma-dp {}", env!("CARGO_PKG_VERSION")),
    }
}
