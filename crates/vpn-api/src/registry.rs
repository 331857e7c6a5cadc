use crate::{IpNet, PeerId};

/// Decides which peer may hold which overlay addresses. Every DHT record and every inbound
/// packet's source is checked against it.
pub trait IpRegistry: Send + Sync {
    /// Whether `peer` may hold all of `net` (a single address is a /32 or /128). Never
    /// waits; a registry that learns from the network answers from what it knows now.
    fn may_hold(&self, peer: &PeerId, net: &IpNet) -> bool;

    /// A membership certificate that came with a record of `peer`. A registry that takes
    /// certificates checks it and, when it is valid, lets `peer` hold what it names from
    /// then on; one that takes none (the default) ignores it.
    fn present(&self, peer: &PeerId, certificate: &[u8]) {
        let _ = (peer, certificate);
    }
}
