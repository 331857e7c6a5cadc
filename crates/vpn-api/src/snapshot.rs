use std::time::Duration;

use libp2p_identity::PeerId;

use vpn_types::{Budget, DialRefusal, DropReason, PeerRefusal};

/// The state of one circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass; failures are counted.
    Closed,
    /// Calls are refused until the reset timeout has passed.
    Open,
    /// A limited number of probe calls pass; their results decide.
    HalfOpen,
}

/// A point-in-time copy of the node's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Packets written to peers.
    pub packets_sent: u64,
    /// Bytes of packets written to peers.
    pub bytes_sent: u64,
    /// Packets received from peers and accepted.
    pub packets_received: u64,
    /// Bytes of packets received from peers and accepted.
    pub bytes_received: u64,
    /// Packets sent as datagrams (counted in `packets_sent` too).
    pub datagrams_sent: u64,
    /// Packets received as datagrams and accepted (counted in `packets_received` too).
    pub datagrams_received: u64,
    /// Stream failures (open, write, read or protocol errors).
    pub stream_errors: u64,
    /// Packets dropped because the destination's breaker was open.
    pub circuit_open_drops: u64,
    /// Dropped packets, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
    /// Times a peer's budget bit, indexed by [`Budget::index`].
    pub budgets: [u64; Budget::COUNT],
    /// Peers refused before they proved themselves members, indexed by
    /// [`PeerRefusal::index`].
    pub peers_refused: [u64; PeerRefusal::COUNT],
    /// Addresses not dialed, indexed by [`DialRefusal::index`].
    pub dials_refused: [u64; DialRefusal::COUNT],
    /// DHT records peers asked us to store that we refused.
    pub records_refused: u64,
    /// Workers alive now.
    pub active_workers: u64,
    /// Streams open now.
    pub active_streams: u64,
    /// Peers connected now over a direct connection.
    pub peers_direct: u64,
    /// Peers connected now through a relay only.
    pub peers_relayed: u64,
    /// Hole punches that ended with a direct connection.
    pub hole_punches_succeeded: u64,
    /// Hole punches that failed.
    pub hole_punches_failed: u64,
}

impl MetricsSnapshot {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).copied().unwrap_or(0)
    }

    /// Peers refused for `why`.
    pub fn refused(&self, why: PeerRefusal) -> u64 {
        self.peers_refused.get(why.index()).copied().unwrap_or(0)
    }

    /// Addresses not dialed for `why`.
    pub fn dial_refused(&self, why: DialRefusal) -> u64 {
        self.dials_refused.get(why.index()).copied().unwrap_or(0)
    }

    /// Times `budget` bit.
    pub fn exceeded(&self, budget: Budget) -> u64 {
        self.budgets.get(budget.index()).copied().unwrap_or(0)
    }

    /// Packets dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// Health figures of the streams to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    /// The peer.
    pub peer: PeerId,
    /// Streams open to it.
    pub streams: u32,
    /// Of those, the ones currently healthy.
    pub healthy_streams: u32,
    /// PINGs sent.
    pub pings_sent: u64,
    /// PONGs received in time.
    pub pongs_received: u64,
    /// PONGs missed.
    pub pongs_missed: u64,
    /// Streams marked unhealthy.
    pub streams_marked_unhealthy: u64,
    /// Round-trip time of the latest PONG.
    pub last_rtt: Option<Duration>,
}

/// Health figures of every peer with streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// One entry per peer.
    pub peers: Vec<PeerHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_reads_the_reason_slot() {
        let mut snap = MetricsSnapshot::default();
        snap.drops[DropReason::Spoofed.index()] = 3;
        snap.drops[DropReason::QueueFull.index()] = 2;
        assert_eq!(snap.dropped(DropReason::Spoofed), 3);
        assert_eq!(snap.dropped(DropReason::NoPeer), 0);
        assert_eq!(snap.dropped_total(), 5);
    }
}
