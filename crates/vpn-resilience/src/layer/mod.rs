//! The resilience services as tower layers over a service whose errors are `VpnError`s.
//!
//! The worker stacks them around opening a stream lease:
//! `ServiceBuilder::new().layer(BreakerLayer).layer(TimeoutLayer).layer(RetryLayer)`.

mod breaker;
mod retry;
mod timeout;

pub use breaker::{Breaker, BreakerLayer};
pub use retry::{Retry, RetryLayer};
pub use timeout::{Timeout, TimeoutLayer};

use vpn_api::PeerId;
use vpn_types::FlowKey;

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
