//! The resilience services as tower layers, over a service with any error type: the
//! breaker's refusals and the timeout's expiries are `VpnError`s converted into it
//! (`From<VpnError>`: `VpnError` itself, tower's `BoxError`, `anyhow::Error`, ...), and the
//! retry schedule sees each failure as the `VpnError` its [`Retryable`] impl shows.
//!
//! The worker stacks them around opening a stream lease:
//! `ServiceBuilder::new().layer(BreakerLayer).layer(TimeoutLayer).layer(RetryLayer)`.

mod breaker;
mod retry;
mod timeout;

pub use breaker::{Breaker, BreakerLayer};
pub use retry::{Retry, RetryLayer};
pub use timeout::{Timeout, TimeoutLayer};

use std::io::ErrorKind;

use vpn_api::PeerId;
use vpn_errors::{BoxError, NetworkError, NetworkErrorKind, VpnError};
use vpn_types::FlowKey;

/// An error the retry layer can show its schedule, which judges [`VpnError`]s (temporary
/// or not).
pub trait Retryable {
    /// Hands `judge` the error as a [`VpnError`]: itself, the one it carries, or the class
    /// it stands for.
    fn judged_as<R>(&self, judge: impl FnOnce(&VpnError) -> R) -> R;
}

impl Retryable for VpnError {
    fn judged_as<R>(&self, judge: impl FnOnce(&VpnError) -> R) -> R {
        judge(self)
    }
}

/// A boxed error is judged by the `VpnError` or `io::Error` inside it; any other error is
/// an I/O failure of unknown kind, which the schedule does not retry.
impl Retryable for BoxError {
    fn judged_as<R>(&self, judge: impl FnOnce(&VpnError) -> R) -> R {
        if let Some(error) = self.downcast_ref::<VpnError>() {
            return judge(error);
        }
        let kind = self.downcast_ref::<std::io::Error>().map_or(ErrorKind::Other, |e| e.kind());
        let kind = NetworkErrorKind::from_io_kind(kind);
        judge(&VpnError::Network(NetworkError::new(kind, "call")))
    }
}

/// A request that is addressed to one peer, so a breaker can be chosen for it.
pub trait PeerRequest {
    /// The destination peer.
    fn peer(&self) -> PeerId;
}

impl PeerRequest for PeerId {
    fn peer(&self) -> PeerId {
        *self
    }
}

impl PeerRequest for (PeerId, FlowKey) {
    fn peer(&self) -> PeerId {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CircuitBreakerSettings, RetrySettings};
    use crate::{ExponentialBackoff, PeerBreakers};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
    use vpn_api::BreakerState;
    use vpn_api::CircuitBreakerService;
    use vpn_errors::{NetworkErrorKind, VpnError};

    fn breakers(threshold: u32) -> Arc<PeerBreakers> {
        Arc::new(PeerBreakers::new(
            CircuitBreakerSettings::default()
                .with_failure_threshold(threshold)
                .with_reset_timeout(Duration::from_secs(5))
                .with_success_threshold(1),
        ))
    }

    fn retry(attempts: u32) -> Arc<ExponentialBackoff> {
        Arc::new(ExponentialBackoff::new(
            RetrySettings::default()
                .with_max_attempts(attempts)
                .with_initial_interval(Duration::from_millis(10))
                .with_jitter(0.0),
        ))
    }

    fn kind(r: Result<u32, VpnError>) -> Option<NetworkErrorKind> {
        r.unwrap_err().network_kind()
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_layer_refuses_without_calling_inner() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let failing = service_fn(move |_: PeerId| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err::<u32, _>(VpnError::network(NetworkErrorKind::Unreachable, "open")) }
        });
        let b = breakers(2);
        let svc = ServiceBuilder::new().layer(BreakerLayer::new(b.clone())).service(failing);
        let peer = PeerId::random();
        for _ in 0..2 {
            assert_eq!(kind(svc.clone().oneshot(peer).await), Some(NetworkErrorKind::Unreachable));
        }
        assert_eq!(kind(svc.clone().oneshot(peer).await), Some(NetworkErrorKind::CircuitOpen));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_call_counts_as_failure() {
        let never = service_fn(|_: PeerId| std::future::pending::<Result<u32, VpnError>>());
        let b = breakers(1);
        let svc = ServiceBuilder::new()
            .layer(BreakerLayer::new(b.clone()))
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .service(never);
        let peer = PeerId::random();
        let mut call = svc.clone().oneshot(peer);
        // Poll once so the call is admitted, then give up on it.
        assert!(futures::poll!(&mut call).is_pending());
        drop(call);
        assert_eq!(b.states(), vec![(peer, BreakerState::Open)]);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_layer_bounds_a_call() {
        let never = service_fn(|_: PeerId| std::future::pending::<Result<u32, VpnError>>());
        let svc = TimeoutLayer::new(Duration::from_millis(250)).layer(never);
        let start = tokio::time::Instant::now();
        assert_eq!(kind(svc.oneshot(PeerId::random()).await), Some(NetworkErrorKind::Timeout));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn the_layers_work_over_a_service_with_boxed_errors() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        // Fails twice with an I/O timeout, then never answers.
        let flaky = service_fn(move |_: PeerId| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
                    return Err(BoxError::from(timed_out));
                }
                std::future::pending::<Result<u32, BoxError>>().await
            }
        });
        let b = breakers(1);
        let svc = ServiceBuilder::new()
            .layer(BreakerLayer::new(b.clone()))
            .layer(RetryLayer::new(retry(3)))
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .service(flaky);
        let peer = PeerId::random();
        // Two passing I/O failures are retried; the third attempt times out.
        let err = svc.clone().oneshot(peer).await.unwrap_err();
        let err = err.downcast::<VpnError>().unwrap();
        assert_eq!(err.network_kind(), Some(NetworkErrorKind::Timeout));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // The breaker opened on that failure and refuses the next call without calling in.
        let refused = svc.oneshot(peer).await.unwrap_err().downcast::<VpnError>().unwrap();
        assert_eq!(refused.network_kind(), Some(NetworkErrorKind::CircuitOpen));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_boxed_error_is_judged_by_what_it_carries() {
        let kind = |e: &BoxError| e.judged_as(VpnError::network_kind);
        let carried = BoxError::from(VpnError::network(NetworkErrorKind::PeerNotAllowed, "open"));
        assert_eq!(kind(&carried), Some(NetworkErrorKind::PeerNotAllowed));
        let io = BoxError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(kind(&io), Some(NetworkErrorKind::ConnectionReset));
        let other = BoxError::from("something else");
        assert_eq!(kind(&other), Some(NetworkErrorKind::Io));
        assert!(!other.judged_as(|e| vpn_errors::is_temporary_error(e)), "not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn stack_retries_inside_the_breaker() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let flaky = service_fn(move |_: PeerId| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(VpnError::network(NetworkErrorKind::Timeout, "open"))
                } else {
                    Ok(n)
                }
            }
        });
        let b = breakers(1);
        let svc = ServiceBuilder::new()
            .layer(BreakerLayer::new(b.clone()))
            .layer(TimeoutLayer::new(Duration::from_secs(1)))
            .layer(RetryLayer::new(retry(3)))
            .service(flaky);
        let peer = PeerId::random();
        assert_eq!(svc.oneshot(peer).await.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // The breaker saw one call, and it succeeded.
        assert_eq!(b.states(), vec![(peer, BreakerState::Closed)]);
    }
}
