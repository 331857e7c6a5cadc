//! Packet parsing speed: IPv4 and IPv6 TCP, and IPv6 with extension headers.

// criterion's macros generate undocumented items; a bench that panics has failed.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vpn_testutil::PacketBuilder;
use vpn_utils::extract_ip_and_ports;

fn parse(c: &mut Criterion) {
    let cases = [
        (
            "ipv4_tcp",
            PacketBuilder::tcp("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap(), 1, 2)
                .payload(&[0; 1400])
                .build(),
        ),
        (
            "ipv6_tcp",
            PacketBuilder::tcp("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                .payload(&[0; 1400])
                .build(),
        ),
        (
            "ipv6_hbh_frag_udp",
            PacketBuilder::udp("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                .hop_by_hop()
                .fragment(0, true)
                .build(),
        ),
    ];
    let mut group = c.benchmark_group("extract_ip_and_ports");
    group.throughput(Throughput::Elements(1));
    for (name, packet) in &cases {
        group.bench_function(*name, |b| b.iter(|| extract_ip_and_ports(black_box(packet))));
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
