//! What a peer may ask of an offload super-packet: the segmentation is worked out from the
//! packet itself, and the peer's header only has to agree with it.

use vpn_types::PacketError;
use vpn_types::{GsoInfo, GsoType};

use crate::{PROTO_TCP, PROTO_UDP, validate_ip_packet};

/// The most segments one super-packet may become (the sender's TUN is set to make no more).
pub const MAX_SEGMENTS: usize = 64;
/// The smallest payload per segment a super-packet may ask for. With at most
/// [`MAX_SEGMENTS`] segments a frame costs at most that many TUN writes and that many
/// copies of its headers; the floor keeps a hostile peer from asking for 1-byte segments.
pub const MIN_GSO_SIZE: u16 = 64;

/// Offset of the checksum field in a TCP header.
const TCP_CSUM: u16 = 16;
/// Offset of the checksum field in a UDP header.
const UDP_CSUM: u16 = 6;

fn refused(protocol: u8) -> PacketError {
    PacketError::TruncatedTransport { protocol }
}

/// The segmentation of the super-packet `packet`, derived from the packet: the kind from
/// its IP version and protocol, the transport header's offset from the IP header (IPv4
/// options included; IPv6 without extension headers), the header length from the
/// transport header, the checksum field where the protocol keeps it. Only `gso_size`,
/// which the packet cannot tell, comes from `claimed`, and only when it is at least
/// [`MIN_GSO_SIZE`] and cuts the payload into at most [`MAX_SEGMENTS`] segments.
///
/// Errors: a packet that is not one whole unfragmented IPv4 or IPv6 TCP or UDP packet, or a
/// `claimed` header that disagrees with the derived one in any field.
pub fn super_packet_gso(packet: &[u8], claimed: &GsoInfo) -> Result<GsoInfo, PacketError> {
    let info = validate_ip_packet(packet)?;
    let protocol = info.protocol;
    let v4 = packet.first().is_some_and(|b| b >> 4 == 4);
    let (l4, gso_type, csum_offset) = match (v4, protocol) {
        (true, PROTO_TCP) => (ipv4_header_len(packet)?, GsoType::TcpV4, TCP_CSUM),
        (false, PROTO_TCP) => (ipv6_header_len(packet, protocol)?, GsoType::TcpV6, TCP_CSUM),
        (true, PROTO_UDP) => (ipv4_header_len(packet)?, GsoType::Udp, UDP_CSUM),
        (false, PROTO_UDP) => (ipv6_header_len(packet, protocol)?, GsoType::Udp, UDP_CSUM),
        _ => return Err(refused(protocol)),
    };
    let transport = if protocol == PROTO_TCP {
        let offset = packet.get(l4 + 12).ok_or(refused(protocol))?;
        usize::from(offset >> 4) * 4
    } else {
        8
    };
    let hdr_len = l4 + transport;
    if transport < 8 || hdr_len > packet.len() {
        return Err(refused(protocol));
    }
    let payload = packet.len() - hdr_len;
    let gso_size = claimed.gso_size;
    if gso_size < MIN_GSO_SIZE || payload.div_ceil(usize::from(gso_size)) > MAX_SEGMENTS {
        return Err(refused(protocol));
    }
    let derived = GsoInfo {
        gso_type,
        needs_csum: true,
        hdr_len: u16::try_from(hdr_len).map_err(|_| refused(protocol))?,
        gso_size,
        csum_start: u16::try_from(l4).map_err(|_| refused(protocol))?,
        csum_offset,
    };
    if derived != *claimed {
        return Err(refused(protocol));
    }
    Ok(derived)
}

/// The IPv4 header's length, of an unfragmented packet (a fragment is no super-packet).
fn ipv4_header_len(packet: &[u8]) -> Result<usize, PacketError> {
    let ihl = packet.first().map(|b| usize::from(b & 0x0f) * 4).ok_or(PacketError::Empty)?;
    let flags_offset = packet.get(6..8).ok_or(PacketError::Empty)?;
    let more_fragments = flags_offset.first().is_some_and(|b| b & 0x20 != 0);
    let offset = u16::from_be_bytes([
        flags_offset.first().map_or(0, |b| b & 0x1f),
        flags_offset.get(1).copied().unwrap_or(0),
    ]);
    if more_fragments || offset != 0 {
        return Err(refused(packet.get(9).copied().unwrap_or(0)));
    }
    Ok(ihl)
}

/// The IPv6 header's length when the transport header follows it at once: a super-packet
/// with extension headers is not one the kernel makes, and is refused.
fn ipv6_header_len(packet: &[u8], protocol: u8) -> Result<usize, PacketError> {
    match packet.get(6) {
        Some(&next) if next == protocol => Ok(40),
        _ => Err(refused(protocol)),
    }
}
