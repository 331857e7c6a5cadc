//! Cutting an offload super-packet into the segments the kernel would have sent.

use bytes::{Bytes, BytesMut};
use vpn_types::PacketError;
use vpn_types::{GsoInfo, GsoType};

use crate::{PROTO_TCP, PROTO_UDP, checksum_add, checksum_finish};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

fn bad(protocol: u8) -> PacketError {
    PacketError::TruncatedTransport { protocol }
}

/// Cuts `packet`, an offload super-packet described by `gso`, into segments of at most
/// `gso_size` payload bytes, appending each to `out` (their bytes share one buffer).
///
/// Every segment gets its own IP length, IPv4 identification (the first segment's plus its
/// index) and header checksum; TCP segments their sequence number, with FIN and PSH only on
/// the last segment and CWR only on the first; UDP segments their length; and every segment
/// a complete transport checksum. The result is what a receiver with offload would have
/// seen, so a node without offload delivers the same packets.
///
/// `gso` must be what [`crate::super_packet_gso`] derives from the packet, so the segments
/// are at most [`crate::MAX_SEGMENTS`] and every one has the super-packet's addresses,
/// protocol and ports.
///
/// Errors: headers that do not fit the packet or do not match `gso` (a malformed packet).
pub fn segment(packet: &[u8], gso: &GsoInfo, out: &mut Vec<Bytes>) -> Result<(), PacketError> {
    let gso = &crate::super_packet_gso(packet, gso)?;
    let hdr_len = usize::from(gso.hdr_len);
    let l4 = usize::from(gso.csum_start);
    let v4 = packet.first().is_some_and(|b| b >> 4 == 4);
    let protocol = match gso.gso_type {
        GsoType::TcpV4 | GsoType::TcpV6 => PROTO_TCP,
        GsoType::Udp => PROTO_UDP,
    };
    let family_ok = match gso.gso_type {
        GsoType::TcpV4 => v4,
        GsoType::TcpV6 => packet.first().is_some_and(|b| b >> 4 == 6),
        GsoType::Udp => true,
    };
    let min_l4 = if protocol == PROTO_TCP { 20 } else { 8 };
    let min_ip = if v4 { 20 } else { 40 };
    if !family_ok
        || gso.gso_size == 0
        || l4 < min_ip
        || l4 + min_l4 > hdr_len
        || hdr_len > packet.len()
    {
        return Err(bad(protocol));
    }
    let (header, payload) = packet.split_at(hdr_len);
    let count = payload.len().div_ceil(usize::from(gso.gso_size)).max(1);
    let mut buf = BytesMut::with_capacity(packet.len() + count * hdr_len);
    for (i, chunk) in payload.chunks(usize::from(gso.gso_size)).enumerate() {
        buf.extend_from_slice(header);
        buf.extend_from_slice(chunk);
        let mut seg = buf.split();
        fix_segment(&mut seg, i, i + 1 == count, v4, l4, protocol, gso.gso_size)?;
        out.push(seg.freeze());
    }
    Ok(())
}

fn put_u16(buf: &mut [u8], at: usize, value: u16) -> Result<(), PacketError> {
    buf.get_mut(at..at + 2).ok_or(PacketError::Empty)?.copy_from_slice(&value.to_be_bytes());
    Ok(())
}

fn get_u16(buf: &[u8], at: usize) -> Result<u16, PacketError> {
    let b: [u8; 2] =
        buf.get(at..at + 2).and_then(|b| b.try_into().ok()).ok_or(PacketError::Empty)?;
    Ok(u16::from_be_bytes(b))
}

/// Rewrites one segment's lengths, counters, flags and checksums.
fn fix_segment(
    seg: &mut BytesMut,
    index: usize,
    last: bool,
    v4: bool,
    l4: usize,
    protocol: u8,
    gso_size: u16,
) -> Result<(), PacketError> {
    let len = seg.len();
    let total = u16::try_from(len).map_err(|_| bad(protocol))?;
    if v4 {
        put_u16(seg, 2, total)?;
        let ident = get_u16(seg, 4)?.wrapping_add(index as u16);
        put_u16(seg, 4, ident)?;
    } else {
        put_u16(seg, 4, total.checked_sub(40).ok_or(bad(protocol))?)?;
    }
    let step = u32::try_from(index * usize::from(gso_size)).map_err(|_| bad(protocol))?;
    if protocol == PROTO_TCP {
        let seq = u32::from_be_bytes(
            seg.get(l4 + 4..l4 + 8).ok_or(bad(protocol))?.try_into().map_err(|_| bad(protocol))?,
        );
        seg.get_mut(l4 + 4..l4 + 8)
            .ok_or(bad(protocol))?
            .copy_from_slice(&seq.wrapping_add(step).to_be_bytes());
        let flags = seg.get_mut(l4 + 13).ok_or(bad(protocol))?;
        if !last {
            *flags &= !(TCP_FIN | TCP_PSH);
        }
        if index > 0 {
            *flags &= !TCP_CWR;
        }
    } else {
        put_u16(seg, l4 + 4, total - l4 as u16)?;
    }
    checksums(seg, v4, l4, protocol)
}

fn checksums(seg: &mut BytesMut, v4: bool, l4: usize, protocol: u8) -> Result<(), PacketError> {
    let csum_at = l4 + if protocol == PROTO_TCP { 16 } else { 6 };
    put_u16(seg, csum_at, 0)?;
    // The addresses, for the pseudo-header.
    let addrs = if v4 {
        put_u16(seg, 10, 0)?;
        let ihl = usize::from(seg.first().ok_or(bad(protocol))? & 0x0f) * 4;
        let header = checksum_finish(checksum_add(0, seg.get(..ihl).ok_or(bad(protocol))?));
        put_u16(seg, 10, header)?;
        12..20
    } else {
        8..40
    };
    let l4_len = seg.len().checked_sub(l4).ok_or(bad(protocol))?;
    let pseudo =
        checksum_add(0, seg.get(addrs).ok_or(bad(protocol))?) + u64::from(protocol) + l4_len as u64;
    let sum = checksum_finish(checksum_add(pseudo, seg.get(l4..).ok_or(bad(protocol))?));
    // A UDP checksum that comes out as zero is sent as all ones (zero means "none").
    let sum = if protocol == PROTO_UDP && sum == 0 { 0xffff } else { sum };
    put_u16(seg, csum_at, sum)
}
