//! The pool, its streams and their health, against in-memory streams.

use std::sync::Arc;
use std::time::Duration;

use crate::{HealthCheckSettings, StreamPoolSettings};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use vpn_api::PeerId;
use vpn_api::{
    FrameBatch, MetricsService, StreamHealthService, StreamPoolService, StreamService, VpnStream,
};
use vpn_errors::{NetworkErrorKind, ServiceErrorKind, VpnError};
use vpn_metrics::AtomicMetrics;
use vpn_testutil::{Accepted, Faults, MemoryStreams};
use vpn_types::{DropReason, FlowKey};
use vpn_wire::{Frame, FrameDecoder};

use crate::{InboundLimits, InboundSink, StreamHealth, StreamPool, serve_inbound};

struct Fixture {
    pool: StreamPool,
    streams: Arc<MemoryStreams>,
    accepted: mpsc::UnboundedReceiver<Accepted>,
    metrics: Arc<AtomicMetrics>,
    peer: PeerId,
}

fn settings() -> StreamPoolSettings {
    StreamPoolSettings::default()
        .with_max_streams_per_peer(2)
        .with_stream_idle_timeout(Duration::from_secs(60))
        .with_cleanup_interval(Duration::from_secs(10))
}

fn fixture(settings: StreamPoolSettings) -> Fixture {
    fixture_with_buffer(settings, 1 << 20)
}

/// A fixture whose in-memory streams buffer `capacity` bytes each way.
fn fixture_with_buffer(settings: StreamPoolSettings, capacity: usize) -> Fixture {
    let (streams, accepted) = MemoryStreams::new(PeerId::random(), capacity);
    let streams = Arc::new(streams);
    let metrics = Arc::new(AtomicMetrics::new());
    let pool = StreamPool::new(streams.clone(), metrics.clone(), settings);
    Fixture { pool, streams, accepted, metrics, peer: PeerId::random() }
}

fn flow(port: u16) -> FlowKey {
    FlowKey::new("100.64.0.2".parse().unwrap(), Some(port))
}

/// A batch of `n` PACKET frames whose bodies are `tag` repeated.
fn batch(n: u64, tag: u8) -> FrameBatch {
    let mut frames = BytesMut::new();
    for _ in 0..n {
        vpn_wire::encode_packet(&mut frames, &[tag; 10]).unwrap();
    }
    FrameBatch { frames: frames.freeze(), packets: n, packet_bytes: n * 10, permit: None }
}

/// Reads `n` frames from an accepted stream.
async fn read_frames(stream: &mut (impl AsyncReadExt + Unpin), n: usize) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < n {
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "stream ended early");
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
    }
    frames
}

/// Lets other tasks run until `done` holds (a bounded number of turns).
async fn settle(mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the condition never came true");
}

#[tokio::test]
async fn leases_write_and_count_sent() {
    let mut f = fixture(settings());
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    assert_eq!(lease.peer, f.peer);
    lease.sink.send_frames(batch(3, 7)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    let frames = read_frames(&mut far.stream, 3).await;
    assert_eq!(frames, vec![Frame::Packet(Bytes::from_static(&[7; 10])); 3]);
    f.pool.release(lease, true);
    f.pool.stop().await;
    let s = f.metrics.snapshot();
    assert_eq!((s.packets_sent, s.bytes_sent), (3, 30));
}

#[tokio::test]
async fn busy_peer_grows_to_the_maximum_and_spreads_leases() {
    let mut f = fixture(settings());
    let a = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    // Far ends are kept: a stream whose far end goes away is closed.
    let _far_a = f.accepted.recv().await.unwrap();
    // The only stream is leased: the next lease shares it and opens a second in the background.
    let b = f.pool.get_stream(f.peer, flow(2)).await.unwrap();
    assert_eq!(b.stream_id, a.stream_id);
    let _far_b = f.accepted.recv().await.unwrap();
    settle(|| f.pool.active_streams() == 2).await;
    let c = f.pool.get_stream(f.peer, flow(3)).await.unwrap();
    assert_ne!(c.stream_id, a.stream_id, "the least-leased stream is chosen");
    let d = f.pool.get_stream(f.peer, flow(4)).await.unwrap();
    assert!([a.stream_id, c.stream_id].contains(&d.stream_id));
    assert_eq!(f.streams.opened(), 2, "never more than max_streams_per_peer");
    assert_eq!(f.pool.active_streams(), 2);
    f.pool.stop().await;
}

/// Opens that wait at a gate until the test lets them through.
struct GatedStreams {
    gate: Semaphore,
    gated: PeerId,
    arrived: std::sync::atomic::AtomicUsize,
    inner: MemoryStreams,
}

impl GatedStreams {
    fn new(gated: PeerId) -> (Arc<Self>, mpsc::UnboundedReceiver<Accepted>) {
        let (inner, accepted) = MemoryStreams::new(PeerId::random(), 1 << 16);
        let arrived = std::sync::atomic::AtomicUsize::new(0);
        (Arc::new(Self { gate: Semaphore::new(0), gated, arrived, inner }), accepted)
    }

    fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl StreamService for GatedStreams {
    async fn open_stream(&self, peer: PeerId) -> Result<Box<dyn VpnStream>, VpnError> {
        if peer == self.gated {
            self.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _permit = self.gate.acquire().await.unwrap();
        }
        self.inner.open_stream(peer).await
    }
}

#[tokio::test]
async fn no_lock_is_held_across_an_open() {
    let slow = PeerId::random();
    let (streams, _accepted) = GatedStreams::new(slow);
    let pool = StreamPool::new(streams.clone(), Arc::new(AtomicMetrics::new()), settings());
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_stream(slow, flow(1)).await.map(|l| l.stream_id) }
    });
    settle(|| streams.arrived() == 1).await;
    // While the open to `slow` hangs, other peers are served.
    let fast = pool.get_stream(PeerId::random(), flow(1)).await.unwrap();
    pool.release(fast, true);
    assert!(!waiting.is_finished());
    streams.gate.add_permits(1);
    assert!(waiting.await.unwrap().is_ok());
    pool.stop().await;
    assert_eq!(streams.inner.live(), 0);
}

#[tokio::test]
async fn unhealthy_release_retires_the_stream() {
    let mut f = fixture(settings());
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut first = f.accepted.recv().await.unwrap();
    f.pool.release(lease, false);
    // The retired stream is closed (cleanly: its queue was empty).
    let mut rest = Vec::new();
    first.stream.read_to_end(&mut rest).await.unwrap();
    let again = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    f.accepted.recv().await.unwrap();
    assert_eq!(f.streams.opened(), 2);
    assert_eq!(f.pool.active_streams(), 1);
    f.pool.release(again, true);
    f.pool.stop().await;
}

#[tokio::test]
async fn failed_write_counts_lost_packets_and_closes_the_sink() {
    let mut f = fixture(settings());
    f.streams.inject([Faults::fail_writes_from(2)]);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    lease.sink.send_frames(batch(2, 1)).await.unwrap();
    assert_eq!(read_frames(&mut far.stream, 2).await.len(), 2);
    lease.sink.send_frames(batch(5, 2)).await.unwrap();
    // The write fails; the stream task resets the stream (it may have stopped inside a
    // frame), and the far end sees the reset.
    let mut rest = Vec::new();
    let end = far.stream.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(end.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(rest.is_empty());
    let refused = lease.sink.send_frames(batch(1, 3)).await.unwrap_err();
    assert_eq!(refused.network_kind(), Some(NetworkErrorKind::StreamClosed));
    let s = f.metrics.snapshot();
    assert_eq!(s.packets_sent, 2);
    assert_eq!(s.dropped(DropReason::StreamError), 5);
    assert_eq!(s.stream_errors, 1);
    // The next lease gets a fresh stream.
    f.pool.release(lease, false);
    let next = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    next.sink.send_frames(batch(1, 4)).await.unwrap();
    let mut second = f.accepted.recv().await.unwrap();
    assert_eq!(
        read_frames(&mut second.stream, 1).await,
        vec![Frame::Packet(Bytes::from_static(&[4; 10]))]
    );
    f.pool.stop().await;
}

#[tokio::test]
async fn graceful_stop_finishes_the_write_under_way() {
    // 50 frames of 15 bytes into a stream that buffers 64: the write waits for the far end.
    let mut f = fixture_with_buffer(settings(), 64);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    lease.sink.send_frames(batch(50, 9)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    let mut first = [0; 16];
    far.stream.read_exact(&mut first).await.unwrap();
    f.pool.release(lease, true);
    let stopping = tokio::spawn({
        let pool = f.pool.clone();
        async move { pool.stop().await }
    });
    let mut bytes = BytesMut::from(&first[..]);
    far.stream.read_buf(&mut bytes).await.unwrap();
    let mut rest = Vec::new();
    far.stream.read_to_end(&mut rest).await.unwrap();
    bytes.extend_from_slice(&rest);
    stopping.await.unwrap();
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode_eof(&mut bytes).unwrap() {
        frames.push(frame);
    }
    assert_eq!(frames, vec![Frame::Packet(Bytes::from_static(&[9; 10])); 50]);
    let s = f.metrics.snapshot();
    assert_eq!((s.packets_sent, s.dropped(DropReason::StreamError)), (50, 0));
}

#[tokio::test]
async fn failed_opens_are_errors_and_counted() {
    let f = fixture(settings());
    f.streams.fail_next_opens(1);
    let err = f.pool.get_stream(f.peer, flow(1)).await.unwrap_err();
    assert_eq!(err.network_kind(), Some(NetworkErrorKind::Unreachable));
    assert_eq!(f.metrics.snapshot().stream_errors, 1);
    assert!(f.pool.get_stream(f.peer, flow(1)).await.is_ok());
    f.pool.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_streams_are_closed_by_the_cleanup() {
    let mut f = fixture(settings());
    f.pool.start();
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    f.pool.release(lease, true);
    let start = tokio::time::Instant::now();
    // Reading waits; the paused clock runs on to the cleanup that closes the stream.
    let mut rest = Vec::new();
    far.stream.read_to_end(&mut rest).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(60));
    assert_eq!(f.pool.active_streams(), 0);
    assert_eq!(f.metrics.snapshot().active_streams, 0);
    f.pool.stop().await;
    assert_eq!(f.streams.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn leased_streams_are_not_idle_closed() {
    let f = fixture(settings());
    f.pool.start();
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(f.pool.active_streams(), 1);
    assert!(!lease.sink.is_closed());
    f.pool.stop().await;
}

#[tokio::test]
async fn stop_closes_everything_even_opens_under_way() {
    let slow = PeerId::random();
    let (streams, _accepted) = GatedStreams::new(slow);
    let pool = StreamPool::new(streams.clone(), Arc::new(AtomicMetrics::new()), settings());
    for _ in 0..3 {
        let lease = pool.get_stream(PeerId::random(), flow(1)).await.unwrap();
        pool.release(lease, true);
    }
    let pending = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_stream(slow, flow(1)).await.map(|l| l.stream_id) }
    });
    settle(|| streams.arrived() == 1).await;
    pool.stop().await;
    streams.gate.add_permits(1);
    let err = pending.await.unwrap().unwrap_err();
    assert_eq!(err.service_kind(), Some(ServiceErrorKind::Stopped));
    pool.stop().await;
    // The open under way was cancelled by the stop before it got through.
    assert_eq!(streams.inner.opened(), 3);
    assert_eq!(streams.inner.live(), 0, "every stream opened was closed");
}

#[tokio::test(start_paused = true)]
async fn an_open_its_caller_gave_up_on_serves_the_next_lease() {
    let slow = PeerId::random();
    let (streams, _accepted) = GatedStreams::new(slow);
    let pool = StreamPool::new(streams.clone(), Arc::new(AtomicMetrics::new()), settings());
    // The caller gives up mid-open, as a worker's send timeout does (1 s < open_timeout).
    let gave_up = tokio::time::timeout(Duration::from_secs(1), pool.get_stream(slow, flow(1)));
    assert!(gave_up.await.is_err());
    assert_eq!(streams.arrived(), 1);
    // The path opens: the next lease is served by the open already under way, with no timer
    // having to run out first.
    streams.gate.add_permits(1);
    let next = tokio::time::timeout(Duration::from_millis(1), pool.get_stream(slow, flow(2)));
    assert!(matches!(next.await, Ok(Ok(_))), "the next lease did not get the stream");
    assert_eq!(streams.arrived(), 1, "no second open was needed");
    pool.stop().await;
    assert_eq!(streams.inner.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_that_timed_out_after_its_caller_left_leaves_nothing_behind() {
    let slow = PeerId::random();
    let (streams, _accepted) = GatedStreams::new(slow);
    let pool = StreamPool::new(streams.clone(), Arc::new(AtomicMetrics::new()), settings());
    let gave_up = tokio::time::timeout(Duration::from_secs(1), pool.get_stream(slow, flow(1)));
    assert!(gave_up.await.is_err());
    // A black hole longer than open_timeout: the detached open ends by its own timeout.
    tokio::time::sleep(settings().open_timeout * 2).await;
    streams.gate.add_permits(1);
    let next = tokio::time::timeout(Duration::from_millis(1), pool.get_stream(slow, flow(2)));
    assert!(matches!(next.await, Ok(Ok(_))), "the peer stayed unreachable for the pool");
    assert_eq!(streams.arrived(), 2, "the next lease opened afresh");
    pool.stop().await;
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_for_an_open_learn_that_it_failed() {
    let f = fixture(settings());
    f.streams.fail_next_opens(1);
    let (a, b) =
        tokio::join!(f.pool.get_stream(f.peer, flow(1)), f.pool.get_stream(f.peer, flow(2)));
    assert_eq!(a.unwrap_err().network_kind(), Some(NetworkErrorKind::Unreachable));
    assert_eq!(b.unwrap_err().network_kind(), Some(NetworkErrorKind::Unreachable));
    assert_eq!(f.metrics.snapshot().stream_errors, 1, "one open served both callers");
    assert!(f.pool.get_stream(f.peer, flow(1)).await.is_ok());
    f.pool.stop().await;
}

fn health_settings() -> HealthCheckSettings {
    HealthCheckSettings::default()
        .with_interval(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(5))
        .with_max_consecutive_failures(3)
}

#[tokio::test(start_paused = true)]
async fn silent_stream_is_reset_after_missed_pongs() {
    let mut f = fixture(settings());
    let health = StreamHealth::new(f.pool.clone(), health_settings(), 1);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    for round in 1..=3 {
        tokio::time::advance(Duration::from_secs(10)).await;
        health.check_once();
        // A PING goes out every round (after the first, beside a counted miss); none is answered.
        assert!(
            matches!(read_frames(&mut far.stream, 1).await[..], [Frame::Ping(_)]),
            "round {round}"
        );
        assert!(!lease.sink.is_closed(), "round {round}");
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    health.check_once();
    let mut buf = BytesMut::new();
    let err = loop {
        match far.stream.read_buf(&mut buf).await {
            Ok(n) => assert!(n > 0, "a reset, not a clean end"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let snapshot = health.health();
    let peer = snapshot.peers.iter().find(|p| p.peer == f.peer).unwrap();
    assert_eq!((peer.pings_sent, peer.pongs_missed, peer.streams_marked_unhealthy), (3, 3, 1));
    assert_eq!(f.pool.active_streams(), 0);
    f.pool.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stuck_stream_is_reset_although_no_ping_fits() {
    // The far end never reads: the first write blocks, then the writer's queue fills.
    let mut f = fixture_with_buffer(settings().with_writer_queue_capacity(2), 64);
    let health = StreamHealth::new(f.pool.clone(), health_settings(), 1);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let _far = f.accepted.recv().await.unwrap();
    let mut queued = 0;
    while tokio::time::timeout(Duration::from_millis(1), lease.sink.send_frames(batch(10, 1)))
        .await
        .is_ok()
    {
        queued += 10;
    }
    assert!(queued > 0);
    for round in 1..=3 {
        assert!(!lease.sink.is_closed(), "round {round}");
        tokio::time::advance(Duration::from_secs(10)).await;
        health.check_once();
    }
    settle(|| lease.sink.is_closed()).await;
    let snapshot = health.health();
    let peer = snapshot.peers.iter().find(|p| p.peer == f.peer).unwrap();
    assert_eq!((peer.pings_sent, peer.pongs_missed, peer.streams_marked_unhealthy), (0, 3, 1));
    f.pool.release(lease, false);
    f.pool.stop().await;
    assert_eq!(f.metrics.snapshot().packets_sent, 0);
    assert_eq!(f.streams.live(), 0, "the stuck stream was closed");
}

#[tokio::test(start_paused = true)]
async fn answering_stream_stays_healthy() {
    let mut f = fixture(settings());
    let health = StreamHealth::new(f.pool.clone(), health_settings(), 1);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let far = f.accepted.recv().await.unwrap();
    tokio::spawn(serve_inbound(Box::new(far.stream), |_| {}, InboundLimits::default()));
    for round in 1..=5u64 {
        tokio::time::advance(Duration::from_secs(10)).await;
        health.check_once();
        // Let the PING cross and the PONG come back.
        while health.health().peers.first().map_or(0, |p| p.pongs_received) < round {
            tokio::task::yield_now().await;
        }
    }
    let peer = health.health().peers.into_iter().next().unwrap();
    assert_eq!((peer.pings_sent, peer.pongs_received, peer.pongs_missed), (5, 5, 0));
    assert!(peer.last_rtt.is_some());
    assert_eq!((peer.streams, peer.healthy_streams), (1, 1));
    assert!(!lease.sink.is_closed());
    f.pool.stop().await;
}

#[tokio::test(start_paused = true)]
async fn answered_pings_do_not_keep_an_unused_stream_open() {
    let mut f = fixture(settings());
    f.pool.start();
    let health = StreamHealth::new(f.pool.clone(), health_settings(), 1);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    lease.sink.send_frames(batch(1, 1)).await.unwrap();
    let far = f.accepted.recv().await.unwrap();
    tokio::spawn(serve_inbound(Box::new(far.stream), |_| {}, InboundLimits::default()));
    f.pool.release(lease, true);
    let mut answered = 0;
    for _ in 0..12 {
        if f.pool.active_streams() == 0 {
            break;
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        health.check_once();
        // Let the PING cross and the PONG come back, unless the stream just closed.
        let pongs = || health.health().peers.first().map(|p| (p.pings_sent, p.pongs_received));
        settle(|| pongs().is_none_or(|(sent, got)| sent == got)).await;
        answered = pongs().map_or(answered, |(_, got)| got);
    }
    // Every PING was answered, yet the stream carried no packet for the idle timeout (60 s)
    // and the clean-up closed it.
    assert!(answered >= 4, "{answered} PONGs before the close");
    assert_eq!(f.pool.active_streams(), 0);
    f.pool.stop().await;
    assert_eq!(f.streams.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn busy_streams_are_not_pinged() {
    let mut f = fixture(settings());
    let health = StreamHealth::new(f.pool.clone(), health_settings(), 1);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(9)).await;
        lease.sink.send_frames(batch(1, 1)).await.unwrap();
        read_frames(&mut far.stream, 1).await;
        health.check_once();
    }
    assert_eq!(health.health().peers[0].pings_sent, 0);
    f.pool.stop().await;
}

#[tokio::test]
async fn warmer_keeps_recent_peers_at_the_minimum() {
    let mut f = fixture(settings());
    let health = StreamHealth::new(f.pool.clone(), health_settings(), 1);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    f.accepted.recv().await.unwrap();
    f.pool.release(lease, false);
    assert_eq!(f.pool.active_streams(), 0);
    health.warm_once();
    let warmed = f.accepted.recv().await.unwrap();
    assert_eq!(warmed.peer, f.peer);
    f.pool.stop().await;
}

#[tokio::test]
async fn checker_and_warmer_start_once() {
    let f = fixture(settings());
    let health = StreamHealth::new(f.pool.clone(), health_settings(), 1);
    health.start_health_checker().await.unwrap();
    let again = health.start_health_checker().await.unwrap_err();
    assert_eq!(again.service_kind(), Some(ServiceErrorKind::AlreadyStarted));
    health.start_warmer().await.unwrap();
    health.stop_health_checker().await;
    health.stop_warmer().await;
    health.stop_warmer().await;
    health.start_health_checker().await.unwrap();
    health.stop_health_checker().await;
}

/// An in-memory stream served by [`serve_inbound`] into `sink`: our end and the server's
/// task.
async fn inbound_server_with(
    sink: impl InboundSink + 'static,
) -> (Box<dyn VpnStream>, tokio::task::JoinHandle<crate::InboundEnd>) {
    let (streams, mut accepted) = MemoryStreams::new(PeerId::random(), 1 << 16);
    let ours = streams.open_stream(PeerId::random()).await.unwrap();
    let far = accepted.recv().await.unwrap();
    (ours, tokio::spawn(serve_inbound(Box::new(far.stream), sink, InboundLimits::default())))
}

/// An in-memory stream served by [`serve_inbound`]: our end, the frames it delivers, and
/// the server's task.
async fn inbound_server()
-> (Box<dyn VpnStream>, mpsc::UnboundedReceiver<Frame>, tokio::task::JoinHandle<crate::InboundEnd>)
{
    let (tx, delivered) = mpsc::unbounded_channel();
    let (ours, server) = inbound_server_with(move |frame| tx.send(frame).unwrap()).await;
    (ours, delivered, server)
}

/// A sink that hands over the frames of each read at its flush, and fails its flushes
/// when `fail` is set.
struct Flushing {
    pending: Vec<Frame>,
    flushed: mpsc::UnboundedSender<Vec<Frame>>,
    fail: bool,
}

impl InboundSink for Flushing {
    fn frame(&mut self, frame: Frame) {
        self.pending.push(frame);
    }

    fn flush(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        let frames = std::mem::take(&mut self.pending);
        if !frames.is_empty() {
            self.flushed.send(frames).unwrap();
        }
        let fail = self.fail;
        async move {
            match fail {
                true => Err(std::io::ErrorKind::BrokenPipe.into()),
                false => Ok(()),
            }
        }
    }
}

fn packet_frame(body: &'static [u8]) -> Frame {
    Frame::Packet(Bytes::from_static(body))
}

/// A stream served into a [`Flushing`] sink: our end, the frames of each flush, the task.
async fn flushing_server(
    fail: bool,
) -> (
    Box<dyn VpnStream>,
    mpsc::UnboundedReceiver<Vec<Frame>>,
    tokio::task::JoinHandle<crate::InboundEnd>,
) {
    let (flushed, rx) = mpsc::unbounded_channel();
    let (ours, server) = inbound_server_with(Flushing { pending: Vec::new(), flushed, fail }).await;
    (ours, rx, server)
}

/// Writes PACKET frames with these bodies in one write.
async fn write_packets(stream: &mut Box<dyn VpnStream>, bodies: &[&[u8]]) {
    let mut wire = BytesMut::new();
    for body in bodies {
        vpn_wire::encode_packet(&mut wire, body).unwrap();
    }
    stream.write_all(&wire).await.unwrap();
}

#[tokio::test]
async fn inbound_flushes_every_read_before_the_next() {
    let (mut ours, mut flushed, _server) = flushing_server(false).await;
    write_packets(&mut ours, &[b"one"]).await;
    // Nothing more is written: the frame must be flushed without another read.
    assert_eq!(flushed.recv().await.unwrap(), vec![packet_frame(b"one")]);
    write_packets(&mut ours, &[b"two", b"three", b"four"]).await;
    let mut frames = Vec::new();
    while frames.len() < 3 {
        frames.extend(flushed.recv().await.unwrap());
    }
    assert_eq!(frames, [packet_frame(b"two"), packet_frame(b"three"), packet_frame(b"four")]);
}

#[tokio::test]
async fn inbound_stream_ends_and_resets_when_its_sink_fails() {
    let (mut ours, mut flushed, server) = flushing_server(true).await;
    write_packets(&mut ours, &[b"one"]).await;
    assert_eq!(flushed.recv().await.unwrap(), vec![packet_frame(b"one")]);
    match server.await.unwrap() {
        crate::InboundEnd::Sink(e) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
        other => panic!("expected the sink's error, got {other:?}"),
    }
    let mut buf = [0u8; 1];
    assert_eq!(ours.read(&mut buf).await.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn inbound_answers_pings_delivers_packets_and_resets_on_garbage() {
    let (mut ours, mut delivered, server) = inbound_server().await;
    let mut wire = BytesMut::new();
    vpn_wire::encode_packet(&mut wire, b"one").unwrap();
    vpn_wire::encode_ping(&mut wire, [9; 8]);
    vpn_wire::encode_extension(&mut wire, 0x99, b"skip me").unwrap();
    vpn_wire::encode_packet(&mut wire, b"two").unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut ours, &wire).await.unwrap();
    assert_eq!(read_frames(&mut ours, 1).await, vec![Frame::Pong([9; 8])]);
    assert_eq!(delivered.recv().await.unwrap(), Frame::Packet(Bytes::from_static(b"one")));
    assert_eq!(delivered.recv().await.unwrap(), Frame::Packet(Bytes::from_static(b"two")));
    // A kind that is neither known nor an extension is a protocol error: reset.
    tokio::io::AsyncWriteExt::write_all(&mut ours, &[0, 0, 0, 1, 0x42]).await.unwrap();
    assert!(matches!(
        server.await.unwrap(),
        crate::InboundEnd::Protocol(vpn_wire::FrameError::UnknownKind(0x42))
    ));
    let mut buf = [0u8; 1];
    assert_eq!(ours.read(&mut buf).await.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn inbound_reads_the_largest_frames_between_small_ones() {
    let (mut ours, mut delivered, _server) = inbound_server().await;
    let gso = vpn_types::GsoInfo {
        gso_type: vpn_types::GsoType::TcpV4,
        needs_csum: true,
        hdr_len: 40,
        gso_size: 1400,
        csum_start: 20,
        csum_offset: 16,
    };
    // The length field counts the kind byte: a PACKET body of MAX_FRAME - 1 bytes, a
    // SEGMENTED one of that less its 10-byte header.
    let largest = vpn_wire::MAX_FRAME - 1;
    let mut wire = BytesMut::new();
    vpn_wire::encode_packet(&mut wire, &[1; 20]).unwrap();
    vpn_wire::encode_packet(&mut wire, &vec![2; largest]).unwrap();
    vpn_wire::encode_packet(&mut wire, &[3; 20]).unwrap();
    vpn_wire::encode_segmented(&mut wire, &gso, &vec![4; largest - 10]).unwrap();
    vpn_wire::encode_packet(&mut wire, &[5; 20]).unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut ours, &wire).await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..5 {
        bodies.push(match delivered.recv().await.unwrap() {
            Frame::Packet(packet) | Frame::Segmented { packet, .. } => packet,
            other => panic!("unexpected frame {other:?}"),
        });
    }
    let expected = [(1, 20), (2, largest), (3, 20), (4, largest - 10), (5, 20)];
    for (body, (tag, len)) in bodies.iter().zip(expected) {
        assert_eq!(body.len(), len);
        assert!(body.iter().all(|b| *b == tag));
    }
}

#[tokio::test(start_paused = true)]
async fn an_inbound_stream_that_sends_nothing_is_closed_after_the_idle_limit() {
    let (mut ours, _delivered, server) = inbound_server().await;
    let limits = InboundLimits::default();
    // A stream kept alive by a PING before each idle limit runs out stays open.
    let mut buf = BytesMut::new();
    for nonce in 0..3u8 {
        tokio::time::advance(limits.idle - Duration::from_secs(1)).await;
        vpn_wire::encode_ping(&mut buf, [nonce; 8]);
        ours.write_all(&buf.split()).await.unwrap();
        let mut pong = [0u8; 64];
        assert!(ours.read(&mut pong).await.unwrap() > 0, "PONG {nonce}");
    }
    assert!(!server.is_finished());
    // Then silence: the stream ends one idle limit after the last PING, and is reset.
    let start = tokio::time::Instant::now();
    let end = tokio::time::timeout(limits.idle * 10, server).await.expect("ended").unwrap();
    assert!(matches!(end, crate::InboundEnd::Idle), "{end:?}");
    assert_eq!(start.elapsed(), limits.idle);
    let mut rest = [0u8; 8];
    let after = ours.read(&mut rest).await;
    assert!(matches!(after, Err(_) | Ok(0)), "the stream is gone: {after:?}");
}

#[tokio::test(start_paused = true)]
async fn an_inbound_stream_that_never_reads_its_pongs_is_reset() {
    let (streams, mut accepted) = MemoryStreams::new(PeerId::random(), 1 << 12);
    let mut ours = streams.open_stream(PeerId::random()).await.unwrap();
    let far = accepted.recv().await.unwrap();
    let limits = InboundLimits::default();
    let server = tokio::spawn(serve_inbound(Box::new(far.stream), |_| {}, limits));
    // PINGs until the PONGs we never read fill the stream and the server's write waits.
    let pinger = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        for nonce in 0..100_000u32 {
            vpn_wire::encode_ping(&mut buf, u64::from(nonce).to_be_bytes());
            if ours.write_all(&buf.split()).await.is_err() {
                return nonce;
            }
        }
        u32::MAX
    });
    let end = tokio::time::timeout(limits.write * 10, server).await.expect("ended").unwrap();
    assert!(matches!(end, crate::InboundEnd::Stalled), "{end:?}");
    let sent = pinger.await.unwrap();
    assert!(sent < 100_000, "the reset stream refused our writes after {sent} PINGs");
}

#[tokio::test]
async fn moved_flows_drain_their_stream_then_take_a_new_one() {
    let mut f = fixture(settings());
    let old = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far_old = f.accepted.recv().await.unwrap();
    old.sink.send_frames(batch(2, 1)).await.unwrap();
    assert!(!old.sink.is_moving());

    // The peer got a direct connection: its streams take no new flow.
    f.pool.move_peer(f.peer);
    assert!(old.sink.is_moving());
    let sink = old.sink.clone();
    let drain = tokio::spawn(async move { sink.drain(Duration::from_secs(5)).await });
    // Everything sent before the drain arrives first, then the drain's PING.
    let frames = read_frames(&mut far_old.stream, 3).await;
    assert_eq!(
        frames[..2],
        [Frame::Packet(Bytes::from_static(&[1; 10])), Frame::Packet(Bytes::from_static(&[1; 10]))]
    );
    let Frame::Ping(nonce) = frames[2] else { panic!("no drain PING: {frames:?}") };
    assert!(!drain.is_finished(), "the drain waits for the peer's answer");
    let mut pong = BytesMut::new();
    vpn_wire::encode_pong(&mut pong, nonce);
    far_old.stream.write_all(&pong).await.unwrap();
    assert!(drain.await.unwrap(), "the answer ends the drain");

    // The flow lets the old stream go and takes a new one; the old one closes.
    f.pool.release(old, true);
    let new = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far_new = f.accepted.recv().await.unwrap();
    new.sink.send_frames(batch(1, 2)).await.unwrap();
    assert_eq!(
        read_frames(&mut far_new.stream, 1).await,
        vec![Frame::Packet(Bytes::from_static(&[2; 10]))]
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), far_old.stream.read_to_end(&mut rest));
    assert_eq!(read.await.unwrap().unwrap(), 0, "the old stream closed, with nothing more on it");
    f.pool.stop().await;
}

#[tokio::test]
async fn a_moved_stream_no_flow_holds_closes_at_once() {
    let mut f = fixture(settings());
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    f.pool.release(lease, true);
    f.pool.move_peer(f.peer);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), far.stream.read_to_end(&mut rest));
    assert_eq!(read.await.unwrap().unwrap(), 0);
    assert_eq!(f.pool.active_streams(), 0);
    f.pool.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_being_left_outlives_the_idle_cleanup_until_its_flow_lets_go() {
    let mut f = fixture(settings());
    f.pool.start();
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let mut far = f.accepted.recv().await.unwrap();
    f.pool.move_peer(f.peer);
    // Long past the idle timeout: the flow still holds the stream it is to leave.
    tokio::time::advance(Duration::from_secs(300)).await;
    assert!(!lease.sink.is_closed());
    // It lets go: the stream closes.
    f.pool.release(lease, true);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), far.stream.read_to_end(&mut rest));
    assert_eq!(read.await.unwrap().unwrap(), 0);
    f.pool.stop().await;
    assert_eq!(f.streams.live(), 0);
}

#[tokio::test]
async fn a_stream_opened_across_a_move_takes_no_flow() {
    let peer = PeerId::random();
    let (streams, mut accepted) = GatedStreams::new(peer);
    let pool = StreamPool::new(streams.clone(), Arc::new(AtomicMetrics::new()), settings());
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_stream(peer, flow(1)).await }
    });
    settle(|| streams.arrived() == 1).await;
    // The peer's path changes while the open is under way: that stream may run over the
    // old path, so the flow gets the next one.
    pool.move_peer(peer);
    streams.gate.add_permits(2);
    let lease = waiting.await.unwrap().unwrap();
    assert!(!lease.sink.is_moving());
    let mut across = accepted.recv().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), across.stream.read_to_end(&mut rest));
    assert_eq!(read.await.unwrap().unwrap(), 0, "the stream opened across the move closed unused");
    let mut taken = accepted.recv().await.unwrap();
    lease.sink.send_frames(batch(1, 3)).await.unwrap();
    assert_eq!(
        read_frames(&mut taken.stream, 1).await,
        vec![Frame::Packet(Bytes::from_static(&[3; 10]))]
    );
    assert_eq!(streams.inner.opened(), 2);
    pool.release(lease, true);
    pool.stop().await;
}

#[tokio::test]
async fn a_drain_ends_when_its_stream_closes() {
    let mut f = fixture(settings());
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    let far = f.accepted.recv().await.unwrap();
    f.pool.move_peer(f.peer);
    let sink = lease.sink.clone();
    let drain = tokio::spawn(async move { sink.drain(Duration::from_secs(3600)).await });
    // The peer goes away: no answer will come, and the drain does not wait for one.
    drop(far);
    let drained = tokio::time::timeout(Duration::from_secs(30), drain).await;
    assert!(!drained.expect("the drain ended with its stream").unwrap());
    f.pool.release(lease, false);
    f.pool.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_behind_a_stalled_stream_gives_up_within_its_bound() {
    let mut f = fixture_with_buffer(settings().with_writer_queue_capacity(2), 64);
    let lease = f.pool.get_stream(f.peer, flow(1)).await.unwrap();
    // The peer reads nothing: the stream and its queue fill up.
    let _far = f.accepted.recv().await.unwrap();
    let fill = |sink: Arc<dyn vpn_api::FrameSink>| async move {
        tokio::time::timeout(Duration::from_millis(10), sink.send_frames(batch(4, 1))).await
    };
    while fill(lease.sink.clone()).await.is_ok() {}
    f.pool.move_peer(f.peer);
    // Waiting for room in the queue counts against the drain's bound.
    let drain =
        tokio::time::timeout(Duration::from_secs(60), lease.sink.drain(Duration::from_secs(1)));
    assert_eq!(drain.await.ok(), Some(false), "the drain gave up within its bound");
    f.pool.release(lease, false);
    f.pool.stop().await;
}
