use std::sync::Arc;

use crate::WorkerSettings;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use vpn_api::PeerId;
use vpn_api::{
    CircuitBreakerService, DatagramPaths, MetricsService, PeerDiscoveryService, RetryService,
    StreamLease, StreamPoolService,
};
use vpn_errors::VpnError;
use vpn_resilience::{BreakerLayer, RetryLayer, TimeoutLayer};
use vpn_types::{ByteBudget, FlowKey};

/// The service that opens a lease: `(peer, flow) -> StreamLease` through the breaker,
/// the time limit and retry.
pub(crate) type LeaseOpener = BoxCloneSyncService<(PeerId, FlowKey), StreamLease, VpnError>;

/// What every worker shares: its collaborators, its settings and the lease-opening stack.
pub struct WorkerContext {
    pub(crate) discovery: Arc<dyn PeerDiscoveryService>,
    pub(crate) pool: Arc<dyn StreamPoolService>,
    pub(crate) metrics: Arc<dyn MetricsService>,
    pub(crate) settings: WorkerSettings,
    pub(crate) opener: LeaseOpener,
    pub(crate) epoch: Instant,
    /// Peers whose packets go as datagrams while their datagram path is up.
    pub(crate) datagrams: Option<Arc<dyn DatagramPaths>>,
    budget: Arc<ByteBudget>,
}

impl WorkerContext {
    /// Workers resolving peers with `discovery`, leasing streams from `pool` under
    /// `breakers` and `retry`, and counting in `metrics`.
    pub fn new(
        discovery: Arc<dyn PeerDiscoveryService>,
        pool: Arc<dyn StreamPoolService>,
        breakers: Arc<dyn CircuitBreakerService>,
        retry: Arc<dyn RetryService>,
        metrics: Arc<dyn MetricsService>,
        settings: WorkerSettings,
    ) -> Self {
        let leases = pool.clone();
        let open = tower::service_fn(move |(peer, flow): (PeerId, FlowKey)| {
            let pool = leases.clone();
            async move { pool.get_stream(peer, flow).await }
        });
        let opener = ServiceBuilder::new()
            .layer(BreakerLayer::new(breakers))
            .layer(TimeoutLayer::new(settings.send_timeout))
            .layer(RetryLayer::new(retry))
            .service(open);
        let budget = ByteBudget::new(settings.max_queued_bytes);
        Self {
            discovery,
            pool,
            metrics,
            settings,
            opener: BoxCloneSyncService::new(opener),
            epoch: Instant::now(),
            datagrams: None,
            budget,
        }
    }

    /// Sends a peer's packets as datagrams while `paths` has a path to it up, and on
    /// streams otherwise.
    pub fn with_datagrams(mut self, paths: Arc<dyn DatagramPaths>) -> Self {
        self.datagrams = Some(paths);
        self
    }

    /// The workers' settings.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// The outbound byte budget: every packet takes its share before it is queued.
    pub fn budget(&self) -> &Arc<ByteBudget> {
        &self.budget
    }

    /// The metrics every worker counts in.
    pub fn metrics(&self) -> &Arc<dyn MetricsService> {
        &self.metrics
    }

    /// Milliseconds since the context was made, on tokio's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
