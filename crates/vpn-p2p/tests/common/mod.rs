//! What the swarm tests share: loopback addresses and waiting for a condition.

// Each test file uses a part of this.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use vpn_p2p::{Multiaddr, P2pNode};

/// Listen on 127.0.0.1, on a port the system picks.
pub fn loopback() -> Vec<Multiaddr> {
    vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]
}

/// Where `node` listens, with its peer ID.
pub async fn addr_of(node: &P2pNode) -> Multiaddr {
    let addr = node.handle().listen_addrs().await.unwrap().remove(0);
    addr.with(libp2p::multiaddr::Protocol::P2p(node.handle().local_peer_id()))
}

/// Waits (at most 15 s) until `done` holds.
pub async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let wait = async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}
