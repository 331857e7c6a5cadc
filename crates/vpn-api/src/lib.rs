//! The contracts of vpn-node.
//!
//! Every component of the node is written against these traits and receives its
//! collaborators through its constructor, as `Arc<dyn Trait>` or as a generic parameter.
//! That keeps each crate testable alone (the mocks live in `vpn-testutil`) and lets an
//! embedder swap any part.
//!
//! | trait | what it does |
//! |---|---|
//! | [`VpnService`] | the whole node: start, stop, counters |
//! | [`PeerDiscoveryService`] | overlay address -> peer ID, and publishing our own record |
//! | [`StreamService`] | opens a new VPN stream to a peer |
//! | [`StreamPoolService`] | flow-affine leases on pooled streams |
//! | [`CircuitBreakerService`] | a breaker per destination peer |
//! | [`RetryService`] | retry with exponential backoff |
//! | [`StreamHealthService`] | health checking (PING/PONG) and stream warming |
//! | [`MetricsService`] | the node's counters |
//! | [`IpRegistry`] | may this peer hold this address? |
//! | [`TunDevice`] | the local packet interface |
//! | [`VpnStream`] | one byte stream to a peer |
//! | [`DatagramPaths`] | which peers take packets as datagrams, and their [`DatagramPath`] |
//!
//! Methods that may wait on the network are `async`; the rest return at once.
//!
//! ```
//! use std::sync::Arc;
//! use vpn_api::{IpRegistry, PeerId};
//! use vpn_api::IpNet;
//!
//! /// A registry that lets every peer hold addresses in 100.64.0.0/10 only.
//! struct CarrierGradeOnly;
//!
//! impl IpRegistry for CarrierGradeOnly {
//!     fn may_hold(&self, _peer: &PeerId, net: &IpNet) -> bool {
//!         let range: IpNet = "100.64.0.0/10".parse().expect("valid prefix");
//!         range.contains(net)
//!     }
//! }
//!
//! let registry: Arc<dyn IpRegistry> = Arc::new(CarrierGradeOnly);
//! let peer = PeerId::random();
//! assert!(registry.may_hold(&peer, &"100.64.0.2/32".parse().expect("valid")));
//! assert!(!registry.may_hold(&peer, &"10.0.0.0/8".parse().expect("valid")));
//! ```

mod datagram;
mod discovery;
mod health;
mod metrics;
mod registry;
mod resilience;
mod service;
mod snapshot;
mod stream;
mod tun;

pub use datagram::{DatagramPath, DatagramPaths};
pub use discovery::{DhtRecords, PeerDiscoveryService};
pub use health::StreamHealthService;
pub use metrics::MetricsService;
pub use registry::IpRegistry;
pub use resilience::circuit_open_error;
pub use resilience::{
    BreakerPermit, CircuitBreakerExt, CircuitBreakerService, RetryExt, RetrySchedule, RetryService,
};
pub use service::VpnService;
pub use snapshot::{BreakerState, HealthSnapshot, MetricsSnapshot, PeerHealth};
pub use stream::{FrameBatch, FrameSink, StreamLease, StreamPoolService, StreamService, VpnStream};
pub use tun::{TunDevice, TunPacket};

pub use async_trait::async_trait;
pub use ipnet::IpNet;
pub use libp2p_identity::PeerId;
pub use multiaddr::{self, Multiaddr};
pub use vpn_errors::VpnError;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
