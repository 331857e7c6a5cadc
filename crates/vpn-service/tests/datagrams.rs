//! The datagram data path on real swarms over 127.0.0.1 with in-memory TUN devices: two
//! members reached over TCP open a QUIC connection beside it and their packets cross as
//! datagrams; a stranger's QUIC connection, though its handshake proves a peer ID, gets no
//! datagram read; a member a reload removes is cut off on the datagram path too; a packet
//! too big for the path gets an ICMP error back, or takes a stream where none may be sent.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Member, crosses_as_datagram, ping, start};
use libp2p::Transport;
use libp2p::core::Endpoint;
use libp2p::core::transport::{DialOpts, PortUse};
use vpn_api::VpnService;
use vpn_p2p::{Keypair, Multiaddr};
use vpn_types::DropReason;

fn config(address: &str, bootstrap: Option<&Multiaddr>, members: &[&Keypair]) -> String {
    let listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"];
    common::config_text(address, &listen, bootstrap, members)
}

async fn tcp_bootstrap(member: &Member) -> Multiaddr {
    let addrs = member.node.listen_addrs().await;
    let tcp = addrs.into_iter().find(|a| a.to_string().contains("/tcp/")).unwrap();
    tcp.with(libp2p::multiaddr::Protocol::P2p(member.node.local_peer_id()))
}

async fn quic_addr(member: &Member) -> Multiaddr {
    let addrs = member.node.listen_addrs().await;
    addrs.into_iter().find(|a| a.to_string().contains("/quic-v1")).unwrap()
}

/// Two members, 100.64.0.1 and 100.64.0.2; B dials A over TCP.
async fn two_members() -> (Member, Member) {
    two_members_with("", "").await
}

/// [`two_members`], with `network` added to both configurations' `[network]` table and
/// `tables` after it.
async fn two_members_with(network: &str, tables: &str) -> (Member, Member) {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let with =
        |text: String| text.replace("[network]\n", &format!("[network]\n{network}\n")) + tables;
    let text = with(config("100.64.0.1", None, &[&kb]));
    let a = start(&ka, vpn_config::load_str(&text, []).unwrap()).await;
    let boot = tcp_bootstrap(&a).await;
    let text = with(config("100.64.0.2", Some(&boot), &[&ka]));
    let b = start(&kb, vpn_config::load_str(&text, []).unwrap()).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_send_datagrams_and_a_strangers_are_never_read() {
    let (mut a, mut b) = two_members().await;

    // B dialed A over TCP; A's identify told it A's QUIC address, and the datagram path
    // comes up beside the TCP connection, both ways.
    crosses_as_datagram(&b, &mut a, "100.64.0.2", "100.64.0.1").await;
    crosses_as_datagram(&a, &mut b, "100.64.0.1", "100.64.0.2").await;
    assert!(a.node.metrics().datagrams_sent > 0 && b.node.metrics().datagrams_sent > 0);

    // A stranger completes a QUIC handshake with A (its peer ID proven) and sends packets
    // as datagrams at once: A never reads them, since the stranger is never admitted.
    let stranger = Keypair::generate_ed25519();
    let links = vpn_quic::Links::new();
    let mut transport =
        vpn_quic::QuicTransport::new(&stranger, &vpn_quic::QuicConfig::default(), links.clone())
            .unwrap();
    let opts = DialOpts { role: Endpoint::Dialer, port_use: PortUse::New };
    // A dial with no listener leaves from a client endpoint of its own: nothing to drive.
    let dial = transport.dial(quic_addr(&a).await, opts).unwrap();
    let (peer, _muxer) = dial.await.unwrap();
    assert_eq!(peer, a.node.local_peer_id());
    let link = links.of(&peer).pop().unwrap();
    let received = a.node.metrics().packets_received;
    for seq in 0..20 {
        link.send(ping("100.64.0.9", "100.64.0.1", seq)).await.unwrap();
    }
    // A member's packet sent after them comes through; none of the stranger's did.
    crosses_as_datagram(&b, &mut a, "100.64.0.2", "100.64.0.1").await;
    assert_eq!(a.node.metrics().packets_received, received + 1);
    assert!(a.os.try_written().is_none());

    // A reload removes B: what B still sends as datagrams is dropped as not_member, and B is
    // cut off.
    let text = config("100.64.0.1", None, &[]);
    a.node.reload(vpn_config::load_str(&text, []).unwrap()).await.unwrap();
    let dropped = |m: &Member| m.node.metrics().dropped(DropReason::NotMember);
    let before = a.node.metrics().packets_received;
    let cut = async {
        for seq in 0.. {
            b.os.inject(ping("100.64.0.2", "100.64.0.1", 500 + seq)).await;
            // A drops what arrives; B, refused by A, soon sends nothing (its breaker opens).
            let b_dropped: u64 = b.node.metrics().drops.iter().sum();
            if dropped(&a) > 0 || b_dropped > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), cut).await.is_err() {
        panic!("B is not cut off: A {:?}\nB {:?}", a.node.metrics(), b.node.metrics());
    }
    assert_eq!(a.node.metrics().packets_received, before, "nothing of B's got in after the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_too_big_for_the_path_is_answered_or_takes_a_stream() {
    use vpn_testutil::PacketBuilder;
    let (mut a, mut b) = two_members().await;
    crosses_as_datagram(&a, &mut b, "100.64.0.1", "100.64.0.2").await;

    // 1500 bytes do not fit a datagram (at most 1452 on any path): with "don't fragment",
    // A's own stack gets "fragmentation needed" from B's address, carrying the path's MTU.
    let (src, dst) = ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap());
    let payload = vec![7u8; 1500 - 28];
    let big = PacketBuilder::udp(src, dst, 4000, 4001).payload(&payload).dont_fragment().build();
    let too_large = a.node.metrics().dropped(DropReason::TooLarge);
    a.os.inject(bytes::Bytes::from(big.clone())).await;
    let reply = tokio::time::timeout(Duration::from_secs(5), a.os.next_written())
        .await
        .expect("an ICMP error came back")
        .unwrap()
        .data;
    assert_eq!(&reply[12..16], &[100, 64, 0, 2], "from the destination");
    assert_eq!(&reply[16..20], &[100, 64, 0, 1], "to the sender");
    assert_eq!(&reply[20..22], &[3, 4], "fragmentation needed");
    let mtu = usize::from(u16::from_be_bytes([reply[26], reply[27]]));
    assert!((1280..1500).contains(&mtu), "the path's MTU: {mtu}");
    assert_eq!(&reply[28..48], &big[..20], "quoting the packet");
    assert_eq!(a.node.metrics().dropped(DropReason::TooLarge), too_large + 1);
    assert!(b.os.try_written().is_none(), "nothing of it reached B");

    // Without "don't fragment" no error may be sent: it crosses on a stream, whole.
    let may_fragment = PacketBuilder::udp(src, dst, 4000, 4001).payload(&payload).build();
    a.os.inject(bytes::Bytes::from(may_fragment.clone())).await;
    let out = tokio::time::timeout(Duration::from_secs(5), b.os.next_written())
        .await
        .expect("the packet crossed")
        .unwrap()
        .data;
    assert_eq!(out.as_ref(), may_fragment.as_slice());
    // And the path stays: the next ping crosses as a datagram again.
    crosses_as_datagram(&a, &mut b, "100.64.0.1", "100.64.0.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_carrying_datagrams_outlives_the_idle_timeout() {
    // Connections with no open stream close after 1 s of it here, and a stream that carried
    // no packet for 1 s is closed; datagrams open no stream.
    let (a, mut b) = two_members_with(
        "idle_connection_timeout = \"1s\"",
        "[stream_pool]\nstream_idle_timeout = \"1s\"\n[relay]\nreservations = 0\n",
    )
    .await;
    crosses_as_datagram(&a, &mut b, "100.64.0.1", "100.64.0.2").await;
    let link = a.node.datagram_link(&b.node.local_peer_id()).await.unwrap();

    // A ping every 100 ms for fifteen idle timeouts: the connection carrying them stays
    // open, and they all cross as datagrams.
    let before = b.node.metrics();
    const PINGS: u16 = 150;
    let mut crossed = 0u64;
    for seq in 0..PINGS {
        a.os.inject(ping("100.64.0.1", "100.64.0.2", 1000 + seq)).await;
        let out = tokio::time::timeout(Duration::from_secs(1), b.os.next_written()).await;
        crossed += u64::from(out.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = b.node.metrics();
    let datagrams = after.datagrams_received - before.datagrams_received;
    let streamed = (after.packets_received - before.packets_received) - datagrams;
    assert_eq!(streamed, 0, "no ping took a stream");
    assert_eq!(datagrams, crossed);
    assert!(crossed >= u64::from(PINGS) * 9 / 10, "{crossed} of {PINGS} pings crossed");
    assert!(link.is_open(), "the connection that carried the first ping carried them all");
}
