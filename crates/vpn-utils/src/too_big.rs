//! The ICMP error a router sends when a packet does not fit the next link: ICMPv4
//! "fragmentation needed" (RFC 792, 1191) or ICMPv6 "packet too big" (RFC 4443, 8201). The
//! sender's kernel lowers its path MTU to the destination and sends smaller packets.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{checksum_add, checksum_finish};

/// Most of the offending packet an ICMPv4 error quotes: the error fits in 576 bytes.
const V4_QUOTE: usize = 576 - 20 - 8;
/// Most of the offending packet an ICMPv6 error quotes: the error fits IPv6's minimum MTU.
const V6_QUOTE: usize = 1280 - 40 - 8;
/// The smallest MTU an IPv6 path may have.
const V6_MIN_MTU: u32 = 1280;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const HOP_LIMIT: u8 = 64;

/// The ICMP error telling the sender of `packet` that the path carries IP packets of at
/// most `mtu` bytes, sent from `packet`'s destination as a router on the way would send it.
///
/// `None` where no error may be sent (RFC 1122, 4443): an IPv4 packet that may be
/// fragmented (no DF flag; it is the path's to carry), a fragment past the first, an ICMP
/// error (errors are never answered with errors), a source that is not a unicast address,
/// or a packet too short to be what it claims.
pub fn too_big_reply(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    match packet.first()? >> 4 {
        4 => too_big_v4(packet, mtu),
        6 => too_big_v6(packet, mtu),
        _ => None,
    }
}

fn too_big_v4(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return None;
    }
    let (flags, offset_low) = (*packet.get(6)?, *packet.get(7)?);
    let dont_fragment = flags & 0x40 != 0;
    let first_fragment = flags & 0x1f == 0 && offset_low == 0;
    if !dont_fragment || !first_fragment {
        return None;
    }
    if *packet.get(9)? == PROTO_ICMP && !matches!(packet.get(ihl)?, 0 | 8) {
        return None;
    }
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    let source = Ipv4Addr::from(src);
    if source.is_unspecified() || source.is_multicast() || source.is_broadcast() {
        return None;
    }
    let quote = packet.get(..packet.len().min(V4_QUOTE))?;
    let total = u16::try_from(20 + 8 + quote.len()).ok()?;
    let mut out = Vec::with_capacity(usize::from(total));
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, HOP_LIMIT, PROTO_ICMP, 0, 0]);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    let header = checksum_finish(checksum_add(0, out.get(..20)?));
    out.get_mut(10..12)?.copy_from_slice(&header.to_be_bytes());
    // Destination unreachable (3), fragmentation needed (4); the next hop's MTU.
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&mtu.to_be_bytes());
    out.extend_from_slice(quote);
    let sum = checksum_finish(checksum_add(0, out.get(20..)?));
    out.get_mut(22..24)?.copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

fn too_big_v6(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    if packet.len() < 40 {
        return None;
    }
    if *packet.get(6)? == PROTO_ICMPV6 && *packet.get(40)? < 128 {
        return None;
    }
    let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
    let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
    let source = Ipv6Addr::from(src);
    if source.is_unspecified() || source.is_multicast() {
        return None;
    }
    let quote = packet.get(..packet.len().min(V6_QUOTE))?;
    let length = u16::try_from(8 + quote.len()).ok()?;
    let mut out = Vec::with_capacity(40 + usize::from(length));
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&[PROTO_ICMPV6, HOP_LIMIT]);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    // Packet too big (2), code 0; the MTU (never below IPv6's minimum).
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(&u32::from(mtu).max(V6_MIN_MTU).to_be_bytes());
    out.extend_from_slice(quote);
    let pseudo = checksum_add(0, out.get(8..40)?) + u64::from(length) + u64::from(PROTO_ICMPV6);
    let sum = checksum_finish(checksum_add(pseudo, out.get(40..)?));
    out.get_mut(42..44)?.copy_from_slice(&sum.to_be_bytes());
    Some(out)
}
