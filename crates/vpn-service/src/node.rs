use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vpn_api::{
    MetricsService, PeerDiscoveryService, StreamHealthService, TunDevice, TunPacket, VpnService,
    VpnStream,
};
use vpn_api::{MetricsSnapshot, PeerId};
use vpn_config::VpnConfig;
use vpn_discovery::{KadDiscovery, StaticRegistry, record_filter};
use vpn_dispatcher::Dispatcher;
use vpn_errors::{ServiceError, ServiceErrorKind, VpnError};
use vpn_metrics::AtomicMetrics;
use vpn_p2p::{Keypair, Libp2pStreamService, Multiaddr, P2pConfig, P2pNode, accept_streams};
use vpn_resilience::{ExponentialBackoff, PeerBreakers};
use vpn_stream::{InboundEnd, InboundLimits, InboundSink, StreamHealth, StreamPool, serve_inbound};
use vpn_tun::{Tun, TunConfig};
use vpn_types::{Budget, DropReason, GsoInfo};
use vpn_wire::Frame;
use vpn_worker::WorkerContext;

use crate::budget::{LookupHold, PeerBudgets, StreamSlot};
use crate::{InboundCheck, Verdict};

/// Packets read from or written to the TUN at once.
const TUN_BATCH: usize = 64;
/// Inbound streams waiting to be served.
const ACCEPT_BACKLOG: usize = 64;
/// Packets of one stream waiting for their sender's record to be looked up.
const LOOKUP_QUEUE: usize = 256;
/// Pause after a passing TUN read error before reading again.
const TUN_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// A failed publication is tried again this soon (or at the republish interval if sooner).
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// The start-up step that creates the TUN device: the operation a
/// [`ServiceError`] names when that step fails.
pub const CREATE_TUN: &str = "create TUN";

/// Where the node's TUN device comes from.
#[derive(Clone)]
pub enum TunSource {
    /// Create a kernel TUN device from the configuration's `[interface]` and `[node]`.
    Kernel,
    /// Use this device (an in-memory one in tests, or one the embedder made).
    Given(Arc<dyn TunDevice>),
}

/// The parts of a running node, each present once started.
#[derive(Default)]
struct Parts {
    p2p: Option<P2pNode>,
    discovery: Option<Arc<KadDiscovery>>,
    pool: Option<StreamPool>,
    health: Option<StreamHealth>,
    dispatcher: Option<Dispatcher>,
    tun: Option<Arc<dyn TunDevice>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Parts {
    /// Stops what was started, last first.
    async fn stop(mut self) {
        for task in self.tasks.drain(..).rev() {
            task.abort();
            let _ = task.await;
        }
        if let Some(dispatcher) = self.dispatcher.take() {
            dispatcher.stop().await;
        }
        if let Some(health) = self.health.take() {
            health.stop_warmer().await;
            health.stop_health_checker().await;
        }
        if let Some(pool) = self.pool.take() {
            pool.stop().await;
        }
        if let Some(p2p) = self.p2p.take() {
            p2p.stop().await;
        }
        // Dropping the last handle to a kernel TUN removes the interface and its routes.
        drop(self.tun.take());
    }
}

/// A vpn-node: the [`VpnService`] over libp2p, Kademlia and a TUN device.
pub struct VpnNode {
    config: VpnConfig,
    keypair: Keypair,
    tun: TunSource,
    metrics: Arc<AtomicMetrics>,
    parts: tokio::sync::Mutex<Option<Parts>>,
    /// The running health service, readable without waiting for `parts` (held across
    /// start and stop).
    health: std::sync::Mutex<Option<StreamHealth>>,
    fault: Fault,
}

/// The first fault a running node cannot carry traffic after (its TUN device is gone),
/// shared by the parts that can meet one.
#[derive(Clone, Default)]
struct Fault(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Fault {
    /// Records `what` unless a fault was recorded before; logs it once.
    fn raise(&self, what: String) {
        self.0.send_if_modified(|fault| {
            if fault.is_some() {
                return false;
            }
            tracing::error!("{what}; the node cannot carry traffic any more");
            *fault = Some(what);
            true
        });
    }

    fn tun_gone(&self, tun: &dyn TunDevice) {
        self.raise(format!("the TUN device {} is gone", tun.name()));
    }

    async fn wait(&self) -> String {
        let mut seen = self.0.subscribe();
        match seen.wait_for(Option::is_some).await {
            Ok(fault) => fault.clone().unwrap_or_default(),
            // The sender lives in `self`: this cannot close while we wait.
            Err(_) => std::future::pending().await,
        }
    }
}

fn startup(part: &'static str, cause: VpnError) -> VpnError {
    VpnError::Service(
        ServiceError::new(ServiceErrorKind::Startup, "vpn node", part).with_source(cause),
    )
}

impl VpnNode {
    /// A node with this (validated) configuration and identity, not started.
    pub fn new(config: VpnConfig, keypair: Keypair, tun: TunSource) -> Self {
        Self {
            config,
            keypair,
            tun,
            metrics: Arc::new(AtomicMetrics::new()),
            parts: tokio::sync::Mutex::new(None),
            health: std::sync::Mutex::new(None),
            fault: Fault::default(),
        }
    }

    /// Waits until the running node meets a fault it cannot carry traffic after (its TUN
    /// device was deleted) and says what it was. The node stays as it is: the caller stops
    /// it and, for a program, exits with an error, rather than run on black-holed.
    pub async fn fatal_fault(&self) -> String {
        self.fault.wait().await
    }

    /// This node's peer ID.
    pub fn local_peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The node's counters, for Prometheus rendering.
    pub fn metrics_registry(&self) -> Arc<AtomicMetrics> {
        self.metrics.clone()
    }

    /// The swarm's handle, once started.
    async fn p2p_handle(&self) -> Option<vpn_p2p::P2pHandle> {
        self.parts.lock().await.as_ref().and_then(|p| p.p2p.as_ref().map(|n| n.handle().clone()))
    }

    /// Where the swarm listens (empty when not started).
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        match self.p2p_handle().await {
            Some(handle) => handle.listen_addrs().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The running health service's slot.
    fn health_slot(&self) -> std::sync::MutexGuard<'_, Option<StreamHealth>> {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The name of the node's TUN device, once started.
    pub async fn tun_name(&self) -> Option<String> {
        self.parts.lock().await.as_ref().and_then(|p| p.tun.as_ref().map(|t| t.name().to_owned()))
    }

    /// The discovery service, once started.
    pub async fn discovery(&self) -> Option<Arc<KadDiscovery>> {
        self.parts.lock().await.as_ref().and_then(|p| p.discovery.clone())
    }

    /// The peers connected now (empty when not started).
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        match self.p2p_handle().await {
            Some(handle) => handle.connected_peers().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Health figures of the streams to each peer (empty when not started).
    pub fn stream_health(&self) -> vpn_api::HealthSnapshot {
        let health = self.health_slot().clone();
        health.as_ref().map(StreamHealthService::health).unwrap_or_default()
    }

    /// This node's overlay addresses and routed prefixes.
    pub fn own_addresses(&self) -> Vec<IpNet> {
        self.own_nets()
    }

    /// This node's overlay addresses (as host prefixes) and routed prefixes.
    fn own_nets(&self) -> Vec<IpNet> {
        let node = &self.config.node;
        let v4 = node.address.map(|a| IpNet::from(std::net::IpAddr::V4(a.addr())));
        let v6 = node.address6.map(|a| IpNet::from(std::net::IpAddr::V6(a.addr())));
        v4.into_iter().chain(v6).chain(node.routes.iter().copied()).collect()
    }

    /// The overlay's networks and every route into the tunnel: no underlay address lies
    /// in them.
    fn overlay_nets(&self) -> Vec<IpNet> {
        let (node, peers) = (&self.config.node, &self.config.peers);
        let v4 = node.address.map(|a| IpNet::V4(a.trunc()));
        let v6 = node.address6.map(|a| IpNet::V6(a.trunc()));
        let routes = node.routes.iter().chain(peers.iter().flat_map(|p| p.routes.iter()));
        v4.into_iter().chain(v6).chain(routes.copied()).collect()
    }

    async fn start_parts(&self, parts: &mut Parts) -> Result<(), VpnError> {
        let config = &self.config;
        let local = self.local_peer_id();
        let registry = Arc::new(StaticRegistry::from_config(local, config));
        let own = self.own_nets();

        let mut p2p_config = P2pConfig::new(self.keypair.clone(), config.network.listen.clone());
        p2p_config.bootstrap = config.network.bootstrap.clone();
        p2p_config.known_peers =
            config.peers.iter().map(|p| (p.peer_id, p.endpoints.clone())).collect();
        p2p_config.mdns = config.discovery.mdns;
        p2p_config.max_connections = config.network.max_connections;
        p2p_config.max_connections_per_peer = config.network.max_connections_per_peer;
        p2p_config.idle_connection_timeout = config.network.idle_connection_timeout;
        p2p_config.query_timeout = config.discovery.lookup_timeout;
        p2p_config.dial_timeout = config.network.dial_timeout;
        p2p_config.transport = config.network.transport;
        p2p_config.overlay = self.overlay_nets();
        let filter = record_filter(
            registry.clone(),
            config.discovery.records_per_publisher,
            Some(self.metrics.clone()),
        );
        p2p_config.record_filter = Some(Arc::new(filter));
        let p2p =
            P2pNode::start(p2p_config).await.map_err(|e| startup("start libp2p", e.into()))?;
        let handle = p2p.handle().clone();
        parts.p2p = Some(p2p);

        let configured =
            registry.claims().iter().filter(|(p, _)| *p != local).map(|(p, n)| (*n, *p)).collect();
        let discovery = Arc::new(
            KadDiscovery::new(
                Arc::new(handle.clone()),
                registry.clone(),
                self.keypair.clone(),
                own.clone(),
                configured,
                config.discovery.clone(),
            )
            .with_metrics(self.metrics.clone()),
        );
        parts.discovery = Some(discovery.clone());

        let metrics: Arc<dyn MetricsService> = self.metrics.clone();
        let streams = Arc::new(Libp2pStreamService::new(handle.stream_control()));
        let pool = StreamPool::new(streams, metrics.clone(), config.stream_pool.clone());
        pool.start();
        parts.pool = Some(pool.clone());
        let health = StreamHealth::new(
            pool.clone(),
            config.health_check.clone(),
            config.stream_pool.min_streams_per_peer,
        );
        health.start_health_checker().await.map_err(|e| startup("start health checker", e))?;
        health.start_warmer().await.map_err(|e| startup("start stream warmer", e))?;
        *self.health_slot() = Some(health.clone());
        parts.health = Some(health);

        let ctx = WorkerContext::new(
            discovery.clone(),
            Arc::new(pool),
            Arc::new(PeerBreakers::new(config.circuit_breaker.clone())),
            Arc::new(ExponentialBackoff::new(config.retry.clone())),
            metrics.clone(),
            config.worker.clone(),
        );
        let dispatcher = Dispatcher::new(Arc::new(ctx));
        dispatcher.start();
        parts.dispatcher = Some(dispatcher.clone());

        let tun = match &self.tun {
            TunSource::Given(tun) => tun.clone(),
            TunSource::Kernel => {
                let address = config.node.address.ok_or_else(|| {
                    startup(
                        CREATE_TUN,
                        VpnError::Config(vpn_errors::ConfigError::new(
                            "node.address",
                            "(unset)",
                            "must be set",
                        )),
                    )
                })?;
                let mut routes: Vec<IpNet> =
                    config.peers.iter().flat_map(|p| p.routes.iter().copied()).collect();
                routes.sort();
                routes.dedup();
                let tun_config = TunConfig {
                    name: config.interface.name.clone(),
                    mtu: config.interface.mtu,
                    address,
                    address6: config.node.address6,
                    routes,
                    offload: config.interface.offload,
                };
                let tun = Tun::create(&tun_config).await.map_err(|e| startup(CREATE_TUN, e))?;
                Arc::new(tun.with_metrics(metrics.clone()))
            }
        };
        parts.tun = Some(tun.clone());

        let mut control = handle.stream_control();
        let allow_registry = registry.clone();
        let inbound = accept_streams(
            &mut control,
            Arc::new(move |peer| allow_registry.is_member(peer)),
            metrics.clone(),
            ACCEPT_BACKLOG,
        )
        .map_err(|e| startup("accept streams", e))?;
        let receiver = Arc::new(Receiver {
            check: InboundCheck::new(discovery.clone(), own, config.firewall.clone()),
            delivery: Delivery {
                offload: tun.offload(),
                tun: tun.clone(),
                metrics: metrics.clone(),
                fault: self.fault.clone(),
            },
            budgets: PeerBudgets::new(config.limits.clone(), metrics.clone()),
            limits: InboundLimits {
                idle: config.limits.inbound_idle_timeout,
                write: config.limits.inbound_write_timeout,
            },
            warnings: vpn_types::WarnGate::per_peer(),
        });
        parts.tasks.push(tokio::spawn(serve_peers(inbound, receiver)));
        parts.tasks.push(tokio::spawn(read_tun(tun, dispatcher, self.fault.clone())));
        parts.tasks.push(tokio::spawn(publish(discovery, config.discovery.republish_interval)));
        tracing::info!(peer = %local, "vpn node started");
        Ok(())
    }
}

#[async_trait]
impl VpnService for VpnNode {
    async fn start(&self) -> Result<(), VpnError> {
        let mut slot = self.parts.lock().await;
        if slot.is_some() {
            return Err(VpnError::Service(ServiceError::new(
                ServiceErrorKind::AlreadyStarted,
                "vpn node",
                "start",
            )));
        }
        let mut parts = Parts::default();
        match self.start_parts(&mut parts).await {
            Ok(()) => {
                *slot = Some(parts);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "start-up failed; stopping what had started");
                self.health_slot().take();
                parts.stop().await;
                Err(e)
            }
        }
    }

    async fn stop(&self) -> Result<(), VpnError> {
        let parts = self.parts.lock().await.take();
        self.health_slot().take();
        if let Some(parts) = parts {
            parts.stop().await;
            tracing::info!("vpn node stopped");
        }
        Ok(())
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }
}

/// Reads the TUN and hands every packet to the dispatcher, until the device is gone. A
/// passing read error is logged and reading goes on after a short pause.
async fn read_tun(tun: Arc<dyn TunDevice>, dispatcher: Dispatcher, fault: Fault) {
    let mut batch = Vec::with_capacity(TUN_BATCH);
    let mut errors = 0u64;
    loop {
        match tun.recv_batch(&mut batch, TUN_BATCH).await {
            Ok(_) => {
                for packet in batch.drain(..) {
                    // Drops are counted by the dispatcher.
                    let _ = dispatcher.dispatch(packet);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return fault.tun_gone(tun.as_ref()),
            Err(e) => {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "reading the TUN device failed; reading on");
                }
                tokio::time::sleep(TUN_ERROR_PAUSE).await;
            }
        }
    }
}

/// How a receiver hands packets to its TUN: each inbound stream's reader writes what one
/// read brought, in one batch, before it reads again. There is no queue between the streams
/// and the TUN: while the kernel takes a batch, the stream waits, and the sender's flow
/// control holds its packets back instead of a queue dropping them.
#[derive(Clone)]
struct Delivery {
    tun: Arc<dyn TunDevice>,
    metrics: Arc<dyn MetricsService>,
    /// The TUN takes offload super-packets whole.
    offload: bool,
    fault: Fault,
}

impl Delivery {
    /// Adds an accepted packet to `batch`: an offload super-packet goes whole to a TUN with
    /// offload, and is otherwise cut into the segments the sender's kernel would have sent.
    fn accept(&self, batch: &mut Vec<TunPacket>, packet: Bytes, gso: Option<GsoInfo>) {
        let Some(gso) = gso else {
            return batch.push(TunPacket::new(packet));
        };
        if self.offload {
            return batch.push(TunPacket { data: packet, gso: Some(gso) });
        }
        let mut segments = Vec::new();
        match vpn_utils::segment(&packet, &gso, &mut segments) {
            Ok(()) => batch.extend(segments.into_iter().map(TunPacket::new)),
            Err(_) => self.metrics.record_drop(DropReason::Malformed),
        }
    }

    /// Writes `batch` to the TUN and empties it. Every packet counts as received; those the
    /// kernel does not take count as `tun_error` drops. Errors: the device is gone.
    async fn write(&self, batch: &mut Vec<TunPacket>) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len() as u64;
        let bytes = batch.iter().map(|p| p.data.len() as u64).sum();
        self.metrics.record_received(count, bytes);
        let written = self.tun.send_batch(batch).await;
        batch.clear();
        match written {
            Ok(written) => {
                let lost = count.saturating_sub(written as u64);
                if lost > 0 {
                    self.metrics.record_drops(DropReason::TunError, lost);
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.record_drops(DropReason::TunError, count);
                if e.kind() == io::ErrorKind::BrokenPipe {
                    self.fault.tun_gone(self.tun.as_ref());
                }
                Err(e)
            }
        }
    }
}

/// What every inbound stream shares: the receiver checks, the way to the TUN, and what
/// each peer may make us hold.
struct Receiver {
    check: InboundCheck,
    delivery: Delivery,
    budgets: Arc<PeerBudgets>,
    limits: InboundLimits,
    /// Warnings about what peers did, at most one per peer and kind every few seconds.
    warnings: vpn_types::WarnGate<(PeerId, &'static str)>,
}

/// Serves every stream peers open to us, each on its own task, within each peer's stream
/// budget.
async fn serve_peers(mut inbound: mpsc::Receiver<Box<dyn VpnStream>>, receiver: Arc<Receiver>) {
    while let Some(mut stream) = inbound.recv().await {
        let peer = stream.peer_id();
        match receiver.budgets.admit_stream(peer) {
            Some(slot) => drop(tokio::spawn(serve_peer(stream, slot, receiver.clone()))),
            None => {
                stream.reset();
                if let Some(held_back) = receiver.warnings.admit((peer, "streams")) {
                    tracing::warn!(%peer, held_back, "refused an inbound stream: the peer has its budget of streams open");
                }
            }
        }
    }
}

/// A packet waiting for its sender's record: the packet (copied out of the read buffer),
/// its offload info, and its bytes' place in the peer's budget.
type Waiting = (Bytes, Option<GsoInfo>, LookupHold);

/// The receiver checks of one inbound stream, in front of its TUN batch.
struct PeerSink<'a> {
    peer: PeerId,
    receiver: &'a Receiver,
    /// Packets whose source this node cannot place yet, to be looked up.
    unknown: &'a mpsc::Sender<Waiting>,
    batch: Vec<TunPacket>,
}

impl PeerSink<'_> {
    fn judge(&mut self, packet: Bytes, gso: Option<GsoInfo>) {
        let Receiver { check, delivery, budgets, .. } = self.receiver;
        match check.check(&self.peer, &packet) {
            Verdict::Accept => delivery.accept(&mut self.batch, packet, gso),
            Verdict::Drop(reason) => delivery.metrics.record_drop(reason),
            Verdict::LookUp(_) => {
                let Some(hold) = budgets.hold_for_lookup(self.peer, packet.len()) else {
                    return delivery.metrics.record_drop(DropReason::OverBudget);
                };
                // A copy, so a waiting packet holds its own bytes and not the read buffer
                // it arrived in.
                let packet = Bytes::copy_from_slice(&packet);
                if self.unknown.try_send((packet, gso, hold)).is_err() {
                    delivery.metrics.record_drop(DropReason::QueueFull);
                }
            }
        }
    }
}

impl InboundSink for PeerSink<'_> {
    fn frame(&mut self, frame: Frame) {
        match frame {
            Frame::Packet(packet) => self.judge(packet, None),
            // The segmentation is worked out from the packet; a header that disagrees is
            // malformed. What reaches the TUN (or the segmenter) is the derived header, so
            // the checks on the super-packet hold for every segment it becomes.
            Frame::Segmented { header, packet } => {
                let derived = header
                    .to_gso(packet.len())
                    .ok()
                    .and_then(|claimed| vpn_utils::super_packet_gso(&packet, &claimed).ok());
                match derived {
                    Some(gso) => self.judge(packet, Some(gso)),
                    None => self.receiver.delivery.metrics.record_drop(DropReason::Malformed),
                }
            }
            _ => {}
        }
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.receiver.delivery.write(&mut self.batch)
    }
}

/// The verdict on a packet that waited for a lookup: known by now (an earlier lookup
/// answered), or looked up within the peer's rate of lookups.
async fn judge_after_lookup(receiver: &Receiver, peer: PeerId, packet: &[u8]) -> Verdict {
    match receiver.check.check(&peer, packet) {
        Verdict::LookUp(src) if receiver.budgets.start_lookup(peer) => {
            receiver.check.check_after_lookup(&peer, src).await
        }
        Verdict::LookUp(_) => Verdict::Drop(DropReason::OverBudget),
        verdict => verdict,
    }
}

async fn serve_peer(stream: Box<dyn VpnStream>, slot: StreamSlot, receiver: Arc<Receiver>) {
    let peer = stream.peer_id();
    let metrics = receiver.delivery.metrics.clone();
    // Packets whose source this node cannot place yet wait here for a lookup, in order.
    let (unknown, mut waiting) = mpsc::channel::<Waiting>(LOOKUP_QUEUE);
    let lookups = {
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let delivery = &receiver.delivery;
            while let Some((packet, gso, hold)) = waiting.recv().await {
                match judge_after_lookup(&receiver, peer, &packet).await {
                    Verdict::Accept => delivery.accept(&mut batch, packet, gso),
                    Verdict::Drop(reason) => delivery.metrics.record_drop(reason),
                    Verdict::LookUp(_) => delivery.metrics.record_drop(DropReason::Spoofed),
                }
                drop(hold);
                if delivery.write(&mut batch).await.is_err() {
                    return;
                }
            }
        })
    };
    let sink = PeerSink { peer, receiver: &receiver, unknown: &unknown, batch: Vec::new() };
    let end = serve_inbound(stream, sink, receiver.limits).await;
    drop(unknown);
    let _ = lookups.await;
    drop(slot);
    match end {
        InboundEnd::Closed => {}
        InboundEnd::Protocol(e) => {
            metrics.record_stream_error();
            if let Some(held_back) = receiver.warnings.admit((peer, "protocol")) {
                tracing::warn!(%peer, error = %e, held_back, "peer broke the wire protocol; stream reset");
            }
        }
        // The fault was raised by the write that failed.
        InboundEnd::Sink(e) => tracing::debug!(%peer, error = %e, "inbound stream ended: no TUN"),
        InboundEnd::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        InboundEnd::Io(e) => tracing::debug!(%peer, error = %e, "inbound stream ended"),
        InboundEnd::Idle => {
            metrics.record_budget_exceeded(Budget::IdleStream);
            tracing::debug!(%peer, "inbound stream reset: it sent nothing for the idle limit");
        }
        InboundEnd::Stalled => {
            metrics.record_budget_exceeded(Budget::StalledStream);
            tracing::debug!(%peer, "inbound stream reset: it did not take our reply");
        }
    }
}

/// Publishes our IP record, and again before half its lifetime has passed.
async fn publish(discovery: Arc<KadDiscovery>, every: Duration) {
    loop {
        let wait = match discovery.sync_to_dht().await {
            Ok(()) => every,
            Err(e) => {
                tracing::debug!(error = %e, "publishing our IP record failed; trying again soon");
                PUBLISH_RETRY.min(every)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpn_testutil::mocks::MockTun;

    fn packet(n: u8) -> TunPacket {
        TunPacket::new(Bytes::from(vec![n; 20]))
    }

    #[tokio::test]
    async fn tun_writes_count_what_the_kernel_did_not_take_and_stop_when_it_is_gone() {
        let mut tun = MockTun::new();
        let mut sequence = mockall::Sequence::new();
        // First batch: the kernel takes all but one; second: all; then the device is gone.
        tun.expect_send_batch().times(1).in_sequence(&mut sequence).returning(|p| Ok(p.len() - 1));
        tun.expect_send_batch().times(1).in_sequence(&mut sequence).returning(|p| Ok(p.len()));
        tun.expect_send_batch()
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_| Err(io::Error::from(io::ErrorKind::BrokenPipe)));
        tun.expect_name().return_const("vpn-test".to_owned());
        let metrics = Arc::new(AtomicMetrics::new());
        let fault = Fault::default();
        let delivery =
            Delivery { tun: Arc::new(tun), metrics: metrics.clone(), offload: false, fault };
        let mut batch = Vec::new();
        // An empty batch does not reach the device.
        delivery.write(&mut batch).await.unwrap();
        for round in 0..3u8 {
            batch.push(packet(round));
            batch.push(packet(round));
            let written = delivery.write(&mut batch).await;
            assert!(batch.is_empty());
            assert_eq!(written.is_err(), round == 2);
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.drops[DropReason::TunError.index()], 1 + 2);
        assert_eq!(snapshot.packets_received, 6);
        let fault = delivery.fault.0.borrow().clone();
        assert_eq!(fault.as_deref(), Some("the TUN device vpn-test is gone"));
    }
}
