//! One pooled stream: its shared state, and the task that owns the stream.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vpn_api::PeerId;
use vpn_api::{FrameBatch, FrameSink, MetricsService, VpnStream};
use vpn_errors::{NetworkError, NetworkErrorKind, VpnError};
use vpn_types::DropReason;
use vpn_wire::{Frame, FrameDecoder};

use crate::liveness::{Liveness, PeerCounters};

/// Most bytes gathered from queued batches into one write.
const COALESCE_BYTES: usize = 256 * 1024;
/// A graceful close may take this long before the stream is dropped.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// Milliseconds on the pool's clock (tokio's, so paused-clock tests drive it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self { epoch: Instant::now() }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// How a stream is to end when the pool lets it go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Write what is queued, then close the write side.
    Graceful,
    /// Abort at once: the peer stopped answering.
    Reset,
}

/// The state of one pooled stream shared by the pool, the health checker and its task.
#[derive(Debug)]
pub(crate) struct PooledStream {
    pub(crate) id: u64,
    pub(crate) peer: PeerId,
    tx: mpsc::Sender<FrameBatch>,
    closed: AtomicBool,
    healthy: AtomicBool,
    leases: AtomicUsize,
    /// Any write, PINGs included: a stream that writes proves itself without a PING.
    last_write_ms: AtomicU64,
    /// The last write that carried packets: what the pool's idle clean-up goes by, so that
    /// the health checker's PINGs do not keep an unused stream open for ever.
    last_data_ms: AtomicU64,
    clock: Clock,
    stop: CancellationToken,
    reset_on_stop: AtomicBool,
    pub(crate) liveness: Mutex<Liveness>,
    pub(crate) counters: Arc<PeerCounters>,
    /// Flows are to leave this stream (see [`FrameSink::is_moving`]).
    moving: AtomicBool,
    /// The last drain PING sent and the last answered (counters; see [`DRAIN_TAG`]).
    drains_sent: AtomicU64,
    drains_answered: AtomicU64,
    /// Woken when a drain PING is answered.
    drained: tokio::sync::Notify,
}

/// The top bit of a drain PING's nonce; the health checker's nonces have it clear. A
/// drain's PONG means the peer has delivered everything sent before it (the acceptor
/// answers a read's PINGs after writing its packets), and PONGs come back in order, so
/// one answer covers every earlier drain.
pub(crate) const DRAIN_TAG: u64 = 1 << 63;

impl PooledStream {
    /// Starts the task that owns `stream` and returns the shared state.
    pub(crate) fn spawn(
        id: u64,
        stream: Box<dyn VpnStream>,
        queue: usize,
        clock: Clock,
        counters: Arc<PeerCounters>,
        metrics: Arc<dyn MetricsService>,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let shared = Arc::new(Self {
            id,
            peer: stream.peer_id(),
            tx,
            closed: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            leases: AtomicUsize::new(0),
            last_write_ms: AtomicU64::new(clock.now_ms()),
            last_data_ms: AtomicU64::new(clock.now_ms()),
            clock,
            stop: CancellationToken::new(),
            reset_on_stop: AtomicBool::new(false),
            liveness: Mutex::new(Liveness::default()),
            counters,
            moving: AtomicBool::new(false),
            drains_sent: AtomicU64::new(0),
            drains_answered: AtomicU64::new(0),
            drained: tokio::sync::Notify::new(),
        });
        tracker.spawn(StreamTask { stream, rx, shared: shared.clone(), metrics }.run());
        shared
    }

    /// Open and healthy: new leases may go to it.
    pub(crate) fn usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.healthy.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn leases(&self) -> usize {
        self.leases.load(Ordering::Acquire)
    }

    pub(crate) fn add_lease(&self) {
        self.leases.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn drop_lease(&self) {
        let _ = self.leases.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Time since the last successful write of any kind.
    pub(crate) fn idle_for(&self) -> Duration {
        self.since(&self.last_write_ms)
    }

    /// Time since the last successful write that carried packets.
    pub(crate) fn data_idle_for(&self) -> Duration {
        self.since(&self.last_data_ms)
    }

    fn since(&self, mark: &AtomicU64) -> Duration {
        let last = mark.load(Ordering::Acquire);
        Duration::from_millis(self.clock.now_ms().saturating_sub(last))
    }

    /// Lets the stream go: no new leases; its task closes it gracefully or resets it.
    pub(crate) fn retire(&self, reset: bool) {
        self.healthy.store(false, Ordering::Release);
        if reset {
            self.reset_on_stop.store(true, Ordering::Release);
        }
        self.stop.cancel();
    }

    /// Queues a PING without waiting; false when the writer's queue is full or closed.
    pub(crate) fn try_ping(&self, nonce: [u8; 8]) -> bool {
        let mut frames = BytesMut::with_capacity(Frame::Ping(nonce).encoded_len());
        vpn_wire::encode_ping(&mut frames, nonce);
        let batch = FrameBatch { frames: frames.freeze(), ..FrameBatch::default() };
        self.tx.try_send(batch).is_ok()
    }

    /// Flows are to leave the stream: no new leases; those holding it drain it and move.
    /// One no flow holds closes gracefully at once.
    pub(crate) fn start_moving(&self) {
        self.moving.store(true, Ordering::Release);
        self.healthy.store(false, Ordering::Release);
        if self.leases() == 0 {
            self.stop.cancel();
        }
    }

    /// A PONG arrived: the stream is alive, whichever PING it answers.
    fn on_pong(&self, nonce: [u8; 8]) {
        let value = u64::from_be_bytes(nonce);
        if value & DRAIN_TAG != 0 {
            self.drains_answered.fetch_max(value & !DRAIN_TAG, Ordering::AcqRel);
            self.drained.notify_waiters();
        }
        let rtt =
            self.liveness.lock().unwrap_or_else(|e| e.into_inner()).pong(nonce, Instant::now());
        if let Some(rtt) = rtt {
            self.counters.pong(rtt);
        }
    }

    fn closed_error(&self) -> VpnError {
        VpnError::Network(
            NetworkError::new(NetworkErrorKind::StreamClosed, "queue frames").with_peer(self.peer),
        )
    }
}

#[async_trait]
impl FrameSink for PooledStream {
    async fn send_frames(&self, batch: FrameBatch) -> Result<(), VpnError> {
        if self.is_closed() {
            return Err(self.closed_error());
        }
        self.tx.send(batch).await.map_err(|_| self.closed_error())
    }

    fn is_closed(&self) -> bool {
        PooledStream::is_closed(self)
    }

    fn is_moving(&self) -> bool {
        self.moving.load(Ordering::Acquire)
    }

    async fn drain(&self, within: Duration) -> bool {
        let mine = self.drains_sent.fetch_add(1, Ordering::AcqRel) + 1;
        let nonce = (mine | DRAIN_TAG).to_be_bytes();
        let mut frames = BytesMut::with_capacity(Frame::Ping(nonce).encoded_len());
        vpn_wire::encode_ping(&mut frames, nonce);
        let batch = FrameBatch { frames: frames.freeze(), ..FrameBatch::default() };
        // The bound covers the wait for room in a full queue too: a stalled stream is when
        // a flow most wants to leave it.
        let answered = async {
            if self.send_frames(batch).await.is_err() {
                return false;
            }
            loop {
                // Created before the checks: an answer between them still wakes it.
                let woken = self.drained.notified();
                if self.drains_answered.load(Ordering::Acquire) >= mine {
                    return true;
                }
                if self.is_closed() {
                    // No answer will come; what was queued was written or counted.
                    return false;
                }
                woken.await;
            }
        };
        matches!(tokio::time::timeout(within, answered).await, Ok(true))
    }
}

/// Why the task's loop ended.
enum End {
    /// Told to stop, or every sender is gone.
    Stopped,
    /// The stream failed (write or read error, protocol violation, end of stream).
    Failed(io::Error),
}

/// The task that owns one stream: writes queued batches (coalesced into large writes) and
/// reads the PONGs that come back.
struct StreamTask {
    stream: Box<dyn VpnStream>,
    rx: mpsc::Receiver<FrameBatch>,
    shared: Arc<PooledStream>,
    metrics: Arc<dyn MetricsService>,
}

impl StreamTask {
    async fn run(mut self) {
        let mut out = BytesMut::new();
        let mut inbound = BytesMut::with_capacity(64);
        let mut decoder = FrameDecoder::new();
        let end = loop {
            tokio::select! {
                biased;
                () = self.shared.stop.cancelled() => break End::Stopped,
                batch = self.rx.recv() => match batch {
                    Some(batch) => {
                        if let Err(e) = self.write(batch, &mut out, true).await {
                            break End::Failed(e);
                        }
                    }
                    None => break End::Stopped,
                },
                read = self.stream.read_buf(&mut inbound) => {
                    if let Err(e) = read.and_then(|n| self.on_read(n, &mut decoder, &mut inbound)) {
                        break End::Failed(e);
                    }
                }
            }
        };
        self.finish(end).await;
    }

    /// Writes `first` and whatever else is queued, up to [`COALESCE_BYTES`], in one write,
    /// and counts the packets as sent or dropped. A `cancellable` write gives up when the
    /// stream is told to reset; told to close, it gets [`SHUTDOWN_LIMIT`] to finish, so
    /// that the stream does not end inside a frame.
    async fn write(
        &mut self,
        first: FrameBatch,
        out: &mut BytesMut,
        cancellable: bool,
    ) -> io::Result<()> {
        let (mut packets, mut bytes) = (first.packets, first.packet_bytes);
        let data: Bytes =
            if !cancellable || first.frames.len() >= COALESCE_BYTES || self.rx.is_empty() {
                first.frames
            } else {
                // Batches are at most a few hundred KiB (the workers bound them), so the
                // buffer stays within one batch of the bound.
                out.reserve(COALESCE_BYTES);
                out.extend_from_slice(&first.frames);
                while out.len() < COALESCE_BYTES {
                    let Ok(next) = self.rx.try_recv() else { break };
                    out.extend_from_slice(&next.frames);
                    packets += next.packets;
                    bytes += next.packet_bytes;
                }
                out.split().freeze()
            };
        let shared = self.shared.clone();
        let result = {
            let write = async {
                self.stream.write_all(&data).await?;
                self.stream.flush().await
            };
            tokio::pin!(write);
            tokio::select! {
                result = &mut write => result,
                () = shared.stop.cancelled(), if cancellable => {
                    if shared.reset_on_stop.load(Ordering::Acquire) {
                        Err(io::Error::from(io::ErrorKind::Interrupted))
                    } else {
                        tokio::time::timeout(SHUTDOWN_LIMIT, &mut write)
                            .await
                            .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                self.metrics.record_sent(packets, bytes);
                let now = self.shared.clock.now_ms();
                self.shared.last_write_ms.store(now, Ordering::Release);
                if packets > 0 {
                    self.shared.last_data_ms.store(now, Ordering::Release);
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.record_drops(DropReason::StreamError, packets);
                Err(e)
            }
        }
    }

    /// Handles `n` bytes read: only PONGs may come back on a stream we opened.
    fn on_read(
        &self,
        n: usize,
        decoder: &mut FrameDecoder,
        inbound: &mut BytesMut,
    ) -> io::Result<()> {
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        while let Some(frame) = decoder.decode(inbound).map_err(io::Error::other)? {
            match frame {
                Frame::Pong(nonce) => self.shared.on_pong(nonce),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "peer sent data on our stream",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Marks the stream closed, counts what can no longer be written, and closes it.
    async fn finish(mut self, end: End) {
        self.shared.closed.store(true, Ordering::Release);
        // A drain waiting for an answer that cannot come now ends at once.
        self.shared.drained.notify_waiters();
        self.rx.close();
        let reset = self.shared.reset_on_stop.load(Ordering::Acquire);
        match &end {
            End::Failed(e) if e.kind() != io::ErrorKind::Interrupted => {
                self.metrics.record_stream_error();
                tracing::debug!(peer = %self.shared.peer, stream = self.shared.id, error = %e, "stream failed");
            }
            _ => {}
        }
        // A failed stream may have stopped inside a frame: only a reset tells the peer so.
        let ending =
            if reset || matches!(end, End::Failed(_)) { Ending::Reset } else { Ending::Graceful };
        if ending == Ending::Graceful && matches!(end, End::Stopped) {
            // Write what was queued before the stop, as far as the stream takes it in time.
            let mut out = BytesMut::new();
            while let Ok(batch) = self.rx.try_recv() {
                let packets = batch.packets;
                match tokio::time::timeout(SHUTDOWN_LIMIT, self.write(batch, &mut out, false)).await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        self.metrics.record_drops(DropReason::StreamError, packets);
                        break;
                    }
                }
            }
        }
        while let Ok(batch) = self.rx.try_recv() {
            self.metrics.record_drops(DropReason::StreamError, batch.packets);
        }
        match ending {
            Ending::Reset => self.stream.reset(),
            Ending::Graceful => {
                let _ = tokio::time::timeout(SHUTDOWN_LIMIT, self.stream.shutdown()).await;
            }
        }
    }
}
