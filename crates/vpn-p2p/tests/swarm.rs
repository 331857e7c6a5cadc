//! Two and three real swarms on 127.0.0.1.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{addr_of, loopback};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use vpn_p2p::{Keypair, Multiaddr, P2pConfig, P2pNode, StreamProtocol};

async fn node(bootstrap: Vec<Multiaddr>) -> P2pNode {
    let mut config = P2pConfig::new(Keypair::generate_ed25519(), loopback());
    config.bootstrap = bootstrap;
    P2pNode::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_put_on_one_node_are_found_from_another() {
    let a = node(Vec::new()).await;
    let b = node(vec![addr_of(&a).await]).await;
    let c = node(vec![addr_of(&a).await]).await;
    // B is connected to A once its dial went through.
    b.handle().dial(a.handle().local_peer_id(), Vec::new()).await.unwrap();
    c.handle().dial(a.handle().local_peer_id(), Vec::new()).await.unwrap();
    b.handle()
        .put_record(b"/test/key".to_vec(), b"value".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    let found = c.handle().get_records(b"/test/key".to_vec()).await.unwrap();
    assert!(found.iter().any(|v| v == b"value"), "{found:?}");
    assert!(c.handle().get_records(b"/test/none".to_vec()).await.unwrap().is_empty());
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_filter_decides_what_is_stored() {
    let mut config = P2pConfig::new(Keypair::generate_ed25519(), loopback());
    config.record_filter =
        Some(Arc::new(|_key: &[u8], value: &[u8], _old: Option<&[u8]>| value != b"bad"));
    let a = P2pNode::start(config).await.unwrap();
    let b = node(vec![addr_of(&a).await]).await;
    b.handle().dial(a.handle().local_peer_id(), Vec::new()).await.unwrap();
    b.handle()
        .put_record(b"/k/good".to_vec(), b"good".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    // A acknowledges the put (Kademlia always does) but does not store what its filter refuses.
    let _ =
        b.handle().put_record(b"/k/bad".to_vec(), b"bad".to_vec(), Duration::from_secs(60)).await;
    let c = node(vec![addr_of(&a).await]).await;
    c.handle().dial(a.handle().local_peer_id(), Vec::new()).await.unwrap();
    // With the publisher gone, only what A stored can be found.
    b.stop().await;
    assert_eq!(c.handle().get_records(b"/k/good".to_vec()).await.unwrap(), vec![b"good".to_vec()]);
    assert!(c.handle().get_records(b"/k/bad".to_vec()).await.unwrap().is_empty());
    a.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_streams_cross_between_nodes() {
    const PROTOCOL: StreamProtocol = StreamProtocol::new("/test/echo/1");
    let a = node(Vec::new()).await;
    let mut incoming = a.handle().stream_control().accept(PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_peer, mut stream)) = incoming.next().await {
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).await.unwrap();
            stream.write_all(&buf).await.unwrap();
            stream.close().await.unwrap();
        }
    });
    let b = node(vec![addr_of(&a).await]).await;
    let mut stream = b
        .handle()
        .stream_control()
        .open_stream(a.handle().local_peer_id(), PROTOCOL)
        .await
        .unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello");
    assert_eq!(b.handle().connected_peers().await.unwrap(), vec![a.handle().local_peer_id()]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_bad_listen_address_is_a_startup_error() {
    let config = P2pConfig::new(
        Keypair::generate_ed25519(),
        vec!["/ip4/198.18.255.254/tcp/0".parse().unwrap()],
    );
    let err =
        P2pNode::start(config).await.err().expect("cannot listen on an address this host lacks");
    assert!(err.to_string().contains("listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_a_frozen_peer_is_closed() {
    let fast_pings = |mut config: P2pConfig| {
        config.ping_interval = Duration::from_millis(200);
        config.ping_timeout = Duration::from_millis(500);
        config
    };
    let a = P2pNode::start(fast_pings(P2pConfig::new(Keypair::generate_ed25519(), loopback())))
        .await
        .unwrap();
    let a_addr = addr_of(&a).await;
    let a_id = a.handle().local_peer_id();
    // B runs on a runtime of its own, on a thread the test can freeze whole.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (freeze_tx, freeze_rx) = std::sync::mpsc::channel::<()>();
    let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
    let b_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut config = fast_pings(P2pConfig::new(Keypair::generate_ed25519(), loopback()));
            config.bootstrap = vec![a_addr];
            let b = P2pNode::start(config).await.unwrap();
            b.handle().dial(a_id, Vec::new()).await.unwrap();
            ready_tx.send(b.handle().local_peer_id()).unwrap();
            // Let the runtime run until told to freeze, then block it: nothing of B runs.
            while freeze_rx.try_recv().is_err() {
                tokio::task::yield_now().await;
            }
            thaw_rx.recv().unwrap();
            b.stop().await;
        });
    });
    let b_id = ready_rx.recv().unwrap();
    // B's dial is done; A learns of the connection on its own event loop a moment later.
    let mut checks = 0;
    while !a.handle().connected_peers().await.unwrap().contains(&b_id) {
        checks += 1;
        assert!(checks < 1800, "A never saw B's connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    freeze_tx.send(()).unwrap();
    // A's pings go unanswered: A closes the connection. (The first failed ping is let
    // pass by libp2p, and the next one waits out a stream negotiation; the idle timeout,
    // 120 s, is far beyond the bound here.)
    let mut checks = 0;
    while a.handle().connected_peers().await.unwrap().contains(&b_id) {
        checks += 1;
        assert!(checks < 1800, "A kept the connection to the frozen peer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    thaw_tx.send(()).unwrap();
    b_thread.join().unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_its_caller_gave_up_on_does_not_hold_back_the_next() {
    // An address that accepts connections and never answers: a dial there hangs.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr: Multiaddr =
        format!("/ip4/127.0.0.1/tcp/{}", stall.local_addr().unwrap().port()).parse().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stall.accept().await {
            held.push(socket);
        }
    });
    let a = node(Vec::new()).await;
    let a_id = a.handle().local_peer_id();
    let mut config = P2pConfig::new(Keypair::generate_ed25519(), loopback());
    // Long enough that waiting for the stuck dial to end would show.
    config.dial_timeout = Duration::from_secs(60);
    let b = P2pNode::start(config).await.unwrap();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), b.handle().dial(a_id, vec![stall_addr]));
    assert!(gave_up.await.is_err(), "the dial to a silent address cannot have succeeded");
    // A is found at its real address (as after a restart on a new port): that dial goes
    // ahead although the first one still hangs.
    let real = a.handle().listen_addrs().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(30), b.handle().dial(a_id, real)).await;
    assert!(matches!(next, Ok(Ok(()))), "the next dial waited for the stuck one: {next:?}");
    assert!(b.handle().connected_peers().await.unwrap().contains(&a_id));
    held.abort();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reachable_both_ways_is_dialed_over_the_preferred_transport() {
    let both: Vec<Multiaddr> = vec![
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    ];
    let a = P2pNode::start(P2pConfig::new(Keypair::generate_ed25519(), both)).await.unwrap();
    let a_id = a.handle().local_peer_id();
    let a_addrs = a.handle().listen_addrs().await.unwrap();
    assert_eq!(a_addrs.len(), 2, "{a_addrs:?}");
    for preferred in [vpn_config::Transport::Quic, vpn_config::Transport::Tcp] {
        let mut config = P2pConfig::new(Keypair::generate_ed25519(), loopback());
        config.transport = preferred;
        let b = P2pNode::start(config).await.unwrap();
        b.handle().dial(a_id, a_addrs.clone()).await.unwrap();
        let conns = b.handle().connections().await.unwrap();
        let kinds: Vec<_> = conns.iter().map(|(_, addr)| vpn_p2p::kind_of(addr)).collect();
        assert_eq!(kinds, vec![Some(preferred)], "{conns:?}");
        b.stop().await;
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_network_takes_only_nodes_with_its_key() {
    let key = vpn_p2p::PreSharedKey::new([7; 32]);
    let private = |psk: Option<vpn_p2p::PreSharedKey>| {
        let mut config = P2pConfig::new(Keypair::generate_ed25519(), loopback());
        config.psk = psk;
        config.dial_timeout = Duration::from_secs(2);
        P2pNode::start(config)
    };
    let a = private(Some(key)).await.unwrap();
    let b = private(Some(key)).await.unwrap();
    let a_id = a.handle().local_peer_id();
    b.handle().dial(a_id, vec![addr_of(&a).await]).await.unwrap();
    b.handle()
        .put_record(b"/k/private".to_vec(), b"member".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    // Without the key, or with another one, the handshake fails before Noise.
    let other = vpn_p2p::PreSharedKey::new([8; 32]);
    for psk in [None, Some(other)] {
        let outsider = private(psk).await.unwrap();
        let dialed = outsider.handle().dial(a_id, vec![addr_of(&a).await]).await;
        assert!(dialed.is_err(), "a node without the key connected");
        outsider.stop().await;
    }
    // The members go on.
    let found = b.handle().get_records(b"/k/private".to_vec()).await.unwrap();
    assert!(found.iter().any(|v| v == b"member"));
    a.stop().await;
    b.stop().await;
}
