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
mod datagram;
mod fault;
mod identity;
mod inbound;
mod json;
mod membership;
mod node;
mod ping;
mod publisher;
mod reach;
mod receiver;
mod reload;
mod revocations;
mod tasks;
mod tun_reader;

pub use builder::VpnNodeBuilder;
pub use control::{Reloader, peers_json, query_control, serve_control, status_json};
pub use identity::{create_identity, load_identity};
pub use node::{CREATE_TUN, VpnNode, tun_config};
pub use ping::{MAX_PINGS, PingReport, PingTarget};
pub use receiver::{InboundCheck, Verdict};

/// An error and its chain of causes on one line, each said once: our errors already name
/// their source in their message, and a cause whose text the line holds is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = error.source();
    }
    line
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
