//! `vpn-node`: the command-line program of a vpn-node peer.
//!
//! The packet library and wire protocol are in place; the node itself (network, discovery,
//! TUN) is being assembled, so `up` reports that it is not available yet.

use clap::{Parser, Subcommand};

/// A peer-to-peer mesh VPN over libp2p.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node in the foreground.
    Up,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up => anyhow::bail!(
            "this build has the packet library and wire protocol only; the node (network, discovery, TUN) is not assembled yet"
        ),
    }
}
