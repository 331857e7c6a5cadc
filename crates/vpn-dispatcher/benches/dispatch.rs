//! Packets per second through the engine: dispatcher -> workers -> stream pool -> in-memory
//! streams whose far ends discard what arrives. One flow, and a thousand flows.

// criterion's macros generate undocumented items; a bench that panics has failed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::AsyncReadExt;
use vpn_api::{IpNet, PeerId};
use vpn_api::{MetricsService, PeerDiscoveryService, TunPacket};
use vpn_dispatcher::Dispatcher;
use vpn_errors::VpnError;
use vpn_metrics::AtomicMetrics;
use vpn_resilience::{CircuitBreakerSettings, RetrySettings};
use vpn_resilience::{ExponentialBackoff, PeerBreakers};
use vpn_stream::StreamPool;
use vpn_stream::StreamPoolSettings;
use vpn_testutil::{MemoryStreams, PacketBuilder};
use vpn_worker::WorkerContext;
use vpn_worker::WorkerSettings;

struct OnePeer(PeerId);

#[async_trait]
impl PeerDiscoveryService for OnePeer {
    async fn peer_for_ip(&self, _ip: IpAddr) -> Result<PeerId, VpnError> {
        Ok(self.0)
    }
    async fn sync_to_dht(&self) -> Result<(), VpnError> {
        Ok(())
    }
    async fn virtual_ips(&self, _peer: &PeerId) -> Result<Vec<IpNet>, VpnError> {
        Ok(Vec::new())
    }
    fn holds_now(&self, peer: &PeerId, _ip: IpAddr) -> Option<bool> {
        Some(*peer == self.0)
    }
}

const BATCH: usize = 20_000;

fn engine() -> (Dispatcher, Arc<AtomicMetrics>) {
    let (streams, mut accepted) = MemoryStreams::new(PeerId::random(), 4 << 20);
    let metrics = Arc::new(AtomicMetrics::new());
    let pool = StreamPool::new(Arc::new(streams), metrics.clone(), StreamPoolSettings::default());
    let ctx = WorkerContext::new(
        Arc::new(OnePeer(PeerId::random())),
        Arc::new(pool),
        Arc::new(PeerBreakers::new(CircuitBreakerSettings::default())),
        Arc::new(ExponentialBackoff::new(RetrySettings::default())),
        metrics.clone(),
        WorkerSettings::default()
            .with_queue_capacity(BATCH)
            // Room for a whole batch in flight: the bench measures sends, not drops.
            .with_max_queued_bytes(2 * BATCH * 1500)
            .with_send_timeout(Duration::from_secs(60)),
    );
    tokio::spawn(async move {
        while let Some(mut far) = accepted.recv().await {
            tokio::spawn(async move {
                let mut sink = BytesMut::with_capacity(1 << 20);
                while far.stream.read_buf(&mut sink).await.is_ok_and(|n| n > 0) {
                    sink.clear();
                }
            });
        }
    });
    (Dispatcher::new(Arc::new(ctx)), metrics)
}

fn packets(flows: u16) -> Vec<TunPacket> {
    (0..BATCH)
        .map(|i| {
            let flow = (i % usize::from(flows)) as u16;
            let bytes = PacketBuilder::udp(
                "100.64.0.1".parse().unwrap(),
                "100.64.0.2".parse().unwrap(),
                4000,
                10_000 + flow,
            )
            .payload(&[0; 1372])
            .build();
            TunPacket::new(Bytes::from(bytes))
        })
        .collect()
}

fn dispatch(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for flows in [1u16, 1000] {
        let input = packets(flows);
        let (dispatcher, metrics) = runtime.block_on(async { engine() });
        group.bench_with_input(BenchmarkId::new("flows", flows), &input, |b, input| {
            b.to_async(&runtime).iter_custom(|iters| {
                let dispatcher = dispatcher.clone();
                let metrics = metrics.clone();
                let input = input.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = metrics.snapshot().packets_sent + BATCH as u64;
                        for packet in &input {
                            // A full queue only costs a drop; count only what was sent.
                            let _ = dispatcher.dispatch(packet.clone());
                        }
                        while metrics.snapshot().packets_sent + metrics.snapshot().dropped_total()
                            < target
                        {
                            tokio::task::yield_now().await;
                        }
                    }
                    start.elapsed()
                }
            })
        });
        let dropped = metrics.snapshot().dropped_total();
        assert_eq!(dropped, 0, "the bench measured drops, not sends");
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
