//! The transport's errors.

use std::net::SocketAddr;

use libp2p_identity::PeerId;

/// What went wrong in the QUIC transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// A socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A dial could not start.
    #[error("cannot dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Connection(quinn::ConnectionError),
    /// The handshake took too long.
    #[error("the handshake timed out")]
    HandshakeTimeout,
    /// The peer proved no libp2p identity.
    #[error("the peer presented no valid libp2p certificate")]
    NoCertificate,
    /// The peer proved another identity than the one dialed: the peer ID dialed, and the
    /// one the handshake proved.
    #[error("dialed {}, reached {}", .0.0, .0.1)]
    WrongPeer(Box<(PeerId, PeerId)>),
    /// The TLS configuration could not be made.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A setting is out of range.
    #[error("setting out of range: {0}")]
    Config(&'static str),
    /// A hole punch needs a listener of the peer's address family.
    #[error("no listener to punch a hole from")]
    NoListener,
    /// A hole punch to this address runs already.
    #[error("a hole punch to {0} runs already")]
    PunchInProgress(SocketAddr),
}
