//! A worker against mocks of discovery and the pool, and a recording sink.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{QueuedPacket, SendResult, WorkerSettings};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use vpn_api::PeerId;
use vpn_api::{FrameBatch, FrameSink, MetricsService, StreamLease};
use vpn_errors::{NetworkErrorKind, VpnError};
use vpn_metrics::AtomicMetrics;
use vpn_resilience::{CircuitBreakerSettings, RetrySettings};
use vpn_resilience::{ExponentialBackoff, PeerBreakers};
use vpn_testutil::mocks::{MockPeerDiscovery, MockStreamPool};
use vpn_types::{DropReason, FlowKey};
use vpn_wire::{Frame, FrameDecoder};

use crate::{Worker, WorkerContext, WorkerHandle};

/// A sink that records what it is given, or refuses once closed, or never answers; one
/// that is moving records its drains among its batches (as an empty batch).
#[derive(Default)]
struct RecordingSink {
    batches: Mutex<Vec<FrameBatch>>,
    closed: AtomicBool,
    hang: bool,
    moving: AtomicBool,
    drains: Mutex<usize>,
}

#[async_trait]
impl FrameSink for RecordingSink {
    async fn send_frames(&self, batch: FrameBatch) -> Result<(), VpnError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(VpnError::network(NetworkErrorKind::StreamClosed, "queue frames"));
        }
        self.batches.lock().unwrap().push(batch);
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn is_moving(&self) -> bool {
        self.moving.load(Ordering::SeqCst)
    }

    async fn drain(&self, _within: Duration) -> bool {
        *self.drains.lock().unwrap() += 1;
        true
    }
}

impl RecordingSink {
    fn packets(&self) -> Vec<Bytes> {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        for batch in self.batches.lock().unwrap().iter() {
            let mut buf = BytesMut::from(&batch.frames[..]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                match frame {
                    Frame::Packet(p) => out.push(p),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        out
    }
}

const DST: &str = "100.64.0.9";

fn key() -> FlowKey {
    FlowKey::new(DST.parse().unwrap(), Some(80))
}

fn packet(tag: u8) -> (QueuedPacket, oneshot::Receiver<SendResult>) {
    let (tx, rx) = oneshot::channel();
    let dst: IpAddr = DST.parse().unwrap();
    (QueuedPacket::new(Bytes::from(vec![tag; 20]), dst).with_done(tx), rx)
}

struct Setup {
    discovery: MockPeerDiscovery,
    pool: MockStreamPool,
    settings: WorkerSettings,
    metrics: Arc<AtomicMetrics>,
    breaker_threshold: u32,
}

impl Setup {
    fn new() -> Self {
        Self {
            discovery: MockPeerDiscovery::new(),
            pool: MockStreamPool::new(),
            settings: WorkerSettings::default().with_batch_max(8),
            metrics: Arc::new(AtomicMetrics::new()),
            breaker_threshold: 5,
        }
    }

    fn peer_is(mut self, peer: PeerId) -> Self {
        self.discovery.expect_peer_for_ip().returning(move |_| Ok(peer));
        self
    }

    fn spawn(self) -> (WorkerHandle, Arc<AtomicMetrics>) {
        let breakers = PeerBreakers::new(
            CircuitBreakerSettings::default()
                .with_failure_threshold(self.breaker_threshold)
                .with_reset_timeout(Duration::from_secs(30)),
        );
        let retry = ExponentialBackoff::new(RetrySettings::default().with_max_attempts(1));
        let ctx = WorkerContext::new(
            Arc::new(self.discovery),
            Arc::new(self.pool),
            Arc::new(breakers),
            Arc::new(retry),
            self.metrics.clone(),
            self.settings,
        );
        (Worker::spawn(key(), Arc::new(ctx)), self.metrics)
    }
}

fn lease_on(peer: PeerId, id: u64, sink: Arc<RecordingSink>) -> StreamLease {
    StreamLease { peer, stream_id: id, sink }
}

#[tokio::test]
async fn sends_in_order_on_one_lease_and_releases_it_at_the_end() {
    let peer = PeerId::random();
    let sink = Arc::new(RecordingSink::default());
    let mut setup = Setup::new().peer_is(peer);
    let leased = sink.clone();
    setup
        .pool
        .expect_get_stream()
        .times(1)
        .returning(move |p, _| Ok(lease_on(p, 1, leased.clone())));
    setup
        .pool
        .expect_release()
        .withf(|l, healthy| l.stream_id == 1 && *healthy)
        .times(1)
        .return_const(());
    let (worker, _) = setup.spawn();
    let mut waits = Vec::new();
    for tag in 0..20 {
        let (p, rx) = packet(tag);
        worker.try_send(p).unwrap();
        waits.push(rx);
    }
    for rx in waits {
        assert_eq!(rx.await.unwrap(), Ok(()));
    }
    let figures = worker.figures();
    assert_eq!((figures.packets, figures.bytes, figures.errors), (20, 400, 0));
    worker.finish().await;
    let tags: Vec<u8> = sink.packets().iter().map(|p| p[0]).collect();
    assert_eq!(tags, (0..20).collect::<Vec<_>>());
    assert!(
        sink.batches.lock().unwrap().iter().all(|b| b.packets <= 8),
        "batches respect batch_max"
    );
}

#[tokio::test]
async fn no_peer_drops_the_batch() {
    let mut setup = Setup::new();
    setup
        .discovery
        .expect_peer_for_ip()
        .returning(|_| Err(VpnError::network(NetworkErrorKind::NoPeer, "resolve")));
    let (worker, metrics) = setup.spawn();
    let (p, rx) = packet(1);
    worker.try_send(p).unwrap();
    assert_eq!(rx.await.unwrap(), Err(DropReason::NoPeer));
    assert_eq!(metrics.snapshot().dropped(DropReason::NoPeer), 1);
    assert_eq!(worker.figures().errors, 1);
    worker.finish().await;
}

#[tokio::test]
async fn failing_opens_open_the_breaker() {
    let peer = PeerId::random();
    let mut setup = Setup::new().peer_is(peer);
    setup.breaker_threshold = 2;
    setup
        .pool
        .expect_get_stream()
        .times(2)
        .returning(|_, _| Err(VpnError::network(NetworkErrorKind::Unreachable, "open stream")));
    let (worker, metrics) = setup.spawn();
    let mut results = Vec::new();
    for tag in 0..4 {
        let (p, rx) = packet(tag);
        worker.try_send(p).unwrap();
        // One at a time: each is its own batch.
        results.push(rx.await.unwrap());
    }
    use DropReason::*;
    assert_eq!(
        results,
        vec![Err(StreamError), Err(StreamError), Err(CircuitOpen), Err(CircuitOpen)]
    );
    let s = metrics.snapshot();
    assert_eq!((s.dropped(StreamError), s.circuit_open_drops), (2, 2));
    worker.finish().await;
}

#[tokio::test]
async fn closed_stream_is_released_unhealthy_and_replaced() {
    let peer = PeerId::random();
    let first = Arc::new(RecordingSink::default());
    let second = Arc::new(RecordingSink::default());
    let mut setup = Setup::new().peer_is(peer);
    let (a, b) = (first.clone(), second.clone());
    let mut seq = mockall::Sequence::new();
    setup
        .pool
        .expect_get_stream()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |p, _| Ok(lease_on(p, 1, a.clone())));
    setup
        .pool
        .expect_release()
        .withf(|l, h| l.stream_id == 1 && !*h)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    setup
        .pool
        .expect_get_stream()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |p, _| Ok(lease_on(p, 2, b.clone())));
    setup
        .pool
        .expect_release()
        .withf(|l, h| l.stream_id == 2 && *h)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    let (worker, _) = setup.spawn();
    let (p, rx) = packet(1);
    worker.try_send(p).unwrap();
    assert_eq!(rx.await.unwrap(), Ok(()));
    first.closed.store(true, Ordering::SeqCst);
    let (p, rx) = packet(2);
    worker.try_send(p).unwrap();
    assert_eq!(rx.await.unwrap(), Ok(()));
    worker.finish().await;
    assert_eq!(first.packets().len(), 1);
    assert_eq!(second.packets().len(), 1);
}

#[tokio::test]
async fn new_owner_moves_the_flow_to_another_peer() {
    let (old, new) = (PeerId::random(), PeerId::random());
    let mut setup = Setup::new();
    let owner = Arc::new(Mutex::new(old));
    let current = owner.clone();
    setup.discovery.expect_peer_for_ip().returning(move |_| Ok(*current.lock().unwrap()));
    let sink = Arc::new(RecordingSink::default());
    let leased = sink.clone();
    setup
        .pool
        .expect_get_stream()
        .times(2)
        .returning(move |p, _| Ok(lease_on(p, if p == old { 1 } else { 2 }, leased.clone())));
    setup.pool.expect_release().withf(move |l, h| l.peer == old && *h).times(1).return_const(());
    setup.pool.expect_release().withf(move |l, h| l.peer == new && *h).times(1).return_const(());
    let (worker, _) = setup.spawn();
    let (p, rx) = packet(1);
    worker.try_send(p).unwrap();
    rx.await.unwrap().unwrap();
    *owner.lock().unwrap() = new;
    let (p, rx) = packet(2);
    worker.try_send(p).unwrap();
    rx.await.unwrap().unwrap();
    worker.finish().await;
}

#[tokio::test]
async fn a_flow_drains_a_moving_stream_before_it_takes_another() {
    let peer = PeerId::random();
    let mut setup = Setup::new().peer_is(peer);
    let (first, second) = (Arc::new(RecordingSink::default()), Arc::new(RecordingSink::default()));
    let mut seq = mockall::Sequence::new();
    let leased = first.clone();
    setup
        .pool
        .expect_get_stream()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |p, _| Ok(lease_on(p, 1, leased.clone())));
    // Moving is no fault of the stream: it goes back healthy, after the drain.
    let drained = first.clone();
    setup
        .pool
        .expect_release()
        .withf(move |l, healthy| {
            l.stream_id == 1 && *healthy && *drained.drains.lock().unwrap() == 1
        })
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    let leased = second.clone();
    setup
        .pool
        .expect_get_stream()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |p, _| Ok(lease_on(p, 2, leased.clone())));
    setup.pool.expect_release().withf(|l, _| l.stream_id == 2).times(1).return_const(());
    let (worker, _) = setup.spawn();
    let (p, rx) = packet(1);
    worker.try_send(p).unwrap();
    rx.await.unwrap().unwrap();
    first.moving.store(true, Ordering::SeqCst);
    let (p, rx) = packet(2);
    worker.try_send(p).unwrap();
    rx.await.unwrap().unwrap();
    worker.finish().await;
    assert_eq!(first.packets(), vec![Bytes::from(vec![1; 20])]);
    assert_eq!(second.packets(), vec![Bytes::from(vec![2; 20])]);
    assert_eq!(*first.drains.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_batch_not_handed_over_in_time_is_dropped() {
    let peer = PeerId::random();
    let sink = Arc::new(RecordingSink { hang: true, ..RecordingSink::default() });
    let mut setup = Setup::new().peer_is(peer);
    setup.settings = setup.settings.with_send_timeout(Duration::from_millis(500));
    let leased = sink.clone();
    setup.pool.expect_get_stream().returning(move |p, _| Ok(lease_on(p, 1, leased.clone())));
    setup.pool.expect_release().return_const(());
    let (worker, metrics) = setup.spawn();
    let (p, rx) = packet(1);
    worker.try_send(p).unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(rx.await.unwrap(), Err(DropReason::Timeout));
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(metrics.snapshot().dropped(DropReason::Timeout), 1);
    worker.finish().await;
}

#[tokio::test]
async fn oversized_packets_are_dropped_alone() {
    let peer = PeerId::random();
    let sink = Arc::new(RecordingSink::default());
    let mut setup = Setup::new().peer_is(peer);
    let leased = sink.clone();
    setup.pool.expect_get_stream().returning(move |p, _| Ok(lease_on(p, 1, leased.clone())));
    setup.pool.expect_release().return_const(());
    let (worker, metrics) = setup.spawn();
    let dst: IpAddr = DST.parse().unwrap();
    let (tx, big) = oneshot::channel();
    worker.try_send(QueuedPacket::new(Bytes::from(vec![0; 70_000]), dst).with_done(tx)).unwrap();
    let (p, small) = packet(3);
    worker.try_send(p).unwrap();
    assert_eq!(big.await.unwrap(), Err(DropReason::TooLarge));
    assert_eq!(small.await.unwrap(), Ok(()));
    assert_eq!(metrics.snapshot().dropped(DropReason::TooLarge), 1);
    worker.finish().await;
    assert_eq!(sink.packets().len(), 1);
}

#[tokio::test]
async fn batches_of_large_packets_are_bounded_in_bytes() {
    let peer = PeerId::random();
    let sink = Arc::new(RecordingSink::default());
    let mut setup = Setup::new().peer_is(peer);
    setup.settings = WorkerSettings::default().with_batch_max(64);
    let leased = sink.clone();
    setup.pool.expect_get_stream().returning(move |p, _| Ok(lease_on(p, 1, leased.clone())));
    setup.pool.expect_release().return_const(());
    let (worker, _) = setup.spawn();
    let dst: IpAddr = DST.parse().unwrap();
    let mut waits = Vec::new();
    // Twelve offload-sized packets, all queued before the worker takes its first batch.
    for tag in 0..12u8 {
        let (tx, rx) = oneshot::channel();
        worker
            .try_send(QueuedPacket::new(Bytes::from(vec![tag; 60_000]), dst).with_done(tx))
            .unwrap();
        waits.push(rx);
    }
    for rx in waits {
        assert_eq!(rx.await.unwrap(), Ok(()));
    }
    worker.finish().await;
    let batches: Vec<u64> = sink.batches.lock().unwrap().iter().map(|b| b.packets).collect();
    // 256 KiB is reached at the fifth packet of 60 000 bytes: batches of 5, 5 and 2.
    assert_eq!(batches, vec![5, 5, 2]);
    let tags: Vec<u8> = sink.packets().iter().map(|p| p[0]).collect();
    assert_eq!(tags, (0..12).collect::<Vec<_>>());
}
