use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, connection_limits, identify, kad, mdns, ping};

use crate::P2pConfig;

/// Kademlia protocol of vpn-node networks, apart from the public IPFS DHT.
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/vpn-node/kad/1.0.0");
/// Identify protocol version of vpn-node.
const IDENTIFY_PROTOCOL: &str = "/vpn-node/id/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
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
            ));
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
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
            mdns: Toggle::from(mdns),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
