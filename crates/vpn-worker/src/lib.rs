//! Flow workers of vpn-node: each [`Worker`] takes one flow's packets, in order, and sends
//! them to the peer that owns their destination.
//!
//! A worker drains its queue in batches (up to `batch_max`), resolves the destination's peer
//! (every batch, through the discovery service's cache, so a changed mapping is followed),
//! keeps a flow-affine stream lease while the stream stays healthy, and opens a new lease
//! through a tower stack: the peer's circuit breaker, a time limit, and retry with backoff
//! around the open itself. Each batch becomes PACKET or SEGMENTED frames in one buffer handed
//! to the stream's writer. A batch that cannot be handed over within `send_timeout` is
//! dropped and counted by reason (`no_peer`, `circuit_open`, `stream_error`, `timeout`);
//! packets are never retried (the inner TCP does that).

mod context;
mod queued;
mod settings;
mod worker;

pub use context::WorkerContext;
pub use queued::{QueuedPacket, SendResult};
pub use settings::WorkerSettings;
pub use worker::{Worker, WorkerFigures, WorkerHandle};

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
