use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, connection_limits, identify, kad, mdns, ping, request_response};

use crate::P2pConfig;
use crate::exchange::{HelloCodec, MEMBERSHIP_PROTOCOL};
use crate::gate::{Gate, GateLimits};

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
    pub(crate) stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub(crate) fn new(key: &Keypair, config: &P2pConfig) -> std::io::Result<Self> {
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
        let members = Members {
            kad,
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_owned(),
                key.public(),
            )),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(config.ping_interval)
                    .with_timeout(config.ping_timeout),
            ),
            stream: libp2p_stream::Behaviour::new(),
        };
        let exchange = request_response::Config::default()
            .with_request_timeout(config.membership_timeout)
            .with_max_concurrent_streams(4);
        let limits_unproven = GateLimits {
            unproven: config.max_unproven,
            unproven_per_ip: config.max_unproven_per_ip,
        };
        let mut limits = connection_limits::Behaviour::new(limits);
        // Configured members always find room.
        let configured = config.known_peers.iter().map(|(peer, _)| *peer);
        let bootstrap = config.bootstrap.iter().filter_map(crate::node::peer_of);
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
            gate: Gate::new(members, limits_unproven, config.admission.clone()),
        })
    }
}
