use crate::MetricsSnapshot;
use vpn_types::{Budget, DialRefusal, DropReason, PeerRefusal};

/// The node's counters. Every method is cheap, lock-free and never waits: they are called
/// on the packet path.
pub trait MetricsService: Send + Sync {
    /// Counts one failed stream (open, write, read or protocol error).
    fn record_stream_error(&self);

    /// Counts `packets` packets of `bytes` bytes in all, written to peers.
    fn record_sent(&self, packets: u64, bytes: u64);

    /// Counts `packets` packets of `bytes` bytes in all, received and accepted.
    fn record_received(&self, packets: u64, bytes: u64);

    /// Counts IP packets sent and received as datagrams (they count as sent and received
    /// too).
    fn record_datagrams(&self, sent: u64, received: u64);

    /// Counts `packets` packets dropped for `reason`. Drops for
    /// [`DropReason::CircuitOpen`] also count as circuit-open drops.
    fn record_drops(&self, reason: DropReason, packets: u64);

    /// Counts one packet dropped for `reason`.
    fn record_drop(&self, reason: DropReason) {
        self.record_drops(reason, 1);
    }

    /// Counts one packet dropped because the destination's breaker was open.
    fn record_circuit_open_drop(&self) {
        self.record_drop(DropReason::CircuitOpen);
    }

    /// Counts one time a peer's `budget` bit (a stream refused, a packet dropped, an entry
    /// forgotten).
    fn record_budget_exceeded(&self, budget: Budget);

    /// A peer's connection was closed before it proved itself a member.
    fn record_peer_refused(&self, why: PeerRefusal);

    /// An address (a peer's, as a rule) was not dialed.
    fn record_dial_refused(&self, why: DialRefusal);

    /// Counts one DHT record a peer asked us to store that we refused (invalid, under a key
    /// its owner does not publish it under, a second owner's, or over its owner's quota).
    fn record_refused_record(&self);

    /// Sets the number of workers alive now.
    fn set_active_workers(&self, workers: u64);

    /// Sets the number of streams open now.
    fn set_active_streams(&self, streams: u64);

    /// Sets the peers connected now: over a direct connection, and through a relay only.
    fn set_peer_paths(&self, direct: u64, relayed: u64);

    /// Counts one hole punch that ended, with a direct connection or without.
    fn record_hole_punch(&self, succeeded: bool);

    /// A copy of every counter now.
    fn snapshot(&self) -> MetricsSnapshot;
}
