//! Test support for vpn-node.
//!
//! - [`mocks`]: mockall mocks of every `vpn-api` trait (`MockPeerDiscovery`, ...).
//! - [`PacketBuilder`]: valid IPv4/IPv6 TCP, UDP and ICMP echo packets with checksums,
//!   optionally fragmented or with an IPv6 hop-by-hop header.
//! - [`memory_stream_pair`]: two connected in-memory [`vpn_api::VpnStream`]s.
//! - [`MemoryTun`]: an in-memory [`vpn_api::TunDevice`] and the [`MemoryTunHandle`] that
//!   plays the operating system's side.
//! - [`FaultyStream`]: wraps a stream to fail the Nth write, delay writes, or reset.
//! - [`MemoryStreams`]: a `StreamService` of in-memory streams, with refused opens and
//!   injected faults, that counts what it opened and what is still alive.
//!
//! ```
//! use vpn_testutil::PacketBuilder;
//!
//! let packet = PacketBuilder::udp("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap(), 5000, 53)
//!     .payload(b"hello")
//!     .build();
//! assert_eq!(packet.len(), 20 + 8 + 5);
//! ```

// Test support: a panic here is a failing test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod fault;
mod memory_stream;
mod memory_streams;
mod memory_tun;
pub mod mocks;
mod packet;

pub use fault::{Faults, FaultyStream};
pub use memory_stream::{MemoryStream, memory_stream_pair};
pub use memory_streams::{Accepted, MemoryStreams};
pub use memory_tun::{MemoryTun, MemoryTunHandle};
pub use packet::PacketBuilder;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
