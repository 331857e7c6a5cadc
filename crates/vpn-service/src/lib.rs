//! The VPN service of vpn-node: [`VpnNode`] implements [`vpn_api::VpnService`], and
//! [`VpnNode::builder`] is the composition root that builds it from its parts (trait
//! objects; each part not given is the default the `vpn-node` program runs with).
//!
//! Start order: metrics; the IP registry; the libp2p swarm (listening, bootstrap); discovery
//! over the DHT; the stream service, pool and health checking; breakers, retry, workers and
//! the dispatcher; the TUN device; the receiver (accept loop, checks, TUN writer); the TUN
//! reader; and last, publishing our IP record (then republishing it). Stop runs the other
//! way, and returns once every task the node spawned has ended and it holds its TUN device
//! no more. A part that fails to start is named in the error, and what had started is
//! stopped.

mod budget;
mod builder;
mod control;
mod fault;
mod identity;
mod inbound;
mod node;
mod publisher;
mod receiver;
mod tasks;
mod tun_reader;

pub use builder::VpnNodeBuilder;
pub use control::{peers_json, query_control, serve_control, status_json};
pub use identity::{create_identity, load_identity};
pub use node::{CREATE_TUN, VpnNode};
pub use receiver::{InboundCheck, Verdict};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
