//! Plain data types shared by every vpn-node crate.
//!
//! Nothing here does I/O. The types describe a packet ([`PacketInfo`]), the flow it belongs
//! to ([`FlowKey`]), a packet waiting in a worker queue ([`QueuedPacket`]), why a packet was
//! dropped ([`DropReason`]), snapshots of counters and states, and the settings of each
//! component with their defaults.
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
mod queued;
pub mod settings;
mod snapshot;
mod warn;

pub use budget::{BudgetPermit, ByteBudget};
pub use drop::{Budget, DropReason};
pub use ipnet::IpNet;
pub use libp2p_identity::PeerId;
pub use multiaddr::{self, Multiaddr};
pub use offload::{GsoInfo, GsoType};
pub use packet::{FlowKey, PacketInfo};
pub use packet_error::PacketError;
pub use queued::{QueuedPacket, SendResult};
pub use settings::{
    CircuitBreakerSettings, ControlSettings, DiscoverySettings, FirewallSettings,
    HealthCheckSettings, InterfaceSettings, LimitSettings, MetricsSettings, NetworkSettings,
    NodeSettings, PeerSettings, RetrySettings, StreamPoolSettings, Transport, VpnConfig,
    WorkerSettings,
};
pub use snapshot::{BreakerState, HealthSnapshot, MetricsSnapshot, PeerHealth};
pub use warn::WarnGate;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
