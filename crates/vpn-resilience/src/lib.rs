//! Resilience for vpn-node: circuit breakers per destination peer and retry with
//! exponential backoff, as `vpn-api` services and as tower layers.
//!
//! - [`CircuitBreaker`]: one breaker as a plain state machine driven by the clock you give it.
//! - [`PeerBreakers`]: a [`vpn_api::CircuitBreakerService`] with a breaker per peer, which
//!   forgets breakers unused for `idle_eviction`.
//! - [`ExponentialBackoff`]: a [`vpn_api::RetryService`].
//! - [`BreakerLayer`], [`RetryLayer`], [`TimeoutLayer`]: the same as tower layers, for a
//!   service whose requests name a peer ([`PeerRequest`]), with any error type that a
//!   [`vpn_errors::VpnError`] converts into (the layers' own refusals and timeouts) and that
//!   the retry schedule can judge ([`Retryable`]): `VpnError` itself, or tower's `BoxError`.
//!
//! ```
//! use std::sync::Arc;
//! use vpn_api::{BreakerState, CircuitBreakerExt, CircuitBreakerService, PeerId};
//! use vpn_resilience::{CircuitBreakerSettings, PeerBreakers};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breakers = PeerBreakers::new(CircuitBreakerSettings::default().with_failure_threshold(1));
//! let peer = PeerId::random();
//! let failed: Result<(), _> = breakers
//!     .execute(&peer, || async { Err(vpn_errors::VpnError::network(vpn_errors::NetworkErrorKind::Timeout, "open")) })
//!     .await;
//! assert!(failed.is_err());
//! assert_eq!(breakers.states(), vec![(peer, BreakerState::Open)]);
//! # }
//! ```

mod backoff;
mod breaker;
mod layer;
mod peer_breakers;
mod settings;

pub use backoff::{BackoffSchedule, ExponentialBackoff};
pub use breaker::CircuitBreaker;
pub use layer::{
    Breaker, BreakerLayer, PeerRequest, Retry, RetryLayer, Retryable, Timeout, TimeoutLayer,
};
pub use peer_breakers::PeerBreakers;
pub use settings::{CircuitBreakerSettings, RetrySettings};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
