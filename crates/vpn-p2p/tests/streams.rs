//! VPN streams between real swarms on 127.0.0.1.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use vpn_api::{MetricsService, StreamService};
use vpn_metrics::AtomicMetrics;
use vpn_p2p::{Keypair, Libp2pStreamService, Multiaddr, P2pConfig, P2pNode, accept_streams};
use vpn_stream::{InboundLimits, serve_inbound};
use vpn_wire::Frame;

async fn node() -> P2pNode {
    let config =
        P2pConfig::new(Keypair::generate_ed25519(), vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
    P2pNode::start(config).await.unwrap()
}

async fn addrs(node: &P2pNode) -> Vec<Multiaddr> {
    node.handle().listen_addrs().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_peers_stream_frames_and_others_are_refused() {
    let (a, b, c) = (node().await, node().await, node().await);
    let b_id = b.handle().local_peer_id();
    let metrics = Arc::new(AtomicMetrics::new());
    let mut control = a.handle().stream_control();
    let (mut inbound, accept) =
        accept_streams(&mut control, Arc::new(move |peer| *peer == b_id), metrics.clone(), 8)
            .unwrap();
    tokio::spawn(accept);
    let (tx, mut delivered) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(stream) = inbound.recv().await {
            let tx = tx.clone();
            let peer = stream.peer_id();
            let sink = move |frame| {
                let _ = tx.send((peer, frame));
            };
            tokio::spawn(serve_inbound(stream, sink, InboundLimits::default()));
        }
    });
    let a_id = a.handle().local_peer_id();
    for other in [&b, &c] {
        other.handle().dial(a_id, addrs(&a).await).await.unwrap();
    }

    let mut stream =
        Libp2pStreamService::new(b.handle().stream_control()).open_stream(a_id).await.unwrap();
    assert_eq!(stream.peer_id(), a_id);
    let mut wire = BytesMut::new();
    vpn_wire::encode_packet(&mut wire, b"packet").unwrap();
    vpn_wire::encode_ping(&mut wire, [5; 8]);
    stream.write_all(&wire).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(
        delivered.recv().await.unwrap(),
        (b_id, Frame::Packet(Bytes::from_static(b"packet")))
    );
    let mut pong = [0u8; 13];
    stream.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong[..5], &[0, 0, 0, 9, 0x11]);
    assert_eq!(&pong[5..], &[5; 8]);

    // C is not allowed: its stream opens (the protocol is spoken) but is reset at once.
    let mut refused =
        Libp2pStreamService::new(c.handle().stream_control()).open_stream(a_id).await.unwrap();
    let _ = refused.write_all(&wire).await;
    let mut buf = [0u8; 1];
    let end = refused.read(&mut buf).await;
    assert!(matches!(end, Ok(0) | Err(_)), "the refused stream ends: {end:?}");
    assert_eq!(metrics.snapshot().stream_errors, 1);
    assert!(delivered.try_recv().is_err(), "nothing from C was delivered");
    for n in [a, b, c] {
        n.stop().await;
    }
}
