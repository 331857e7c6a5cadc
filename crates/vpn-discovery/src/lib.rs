//! Peer discovery of vpn-node.
//!
//! - [`StaticRegistry`]: the [`vpn_api::IpRegistry`] from the configuration: each
//!   configured peer may hold exactly its configured addresses and routes; each allowed
//!   peer may claim addresses of the overlay that nobody configured holds.
//! - [`KadDiscovery`]: the [`vpn_api::PeerDiscoveryService`]: configured peers first, then
//!   a cache (positive and short negative entries, concurrent lookups coalesced), then
//!   signed IP records in the DHT, each checked with [`vpn_wire::IpRecord::open`] and
//!   chosen with [`vpn_wire::select_record`]. Two owners of one address are a conflict:
//!   refused, logged and counted, never resolved silently.
//! - [`record_filter`]: the check every record another peer stores with us passes.

mod kad;
mod lru;
mod membership;
mod registry;

pub use kad::{KadDiscovery, record_filter, unix_now};
pub use membership::{MAX_CERTIFIED, Membership};
pub use registry::{LiveRegistry, StaticRegistry};

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
