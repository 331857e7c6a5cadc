//! Streams of vpn-node: the pool that lends them to flows, their health checking and
//! warming, and the reader of streams peers open to us.
//!
//! - [`StreamPool`]: the [`vpn_api::StreamPoolService`] over any
//!   [`vpn_api::StreamService`]. Each pooled stream is owned by one task that writes the
//!   frame batches queued for it, coalesced into large writes, and reads the PONGs that come
//!   back. Packets are counted as sent once written, or as dropped (`stream_error`) when the
//!   stream fails first.
//! - [`StreamHealth`]: the [`vpn_api::StreamHealthService`] over a pool.
//! - [`serve_inbound`]: the acceptor's frame loop.
//!
//! Nothing here knows libp2p: streams come from any [`vpn_api::StreamService`] (the libp2p
//! one is `vpn_p2p::Libp2pStreamService`, beside the swarm).

mod health;
mod inbound;
mod liveness;
mod pool;
mod pooled;
mod settings;

pub use health::StreamHealth;
pub use inbound::{InboundEnd, InboundLimits, InboundSink, serve_inbound};
pub use pool::StreamPool;
pub use settings::{HealthCheckSettings, StreamPoolSettings};

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
