//! The libp2p side of a vpn-node.
//!
//! [`P2pNode::start`] builds the swarm — TCP + Noise + yamux and QUIC v1 (one preferred for
//! dialing, see [`HeadStart`]), Kademlia in
//! server mode (on its own protocol, `/vpn-node/kad/1.0.0`), mDNS (switchable), identify
//! (whose listen addresses feed Kademlia), ping, connection limits and `libp2p-stream` —
//! listens, dials the bootstrap peers, and hands the swarm to one task that owns it.
//! Everything else talks to that task through the cloneable [`P2pHandle`]: dialing, DHT
//! records, addresses; the stream `Control` is cloned straight into the data path.
//!
//! VPN streams ride `libp2p-stream`: [`Libp2pStreamService`] is the [`vpn_api::StreamService`]
//! that opens them, [`accept_streams`] the always-polled accept loop that refuses peers not
//! allowed in.
//!
//! Records stored in our DHT node by other peers pass through a [`RecordFilter`] first, so
//! the discovery layer decides what may be stored (docs/protocol.md, section 7.4: checked on every PUT).

mod behaviour;
mod config;
mod datagram;
mod dial_policy;
mod error;
mod exchange;
mod gate;
mod handshakes;
mod in_use;
mod listeners;
mod node;
mod prefer;
mod punch;
mod reach;
mod stream;
mod transport;
mod vouch;
mod wrap;

pub use config::{Admission, P2pConfig, PathObserver, ReachConfig, RecordFilter};
pub use dial_policy::{DialGuard, DialPolicy, MAX_DIALS, MAX_DIALS_PER_PEER};
pub use error::P2pError;
pub use exchange::MEMBERSHIP_PROTOCOL;
pub use node::{DhtCounts, P2pHandle, P2pNode};
pub use reach::{PeerPath, Reachability};
pub use stream::{Libp2pStream, Libp2pStreamService, PACKET_PROTOCOL, PeerFilter, accept_streams};
pub use transport::{HEAD_START, HeadStart, kind_of};
pub use vpn_types::{DialRefusal, PeerRefusal};

pub use libp2p::identity::Keypair;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
pub use libp2p_stream::Control;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
