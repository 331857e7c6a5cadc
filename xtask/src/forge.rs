//! Sends one IPv4/UDP packet with a source address of our choosing (a forged one), through
//! the routing table of the namespace this runs in. Used by the end-to-end test.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// IPPROTO_RAW: the caller writes the whole IP header.
const IPPROTO_RAW: i32 = 255;

/// The bytes of a UDP packet from `src` to `dst` (port 9) with `payload`; the UDP checksum
/// is left out (zero), which IPv4 allows.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p);
    p.splice(10..12, sum.to_be_bytes());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&9u16.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([*w.first().unwrap_or(&0), *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `xtask forge SRC DST`
pub fn run(args: &[String]) -> Result<()> {
    let src: Ipv4Addr = args.first().context("usage: forge SRC DST")?.parse()?;
    let dst: Ipv4Addr = args.get(1).context("usage: forge SRC DST")?.parse()?;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .context("raw socket (needs root)")?;
    let packet = udp_packet(src, dst, b"forged source");
    socket
        .send_to(&packet, &SockAddr::from(SocketAddrV4::new(dst, 0)))
        .context("send the forged packet")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_packet_has_a_valid_header() {
        let p = udp_packet("100.64.0.77".parse().unwrap(), "100.64.0.2".parse().unwrap(), b"x");
        assert_eq!(p.len(), 29);
        assert_eq!(checksum(&p[..20]), 0, "a header with its checksum sums to zero");
        assert_eq!(&p[12..16], &[100, 64, 0, 77]);
    }
}
