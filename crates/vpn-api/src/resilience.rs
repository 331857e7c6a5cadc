use std::future::Future;
use std::time::Duration;

use crate::{BreakerState, PeerId};
use vpn_errors::{NetworkErrorKind, VpnError};

/// Leave to make one call through a destination's breaker. Give it back with
/// [`CircuitBreakerService::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a permit must be recorded as a success or a failure"]
pub struct BreakerPermit {
    /// The destination peer.
    pub peer: PeerId,
    /// Whether this call is a half-open probe.
    pub probe: bool,
}

/// A circuit breaker per destination peer. Object-safe; use
/// [`CircuitBreakerExt::execute`] to run an operation under a breaker.
pub trait CircuitBreakerService: Send + Sync {
    /// Asks leave to call `peer`. Never waits.
    ///
    /// Errors: a network error of kind `CircuitOpen` (naming the peer) when the breaker
    /// is open, or half-open with its probes all out.
    fn try_acquire(&self, peer: &PeerId) -> Result<BreakerPermit, VpnError>;

    /// Reports how the permitted call went; this drives the breaker's state.
    fn record(&self, permit: BreakerPermit, success: bool);

    /// Closes `peer`'s breaker and forgets its failures.
    fn reset(&self, peer: &PeerId);

    /// Closes every breaker.
    fn reset_all(&self);

    /// The state of every breaker known now.
    fn states(&self) -> Vec<(PeerId, BreakerState)>;
}

/// Runs operations under a [`CircuitBreakerService`].
pub trait CircuitBreakerExt: CircuitBreakerService {
    /// Runs `op` if `peer`'s breaker allows it and records its outcome; an `Err` from `op`
    /// counts as a failure. Returns `op`'s result, or the `CircuitOpen` error without
    /// running `op`.
    fn execute<T, F, Fut>(
        &self,
        peer: &PeerId,
        op: F,
    ) -> impl Future<Output = Result<T, VpnError>> + Send
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<T, VpnError>> + Send,
    {
        let permit = self.try_acquire(peer);
        async move {
            let permit = permit?;
            let result = op().await;
            self.record(permit, result.is_ok());
            result
        }
    }
}

impl<B: CircuitBreakerService + ?Sized> CircuitBreakerExt for B {}

/// The backoff of one retried operation.
pub trait RetrySchedule: Send {
    /// Called after a failed attempt with its error: the delay before the next attempt, or
    /// `None` to give up (attempts used up, or the error is not worth retrying).
    fn next_delay(&mut self, error: &VpnError) -> Option<Duration>;
}

/// Retry with exponential backoff. Object-safe; use [`RetryExt::retry`] to run an
/// operation with it.
pub trait RetryService: Send + Sync {
    /// A fresh schedule for one operation.
    fn schedule(&self) -> Box<dyn RetrySchedule>;
}

/// Runs operations under a [`RetryService`].
pub trait RetryExt: RetryService {
    /// Calls `op` until it succeeds or the schedule gives up, sleeping between attempts,
    /// and returns the first success or the last error. Dropping the future cancels it at
    /// once, mid-sleep or mid-attempt.
    fn retry<T, F, Fut>(&self, mut op: F) -> impl Future<Output = Result<T, VpnError>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, VpnError>> + Send,
    {
        let mut schedule = self.schedule();
        async move {
            loop {
                let error = match op().await {
                    Ok(value) => return Ok(value),
                    Err(error) => error,
                };
                match schedule.next_delay(&error) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(error),
                }
            }
        }
    }
}

impl<R: RetryService + ?Sized> RetryExt for R {}

/// The error a breaker returns when it refuses a call.
pub fn circuit_open_error(peer: PeerId) -> VpnError {
    VpnError::Network(
        vpn_errors::NetworkError::new(NetworkErrorKind::CircuitOpen, "call through breaker")
            .with_peer(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A breaker that refuses after `limit` permits and remembers outcomes.
    struct CountingBreaker {
        limit: u32,
        given: AtomicU32,
        outcomes: Mutex<Vec<bool>>,
    }

    impl CircuitBreakerService for CountingBreaker {
        fn try_acquire(&self, peer: &PeerId) -> Result<BreakerPermit, VpnError> {
            if self.given.fetch_add(1, Ordering::SeqCst) < self.limit {
                Ok(BreakerPermit { peer: *peer, probe: false })
            } else {
                Err(circuit_open_error(*peer))
            }
        }
        fn record(&self, _permit: BreakerPermit, success: bool) {
            self.outcomes.lock().unwrap().push(success);
        }
        fn reset(&self, _peer: &PeerId) {}
        fn reset_all(&self) {}
        fn states(&self) -> Vec<(PeerId, BreakerState)> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn execute_records_outcomes_and_refuses_when_open() {
        let breaker =
            CountingBreaker { limit: 2, given: AtomicU32::new(0), outcomes: Mutex::new(vec![]) };
        let peer = PeerId::random();
        let ok = breaker.execute(&peer, || async { Ok(7) }).await;
        assert_eq!(ok.unwrap(), 7);
        let failed: Result<(), _> = breaker
            .execute(&peer, || async { Err(VpnError::network(NetworkErrorKind::Timeout, "x")) })
            .await;
        assert_eq!(failed.unwrap_err().network_kind(), Some(NetworkErrorKind::Timeout));
        let ran = AtomicU32::new(0);
        let refused = breaker
            .execute(&peer, || async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert_eq!(refused.unwrap_err().network_kind(), Some(NetworkErrorKind::CircuitOpen));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a refused operation must not run");
        assert_eq!(*breaker.outcomes.lock().unwrap(), vec![true, false]);
    }

    /// Gives up after `attempts` attempts in all, with a fixed delay.
    struct Fixed {
        attempts: u32,
    }

    struct FixedSchedule {
        left: u32,
    }

    impl RetrySchedule for FixedSchedule {
        fn next_delay(&mut self, _error: &VpnError) -> Option<Duration> {
            self.left = self.left.checked_sub(1)?;
            (self.left > 0).then_some(Duration::from_millis(100))
        }
    }

    impl RetryService for Fixed {
        fn schedule(&self) -> Box<dyn RetrySchedule> {
            Box::new(FixedSchedule { left: self.attempts })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_returns_first_success() {
        let calls = AtomicU32::new(0);
        let result = Fixed { attempts: 5 }
            .retry(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    Err(VpnError::network(NetworkErrorKind::Timeout, "open"))
                } else {
                    Ok(n)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_returns_last_error_when_schedule_gives_up() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = Fixed { attempts: 3 }
            .retry(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let kind =
                    if n == 2 { NetworkErrorKind::Unreachable } else { NetworkErrorKind::Timeout };
                Err(VpnError::network(kind, "open"))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(result.unwrap_err().network_kind(), Some(NetworkErrorKind::Unreachable));
    }
}
