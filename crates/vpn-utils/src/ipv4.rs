use std::net::IpAddr;

use pnet_packet::ipv4::Ipv4Packet;
use vpn_types::PacketError;
use vpn_types::PacketInfo;

use crate::transport::ports;

const MIN_HEADER: usize = Ipv4Packet::minimum_packet_size();

fn header(packet: &[u8]) -> Result<Ipv4Packet<'_>, PacketError> {
    Ipv4Packet::new(packet).ok_or(PacketError::TruncatedHeader {
        version: 4,
        needed: MIN_HEADER,
        len: packet.len(),
    })
}

/// The header length in bytes, checked against the packet.
fn header_len(ip: &Ipv4Packet<'_>, len: usize) -> Result<usize, PacketError> {
    let ihl = ip.get_header_length();
    let bytes = usize::from(ihl) * 4;
    if bytes < MIN_HEADER || bytes > len {
        return Err(PacketError::BadHeaderLength { ihl, len });
    }
    Ok(bytes)
}

pub(crate) fn declared_len(packet: &[u8]) -> Result<usize, PacketError> {
    let ip = header(packet)?;
    let hlen = header_len(&ip, packet.len())?;
    let total = usize::from(ip.get_total_length());
    if total < hlen || total > packet.len() {
        return Err(PacketError::BadTotalLength { declared: total, len: packet.len() });
    }
    Ok(total)
}

pub(crate) fn parse(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    let total = declared_len(packet)?;
    let ip = header(packet)?;
    let hlen = header_len(&ip, packet.len())?;
    let protocol = ip.get_next_level_protocol().0;
    let (src_port, dst_port) = if ip.get_fragment_offset() == 0 {
        let payload = packet.get(hlen..total).unwrap_or_default();
        ports(protocol, payload)?
    } else {
        (None, None)
    };
    Ok(PacketInfo {
        src_ip: IpAddr::V4(ip.get_source()),
        dst_ip: IpAddr::V4(ip.get_destination()),
        src_port,
        dst_port,
        protocol,
    })
}
