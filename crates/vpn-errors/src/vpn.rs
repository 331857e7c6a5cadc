use std::io;

use crate::{
    BoxError, ConfigError, NetworkError, NetworkErrorKind, PacketError, ServiceError,
    ServiceErrorKind,
};

/// Any error of vpn-node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VpnError {
    /// A network failure.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A service life-cycle failure.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A packet that could not be parsed.
    #[error("malformed packet: {0}")]
    Packet(#[from] PacketError),
    /// A configuration value that breaks a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A local I/O failure (files, devices).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// Anything else, with its cause.
    #[error("{context}: {source}")]
    Other {
        /// What was being done.
        context: &'static str,
        /// The cause.
        source: BoxError,
    },
}

impl VpnError {
    /// The network error kind, if this is a network error.
    pub fn network_kind(&self) -> Option<NetworkErrorKind> {
        match self {
            VpnError::Network(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The service error kind, if this is a service error.
    pub fn service_kind(&self) -> Option<ServiceErrorKind> {
        match self {
            VpnError::Service(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// Shorthand for a network error of `kind` during `operation`.
    pub fn network(kind: NetworkErrorKind, operation: &'static str) -> Self {
        VpnError::Network(NetworkError::new(kind, operation))
    }

    /// Whether trying again later may succeed (see [`crate::is_temporary_error`]).
    pub fn is_temporary(&self) -> bool {
        crate::is_temporary_error(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small() {
        // Results carrying these are returned on the packet path.
        assert!(std::mem::size_of::<NetworkError>() <= 32);
        assert!(std::mem::size_of::<VpnError>() <= 80);
    }
}
