//! Three nodes with real swarms on 127.0.0.1 and in-memory TUN devices: packets cross both
//! ways between configured peers, and a third node is reached only through its DHT record.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Member, ping, reaches, start};
use vpn_api::{TunPacket, VpnService};
use vpn_p2p::{Keypair, Multiaddr};
use vpn_service::PingTarget;
use vpn_testutil::PacketBuilder;
use vpn_types::{DropReason, GsoInfo, GsoType, PeerRefusal};

fn config(
    address: &str,
    bootstrap: Option<&Multiaddr>,
    peers: &[(&Keypair, &str)],
    allowed: &[&Keypair],
) -> vpn_config::VpnConfig {
    let mut text = common::config_text(address, &["/ip4/127.0.0.1/tcp/0"], bootstrap, allowed);
    for (key, addr) in peers {
        text.push_str(&format!(
            "[[peers]]\npeer_id = \"{}\"\naddresses = [\"{addr}\"]\n",
            key.public().to_peer_id()
        ));
    }
    vpn_config::load_str(&text, []).unwrap()
}

async fn bootstrap_addr(member: &Member) -> Multiaddr {
    let addr = member.node.listen_addrs().await.remove(0);
    addr.with(libp2p::multiaddr::Protocol::P2p(member.node.local_peer_id()))
}

/// Sends `packet` into `from` and waits for it to come out of `to`'s TUN.
async fn crosses(from: &Member, to: &mut Member, packet: Bytes) {
    from.os.inject(packet.clone()).await;
    let out = tokio::time::timeout(Duration::from_secs(20), to.os.next_written())
        .await
        .expect("the packet arrives")
        .unwrap();
    assert_eq!(out.data, packet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_cross_and_a_dht_only_peer_is_reached() {
    let (ka, kb, kc) =
        (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = start(&ka, config("100.64.0.1", None, &[(&kb, "100.64.0.2")], &[&kc])).await;
    let boot = bootstrap_addr(&a).await;
    let mut b = start(&kb, config("100.64.0.2", Some(&boot), &[(&ka, "100.64.0.1")], &[&kc])).await;
    let mut c = start(
        &kc,
        config("100.64.0.3", Some(&boot), &[(&ka, "100.64.0.1"), (&kb, "100.64.0.2")], &[]),
    )
    .await;

    crosses(&a, &mut b, ping("100.64.0.1", "100.64.0.2", 1)).await;
    crosses(&b, &mut a, ping("100.64.0.2", "100.64.0.1", 2)).await;

    // `vpn-node ping`: by address and by peer ID, over the tunnel's PING frames, with the
    // connection it took.
    let report = a.node.ping(PingTarget::Address("100.64.0.2".parse().unwrap()), 2).await.unwrap();
    assert_eq!(report.peer, b.node.local_peer_id());
    assert_eq!(report.rtts.len(), 2);
    assert!(report.rtts.iter().all(Option::is_some), "every PING answered: {report:?}");
    assert!(!report.path.is_empty(), "the connection to B is named");
    let by_id = b.node.ping(PingTarget::Peer(a.node.local_peer_id()), 1).await.unwrap();
    assert_eq!((by_id.address, by_id.rtts.len()), (None, 1));
    let unknown = a.node.ping(PingTarget::Address("100.64.0.99".parse().unwrap()), 1).await;
    assert!(unknown.is_err(), "nobody holds 100.64.0.99");

    // An offload super-packet crosses as one SEGMENTED frame and comes out as the segments
    // the sender's kernel would have made (this receiver's TUN takes no offload).
    let payload: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let tcp = |seq: u32, chunk: &[u8], ident: u32| {
        PacketBuilder::tcp(
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            40000,
            5201,
        )
        .seq(seq)
        .payload(chunk)
        .ident(ident)
        .build()
    };
    let gso = GsoInfo {
        gso_type: GsoType::TcpV4,
        needs_csum: true,
        hdr_len: 40,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: 16,
    };
    a.os.inject_packet(TunPacket { data: Bytes::from(tcp(1, &payload, 9)), gso: Some(gso) }).await;
    for (i, chunk) in payload.chunks(1000).enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(20), b.os.next_written())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.data, tcp(1 + 1000 * i as u32, chunk, 9 + i as u32), "segment {i}");
    }

    // C is in nobody's configuration: A finds it only through C's signed record.
    let discovery = c.node.discovery().await.unwrap();
    let published = tokio::time::timeout(Duration::from_secs(20), async {
        while discovery.sync_to_dht().await.is_err() {
            // Not connected to the bootstrap peer yet.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(published.is_ok(), "C's record was stored");
    let found =
        a.node.discovery().await.unwrap().peer_for_ip("100.64.0.3".parse().unwrap()).await.unwrap();
    assert_eq!(found, c.node.local_peer_id());
    crosses(&a, &mut c, ping("100.64.0.1", "100.64.0.3", 3)).await;
    crosses(&c, &mut a, ping("100.64.0.3", "100.64.0.1", 4)).await;

    // A packet from C claiming B's address is dropped by A as spoofed.
    let spoofs_before = a.node.metrics().dropped(DropReason::Spoofed);
    c.os.inject(ping("100.64.0.2", "100.64.0.1", 5)).await;
    // The next honest packet on the same stream arrives after the spoofed one was judged.
    crosses(&c, &mut a, ping("100.64.0.3", "100.64.0.1", 6)).await;
    assert_eq!(a.node.metrics().dropped(DropReason::Spoofed), spoofs_before + 1);

    // The control socket answers `status` and `peers` for a running node.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock");
    let a_node = Arc::new(a.node);
    let server = vpn_service::serve_control(&socket, a_node.clone(), None).await.unwrap();
    let status = vpn_service::query_control(&socket, "status").await.unwrap();
    assert!(status.contains(&format!("\"peer_id\":\"{}\"", a_node.local_peer_id())), "{status}");
    assert!(status.contains("\"addresses\":[\"100.64.0.1/32\"]"), "{status}");
    assert!(status.contains("\"spoofed\":1"), "{status}");
    let peers = vpn_service::query_control(&socket, "peers").await.unwrap();
    assert!(peers.contains(&b.node.local_peer_id().to_string()), "{peers}");
    assert!(peers.contains(&c.node.local_peer_id().to_string()), "{peers}");
    assert!(vpn_service::query_control(&socket, "nonsense").await.unwrap().contains("error"));
    let reload = vpn_service::query_control(&socket, "reload").await.unwrap();
    assert!(reload.contains("cannot reload"), "no reloader was given: {reload}");
    server.abort();
    let _ = server.await;
    assert!(!socket.exists(), "the socket file goes with the server");
    let a = Member { node: Arc::into_inner(a_node).unwrap(), os: a.os };

    let m = a.node.metrics();
    assert!(m.packets_sent >= 2 && m.packets_received >= 3, "{m:?}");
    for member in [&a, &b, &c] {
        member.node.stop().await.unwrap();
        member.node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_by_reload_is_reached_and_established_flows_go_on() {
    let (ka, kb, kd) =
        (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut a = start(&ka, config("100.64.0.1", None, &[(&kb, "100.64.0.2")], &[])).await;
    let boot = bootstrap_addr(&a).await;
    let mut b = start(&kb, config("100.64.0.2", Some(&boot), &[(&ka, "100.64.0.1")], &[])).await;
    let mut d = start(&kd, config("100.64.0.4", Some(&boot), &[(&ka, "100.64.0.1")], &[])).await;
    crosses(&a, &mut b, ping("100.64.0.1", "100.64.0.2", 1)).await;
    crosses(&b, &mut a, ping("100.64.0.2", "100.64.0.1", 2)).await;

    // A does not know D yet: D is refused as no member, and its connection closed.
    let not_member = |a: &Member| a.node.metrics().refused(PeerRefusal::NotMember);
    d.os.inject(ping("100.64.0.4", "100.64.0.1", 3)).await;
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while not_member(&a) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "A refused D");
    assert!(a.os.try_written().is_none());

    // A change only a restart applies is refused, naming the section; nothing changes.
    let mut moved = config("100.64.0.1", None, &[(&kb, "100.64.0.2"), (&kd, "100.64.0.4")], &[]);
    moved.worker.max_workers = 8;
    let err = a.node.reload(moved).await.unwrap_err().to_string();
    assert!(err.contains("worker") && err.contains("restart"), "{err}");

    // Reloaded with D among its peers, A takes D's packets and reaches D; the flow to B
    // goes on over the stream it had.
    let streams_before = a.node.metrics().active_streams;
    let added = config("100.64.0.1", None, &[(&kb, "100.64.0.2"), (&kd, "100.64.0.4")], &[]);
    assert_eq!(a.node.reload(added).await.unwrap(), vec!["peers"]);
    reaches(&d, &mut a, ping("100.64.0.4", "100.64.0.1", 4)).await;
    crosses(&a, &mut d, ping("100.64.0.1", "100.64.0.4", 5)).await;
    crosses(&a, &mut b, ping("100.64.0.1", "100.64.0.2", 6)).await;
    let health = a.node.stream_health();
    let to_b = health.peers.iter().find(|p| p.peer == b.node.local_peer_id()).unwrap();
    assert_eq!(to_b.streams_marked_unhealthy, 0);
    assert!(a.node.metrics().active_streams > streams_before, "a stream to D was added");

    // Reloaded without D again, A cuts D off: its connections close, and when D comes
    // back (its next packet dials again) it is refused as no member; B's flow goes on.
    let removed = config("100.64.0.1", None, &[(&kb, "100.64.0.2")], &[]);
    let refused_before = not_member(&a);
    assert_eq!(a.node.reload(removed).await.unwrap(), vec!["peers"]);
    let mut seq = 7;
    let cut = tokio::time::timeout(Duration::from_secs(20), async {
        while not_member(&a) == refused_before {
            d.os.inject(ping("100.64.0.4", "100.64.0.1", seq)).await;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(cut.is_ok(), "A refused D once it was removed");
    // A packet D sent on its stream before A closed it may still be read: it is dropped as
    // `not_member` (counted), never delivered. A copy of ping 4 that `reaches` sent again
    // while D was a member may come late; what D sent once removed must not.
    let after_removal: Vec<Bytes> = (7..seq).map(|s| ping("100.64.0.4", "100.64.0.1", s)).collect();
    while let Some(out) = a.os.try_written() {
        assert!(
            !after_removal.contains(&out.data),
            "a packet of D's reached A's TUN after removal"
        );
    }
    crosses(&a, &mut b, ping("100.64.0.1", "100.64.0.2", 99)).await;
    for member in [&a, &b, &d] {
        member.node.stop().await.unwrap();
    }
}
