use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, MutableIpv4Packet};
use pnet_packet::ipv6::MutableIpv6Packet;
use pnet_packet::tcp::{self, MutableTcpPacket, TcpFlags};
use pnet_packet::udp::{self, MutableUdpPacket};
use pnet_packet::{icmpv6, util};

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp { src_port: u16, dst_port: u16, seq: u32, flags: u8 },
    Udp { src_port: u16, dst_port: u16 },
    IcmpEcho { id: u16, seq: u16 },
}

/// Builds valid IP packets for tests: correct lengths and checksums throughout.
#[derive(Debug, Clone)]
pub struct PacketBuilder {
    src: IpAddr,
    dst: IpAddr,
    transport: Transport,
    payload: Vec<u8>,
    ttl: u8,
    ident: u32,
    fragment: Option<(u16, bool)>,
    dont_fragment: bool,
    hop_by_hop: bool,
    /// 32-bit words of IPv4 options (NOPs).
    ip_option_words: u8,
    /// 32-bit words of TCP options (NOPs).
    tcp_option_words: u8,
}

impl PacketBuilder {
    fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "source and destination of one family");
        Self {
            src,
            dst,
            transport,
            payload: Vec::new(),
            ttl: 64,
            ident: 1,
            fragment: None,
            dont_fragment: false,
            hop_by_hop: false,
            ip_option_words: 0,
            tcp_option_words: 0,
        }
    }

    /// A TCP segment with the ACK flag.
    pub fn tcp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, Transport::Tcp { src_port, dst_port, seq: 1, flags: TcpFlags::ACK })
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(src, dst, Transport::Udp { src_port, dst_port })
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) echo request.
    pub fn icmp_echo(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Self {
        Self::new(src, dst, Transport::IcmpEcho { id, seq })
    }

    /// Sets the payload after the transport header.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sets the TCP sequence number (TCP only).
    pub fn seq(mut self, value: u32) -> Self {
        if let Transport::Tcp { seq, .. } = &mut self.transport {
            *seq = value;
        }
        self
    }

    /// Sets the TCP flags (TCP only).
    pub fn flags(mut self, value: u8) -> Self {
        if let Transport::Tcp { flags, .. } = &mut self.transport {
            *flags = value;
        }
        self
    }

    /// Sets the IPv4 identification or IPv6 fragment identification.
    pub fn ident(mut self, ident: u32) -> Self {
        self.ident = ident;
        self
    }

    /// Makes the packet a fragment at `offset` (in 8-byte units) with the more-fragments
    /// flag `more`. A fragment at a non-zero offset carries the payload only, with no
    /// transport header. IPv6 gets a fragment extension header.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.fragment = Some((offset, more));
        self
    }

    /// Sets the IPv4 "don't fragment" flag (IPv4 only).
    pub fn dont_fragment(mut self) -> Self {
        self.dont_fragment = true;
        self
    }

    /// Adds `words` 32-bit words of options (NOPs) to the IPv4 header, at most 10.
    pub fn ip_options(mut self, words: u8) -> Self {
        assert!(self.src.is_ipv4() && words <= 10, "up to 10 words of IPv4 options");
        self.ip_option_words = words;
        self
    }

    /// Adds `words` 32-bit words of options (NOPs) to the TCP header, at most 10.
    pub fn tcp_options(mut self, words: u8) -> Self {
        assert!(words <= 10, "up to 10 words of TCP options");
        self.tcp_option_words = words;
        self
    }

    /// Adds an IPv6 hop-by-hop options header (IPv6 only).
    pub fn hop_by_hop(mut self) -> Self {
        assert!(self.src.is_ipv6(), "hop-by-hop is an IPv6 header");
        self.hop_by_hop = true;
        self
    }

    /// The upper-layer protocol number.
    pub fn protocol(&self) -> u8 {
        match (self.transport, self.src) {
            (Transport::Tcp { .. }, _) => IpNextHeaderProtocols::Tcp.0,
            (Transport::Udp { .. }, _) => IpNextHeaderProtocols::Udp.0,
            (Transport::IcmpEcho { .. }, IpAddr::V4(_)) => IpNextHeaderProtocols::Icmp.0,
            (Transport::IcmpEcho { .. }, IpAddr::V6(_)) => IpNextHeaderProtocols::Icmpv6.0,
        }
    }

    /// The packet's bytes.
    pub fn build(&self) -> Vec<u8> {
        let body = match self.fragment {
            Some((offset, _)) if offset != 0 => self.payload.clone(),
            _ => self.transport_bytes(),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.ipv4(src, dst, &body),
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.ipv6(src, dst, &body),
            _ => unreachable!("families checked in new"),
        }
    }

    fn transport_bytes(&self) -> Vec<u8> {
        match self.transport {
            Transport::Tcp { src_port, dst_port, seq, flags } => {
                let options = 4 * usize::from(self.tcp_option_words);
                let mut buf = vec![0u8; 20 + options + self.payload.len()];
                buf[20..20 + options].fill(1);
                let mut tcp = MutableTcpPacket::new(&mut buf).expect("sized");
                tcp.set_source(src_port);
                tcp.set_destination(dst_port);
                tcp.set_sequence(seq);
                tcp.set_data_offset(5 + self.tcp_option_words);
                tcp.set_flags(flags);
                tcp.set_window(65535);
                tcp.set_payload(&self.payload);
                let sum = match (self.src, self.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        tcp::ipv4_checksum(&tcp.to_immutable(), &s, &d)
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        tcp::ipv6_checksum(&tcp.to_immutable(), &s, &d)
                    }
                    _ => unreachable!(),
                };
                tcp.set_checksum(sum);
                buf
            }
            Transport::Udp { src_port, dst_port } => {
                let mut buf = vec![0u8; 8 + self.payload.len()];
                let len = u16::try_from(buf.len()).expect("UDP datagram too large");
                let mut udp = MutableUdpPacket::new(&mut buf).expect("sized");
                udp.set_source(src_port);
                udp.set_destination(dst_port);
                udp.set_length(len);
                udp.set_payload(&self.payload);
                let sum = match (self.src, self.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        udp::ipv4_checksum(&udp.to_immutable(), &s, &d)
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        udp::ipv6_checksum(&udp.to_immutable(), &s, &d)
                    }
                    _ => unreachable!(),
                };
                udp.set_checksum(sum);
                buf
            }
            Transport::IcmpEcho { id, seq } => {
                let kind = if self.src.is_ipv4() { 8 } else { 128 };
                let mut buf = vec![kind, 0, 0, 0];
                buf.extend_from_slice(&id.to_be_bytes());
                buf.extend_from_slice(&seq.to_be_bytes());
                buf.extend_from_slice(&self.payload);
                let sum = match (self.src, self.dst) {
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        let icmp = icmpv6::Icmpv6Packet::new(&buf).expect("sized");
                        icmpv6::checksum(&icmp, &s, &d)
                    }
                    _ => util::checksum(&buf, 1),
                };
                buf[2..4].copy_from_slice(&sum.to_be_bytes());
                buf
            }
        }
    }

    fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
        let options = 4 * usize::from(self.ip_option_words);
        let mut buf = vec![0u8; 20 + options + body.len()];
        buf[20..20 + options].fill(1);
        let total = u16::try_from(buf.len()).expect("IPv4 packet too large");
        let mut ip = MutableIpv4Packet::new(&mut buf).expect("sized");
        ip.set_version(4);
        ip.set_header_length(5 + self.ip_option_words);
        ip.set_total_length(total);
        ip.set_identification(self.ident as u16);
        if let Some((offset, more)) = self.fragment {
            ip.set_fragment_offset(offset);
            ip.set_flags(if more { ipv4::Ipv4Flags::MoreFragments } else { 0 });
        } else if self.dont_fragment {
            ip.set_flags(ipv4::Ipv4Flags::DontFragment);
        }
        ip.set_ttl(self.ttl);
        ip.set_next_level_protocol(pnet_packet::ip::IpNextHeaderProtocol(self.protocol()));
        ip.set_source(src);
        ip.set_destination(dst);
        ip.set_payload(body);
        let sum = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(sum);
        buf
    }

    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> Vec<u8> {
        // Extension headers, innermost last: [hop-by-hop] [fragment] upper layer.
        let mut ext = Vec::new();
        let mut next = self.protocol();
        if let Some((offset, more)) = self.fragment {
            let mut frag = vec![next, 0];
            frag.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
            frag.extend_from_slice(&self.ident.to_be_bytes());
            ext = frag;
            next = 44;
        }
        if self.hop_by_hop {
            // One PadN option filling the 8 bytes.
            let mut hbh = vec![next, 0, 1, 4, 0, 0, 0, 0];
            hbh.extend_from_slice(&ext);
            ext = hbh;
            next = 0;
        }
        let payload_len = ext.len() + body.len();
        let mut buf = vec![0u8; 40 + payload_len];
        let mut ip = MutableIpv6Packet::new(&mut buf).expect("sized");
        ip.set_version(6);
        ip.set_payload_length(u16::try_from(payload_len).expect("IPv6 payload too large"));
        ip.set_next_header(pnet_packet::ip::IpNextHeaderProtocol(next));
        ip.set_hop_limit(self.ttl);
        ip.set_source(src);
        ip.set_destination(dst);
        buf[40..40 + ext.len()].copy_from_slice(&ext);
        buf[40 + ext.len()..].copy_from_slice(body);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::Packet;
    use pnet_packet::ipv4::Ipv4Packet;
    use pnet_packet::udp::UdpPacket;

    #[test]
    fn ipv4_udp_has_valid_checksums() {
        let src: Ipv4Addr = "100.64.0.1".parse().unwrap();
        let dst: Ipv4Addr = "100.64.0.2".parse().unwrap();
        let bytes = PacketBuilder::udp(src.into(), dst.into(), 1, 2).payload(b"abc").build();
        let ip = Ipv4Packet::new(&bytes).unwrap();
        assert_eq!(ipv4::checksum(&ip), ip.get_checksum());
        let udp = UdpPacket::new(ip.payload()).unwrap();
        assert_eq!(udp::ipv4_checksum(&udp, &src, &dst), udp.get_checksum());
        assert_eq!(udp.payload(), b"abc");
    }

    #[test]
    fn icmp_checksum_verifies_to_zero() {
        let bytes = PacketBuilder::icmp_echo(
            "100.64.0.1".parse().unwrap(),
            "100.64.0.2".parse().unwrap(),
            7,
            9,
        )
        .payload(b"ping")
        .build();
        // Summing a packet including its checksum gives zero (one's complement).
        assert_eq!(util::checksum(&bytes[20..], 99), 0);
    }
}
