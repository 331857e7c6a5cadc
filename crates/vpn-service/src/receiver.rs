//! The receiver: checks every packet a peer sends before it reaches the TUN.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use vpn_api::{IpNet, PeerDiscoveryService, PeerId};
use vpn_config::FirewallSettings;
use vpn_types::DropReason;
use vpn_utils::validate_ip_packet;

/// What to do with one inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the TUN.
    Accept,
    /// Drop it, counted under this reason.
    Drop(DropReason),
    /// The sender is not known to hold the source address yet: look it up first.
    LookUp(IpAddr),
}

/// The receiver checks of docs/protocol.md (section 4), for packets from peers.
pub struct InboundCheck {
    discovery: Arc<dyn PeerDiscoveryService>,
    ours: Vec<IpNet>,
    /// Replaced by `vpn-node reload`.
    firewall: RwLock<FirewallSettings>,
}

impl InboundCheck {
    /// Checks against what `discovery` knows of peers, our addresses and routes `ours`, and
    /// `firewall`.
    pub fn new(
        discovery: Arc<dyn PeerDiscoveryService>,
        ours: Vec<IpNet>,
        firewall: FirewallSettings,
    ) -> Self {
        Self { discovery, ours, firewall: RwLock::new(firewall) }
    }

    /// Puts `firewall` in force from the next packet on.
    pub fn set_firewall(&self, firewall: FirewallSettings) {
        *self.firewall.write().unwrap_or_else(PoisonError::into_inner) = firewall;
    }

    /// The verdict on `packet` from `peer`: a whole IP packet whose length field agrees;
    /// a source the peer holds (configured or recorded); a destination that is ours; and
    /// the firewall's leave.
    pub fn check(&self, peer: &PeerId, packet: &[u8]) -> Verdict {
        let Ok(info) = validate_ip_packet(packet) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if !self.ours.iter().any(|net| net.contains(&info.dst_ip)) {
            return Verdict::Drop(DropReason::NotOurs);
        }
        {
            let firewall = self.firewall.read().unwrap_or_else(PoisonError::into_inner);
            let denied_port = info.dst_port.is_some_and(|port| firewall.deny_ports.contains(&port));
            if denied_port || firewall.deny_protocols.contains(&info.protocol) {
                return Verdict::Drop(DropReason::Firewall);
            }
        }
        match self.discovery.holds_now(peer, info.src_ip) {
            Some(true) => Verdict::Accept,
            Some(false) => Verdict::Drop(DropReason::Spoofed),
            None => Verdict::LookUp(info.src_ip),
        }
    }

    /// The verdict once the owner of `src` was looked up.
    pub async fn check_after_lookup(&self, peer: &PeerId, src: IpAddr) -> Verdict {
        match self.discovery.peer_for_ip(src).await {
            Ok(owner) if owner == *peer => Verdict::Accept,
            _ => Verdict::Drop(DropReason::Spoofed),
        }
    }
}
