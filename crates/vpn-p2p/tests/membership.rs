//! The membership gate on real swarms over 127.0.0.1: strangers are refused, closed and
//! counted, get no record and no stream; unproven connections are bounded; members go on.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{addr_of, loopback, until};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use vpn_p2p::{
    Admission, Keypair, Multiaddr, P2pConfig, P2pNode, PeerId, PeerRefusal as Refusal,
    StreamProtocol,
};

/// Takes the peers it lists; remembers every refusal and every certificate it is shown.
#[derive(Default)]
struct Listed {
    members: Mutex<HashSet<PeerId>>,
    refused: Mutex<Vec<(PeerId, Refusal)>>,
    /// What this node presents (empty: nothing).
    certificate: Vec<u8>,
    shown: Mutex<Vec<(PeerId, Vec<u8>)>>,
}

impl Admission for Listed {
    fn certificate(&self) -> Vec<u8> {
        self.certificate.clone()
    }
    fn admit(&self, peer: &PeerId, certificate: &[u8]) -> Result<(), String> {
        self.shown.lock().unwrap().push((*peer, certificate.to_vec()));
        match self.members.lock().unwrap().contains(peer) {
            true => Ok(()),
            false => Err("not listed".to_owned()),
        }
    }
    fn refused(&self, peer: &PeerId, why: Refusal) {
        self.refused.lock().unwrap().push((*peer, why));
    }
}

impl Listed {
    /// Takes `member` alone.
    fn of(member: PeerId) -> Arc<Self> {
        Arc::new(Self { members: Mutex::new(HashSet::from([member])), ..Self::default() })
    }

    /// The certificates `peer` was judged by (empty: none, as for a peer known by its ID).
    fn shown_by(&self, peer: &PeerId) -> Vec<Vec<u8>> {
        let all = self.shown.lock().unwrap();
        all.iter().filter(|(p, _)| p == peer).map(|(_, c)| c.clone()).collect()
    }

    fn refusals_of(&self, peer: &PeerId) -> Vec<Refusal> {
        let all = self.refused.lock().unwrap();
        all.iter().filter(|(p, _)| p == peer).map(|(_, why)| *why).collect()
    }
}

/// A node that takes the members `members` (none: everyone).
async fn node(
    key: Keypair,
    members: Option<Arc<Listed>>,
    tune: impl FnOnce(&mut P2pConfig),
) -> P2pNode {
    let mut config = P2pConfig::new(key, loopback());
    config.query_timeout = Duration::from_secs(2);
    config.admission = members.map(|m| m as Arc<dyn Admission>);
    tune(&mut config);
    P2pNode::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_refused_closed_and_counted_and_gets_no_record_and_no_stream() {
    const ECHO: StreamProtocol = StreamProtocol::new("/test/echo/1");
    let (b_key, s_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (b_id, s_id) = (b_key.public().to_peer_id(), s_key.public().to_peer_id());
    let listed = Listed::of(b_id);
    let a = node(Keypair::generate_ed25519(), Some(listed.clone()), |_| {}).await;
    let a_id = a.handle().local_peer_id();
    let mut incoming = a.handle().stream_control().accept(ECHO).unwrap();
    let b = node(b_key, None, |_| {}).await;
    b.handle().dial(a_id, vec![addr_of(&a).await]).await.unwrap();
    b.handle()
        .put_record(b"/k/b".to_vec(), b"from b".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();

    // The stranger thinks A is fine; A does not.
    let s = node(s_key, None, |_| {}).await;
    let refused = s.handle().dial(a_id, vec![addr_of(&a).await]).await.unwrap_err();
    assert!(refused.to_string().contains("does not take us"), "{refused}");
    until("A refused the stranger", async || !listed.refusals_of(&s_id).is_empty()).await;
    assert_eq!(listed.refusals_of(&s_id), vec![Refusal::NotMember]);
    until("the stranger is disconnected", async || {
        !a.handle().connected_peers().await.unwrap().contains(&s_id)
    })
    .await;
    assert!(listed.refusals_of(&b_id).is_empty(), "the member was never refused");

    // Nothing of A's reaches it and nothing of its is stored, even while it reconnects.
    let _ = s.handle().dial(a_id, vec![addr_of(&a).await]).await;
    assert!(s.handle().get_records(b"/k/b".to_vec()).await.unwrap().is_empty());
    let _ =
        s.handle().put_record(b"/k/s".to_vec(), b"from s".to_vec(), Duration::from_secs(60)).await;
    let mut control = s.handle().stream_control();
    let opened =
        tokio::time::timeout(Duration::from_secs(5), control.open_stream(a_id, ECHO)).await;
    assert!(!matches!(opened, Ok(Ok(_))), "a stranger opened a stream");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), incoming.next()).await.is_err(),
        "A accepted a stranger's stream"
    );

    // The member goes on: it finds what it stored, and A stored nothing of the stranger's.
    assert!(b.handle().get_records(b"/k/b".to_vec()).await.unwrap().contains(&b"from b".to_vec()));
    assert!(b.handle().get_records(b"/k/s".to_vec()).await.unwrap().is_empty());
    for n in [a, b, s] {
        n.stop().await;
    }
}

/// A bare libp2p swarm that connects and never speaks the membership exchange.
fn silent_swarm() -> libp2p::Swarm<libp2p::swarm::dummy::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

/// Dials `to` from `swarm` and waits for the connection's outcome: whether it was
/// established.
async fn connect(
    swarm: &mut libp2p::Swarm<libp2p::swarm::dummy::Behaviour>,
    to: Multiaddr,
) -> bool {
    connection_to(swarm, to).await.is_some()
}

/// Dials `to` from `swarm`: the connection, once established (none if the dial failed).
async fn connection_to(
    swarm: &mut libp2p::Swarm<libp2p::swarm::dummy::Behaviour>,
    to: Multiaddr,
) -> Option<libp2p::swarm::ConnectionId> {
    swarm.dial(to).unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), swarm.select_next_some()).await {
            Ok(SwarmEvent::ConnectionEstablished { connection_id, .. }) => {
                return Some(connection_id);
            }
            Ok(SwarmEvent::OutgoingConnectionError { .. }) => return None,
            Ok(_) => {}
            Err(_) => panic!("no outcome of the dial"),
        }
    }
}

async fn closed_within(
    swarm: &mut libp2p::Swarm<libp2p::swarm::dummy::Behaviour>,
    limit: Duration,
) -> bool {
    let wait = async {
        loop {
            if let SwarmEvent::ConnectionClosed { .. } = swarm.select_next_some().await {
                return;
            }
        }
    };
    tokio::time::timeout(limit, wait).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_learns_no_certificate_and_a_member_gets_it_once_taken() {
    const A_CERT: &[u8] = b"the certificate of A";
    let (a_key, b_key, s_key) =
        (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let (a_id, b_id, s_id) =
        (a_key.public().to_peer_id(), b_key.public().to_peer_id(), s_key.public().to_peer_id());
    let a_takes = Arc::new(Listed {
        members: Mutex::new(HashSet::from([b_id])),
        certificate: A_CERT.to_vec(),
        ..Listed::default()
    });
    let a = node(a_key, Some(a_takes.clone()), |_| {}).await;
    // The stranger would take A; it is the one that is not taken.
    let s_takes = Listed::of(a_id);
    let s = node(s_key, Some(s_takes.clone()), |_| {}).await;
    assert!(s.handle().dial(a_id, vec![addr_of(&a).await]).await.is_err());
    until("A refused the stranger", async || !a_takes.refusals_of(&s_id).is_empty()).await;
    until("the stranger is disconnected", async || {
        !s.handle().connected_peers().await.unwrap().contains(&a_id)
    })
    .await;
    let shown = a_takes.shown_by(&s_id);
    assert!(!shown.is_empty() && shown.iter().all(Vec::is_empty), "the stranger showed nothing");
    // (A peer known by its ID is asked about with no certificate: empty ones are that.)
    let from_a = s_takes.shown_by(&a_id);
    assert!(from_a.iter().all(Vec::is_empty), "A showed a stranger its certificate");

    // A member dials: A shows it the certificate once it has taken the member's.
    let b_takes = Listed::of(a_id);
    let b = node(b_key, Some(b_takes.clone()), |_| {}).await;
    b.handle().dial(a_id, vec![addr_of(&a).await]).await.unwrap();
    until("A showed B its certificate", async || {
        b_takes.shown_by(&a_id).contains(&A_CERT.to_vec())
    })
    .await;
    a.stop().await;
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_proves_itself_is_closed_after_the_membership_timeout() {
    let listed = Arc::new(Listed::default());
    let a = node(Keypair::generate_ed25519(), Some(listed.clone()), |c| {
        c.membership_timeout = Duration::from_secs(1);
    })
    .await;
    let mut silent = silent_swarm();
    assert!(connect(&mut silent, addr_of(&a).await).await);
    assert!(closed_within(&mut silent, Duration::from_secs(15)).await, "still connected");
    let id = *silent.local_peer_id();
    until("the timeout is counted", async || !listed.refusals_of(&id).is_empty()).await;
    assert!(listed.refusals_of(&id).contains(&Refusal::Timeout));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_connections_are_bounded_and_members_still_get_in() {
    let b_key = Keypair::generate_ed25519();
    let b_id = b_key.public().to_peer_id();
    let listed = Listed::of(b_id);
    let a = node(Keypair::generate_ed25519(), Some(listed.clone()), |c| {
        c.max_unproven = 4;
        c.max_unproven_per_ip = 8;
        c.membership_timeout = Duration::from_secs(60);
    })
    .await;
    let to = addr_of(&a).await;
    // Four strangers hold every unproven slot; the next ones are turned away at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut silent = silent_swarm();
        assert!(connect(&mut silent, to.clone()).await);
        // A has taken it before the next comes (the dialer's side is up a moment before the
        // listener's: a late stranger could otherwise take a held one's slot).
        let me = *silent.local_peer_id();
        let taken = async || a.handle().paths().await.unwrap().iter().any(|p| p.peer == me);
        until("A took the stranger's connection", taken).await;
        held.push(silent);
    }
    for _ in 0..3 {
        let mut late = silent_swarm();
        let closed = !connect(&mut late, to.clone()).await
            || closed_within(&mut late, Duration::from_secs(15)).await;
        assert!(closed, "a stranger beyond the limit stayed connected");
        let id = *late.local_peer_id();
        assert_eq!(listed.refusals_of(&id), vec![Refusal::Crowded]);
    }
    // A member is known by its ID: it takes no unproven slot, gets in and is served.
    let b = node(b_key, None, |_| {}).await;
    b.handle().dial(a.handle().local_peer_id(), vec![to]).await.unwrap();
    b.handle()
        .put_record(b"/k/b".to_vec(), b"from b".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(listed.refusals_of(&b_id).is_empty());
    // The held strangers are still connected, still shut out: their slots stay theirs.
    assert_eq!(held.len(), 4);
    a.stop().await;
    b.stop().await;
}

/// Silent TCP connections to `to` from `from`, `each` of them at once, each opened again
/// as soon as the node closes it; counts every connection made in `made`. Runs until
/// aborted.
fn hold_silent_connections(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    each: usize,
    made: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::AsyncReadExt;
    (0..each)
        .map(|_| {
            let made = made.clone();
            tokio::spawn(async move {
                loop {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind((from, 0).into()).unwrap();
                    let Ok(mut stream) = socket.connect(to).await else { continue };
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Says nothing; waits until the node closes it.
                    let mut buf = [0u8; 256];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_holding_every_handshake_keep_no_member_out() {
    let b_key = Keypair::generate_ed25519();
    let b_id = b_key.public().to_peer_id();
    // B is configured at A (its address is loopback, where B will connect from).
    let configured = vec!["/ip4/127.0.0.1/tcp/9".parse().unwrap()];
    let a = node(Keypair::generate_ed25519(), Some(Listed::of(b_id)), |c| {
        c.max_pending_incoming = 16;
        c.max_pending_per_source = 4;
        c.known_peers = vec![(b_id, configured)];
    })
    .await;
    let to = addr_of(&a).await;
    let port = to
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // One stranger with 200 silent connections from one address, another with 4 from each
    // of 32 addresses: together far more than the node's 16 handshakes.
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut attack = hold_silent_connections([127, 0, 0, 2].into(), target, 200, made.clone());
    for host in 1..=32u8 {
        let from = [127, 0, 1, host].into();
        attack.extend(hold_silent_connections(from, target, 4, made.clone()));
    }
    until("the strangers are at it", async || {
        made.load(std::sync::atomic::Ordering::Relaxed) >= 400
    })
    .await;
    // A member that starts now gets in, at its first dial.
    let b = node(b_key, None, |_| {}).await;
    let dialed = tokio::time::timeout(
        Duration::from_secs(5),
        b.handle().dial(a.handle().local_peer_id(), vec![to]),
    )
    .await;
    for task in &attack {
        task.abort();
    }
    assert!(matches!(dialed, Ok(Ok(()))), "the member was kept out: {dialed:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_being_one_is_cut_off() {
    let b_key = Keypair::generate_ed25519();
    let b_id = b_key.public().to_peer_id();
    let listed = Listed::of(b_id);
    let a = node(Keypair::generate_ed25519(), Some(listed.clone()), |_| {}).await;
    let b = node(b_key, None, |_| {}).await;
    b.handle().dial(a.handle().local_peer_id(), vec![addr_of(&a).await]).await.unwrap();
    assert!(a.handle().connected_peers().await.unwrap().contains(&b_id));
    // Its certificate runs out: A finds out by itself, cuts it off and counts it.
    listed.members.lock().unwrap().clear();
    until("B is cut off", async || !a.handle().connected_peers().await.unwrap().contains(&b_id))
        .await;
    // (It may come back and be refused again.)
    let refusals = listed.refusals_of(&b_id);
    assert!(
        !refusals.is_empty() && refusals.iter().all(|r| *r == Refusal::NotMember),
        "{refusals:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_connection_limit_is_held_to_it_and_keeps_its_first_connections() {
    let a = node(Keypair::generate_ed25519(), None, |c| {
        c.max_connections_per_peer = 2;
        c.membership_timeout = Duration::from_secs(60);
    })
    .await;
    let to = addr_of(&a).await;
    let mut peer = silent_swarm();
    let mut ids = Vec::new();
    let me = *peer.local_peer_id();
    for n in 1..=3 {
        ids.push(connection_to(&mut peer, to.clone()).await.expect("connected"));
        // A has taken it before the next is dialed: its order of the three is the peer's
        // (the dialer's side is up a moment before the listener's).
        let counted = async || {
            let paths = a.handle().paths().await.unwrap();
            paths.iter().any(|p| p.peer == me && p.connections >= n)
        };
        until("A took the connection", counted).await;
    }
    // The third is let in (it could be the peer's new first connection, come to replace
    // dead ones), then closed: the limit holds, and the older ones stay.
    let closed = async {
        loop {
            if let SwarmEvent::ConnectionClosed { connection_id, .. } =
                peer.select_next_some().await
            {
                return connection_id;
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(15), closed).await;
    assert_eq!(closed.expect("a connection over the limit was closed"), ids[2]);
    assert_eq!(peer.network_info().connection_counters().num_established(), 2);
    let paths = a.handle().paths().await.unwrap();
    let ours = paths.iter().find(|p| p.peer == *peer.local_peer_id()).expect("still connected");
    assert_eq!(ours.connections, 2);
    a.stop().await;
}
