//! The node: its parts, how they start in stages, and how they stop.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use vpn_api::{
    CircuitBreakerService, MetricsService, MetricsSnapshot, PeerDiscoveryService, PeerId,
    RetryService, StreamHealthService, StreamPoolService, StreamService, TunDevice, VpnService,
    VpnStream,
};
use vpn_config::VpnConfig;
use vpn_discovery::{KadDiscovery, LiveRegistry, StaticRegistry, record_filter};
use vpn_dispatcher::Dispatcher;
use vpn_errors::{NetworkError, NetworkErrorKind, ServiceError, ServiceErrorKind, VpnError};
use vpn_p2p::{
    Keypair, Libp2pStreamService, Multiaddr, P2pConfig, P2pHandle, P2pNode, accept_streams,
};
use vpn_resilience::{ExponentialBackoff, PeerBreakers};
use vpn_stream::{InboundLimits, StreamHealth, StreamPool};
use vpn_tun::{Tun, TunConfig};
use vpn_types::WarnGate;
use vpn_worker::WorkerContext;

use crate::InboundCheck;
use crate::budget::PeerBudgets;
use crate::builder::{Given, VpnNodeBuilder};
use crate::fault::Fault;
use crate::inbound::{Delivery, Receiver, serve_peers};
#[cfg(doc)]
use crate::ping::MAX_PINGS;
use crate::ping::{PingReport, PingTarget, ping_over};
use crate::tasks::Tasks;

/// Inbound streams waiting to be served.
const ACCEPT_BACKLOG: usize = 64;
/// Why a node given its own TUN device or inbound streams does not start twice.
const ONE_START: &str = "the TUN device or inbound streams given to the builder serve one start \
                         (the node let go of them when it stopped); build a new node";
/// Time between two PINGs of `ping`.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The start-up step that creates the TUN device: the operation a
/// [`ServiceError`] names when that step fails.
pub const CREATE_TUN: &str = "create TUN";

/// The parts of a running node, each present once started.
#[derive(Default)]
struct Parts {
    tasks: Tasks,
    p2p: Option<P2pNode>,
    discovery: Option<Arc<dyn PeerDiscoveryService>>,
    /// The stream service (given, or over the swarm), for `ping`.
    streams: Option<Arc<dyn StreamService>>,
    /// The default pool, which the node stops (a given one is its giver's).
    pool: Option<StreamPool>,
    health: Option<Arc<dyn StreamHealthService>>,
    dispatcher: Option<Dispatcher>,
    tun: Option<Arc<dyn TunDevice>>,
    /// Who may join and hold what; `reload` replaces it.
    registry: Option<Arc<LiveRegistry>>,
    /// The default discovery, whose configured claims `reload` replaces.
    kad: Option<Arc<KadDiscovery>>,
    /// The receive path's shared state, whose firewall `reload` replaces.
    receiver: Option<Arc<Receiver>>,
    /// The QUIC connections' datagram links, when packets ride datagrams.
    links: Option<vpn_quic::Links>,
}

impl Parts {
    /// Cuts `peers` off (they are no members any more): their connections close and the
    /// routing table drops them. Detached: the caller does not wait.
    fn expel(&self, peers: Vec<PeerId>) {
        if let Some(p2p) = self.p2p.as_ref().filter(|_| !peers.is_empty()) {
            let handle = p2p.handle().clone();
            self.tasks.spawn(async move {
                for peer in peers {
                    let _ = handle.expel(peer).await;
                }
            });
        }
    }

    /// Stops what was started, last first: the node's own tasks (which hold the TUN and
    /// the dispatcher) end before the parts they use.
    async fn stop(mut self) {
        self.tasks.stop().await;
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

/// A vpn-node: the [`VpnService`] over discovery, streams and a TUN device, built by
/// [`VpnNode::builder`].
pub struct VpnNode {
    /// The configuration in force (`reload` replaces it).
    config: RwLock<Arc<VpnConfig>>,
    keypair: Keypair,
    metrics: Arc<dyn MetricsService>,
    given: Mutex<Given>,
    parts: tokio::sync::Mutex<Option<Parts>>,
    /// The running health service, readable without waiting for `parts` (held across
    /// start and stop).
    health: Mutex<Option<Arc<dyn StreamHealthService>>>,
    fault: Fault,
}

fn startup(part: &'static str, cause: VpnError) -> VpnError {
    VpnError::Service(
        ServiceError::new(ServiceErrorKind::Startup, "vpn node", part).with_source(cause),
    )
}

/// The TUN device a configuration describes: the interface, the overlay addresses and the
/// peers' routes into the tunnel.
///
/// Errors: `node.address` is unset.
pub fn tun_config(config: &VpnConfig) -> Result<TunConfig, VpnError> {
    let address = config.node.address.ok_or_else(|| {
        VpnError::Config(vpn_errors::ConfigError::new("node.address", "(unset)", "must be set"))
    })?;
    let mut routes: Vec<IpNet> =
        config.peers.iter().flat_map(|p| p.routes.iter().copied()).collect();
    routes.sort();
    routes.dedup();
    Ok(TunConfig {
        name: config.interface.name.clone(),
        mtu: config.interface.mtu,
        address,
        address6: config.node.address6,
        routes,
        offload: config.interface.offload,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain slots: a panic elsewhere leaves them whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The swarm, which a default part needs.
fn swarm<'a>(handle: Option<&'a P2pHandle>, part: &'static str) -> Result<&'a P2pHandle, VpnError> {
    handle.ok_or_else(|| {
        startup(
            part,
            VpnError::Service(ServiceError::new(ServiceErrorKind::NotStarted, "libp2p", part)),
        )
    })
}

impl VpnNode {
    /// A builder of a node with this (validated) configuration and identity.
    pub fn builder(config: VpnConfig, keypair: Keypair) -> VpnNodeBuilder {
        VpnNodeBuilder::new(config, keypair)
    }

    pub(crate) fn from_parts(
        config: VpnConfig,
        keypair: Keypair,
        metrics: Arc<dyn MetricsService>,
        given: Given,
    ) -> Self {
        Self {
            config: RwLock::new(Arc::new(config)),
            keypair,
            metrics,
            given: Mutex::new(given),
            parts: tokio::sync::Mutex::new(None),
            health: Mutex::new(None),
            fault: Fault::default(),
        }
    }

    /// Waits until the running node meets a fault it cannot carry traffic after (its TUN
    /// device was deleted, its swarm's task died) and says what it was. The node stays as
    /// it is: the caller stops it and, for a program, exits with an error, rather than run
    /// on black-holed.
    pub async fn fatal_fault(&self) -> String {
        self.fault.wait().await
    }

    /// The configuration in force.
    fn config(&self) -> Arc<VpnConfig> {
        self.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The claims of other peers in `registry`, as discovery resolves them first.
    fn configured_claims(&self, registry: &StaticRegistry) -> Vec<(IpNet, PeerId)> {
        let local = self.local_peer_id();
        registry.claims().iter().filter(|(p, _)| *p != local).map(|(p, n)| (*n, *p)).collect()
    }

    /// This node's peer ID.
    pub fn local_peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The swarm's handle, once started (when the node runs one).
    async fn p2p_handle(&self) -> Option<P2pHandle> {
        self.parts.lock().await.as_ref().and_then(|p| p.p2p.as_ref().map(|n| n.handle().clone()))
    }

    /// Where the swarm listens (empty when not started).
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        match self.p2p_handle().await {
            Some(handle) => handle.listen_addrs().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The name of the node's TUN device, once started.
    pub async fn tun_name(&self) -> Option<String> {
        self.parts.lock().await.as_ref().and_then(|p| p.tun.as_ref().map(|t| t.name().to_owned()))
    }

    /// The discovery service, once started.
    pub async fn discovery(&self) -> Option<Arc<dyn PeerDiscoveryService>> {
        self.parts.lock().await.as_ref().and_then(|p| p.discovery.clone())
    }

    /// The peers connected now (empty when not started).
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        match self.p2p_handle().await {
            Some(handle) => handle.connected_peers().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// How each connected peer is reached (empty when not started).
    pub async fn paths(&self) -> Vec<vpn_p2p::PeerPath> {
        match self.p2p_handle().await {
            Some(handle) => handle.paths().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The datagram link packets to `peer` take now, if one is up: the peer's UDP address
    /// and the connection's round trip.
    pub async fn datagram_path(
        &self,
        peer: &PeerId,
    ) -> Option<(std::net::SocketAddr, std::time::Duration)> {
        let link = self.datagram_link(peer).await?;
        Some((link.remote_address(), link.rtt()))
    }

    /// The datagram link packets to `peer` take now, if one is up.
    pub async fn datagram_link(&self, peer: &PeerId) -> Option<vpn_quic::DatagramLink> {
        let parts = self.parts.lock().await;
        parts.as_ref()?.links.as_ref()?.best(peer)
    }

    /// What this node asked of the DHT (zero when not started).
    pub async fn dht_counts(&self) -> vpn_p2p::DhtCounts {
        match self.p2p_handle().await {
            Some(handle) => handle.dht_counts().await.unwrap_or_default(),
            None => vpn_p2p::DhtCounts::default(),
        }
    }

    /// How this node is reached (`None` when not started).
    pub async fn reachability(&self) -> Option<vpn_p2p::Reachability> {
        self.p2p_handle().await?.reachability().await.ok()
    }

    /// The peers in the DHT routing table now (members only; empty when not started).
    pub async fn routing_table(&self) -> Vec<PeerId> {
        match self.p2p_handle().await {
            Some(handle) => handle.routing_table().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Health figures of the streams to each peer (empty when not started).
    pub fn stream_health(&self) -> vpn_api::HealthSnapshot {
        let health = lock(&self.health).clone();
        health.as_ref().map(|h| h.health()).unwrap_or_default()
    }

    /// Pings `target` over the tunnel: opens a VPN stream to its peer and sends `count`
    /// PING frames (at most [`MAX_PINGS`], a second apart), each answered by a PONG within
    /// `health_check.timeout` or counted lost.
    ///
    /// Errors: the node is not started; nobody holds the address; the stream could not be
    /// opened in `stream_pool.open_timeout`, or failed.
    pub async fn ping(&self, target: PingTarget, count: u32) -> Result<PingReport, VpnError> {
        let (discovery, streams, handle) = {
            let parts = self.parts.lock().await;
            let Some(parts) = parts.as_ref() else {
                let idle = ServiceError::new(ServiceErrorKind::NotStarted, "vpn node", "ping");
                return Err(VpnError::Service(idle));
            };
            let handle = parts.p2p.as_ref().map(|p| p.handle().clone());
            (parts.discovery.clone(), parts.streams.clone(), handle)
        };
        let unavailable = |what| {
            VpnError::Service(ServiceError::new(ServiceErrorKind::Unavailable, what, "ping"))
        };
        let (peer, address) = match target {
            PingTarget::Peer(peer) => (peer, None),
            PingTarget::Address(ip) => {
                let discovery = discovery.ok_or_else(|| unavailable("discovery"))?;
                (discovery.peer_for_ip(ip).await?, Some(ip))
            }
        };
        if peer == self.local_peer_id() {
            return Err(unavailable("this node itself (ping another node)"));
        }
        let streams = streams.ok_or_else(|| unavailable("stream service"))?;
        let started = tokio::time::Instant::now();
        let limit = self.config().stream_pool.open_timeout;
        let mut stream =
            tokio::time::timeout(limit, streams.open_stream(peer)).await.map_err(|_| {
                let late = NetworkError::new(NetworkErrorKind::Timeout, "open stream");
                VpnError::Network(late.with_peer(peer))
            })??;
        let open = started.elapsed();
        let timeout = self.config().health_check.timeout;
        let rtts = ping_over(&mut stream, count, PING_INTERVAL, timeout).await;
        let _ = tokio::time::timeout(PING_INTERVAL, stream.shutdown()).await;
        let path = match handle {
            Some(handle) => handle.connections().await.unwrap_or_default(),
            None => Vec::new(),
        };
        let path = path.into_iter().filter(|(p, _)| *p == peer).map(|(_, a)| a).collect();
        Ok(PingReport { peer, address, path, open, rtts: rtts? })
    }

    /// Applies a new configuration to the running node without touching established
    /// flows: `[[peers]]` (except their routes), `network.allowed_peers` and `[firewall]`
    /// take effect at once; `[log]` is the caller's (the program's logger). Returns the
    /// sections that changed.
    ///
    /// Errors: the node is not started; or the new configuration changes a section only a
    /// restart applies (each is named, and nothing is applied).
    pub async fn reload(&self, new: VpnConfig) -> Result<Vec<&'static str>, VpnError> {
        let parts = self.parts.lock().await;
        let Some(parts) = parts.as_ref() else {
            let idle = ServiceError::new(ServiceErrorKind::NotStarted, "vpn node", "reload");
            return Err(VpnError::Service(idle));
        };
        let old = self.config();
        let change = crate::reload::compare(&old, &new);
        if !change.fixed.is_empty() {
            return Err(VpnError::Config(vpn_errors::ConfigError::new(
                change.fixed.join(", "),
                "(changed)",
                "cannot change while the node runs; nothing was applied (restart the node to apply it)",
            )));
        }
        let membership = change.live.iter().any(|s| *s == "peers" || *s == "network.allowed_peers");
        if change.live.contains(&"peers") && parts.kad.is_none() {
            // The builder was given its discovery: its configured peers are the giver's.
            return Err(VpnError::Service(ServiceError::new(
                ServiceErrorKind::Unavailable,
                "the given discovery service (its peers are its own)",
                "reload [[peers]]",
            )));
        }
        // The revocation list is read again (the CA may have issued a new one under the same
        // name); a list that does not verify refuses the whole reload.
        let revocations = match (&new.membership.revocations, parts.registry.as_ref()) {
            (Some(path), Some(live)) if live.membership().is_some() => {
                let bytes = std::fs::read(path).map_err(|e| {
                    VpnError::Config(vpn_errors::ConfigError::new(
                        "membership.revocations",
                        path.display(),
                        format!("cannot be read: {e}; nothing was applied"),
                    ))
                })?;
                Some(bytes)
            }
            _ => None,
        };
        // From here on nothing waits: the change is applied whole, or (dropped) not at all.
        let new = Arc::new(new);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = new.clone();
        if let Some(receiver) = &parts.receiver {
            receiver.check.set_firewall(new.firewall.clone());
        }
        if membership && let Some(live) = &parts.registry {
            // The registry first: lookups judge records against it, and the cache is
            // emptied after it is in force.
            let registry = StaticRegistry::from_config(self.local_peer_id(), &new);
            let claims = self.configured_claims(&registry);
            let before = live.current();
            live.replace(registry);
            // Peers that are no members any more lose their connections and their place
            // in the routing table.
            let gone: Vec<PeerId> = before.members().filter(|peer| !live.is_member(peer)).collect();
            parts.expel(gone);
            if let Some(kad) = &parts.kad {
                kad.set_configured(claims, |peer| live.is_member(peer));
            }
        }
        let mut change = change;
        if let Some(bytes) = revocations
            && let Some(membership) = parts.registry.as_ref().and_then(|r| r.membership())
        {
            match membership.revoke(&bytes, vpn_discovery::unix_now()) {
                Ok(cut) => {
                    if !cut.is_empty() {
                        tracing::info!(peers = ?cut, "revoked members cut off");
                        change.live.push("membership.revocations (new list)");
                    }
                    parts.expel(cut);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the revocation list does not verify; the one in force stays")
                }
            }
        }
        if let Some(p2p) = &parts.p2p {
            // New or moved peers: the swarm learns where they are, and says hello.
            for peer in
                new.peers.iter().filter(|p| !p.endpoints.is_empty() && !old.peers.contains(p))
            {
                let (handle, id, addrs) =
                    (p2p.handle().clone(), peer.peer_id, peer.endpoints.clone());
                let limit = new.network.dial_timeout;
                parts.tasks.spawn(async move {
                    let _ = handle.add_addresses(id, addrs.clone()).await;
                    if let Ok(Err(e)) = tokio::time::timeout(limit, handle.dial(id, addrs)).await {
                        tracing::debug!(peer = %id, error = %e, "cannot dial a peer added by reload");
                    }
                });
            }
        }
        tracing::info!(changed = ?change.live, "configuration reloaded");
        Ok(change.live)
    }

    /// This node's overlay addresses and routed prefixes.
    pub fn own_addresses(&self) -> Vec<IpNet> {
        let config = self.config();
        let node = &config.node;
        let v4 = node.address.map(|a| IpNet::from(std::net::IpAddr::V4(a.addr())));
        let v6 = node.address6.map(|a| IpNet::from(std::net::IpAddr::V6(a.addr())));
        v4.into_iter().chain(v6).chain(node.routes.iter().copied()).collect()
    }

    /// The overlay's networks and every route into the tunnel: no underlay address lies
    /// in them.
    fn overlay_nets(&self) -> Vec<IpNet> {
        let config = self.config();
        let (node, peers) = (&config.node, &config.peers);
        let v4 = node.address.map(|a| IpNet::V4(a.trunc()));
        let v6 = node.address6.map(|a| IpNet::V6(a.trunc()));
        let routes = node.routes.iter().chain(peers.iter().flat_map(|p| p.routes.iter()));
        v4.into_iter().chain(v6).chain(routes.copied()).collect()
    }

    /// Starts the parts in order; each stage names itself in its error.
    async fn start_parts(&self, parts: &mut Parts) -> Result<(), VpnError> {
        let mut given = lock(&self.given).for_start().ok_or_else(|| {
            // "vpn node start: unavailable: the TUN device or inbound streams given to the
            // builder serve one start ..."
            let spent = ServiceError::new(ServiceErrorKind::Unavailable, "vpn node", "start")
                .with_source(ONE_START);
            VpnError::Service(spent)
        })?;
        let local = self.local_peer_id();
        let mut registry = LiveRegistry::new(StaticRegistry::from_config(local, &self.config()));
        let own = self.own_addresses();
        let certified = crate::membership::load(&self.config().membership, &local, &own)
            .map_err(|e| startup("load membership", e))?;
        if let Some(membership) = certified {
            registry = registry.with_membership(membership);
        }
        let registry = Arc::new(registry);
        parts.registry = Some(registry.clone());
        // The swarm moves flows onto direct connections through the pool, started after it.
        let moves = Arc::new(std::sync::OnceLock::new());
        if given.needs_swarm() {
            let config = self.config();
            let datagrams = config.network.datagrams && config.network.psk_file.is_none();
            let links = vpn_quic::Links::new();
            let p2p = self.start_swarm(&registry, moves.clone(), links.clone()).await?;
            // A swarm whose task died reaches no peer: the node says so and stops rather
            // than look alive.
            let (ended, fault) = (p2p.ended(), self.fault.clone());
            parts.tasks.spawn(async move { fault.raise(ended.await.to_owned()) });
            parts.p2p = Some(p2p);
            parts.links = datagrams.then_some(links);
        }
        let handle = parts.p2p.as_ref().map(|p| p.handle().clone());
        let discovery: Arc<dyn PeerDiscoveryService> = match given.discovery.take() {
            Some(discovery) => discovery,
            None => {
                let kad = self.kad_discovery(swarm(handle.as_ref(), "start discovery")?, &registry);
                parts.kad = Some(kad.clone());
                kad
            }
        };
        parts.discovery = Some(discovery.clone());
        parts.streams = match given.streams.take() {
            Some(streams) => Some(streams),
            None => handle.as_ref().map(|h| {
                Arc::new(Libp2pStreamService::new(h.stream_control())) as Arc<dyn StreamService>
            }),
        };
        let pool = self.start_pool(parts, &mut given).await?;
        if let Some(pool) = &parts.pool {
            let _ = moves.set(pool.clone());
        }
        let tun = match given.tun.take() {
            Some(tun) => tun,
            None => self.create_tun().await?,
        };
        parts.tun = Some(tun.clone());
        let paths = parts.links.clone().map(|links| {
            let paths = crate::datagram::LinkPaths { links, tun: tun.clone() };
            Arc::new(paths) as Arc<dyn vpn_api::DatagramPaths>
        });
        let dispatcher = self.start_dispatcher(&mut given, discovery.clone(), pool, paths);
        parts.dispatcher = Some(dispatcher.clone());
        let (inbound, members) = match given.inbound.take() {
            Some(inbound) => (inbound, None),
            None => {
                let handle = swarm(handle.as_ref(), "accept streams")?;
                (self.accept(handle, &registry, &parts.tasks)?, Some(registry.clone()))
            }
        };
        let receiver = self.receiver(discovery.clone(), tun.clone(), members);
        parts.receiver = Some(receiver.clone());
        if let Some(links) = &parts.links {
            let serve = crate::datagram::serve_links(
                links.subscribe(),
                receiver.clone(),
                parts.tasks.clone(),
            );
            parts.tasks.spawn(serve);
        }
        parts.tasks.spawn(serve_peers(inbound, receiver, parts.tasks.clone()));
        parts.tasks.spawn(crate::tun_reader::read_tun(tun, dispatcher, self.fault.clone()));
        let every = self.config().discovery.republish_interval;
        parts.tasks.spawn(crate::publisher::publish(discovery, every));
        if let (Some(membership), Some(handle)) = (registry.membership(), handle) {
            let config = self.config();
            let (every, ttl) = (config.membership.revocation_sync, config.discovery.record_ttl);
            let share = crate::revocations::share(membership.clone(), handle, every, ttl);
            parts.tasks.spawn(share);
        }
        tracing::info!(peer = %self.local_peer_id(), "vpn node started");
        Ok(())
    }

    /// The libp2p swarm: listening, bootstrap, and the DHT's record filter.
    async fn start_swarm(
        &self,
        registry: &Arc<LiveRegistry>,
        moves: Arc<std::sync::OnceLock<StreamPool>>,
        links: vpn_quic::Links,
    ) -> Result<P2pNode, VpnError> {
        let config = self.config();
        let mut p2p = P2pConfig::new(self.keypair.clone(), config.network.listen.clone());
        p2p.bootstrap = config.network.bootstrap.clone();
        p2p.known_peers = config.peers.iter().map(|p| (p.peer_id, p.endpoints.clone())).collect();
        p2p.mdns = config.discovery.mdns;
        p2p.max_connections = config.network.max_connections;
        p2p.max_connections_per_peer = config.network.max_connections_per_peer;
        p2p.idle_connection_timeout = config.network.idle_connection_timeout;
        p2p.query_timeout = config.discovery.lookup_timeout;
        p2p.dial_timeout = config.network.dial_timeout;
        p2p.transport = config.network.transport;
        p2p.overlay = self.overlay_nets();
        let admission = crate::membership::NodeAdmission {
            registry: registry.clone(),
            metrics: self.metrics.clone(),
        };
        p2p.admission = Some(Arc::new(admission));
        let membership = &config.membership;
        p2p.membership_timeout = membership.timeout;
        p2p.max_unproven = membership.max_unproven as usize;
        p2p.max_unproven_per_ip = membership.max_unproven_per_ip as usize;
        p2p.max_pending_incoming = membership.max_pending_incoming;
        let relay = &config.relay;
        p2p.reach = vpn_p2p::ReachConfig {
            serve: relay.serve,
            reservations: relay.reservations as usize,
            max_reservations: relay.max_reservations as usize,
            max_circuits: relay.max_circuits as usize,
            max_circuits_per_peer: relay.max_circuits_per_peer as usize,
            circuit_duration: relay.circuit_duration,
            circuit_bytes: relay.circuit_bytes,
            hole_punch: relay.hole_punch,
            autonat: relay.autonat,
        };
        p2p.external = config.network.external_addresses.clone();
        let observer = crate::reach::PathMetrics { metrics: self.metrics.clone(), pool: moves };
        p2p.observer = Some(Arc::new(observer));
        p2p.datagrams = config.network.datagrams && config.network.psk_file.is_none();
        p2p.links = links;
        if let Some(path) = &config.network.psk_file {
            let key =
                crate::membership::load_psk(path).map_err(|e| startup("load pre-shared key", e))?;
            tracing::info!(fingerprint = %key.fingerprint(), "private network: TCP only, with a pre-shared key");
            p2p.psk = Some(key);
        }
        let ip_records = record_filter(
            registry.clone(),
            config.discovery.records_per_publisher,
            Some(self.metrics.clone()),
        );
        let membership = registry.membership().cloned();
        let filter = move |key: &[u8], value: &[u8], stored: Option<&[u8]>| {
            if crate::revocations::is_revocation_key(key) {
                return crate::revocations::store_allows(membership.as_deref(), key, value, stored);
            }
            ip_records(key, value, stored)
        };
        p2p.record_filter = Some(Arc::new(filter));
        P2pNode::start(p2p).await.map_err(|e| startup("start libp2p", e.into()))
    }

    /// Kademlia discovery of signed IP records over the swarm's DHT.
    fn kad_discovery(&self, handle: &P2pHandle, registry: &Arc<LiveRegistry>) -> Arc<KadDiscovery> {
        let configured = self.configured_claims(&registry.current());
        let discovery = KadDiscovery::new(
            Arc::new(handle.clone()),
            registry.clone(),
            self.keypair.clone(),
            self.own_addresses(),
            configured,
            self.config().discovery.clone(),
        );
        let certificate =
            registry.membership().map(|m| m.own_certificate().to_vec()).unwrap_or_default();
        Arc::new(discovery.with_certificate(certificate).with_metrics(self.metrics.clone()))
    }

    /// The pool (given, or the default over the stream service) and its health checking.
    async fn start_pool(
        &self,
        parts: &mut Parts,
        given: &mut Given,
    ) -> Result<Arc<dyn StreamPoolService>, VpnError> {
        let config = self.config();
        let (pool, default_health): (Arc<dyn StreamPoolService>, _) = match given.pool.take() {
            Some(pool) => (pool, None),
            None => {
                let streams = parts.streams.clone().ok_or_else(|| {
                    let missing =
                        ServiceError::new(ServiceErrorKind::NotStarted, "libp2p", "open streams");
                    startup("open streams", VpnError::Service(missing))
                })?;
                let pool =
                    StreamPool::new(streams, self.metrics.clone(), config.stream_pool.clone());
                pool.start();
                parts.pool = Some(pool.clone());
                let min = config.stream_pool.min_streams_per_peer;
                let health = StreamHealth::new(pool.clone(), config.health_check.clone(), min);
                (Arc::new(pool), Some(Arc::new(health) as Arc<dyn StreamHealthService>))
            }
        };
        if let Some(health) = given.health.take().or(default_health) {
            parts.health = Some(health.clone());
            health.start_health_checker().await.map_err(|e| startup("start health checker", e))?;
            health.start_warmer().await.map_err(|e| startup("start stream warmer", e))?;
            *lock(&self.health) = Some(health);
        }
        Ok(pool)
    }

    /// Breakers, retry, the workers' context and the dispatcher.
    fn start_dispatcher(
        &self,
        given: &mut Given,
        discovery: Arc<dyn PeerDiscoveryService>,
        pool: Arc<dyn StreamPoolService>,
        datagrams: Option<Arc<dyn vpn_api::DatagramPaths>>,
    ) -> Dispatcher {
        let config = self.config();
        let breakers: Arc<dyn CircuitBreakerService> = match given.breakers.take() {
            Some(breakers) => breakers,
            None => Arc::new(PeerBreakers::new(config.circuit_breaker.clone())),
        };
        let retry: Arc<dyn RetryService> = match given.retry.take() {
            Some(retry) => retry,
            None => Arc::new(ExponentialBackoff::new(config.retry.clone())),
        };
        let ctx = WorkerContext::new(
            discovery,
            pool,
            breakers,
            retry,
            self.metrics.clone(),
            config.worker.clone(),
        );
        let ctx = match datagrams {
            Some(paths) => ctx.with_datagrams(paths),
            None => ctx,
        };
        let dispatcher = Dispatcher::new(Arc::new(ctx));
        dispatcher.start();
        dispatcher
    }

    /// The kernel TUN device, with the overlay addresses and the peers' routes.
    async fn create_tun(&self) -> Result<Arc<dyn TunDevice>, VpnError> {
        let tun_config = tun_config(&self.config()).map_err(|e| startup(CREATE_TUN, e))?;
        let tun = Tun::create(&tun_config).await.map_err(|e| startup(CREATE_TUN, e))?;
        Ok(Arc::new(tun.with_metrics(self.metrics.clone())))
    }

    /// The streams members open to us over the swarm.
    fn accept(
        &self,
        handle: &P2pHandle,
        registry: &Arc<LiveRegistry>,
        tasks: &Tasks,
    ) -> Result<mpsc::Receiver<Box<dyn VpnStream>>, VpnError> {
        let mut control = handle.stream_control();
        let members = registry.clone();
        let allow = Arc::new(move |peer: &PeerId| members.is_member(peer));
        let (inbound, accept) =
            accept_streams(&mut control, allow, self.metrics.clone(), ACCEPT_BACKLOG)
                .map_err(|e| startup("accept streams", e))?;
        tasks.spawn(accept);
        Ok(inbound)
    }

    /// What every inbound stream shares: checks, the way to the TUN, budgets, warnings.
    fn receiver(
        &self,
        discovery: Arc<dyn PeerDiscoveryService>,
        tun: Arc<dyn TunDevice>,
        members: Option<Arc<LiveRegistry>>,
    ) -> Arc<Receiver> {
        let config = self.config();
        Arc::new(Receiver {
            check: InboundCheck::new(discovery, self.own_addresses(), config.firewall.clone()),
            delivery: Delivery {
                offload: tun.offload(),
                tun,
                metrics: self.metrics.clone(),
                fault: self.fault.clone(),
            },
            budgets: PeerBudgets::new(config.limits.clone(), self.metrics.clone()),
            limits: InboundLimits {
                idle: config.limits.inbound_idle_timeout,
                write: config.limits.inbound_write_timeout,
            },
            warnings: WarnGate::per_peer(),
            members,
        })
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
        self.fault.clear();
        let mut parts = Parts::default();
        match self.start_parts(&mut parts).await {
            Ok(()) => {
                *slot = Some(parts);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "start-up failed; stopping what had started");
                lock(&self.health).take();
                parts.stop().await;
                Err(e)
            }
        }
    }

    /// Stops every part and returns once every task the node spawned has ended and the
    /// node holds its TUN device no more.
    async fn stop(&self) -> Result<(), VpnError> {
        let parts = self.parts.lock().await.take();
        lock(&self.health).take();
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
