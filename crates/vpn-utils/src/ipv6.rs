use std::net::IpAddr;

use pnet_packet::ipv6::Ipv6Packet;
use vpn_types::PacketError;
use vpn_types::PacketInfo;

use crate::transport::ports;

const FIXED_HEADER: usize = Ipv6Packet::minimum_packet_size();

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTIONS: u8 = 60;
const MOBILITY: u8 = 135;
const HIP: u8 = 139;
const SHIM6: u8 = 140;

fn header(packet: &[u8]) -> Result<Ipv6Packet<'_>, PacketError> {
    Ipv6Packet::new(packet).ok_or(PacketError::TruncatedHeader {
        version: 6,
        needed: FIXED_HEADER,
        len: packet.len(),
    })
}

pub(crate) fn declared_len(packet: &[u8]) -> Result<usize, PacketError> {
    let ip = header(packet)?;
    let total = FIXED_HEADER + usize::from(ip.get_payload_length());
    if total > packet.len() {
        return Err(PacketError::BadTotalLength { declared: total, len: packet.len() });
    }
    Ok(total)
}

/// Where the extension header chain ends.
struct UpperLayer {
    protocol: u8,
    /// Offset of the upper-layer header, or `None` in a non-first fragment.
    offset: Option<usize>,
}

/// Walks the extension headers of `packet[..end]` from the fixed header's next header.
fn walk(packet: &[u8], end: usize, first: u8) -> Result<UpperLayer, PacketError> {
    let mut next = first;
    let mut offset = FIXED_HEADER;
    loop {
        let truncated = PacketError::TruncatedExtension { next_header: next };
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTIONS | MOBILITY | HIP | SHIM6 => {
                let ext_len = *packet.get(offset + 1).ok_or(truncated)?;
                (usize::from(ext_len) + 1) * 8
            }
            AUTH => {
                let payload_len = *packet.get(offset + 1).ok_or(truncated)?;
                (usize::from(payload_len) + 2) * 4
            }
            FRAGMENT => 8,
            protocol => return Ok(UpperLayer { protocol, offset: Some(offset) }),
        };
        if offset + len > end {
            return Err(truncated);
        }
        let header = packet.get(offset..offset + len).ok_or(truncated)?;
        let following = *header.first().ok_or(truncated)?;
        if next == FRAGMENT {
            let field = u16::from_be_bytes([
                *header.get(2).ok_or(truncated)?,
                *header.get(3).ok_or(truncated)?,
            ]);
            // The upper 13 bits are the offset in 8-byte units.
            if field >> 3 != 0 {
                return Ok(UpperLayer { protocol: following, offset: None });
            }
        }
        next = following;
        offset += len;
    }
}

pub(crate) fn parse(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    let end = declared_len(packet)?;
    let ip = header(packet)?;
    let upper = walk(packet, end, ip.get_next_header().0)?;
    let (src_port, dst_port) = match upper.offset {
        Some(offset) => ports(upper.protocol, packet.get(offset..end).unwrap_or_default())?,
        None => (None, None),
    };
    Ok(PacketInfo {
        src_ip: IpAddr::V6(ip.get_source()),
        dst_ip: IpAddr::V6(ip.get_destination()),
        src_port,
        dst_port,
        protocol: upper.protocol,
    })
}
