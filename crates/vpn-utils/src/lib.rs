//! Packet parsing for vpn-node.
//!
//! [`extract_ip_and_ports`] reads the addresses, ports and upper-layer protocol of an IPv4
//! or IPv6 packet as read from a TUN device. It checks every length before it reads, so
//! truncated or hostile input is an `Err`, never a panic.
//!
//! ```
//! use vpn_utils::extract_ip_and_ports;
//!
//! // An IPv4/UDP packet from 100.64.0.1:5000 to 100.64.0.2:53 with no payload.
//! let packet = [
//!     0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
//!     0x13, 0x88, 0, 53, 0, 8, 0, 0,
//! ];
//! let info = extract_ip_and_ports(&packet).expect("a valid packet");
//! assert_eq!(info.dst_ip.to_string(), "100.64.0.2");
//! assert_eq!((info.src_port, info.dst_port), (Some(5000), Some(53)));
//! assert_eq!(info.protocol, 17);
//! assert!(extract_ip_and_ports(&packet[..25]).is_err());
//! ```

mod checksum;
mod gso;
mod ipv4;
mod ipv6;
mod segment;
mod too_big;
mod transport;

pub use checksum::{checksum_add, checksum_finish};
pub use gso::{MAX_SEGMENTS, MIN_GSO_SIZE, super_packet_gso};
pub use segment::segment;
pub use too_big::too_big_reply;

use vpn_types::PacketError;
use vpn_types::PacketInfo;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// The addresses, ports and upper-layer protocol of an IP packet.
///
/// IPv4: the version, header length and total length are checked (bytes past the total
/// length are ignored). IPv6: the payload length is checked and the extension headers
/// (hop-by-hop, routing, fragment, destination options, AH, mobility, HIP, shim6) are walked
/// to the upper-layer header. Ports are read only for TCP and UDP, and only from an
/// unfragmented packet or a first fragment; a TCP or UDP header cut short is an error.
pub fn extract_ip_and_ports(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    match ip_version(packet)? {
        4 => ipv4::parse(packet),
        _ => ipv6::parse(packet),
    }
}

/// The length the IP header declares for the whole packet (IPv4 total length, or IPv6
/// payload length plus the fixed header), after checking the fixed header is present.
pub fn declared_ip_len(packet: &[u8]) -> Result<usize, PacketError> {
    match ip_version(packet)? {
        4 => ipv4::declared_len(packet),
        _ => ipv6::declared_len(packet),
    }
}

/// Checks that `packet` is one whole IP packet whose length field agrees with its size
/// exactly, and returns its facts. This is the receiver's check on a PACKET frame.
pub fn validate_ip_packet(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    let declared = declared_ip_len(packet)?;
    if declared != packet.len() {
        return Err(PacketError::BadTotalLength { declared, len: packet.len() });
    }
    extract_ip_and_ports(packet)
}

/// The IP version, 4 or 6.
fn ip_version(packet: &[u8]) -> Result<u8, PacketError> {
    let first = packet.first().ok_or(PacketError::Empty)?;
    match first >> 4 {
        v @ (4 | 6) => Ok(v),
        v => Err(PacketError::BadVersion(v)),
    }
}

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
