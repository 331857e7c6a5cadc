//! The vpn-node packet library in one crate, for embedders.
//!
//! It re-exports the packet types ([`PacketInfo`], [`FlowKey`], [`QueuedPacket`], ...), the
//! errors and their classification ([`VpnError`], [`is_temporary_error`], ...), the
//! packet parser ([`extract_ip_and_ports`]), and the engine that moves packets: the
//! [`Dispatcher`] and its flow [`Worker`]s with their [`WorkerContext`].
//!
//! ```
//! use std::io;
//! use vpn_packet::{extract_ip_and_ports, is_temporary_error, FlowKey, NetworkError};
//!
//! // An IPv6/UDP packet from [fd00::1]:5000 to [fd00::2]:53 with no payload.
//! let mut packet = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
//! packet.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
//! packet.extend_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
//! packet.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
//!
//! let info = extract_ip_and_ports(&packet).unwrap();
//! assert_eq!(FlowKey::from(&info).to_string(), "[fd00::2]:53");
//!
//! let err = NetworkError::from_io("write", io::Error::from(io::ErrorKind::TimedOut));
//! assert!(is_temporary_error(&err));
//! ```

pub use vpn_dispatcher::Dispatcher;
pub use vpn_errors::{
    BoxError, ConfigError, NetworkError, NetworkErrorKind, PacketError, ServiceError,
    ServiceErrorKind, VpnError, is_connection_reset_error, is_network_error, is_temporary_error,
};
pub use vpn_types::{DropReason, FlowKey, GsoInfo, GsoType, PacketInfo};
pub use vpn_utils::{declared_ip_len, extract_ip_and_ports, validate_ip_packet};
pub use vpn_worker::{
    QueuedPacket, SendResult, Worker, WorkerContext, WorkerFigures, WorkerHandle, WorkerSettings,
};

#[cfg(test)]
mod tests {
    use super::*;
    use vpn_testutil::PacketBuilder;

    #[test]
    fn facade_parses_and_classifies() {
        let packet =
            PacketBuilder::tcp("100.64.0.1".parse().unwrap(), "100.64.0.9".parse().unwrap(), 1, 22)
                .build();
        let info = extract_ip_and_ports(&packet).unwrap();
        assert_eq!(FlowKey::from(&info).to_string(), "100.64.0.9:22");
        let err = VpnError::from(extract_ip_and_ports(&packet[..10]).unwrap_err());
        assert!(!is_network_error(&err));
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
