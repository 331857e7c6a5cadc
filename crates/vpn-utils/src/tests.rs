use std::net::IpAddr;

use proptest::prelude::*;
use vpn_testutil::PacketBuilder;
use vpn_types::PacketError;

use super::*;

fn v4(a: &str) -> IpAddr {
    a.parse().unwrap()
}

const A4: &str = "100.64.0.1";
const B4: &str = "100.64.0.2";
const A6: &str = "fd00::1";
const B6: &str = "fd00::2";

#[test]
fn ipv4_tcp_udp_icmp() {
    let tcp = PacketBuilder::tcp(v4(A4), v4(B4), 40000, 443).payload(b"data").build();
    let info = extract_ip_and_ports(&tcp).unwrap();
    assert_eq!(info.src_ip, v4(A4));
    assert_eq!(info.dst_ip, v4(B4));
    assert_eq!((info.src_port, info.dst_port, info.protocol), (Some(40000), Some(443), PROTO_TCP));

    let udp = PacketBuilder::udp(v4(A4), v4(B4), 5353, 53).build();
    let info = extract_ip_and_ports(&udp).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.protocol), (Some(5353), Some(53), PROTO_UDP));

    let icmp = PacketBuilder::icmp_echo(v4(A4), v4(B4), 1, 1).build();
    let info = extract_ip_and_ports(&icmp).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.protocol), (None, None, PROTO_ICMP));
}

#[test]
fn ipv6_tcp_udp_icmp() {
    let tcp = PacketBuilder::tcp(v4(A6), v4(B6), 1, 2).build();
    let info = extract_ip_and_ports(&tcp).unwrap();
    assert_eq!((info.src_ip, info.dst_ip), (v4(A6), v4(B6)));
    assert_eq!((info.src_port, info.dst_port, info.protocol), (Some(1), Some(2), PROTO_TCP));

    let icmp = PacketBuilder::icmp_echo(v4(A6), v4(B6), 1, 1).build();
    let info = extract_ip_and_ports(&icmp).unwrap();
    assert_eq!((info.src_port, info.protocol), (None, PROTO_ICMPV6));
}

#[test]
fn ipv4_fragments_carry_ports_only_in_the_first() {
    let first =
        PacketBuilder::udp(v4(A4), v4(B4), 1000, 2000).payload(&[0; 16]).fragment(0, true).build();
    let info = extract_ip_and_ports(&first).unwrap();
    assert_eq!(info.dst_port, Some(2000));

    let later = PacketBuilder::udp(v4(A4), v4(B4), 1000, 2000)
        .payload(&[0xff; 16])
        .fragment(3, false)
        .build();
    let info = extract_ip_and_ports(&later).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.protocol), (None, None, PROTO_UDP));
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let hbh = PacketBuilder::udp(v4(A6), v4(B6), 7, 8).hop_by_hop().build();
    let info = extract_ip_and_ports(&hbh).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.protocol), (Some(7), Some(8), PROTO_UDP));

    let first = PacketBuilder::tcp(v4(A6), v4(B6), 7, 8).hop_by_hop().fragment(0, true).build();
    let info = extract_ip_and_ports(&first).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.protocol), (Some(7), Some(8), PROTO_TCP));

    let later =
        PacketBuilder::tcp(v4(A6), v4(B6), 7, 8).payload(&[1; 24]).fragment(5, true).build();
    let info = extract_ip_and_ports(&later).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.protocol), (None, None, PROTO_TCP));
}

/// An IPv6 packet whose chain is: fixed header -> `chain` -> UDP 9 -> 10.
fn ipv6_with_chain(chain: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let udp = PacketBuilder::udp(v4(A6), v4(B6), 9, 10).build();
    let mut ext = Vec::new();
    for (i, (_, body)) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(PROTO_UDP, |(kind, _)| *kind);
        let mut header = body.clone();
        header[0] = next;
        ext.extend_from_slice(&header);
    }
    let mut packet = udp[..40].to_vec();
    packet[6] = chain.first().map_or(PROTO_UDP, |(kind, _)| *kind);
    let payload_len = (ext.len() + udp.len() - 40) as u16;
    packet[4..6].copy_from_slice(&payload_len.to_be_bytes());
    packet.extend_from_slice(&ext);
    packet.extend_from_slice(&udp[40..]);
    packet
}

#[test]
fn ipv6_routing_destination_options_and_ah() {
    let routing = (43, vec![0, 0, 0, 0, 0, 0, 0, 0]);
    let dest_opts = (60, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // AH: payload length 4 means (4 + 2) * 4 = 24 bytes.
    let mut ah = vec![0, 4];
    ah.resize(24, 0);
    let packet = ipv6_with_chain(&[routing, dest_opts, (51, ah)]);
    let info = extract_ip_and_ports(&packet).unwrap();
    assert_eq!((info.src_port, info.dst_port, info.protocol), (Some(9), Some(10), PROTO_UDP));
    assert!(validate_ip_packet(&packet).is_ok());
}

#[test]
fn truncation_is_an_error_at_every_length() {
    let packets = [
        PacketBuilder::tcp(v4(A4), v4(B4), 1, 2).build(),
        PacketBuilder::udp(v4(A4), v4(B4), 1, 2).build(),
        PacketBuilder::tcp(v4(A6), v4(B6), 1, 2).hop_by_hop().fragment(0, true).build(),
        PacketBuilder::udp(v4(A6), v4(B6), 1, 2).build(),
    ];
    for packet in packets {
        for len in 0..packet.len() {
            let mut cut = packet[..len].to_vec();
            assert!(extract_ip_and_ports(&cut).is_err(), "length {len} of {packet:?}");
            // Fixing up the length fields does not help: the transport header is still short.
            fix_length(&mut cut);
            if cut.len() >= 40 || (cut.len() >= 20 && cut[0] >> 4 == 4) {
                assert!(extract_ip_and_ports(&cut).is_err(), "fixed length {len} of {packet:?}");
            }
        }
        assert!(extract_ip_and_ports(&packet).is_ok());
    }
}

/// Rewrites the IP length field to the buffer's length.
fn fix_length(packet: &mut [u8]) {
    let len = packet.len();
    match packet.first().map(|b| b >> 4) {
        Some(4) if len >= 20 => packet[2..4].copy_from_slice(&(len as u16).to_be_bytes()),
        Some(6) if len >= 40 => packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes()),
        _ => {}
    }
}

#[test]
fn malformed_headers_are_named() {
    assert_eq!(extract_ip_and_ports(&[]), Err(PacketError::Empty));
    assert_eq!(extract_ip_and_ports(&[0x50; 40]), Err(PacketError::BadVersion(5)));

    let mut bad_ihl = PacketBuilder::udp(v4(A4), v4(B4), 1, 2).build();
    bad_ihl[0] = 0x44;
    assert!(matches!(
        extract_ip_and_ports(&bad_ihl),
        Err(PacketError::BadHeaderLength { ihl: 4, .. })
    ));
    bad_ihl[0] = 0x4f;
    assert!(matches!(
        extract_ip_and_ports(&bad_ihl),
        Err(PacketError::BadHeaderLength { ihl: 15, .. })
    ));

    let mut long = PacketBuilder::udp(v4(A4), v4(B4), 1, 2).build();
    long[3] += 1;
    assert!(matches!(extract_ip_and_ports(&long), Err(PacketError::BadTotalLength { .. })));

    let mut tcp = PacketBuilder::tcp(v4(A4), v4(B4), 1, 2).build();
    tcp[32] = 0x40; // data offset 4 words: below the minimum
    assert_eq!(
        extract_ip_and_ports(&tcp),
        Err(PacketError::TruncatedTransport { protocol: PROTO_TCP })
    );

    let mut ext = PacketBuilder::udp(v4(A6), v4(B6), 1, 2).hop_by_hop().build();
    ext[41] = 200; // hop-by-hop length far past the packet
    assert_eq!(extract_ip_and_ports(&ext), Err(PacketError::TruncatedExtension { next_header: 0 }));
}

#[test]
fn validate_requires_exact_length() {
    let packet = PacketBuilder::udp(v4(A4), v4(B4), 1, 2).payload(b"abc").build();
    assert!(validate_ip_packet(&packet).is_ok());
    let mut padded = packet.clone();
    padded.push(0);
    // Trailing bytes are ignored when extracting, refused when validating.
    assert!(extract_ip_and_ports(&padded).is_ok());
    assert_eq!(
        validate_ip_packet(&padded),
        Err(PacketError::BadTotalLength { declared: packet.len(), len: padded.len() })
    );
    assert_eq!(declared_ip_len(&padded), Ok(packet.len()));
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = extract_ip_and_ports(&bytes);
        let _ = validate_ip_packet(&bytes);
    }

    #[test]
    fn never_panics_on_ip_like_bytes(
        version in prop_oneof![Just(0x45u8), Just(0x60u8)],
        mut bytes in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        if let Some(first) = bytes.first_mut() {
            *first = version;
        }
        fix_length(&mut bytes);
        let _ = extract_ip_and_ports(&bytes);
    }

    #[test]
    fn built_packets_round_trip(
        src_port in any::<u16>(),
        dst_port in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        v6 in any::<bool>(),
        tcp in any::<bool>(),
    ) {
        let (src, dst) = if v6 { (v4(A6), v4(B6)) } else { (v4(A4), v4(B4)) };
        let builder = if tcp {
            PacketBuilder::tcp(src, dst, src_port, dst_port)
        } else {
            PacketBuilder::udp(src, dst, src_port, dst_port)
        };
        let packet = builder.payload(&payload).build();
        let info = validate_ip_packet(&packet).unwrap();
        prop_assert_eq!((info.src_ip, info.dst_ip), (src, dst));
        prop_assert_eq!((info.src_port, info.dst_port), (Some(src_port), Some(dst_port)));
        prop_assert_eq!(info.protocol, if tcp { PROTO_TCP } else { PROTO_UDP });
    }
}

mod segmenting {
    use bytes::Bytes;
    use vpn_testutil::PacketBuilder;
    use vpn_types::{GsoInfo, GsoType};

    use super::v4;
    use crate::{
        MAX_SEGMENTS, MIN_GSO_SIZE, extract_ip_and_ports, segment, super_packet_gso,
        validate_ip_packet,
    };

    const ACK: u8 = 0x10;
    const PSH: u8 = 0x08;
    const FIN: u8 = 0x01;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn gso(gso_type: GsoType, hdr_len: u16, csum_start: u16, csum_offset: u16) -> GsoInfo {
        GsoInfo { gso_type, needs_csum: true, hdr_len, gso_size: 1000, csum_start, csum_offset }
    }

    fn cut(packet: &[u8], gso: &GsoInfo) -> Vec<Bytes> {
        let mut out = Vec::new();
        segment(packet, gso, &mut out).unwrap();
        out
    }

    #[test]
    fn tcp_over_ipv4_matches_what_the_sender_would_have_sent() {
        let (src, dst) = (v4("100.64.0.1"), v4("100.64.0.2"));
        let payload = data(2500);
        let tcp = |seq, flags, chunk: &[u8], ident| {
            PacketBuilder::tcp(src, dst, 40000, 443)
                .seq(seq)
                .flags(flags)
                .payload(chunk)
                .ident(ident)
                .build()
        };
        let whole = tcp(1000, ACK | PSH | FIN, &payload, 7);
        let got = cut(&whole, &gso(GsoType::TcpV4, 40, 20, 16));
        let expected = vec![
            tcp(1000, ACK, &payload[..1000], 7),
            tcp(2000, ACK, &payload[1000..2000], 8),
            tcp(3000, ACK | PSH | FIN, &payload[2000..], 9),
        ];
        assert_eq!(got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn tcp_over_ipv6_matches_what_the_sender_would_have_sent() {
        let (src, dst) = (v4("fd00::1"), v4("fd00::2"));
        let payload = data(2001);
        let tcp = |seq, flags, chunk: &[u8]| {
            PacketBuilder::tcp(src, dst, 1, 2).seq(seq).flags(flags).payload(chunk).build()
        };
        let whole = tcp(5, ACK | PSH, &payload);
        let got = cut(&whole, &gso(GsoType::TcpV6, 60, 40, 16));
        let expected = vec![
            tcp(5, ACK, &payload[..1000]),
            tcp(1005, ACK, &payload[1000..2000]),
            tcp(2005, ACK | PSH, &payload[2000..]),
        ];
        assert_eq!(got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn udp_segments_are_datagrams_of_their_own() {
        let (src, dst) = (v4("100.64.0.1"), v4("100.64.0.2"));
        let payload = data(2400);
        let udp = |chunk: &[u8], ident| {
            PacketBuilder::udp(src, dst, 5000, 53).payload(chunk).ident(ident).build()
        };
        let got = cut(&udp(&payload, 3), &gso(GsoType::Udp, 28, 20, 6));
        let expected =
            vec![udp(&payload[..1000], 3), udp(&payload[1000..2000], 4), udp(&payload[2000..], 5)];
        assert_eq!(got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), expected);
        assert!(got.iter().all(|s| validate_ip_packet(s).is_ok()));
    }

    #[test]
    fn headers_that_do_not_fit_are_refused() {
        let whole = PacketBuilder::tcp(v4("100.64.0.1"), v4("100.64.0.2"), 1, 2)
            .payload(&data(100))
            .build();
        let mut out = Vec::new();
        assert!(
            segment(&whole, &gso(GsoType::TcpV4, 400, 20, 16), &mut out).is_err(),
            "hdr_len past the packet"
        );
        assert!(
            segment(&whole, &gso(GsoType::TcpV6, 40, 20, 16), &mut out).is_err(),
            "wrong family"
        );
        assert!(
            segment(&whole, &gso(GsoType::TcpV4, 40, 30, 16), &mut out).is_err(),
            "transport header past hdr_len"
        );
        assert!(segment(&whole[..30], &gso(GsoType::TcpV4, 40, 20, 16), &mut out).is_err());
        assert!(out.is_empty());
    }

    /// The header a sender derives for `packet` (no IP or transport options).
    fn derived(packet: &[u8], gso_size: u16) -> GsoInfo {
        let claimed = GsoInfo { gso_size, ..gso(GsoType::TcpV4, 40, 20, 16) };
        super_packet_gso(packet, &claimed).unwrap()
    }

    #[test]
    fn a_segmentation_bomb_is_refused() {
        // The largest IPv4/TCP packet, asking for 1-byte segments behind a 32 767-byte
        // "header": 32 768 TUN writes and a gigabyte of copies, had it been cut.
        let whole = PacketBuilder::tcp(v4("100.64.0.1"), v4("100.64.0.2"), 1, 2)
            .payload(&data(65_535 - 40))
            .build();
        let bomb = GsoInfo {
            gso_type: GsoType::TcpV4,
            needs_csum: true,
            hdr_len: 32_767,
            gso_size: 1,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        assert!(segment(&whole, &bomb, &mut out).is_err());
        // The true header with tiny segments: more than 64 segments, or below the floor.
        let tiny = GsoInfo { gso_size: 1, ..gso(GsoType::TcpV4, 40, 20, 16) };
        assert!(segment(&whole, &tiny, &mut out).is_err());
        let many = GsoInfo { gso_size: 1000, ..gso(GsoType::TcpV4, 40, 20, 16) };
        assert!(segment(&whole, &many, &mut out).is_err(), "66 segments of 1000 bytes");
        assert!(out.is_empty());
        let most = GsoInfo { gso_size: 1024, ..gso(GsoType::TcpV4, 40, 20, 16) };
        segment(&whole, &most, &mut out).unwrap();
        assert_eq!(out.len(), MAX_SEGMENTS);
    }

    #[test]
    fn a_checksum_steered_onto_the_ports_is_refused() {
        // Eight words of IPv4 options put TCP at offset 52. A peer claiming that the
        // transport starts at 38 would have the checksum written at 54: the destination
        // port, whose value it would steer past the firewall.
        let whole = PacketBuilder::tcp(v4("100.64.0.1"), v4("100.64.0.2"), 40000, 443)
            .ip_options(8)
            .payload(&data(3000))
            .build();
        let steered = GsoInfo {
            gso_type: GsoType::TcpV4,
            needs_csum: true,
            hdr_len: 72,
            gso_size: 1000,
            csum_start: 38,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        assert!(segment(&whole, &steered, &mut out).is_err());
        assert!(super_packet_gso(&whole, &steered).is_err());
        let honest = GsoInfo { csum_start: 52, ..steered };
        segment(&whole, &honest, &mut out).unwrap();
        assert!(out.iter().all(|seg| extract_ip_and_ports(seg).unwrap().dst_port == Some(443)));
    }

    #[test]
    fn the_header_is_derived_from_the_packet() {
        let tcp6 = PacketBuilder::tcp(v4("fd00::1"), v4("fd00::2"), 1, 2)
            .tcp_options(3)
            .payload(&data(3000))
            .build();
        let claimed = GsoInfo { gso_size: 1000, ..gso(GsoType::TcpV6, 72, 40, 16) };
        assert_eq!(super_packet_gso(&tcp6, &claimed).unwrap(), claimed);
        for wrong in [
            GsoInfo { gso_type: GsoType::TcpV4, ..claimed },
            GsoInfo { gso_type: GsoType::Udp, ..claimed },
            GsoInfo { hdr_len: 60, ..claimed },
            GsoInfo { csum_offset: 6, ..claimed },
            GsoInfo { needs_csum: false, ..claimed },
            GsoInfo { gso_size: MIN_GSO_SIZE - 1, ..claimed },
        ] {
            assert!(super_packet_gso(&tcp6, &wrong).is_err(), "{wrong:?}");
        }
        let fragment = PacketBuilder::udp(v4("100.64.0.1"), v4("100.64.0.2"), 1, 2)
            .payload(&data(3000))
            .fragment(0, true)
            .build();
        let udp = GsoInfo { gso_size: 1000, ..gso(GsoType::Udp, 28, 20, 6) };
        assert!(super_packet_gso(&fragment, &udp).is_err(), "a fragment is no super-packet");
        let hop = PacketBuilder::udp(v4("fd00::1"), v4("fd00::2"), 1, 2).hop_by_hop().build();
        let udp6 = GsoInfo { gso_size: 1000, ..gso(GsoType::Udp, 48, 40, 6) };
        assert!(super_packet_gso(&hop, &udp6).is_err(), "extension headers are refused");
        let whole = PacketBuilder::tcp(v4("100.64.0.1"), v4("100.64.0.2"), 1, 2)
            .payload(&data(100))
            .build();
        assert_eq!(derived(&whole, 64).hdr_len, 40);
    }

    proptest::proptest! {
        /// Whatever header a peer sends with whatever packet, a super-packet is cut only
        /// when the header is the packet's own, into at most 64 segments, each a whole IP
        /// packet with the super-packet's addresses, protocol and ports: the receiver's
        /// checks on the super-packet hold for every segment.
        #[test]
        fn every_segment_keeps_what_the_receiver_checked(
            v6 in proptest::prelude::any::<bool>(),
            tcp in proptest::prelude::any::<bool>(),
            ip_words in 0u8..=10,
            tcp_words in 0u8..=10,
            len in 0usize..20_000,
            ports in (proptest::prelude::any::<u16>(), proptest::prelude::any::<u16>()),
            honest in proptest::prelude::any::<bool>(),
            fields in (0u8..5, proptest::prelude::any::<bool>(), 0u16..200, 0u16..3000, 0u16..200, 0u16..40),
        ) {
            let (src, dst) = if v6 { (v4("fd00::1"), v4("fd00::2")) } else { (v4("100.64.0.1"), v4("100.64.0.2")) };
            let mut builder = if tcp {
                PacketBuilder::tcp(src, dst, ports.0, ports.1).tcp_options(tcp_words)
            } else {
                PacketBuilder::udp(src, dst, ports.0, ports.1)
            };
            if !v6 {
                builder = builder.ip_options(ip_words);
            }
            let whole = builder.payload(&data(len)).build();
            let (kind, needs_csum, hdr_len, gso_size, csum_start, csum_offset) = fields;
            let claimed = if honest {
                let l4 = if v6 { 40 } else { 20 + 4 * u16::from(ip_words) };
                let (thl, off) = if tcp { (20 + 4 * u16::from(tcp_words), 16) } else { (8, 6) };
                let gso_type = match (tcp, v6) { (true, false) => GsoType::TcpV4, (true, true) => GsoType::TcpV6, _ => GsoType::Udp };
                GsoInfo { gso_type, needs_csum: true, hdr_len: l4 + thl, gso_size, csum_start: l4, csum_offset: off }
            } else {
                let gso_type = GsoType::from_wire(kind).unwrap_or(GsoType::Udp);
                GsoInfo { gso_type, needs_csum, hdr_len, gso_size, csum_start, csum_offset }
            };
            let before = extract_ip_and_ports(&whole).unwrap();
            let mut out = Vec::new();
            if segment(&whole, &claimed, &mut out).is_ok() {
                proptest::prop_assert!(out.len() <= MAX_SEGMENTS);
                proptest::prop_assert!(!out.is_empty());
                for seg in &out {
                    let after = validate_ip_packet(seg).unwrap();
                    proptest::prop_assert_eq!(
                        (after.src_ip, after.dst_ip, after.protocol, after.src_port, after.dst_port),
                        (before.src_ip, before.dst_ip, before.protocol, before.src_port, before.dst_port)
                    );
                }
            } else {
                proptest::prop_assert!(out.is_empty());
            }
        }

        #[test]
        fn segments_carry_the_payload_in_order(len in 1usize..9000, size in 150u16..1500) {
            let payload = data(len);
            let whole = PacketBuilder::tcp(v4("100.64.0.1"), v4("100.64.0.2"), 1, 2).payload(&payload).build();
            let info = GsoInfo { gso_size: size, ..gso(GsoType::TcpV4, 40, 20, 16) };
            let got = cut(&whole, &info);
            proptest::prop_assert_eq!(got.len(), len.div_ceil(usize::from(size)));
            let joined: Vec<u8> = got.iter().flat_map(|s| s[40..].to_vec()).collect();
            proptest::prop_assert_eq!(joined, payload);
            for s in &got {
                proptest::prop_assert!(validate_ip_packet(s).is_ok());
            }
        }

        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), hdr in 0u16..100, start in 0u16..100, size in 0u16..100) {
            let mut out = Vec::new();
            let _ = segment(&bytes, &GsoInfo { gso_size: size, ..gso(GsoType::Udp, hdr, start, 6) }, &mut out);
        }
    }
}

mod too_big {
    use vpn_testutil::PacketBuilder;

    use super::v4;
    use crate::{checksum_add, checksum_finish, too_big_reply};

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 253) as u8).collect()
    }

    #[test]
    fn a_dont_fragment_ipv4_packet_gets_fragmentation_needed_from_its_destination() {
        let (src, dst) = (v4("100.64.0.1"), v4("100.64.0.2"));
        let packet = PacketBuilder::tcp(src, dst, 40000, 5201)
            .payload(&payload(1460))
            .dont_fragment()
            .build();
        let reply = too_big_reply(&packet, 1408).unwrap();
        assert_eq!(reply.len(), 576, "an ICMPv4 error fits 576 bytes");
        assert_eq!(&reply[..2], &[0x45, 0]);
        assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 576);
        assert_eq!(reply[9], 1, "ICMP");
        assert_eq!(&reply[12..16], &[100, 64, 0, 2], "from the packet's destination");
        assert_eq!(&reply[16..20], &[100, 64, 0, 1], "to its source");
        assert_eq!(checksum_finish(checksum_add(0, &reply[..20])), 0, "header checksum");
        assert_eq!(&reply[20..22], &[3, 4], "destination unreachable, fragmentation needed");
        assert_eq!(u16::from_be_bytes([reply[26], reply[27]]), 1408, "the next hop's MTU");
        assert_eq!(checksum_finish(checksum_add(0, &reply[20..])), 0, "ICMP checksum");
        assert_eq!(&reply[28..], &packet[..548], "the packet's start is quoted");
        assert!(crate::validate_ip_packet(&reply).is_ok());
    }

    #[test]
    fn an_ipv6_packet_gets_packet_too_big() {
        let (src, dst) = (v4("fd00::1"), v4("fd00::2"));
        let packet = PacketBuilder::udp(src, dst, 5000, 53).payload(&payload(1452)).build();
        let reply = too_big_reply(&packet, 1408).unwrap();
        assert_eq!(reply.len(), 1280, "an ICMPv6 error fits IPv6's minimum MTU");
        assert_eq!(reply[6], 58, "ICMPv6");
        assert_eq!(&reply[8..24], &packet[24..40], "from the packet's destination");
        assert_eq!(&reply[24..40], &packet[8..24], "to its source");
        assert_eq!(&reply[40..42], &[2, 0], "packet too big");
        assert_eq!(u32::from_be_bytes(reply[44..48].try_into().unwrap()), 1408);
        let length = u64::from(u16::from_be_bytes([reply[4], reply[5]]));
        let pseudo = checksum_add(0, &reply[8..40]) + length + 58;
        assert_eq!(checksum_finish(checksum_add(pseudo, &reply[40..])), 0, "ICMPv6 checksum");
        assert_eq!(&reply[48..], &packet[..1232]);
        assert!(crate::validate_ip_packet(&reply).is_ok());
        // Never an MTU below IPv6's minimum.
        let reply = too_big_reply(&packet, 1200).unwrap();
        assert_eq!(u32::from_be_bytes(reply[44..48].try_into().unwrap()), 1280);
    }

    #[test]
    fn no_error_where_none_may_be_sent() {
        let (a, b) = (v4("100.64.0.1"), v4("100.64.0.2"));
        let big = payload(1460);
        let may_fragment = PacketBuilder::tcp(a, b, 1, 2).payload(&big).build();
        assert_eq!(too_big_reply(&may_fragment, 1408), None, "no DF: the path's to carry");
        let later_fragment = PacketBuilder::udp(a, b, 1, 2).payload(&big).fragment(185, false);
        assert_eq!(too_big_reply(&later_fragment.build(), 1408), None);
        let echo = PacketBuilder::icmp_echo(a, b, 7, 1).payload(&big).dont_fragment().build();
        assert!(too_big_reply(&echo, 1408).is_some(), "a ping is answered");
        let error = too_big_reply(
            &PacketBuilder::tcp(b, a, 2, 1).payload(&big).dont_fragment().build(),
            1408,
        )
        .unwrap();
        assert_eq!(too_big_reply(&error, 1000), None, "an ICMP error gets no error");
        let (x, y) = (v4("fd00::1"), v4("fd00::2"));
        let error6 = too_big_reply(&PacketBuilder::udp(x, y, 1, 2).payload(&big).build(), 1408);
        assert_eq!(too_big_reply(&error6.unwrap(), 1280), None, "nor an ICMPv6 one");
        let unspecified = PacketBuilder::udp(v4("0.0.0.0"), b, 1, 2).payload(&big).dont_fragment();
        assert_eq!(too_big_reply(&unspecified.build(), 1408), None);
        assert_eq!(too_big_reply(&[], 1408), None);
        assert_eq!(too_big_reply(&may_fragment[..10], 1408), None);
    }
}
