use std::sync::Arc;

use crate::PeerId;
use async_trait::async_trait;
use bytes::Bytes;
use vpn_errors::VpnError;

/// One peer's datagram path: IP packets as unreliable datagrams, each on its own, no
/// retransmission and no order kept between them (the flows inside keep their own).
#[async_trait]
pub trait DatagramPath: Send + Sync {
    /// The largest IP packet one datagram carries now.
    fn max_packet(&self) -> usize;

    /// Sends each packet of `packets` (each at most [`DatagramPath::max_packet`]) as one
    /// datagram, in order, waiting while the path's send buffer is full: a fast sender is
    /// paced by the path instead of queueing. Returns how many were sent.
    ///
    /// Errors: a network error of kind `StreamClosed` when the path closed part way (the
    /// packets before it were sent).
    async fn send(&self, packets: &[Bytes]) -> Result<usize, VpnError>;

    /// Hands `packet`, an ICMP error about a packet too big for this path, to this node's
    /// own network stack, as a router on the path would send it to the packet's sender.
    async fn send_back(&self, packet: Bytes);
}

/// Which peers have a datagram path that carries packets now.
pub trait DatagramPaths: Send + Sync {
    /// The datagram path packets to `peer` take now, if one is up; `None` sends them on
    /// streams.
    fn path(&self, peer: &PeerId) -> Option<Arc<dyn DatagramPath>>;
}
