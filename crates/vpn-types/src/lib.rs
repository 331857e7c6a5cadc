//! Plain data types shared by every vpn-node crate.
//!
//! Nothing here does I/O and nothing depends on another crate. The types describe a packet
//! ([`PacketInfo`]), the flow it belongs to ([`FlowKey`]), segmentation offload ([`GsoInfo`]),
//! why a packet was dropped ([`DropReason`]) and which per-peer budget bit ([`Budget`]);
//! [`ByteBudget`] bounds bytes held, [`WarnGate`] bounds warnings, and [`settings!`] gives every
//! crate's settings section the same shape.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use vpn_types::{FlowKey, PacketInfo};
//!
//! let info = PacketInfo {
//!     src_ip: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
//!     dst_ip: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
//!     src_port: Some(40000),
//!     dst_port: Some(443),
//!     protocol: 6,
//! };
//! let key = FlowKey::from(&info);
//! assert_eq!(key.to_string(), "100.64.0.2:443");
//! ```

mod budget;
mod drop;
mod offload;
mod packet;
mod packet_error;
mod settings;
mod warn;

pub use budget::{BudgetPermit, ByteBudget};
pub use drop::{Budget, DialRefusal, DropReason, PeerRefusal};
pub use offload::{GsoInfo, GsoType};
pub use packet::{FlowKey, PacketInfo};
pub use packet_error::PacketError;
pub use warn::{PeerText, WarnGate};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
