//! The virtio-net header the kernel puts before each packet on a TUN with offload, and the
//! work it leaves to us: finishing partial checksums and reading the segmentation request.

use vpn_types::{GsoInfo, GsoType};

/// Bytes of the header (the kernel's `struct virtio_net_hdr`, in native byte order).
pub(crate) const LEN: usize = 10;

const NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP_L4: u8 = 5;
const GSO_TCPV6: u8 = 4;

fn field(buf: &[u8], at: usize) -> Option<u16> {
    buf.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_ne_bytes)
}

/// What a read from an offload TUN holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// One packet; its checksum was finished here if the kernel left it partial.
    Packet,
    /// A super-packet to be sent whole, with how to cut it.
    Super(GsoInfo),
    /// Something this node cannot take apart (unknown segmentation, bad offsets).
    Unusable,
}

/// Reads the header at the start of `buf` and prepares the packet after it (in place).
pub(crate) fn on_read(buf: &mut [u8]) -> Read {
    let (Some(&flags), Some(&gso_type), Some(csum_start), Some(csum_offset), Some(gso_size)) =
        (buf.first(), buf.get(1), field(buf, 6), field(buf, 8), field(buf, 4))
    else {
        return Read::Unusable;
    };
    let Some(packet) = buf.get_mut(LEN..) else { return Read::Unusable };
    let needs_csum = flags & NEEDS_CSUM != 0;
    let gso_type = match gso_type {
        GSO_NONE => {
            if needs_csum && !finish_checksum(packet, csum_start, csum_offset) {
                return Read::Unusable;
            }
            return Read::Packet;
        }
        GSO_TCPV4 => GsoType::TcpV4,
        GSO_TCPV6 => GsoType::TcpV6,
        GSO_UDP_L4 => GsoType::Udp,
        _ => return Read::Unusable,
    };
    // The kernel's hdr_len is not reliable: work it out from the transport header.
    let l4 = usize::from(csum_start);
    let transport = match gso_type {
        GsoType::Udp => Some(8),
        _ => packet.get(l4 + 12).map(|b| usize::from(b >> 4) * 4),
    };
    let Some(hdr_len) = transport.map(|t| l4 + t).filter(|h| *h <= packet.len()) else {
        return Read::Unusable;
    };
    let gso = GsoInfo {
        gso_type,
        needs_csum,
        hdr_len: hdr_len as u16,
        gso_size,
        csum_start,
        csum_offset,
    };
    // Sent only as the receiver will take it: the header the packet itself calls for.
    match vpn_utils::super_packet_gso(packet, &gso) {
        Ok(gso) => Read::Super(gso),
        Err(_) => Read::Unusable,
    }
}

/// Finishes a partial transport checksum: the field holds the pseudo-header sum, and the
/// ones'-complement sum from `start` to the end goes in its place.
fn finish_checksum(packet: &mut [u8], start: u16, offset: u16) -> bool {
    let (start, at) = (usize::from(start), usize::from(start) + usize::from(offset));
    let Some(data) = packet.get(start..) else { return false };
    if at + 2 > packet.len() {
        return false;
    }
    let value = vpn_utils::checksum_finish(vpn_utils::checksum_add(0, data));
    packet.get_mut(at..at + 2).map(|f| f.copy_from_slice(&value.to_be_bytes())).is_some()
}

/// The header to write before a packet: none for a whole packet, the segmentation request
/// for a super-packet.
pub(crate) fn header(gso: Option<&GsoInfo>) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    if let Some(gso) = gso {
        out[0] = if gso.needs_csum { NEEDS_CSUM } else { 0 };
        out[1] = match gso.gso_type {
            GsoType::TcpV4 => GSO_TCPV4,
            GsoType::TcpV6 => GSO_TCPV6,
            GsoType::Udp => GSO_UDP_L4,
        };
        out[2..4].copy_from_slice(&gso.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&gso.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&gso.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&gso.csum_offset.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpn_testutil::PacketBuilder;

    fn with_header(hdr: [u8; LEN], packet: &[u8]) -> Vec<u8> {
        let mut buf = hdr.to_vec();
        buf.extend_from_slice(packet);
        buf
    }

    #[test]
    fn headers_round_trip() {
        let packet =
            PacketBuilder::tcp("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap(), 1, 2)
                .payload(&[1; 3000])
                .build();
        let gso = GsoInfo {
            gso_type: GsoType::TcpV4,
            needs_csum: true,
            hdr_len: 40,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut buf = with_header(header(Some(&gso)), &packet);
        assert_eq!(on_read(&mut buf), Read::Super(gso));
        let mut plain = with_header(header(None), &packet);
        assert_eq!(on_read(&mut plain), Read::Packet);
        assert_eq!(&plain[LEN..], &packet[..]);
    }

    #[test]
    fn partial_checksums_are_finished() {
        let packet =
            PacketBuilder::udp("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap(), 5, 6)
                .payload(b"partial")
                .build();
        // What the kernel hands over: the checksum field holds only the pseudo-header sum.
        let src = [100u32, 64, 0, 1];
        let dst = [100u32, 64, 0, 2];
        let udp_len = (packet.len() - 20) as u32;
        let mut pseudo = (src[0] << 8 | src[1])
            + (src[2] << 8 | src[3])
            + (dst[0] << 8 | dst[1])
            + (dst[2] << 8 | dst[3])
            + 17
            + udp_len;
        while pseudo > 0xffff {
            pseudo = (pseudo & 0xffff) + (pseudo >> 16);
        }
        let mut partial = packet.clone();
        partial[26..28].copy_from_slice(&(pseudo as u16).to_be_bytes());
        let mut hdr = [0u8; LEN];
        hdr[0] = NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&20u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&6u16.to_ne_bytes());
        let mut buf = with_header(hdr, &partial);
        assert_eq!(on_read(&mut buf), Read::Packet);
        assert_eq!(&buf[LEN..], &packet[..], "the finished checksum is the builder's");
    }

    #[test]
    fn unknown_or_broken_requests_are_unusable() {
        let mut short = vec![0u8; 4];
        assert_eq!(on_read(&mut short), Read::Unusable);
        let mut unknown = vec![0u8; LEN + 40];
        unknown[1] = 0x80;
        assert_eq!(on_read(&mut unknown), Read::Unusable);
        let mut past = vec![0u8; LEN + 40];
        past[1] = GSO_TCPV4;
        past[6..8].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(on_read(&mut past), Read::Unusable);
    }
}
