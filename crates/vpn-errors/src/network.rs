use std::fmt;
use std::io;
use std::net::IpAddr;

use libp2p_identity::PeerId;

use crate::BoxError;

/// What went wrong on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NetworkErrorKind {
    /// No route or connection to the peer could be made.
    Unreachable,
    /// The operation did not finish in time.
    Timeout,
    /// The peer or the transport reset the connection or stream.
    ConnectionReset,
    /// The peer refused the connection or the protocol.
    ConnectionRefused,
    /// The stream or connection was closed.
    StreamClosed,
    /// The peer broke the wire protocol.
    Protocol,
    /// The peer is not allowed in this network.
    PeerNotAllowed,
    /// No peer owns the destination address.
    NoPeer,
    /// The destination's circuit breaker is open.
    CircuitOpen,
    /// Any other I/O failure.
    Io,
}

impl NetworkErrorKind {
    /// The kind that best describes an I/O error kind.
    pub fn from_io_kind(kind: io::ErrorKind) -> Self {
        use io::ErrorKind as K;
        match kind {
            K::TimedOut | K::WouldBlock => NetworkErrorKind::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                NetworkErrorKind::ConnectionReset
            }
            K::ConnectionRefused => NetworkErrorKind::ConnectionRefused,
            K::NotConnected | K::UnexpectedEof => NetworkErrorKind::StreamClosed,
            K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown | K::AddrNotAvailable => {
                NetworkErrorKind::Unreachable
            }
            K::InvalidData => NetworkErrorKind::Protocol,
            K::PermissionDenied => NetworkErrorKind::PeerNotAllowed,
            _ => NetworkErrorKind::Io,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            NetworkErrorKind::Unreachable
                | NetworkErrorKind::Timeout
                | NetworkErrorKind::ConnectionReset
                | NetworkErrorKind::ConnectionRefused
                | NetworkErrorKind::StreamClosed
                | NetworkErrorKind::NoPeer
                | NetworkErrorKind::CircuitOpen
        )
    }

    /// Whether the connection or stream is gone.
    pub fn is_connection_reset(self) -> bool {
        matches!(self, NetworkErrorKind::ConnectionReset | NetworkErrorKind::StreamClosed)
    }

    fn as_str(self) -> &'static str {
        match self {
            NetworkErrorKind::Unreachable => "peer unreachable",
            NetworkErrorKind::Timeout => "timed out",
            NetworkErrorKind::ConnectionReset => "connection reset",
            NetworkErrorKind::ConnectionRefused => "refused",
            NetworkErrorKind::StreamClosed => "stream closed",
            NetworkErrorKind::Protocol => "protocol violation",
            NetworkErrorKind::PeerNotAllowed => "peer not allowed",
            NetworkErrorKind::NoPeer => "no peer owns the address",
            NetworkErrorKind::CircuitOpen => "circuit breaker open",
            NetworkErrorKind::Io => "I/O error",
        }
    }
}

impl fmt::Display for NetworkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure on the network, with the operation, peer and address it concerns.
///
/// Small (the context is boxed, and only allocated when there is some), so results that
/// carry it stay cheap to move.
#[derive(Debug)]
pub struct NetworkError {
    kind: NetworkErrorKind,
    operation: &'static str,
    context: Option<Box<Context>>,
}

#[derive(Debug, Default)]
struct Context {
    peer: Option<PeerId>,
    addr: Option<IpAddr>,
    source: Option<BoxError>,
}

impl NetworkError {
    /// A new error of `kind` during `operation` (e.g. `"open stream"`).
    pub fn new(kind: NetworkErrorKind, operation: &'static str) -> Self {
        Self { kind, operation, context: None }
    }

    /// An error from an I/O failure, its kind taken from the I/O error's kind.
    pub fn from_io(operation: &'static str, err: io::Error) -> Self {
        Self::new(NetworkErrorKind::from_io_kind(err.kind()), operation).with_source(err)
    }

    /// Names the peer concerned.
    #[must_use]
    pub fn with_peer(mut self, peer: PeerId) -> Self {
        self.context_mut().peer = Some(peer);
        self
    }

    /// Names the overlay address concerned.
    #[must_use]
    pub fn with_addr(mut self, addr: IpAddr) -> Self {
        self.context_mut().addr = Some(addr);
        self
    }

    /// Keeps the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.context_mut().source = Some(source.into());
        self
    }

    fn context_mut(&mut self) -> &mut Context {
        self.context.get_or_insert_with(Box::default)
    }

    /// What went wrong.
    pub fn kind(&self) -> NetworkErrorKind {
        self.kind
    }

    /// The operation that failed.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The peer concerned, if known.
    pub fn peer(&self) -> Option<&PeerId> {
        self.context.as_ref()?.peer.as_ref()
    }

    /// The overlay address concerned, if known.
    pub fn addr(&self) -> Option<IpAddr> {
        self.context.as_ref()?.addr
    }
}

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.operation, self.kind)?;
        if let Some(peer) = self.peer() {
            write!(f, " (peer {peer})")?;
        }
        if let Some(addr) = self.addr() {
            write!(f, " (address {addr})")?;
        }
        if let Some(source) = self.context.as_ref().and_then(|c| c.source.as_ref()) {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NetworkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let source = self.context.as_ref()?.source.as_deref()?;
        Some(source as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::net::Ipv4Addr;

    #[test]
    fn display_names_operation_peer_and_address() {
        let peer = PeerId::random();
        let addr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 7));
        let err = NetworkError::new(NetworkErrorKind::Timeout, "open stream")
            .with_peer(peer)
            .with_addr(addr);
        let text = err.to_string();
        assert!(text.starts_with("open stream: timed out"), "{text}");
        assert!(text.contains(&peer.to_string()), "{text}");
        assert!(text.contains("100.64.0.7"), "{text}");
        assert_eq!(err.peer(), Some(&peer));
        assert_eq!(err.addr(), Some(addr));
    }

    #[test]
    fn from_io_keeps_kind_and_source() {
        let err = NetworkError::from_io("read frame", io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(err.kind(), NetworkErrorKind::ConnectionReset);
        let source = err.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::BrokenPipe));
    }
}
