use crate::CircuitBreakerSettings;
use tokio::time::Instant;
use vpn_api::BreakerState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        since: Instant,
    },
    /// `probe_since` is when the probe now out was admitted, if one is.
    HalfOpen {
        successes: u32,
        probe_since: Option<Instant>,
    },
}

/// One circuit breaker, as a state machine: the caller passes the time in, so it is
/// driven by tests without sleeping.
///
/// Closed: calls pass; `failure_threshold` failures in a row open it. Open: calls are
/// refused until `reset_timeout` has passed, then one probe is admitted (half-open).
/// Half-open: one probe at a time; `success_threshold` successful probes close it, a
/// failed probe opens it again. A probe whose result never comes back (its caller gave
/// up) stops blocking after `reset_timeout`, so the breaker always recovers.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: CircuitBreakerSettings,
    state: State,
    last_used: Instant,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: CircuitBreakerSettings, now: Instant) -> Self {
        Self { settings, state: State::Closed { failures: 0 }, last_used: now }
    }

    /// The state at `now` (an open breaker whose timeout has passed reports half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { since } if now < since + self.settings.reset_timeout => {
                BreakerState::Open
            }
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// When the breaker was last asked or told anything.
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Asks leave for one call: `Some(probe)` when allowed (`probe` is true for a
    /// half-open probe), `None` when refused.
    pub fn try_acquire(&mut self, now: Instant) -> Option<bool> {
        self.last_used = now;
        let reset_timeout = self.settings.reset_timeout;
        match self.state {
            State::Closed { .. } => Some(false),
            State::Open { since } if now < since + reset_timeout => None,
            State::Open { .. } => {
                self.state = State::HalfOpen { successes: 0, probe_since: Some(now) };
                Some(true)
            }
            State::HalfOpen { successes, probe_since } => match probe_since {
                Some(at) if now < at + reset_timeout => None,
                _ => {
                    self.state = State::HalfOpen { successes, probe_since: Some(now) };
                    Some(true)
                }
            },
        }
    }

    /// Records the outcome of a call admitted by [`CircuitBreaker::try_acquire`].
    /// Outcomes of ordinary calls that arrive while open or half-open are stale and
    /// ignored: only probes decide there.
    pub fn record(&mut self, probe: bool, success: bool, now: Instant) {
        self.last_used = now;
        self.state = match self.state {
            State::Closed { .. } if success => State::Closed { failures: 0 },
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.settings.failure_threshold {
                    State::Open { since: now }
                } else {
                    State::Closed { failures }
                }
            }
            State::HalfOpen { successes, .. } if probe && success => {
                let successes = successes.saturating_add(1);
                if successes >= self.settings.success_threshold {
                    State::Closed { failures: 0 }
                } else {
                    State::HalfOpen { successes, probe_since: None }
                }
            }
            State::HalfOpen { .. } if probe => State::Open { since: now },
            unchanged => unchanged,
        };
    }

    /// Closes the breaker and forgets its failures.
    pub fn reset(&mut self) {
        self.state = State::Closed { failures: 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> CircuitBreakerSettings {
        CircuitBreakerSettings::default()
            .with_failure_threshold(3)
            .with_success_threshold(2)
            .with_reset_timeout(Duration::from_secs(10))
    }

    fn fail(b: &mut CircuitBreaker, now: Instant) {
        let probe = b.try_acquire(now).expect("admitted");
        b.record(probe, false, now);
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings(), t0);
        fail(&mut b, t0);
        fail(&mut b, t0);
        // A success in between starts the count again.
        assert_eq!(b.try_acquire(t0), Some(false));
        b.record(false, true, t0);
        fail(&mut b, t0);
        fail(&mut b, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        fail(&mut b, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.try_acquire(t0 + Duration::from_secs(9)), None);
    }

    #[test]
    fn recovers_through_half_open_probes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings(), t0);
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(t1), Some(true));
        // One probe at a time.
        assert_eq!(b.try_acquire(t1), None);
        b.record(true, true, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(t1), Some(true));
        b.record(true, true, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.try_acquire(t1), Some(false));
    }

    #[test]
    fn failed_probe_opens_again() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings(), t0);
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        fail(&mut b, t1);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(b.try_acquire(t1 + Duration::from_secs(9)), None);
        assert_eq!(b.try_acquire(t1 + Duration::from_secs(10)), Some(true));
    }

    #[test]
    fn lost_probe_does_not_block_forever() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings(), t0);
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.try_acquire(t1), Some(true));
        // Its result never comes: after another reset timeout a new probe goes out.
        assert_eq!(b.try_acquire(t1 + Duration::from_secs(5)), None);
        assert_eq!(b.try_acquire(t1 + Duration::from_secs(10)), Some(true));
    }

    #[test]
    fn stale_results_are_ignored() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(settings(), t0);
        let permits: Vec<_> = (0..5).map(|_| b.try_acquire(t0).unwrap()).collect();
        for p in &permits[..3] {
            b.record(*p, false, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        // Late successes of calls admitted before it opened do not close it.
        b.record(permits[3], true, t0);
        b.record(permits[4], true, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        b.reset();
        assert_eq!(b.state(t0), BreakerState::Closed);
    }
}
