//! The whole engine in one process: dispatcher -> workers -> stream pool -> in-memory
//! streams -> the acceptor's frame reader. Real components throughout; only the network is
//! in memory.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use vpn_api::{IpNet, PeerId};
use vpn_api::{MetricsService, TunPacket};
use vpn_dispatcher::Dispatcher;
use vpn_errors::{NetworkErrorKind, VpnError};
use vpn_metrics::AtomicMetrics;
use vpn_resilience::{CircuitBreakerSettings, RetrySettings};
use vpn_resilience::{ExponentialBackoff, PeerBreakers};
use vpn_stream::StreamPoolSettings;
use vpn_stream::{InboundLimits, StreamPool, serve_inbound};
use vpn_testutil::mocks::MockPeerDiscovery;
use vpn_testutil::{Faults, MemoryStreams, PacketBuilder};
use vpn_types::DropReason;
use vpn_utils::extract_ip_and_ports;
use vpn_wire::Frame;
use vpn_worker::WorkerSettings;

/// Discovery in which every address in 100.64.0.0/16 belongs to one peer.
fn one_peer(peer: PeerId) -> MockPeerDiscovery {
    let range: IpNet = "100.64.0.0/16".parse().unwrap();
    let mut discovery = MockPeerDiscovery::new();
    discovery.expect_peer_for_ip().returning(move |ip| {
        if range.contains(&ip) {
            Ok(peer)
        } else {
            Err(VpnError::network(NetworkErrorKind::NoPeer, "resolve"))
        }
    });
    discovery
}

struct Engine {
    dispatcher: Dispatcher,
    pool: StreamPool,
    streams: Arc<MemoryStreams>,
    metrics: Arc<AtomicMetrics>,
    /// Packets the far side received, in the order each stream delivered them.
    received: mpsc::UnboundedReceiver<Bytes>,
    /// The workers' context, with the outbound byte budget.
    ctx: Arc<vpn_worker::WorkerContext>,
}

fn engine(faults: Vec<Faults>) -> Engine {
    let peer = PeerId::random();
    let (streams, mut accepted) = MemoryStreams::new(PeerId::random(), 4 << 20);
    streams.inject(faults);
    let streams = Arc::new(streams);
    let metrics = Arc::new(AtomicMetrics::new());
    let pool = StreamPool::new(streams.clone(), metrics.clone(), StreamPoolSettings::default());
    // A generous bound: these tests count packets, they do not time anything.
    let settings = WorkerSettings::default().with_send_timeout(Duration::from_secs(60));
    let ctx = vpn_worker::WorkerContext::new(
        Arc::new(one_peer(peer)),
        Arc::new(pool.clone()),
        Arc::new(PeerBreakers::new(CircuitBreakerSettings::default())),
        Arc::new(ExponentialBackoff::new(RetrySettings::default())),
        metrics.clone(),
        settings,
    );
    let ctx = Arc::new(ctx);
    let dispatcher = Dispatcher::new(ctx.clone());
    dispatcher.start();
    pool.start();
    let (tx, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(far) = accepted.recv().await {
            let tx = tx.clone();
            let sink = move |frame| {
                if let Frame::Packet(packet) = frame {
                    let _ = tx.send(packet);
                }
            };
            tokio::spawn(serve_inbound(Box::new(far.stream), sink, InboundLimits::default()));
        }
    });
    Engine { dispatcher, pool, streams, metrics, received, ctx }
}

/// A UDP packet of flow `flow` (destination port) carrying its sequence number.
fn packet(flow: u16, seq: u32) -> TunPacket {
    let dst = IpAddr::V4(Ipv4Addr::new(100, 64, (flow >> 8) as u8, (flow & 0xff) as u8 | 1));
    let bytes = PacketBuilder::udp("100.64.255.1".parse().unwrap(), dst, 40000, 1000 + flow)
        .payload(&seq.to_be_bytes())
        .build();
    TunPacket::new(Bytes::from(bytes))
}

/// The flow and sequence number a received packet carries.
fn flow_and_seq(packet: &[u8]) -> (u16, u32) {
    let info = extract_ip_and_ports(packet).unwrap();
    let seq = u32::from_be_bytes(packet[packet.len() - 4..].try_into().unwrap());
    (info.dst_port.unwrap() - 1000, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_packets_of_a_thousand_flows_arrive_once_and_in_order() {
    const FLOWS: u16 = 1000;
    const PER_FLOW: u32 = 100;
    let mut e = engine(Vec::new());
    for seq in 0..PER_FLOW {
        for flow in 0..FLOWS {
            assert_eq!(e.dispatcher.dispatch(packet(flow, seq)), Ok(()), "flow {flow} seq {seq}");
        }
    }
    let total = usize::from(FLOWS) * PER_FLOW as usize;
    let mut next: HashMap<u16, u32> = HashMap::new();
    for _ in 0..total {
        let packet = tokio::time::timeout(Duration::from_secs(120), e.received.recv())
            .await
            .expect("every packet arrives")
            .unwrap();
        let (flow, seq) = flow_and_seq(&packet);
        let expected = next.entry(flow).or_insert(0);
        assert_eq!(seq, *expected, "flow {flow} out of order or duplicated");
        *expected += 1;
    }
    assert_eq!(next.len(), usize::from(FLOWS));
    assert!(next.values().all(|n| *n == PER_FLOW));
    e.dispatcher.stop().await;
    e.pool.stop().await;
    assert!(e.received.try_recv().is_err(), "nothing arrives twice");
    let s = e.metrics.snapshot();
    assert_eq!(s.packets_sent, total as u64);
    assert_eq!(s.dropped_total(), 0);
    assert!(e.streams.opened() <= 4, "streams stay within the pool's maximum");
    assert_eq!(e.streams.live(), 0, "every stream was closed");
    assert_eq!(e.ctx.budget().held(), 0, "every packet gave its bytes back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_outlives_a_failed_stream_and_its_losses_are_counted() {
    const N: u32 = 300;
    // The first stream fails on its fourth write; later streams are sound.
    let mut e = engine(vec![Faults::fail_writes_from(4)]);
    let mut received = Vec::new();
    for seq in 0..N {
        // One packet at a time, each waiting for the worker to hand it over, so the flow
        // spans many writes.
        let (tx, rx) = tokio::sync::oneshot::channel();
        e.dispatcher.dispatch_with_callback(packet(7, seq), tx);
        let _ = rx.await.unwrap();
        while let Ok(p) = e.received.try_recv() {
            received.push(flow_and_seq(&p).1);
        }
    }
    // Wait until every packet is either received or counted as lost.
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let lost = e.metrics.snapshot().dropped(DropReason::StreamError);
            if received.len() as u64 + lost == u64::from(N) {
                break lost;
            }
            if let Ok(Some(p)) =
                tokio::time::timeout(Duration::from_millis(20), e.received.recv()).await
            {
                received.push(flow_and_seq(&p).1);
            }
        }
    })
    .await
    .expect("every packet is accounted for");
    let lost = settled;
    assert!(lost >= 1, "the failed write lost packets, and they were counted");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {received:?}");
    assert_eq!(received.last(), Some(&(N - 1)), "the flow went on after the failure");
    assert!(e.streams.opened() >= 2, "a new stream took over");
    let s = e.metrics.snapshot();
    assert_eq!(s.stream_errors, 1);
    assert_eq!(s.packets_sent + lost, u64::from(N));
    e.dispatcher.stop().await;
    e.pool.stop().await;
    assert_eq!(e.streams.live(), 0);
    assert_eq!(e.ctx.budget().held(), 0, "sent and lost packets gave their bytes back");
}
