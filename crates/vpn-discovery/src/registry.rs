use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use vpn_api::IpRegistry;
use vpn_api::{IpNet, PeerId};
use vpn_config::VpnConfig;

/// Who may hold which overlay addresses, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct StaticRegistry {
    /// Configured claims: each peer (ourselves included) with what it holds.
    claims: Vec<(PeerId, IpNet)>,
    /// Peers that may claim free overlay addresses through the DHT.
    allowed: HashSet<PeerId>,
    /// The overlay ranges free addresses come from.
    overlay: Vec<IpNet>,
}

impl StaticRegistry {
    /// A registry with explicit claims, allowed peers and overlay ranges.
    pub fn new(
        claims: Vec<(PeerId, IpNet)>,
        allowed: impl IntoIterator<Item = PeerId>,
        overlay: Vec<IpNet>,
    ) -> Self {
        Self { claims, allowed: allowed.into_iter().collect(), overlay }
    }

    /// The registry a configuration describes: `local` holds the node's addresses and
    /// routes, each `[[peers]]` entry its own, and `network.allowed_peers` may claim the
    /// rest of the overlay ranges of `node.address` and `node.address6`.
    pub fn from_config(local: PeerId, config: &VpnConfig) -> Self {
        let mut claims = Vec::new();
        let mut overlay = Vec::new();
        if let Some(v4) = config.node.address {
            claims.push((local, IpNet::from(std::net::IpAddr::V4(v4.addr()))));
            overlay.push(IpNet::V4(v4.trunc()));
        }
        if let Some(v6) = config.node.address6 {
            claims.push((local, IpNet::from(std::net::IpAddr::V6(v6.addr()))));
            overlay.push(IpNet::V6(v6.trunc()));
        }
        claims.extend(config.node.routes.iter().map(|r| (local, *r)));
        for peer in &config.peers {
            claims.extend(peer.addresses.iter().chain(&peer.routes).map(|n| (peer.peer_id, *n)));
        }
        Self::new(claims, config.network.allowed_peers.iter().copied(), overlay)
    }

    /// Whether `peer` may join the VPN at all (configured, or allowed).
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.allowed.contains(peer) || self.claims.iter().any(|(p, _)| p == peer)
    }

    /// The configured claims: `(peer, address or prefix)`.
    pub fn claims(&self) -> &[(PeerId, IpNet)] {
        &self.claims
    }
}

impl IpRegistry for StaticRegistry {
    fn may_hold(&self, peer: &PeerId, net: &IpNet) -> bool {
        if self.claims.iter().any(|(p, held)| p == peer && held.contains(net)) {
            return true;
        }
        // Anything overlapping a configured claim belongs to that claim's owner only.
        let taken = self.claims.iter().any(|(_, held)| held.contains(net) || net.contains(held));
        !taken
            && self.allowed.contains(peer)
            && self.overlay.iter().any(|range| range.contains(net))
    }
}

/// A [`StaticRegistry`] that can be replaced while the node runs (`vpn-node reload`): every
/// holder (the stream acceptor, the record filter, discovery) asks the new one from its next
/// question on.
#[derive(Debug, Default)]
pub struct LiveRegistry(RwLock<Arc<StaticRegistry>>);

impl LiveRegistry {
    /// Starts with `registry`.
    pub fn new(registry: StaticRegistry) -> Self {
        Self(RwLock::new(Arc::new(registry)))
    }

    /// The registry in force now.
    pub fn current(&self) -> Arc<StaticRegistry> {
        self.read().clone()
    }

    /// The registry in force, borrowed (the receiver asks per packet: no reference count
    /// is touched).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<StaticRegistry>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `registry` in force.
    pub fn replace(&self, registry: StaticRegistry) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(registry);
    }

    /// Whether `peer` may join the VPN at all, by the registry in force.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.read().is_member(peer)
    }
}

impl IpRegistry for LiveRegistry {
    fn may_hold(&self, peer: &PeerId, net: &IpNet) -> bool {
        self.read().may_hold(peer, net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn configured_and_allowed_peers() {
        let (me, b, c, stranger) =
            (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        let registry = StaticRegistry::new(
            vec![(me, net("100.64.0.1/32")), (b, net("100.64.0.2/32")), (b, net("10.1.0.0/24"))],
            [c],
            vec![net("100.64.0.0/10")],
        );
        assert!(registry.may_hold(&b, &net("100.64.0.2/32")));
        assert!(registry.may_hold(&b, &net("10.1.0.128/25")));
        assert!(
            !registry.may_hold(&b, &net("100.64.0.3/32")),
            "configured peers hold only what is configured"
        );
        assert!(
            registry.may_hold(&c, &net("100.64.0.3/32")),
            "allowed peers claim free overlay addresses"
        );
        assert!(!registry.may_hold(&c, &net("100.64.0.2/32")), "but not configured ones");
        assert!(!registry.may_hold(&c, &net("100.64.0.0/24")), "nor prefixes that cover them");
        assert!(
            !registry.may_hold(&c, &net("192.168.0.1/32")),
            "nor addresses outside the overlay"
        );
        assert!(!registry.may_hold(&stranger, &net("100.64.0.9/32")));
        assert!(registry.is_member(&b) && registry.is_member(&c) && !registry.is_member(&stranger));
    }

    #[test]
    fn a_replaced_registry_answers_from_then_on() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let overlay = vec![net("100.64.0.0/10")];
        let live = LiveRegistry::new(StaticRegistry::new(vec![], [a], overlay.clone()));
        assert!(live.is_member(&a) && !live.is_member(&b));
        assert!(live.may_hold(&a, &net("100.64.0.9/32")));
        live.replace(StaticRegistry::new(vec![(b, net("100.64.0.9/32"))], [a], overlay));
        assert!(live.is_member(&b));
        assert!(!live.may_hold(&a, &net("100.64.0.9/32")), "now b's");
        assert!(live.may_hold(&b, &net("100.64.0.9/32")));
    }
}
