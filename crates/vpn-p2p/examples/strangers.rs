//! Strangers at the door: opens many libp2p connections to a node, each from a fresh
//! identity that never proves membership, and reports what became of them. The end-to-end
//! test runs it against a lab node while members keep their traffic going.
//!
//! `cargo run -p vpn-p2p --example strangers -- /ip4/198.18.0.1/tcp/4001 1000 [concurrency]`
//!
//! Prints one line: `attempts N established E closed_by_node C failed F`, where a connection
//! counts as closed by the node when it closed within 30 s of being established.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, tcp, yamux};

/// What became of one stranger's connection.
enum Outcome {
    Failed,
    ClosedByNode,
    StillOpen,
}

async fn stranger(to: Multiaddr) -> Outcome {
    let swarm = libp2p::SwarmBuilder::with_new_identity().with_tokio().with_tcp(
        tcp::Config::default(),
        noise::Config::new,
        yamux::Config::default,
    );
    let Ok(swarm) = swarm else { return Outcome::Failed };
    let Ok(swarm) = swarm.with_behaviour(|_| libp2p::swarm::dummy::Behaviour);
    let mut swarm = swarm
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    if swarm.dial(to).is_err() {
        return Outcome::Failed;
    }
    let run = async {
        let mut established = false;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => established = true,
                SwarmEvent::ConnectionClosed { .. } => return Outcome::ClosedByNode,
                SwarmEvent::OutgoingConnectionError { .. } if !established => {
                    return Outcome::Failed;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run).await.unwrap_or(Outcome::StillOpen)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let to: Multiaddr =
        args.next().ok_or("usage: strangers <multiaddr> <count> [concurrency]")?.parse()?;
    let count: usize = args.next().unwrap_or_else(|| "1000".to_owned()).parse()?;
    let concurrency: usize = args.next().unwrap_or_else(|| "100".to_owned()).parse()?;
    let (mut established, mut closed, mut failed, mut open) = (0, 0, 0, 0);
    let mut running = FuturesUnordered::new();
    let mut started = 0;
    while started < count || !running.is_empty() {
        while started < count && running.len() < concurrency {
            running.push(tokio::spawn(stranger(to.clone())));
            started += 1;
        }
        match running.next().await {
            Some(Ok(Outcome::ClosedByNode)) => {
                established += 1;
                closed += 1;
            }
            Some(Ok(Outcome::StillOpen)) => {
                established += 1;
                open += 1;
            }
            Some(Ok(Outcome::Failed)) | Some(Err(_)) => failed += 1,
            None => {}
        }
    }
    println!(
        "attempts {count} established {established} closed_by_node {closed} still_open {open} failed {failed}"
    );
    Ok(())
}
