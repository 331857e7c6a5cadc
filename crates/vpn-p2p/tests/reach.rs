//! Reachability on real swarms over loopback: a node believes AutoNAT that it can be dialed
//! only once members have dialed it, from two sources (127.0.0.1 and ::1).

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{addr_of, until};
use vpn_p2p::{Keypair, P2pConfig, P2pNode, Reachability};

/// A node listening on `addrs`, AutoNAT on (client and server), as by default.
async fn node_at(addrs: &[&str]) -> P2pNode {
    let listen = addrs.iter().map(|a| a.parse().unwrap()).collect();
    let mut config = P2pConfig::new(Keypair::generate_ed25519(), listen);
    config.query_timeout = Duration::from_secs(2);
    P2pNode::start(config).await.unwrap()
}

async fn reach(node: &P2pNode) -> Reachability {
    node.handle().reachability().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_alone_does_not_make_a_node_public_members_dialing_it_do() {
    let (v4, v6) = ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0");
    let t = node_at(&[v4, v6]).await;
    let server = node_at(&[v4]).await;
    let server_id = server.handle().local_peer_id();
    t.handle().dial(server_id, vec![addr_of(&server).await]).await.unwrap();

    // The server dials T back at the address it sees: AutoNAT confirms it, and T holds it.
    until("AutoNAT confirmed an address of T's", async || !reach(&t).await.unvouched.is_empty())
        .await;
    let held = reach(&t).await;
    assert!(held.public.is_empty(), "one member's word made T public: {held:?}");

    // Two members dial T, from two sources (127.0.0.1 and ::1): now T believes it.
    let t_addrs = t.handle().listen_addrs().await.unwrap();
    let mut members = Vec::new();
    for listen in [v4, v6] {
        let member = node_at(&[listen]).await;
        let family = |a: &vpn_p2p::Multiaddr| a.to_string()[..4] == listen[..4];
        let at = t_addrs.iter().filter(|a| family(a)).cloned().collect();
        member.handle().dial(t.handle().local_peer_id(), at).await.unwrap();
        members.push(member);
    }
    until("T is public", async || !reach(&t).await.public.is_empty()).await;
    let public = reach(&t).await;
    assert_eq!(public.public, held.unvouched, "the address AutoNAT confirmed is published");
    assert!(public.unvouched.is_empty());

    for node in members.iter().chain([&t, &server]) {
        node.stop().await;
    }
}
