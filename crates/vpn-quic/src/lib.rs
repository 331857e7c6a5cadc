//! A libp2p QUIC transport over quinn, with RFC 9221 datagrams on.
//!
//! - [`QuicTransport`]: libp2p's `Transport` over quinn endpoints (one UDP socket per
//!   listen address, dials that reuse it, hole punching for DCUtR). The peer ID is proven
//!   in the TLS handshake with libp2p's certificate scheme, so the connections interoperate
//!   with libp2p's own QUIC transport.
//! - [`QuicMuxer`]: each connection as libp2p's stream multiplexer.
//! - [`Links`]: every connection's datagram side, by peer ID; [`DatagramLink`] sends and
//!   receives the datagrams of `vpn_wire::Datagram` and probes whether they get through.
//!
//! ```
//! use libp2p_core::Transport;
//! use vpn_quic::{Links, QuicConfig, QuicTransport};
//!
//! let key = libp2p_identity::Keypair::generate_ed25519();
//! let links = Links::new();
//! let transport = QuicTransport::new(&key, &QuicConfig::default(), links.clone())
//!     .expect("a valid configuration");
//! let _boxed = transport.map(|(peer, muxer), _| (peer, muxer)).boxed();
//! assert!(links.best(&key.public().to_peer_id()).is_none());
//! ```

mod addr;
mod config;
mod error;
mod links;
mod muxer;
mod tls;
mod transport;

pub use addr::{multiaddr_of, socket_addr_of};
pub use config::{INITIAL_MTU, QuicConfig};
pub use error::QuicError;
pub use links::{DatagramLink, Incoming, Links, PATH_TIMEOUT, PROBE_INTERVAL, SendError};
pub use muxer::{QuicMuxer, QuicStream};
pub use transport::{QuicTransport, RETRY_ABOVE, Upgrade};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
