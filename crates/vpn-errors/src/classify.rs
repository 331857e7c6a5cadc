use std::error::Error;
use std::io;

use crate::{NetworkError, NetworkErrorKind, ServiceError, ServiceErrorKind, VpnError};

/// The kind found at one link of an error's source chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Network(NetworkErrorKind),
    Service(ServiceErrorKind),
    Io(io::ErrorKind),
}

/// The kind of one error, ignoring its sources.
fn kind_of(err: &(dyn Error + 'static)) -> Option<Kind> {
    if let Some(e) = err.downcast_ref::<VpnError>() {
        return match e {
            VpnError::Network(n) => Some(Kind::Network(n.kind())),
            VpnError::Service(s) => Some(Kind::Service(s.kind())),
            VpnError::Io(io) => Some(Kind::Io(io.kind())),
            _ => None,
        };
    }
    if let Some(e) = err.downcast_ref::<NetworkError>() {
        return Some(Kind::Network(e.kind()));
    }
    if let Some(e) = err.downcast_ref::<ServiceError>() {
        return Some(Kind::Service(e.kind()));
    }
    err.downcast_ref::<io::Error>().map(|e| Kind::Io(e.kind()))
}

/// The kinds along the whole source chain, the error itself first.
fn kinds<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = Kind> + 'a {
    std::iter::successors(Some(err), |e: &&'a (dyn Error + 'static)| (*e).source())
        .filter_map(kind_of)
}

fn io_is_network(kind: io::ErrorKind) -> bool {
    !matches!(NetworkErrorKind::from_io_kind(kind), NetworkErrorKind::Io)
        && !matches!(kind, io::ErrorKind::InvalidData | io::ErrorKind::PermissionDenied)
}

/// Whether the error, or any error in its source chain, is a network failure: a
/// [`NetworkError`], or an I/O error of a connection kind (reset, refused, timed out,
/// unreachable, broken pipe, ...).
pub fn is_network_error(err: &(dyn Error + 'static)) -> bool {
    kinds(err).any(|k| match k {
        Kind::Network(_) => true,
        Kind::Io(io) => io_is_network(io),
        Kind::Service(_) => false,
    })
}

/// Whether trying again later may succeed: the first classified error in the chain
/// decides. Temporary are timeouts, resets, refusals, unreachable peers, an open circuit
/// breaker, a service that is busy, and I/O errors of those kinds or `Interrupted`.
pub fn is_temporary_error(err: &(dyn Error + 'static)) -> bool {
    kinds(err).next().is_some_and(|k| match k {
        Kind::Network(n) => n.is_temporary(),
        Kind::Service(s) => s == ServiceErrorKind::Unavailable,
        Kind::Io(io::ErrorKind::Interrupted) => true,
        Kind::Io(io) => NetworkErrorKind::from_io_kind(io).is_temporary(),
    })
}

/// Whether the error, or any error in its source chain, means the connection or stream
/// is gone (reset, aborted, broken pipe, closed).
pub fn is_connection_reset_error(err: &(dyn Error + 'static)) -> bool {
    kinds(err).any(|k| match k {
        Kind::Network(n) => n.is_connection_reset(),
        Kind::Io(io) => matches!(
            io,
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ),
        Kind::Service(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigError, PacketError};

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::from(kind)
    }

    #[test]
    fn io_kinds_classified() {
        use io::ErrorKind as K;
        for kind in [K::ConnectionReset, K::ConnectionAborted, K::BrokenPipe] {
            let e = io(kind);
            assert!(is_network_error(&e), "{kind:?}");
            assert!(is_temporary_error(&e), "{kind:?}");
            assert!(is_connection_reset_error(&e), "{kind:?}");
        }
        for kind in [K::TimedOut, K::ConnectionRefused, K::HostUnreachable] {
            let e = io(kind);
            assert!(is_network_error(&e), "{kind:?}");
            assert!(is_temporary_error(&e), "{kind:?}");
            assert!(!is_connection_reset_error(&e), "{kind:?}");
        }
        for kind in [K::NotFound, K::InvalidData, K::PermissionDenied, K::Other] {
            let e = io(kind);
            assert!(!is_network_error(&e), "{kind:?}");
            assert!(!is_temporary_error(&e), "{kind:?}");
            assert!(!is_connection_reset_error(&e), "{kind:?}");
        }
        assert!(is_temporary_error(&io(K::Interrupted)));
    }

    #[test]
    fn network_kinds_classified() {
        let reset = VpnError::network(NetworkErrorKind::ConnectionReset, "write");
        assert!(is_network_error(&reset) && is_temporary_error(&reset));
        assert!(is_connection_reset_error(&reset));
        let protocol = VpnError::network(NetworkErrorKind::Protocol, "read frame");
        assert!(is_network_error(&protocol));
        assert!(!is_temporary_error(&protocol));
        assert!(!is_connection_reset_error(&protocol));
        let open = NetworkError::new(NetworkErrorKind::CircuitOpen, "send");
        assert!(is_temporary_error(&open));
        let denied = NetworkError::new(NetworkErrorKind::PeerNotAllowed, "accept");
        assert!(!is_temporary_error(&denied));
    }

    #[test]
    fn message_text_does_not_matter() {
        let e = io::Error::other("connection reset by peer, timed out, broken pipe");
        assert!(!is_network_error(&e));
        assert!(!is_temporary_error(&e));
        assert!(!is_connection_reset_error(&e));
    }

    #[test]
    fn kinds_found_through_the_source_chain() {
        let inner = NetworkError::from_io("write frames", io(io::ErrorKind::BrokenPipe));
        let outer =
            ServiceError::new(ServiceErrorKind::Internal, "worker", "flush").with_source(inner);
        assert!(is_network_error(&outer));
        assert!(is_connection_reset_error(&outer));
        // The outer kind decides whether to retry.
        assert!(!is_temporary_error(&outer));
        let busy = ServiceError::new(ServiceErrorKind::Unavailable, "pool", "get");
        assert!(is_temporary_error(&busy));
    }

    #[test]
    fn other_variants_are_not_network_errors() {
        let packet = VpnError::from(PacketError::Empty);
        let config = VpnError::from(ConfigError::new("a", 1, "b"));
        for e in [packet, config] {
            assert!(!is_network_error(&e));
            assert!(!is_temporary_error(&e));
        }
        let wrapped =
            VpnError::Other { context: "x", source: Box::new(io(io::ErrorKind::TimedOut)) };
        assert!(is_network_error(&wrapped));
    }
}
