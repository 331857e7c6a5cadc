use pnet_packet::tcp::TcpPacket;
use pnet_packet::udp::UdpPacket;
use vpn_types::PacketError;

use crate::{PROTO_TCP, PROTO_UDP};

/// Source and destination ports of a TCP or UDP header at the start of `payload`; none
/// for other protocols. A TCP or UDP header cut short is an error.
pub(crate) fn ports(
    protocol: u8,
    payload: &[u8],
) -> Result<(Option<u16>, Option<u16>), PacketError> {
    let truncated = PacketError::TruncatedTransport { protocol };
    match protocol {
        PROTO_TCP => {
            let tcp = TcpPacket::new(payload).ok_or(truncated)?;
            let data_offset = usize::from(tcp.get_data_offset()) * 4;
            if data_offset < TcpPacket::minimum_packet_size() || data_offset > payload.len() {
                return Err(truncated);
            }
            Ok((Some(tcp.get_source()), Some(tcp.get_destination())))
        }
        PROTO_UDP => {
            let udp = UdpPacket::new(payload).ok_or(truncated)?;
            Ok((Some(udp.get_source()), Some(udp.get_destination())))
        }
        _ => Ok((None, None)),
    }
}
