//! The dispatcher against mocks: drop rules, worker cap, idle clean-up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use vpn_api::{MetricsService, TunPacket};
use vpn_errors::{NetworkErrorKind, VpnError};
use vpn_metrics::AtomicMetrics;
use vpn_resilience::{CircuitBreakerSettings, RetrySettings};
use vpn_resilience::{ExponentialBackoff, PeerBreakers};
use vpn_testutil::PacketBuilder;
use vpn_testutil::mocks::{MockPeerDiscovery, MockStreamPool};
use vpn_types::DropReason;
use vpn_worker::WorkerContext;
use vpn_worker::WorkerSettings;

use crate::Dispatcher;

fn udp(dst_port: u16) -> TunPacket {
    let packet = PacketBuilder::udp(
        "100.64.0.1".parse().unwrap(),
        "100.64.0.2".parse().unwrap(),
        5000,
        dst_port,
    )
    .payload(b"x")
    .build();
    TunPacket::new(Bytes::from(packet))
}

fn dispatcher(
    discovery: MockPeerDiscovery,
    pool: MockStreamPool,
    settings: WorkerSettings,
) -> (Dispatcher, Arc<AtomicMetrics>) {
    let metrics = Arc::new(AtomicMetrics::new());
    let ctx = WorkerContext::new(
        Arc::new(discovery),
        Arc::new(pool),
        Arc::new(PeerBreakers::new(CircuitBreakerSettings::default())),
        Arc::new(ExponentialBackoff::new(RetrySettings::default())),
        metrics.clone(),
        settings,
    );
    (Dispatcher::new(Arc::new(ctx)), metrics)
}

/// Discovery that never answers: workers hold their first packet forever.
fn stuck_discovery() -> MockPeerDiscovery {
    let mut d = MockPeerDiscovery::new();
    d.expect_peer_for_ip()
        .returning(|_| Err(VpnError::network(NetworkErrorKind::NoPeer, "resolve")));
    d
}

#[tokio::test]
async fn malformed_packets_are_dropped_and_counted() {
    let (d, metrics) =
        dispatcher(stuck_discovery(), MockStreamPool::new(), WorkerSettings::default());
    assert_eq!(
        d.dispatch(TunPacket::new(Bytes::from_static(&[0x45, 0, 0]))),
        Err(DropReason::Malformed)
    );
    let (tx, rx) = oneshot::channel();
    d.dispatch_with_callback(TunPacket::new(Bytes::new()), tx);
    assert_eq!(rx.await.unwrap(), Err(DropReason::Malformed));
    assert_eq!(metrics.snapshot().dropped(DropReason::Malformed), 2);
    assert_eq!(d.active_workers(), 0);
}

#[tokio::test]
async fn a_full_queue_drops_without_waiting() {
    // The worker task cannot run before this test yields, so nothing leaves the queue.
    let settings = WorkerSettings::default().with_queue_capacity(3).with_batch_max(1);
    let (d, metrics) = dispatcher(stuck_discovery(), MockStreamPool::new(), settings);
    for _ in 0..3 {
        assert_eq!(d.dispatch(udp(53)), Ok(()));
    }
    let (tx, rx) = oneshot::channel();
    d.dispatch_with_callback(udp(53), tx);
    assert_eq!(rx.await.unwrap(), Err(DropReason::QueueFull));
    // Another flow has its own queue.
    assert_eq!(d.dispatch(udp(54)), Ok(()));
    assert_eq!(metrics.snapshot().dropped(DropReason::QueueFull), 1);
    d.stop().await;
}

#[tokio::test]
async fn the_worker_cap_drops_new_flows_only() {
    let settings = WorkerSettings::default().with_max_workers(2);
    let (d, metrics) = dispatcher(stuck_discovery(), MockStreamPool::new(), settings);
    assert_eq!(d.dispatch(udp(1)), Ok(()));
    assert_eq!(d.dispatch(udp(2)), Ok(()));
    assert_eq!(d.dispatch(udp(3)), Err(DropReason::WorkerLimit));
    assert_eq!(d.dispatch(udp(1)), Ok(()), "existing flows go on");
    assert_eq!(d.active_workers(), 2);
    let s = metrics.snapshot();
    assert_eq!((s.dropped(DropReason::WorkerLimit), s.active_workers), (1, 2));
    d.stop().await;
    assert_eq!(d.dispatch(udp(1)), Err(DropReason::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn idle_workers_stop_and_release_their_lease() {
    let peer = vpn_api::PeerId::random();
    let mut discovery = MockPeerDiscovery::new();
    discovery.expect_peer_for_ip().returning(move |_| Ok(peer));
    let mut pool = MockStreamPool::new();
    let sink = Arc::new({
        let mut sink = vpn_testutil::mocks::MockSink::new();
        sink.expect_is_closed().return_const(false);
        sink.expect_send_frames().returning(|_| Ok(()));
        sink
    });
    pool.expect_get_stream().times(1).returning(move |p, _| {
        Ok(vpn_api::StreamLease { peer: p, stream_id: 7, sink: sink.clone() })
    });
    let (released_tx, released) = oneshot::channel();
    let released_tx = std::sync::Mutex::new(Some(released_tx));
    pool.expect_release().times(1).returning(move |lease, healthy| {
        if let Some(tx) = released_tx.lock().unwrap().take() {
            tx.send((lease.stream_id, healthy)).unwrap();
        }
    });
    let settings = WorkerSettings::default()
        .with_idle_timeout(Duration::from_secs(60))
        .with_cleanup_interval(Duration::from_secs(10));
    let (d, metrics) = dispatcher(discovery, pool, settings);
    d.start();
    let (tx, rx) = oneshot::channel();
    d.dispatch_with_callback(udp(80), tx);
    assert_eq!(rx.await.unwrap(), Ok(()));
    assert_eq!(d.active_workers(), 1);
    tokio::time::advance(Duration::from_secs(50)).await;
    d.stop_idle_workers();
    assert_eq!(d.active_workers(), 1, "not idle long enough yet");
    // The paused clock runs on to the clean-up that stops the worker; it releases its lease.
    let start = tokio::time::Instant::now();
    assert_eq!(released.await.unwrap(), (7, true));
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert_eq!(d.active_workers(), 0);
    assert_eq!(metrics.snapshot().active_workers, 0);
    d.stop().await;
}

#[tokio::test]
async fn figures_per_worker() {
    let (d, _) = dispatcher(stuck_discovery(), MockStreamPool::new(), WorkerSettings::default());
    let (tx, rx) = oneshot::channel();
    d.dispatch_with_callback(udp(9), tx);
    assert_eq!(rx.await.unwrap(), Err(DropReason::NoPeer));
    let figures = d.worker_figures();
    assert_eq!(figures.len(), 1);
    assert_eq!(figures[0].0.dst_port, Some(9));
    assert_eq!(figures[0].1.errors, 1);
    d.stop().await;
}

#[tokio::test]
async fn the_byte_budget_spans_all_flows_until_frames_are_written() {
    let peer = vpn_api::PeerId::random();
    let mut discovery = MockPeerDiscovery::new();
    discovery.expect_peer_for_ip().returning(move |_| Ok(peer));
    // The stream's writer holds every batch it is given until the test lets it go.
    let queued: Arc<std::sync::Mutex<Vec<vpn_api::FrameBatch>>> = Arc::default();
    let sink = Arc::new({
        let queued = queued.clone();
        let mut sink = vpn_testutil::mocks::MockSink::new();
        sink.expect_is_closed().return_const(false);
        sink.expect_send_frames().returning(move |batch| {
            queued.lock().unwrap().push(batch);
            Ok(())
        });
        sink
    });
    let mut pool = MockStreamPool::new();
    pool.expect_get_stream().returning(move |p, _| {
        Ok(vpn_api::StreamLease { peer: p, stream_id: 1, sink: sink.clone() })
    });
    pool.expect_release().return_const(());
    let size = udp(1).data.len();
    // Room for two packets, whatever their flows.
    let settings = WorkerSettings::default().with_max_queued_bytes(2 * size + size / 2);
    let (d, metrics) = dispatcher(discovery, pool, settings);
    let sent = |port| {
        let (tx, rx) = oneshot::channel();
        d.dispatch_with_callback(udp(port), tx);
        rx
    };
    let (first, second) = (sent(1), sent(2));
    assert_eq!(d.dispatch(udp(3)), Err(DropReason::QueueFull), "a third flow finds no room");
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (Ok(()), Ok(())));
    // Handed to the stream but not yet written: still held.
    assert_eq!(d.dispatch(udp(4)), Err(DropReason::QueueFull));
    queued.lock().unwrap().clear();
    assert_eq!(sent(5).await.unwrap(), Ok(()), "written frames give their bytes back");
    assert_eq!(metrics.snapshot().dropped(DropReason::QueueFull), 2);
    d.stop().await;
}
