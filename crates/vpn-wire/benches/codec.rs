//! Frame encode and decode speed for typical packet sizes.

// criterion's macros generate undocumented items; a bench that panics has failed.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vpn_wire::{FrameDecoder, encode_packet};

const BATCH: usize = 64;

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames");
    for size in [64usize, 1400, 65_000] {
        let packet = vec![0x45u8; size];
        group.throughput(Throughput::Bytes((size * BATCH) as u64));
        let mut out = BytesMut::with_capacity((size + 5) * BATCH);
        group.bench_with_input(BenchmarkId::new("encode", size), &packet, |b, packet| {
            b.iter(|| {
                out.clear();
                for _ in 0..BATCH {
                    encode_packet(&mut out, black_box(packet)).unwrap();
                }
            })
        });
        let mut wire = BytesMut::new();
        for _ in 0..BATCH {
            encode_packet(&mut wire, &packet).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut src = BytesMut::with_capacity(wire.len());
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            b.iter(|| {
                src.extend_from_slice(wire);
                while let Some(frame) = decoder.decode(&mut src).unwrap() {
                    black_box(frame);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
