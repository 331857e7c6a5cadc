//! What one peer can make the receive side hold: inbound streams, bytes of packets waiting
//! for a lookup, and lookups started per second (`[limits]`). What is taken is held by a
//! guard, so it is given back however its holder ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;
use vpn_api::MetricsService;
use vpn_api::PeerId;
use vpn_config::LimitSettings;
use vpn_types::Budget;

/// Every peer's share, counted where it is taken and given back.
pub(crate) struct PeerBudgets {
    limits: LimitSettings,
    metrics: Arc<dyn MetricsService>,
    peers: Mutex<HashMap<PeerId, Held>>,
}

/// What one peer holds now.
struct Held {
    streams: usize,
    lookup_bytes: usize,
    /// Lookups it may start now (a token bucket, refilled at `lookups_per_second`).
    tokens: f64,
    refilled: Instant,
}

impl Held {
    fn new(limits: &LimitSettings, now: Instant) -> Self {
        Self { streams: 0, lookup_bytes: 0, tokens: burst(limits), refilled: now }
    }

    fn refill(&mut self, limits: &LimitSettings, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let rate = f64::from(limits.lookups_per_second);
        self.tokens = (self.tokens + elapsed * rate).min(burst(limits));
        self.refilled = now;
    }

    /// Holds nothing and could start a full burst of lookups: forgetting it loses nothing.
    fn is_spent(&mut self, limits: &LimitSettings, now: Instant) -> bool {
        self.refill(limits, now);
        self.streams == 0 && self.lookup_bytes == 0 && self.tokens >= burst(limits)
    }
}

fn burst(limits: &LimitSettings) -> f64 {
    f64::from(limits.lookups_per_second.max(1))
}

impl PeerBudgets {
    pub(crate) fn new(limits: LimitSettings, metrics: Arc<dyn MetricsService>) -> Arc<Self> {
        Arc::new(Self { limits, metrics, peers: Mutex::new(HashMap::new()) })
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, Held>> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refuse(&self, budget: Budget) {
        self.metrics.record_budget_exceeded(budget);
    }

    /// A slot for one more inbound stream from `peer`, or `None` when it has
    /// `inbound_streams_per_peer` open already.
    pub(crate) fn admit_stream(self: &Arc<Self>, peer: PeerId) -> Option<StreamSlot> {
        let now = Instant::now();
        let mut peers = self.peers();
        // Peers that hold nothing any more are forgotten here, so the map holds only peers
        // with something open or a lookup burst not yet earned back.
        peers.retain(|_, held| !held.is_spent(&self.limits, now));
        let held = peers.entry(peer).or_insert_with(|| Held::new(&self.limits, now));
        if held.streams >= self.limits.inbound_streams_per_peer {
            drop(peers);
            self.refuse(Budget::InboundStreams);
            return None;
        }
        held.streams += 1;
        Some(StreamSlot { budgets: self.clone(), peer })
    }

    /// Room for `bytes` of `peer`'s packets to wait for a lookup, or `None` when that would
    /// take it over `lookup_bytes_per_peer`.
    pub(crate) fn hold_for_lookup(
        self: &Arc<Self>,
        peer: PeerId,
        bytes: usize,
    ) -> Option<LookupHold> {
        let now = Instant::now();
        let mut peers = self.peers();
        let held = peers.entry(peer).or_insert_with(|| Held::new(&self.limits, now));
        if held.lookup_bytes + bytes > self.limits.lookup_bytes_per_peer {
            drop(peers);
            self.refuse(Budget::LookupBytes);
            return None;
        }
        held.lookup_bytes += bytes;
        Some(LookupHold { budgets: self.clone(), peer, bytes })
    }

    /// Whether `peer`'s packets may start one more lookup now (`lookups_per_second`).
    pub(crate) fn start_lookup(&self, peer: PeerId) -> bool {
        let now = Instant::now();
        let mut peers = self.peers();
        let held = peers.entry(peer).or_insert_with(|| Held::new(&self.limits, now));
        held.refill(&self.limits, now);
        if held.tokens >= 1.0 {
            held.tokens -= 1.0;
            return true;
        }
        drop(peers);
        self.refuse(Budget::LookupRate);
        false
    }

    /// Peers the budgets hold an entry for now (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers().len()
    }

    fn give_back(&self, peer: &PeerId, give: impl FnOnce(&mut Held)) {
        if let Some(held) = self.peers().get_mut(peer) {
            give(held);
        }
    }
}

/// One inbound stream's place in its peer's budget, given back when dropped.
pub(crate) struct StreamSlot {
    budgets: Arc<PeerBudgets>,
    peer: PeerId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.budgets.give_back(&self.peer, |held| held.streams = held.streams.saturating_sub(1));
    }
}

/// Bytes of one packet waiting for a lookup, given back when dropped.
pub(crate) struct LookupHold {
    budgets: Arc<PeerBudgets>,
    peer: PeerId,
    bytes: usize,
}

impl Drop for LookupHold {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.budgets.give_back(&self.peer, |held| {
            held.lookup_bytes = held.lookup_bytes.saturating_sub(bytes)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vpn_metrics::AtomicMetrics;

    use super::*;

    fn budgets(limits: LimitSettings) -> (Arc<PeerBudgets>, Arc<AtomicMetrics>) {
        let metrics = Arc::new(AtomicMetrics::new());
        (PeerBudgets::new(limits, metrics.clone()), metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn streams_beyond_the_budget_are_refused_until_one_ends() {
        let (budgets, metrics) = budgets(LimitSettings::default().with_inbound_streams_per_peer(2));
        let (peer, other) = (PeerId::random(), PeerId::random());
        let first = budgets.admit_stream(peer).expect("first stream");
        let _second = budgets.admit_stream(peer).expect("second stream");
        assert!(budgets.admit_stream(peer).is_none(), "a third is over the budget");
        assert!(budgets.admit_stream(other).is_some(), "another peer has its own budget");
        assert_eq!(metrics.snapshot().exceeded(Budget::InboundStreams), 1);
        drop(first);
        assert!(budgets.admit_stream(peer).is_some(), "an ended stream gives its slot back");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_waiting_for_lookups_are_bounded_and_given_back() {
        let (budgets, metrics) = budgets(LimitSettings::default().with_lookup_bytes_per_peer(3000));
        let peer = PeerId::random();
        let a = budgets.hold_for_lookup(peer, 1500).expect("room");
        let _b = budgets.hold_for_lookup(peer, 1500).expect("room");
        assert!(budgets.hold_for_lookup(peer, 1).is_none());
        assert_eq!(metrics.snapshot().exceeded(Budget::LookupBytes), 1);
        drop(a);
        assert!(budgets.hold_for_lookup(peer, 1500).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_are_started_at_the_configured_rate() {
        let (budgets, metrics) = budgets(LimitSettings::default().with_lookups_per_second(4));
        let peer = PeerId::random();
        let burst = (0..10).filter(|_| budgets.start_lookup(peer)).count();
        assert_eq!(burst, 4, "a burst of one second's worth");
        tokio::time::advance(Duration::from_millis(500)).await;
        let later = (0..10).filter(|_| budgets.start_lookup(peer)).count();
        assert_eq!(later, 2, "half a second earns half of it back");
        assert_eq!(metrics.snapshot().exceeded(Budget::LookupRate), 6 + 8);
        assert!(budgets.start_lookup(PeerId::random()), "another peer has its own rate");
    }

    #[tokio::test(start_paused = true)]
    async fn peers_that_hold_nothing_are_forgotten() {
        let (budgets, _) = budgets(LimitSettings::default().with_lookups_per_second(2));
        for _ in 0..100 {
            let peer = PeerId::random();
            let _slot = budgets.admit_stream(peer);
            let _hold = budgets.hold_for_lookup(peer, 100);
            assert!(budgets.start_lookup(peer));
        }
        // Each spent a lookup token: they are kept until it is earned back.
        assert!(budgets.tracked() >= 100);
        tokio::time::advance(Duration::from_secs(1)).await;
        let _slot = budgets.admit_stream(PeerId::random());
        assert_eq!(budgets.tracked(), 1, "only the peer with an open stream is left");
    }
}
