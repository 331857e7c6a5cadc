use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, identify, kad, mdns, ping, relay,
    request_response,
};

use std::sync::Arc;

use crate::dial_policy::DialPolicy;
use crate::exchange::{HelloCodec, MEMBERSHIP_PROTOCOL};
use crate::gate::{Gate, GateLimits};
use crate::prefer::PreferDirect;
use crate::{P2pConfig, ReachConfig};

/// Kademlia protocol of vpn-node networks, apart from the public IPFS DHT.
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/vpn-node/kad/2.0.0");
/// Identify protocol version of vpn-node.
const IDENTIFY_PROTOCOL: &str = "/vpn-node/id/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // Behaviours that may deny a connection come first: one asked after a behaviour that
    // took the connection would leave that one holding a connection that never was.
    pub(crate) limits: connection_limits::Behaviour,
    /// Everything but the membership exchange, for members only; it also bounds the
    /// connections not proven yet.
    pub(crate) gate: Gate<Members>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// The one protocol a connection carries before its peer is proven a member.
    pub(crate) membership: request_response::Behaviour<HelloCodec>,
}

/// The protocols behind the membership gate.
#[derive(NetworkBehaviour)]
pub(crate) struct Members {
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    /// VPN streams, opened on a direct connection whenever the peer has one.
    pub(crate) stream: PreferDirect<libp2p_stream::Behaviour>,
    /// Reservations on member relays, and connections through them.
    pub(crate) relay_client: relay::client::Behaviour,
    /// Relaying for members (none when `relay.serve` is off).
    pub(crate) relay: Toggle<relay::Behaviour>,
    /// Hole punching on relayed connections.
    pub(crate) dcutr: Toggle<crate::punch::UdpFirst<dcutr::Behaviour>>,
    /// Which of our addresses others can dial.
    pub(crate) autonat: Toggle<autonat::v2::client::Behaviour>,
    /// Testing others' addresses for them.
    pub(crate) autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Connections kept while their peer's packets go as datagrams.
    pub(crate) in_use: crate::in_use::DatagramsInUse,
}

/// The relay's limits: members' tunnels run for days and carry gigabytes, so the circuit
/// limits are the configured ones, not libp2p's (2 minutes, 128 KiB).
fn relay_config(reach: &ReachConfig) -> relay::Config {
    let mut config = relay::Config {
        max_reservations: reach.max_reservations,
        max_circuits: reach.max_circuits,
        max_circuits_per_peer: reach.max_circuits_per_peer,
        max_circuit_duration: reach.circuit_duration,
        max_circuit_bytes: reach.circuit_bytes,
        // libp2p's per-peer and per-IP rates are for public relays; ours serve members
        // only (the gate), bounded by the limits above, and many may share one NAT's IP.
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    };
    // A reservation for each of a member's connections to us, at most.
    config.max_reservations_per_peer = config.max_reservations_per_peer.max(4);
    config
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        config: &P2pConfig,
        relay_client: relay::client::Behaviour,
        policy: Arc<DialPolicy>,
    ) -> std::io::Result<Self> {
        let peer = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(config.query_timeout);
        // Every record another peer stores with us is checked first.
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        // Kademlia bootstraps by itself when peers join the routing table; the periodic
        // refresh is the event loop's, which skips it while the table is empty (a lone node
        // has no one to ask, and saying so every few minutes is noise).
        kad_config.set_periodic_bootstrap_interval(None);
        // Members only: a peer enters the routing table once proven, never by itself.
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
        // Room for the largest value stored (a revocation list of up to 60 KiB).
        kad_config.set_max_packet_size(80 * 1024);
        let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad_config);
        // Private networks never see an external address confirmed: serve the DHT anyway.
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
        } else {
            None
        };
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            // Room for a peer's new connections while its dead ones are being replaced;
            // the event loop holds each peer to `max_connections_per_peer` after that.
            .with_max_established_per_peer(Some(
                config.max_connections_per_peer.saturating_add(crate::node::REPLACEMENT_ROOM),
            ))
            .with_max_pending_incoming(Some(config.max_pending_incoming));
        let reach = &config.reach;
        let members = Members {
            kad,
            // Members hear of our new addresses at once: one through a relay that just
            // took our reservation, one other members just confirmed dialable.
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(config.ping_interval)
                    .with_timeout(config.ping_timeout),
            ),
            stream: PreferDirect::new(libp2p_stream::Behaviour::new()),
            relay_client,
            relay: Toggle::from((reach.serve != Some(false)).then(|| {
                let mut relay = relay::Behaviour::new(peer, relay_config(reach));
                // Whether we serve is ours to decide, not the relay's: it would turn itself
                // on for any confirmed address, a relayed one included.
                let on = reach.serve == Some(true);
                relay.set_status(Some(if on {
                    relay::Status::Enable
                } else {
                    relay::Status::Disable
                }));
                relay
            })),
            dcutr: Toggle::from(reach.hole_punch.then(|| {
                crate::punch::UdpFirst::new(dcutr::Behaviour::new(peer), config.datagrams)
            })),
            autonat: Toggle::from(reach.autonat.then(autonat::v2::client::Behaviour::default)),
            in_use: crate::in_use::DatagramsInUse::new(
                config.links.clone(),
                config.idle_connection_timeout,
            ),
            autonat_server: Toggle::from(
                reach.autonat.then(autonat::v2::server::Behaviour::default),
            ),
        };
        let exchange = request_response::Config::default()
            .with_request_timeout(config.membership_timeout)
            .with_max_concurrent_streams(4);
        let pending = config.max_pending_incoming as usize;
        let limits_unproven = GateLimits {
            unproven: config.max_unproven,
            unproven_per_ip: config.max_unproven_per_ip,
            pending_per_source: config.max_pending_per_source,
            // A quarter of the handshakes are kept for members' addresses.
            pending_strangers: pending - pending / 4,
        };
        let mut limits = connection_limits::Behaviour::new(limits);
        // Configured members always find room.
        let configured = config.known_peers.iter().map(|(peer, _)| *peer);
        let bootstrap = config.bootstrap.iter().filter_map(crate::dial_policy::peer_of);
        for peer in configured.chain(bootstrap) {
            limits.bypass_peer_id(&peer);
        }
        Ok(Self {
            limits,
            mdns: Toggle::from(mdns),
            membership: request_response::Behaviour::with_codec(
                HelloCodec,
                [(MEMBERSHIP_PROTOCOL, request_response::ProtocolSupport::Full)],
                exchange,
            ),
            gate: Gate::new(members, limits_unproven, config.admission.clone(), policy),
        })
    }
}
