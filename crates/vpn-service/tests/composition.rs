//! A node composed through the same builder the program uses, from in-memory parts and
//! mocks only: no swarm, no kernel device, no network.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use vpn_api::{PeerId, TunDevice, VpnService, VpnStream};
use vpn_metrics::AtomicMetrics;
use vpn_p2p::Keypair;
use vpn_service::VpnNode;
use vpn_testutil::mocks::MockPeerDiscovery;
use vpn_testutil::{MemoryStreams, MemoryTun, PacketBuilder, memory_stream_pair};
use vpn_types::DropReason;
use vpn_wire::{Frame, FrameDecoder};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Discovery that knows one peer, holding 100.64.0.2.
fn discovery(peer: PeerId) -> MockPeerDiscovery {
    let mut discovery = MockPeerDiscovery::new();
    discovery
        .expect_peer_for_ip()
        .withf(|ip| *ip == "100.64.0.2".parse::<IpAddr>().unwrap())
        .returning(move |_| Ok(peer));
    discovery.expect_holds_now().returning(move |from, src| {
        let owner = src == "100.64.0.2".parse::<IpAddr>().unwrap();
        Some(owner && *from == peer)
    });
    discovery.expect_sync_to_dht().returning(|| Ok(()));
    discovery
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Frame {
    let (mut decoder, mut buf) = (FrameDecoder::new(), BytesMut::new());
    loop {
        if let Some(frame) = decoder.decode(&mut buf).unwrap() {
            return frame;
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "the stream ended");
    }
}

#[tokio::test]
async fn a_node_of_in_memory_parts_carries_packets_both_ways_and_stop_leaves_nothing_running() {
    let tasks_before = Handle::current().metrics().num_alive_tasks();
    let key = Keypair::generate_ed25519();
    let (local, peer) = (key.public().to_peer_id(), PeerId::random());
    let config = vpn_config::load_str("[node]\naddress = \"100.64.0.1/10\"\n", []).unwrap();
    let (tun, mut os) = MemoryTun::new("mem", 1400, 64);
    let tun: Arc<dyn TunDevice> = Arc::new(tun);
    let tun_alive = Arc::downgrade(&tun);
    let (streams, mut opened) = MemoryStreams::new(local, 1 << 16);
    let (inbound, inbound_rx) = mpsc::channel::<Box<dyn VpnStream>>(4);
    let metrics = Arc::new(AtomicMetrics::new());
    let node = VpnNode::builder(config, key)
        .metrics(metrics.clone())
        .tun(tun)
        .discovery(Arc::new(discovery(peer)))
        .stream_service(Arc::new(streams))
        .inbound_streams(inbound_rx)
        .build();
    node.start().await.unwrap();
    assert!(node.listen_addrs().await.is_empty(), "no swarm was started");
    assert_eq!(node.tun_name().await.as_deref(), Some("mem"));

    // Out: a packet the kernel routes into the tunnel goes to the owner of its destination.
    let out = PacketBuilder::udp(ip("100.64.0.1"), ip("100.64.0.2"), 5000, 53).build();
    os.inject(out.clone()).await;
    let mut far = opened.recv().await.unwrap();
    assert_eq!(far.peer, peer);
    assert_eq!(read_frame(&mut far.stream).await, Frame::Packet(out.into()));

    // In: the peer's packets pass the receiver checks and reach the TUN; a source the peer
    // does not hold is dropped as spoofed.
    let (ours, mut theirs) = memory_stream_pair(local, peer, 1 << 16);
    inbound.send(Box::new(ours)).await.unwrap();
    let spoofed = PacketBuilder::udp(ip("100.64.0.3"), ip("100.64.0.1"), 53, 5000).build();
    let back = PacketBuilder::udp(ip("100.64.0.2"), ip("100.64.0.1"), 53, 5000).build();
    let mut frames = BytesMut::new();
    vpn_wire::encode_packet(&mut frames, &spoofed).unwrap();
    vpn_wire::encode_packet(&mut frames, &back).unwrap();
    theirs.write_all(&frames).await.unwrap();
    assert_eq!(os.next_written().await.unwrap().data, back);
    let snapshot = node.metrics();
    assert_eq!(snapshot.drops[DropReason::Spoofed.index()], 1);
    assert_eq!((snapshot.packets_sent, snapshot.packets_received), (1, 1));

    // Stop, with the inbound stream still open: every task the node spawned (its reader
    // too) has ended, and nothing holds the TUN device any more.
    node.stop().await.unwrap();
    assert_eq!(Handle::current().metrics().num_alive_tasks(), tasks_before);
    assert!(tun_alive.upgrade().is_none(), "the TUN device was dropped");
    assert!(os.next_written().await.is_none());
    // The streams are let go: the outbound one closed, the inbound one ended.
    let mut rest = Vec::new();
    far.stream.read_to_end(&mut rest).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(theirs.read(&mut byte).await, Ok(0) | Err(_)), "the inbound stream ended");
}

#[tokio::test]
async fn a_node_given_its_own_tun_device_starts_once() {
    let key = Keypair::generate_ed25519();
    let local = key.public().to_peer_id();
    let config = vpn_config::load_str("[node]\naddress = \"100.64.0.1/10\"\n", []).unwrap();
    let (tun, _os) = MemoryTun::new("mem", 1400, 64);
    let (streams, _opened) = MemoryStreams::new(local, 1 << 16);
    let (_inbound, inbound_rx) = mpsc::channel::<Box<dyn VpnStream>>(4);
    let node = VpnNode::builder(config, key)
        .tun(Arc::new(tun))
        .discovery(Arc::new(discovery(PeerId::random())))
        .stream_service(Arc::new(streams))
        .inbound_streams(inbound_rx)
        .build();
    node.start().await.unwrap();
    node.stop().await.unwrap();
    // The device was let go at the stop: a second start would otherwise make a kernel one.
    let err = node.start().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("serve one start") && text.contains("build a new node"), "{text}");
    assert!(node.tun_name().await.is_none());
}
