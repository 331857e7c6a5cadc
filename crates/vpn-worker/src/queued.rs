use std::net::IpAddr;

use bytes::Bytes;
use tokio::sync::oneshot;

use vpn_types::{BudgetPermit, DropReason, GsoInfo};

/// What became of a packet: sent, or dropped for a reason.
pub type SendResult = Result<(), DropReason>;

/// A packet waiting in a worker's queue.
#[derive(Debug)]
pub struct QueuedPacket {
    /// The packet as read from the TUN (an offload super-packet when `gso` is set).
    pub data: Bytes,
    /// The destination address, from the IP header.
    pub dst: IpAddr,
    /// Segmentation info when `data` is an offload super-packet.
    pub gso: Option<GsoInfo>,
    /// Told what became of the packet, when the caller asked to know.
    pub done: Option<oneshot::Sender<SendResult>>,
    /// The packet's share of the outbound byte budget, held until its frame is written.
    pub permit: Option<BudgetPermit>,
}

impl QueuedPacket {
    /// A plain packet with no completion channel.
    pub fn new(data: Bytes, dst: IpAddr) -> Self {
        Self { data, dst, gso: None, done: None, permit: None }
    }

    /// The same packet, reporting its fate on `done`.
    pub fn with_done(mut self, done: oneshot::Sender<SendResult>) -> Self {
        self.done = Some(done);
        self
    }

    /// The same packet, marked as an offload super-packet.
    pub fn with_gso(mut self, gso: GsoInfo) -> Self {
        self.gso = Some(gso);
        self
    }

    /// Reports the packet's fate to whoever waits for it (if anyone still does).
    pub fn complete(&mut self, result: SendResult) {
        if let Some(done) = self.done.take() {
            // The waiter may have given up; that is not an error.
            let _ = done.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn complete_reports_once() {
        let (tx, rx) = oneshot::channel();
        let dst = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
        let mut packet = QueuedPacket::new(Bytes::from_static(b"x"), dst).with_done(tx);
        packet.complete(Err(DropReason::NoPeer));
        packet.complete(Ok(()));
        assert_eq!(rx.await, Ok(Err(DropReason::NoPeer)));
    }

    #[test]
    fn complete_without_waiter_is_harmless() {
        let dst = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
        let (tx, rx) = oneshot::channel();
        drop(rx);
        let mut packet = QueuedPacket::new(Bytes::new(), dst).with_done(tx);
        packet.complete(Ok(()));
        assert!(packet.done.is_none());
    }
}
