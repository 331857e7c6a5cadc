use vpn_errors::{NetworkError, NetworkErrorKind, ServiceError, ServiceErrorKind, VpnError};

/// What went wrong in the swarm.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    /// The swarm could not be built or could not listen.
    #[error("libp2p start-up: {0}")]
    Startup(String),
    /// Dialing a peer failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// A DHT query failed or found nothing.
    #[error("DHT: {0}")]
    Dht(String),
    /// The swarm task has stopped.
    #[error("the libp2p swarm has stopped")]
    Stopped,
}

impl From<P2pError> for VpnError {
    fn from(err: P2pError) -> Self {
        match err {
            P2pError::Startup(_) => VpnError::Service(
                ServiceError::new(ServiceErrorKind::Startup, "libp2p", "start swarm")
                    .with_source(err),
            ),
            P2pError::Stopped => VpnError::Service(ServiceError::new(
                ServiceErrorKind::Stopped,
                "libp2p",
                "use swarm",
            )),
            P2pError::Dial(_) => VpnError::Network(
                NetworkError::new(NetworkErrorKind::Unreachable, "dial peer").with_source(err),
            ),
            P2pError::Dht(_) => VpnError::Network(
                NetworkError::new(NetworkErrorKind::Unreachable, "DHT query").with_source(err),
            ),
        }
    }
}
