//! The packet dispatcher of vpn-node: hands each packet read from the TUN to the worker of
//! its flow, without ever making the reader wait.
//!
//! - The flow is the destination IP and port ([`vpn_types::FlowKey`]); each flow has one
//!   [`vpn_worker::Worker`], so its packets are sent in the order they were read.
//! - A worker's queue holds `queue_capacity` packets; a packet for a full queue is dropped
//!   and counted as `queue_full`. A packet that cannot be parsed is dropped as `malformed`.
//! - Every queued packet holds its bytes of the outbound budget (`max_queued_bytes`, all
//!   flows together) until its frame is written to a stream; a packet that finds no room is
//!   dropped as `queue_full`, so a slow peer or a burst of 64 KiB super-packets cannot take
//!   memory without bound.
//! - At most `max_workers` workers run. At the cap, a packet of a flow that has no worker is
//!   dropped and counted as `worker_limit`; flows that have a worker go on as before, and
//!   room is made as idle workers are stopped.
//! - Every `cleanup_interval`, workers idle for `idle_timeout` with nothing queued are
//!   stopped (they release their stream lease).
//! - The lock the dispatcher takes covers only the map from flow to worker; looking up a
//!   peer happens in the worker, never under it.
//!
//! ```no_run
//! # async fn example(ctx: std::sync::Arc<vpn_worker::WorkerContext>, packet: bytes::Bytes) {
//! use vpn_dispatcher::Dispatcher;
//! use vpn_api::TunPacket;
//!
//! let dispatcher = Dispatcher::new(ctx);
//! dispatcher.start();
//! // From the TUN reader: never waits.
//! let _ = dispatcher.dispatch(TunPacket::new(packet));
//! dispatcher.stop().await;
//! # }
//! ```

mod dispatcher;

pub use dispatcher::Dispatcher;

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
