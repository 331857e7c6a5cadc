//! The DHT on real swarms over 127.0.0.1, with a member that answers every lookup with
//! made-up peers at an address that takes connections and never says a word.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{addr_of, loopback, until};
use tokio::net::TcpListener;
use vpn_p2p::{Keypair, Multiaddr, P2pConfig, P2pNode, PeerId};

/// A node that takes everyone; its lookups give up after 2 s (dials after 5 s).
async fn node() -> P2pNode {
    let mut config = P2pConfig::new(Keypair::generate_ed25519(), loopback());
    config.query_timeout = Duration::from_secs(2);
    P2pNode::start(config).await.unwrap()
}

/// An address that takes TCP connections and holds them without a word, until dropped.
async fn tarpit() -> (Multiaddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap(), held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_answering_lookups_with_silent_peers_cannot_keep_a_record_from_the_others() {
    let (silent, tarpit) = tarpit().await;
    let staller = node().await;
    for _ in 0..40 {
        staller.handle().add_addresses(PeerId::random(), vec![silent.clone()]).await.unwrap();
    }
    let (a, m) = (node().await, node().await);
    let ids = [staller.handle().local_peer_id(), m.handle().local_peer_id()];
    a.handle().dial(ids[0], vec![addr_of(&staller).await]).await.unwrap();
    a.handle().dial(ids[1], vec![addr_of(&m).await]).await.unwrap();
    until("A has both members in its routing table", async || {
        let table = a.handle().routing_table().await.unwrap();
        ids.iter().all(|id| table.contains(id))
    })
    .await;

    // The walk meets the staller's made-up peers and cannot end in time, and the publisher
    // is told so (to try again); the members nearest the key have the record all the same.
    let (key, value) = (b"/k/published".to_vec(), b"from a".to_vec());
    let walk = a.handle().put_record(key.clone(), value.clone(), Duration::from_secs(60)).await;
    assert!(walk.is_err(), "the walk cannot end while the staller's peers say nothing");
    a.stop().await;
    let found = m.handle().get_records(key).await.unwrap();
    assert!(found.contains(&value), "M has the record without its publisher: {found:?}");

    for node in [&staller, &m] {
        node.stop().await;
    }
    tarpit.abort();
}
