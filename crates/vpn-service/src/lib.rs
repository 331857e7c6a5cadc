//! The VPN service of vpn-node: [`VpnNode`] composes every part and implements
//! [`vpn_api::VpnService`].
//!
//! Start order: metrics; the IP registry; the libp2p swarm (listening, bootstrap); discovery
//! over the DHT; the stream service, pool and health checking; breakers, retry, workers and
//! the dispatcher; the TUN device; the receiver (accept loop, checks, TUN writer); the TUN
//! reader; and last, publishing our IP record (then republishing it). Stop runs the other
//! way. A part that fails to start is named in the error, and what had started is stopped.

mod budget;
mod control;
mod identity;
mod node;
mod receiver;

pub use control::{peers_json, query_control, serve_control, status_json};
pub use identity::{create_identity, load_identity};
pub use node::{CREATE_TUN, TunSource, VpnNode};
pub use receiver::{InboundCheck, Verdict};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
