//! The datagram data path: members' QUIC connections carry IP packets as datagrams.
//!
//! Sending: [`LinkPaths`] tells the workers which peers have a link that answers its probes
//! now (their packets go as datagrams; everyone else's on streams). Receiving: every link of
//! an admitted member is read on its own task; its packets pass the same receiver checks
//! as a stream's ([`PeerSink`]) and reach the TUN in one batch per burst.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use vpn_api::{DatagramPath, DatagramPaths, PeerId, TunDevice, TunPacket};
use vpn_errors::{NetworkError, NetworkErrorKind, VpnError};
use vpn_quic::{DatagramLink, Incoming, Links, SendError};
use vpn_stream::InboundSink;
use vpn_types::DropReason;

use crate::inbound::{PeerSink, Receiver, spawn_lookups};
use crate::tasks::Tasks;

/// Datagrams taken from one link before the batch goes to the TUN.
const READ_BATCH: usize = 64;

/// The workers' view of the links: a peer's best link while it is up.
pub(crate) struct LinkPaths {
    pub(crate) links: Links,
    /// Where ICMP errors about packets too big for a path go.
    pub(crate) tun: Arc<dyn TunDevice>,
}

impl DatagramPaths for LinkPaths {
    fn path(&self, peer: &PeerId) -> Option<Arc<dyn DatagramPath>> {
        let link = self.links.best(peer)?;
        Some(Arc::new(LinkPath(link, self.tun.clone())))
    }
}

struct LinkPath(DatagramLink, Arc<dyn TunDevice>);

#[async_trait]
impl DatagramPath for LinkPath {
    fn max_packet(&self) -> usize {
        self.0.max_datagram().unwrap_or(0)
    }

    async fn send_back(&self, packet: Bytes) {
        if let Err(e) = self.1.send_batch(&[TunPacket::new(packet)]).await {
            tracing::debug!(error = %e, "the TUN did not take an ICMP error");
        }
    }

    async fn send(&self, packets: &[Bytes]) -> Result<usize, VpnError> {
        self.0.note_packets();
        for (sent, packet) in packets.iter().enumerate() {
            match self.0.send(packet.clone()).await {
                Ok(()) => {}
                // Sizes were checked against the path's; one that shrank since is lost,
                // as the path would have lost it.
                Err(SendError::TooLarge(_)) => {}
                Err(_) => {
                    let closed = NetworkError::new(NetworkErrorKind::StreamClosed, "send datagram");
                    return if sent == 0 { Err(VpnError::Network(closed)) } else { Ok(sent) };
                }
            }
        }
        Ok(packets.len())
    }
}

/// Reads every link handed over on `links`, each on its own task owned by `tasks`.
pub(crate) async fn serve_links(
    mut links: mpsc::UnboundedReceiver<DatagramLink>,
    receiver: Arc<Receiver>,
    tasks: Tasks,
) {
    while let Some(link) = links.recv().await {
        tracing::debug!(peer = %link.peer(), remote = %link.remote_address(), "reading datagrams");
        tasks.spawn(serve_link(link, receiver.clone(), tasks.clone()));
    }
}

/// One link's datagrams into the receiver checks and the TUN, until the connection closes,
/// the peer is no member any more or the TUN is gone.
async fn serve_link(link: DatagramLink, receiver: Arc<Receiver>, tasks: Tasks) {
    let peer = link.peer();
    let (unknown, lookups_ended) = spawn_lookups(&receiver, peer, &tasks);
    let mut sink = PeerSink::new(peer, &receiver, &unknown);
    let metrics = receiver.delivery.metrics.clone();
    let take = |sink: &mut PeerSink<'_>, incoming: Incoming| match incoming {
        Incoming::Packet(packet) => sink.judge(packet, None),
        Incoming::Malformed(e) => {
            metrics.record_drop(DropReason::Malformed);
            if let Some(held_back) = receiver.warnings.admit((peer, "datagram")) {
                tracing::warn!(%peer, error = %e, held_back, "dropped a datagram that is no packet");
            }
        }
    };
    'read: while let Ok(first) = link.recv().await {
        take(&mut sink, first);
        for _ in 1..READ_BATCH {
            match link.try_recv() {
                Some(Ok(incoming)) => take(&mut sink, incoming),
                Some(Err(_)) => break 'read,
                None => break,
            }
        }
        metrics.record_datagrams(0, sink.pending() as u64);
        if flush(&mut sink).await.is_err() {
            break;
        }
    }
    drop(sink);
    drop(unknown);
    let _ = lookups_ended.await;
    tracing::debug!(%peer, "datagram link ended");
}

fn flush<'s>(sink: &'s mut PeerSink<'_>) -> impl Future<Output = std::io::Result<()>> + 's {
    InboundSink::flush(sink)
}
