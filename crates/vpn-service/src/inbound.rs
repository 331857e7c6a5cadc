//! The receive path: every stream a peer opens to us is served on its own task; its
//! packets pass the receiver checks ([`InboundCheck`]) and reach the TUN in one batch per
//! read, and packets from a source not known yet wait for a lookup within the peer's
//! budgets.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use vpn_api::{MetricsService, PeerId, TunDevice, TunPacket, VpnStream};
use vpn_stream::{InboundEnd, InboundLimits, InboundSink, serve_inbound};
use vpn_types::{Budget, DropReason, GsoInfo, WarnGate};
use vpn_wire::Frame;

use vpn_discovery::LiveRegistry;

use crate::budget::{LookupHold, PeerBudgets, StreamSlot};
use crate::fault::Fault;
use crate::tasks::Tasks;
use crate::{InboundCheck, Verdict};

/// Packets of one stream waiting for their sender's record to be looked up.
const LOOKUP_QUEUE: usize = 256;

/// How a receiver hands packets to its TUN: each inbound stream's reader writes what one
/// read brought, in one batch, before it reads again. There is no queue between the streams
/// and the TUN: while the kernel takes a batch, the stream waits, and the sender's flow
/// control holds its packets back instead of a queue dropping them.
#[derive(Clone)]
pub(crate) struct Delivery {
    pub(crate) tun: Arc<dyn TunDevice>,
    pub(crate) metrics: Arc<dyn MetricsService>,
    /// The TUN takes offload super-packets whole.
    pub(crate) offload: bool,
    pub(crate) fault: Fault,
}

impl Delivery {
    /// Adds an accepted packet to `batch`: an offload super-packet goes whole to a TUN with
    /// offload, and is otherwise cut into the segments the sender's kernel would have sent.
    fn accept(&self, batch: &mut Vec<TunPacket>, packet: Bytes, gso: Option<GsoInfo>) {
        let Some(gso) = gso else {
            return batch.push(TunPacket::new(packet));
        };
        if self.offload {
            return batch.push(TunPacket { data: packet, gso: Some(gso) });
        }
        let mut segments = Vec::new();
        match vpn_utils::segment(&packet, &gso, &mut segments) {
            Ok(()) => batch.extend(segments.into_iter().map(TunPacket::new)),
            Err(_) => self.metrics.record_drop(DropReason::Malformed),
        }
    }

    /// Writes `batch` to the TUN and empties it. Every packet counts as received; those the
    /// kernel does not take count as `tun_error` drops. Errors: the device is gone.
    async fn write(&self, batch: &mut Vec<TunPacket>) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len() as u64;
        let bytes = batch.iter().map(|p| p.data.len() as u64).sum();
        self.metrics.record_received(count, bytes);
        let written = self.tun.send_batch(batch).await;
        batch.clear();
        match written {
            Ok(written) => {
                let lost = count.saturating_sub(written as u64);
                if lost > 0 {
                    self.metrics.record_drops(DropReason::TunError, lost);
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.record_drops(DropReason::TunError, count);
                if e.kind() == io::ErrorKind::BrokenPipe {
                    self.fault.tun_gone(self.tun.as_ref());
                }
                Err(e)
            }
        }
    }
}

/// What every inbound stream shares: the receiver checks, the way to the TUN, and what
/// each peer may make us hold.
pub(crate) struct Receiver {
    pub(crate) check: InboundCheck,
    pub(crate) delivery: Delivery,
    pub(crate) budgets: Arc<PeerBudgets>,
    pub(crate) limits: InboundLimits,
    /// Warnings about what peers did, at most one per peer and kind every few seconds.
    pub(crate) warnings: WarnGate<(PeerId, &'static str)>,
    /// Who may send to us, when the node admits streams itself (a reload can take a peer
    /// out while its stream is open); `None` when the builder was given admitted streams.
    pub(crate) members: Option<Arc<LiveRegistry>>,
}

/// Serves every stream peers open to us, each on its own task (owned by `tasks`), within
/// each peer's stream budget.
pub(crate) async fn serve_peers(
    mut inbound: mpsc::Receiver<Box<dyn VpnStream>>,
    receiver: Arc<Receiver>,
    tasks: Tasks,
) {
    while let Some(mut stream) = inbound.recv().await {
        let peer = stream.peer_id();
        match receiver.budgets.admit_stream(peer) {
            Some(slot) => tasks.spawn(serve_peer(stream, slot, receiver.clone(), tasks.clone())),
            None => {
                stream.reset();
                if let Some(held_back) = receiver.warnings.admit((peer, "streams")) {
                    tracing::warn!(%peer, held_back, "refused an inbound stream: the peer has its budget of streams open");
                }
            }
        }
    }
}

/// A packet waiting for its sender's record: the packet (copied out of the read buffer),
/// its offload info, and its bytes' place in the peer's budget.
pub(crate) type Waiting = (Bytes, Option<GsoInfo>, LookupHold);

/// The receiver checks of one inbound stream, in front of its TUN batch.
pub(crate) struct PeerSink<'a> {
    peer: PeerId,
    receiver: &'a Receiver,
    /// Packets whose source this node cannot place yet, to be looked up.
    unknown: &'a mpsc::Sender<Waiting>,
    batch: Vec<TunPacket>,
    /// Whether the sender is a member, asked once per read (a certified member's answer
    /// takes a lock and the clock) and again when the read is flushed.
    member: Option<bool>,
}

impl<'a> PeerSink<'a> {
    /// The checks of `peer`'s packets, with packets of sources not known yet queued on
    /// `unknown`.
    pub(crate) fn new(
        peer: PeerId,
        receiver: &'a Receiver,
        unknown: &'a mpsc::Sender<Waiting>,
    ) -> Self {
        Self { peer, receiver, unknown, batch: Vec::new(), member: None }
    }

    /// Whether the sender may still send to us (a reload can take it out while its stream
    /// is open, a certificate can run out).
    fn ask_membership(&self) -> bool {
        self.receiver.members.as_ref().is_none_or(|members| members.is_member(&self.peer))
    }

    /// [`PeerSink::ask_membership`], answered once for the packets of one read.
    fn is_member(&mut self) -> bool {
        if let Some(member) = self.member {
            return member;
        }
        let member = self.ask_membership();
        self.member = Some(member);
        member
    }

    /// Packets accepted and waiting for the TUN.
    pub(crate) fn pending(&self) -> usize {
        self.batch.len()
    }

    /// Judges one packet: into the TUN batch, the lookup queue, or counted as dropped.
    pub(crate) fn judge(&mut self, packet: Bytes, gso: Option<GsoInfo>) {
        let Receiver { check, delivery, budgets, .. } = self.receiver;
        if !self.is_member() {
            // Neither delivered nor looked up; the stream is reset at the end of this read.
            return delivery.metrics.record_drop(DropReason::NotMember);
        }
        match check.check(&self.peer, &packet) {
            Verdict::Accept => delivery.accept(&mut self.batch, packet, gso),
            Verdict::Drop(reason) => delivery.metrics.record_drop(reason),
            Verdict::LookUp(_) => {
                let Some(hold) = budgets.hold_for_lookup(self.peer, packet.len()) else {
                    return delivery.metrics.record_drop(DropReason::OverBudget);
                };
                // A copy, so a waiting packet holds its own bytes and not the read buffer
                // it arrived in.
                let packet = Bytes::copy_from_slice(&packet);
                if self.unknown.try_send((packet, gso, hold)).is_err() {
                    delivery.metrics.record_drop(DropReason::QueueFull);
                }
            }
        }
    }
}

impl InboundSink for PeerSink<'_> {
    fn frame(&mut self, frame: Frame) {
        match frame {
            Frame::Packet(packet) => self.judge(packet, None),
            // The segmentation is worked out from the packet; a header that disagrees is
            // malformed. What reaches the TUN (or the segmenter) is the derived header, so
            // the checks on the super-packet hold for every segment it becomes.
            Frame::Segmented { header, packet } => {
                let derived = header
                    .to_gso(packet.len())
                    .ok()
                    .and_then(|claimed| vpn_utils::super_packet_gso(&packet, &claimed).ok());
                match derived {
                    Some(gso) => self.judge(packet, Some(gso)),
                    None => self.receiver.delivery.metrics.record_drop(DropReason::Malformed),
                }
            }
            _ => {}
        }
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.member = None;
        let (receiver, member) = (self.receiver, self.ask_membership());
        let batch = &mut self.batch;
        async move {
            if !member {
                // A reload took the peer out: what it sent is dropped and its stream reset.
                receiver.delivery.metrics.record_drops(DropReason::NotMember, batch.len() as u64);
                batch.clear();
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the peer is no longer a member",
                ));
            }
            receiver.delivery.write(batch).await
        }
    }
}

/// The verdict on a packet that waited for a lookup: known by now (an earlier lookup
/// answered), or looked up within the peer's rate of lookups.
async fn judge_after_lookup(receiver: &Receiver, peer: PeerId, packet: &[u8]) -> Verdict {
    match receiver.check.check(&peer, packet) {
        Verdict::LookUp(src) if receiver.budgets.start_lookup(peer) => {
            receiver.check.check_after_lookup(&peer, src).await
        }
        Verdict::LookUp(_) => Verdict::Drop(DropReason::OverBudget),
        verdict => verdict,
    }
}

/// Starts the task that judges `peer`'s packets whose source was not known, in order, once
/// looked up. Returns where to queue them, and what tells that the task has ended (the
/// packets waiting still count against the peer's budgets until then).
pub(crate) fn spawn_lookups(
    receiver: &Arc<Receiver>,
    peer: PeerId,
    tasks: &Tasks,
) -> (mpsc::Sender<Waiting>, tokio::sync::oneshot::Receiver<()>) {
    let (unknown, mut waiting) = mpsc::channel::<Waiting>(LOOKUP_QUEUE);
    // Tells the caller the lookup task has ended (the sender is dropped with the task,
    // whether it finished or was stopped).
    let (lookups_done, lookups_ended) = tokio::sync::oneshot::channel::<()>();
    let receiver = receiver.clone();
    tasks.spawn(async move {
        let _done = lookups_done;
        let mut batch = Vec::new();
        let delivery = &receiver.delivery;
        while let Some((packet, gso, hold)) = waiting.recv().await {
            match judge_after_lookup(&receiver, peer, &packet).await {
                Verdict::Accept => delivery.accept(&mut batch, packet, gso),
                Verdict::Drop(reason) => delivery.metrics.record_drop(reason),
                Verdict::LookUp(_) => delivery.metrics.record_drop(DropReason::Spoofed),
            }
            drop(hold);
            if delivery.write(&mut batch).await.is_err() {
                return;
            }
        }
    });
    (unknown, lookups_ended)
}

/// Serves one inbound stream: its frames pass the receiver checks into TUN batches; packets
/// whose source is not known yet wait for a lookup on a second task, in order. Ends when
/// the stream does; the peer's stream slot is held until then.
async fn serve_peer(
    stream: Box<dyn VpnStream>,
    slot: StreamSlot,
    receiver: Arc<Receiver>,
    tasks: Tasks,
) {
    let peer = stream.peer_id();
    let metrics = receiver.delivery.metrics.clone();
    let (unknown, lookups_ended) = spawn_lookups(&receiver, peer, &tasks);
    let sink = PeerSink::new(peer, &receiver, &unknown);
    let end = serve_inbound(stream, sink, receiver.limits).await;
    drop(unknown);
    // The packets waiting for a lookup still count against the peer's budgets.
    let _ = lookups_ended.await;
    drop(slot);
    match end {
        InboundEnd::Closed => {}
        InboundEnd::Protocol(e) => {
            metrics.record_stream_error();
            if let Some(held_back) = receiver.warnings.admit((peer, "protocol")) {
                tracing::warn!(%peer, error = %e, held_back, "peer broke the wire protocol; stream reset");
            }
        }
        // The fault (no TUN, or no longer a member) was counted where it was met.
        InboundEnd::Sink(e) => {
            tracing::debug!(%peer, error = %e, "inbound stream reset by the receiver")
        }
        InboundEnd::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        InboundEnd::Io(e) => tracing::debug!(%peer, error = %e, "inbound stream ended"),
        InboundEnd::Idle => {
            metrics.record_budget_exceeded(Budget::IdleStream);
            tracing::debug!(%peer, "inbound stream reset: it sent nothing for the idle limit");
        }
        InboundEnd::Stalled => {
            metrics.record_budget_exceeded(Budget::StalledStream);
            tracing::debug!(%peer, "inbound stream reset: it did not take our reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpn_metrics::AtomicMetrics;
    use vpn_testutil::mocks::MockTun;

    fn packet(n: u8) -> TunPacket {
        TunPacket::new(Bytes::from(vec![n; 20]))
    }

    #[tokio::test]
    async fn tun_writes_count_what_the_kernel_did_not_take_and_stop_when_it_is_gone() {
        let mut tun = MockTun::new();
        let mut sequence = mockall::Sequence::new();
        // First batch: the kernel takes all but one; second: all; then the device is gone.
        tun.expect_send_batch().times(1).in_sequence(&mut sequence).returning(|p| Ok(p.len() - 1));
        tun.expect_send_batch().times(1).in_sequence(&mut sequence).returning(|p| Ok(p.len()));
        tun.expect_send_batch()
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_| Err(io::Error::from(io::ErrorKind::BrokenPipe)));
        tun.expect_name().return_const("vpn-test".to_owned());
        let metrics = Arc::new(AtomicMetrics::new());
        let fault = Fault::default();
        let delivery =
            Delivery { tun: Arc::new(tun), metrics: metrics.clone(), offload: false, fault };
        let mut batch = Vec::new();
        // An empty batch does not reach the device.
        delivery.write(&mut batch).await.unwrap();
        for round in 0..3u8 {
            batch.push(packet(round));
            batch.push(packet(round));
            let written = delivery.write(&mut batch).await;
            assert!(batch.is_empty());
            assert_eq!(written.is_err(), round == 2);
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.drops[DropReason::TunError.index()], 1 + 2);
        assert_eq!(snapshot.packets_received, 6);
        let fault = delivery.fault.raised();
        assert_eq!(fault.as_deref(), Some("the TUN device vpn-test is gone"));
    }
}
