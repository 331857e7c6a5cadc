//! The composition root: a [`VpnNode`] built from its parts.

use std::sync::Arc;

use tokio::sync::mpsc;
use vpn_api::{
    CircuitBreakerService, MetricsService, PeerDiscoveryService, RetryService, StreamHealthService,
    StreamPoolService, StreamService, TunDevice, VpnStream,
};
use vpn_config::VpnConfig;
use vpn_metrics::AtomicMetrics;
use vpn_p2p::Keypair;

use crate::VpnNode;

/// Parts given to the builder in place of the defaults.
#[derive(Default)]
pub(crate) struct Given {
    pub(crate) tun: Option<Arc<dyn TunDevice>>,
    pub(crate) discovery: Option<Arc<dyn PeerDiscoveryService>>,
    pub(crate) streams: Option<Arc<dyn StreamService>>,
    pub(crate) inbound: Option<mpsc::Receiver<Box<dyn VpnStream>>>,
    pub(crate) pool: Option<Arc<dyn StreamPoolService>>,
    pub(crate) health: Option<Arc<dyn StreamHealthService>>,
    pub(crate) breakers: Option<Arc<dyn CircuitBreakerService>>,
    pub(crate) retry: Option<Arc<dyn RetryService>>,
    /// A TUN device or inbound streams were given: they serve one start.
    one_off: bool,
    /// The node was started once.
    spent: bool,
}

impl Given {
    /// The parts for a start: the shared ones cloned, the one-off ones taken. `None` when
    /// one-off parts were given and an earlier start used them.
    pub(crate) fn for_start(&mut self) -> Option<Given> {
        if self.one_off && self.spent {
            return None;
        }
        self.spent = true;
        Some(Given {
            tun: self.tun.take(),
            inbound: self.inbound.take(),
            discovery: self.discovery.clone(),
            streams: self.streams.clone(),
            pool: self.pool.clone(),
            health: self.health.clone(),
            breakers: self.breakers.clone(),
            retry: self.retry.clone(),
            one_off: self.one_off,
            spent: true,
        })
    }

    /// Whether a part still missing is one the libp2p swarm provides.
    pub(crate) fn needs_swarm(&self) -> bool {
        self.discovery.is_none() || self.streams.is_none() || self.inbound.is_none()
    }
}

/// Builds a [`VpnNode`] from its parts. Every part not given is the default the `vpn-node`
/// program runs with, made from the configuration when the node starts:
///
/// | part | default |
/// |---|---|
/// | [`metrics`](Self::metrics) | `vpn_metrics::AtomicMetrics` |
/// | [`tun`](Self::tun) | a kernel TUN device (`vpn_tun::Tun`) from `[interface]` and `[node]` |
/// | [`discovery`](Self::discovery) | `vpn_discovery::KadDiscovery` over the swarm's DHT |
/// | [`stream_service`](Self::stream_service) | `vpn_p2p::Libp2pStreamService` |
/// | [`inbound_streams`](Self::inbound_streams) | `vpn_p2p::accept_streams`, members only |
/// | [`pool`](Self::pool) | `vpn_stream::StreamPool` over the stream service |
/// | [`health`](Self::health) | `vpn_stream::StreamHealth` over the default pool (none over a given pool) |
/// | [`breakers`](Self::breakers) | `vpn_resilience::PeerBreakers` |
/// | [`retry`](Self::retry) | `vpn_resilience::ExponentialBackoff` |
///
/// The libp2p swarm starts only when discovery, the stream service or the inbound streams
/// are left to their defaults. The node starts and stops the parts it made, and starts and
/// stops the health service it is given; a given pool, discovery or stream service is the
/// giver's to start and stop. A given TUN device and given inbound streams serve one start:
/// the node lets go of them when it stops, and a second start is refused.
///
/// ```no_run
/// use std::sync::Arc;
/// use vpn_api::VpnService;
/// use vpn_metrics::AtomicMetrics;
/// use vpn_p2p::Keypair;
/// use vpn_service::VpnNode;
///
/// # async fn run() -> Result<(), vpn_errors::VpnError> {
/// let config = vpn_config::load_str("[node]\naddress = \"100.64.0.1/10\"\n", []).unwrap();
/// let metrics = Arc::new(AtomicMetrics::new());
/// let node = VpnNode::builder(config, Keypair::generate_ed25519()).metrics(metrics.clone()).build();
/// node.start().await?;
/// println!("{}", metrics.render_prometheus());
/// node.stop().await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct VpnNodeBuilder {
    config: VpnConfig,
    keypair: Keypair,
    metrics: Option<Arc<dyn MetricsService>>,
    given: Given,
}

impl VpnNodeBuilder {
    pub(crate) fn new(config: VpnConfig, keypair: Keypair) -> Self {
        Self { config, keypair, metrics: None, given: Given::default() }
    }

    /// Where every part counts what it does.
    pub fn metrics(mut self, metrics: Arc<dyn MetricsService>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The packet interface (an in-memory one in tests, or one the embedder made).
    pub fn tun(mut self, tun: Arc<dyn TunDevice>) -> Self {
        self.given.tun = Some(tun);
        self.given.one_off = true;
        self
    }

    /// Overlay address -> peer, publishing our record, and what the receiver checks sources
    /// against.
    pub fn discovery(mut self, discovery: Arc<dyn PeerDiscoveryService>) -> Self {
        self.given.discovery = Some(discovery);
        self
    }

    /// Opens VPN streams to peers (for the default pool).
    pub fn stream_service(mut self, streams: Arc<dyn StreamService>) -> Self {
        self.given.streams = Some(streams);
        self
    }

    /// The streams peers open to this node, already admitted (members only).
    pub fn inbound_streams(mut self, inbound: mpsc::Receiver<Box<dyn VpnStream>>) -> Self {
        self.given.inbound = Some(inbound);
        self.given.one_off = true;
        self
    }

    /// Lends streams to flows.
    pub fn pool(mut self, pool: Arc<dyn StreamPoolService>) -> Self {
        self.given.pool = Some(pool);
        self
    }

    /// Health checking and warming; the node starts and stops it.
    pub fn health(mut self, health: Arc<dyn StreamHealthService>) -> Self {
        self.given.health = Some(health);
        self
    }

    /// A circuit breaker per destination peer.
    pub fn breakers(mut self, breakers: Arc<dyn CircuitBreakerService>) -> Self {
        self.given.breakers = Some(breakers);
        self
    }

    /// Retry with backoff around opening streams.
    pub fn retry(mut self, retry: Arc<dyn RetryService>) -> Self {
        self.given.retry = Some(retry);
        self
    }

    /// The node, not started.
    pub fn build(self) -> VpnNode {
        let metrics = self.metrics.unwrap_or_else(|| Arc::new(AtomicMetrics::new()));
        VpnNode::from_parts(self.config, self.keypair, metrics, self.given)
    }
}
