//! Software segmentation of a 64 KiB TCP super-packet into 1 448-byte segments.

// criterion's macros generate undocumented items; a bench that panics has failed.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vpn_testutil::PacketBuilder;
use vpn_types::{GsoInfo, GsoType};
use vpn_utils::segment;

fn segmentation(c: &mut Criterion) {
    let payload = vec![7u8; 65_000];
    let packet =
        PacketBuilder::tcp("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap(), 1, 2)
            .payload(&payload)
            .build();
    let gso = GsoInfo {
        gso_type: GsoType::TcpV4,
        needs_csum: true,
        hdr_len: 40,
        gso_size: 1448,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut group = c.benchmark_group("segment");
    group.throughput(Throughput::Bytes(packet.len() as u64));
    let mut out = Vec::with_capacity(64);
    group.bench_function("tcp4_64k_into_1448", |b| {
        b.iter(|| {
            out.clear();
            segment(black_box(&packet), &gso, &mut out).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, segmentation);
criterion_main!(benches);
