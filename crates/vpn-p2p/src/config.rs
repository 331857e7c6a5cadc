use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use vpn_types::PeerRefusal;

/// Decides whether a record another peer asks us to store may be stored: called with the
/// key, the new value, and the value stored now under that key, if any.
pub type RecordFilter = Arc<dyn Fn(&[u8], &[u8], Option<&[u8]>) -> bool + Send + Sync>;

/// Who is a member: the membership exchange asks it about every peer that connects.
pub trait Admission: Send + Sync {
    /// The certificate this node presents (empty: none; a configured peer needs none).
    fn certificate(&self) -> Vec<u8>;
    /// Whether `peer`, presenting `certificate` (empty: none), is a member; why not if not.
    fn admit(&self, peer: &PeerId, certificate: &[u8]) -> Result<(), String>;
    /// A peer was refused or did not prove itself in time, and its connections closed.
    fn refused(&self, peer: &PeerId, why: PeerRefusal);
}

/// Told how the node's peers are connected, for the metrics.
pub trait PathObserver: Send + Sync {
    /// Peers connected now: over a direct connection, and only through a relay.
    fn paths(&self, direct: usize, relayed: usize);
    /// A hole punch to `peer` ended: a direct connection now, or not.
    fn hole_punch(&self, peer: &PeerId, succeeded: bool);
    /// `peer`, reached through a relay so far, now has a direct connection too: new
    /// streams go over it, and flows on streams through the relay should move.
    fn went_direct(&self, peer: &PeerId);
    /// An address was not dialed (see [`crate::DialPolicy`]).
    fn dial_refused(&self, why: vpn_types::DialRefusal);
}

/// Reaching peers behind NAT: relays, hole punching, reachability checks.
#[derive(Debug, Clone)]
pub struct ReachConfig {
    /// Serve members as a relay: always (`Some(true)`), never (`Some(false)`), or while
    /// this node is publicly reachable (`None`).
    pub serve: Option<bool>,
    /// On how many member relays to reserve a slot while this node is not publicly
    /// reachable (0: none).
    pub reservations: usize,
    /// As a relay: most reservations held for others.
    pub max_reservations: usize,
    /// As a relay: most circuits at once, and most to or from one peer.
    pub max_circuits: usize,
    /// As a relay: most circuits at once to or from one peer.
    pub max_circuits_per_peer: usize,
    /// As a relay: a circuit is cut after this long.
    pub circuit_duration: Duration,
    /// As a relay: a circuit is cut after carrying this many bytes each way (0: never).
    pub circuit_bytes: u64,
    /// Punch holes through NATs (DCUtR) to replace a relayed connection by a direct one.
    pub hole_punch: bool,
    /// Check which of our addresses others can dial (AutoNAT v2), and test theirs.
    pub autonat: bool,
}

impl Default for ReachConfig {
    fn default() -> Self {
        Self {
            serve: None,
            reservations: 2,
            max_reservations: 128,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            circuit_duration: Duration::from_secs(24 * 3600),
            circuit_bytes: 0,
            hole_punch: true,
            autonat: true,
        }
    }
}

/// What the swarm needs to start.
#[derive(Clone)]
pub struct P2pConfig {
    /// The node's identity.
    pub keypair: Keypair,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, each a multiaddr ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers known in advance and where to reach them.
    pub known_peers: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Discover peers on the local link.
    pub mdns: bool,
    /// Most connections in all.
    pub max_connections: u32,
    /// Most connections to one peer.
    pub max_connections_per_peer: u32,
    /// A connection with no stream for this long is closed.
    pub idle_connection_timeout: Duration,
    /// A Kademlia query may take this long.
    pub query_timeout: Duration,
    /// Checks records other peers store with us; none stores everything.
    pub record_filter: Option<RecordFilter>,
    /// The overlay: our tunnel's networks and the routes into it. An address in it is
    /// never an underlay address (dialing it would route through the tunnel itself), so
    /// peers' addresses in it are not used, and our own coming and going is not a move.
    pub overlay: Vec<vpn_api::IpNet>,
    /// The transport dialed first when a peer can be reached over both (the other one
    /// starts [`crate::HEAD_START`] later).
    pub transport: vpn_config::Transport,
    /// A dial (connection and handshake) may take this long.
    pub dial_timeout: Duration,
    /// How often every connection is pinged.
    pub ping_interval: Duration,
    /// A ping unanswered for this long closes its connection: a connection that carries
    /// nothing any more (a frozen peer, a lost path) is replaced by a fresh dial.
    pub ping_timeout: Duration,
    /// Who is a member; none takes every peer that proves its peer ID.
    pub admission: Option<Arc<dyn Admission>>,
    /// A connection whose peer has not proven itself a member after this long is closed.
    pub membership_timeout: Duration,
    /// Most connections at once whose peers have not proven themselves yet (the rest of
    /// `max_connections` is for members), and most of them from one IP address.
    pub max_unproven: usize,
    /// Most unproven connections from one IP address.
    pub max_unproven_per_ip: usize,
    /// Most incoming connections still in their handshake (a quarter of them are kept for
    /// addresses members are known at).
    pub max_pending_incoming: u32,
    /// Most incoming connections in their handshake from one source (an IPv4 address, an
    /// IPv6 /64).
    pub max_pending_per_source: usize,
    /// A pre-shared key: TCP only, and silent to anyone without the key.
    pub psk: Option<libp2p::pnet::PreSharedKey>,
    /// Relays, hole punching and reachability.
    pub reach: ReachConfig,
    /// Addresses known to reach us from outside, announced as confirmed from the start.
    pub external: Vec<Multiaddr>,
    /// Told of paths and hole punches.
    pub observer: Option<Arc<dyn PathObserver>>,
    /// Where the QUIC transport keeps every connection's datagram link; a member's links
    /// open once it is proven.
    pub links: vpn_quic::Links,
    /// Give every member a QUIC connection beside the others, for datagrams.
    pub datagrams: bool,
}

impl P2pConfig {
    /// A configuration listening on `listen`, with no peers known and mDNS off.
    pub fn new(keypair: Keypair, listen: Vec<Multiaddr>) -> Self {
        Self {
            keypair,
            listen,
            bootstrap: Vec::new(),
            known_peers: Vec::new(),
            mdns: false,
            max_connections: 512,
            max_connections_per_peer: 2,
            idle_connection_timeout: Duration::from_secs(120),
            query_timeout: Duration::from_secs(5),
            record_filter: None,
            overlay: Vec::new(),
            transport: vpn_config::Transport::Tcp,
            dial_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            admission: None,
            membership_timeout: Duration::from_secs(10),
            max_unproven: 128,
            max_unproven_per_ip: 8,
            max_pending_incoming: 64,
            max_pending_per_source: 8,
            psk: None,
            reach: ReachConfig::default(),
            external: Vec::new(),
            observer: None,
            links: vpn_quic::Links::new(),
            datagrams: false,
        }
    }
}
