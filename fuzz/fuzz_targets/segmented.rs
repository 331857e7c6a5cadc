//! A SEGMENTED frame's header and packet, as a peer may send them: the header is checked
//! against the packet, and a super-packet that passes is cut into at most 64 segments,
//! each a whole IP packet of the same flow as the super-packet (so the receiver's checks
//! on the super-packet hold for every segment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_wire::{SEGMENT_HEADER_LEN, SegmentHeader};

fuzz_target!(|data: &[u8]| {
    let Some((header, packet)) = data.split_first_chunk::<SEGMENT_HEADER_LEN>() else { return };
    let header = SegmentHeader::from_bytes(header);
    let Ok(claimed) = header.to_gso(packet.len()) else { return };
    let Ok(gso) = vpn_utils::super_packet_gso(packet, &claimed) else { return };
    let whole = vpn_utils::validate_ip_packet(packet).expect("a checked super-packet parses");
    let mut segments = Vec::new();
    if vpn_utils::segment(packet, &gso, &mut segments).is_err() {
        return;
    }
    assert!(!segments.is_empty() && segments.len() <= vpn_utils::MAX_SEGMENTS);
    for segment in &segments {
        let info = vpn_utils::validate_ip_packet(segment).expect("every segment is a whole packet");
        assert_eq!(
            (info.src_ip, info.dst_ip, info.src_port, info.dst_port, info.protocol),
            (whole.src_ip, whole.dst_ip, whole.src_port, whole.dst_port, whole.protocol)
        );
    }
});
