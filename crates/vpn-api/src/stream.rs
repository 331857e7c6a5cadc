use std::fmt;
use std::sync::Arc;

use crate::PeerId;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use vpn_errors::VpnError;
use vpn_types::{BudgetPermit, FlowKey};

/// One byte stream to a peer, speaking `/vpn-node/packet/1`.
///
/// Reads and writes follow tokio's `AsyncRead`/`AsyncWrite`; `poll_shutdown` closes the
/// write side gracefully.
pub trait VpnStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The peer at the other end, as authenticated by the connection.
    fn peer_id(&self) -> PeerId;

    /// Aborts the stream at once: pending data is discarded and the other end's reads and
    /// writes fail with a connection-reset error. Harmless when already closed.
    fn reset(&mut self);
}

/// Opens VPN streams.
#[async_trait]
pub trait StreamService: Send + Sync {
    /// Opens a new stream to `peer`, dialing it first if there is no connection. Waits on
    /// the network.
    ///
    /// Errors: a network error of kind `Unreachable` (no address or dial failed),
    /// `ConnectionRefused` (the peer does not serve the protocol or refused us), or
    /// `Timeout`.
    async fn open_stream(&self, peer: PeerId) -> Result<Box<dyn VpnStream>, VpnError>;
}

/// Whole encoded frames for one stream, with the packets they carry counted, so that the
/// writer can count them as sent once written, or as dropped if the stream fails first.
#[derive(Debug, Default)]
pub struct FrameBatch {
    /// One or more whole frames.
    pub frames: Bytes,
    /// IP packets (or offload super-packets) carried.
    pub packets: u64,
    /// Bytes of those packets, without frame headers.
    pub packet_bytes: u64,
    /// The packets' share of the outbound byte budget, given back once the frames are
    /// written (or dropped).
    pub permit: Option<BudgetPermit>,
}

/// Where a stream lease's frames go: the single writer task of one pooled stream, which
/// coalesces what it is given into large writes.
///
/// Accounting is exact: a batch accepted here is later counted by the writer as sent
/// (written) or dropped (`stream_error`, the stream failed first); a batch refused here is
/// the caller's to count.
#[async_trait]
pub trait FrameSink: Send + Sync {
    /// Queues `batch` for the stream. Waits only while the writer's queue is full, and
    /// queues nothing if the future is dropped while waiting.
    ///
    /// Errors: a network error of kind `StreamClosed` once the stream has failed or closed;
    /// nothing of `batch` was queued then.
    async fn send_frames(&self, batch: FrameBatch) -> Result<(), VpnError>;

    /// Whether the stream is known to be closed or failed.
    fn is_closed(&self) -> bool;

    /// Whether flows are to leave this stream for a better one (its peer got a direct
    /// connection while this stream runs through a relay): its holder drains it with
    /// [`FrameSink::drain`] and takes another, so no packet of a flow overtakes an earlier
    /// one.
    fn is_moving(&self) -> bool {
        false
    }

    /// Waits until the peer has taken everything queued on the stream before this call
    /// (at most `within`); whether it confirmed that in time.
    async fn drain(&self, within: std::time::Duration) -> bool {
        let _ = within;
        true
    }
}

/// A flow's hold on one pooled stream. Hand it back with
/// [`StreamPoolService::release`].
#[derive(Clone)]
pub struct StreamLease {
    /// The peer the stream goes to.
    pub peer: PeerId,
    /// The pool's identifier of the stream.
    pub stream_id: u64,
    /// The stream's writer.
    pub sink: Arc<dyn FrameSink>,
}

impl fmt::Debug for StreamLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLease")
            .field("peer", &self.peer)
            .field("stream_id", &self.stream_id)
            .field("closed", &self.sink.is_closed())
            .finish()
    }
}

/// Keeps a few streams open to each peer and lends them to flows.
#[async_trait]
pub trait StreamPoolService: Send + Sync {
    /// A lease on a stream to `peer` for `flow`. While that stream stays healthy, the same
    /// flow gets the same stream, so its packets stay in order; several flows may share a
    /// stream. Opens a stream when the peer has none (or all are busy and the maximum is
    /// not reached), so it may wait on the network; no lock is held while it does.
    ///
    /// Errors: whatever opening the stream failed with (see [`StreamService`]).
    async fn get_stream(&self, peer: PeerId, flow: FlowKey) -> Result<StreamLease, VpnError>;

    /// Hands a lease back. `healthy == false` retires the stream: it is closed and the
    /// flows on it move to another one. Never waits.
    fn release(&self, lease: StreamLease, healthy: bool);

    /// The number of streams open now, over all peers.
    fn active_streams(&self) -> usize;
}
