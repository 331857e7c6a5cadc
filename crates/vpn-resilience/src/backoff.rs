use std::time::Duration;

use crate::RetrySettings;
use vpn_api::{RetrySchedule, RetryService};
use vpn_errors::{VpnError, is_temporary_error};

/// Retry with exponential backoff: the node's [`RetryService`].
///
/// After the n-th failed attempt the delay is `initial_interval * multiplier^(n-1)`, capped
/// at `max_interval`, spread by `jitter`. It gives up after `max_attempts` attempts in all,
/// or at once on an error that is not temporary (see [`is_temporary_error`]): retrying a
/// refused peer or a protocol violation only wastes time.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    settings: RetrySettings,
}

impl ExponentialBackoff {
    /// A backoff with these settings.
    pub fn new(settings: RetrySettings) -> Self {
        Self { settings }
    }
}

impl RetryService for ExponentialBackoff {
    fn schedule(&self) -> Box<dyn RetrySchedule> {
        Box::new(BackoffSchedule::new(self.settings.clone()))
    }
}

/// The schedule of one operation under [`ExponentialBackoff`].
#[derive(Debug)]
pub struct BackoffSchedule {
    settings: RetrySettings,
    failures: u32,
    rng: fastrand::Rng,
}

impl BackoffSchedule {
    /// A schedule before the first attempt.
    pub fn new(settings: RetrySettings) -> Self {
        Self { settings, failures: 0, rng: fastrand::Rng::new() }
    }

    /// The delay after the `failures`-th failure, before jitter.
    fn base_delay(&self) -> Duration {
        let exponent = i32::try_from(self.failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.settings.multiplier.max(1.0).powi(exponent);
        let max = self.settings.max_interval;
        Duration::try_from_secs_f64(self.settings.initial_interval.as_secs_f64() * factor)
            .map_or(max, |d| d.min(max))
    }
}

impl RetrySchedule for BackoffSchedule {
    fn next_delay(&mut self, error: &VpnError) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.settings.max_attempts || !is_temporary_error(error) {
            return None;
        }
        let base = self.base_delay();
        let jitter = self.settings.jitter.clamp(0.0, 1.0);
        let spread = 1.0 + jitter * (2.0 * self.rng.f64() - 1.0);
        Some(base.mul_f64(spread).min(self.settings.max_interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use vpn_api::RetryExt;
    use vpn_errors::NetworkErrorKind;

    fn timeout() -> VpnError {
        VpnError::network(NetworkErrorKind::Timeout, "open")
    }

    fn settings() -> RetrySettings {
        RetrySettings::default()
            .with_max_attempts(5)
            .with_initial_interval(Duration::from_millis(100))
            .with_max_interval(Duration::from_millis(500))
            .with_multiplier(2.0)
            .with_jitter(0.0)
    }

    #[test]
    fn delays_grow_and_cap_then_give_up() {
        let mut s = BackoffSchedule::new(settings());
        let delays: Vec<_> = std::iter::from_fn(|| s.next_delay(&timeout())).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(500)]);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut s = BackoffSchedule::new(settings().with_jitter(0.5));
            let d = s.next_delay(&timeout()).unwrap();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150), "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 1, "jitter must spread the delays");
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let mut s = BackoffSchedule::new(settings());
        let refused = VpnError::network(NetworkErrorKind::PeerNotAllowed, "open");
        assert_eq!(s.next_delay(&refused), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_sleeps_the_schedule_and_returns_last_error() {
        let backoff = ExponentialBackoff::new(settings().with_max_attempts(3));
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let result: Result<(), _> = backoff
            .retry(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(timeout())
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(result.unwrap_err().network_kind(), Some(NetworkErrorKind::Timeout));
        // 100 ms + 200 ms of backoff, on the paused clock.
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_stops_at_once() {
        let backoff = ExponentialBackoff::new(settings());
        let calls = std::sync::Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            let _: Result<(), _> = backoff
                .retry(|| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { Err(timeout()) }
                })
                .await;
        });
        // Let the first attempt fail and the task start its first sleep.
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no attempt after cancellation");
    }
}
