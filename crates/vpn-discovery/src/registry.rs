use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use vpn_api::IpRegistry;
use vpn_api::{IpNet, PeerId};
use vpn_config::VpnConfig;

use crate::{Membership, unix_now};

/// Who may hold which overlay addresses, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct StaticRegistry {
    /// Configured claims: each peer (ourselves included) with what it holds.
    claims: Vec<(PeerId, IpNet)>,
    /// Peers that may claim free overlay addresses through the DHT.
    allowed: HashSet<PeerId>,
    /// Bootstrap peers: members that hold nothing unless configured or allowed too.
    bootstrap: HashSet<PeerId>,
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
        Self { claims, allowed: allowed.into_iter().collect(), overlay, bootstrap: HashSet::new() }
    }

    /// The same registry, with `peers` members too (bootstrap peers: they hold nothing
    /// unless configured or allowed as well).
    pub fn with_bootstrap(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.bootstrap.extend(peers);
        self
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
        let bootstrap = config.network.bootstrap.iter().filter_map(|addr| {
            addr.iter().find_map(|p| match p {
                multiaddr::Protocol::P2p(peer) => Some(peer),
                _ => None,
            })
        });
        Self::new(claims, config.network.allowed_peers.iter().copied(), overlay)
            .with_bootstrap(bootstrap)
    }

    /// Whether `peer` may join the VPN at all (configured, allowed, or a bootstrap peer).
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.allowed.contains(peer)
            || self.bootstrap.contains(peer)
            || self.claims.iter().any(|(p, _)| p == peer)
    }

    /// Whether a configured claim of `peer` covers `net`.
    fn configured_for(&self, peer: &PeerId, net: &IpNet) -> bool {
        self.claims.iter().any(|(p, held)| p == peer && held.contains(net))
    }

    /// Whether a configured claim overlaps `net` (it is then its owner's only).
    fn taken(&self, net: &IpNet) -> bool {
        self.claims.iter().any(|(_, held)| held.contains(net) || net.contains(held))
    }

    /// Every member it names (a peer may come more than once).
    pub fn members(&self) -> impl Iterator<Item = PeerId> + '_ {
        let claimed = self.claims.iter().map(|(peer, _)| *peer);
        claimed.chain(self.allowed.iter().copied()).chain(self.bootstrap.iter().copied())
    }

    /// The configured claims: `(peer, address or prefix)`.
    pub fn claims(&self) -> &[(PeerId, IpNet)] {
        &self.claims
    }
}

impl IpRegistry for StaticRegistry {
    fn may_hold(&self, peer: &PeerId, net: &IpNet) -> bool {
        if self.configured_for(peer, net) {
            return true;
        }
        // Anything overlapping a configured claim belongs to that claim's owner only.
        !self.taken(net)
            && self.allowed.contains(peer)
            && self.overlay.iter().any(|range| range.contains(net))
    }
}

/// A [`StaticRegistry`] that can be replaced while the node runs (`vpn-node reload`): every
/// holder (the stream acceptor, the record filter, discovery) asks the new one from its next
/// question on.
///
/// With a [`Membership`], certified peers are members too, and a certificate fixes what its
/// holder may hold (besides its configured claims; never what another peer is configured to
/// hold).
#[derive(Debug, Default)]
pub struct LiveRegistry {
    current: RwLock<Arc<StaticRegistry>>,
    membership: Option<Arc<Membership>>,
}

impl LiveRegistry {
    /// Starts with `registry`.
    pub fn new(registry: StaticRegistry) -> Self {
        Self { current: RwLock::new(Arc::new(registry)), membership: None }
    }

    /// Certified peers are members too.
    pub fn with_membership(mut self, membership: Arc<Membership>) -> Self {
        self.membership = Some(membership);
        self
    }

    /// The certificate side, if any.
    pub fn membership(&self) -> Option<&Arc<Membership>> {
        self.membership.as_ref()
    }

    /// The registry in force now.
    pub fn current(&self) -> Arc<StaticRegistry> {
        self.read().clone()
    }

    /// The registry in force, borrowed (the receiver asks per packet: no reference count
    /// is touched).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<StaticRegistry>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `registry` in force.
    pub fn replace(&self, registry: StaticRegistry) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(registry);
    }

    /// Whether `peer` may join the VPN at all, by the registry in force.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.read().is_member(peer)
            || self.membership.as_ref().is_some_and(|m| m.is_member(peer, unix_now()))
    }
}

impl IpRegistry for LiveRegistry {
    fn present(&self, peer: &PeerId, certificate: &[u8]) {
        if let Some(membership) = &self.membership
            && !self.read().is_member(peer)
            && let Err(e) = membership.admit(peer, certificate, unix_now())
        {
            tracing::debug!(%peer, error = %e, "a record's certificate was refused");
        }
    }

    fn may_hold(&self, peer: &PeerId, net: &IpNet) -> bool {
        let current = self.read();
        if current.configured_for(peer, net) {
            return true;
        }
        match self.membership.as_ref().and_then(|m| m.holds(peer, net, unix_now())) {
            Some(held) => held && !current.taken(net),
            None => current.may_hold(peer, net),
        }
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

    #[test]
    fn a_certificate_fixes_what_its_holder_holds() {
        let ca = libp2p_identity::Keypair::generate_ed25519();
        let (b, c, boot) = (PeerId::random(), PeerId::random(), PeerId::random());
        let now = unix_now();
        let membership = Arc::new(Membership::new(vec![ca.public()], Vec::new()));
        let overlay = vec![net("100.64.0.0/10")];
        // c is allowed (free addresses) and certified: the certificate wins.
        let registry = StaticRegistry::new(vec![(b, net("100.64.0.2/32"))], [c], overlay)
            .with_bootstrap([boot]);
        let live = LiveRegistry::new(registry).with_membership(membership.clone());
        assert!(live.is_member(&boot) && !live.may_hold(&boot, &net("100.64.0.9/32")));
        let stranger = PeerId::random();
        assert!(!live.is_member(&stranger));
        let cert = vpn_wire::Certificate {
            peer_id: stranger,
            addresses: vec![net("100.64.0.5/32"), net("100.64.0.2/32")],
            routes: vec![net("10.9.0.0/16")],
            name: String::new(),
            not_before_unix: now - 10,
            not_after_unix: now + 3600,
        };
        membership.admit(&stranger, &cert.sign(&ca).unwrap(), now).unwrap();
        assert!(live.is_member(&stranger));
        assert!(live.may_hold(&stranger, &net("100.64.0.5/32")));
        assert!(live.may_hold(&stranger, &net("10.9.1.0/24")));
        assert!(!live.may_hold(&stranger, &net("100.64.0.6/32")), "beyond its certificate");
        assert!(!live.may_hold(&stranger, &net("100.64.0.2/32")), "configured for b");
        let cert_c =
            vpn_wire::Certificate { peer_id: c, addresses: vec![net("100.64.0.7/32")], ..cert };
        membership.admit(&c, &cert_c.sign(&ca).unwrap(), now).unwrap();
        assert!(live.may_hold(&c, &net("100.64.0.7/32")));
        assert!(!live.may_hold(&c, &net("100.64.0.8/32")), "its certificate, not allowed_peers");
    }
}
