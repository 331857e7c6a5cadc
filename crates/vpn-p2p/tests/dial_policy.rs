//! The dial policy on real swarms over 127.0.0.1: a member that announces (identify) and
//! answers lookups (Kademlia) with loopback, private, link-local and overlay addresses
//! makes the node dial none of them; each is counted instead. (That a refused address
//! never reaches the transport underneath is the transport's unit test.)

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::until;
use vpn_p2p::{DialRefusal, Keypair, Multiaddr, P2pConfig, P2pNode, PathObserver, PeerId};

/// Counts what the node would not dial.
#[derive(Default)]
struct Refusals(Mutex<Vec<DialRefusal>>);

impl PathObserver for Refusals {
    fn paths(&self, _direct: usize, _relayed: usize) {}
    fn hole_punch(&self, _peer: &PeerId, _succeeded: bool) {}
    fn went_direct(&self, _peer: &PeerId) {}
    fn dial_refused(&self, why: DialRefusal) {
        self.0.lock().unwrap().push(why);
    }
}

impl Refusals {
    fn count(&self, why: DialRefusal) -> usize {
        self.0.lock().unwrap().iter().filter(|r| **r == why).count()
    }
}

/// A node listening on 127.0.0.1 that takes everyone, announcing `external` as its own.
async fn node(external: Vec<Multiaddr>, observer: Option<Arc<Refusals>>) -> P2pNode {
    let mut config =
        P2pConfig::new(Keypair::generate_ed25519(), vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
    config.query_timeout = Duration::from_secs(2);
    config.overlay = vec!["100.64.0.0/10".parse().unwrap()];
    config.external = external;
    config.observer = observer.map(|o| o as Arc<dyn PathObserver>);
    P2pNode::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_a_member_hands_out_for_hosts_it_should_not_reach_are_not_dialed() {
    let bad = |host: &str| -> Multiaddr { format!("/ip4/{host}/tcp/4001").parse().unwrap() };
    let claimed = vec![bad("127.0.0.9"), bad("10.77.0.1"), bad("169.254.0.9"), bad("100.64.0.9")];
    // The member announces them as its own (identify) and as a made-up peer's (Kademlia:
    // addresses added so are not the operator's, and its own policy keeps it from dialing
    // them too).
    let member = node(claimed.clone(), None).await;
    let made_up = PeerId::random();
    member.handle().add_addresses(made_up, claimed).await.unwrap();
    let member_id = member.handle().local_peer_id();

    let refusals = Arc::new(Refusals::default());
    let a = node(Vec::new(), Some(refusals.clone())).await;
    let at = member.handle().listen_addrs().await.unwrap();
    a.handle().dial(member_id, at).await.unwrap();
    let all =
        [DialRefusal::Loopback, DialRefusal::Private, DialRefusal::LinkLocal, DialRefusal::Overlay];
    // Identify brings the member's claims; none is kept.
    until("the member's claims are refused", async || {
        all.iter().all(|why| refusals.count(*why) >= 1)
    })
    .await;
    // A lookup of the made-up peer: the member answers with what it holds of those
    // addresses, which the lookup would dial to go on; A dials none.
    let before = refusals.0.lock().unwrap().len();
    let _ = a.handle().dial(made_up, Vec::new()).await;
    until("the lookup's answers are refused", async || refusals.0.lock().unwrap().len() > before)
        .await;
    assert!(refusals.0.lock().unwrap().iter().all(|why| all.contains(why)));
    assert!(!a.handle().connected_peers().await.unwrap().contains(&made_up));
    // The member itself is still reached at its real address.
    assert!(a.handle().connected_peers().await.unwrap().contains(&member_id));
    a.stop().await;
    member.stop().await;
}
