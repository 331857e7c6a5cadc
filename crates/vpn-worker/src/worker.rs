use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::QueuedPacket;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use vpn_api::{DatagramPath, FrameBatch, StreamLease};
use vpn_errors::{NetworkErrorKind, ServiceErrorKind, VpnError};
use vpn_types::{BudgetPermit, DropReason, FlowKey};
use vpn_wire::{FRAME_HEADER_LEN, MAX_FRAME, SEGMENT_HEADER_LEN};

use crate::WorkerContext;

/// Packet bytes after which a batch takes no more packets: a batch of offload super-packets
/// is then a few of them, not `batch_max` (up to 4 MiB), so the buffers frames are encoded
/// into stay small and alike, and a burst does not leave the allocator holding large ones.
const BATCH_BYTES: usize = 256 * 1024;
/// How long a flow waits for the peer to confirm it took everything sent on a stream the
/// flow leaves (see `FrameSink::drain`); past it, or past half the send timeout, the flow
/// moves anyway: the batch waiting for the drain must still go out in time.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A worker's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerFigures {
    /// Packets handed to a stream.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Batches that could not be handed over.
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Stats {
    packets: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    last_active_ms: AtomicU64,
}

/// The dispatcher's side of a running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    tx: mpsc::Sender<QueuedPacket>,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
    capacity: usize,
}

impl WorkerHandle {
    /// Queues a packet without waiting; gives it back when the queue is full or the worker
    /// has ended.
    pub fn try_send(
        &self,
        packet: QueuedPacket,
    ) -> Result<(), mpsc::error::TrySendError<QueuedPacket>> {
        self.tx.try_send(packet)
    }

    /// Packets waiting in the queue.
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Whether the worker's task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// How long the worker has had nothing to do, as of `now_ms` on its context's clock.
    pub fn idle_for(&self, ctx: &WorkerContext) -> Duration {
        let last = self.stats.last_active_ms.load(Ordering::Acquire);
        Duration::from_millis(ctx.now_ms().saturating_sub(last))
    }

    /// The worker's figures now.
    pub fn figures(&self) -> WorkerFigures {
        WorkerFigures {
            packets: self.stats.packets.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
        }
    }

    /// Closes the queue and waits for the worker to send what it holds and end.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// One flow's worker. See the crate docs for what it does.
pub struct Worker {
    key: FlowKey,
    ctx: Arc<WorkerContext>,
    rx: mpsc::Receiver<QueuedPacket>,
    stats: Arc<Stats>,
    lease: Option<StreamLease>,
    buf: BytesMut,
    /// The datagrams of one batch, kept for the next.
    datagrams: Vec<bytes::Bytes>,
}

/// What became of a batch that was not handed over.
fn reason_of(err: &VpnError) -> DropReason {
    match (err.network_kind(), err.service_kind()) {
        (Some(NetworkErrorKind::NoPeer), _) => DropReason::NoPeer,
        (Some(NetworkErrorKind::CircuitOpen), _) => DropReason::CircuitOpen,
        (Some(NetworkErrorKind::Timeout), _) => DropReason::Timeout,
        (_, Some(ServiceErrorKind::Stopped)) => DropReason::Shutdown,
        _ => DropReason::StreamError,
    }
}

/// The largest datagram a packet becomes: itself, or a super-packet's largest segment.
/// A batch with a packet larger than the datagram path carries goes on a stream (which has
/// no MTU), so no packet is lost for its size.
fn datagram_size(packet: &QueuedPacket) -> usize {
    match &packet.gso {
        Some(gso) => usize::from(gso.hdr_len) + usize::from(gso.gso_size),
        None => packet.data.len(),
    }
}

/// Whether a packet fits in one frame.
fn fits(packet: &QueuedPacket) -> bool {
    let header = if packet.gso.is_some() { SEGMENT_HEADER_LEN } else { 0 };
    header + packet.data.len() < MAX_FRAME
}

impl Worker {
    /// Starts the worker for `key` and returns its handle.
    pub fn spawn(key: FlowKey, ctx: Arc<WorkerContext>) -> WorkerHandle {
        let capacity = ctx.settings.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(Stats::default());
        stats.last_active_ms.store(ctx.now_ms(), Ordering::Release);
        let worker = Worker {
            key,
            ctx,
            rx,
            stats: stats.clone(),
            lease: None,
            buf: BytesMut::new(),
            datagrams: Vec::new(),
        };
        WorkerHandle { tx, stats, task: tokio::spawn(worker.run()), capacity }
    }

    async fn run(mut self) {
        let batch_max = self.ctx.settings.batch_max.max(1);
        let mut batch = Vec::with_capacity(batch_max);
        while let Some(first) = self.rx.recv().await {
            let mut bytes = first.data.len();
            batch.push(first);
            while batch.len() < batch_max && bytes < BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(packet) => {
                        bytes += packet.data.len();
                        batch.push(packet);
                    }
                    Err(_) => break,
                }
            }
            self.handle(&mut batch).await;
            self.stats.last_active_ms.store(self.ctx.now_ms(), Ordering::Release);
            batch.clear();
        }
        if let Some(lease) = self.lease.take() {
            self.ctx.pool.release(lease, true);
        }
    }

    /// Sends one batch within the time bound, and reports every packet's fate.
    async fn handle(&mut self, batch: &mut Vec<QueuedPacket>) {
        let metrics = self.ctx.metrics.clone();
        batch.retain_mut(|packet| {
            let fits = fits(packet);
            if !fits {
                metrics.record_drop(DropReason::TooLarge);
                packet.complete(Err(DropReason::TooLarge));
            }
            fits
        });
        if batch.is_empty() {
            return;
        }
        let limit = self.ctx.settings.send_timeout;
        let outcome = match tokio::time::timeout(limit, self.send(batch)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(DropReason::Timeout),
        };
        let result = match outcome {
            Ok((packets, bytes)) => {
                self.stats.packets.fetch_add(packets, Ordering::Relaxed);
                self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(reason) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.ctx.metrics.record_drops(reason, batch.len() as u64);
                tracing::debug!(flow = %self.key, %reason, packets = batch.len(), "batch dropped");
                Err(reason)
            }
        };
        for packet in batch.iter_mut() {
            packet.complete(result);
        }
    }

    /// Resolves the peer, makes sure of a lease, and hands the batch's frames to its stream.
    async fn send(&mut self, batch: &mut [QueuedPacket]) -> Result<(u64, u64), DropReason> {
        let peer =
            self.ctx.discovery.peer_for_ip(self.key.dst_ip).await.map_err(|e| reason_of(&e))?;
        if let Some(path) = self.ctx.datagrams.as_ref().and_then(|paths| paths.path(&peer)) {
            let max = path.max_packet();
            let mtu = u16::try_from(max).unwrap_or(u16::MAX);
            // A packet too big for the path is answered with an ICMP error where one may be
            // sent (its sender then sends smaller ones); otherwise the batch takes a stream,
            // which has no MTU.
            let fits = |p: &QueuedPacket| {
                datagram_size(p) <= max || vpn_utils::too_big_reply(&p.data, mtu).is_some()
            };
            if batch.iter().all(fits) {
                return self.send_datagrams(path.as_ref(), batch).await;
            }
        }
        if let Some(lease) = &self.lease
            && lease.peer == peer
            && lease.sink.is_moving()
            && !lease.sink.is_closed()
        {
            // The peer has a better path: what the flow sent on the old one is delivered
            // before anything goes on the new one. The lease stays held meanwhile, so a
            // drain cut short is done again with the next batch.
            let sink = lease.sink.clone();
            let within = DRAIN_LIMIT.min(self.ctx.settings.send_timeout / 2);
            if !sink.drain(within).await {
                tracing::debug!(flow = %self.key, "moving on without the old stream's confirmation");
            }
        }
        if let Some(lease) =
            self.lease.take_if(|l| l.peer != peer || l.sink.is_closed() || l.sink.is_moving())
        {
            // A closed stream failed; a new owner of the address, or a stream the flow
            // moves off, is not the stream's fault.
            let healthy = !lease.sink.is_closed() || lease.sink.is_moving();
            self.ctx.pool.release(lease, healthy);
        }
        let lease = match &self.lease {
            Some(lease) => lease.clone(),
            None => {
                let opened = self.ctx.opener.clone().oneshot((peer, self.key)).await;
                let lease = opened.map_err(|e| reason_of(&e))?;
                self.lease = Some(lease.clone());
                lease
            }
        };
        let batch = self.encode(batch);
        let (packets, bytes) = (batch.packets, batch.packet_bytes);
        if let Err(e) = lease.sink.send_frames(batch).await {
            if let Some(lease) = self.lease.take() {
                self.ctx.pool.release(lease, false);
            }
            return Err(reason_of(&e));
        }
        Ok((packets, bytes))
    }

    /// Sends the batch as datagrams, each packet (or each segment of a super-packet) in
    /// one. A stream the flow used before is drained first, so nothing the flow sent on
    /// it arrives after the datagrams that follow.
    async fn send_datagrams(
        &mut self,
        path: &dyn DatagramPath,
        batch: &mut [QueuedPacket],
    ) -> Result<(u64, u64), DropReason> {
        // The lease stays held while the stream drains: a drain cut short (the send timed
        // out) leaves it to be drained and released with the next batch.
        if let Some(sink) = self.lease.as_ref().map(|l| l.sink.clone()) {
            let within = DRAIN_LIMIT.min(self.ctx.settings.send_timeout / 2);
            if !sink.is_closed() && !sink.drain(within).await {
                tracing::debug!(flow = %self.key, "moving to datagrams without the stream's confirmation");
            }
        }
        if let Some(lease) = self.lease.take() {
            self.ctx.pool.release(lease, true);
        }
        let datagrams = &mut self.datagrams;
        datagrams.clear();
        let metrics = &self.ctx.metrics;
        let max = path.max_packet();
        let mtu = u16::try_from(max).unwrap_or(u16::MAX);
        for packet in batch.iter() {
            if datagram_size(packet) > max {
                // Counted before the answer goes out: whoever reads the answer sees the drop.
                metrics.record_drop(DropReason::TooLarge);
                if let Some(reply) = vpn_utils::too_big_reply(&packet.data, mtu) {
                    path.send_back(Bytes::from(reply)).await;
                }
                continue;
            }
            match &packet.gso {
                Some(gso) => {
                    if vpn_utils::segment(&packet.data, gso, datagrams).is_err() {
                        metrics.record_drop(DropReason::Malformed);
                    }
                }
                None => datagrams.push(packet.data.clone()),
            }
        }
        let bytes: u64 = datagrams.iter().map(|d| d.len() as u64).sum();
        let sent = path.send(datagrams).await.map_err(|e| reason_of(&e))?;
        let packets = sent as u64;
        self.ctx.metrics.record_sent(packets, bytes);
        self.ctx.metrics.record_datagrams(packets, 0);
        Ok((packets, bytes))
    }

    /// Encodes the batch into one buffer of frames (every packet fits: checked before); the
    /// packets' budget permits go with it.
    fn encode(&mut self, batch: &mut [QueuedPacket]) -> FrameBatch {
        let total: usize =
            batch.iter().map(|p| FRAME_HEADER_LEN + SEGMENT_HEADER_LEN + p.data.len()).sum();
        self.buf.reserve(total);
        let mut packet_bytes = 0;
        let mut permit: Option<BudgetPermit> = None;
        for packet in batch.iter_mut() {
            if let Some(one) = packet.permit.take() {
                match permit.as_mut() {
                    Some(all) => all.absorb(one),
                    None => permit = Some(one),
                }
            }
            let encoded = match &packet.gso {
                Some(gso) => vpn_wire::encode_segmented(&mut self.buf, gso, &packet.data),
                None => vpn_wire::encode_packet(&mut self.buf, &packet.data),
            };
            debug_assert!(encoded.is_ok(), "sizes were checked");
            packet_bytes += packet.data.len() as u64;
        }
        let frames = self.buf.split().freeze();
        FrameBatch { frames, packets: batch.len() as u64, packet_bytes, permit }
    }
}
