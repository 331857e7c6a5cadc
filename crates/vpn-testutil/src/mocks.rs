//! mockall mocks of every `vpn-api` trait, one `Mock*` type per trait.
//!
//! ```
//! use vpn_api::MetricsService;
//! use vpn_testutil::mocks::MockMetrics;
//! use vpn_types::DropReason;
//!
//! let mut metrics = MockMetrics::new();
//! metrics.expect_record_drops().withf(|r, n| *r == DropReason::NoPeer && *n == 1).times(1).return_const(());
//! metrics.record_drop(DropReason::NoPeer);
//! ```

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use mockall::mock;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vpn_api::{
    BreakerPermit, CircuitBreakerService, DhtRecords, FrameBatch, FrameSink, IpRegistry,
    MetricsService, PeerDiscoveryService, RetrySchedule, RetryService, StreamHealthService,
    StreamLease, StreamPoolService, StreamService, TunDevice, TunPacket, VpnService, VpnStream,
};
use vpn_api::{BreakerState, HealthSnapshot, IpNet, MetricsSnapshot, PeerId};
use vpn_errors::VpnError;
use vpn_types::{Budget, DialRefusal, DropReason, FlowKey, PeerRefusal};

mock! {
    /// Mock of [`VpnService`].
    pub Vpn {}
    #[async_trait]
    impl VpnService for Vpn {
        async fn start(&self) -> Result<(), VpnError>;
        async fn stop(&self) -> Result<(), VpnError>;
        fn metrics(&self) -> MetricsSnapshot;
    }
}

mock! {
    /// Mock of [`PeerDiscoveryService`].
    pub PeerDiscovery {}
    #[async_trait]
    impl PeerDiscoveryService for PeerDiscovery {
        async fn peer_for_ip(&self, ip: IpAddr) -> Result<PeerId, VpnError>;
        async fn sync_to_dht(&self) -> Result<(), VpnError>;
        fn holds_now(&self, peer: &PeerId, ip: IpAddr) -> Option<bool>;
        async fn virtual_ips(&self, peer: &PeerId) -> Result<Vec<IpNet>, VpnError>;
    }
}

mock! {
    /// Mock of [`DhtRecords`].
    pub Dht {}
    #[async_trait]
    impl DhtRecords for Dht {
        async fn put_record(&self, key: Vec<u8>, value: Vec<u8>, ttl: std::time::Duration) -> Result<(), VpnError>;
        async fn get_records(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, VpnError>;
    }
}

mock! {
    /// Mock of [`StreamService`].
    pub Streams {}
    #[async_trait]
    impl StreamService for Streams {
        async fn open_stream(&self, peer: PeerId) -> Result<Box<dyn VpnStream>, VpnError>;
    }
}

mock! {
    /// Mock of [`FrameSink`].
    pub Sink {}
    #[async_trait]
    impl FrameSink for Sink {
        async fn send_frames(&self, batch: FrameBatch) -> Result<(), VpnError>;
        fn is_closed(&self) -> bool;
    }
}

mock! {
    /// Mock of [`StreamPoolService`].
    pub StreamPool {}
    #[async_trait]
    impl StreamPoolService for StreamPool {
        async fn get_stream(&self, peer: PeerId, flow: FlowKey) -> Result<StreamLease, VpnError>;
        fn release(&self, lease: StreamLease, healthy: bool);
        fn active_streams(&self) -> usize;
    }
}

mock! {
    /// Mock of [`CircuitBreakerService`].
    pub CircuitBreaker {}
    impl CircuitBreakerService for CircuitBreaker {
        fn try_acquire(&self, peer: &PeerId) -> Result<BreakerPermit, VpnError>;
        fn record(&self, permit: BreakerPermit, success: bool);
        fn reset(&self, peer: &PeerId);
        fn reset_all(&self);
        fn states(&self) -> Vec<(PeerId, BreakerState)>;
    }
}

mock! {
    /// Mock of [`RetryService`].
    pub Retry {}
    impl RetryService for Retry {
        fn schedule(&self) -> Box<dyn RetrySchedule>;
    }
}

mock! {
    /// Mock of [`RetrySchedule`].
    pub Schedule {}
    impl RetrySchedule for Schedule {
        fn next_delay(&mut self, error: &VpnError) -> Option<std::time::Duration>;
    }
}

mock! {
    /// Mock of [`StreamHealthService`].
    pub StreamHealth {}
    #[async_trait]
    impl StreamHealthService for StreamHealth {
        async fn start_health_checker(&self) -> Result<(), VpnError>;
        async fn stop_health_checker(&self);
        async fn start_warmer(&self) -> Result<(), VpnError>;
        async fn stop_warmer(&self);
        fn health(&self) -> HealthSnapshot;
    }
}

mock! {
    /// Mock of [`MetricsService`].
    pub Metrics {}
    impl MetricsService for Metrics {
        fn record_stream_error(&self);
        fn record_sent(&self, packets: u64, bytes: u64);
        fn record_received(&self, packets: u64, bytes: u64);
        fn record_datagrams(&self, sent: u64, received: u64);
        fn record_drops(&self, reason: DropReason, packets: u64);
        fn record_budget_exceeded(&self, budget: Budget);
        fn record_peer_refused(&self, why: PeerRefusal);
        fn record_dial_refused(&self, why: DialRefusal);
        fn record_refused_record(&self);
        fn set_active_workers(&self, workers: u64);
        fn set_active_streams(&self, streams: u64);
        fn set_peer_paths(&self, direct: u64, relayed: u64);
        fn record_hole_punch(&self, succeeded: bool);
        fn snapshot(&self) -> MetricsSnapshot;
    }
}

mock! {
    /// Mock of [`IpRegistry`].
    pub Registry {}
    impl IpRegistry for Registry {
        fn may_hold(&self, peer: &PeerId, net: &IpNet) -> bool;
        fn present(&self, peer: &PeerId, certificate: &[u8]);
    }
}

mock! {
    /// Mock of [`TunDevice`].
    pub Tun {}
    #[async_trait]
    impl TunDevice for Tun {
        fn name(&self) -> &str;
        fn mtu(&self) -> u16;
        fn offload(&self) -> bool;
        async fn recv_batch(&self, batch: &mut Vec<TunPacket>, max: usize) -> io::Result<usize>;
        async fn send_batch(&self, packets: &[TunPacket]) -> io::Result<usize>;
    }
}

mock! {
    /// Mock of [`VpnStream`]: every read and write is an expectation.
    pub Stream {}
    impl AsyncRead for Stream {
        fn poll_read<'a, 'b>(self: Pin<&mut Self>, cx: &mut Context<'a>, buf: &mut ReadBuf<'b>) -> Poll<io::Result<()>>;
    }
    impl AsyncWrite for Stream {
        fn poll_write<'a>(self: Pin<&mut Self>, cx: &mut Context<'a>, buf: &[u8]) -> Poll<io::Result<usize>>;
        fn poll_flush<'a>(self: Pin<&mut Self>, cx: &mut Context<'a>) -> Poll<io::Result<()>>;
        fn poll_shutdown<'a>(self: Pin<&mut Self>, cx: &mut Context<'a>) -> Poll<io::Result<()>>;
    }
    impl VpnStream for Stream {
        fn peer_id(&self) -> PeerId;
        fn reset(&mut self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use vpn_api::{CircuitBreakerExt, RetryExt};
    use vpn_errors::NetworkErrorKind;

    #[tokio::test]
    async fn discovery_mock_answers_as_told() {
        let peer = PeerId::random();
        let mut discovery = MockPeerDiscovery::new();
        discovery.expect_peer_for_ip().returning(move |_| Ok(peer));
        let found = discovery.peer_for_ip("100.64.0.2".parse().unwrap()).await.unwrap();
        assert_eq!(found, peer);
    }

    #[tokio::test]
    async fn breaker_mock_drives_execute() {
        let mut breaker = MockCircuitBreaker::new();
        breaker.expect_try_acquire().returning(|p| Ok(BreakerPermit { peer: *p, probe: false }));
        breaker.expect_record().withf(|_, success| !*success).times(1).return_const(());
        let result: Result<(), _> = breaker
            .execute(&PeerId::random(), || async {
                Err(VpnError::network(NetworkErrorKind::Timeout, "t"))
            })
            .await;
        assert!(result.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_mock_gives_up_when_schedule_says_so() {
        let mut retry = MockRetry::new();
        retry.expect_schedule().returning(|| {
            let mut schedule = MockSchedule::new();
            schedule.expect_next_delay().times(1).returning(|_| None);
            Box::new(schedule)
        });
        let result: Result<(), _> =
            retry.retry(|| async { Err(VpnError::network(NetworkErrorKind::Timeout, "t")) }).await;
        assert_eq!(result.unwrap_err().network_kind(), Some(NetworkErrorKind::Timeout));
    }

    #[tokio::test]
    async fn stream_mock_fails_a_write() {
        let mut stream = MockStream::new();
        stream
            .expect_poll_write()
            .returning(|_, _| Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe))));
        let err = stream.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
