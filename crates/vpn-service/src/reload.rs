//! What a new configuration changes, and whether a running node can take it.

use vpn_api::IpNet;
use vpn_config::{MembershipSettings, NetworkSettings, VpnConfig};

/// The sections a new configuration changes: those a running node applies, and those that
/// need a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    /// Applied live: `peers`, `network.allowed_peers`, `firewall`, `log`.
    pub(crate) live: Vec<&'static str>,
    /// Only a restart applies them.
    pub(crate) fixed: Vec<&'static str>,
}

/// The routes into the tunnel the peers' entries give the TUN device (kernel routes made at
/// start).
fn peer_routes(config: &VpnConfig) -> Vec<IpNet> {
    let mut routes: Vec<IpNet> =
        config.peers.iter().flat_map(|p| p.routes.iter().copied()).collect();
    routes.sort();
    routes.dedup();
    routes
}

/// The network section without what may change live.
fn network_fixed(config: &VpnConfig) -> NetworkSettings {
    NetworkSettings { allowed_peers: Vec::new(), ..config.network.clone() }
}

/// The membership section without the revocation list (read again at every reload).
fn membership_fixed(config: &VpnConfig) -> MembershipSettings {
    MembershipSettings { revocations: None, ..config.membership.clone() }
}

/// Compares `old` and `new` section by section.
pub(crate) fn compare(old: &VpnConfig, new: &VpnConfig) -> Change {
    let mut change = Change::default();
    let mut section = |name: &'static str, same: bool, live: bool| {
        if !same {
            if live { change.live.push(name) } else { change.fixed.push(name) }
        }
    };
    section("node", old.node == new.node, false);
    section("interface", old.interface == new.interface, false);
    section("network", network_fixed(old) == network_fixed(new), false);
    section("network.allowed_peers", old.network.allowed_peers == new.network.allowed_peers, true);
    section("discovery", old.discovery == new.discovery, false);
    section("peers", old.peers == new.peers, true);
    section("peers[].routes", peer_routes(old) == peer_routes(new), false);
    section("firewall", old.firewall == new.firewall, true);
    section("metrics", old.metrics == new.metrics, false);
    section("control", old.control == new.control, false);
    section("log", old.log == new.log, true);
    section("worker", old.worker == new.worker, false);
    section("stream_pool", old.stream_pool == new.stream_pool, false);
    section("circuit_breaker", old.circuit_breaker == new.circuit_breaker, false);
    section("health_check", old.health_check == new.health_check, false);
    section("retry", old.retry == new.retry, false);
    section("limits", old.limits == new.limits, false);
    section("membership", membership_fixed(old) == membership_fixed(new), false);
    let revocations = &new.membership.revocations;
    section("membership.revocations", old.membership.revocations == *revocations, true);
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> VpnConfig {
        let text = format!("[node]\naddress = \"100.64.0.1/10\"\n{extra}");
        vpn_config::load_str(&text, []).unwrap()
    }

    fn peer(id: &vpn_api::PeerId) -> String {
        format!("[[peers]]\npeer_id = \"{id}\"\naddresses = [\"100.64.0.2\"]\n")
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let id = vpn_api::PeerId::random();
        assert_eq!(compare(&load(&peer(&id)), &load(&peer(&id))), Change::default());
    }

    #[test]
    fn peers_allowed_peers_firewall_and_log_change_live() {
        let id = vpn_api::PeerId::random();
        let new = load(&format!(
            "{}[network]\nallowed_peers = [\"{id}\"]\n[firewall]\ndeny_ports = [23]\n\
             [log]\nlevel = \"debug\"\n",
            peer(&id)
        ));
        let change = compare(&load(""), &new);
        assert_eq!(change.live, vec!["network.allowed_peers", "peers", "firewall", "log"]);
        assert!(change.fixed.is_empty());
    }

    #[test]
    fn what_needs_a_restart_is_named() {
        let id = vpn_api::PeerId::random();
        let new = load(&format!(
            "{}routes = [\"10.1.0.0/16\"]\n[network]\nlisten = [\"/ip4/0.0.0.0/tcp/4002\"]\n\
             [worker]\nmax_workers = 8\n",
            peer(&id)
        ));
        let change = compare(&load(""), &new);
        assert_eq!(change.fixed, vec!["network", "peers[].routes", "worker"]);
        assert_eq!(change.live, vec!["peers"]);
    }
}
