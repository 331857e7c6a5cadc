use std::collections::HashMap;
use std::sync::Mutex;

use crate::CircuitBreakerSettings;
use tokio::time::Instant;
use vpn_api::{BreakerPermit, CircuitBreakerService, circuit_open_error};
use vpn_api::{BreakerState, PeerId};
use vpn_errors::VpnError;

use crate::CircuitBreaker;

#[derive(Debug)]
struct Breakers {
    by_peer: HashMap<PeerId, CircuitBreaker>,
    last_sweep: Instant,
}

/// A circuit breaker per destination peer: the [`CircuitBreakerService`] of the node.
///
/// The lock is held only for a few field updates, never across an await. Breakers unused
/// for `idle_eviction` are forgotten (checked at most every half of it, on use).
#[derive(Debug)]
pub struct PeerBreakers {
    settings: CircuitBreakerSettings,
    inner: Mutex<Breakers>,
}

impl PeerBreakers {
    /// No breakers yet; each peer's is created closed on first use.
    pub fn new(settings: CircuitBreakerSettings) -> Self {
        let inner = Breakers { by_peer: HashMap::new(), last_sweep: Instant::now() };
        Self { settings, inner: Mutex::new(inner) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Breakers, Instant) -> T) -> T {
        let now = Instant::now();
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner, now)
    }

    /// The number of breakers held now.
    pub fn len(&self) -> usize {
        self.with(|b, _| b.by_peer.len())
    }

    /// Whether no breaker is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Breakers {
    fn sweep(&mut self, now: Instant, idle: std::time::Duration) {
        if now < self.last_sweep + idle / 2 {
            return;
        }
        self.last_sweep = now;
        self.by_peer.retain(|_, b| now < b.last_used() + idle);
    }
}

impl CircuitBreakerService for PeerBreakers {
    fn try_acquire(&self, peer: &PeerId) -> Result<BreakerPermit, VpnError> {
        let admitted = self.with(|b, now| {
            b.sweep(now, self.settings.idle_eviction);
            b.by_peer
                .entry(*peer)
                .or_insert_with(|| CircuitBreaker::new(self.settings.clone(), now))
                .try_acquire(now)
        });
        match admitted {
            Some(probe) => Ok(BreakerPermit { peer: *peer, probe }),
            None => Err(circuit_open_error(*peer)),
        }
    }

    fn record(&self, permit: BreakerPermit, success: bool) {
        self.with(|b, now| {
            if let Some(breaker) = b.by_peer.get_mut(&permit.peer) {
                breaker.record(permit.probe, success, now);
            }
        });
    }

    fn reset(&self, peer: &PeerId) {
        self.with(|b, _| {
            if let Some(breaker) = b.by_peer.get_mut(peer) {
                breaker.reset();
            }
        });
    }

    fn reset_all(&self) {
        self.with(|b, _| b.by_peer.values_mut().for_each(CircuitBreaker::reset));
    }

    fn states(&self) -> Vec<(PeerId, BreakerState)> {
        self.with(|b, now| b.by_peer.iter().map(|(p, br)| (*p, br.state(now))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vpn_api::CircuitBreakerExt;
    use vpn_errors::NetworkErrorKind;

    fn settings() -> CircuitBreakerSettings {
        CircuitBreakerSettings::default()
            .with_failure_threshold(2)
            .with_success_threshold(1)
            .with_reset_timeout(Duration::from_secs(5))
            .with_idle_eviction(Duration::from_secs(60))
    }

    async fn fail(b: &PeerBreakers, peer: &PeerId) -> Option<NetworkErrorKind> {
        let r: Result<(), _> = b
            .execute(peer, || async { Err(VpnError::network(NetworkErrorKind::Timeout, "open")) })
            .await;
        r.unwrap_err().network_kind()
    }

    #[tokio::test(start_paused = true)]
    async fn open_breaker_recovers_by_itself() {
        let b = PeerBreakers::new(settings());
        let peer = PeerId::random();
        fail(&b, &peer).await;
        fail(&b, &peer).await;
        assert_eq!(fail(&b, &peer).await, Some(NetworkErrorKind::CircuitOpen));
        assert_eq!(b.states(), vec![(peer, BreakerState::Open)]);

        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.states(), vec![(peer, BreakerState::HalfOpen)]);
        let probe = b.execute(&peer, || async { Ok(1) }).await;
        assert_eq!(probe.unwrap(), 1);
        assert_eq!(b.states(), vec![(peer, BreakerState::Closed)]);
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_are_per_peer() {
        let b = PeerBreakers::new(settings());
        let (bad, good) = (PeerId::random(), PeerId::random());
        fail(&b, &bad).await;
        fail(&b, &bad).await;
        assert!(b.try_acquire(&bad).is_err());
        let permit = b.try_acquire(&good).unwrap();
        assert!(!permit.probe);
        b.record(permit, true);
        b.reset(&bad);
        assert!(b.try_acquire(&bad).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reset_all_closes_everything() {
        let b = PeerBreakers::new(settings());
        let peers = [PeerId::random(), PeerId::random()];
        for p in &peers {
            fail(&b, p).await;
            fail(&b, p).await;
        }
        assert!(b.states().iter().all(|(_, s)| *s == BreakerState::Open));
        b.reset_all();
        assert!(b.states().iter().all(|(_, s)| *s == BreakerState::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_breakers_are_evicted() {
        let b = PeerBreakers::new(settings());
        let old = PeerId::random();
        b.record(b.try_acquire(&old).unwrap(), true);
        tokio::time::advance(Duration::from_secs(61)).await;
        let fresh = PeerId::random();
        b.record(b.try_acquire(&fresh).unwrap(), true);
        assert_eq!(b.states(), vec![(fresh, BreakerState::Closed)]);
        assert_eq!(b.len(), 1);
    }
}
