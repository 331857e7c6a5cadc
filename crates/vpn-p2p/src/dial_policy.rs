//! One policy for every address the node dials.
//!
//! Peers hand a node addresses from many places: Kademlia answers, identify, DCUtR's
//! hole-punch messages, AutoNAT's dial-back requests, mDNS answers from anyone on the
//! link. A member could use them to make the node scan or reflect at third parties (its
//! own host, its LAN, the overlay itself), or fill its connections with made-up peers.
//! Every dial passes through the transport, and the transport asks [`DialPolicy::begin`]
//! first, so one rule holds for all of them:
//!
//! - never an address that names no host (unspecified, multicast, broadcast, reserved),
//!   a link-local one, or one inside the overlay (the connection would ride its own tunnel);
//! - loopback only at a loopback address the node is configured to listen on itself (one
//!   host's test or demo setup; a node listening on every address dials no loopback);
//! - a private address (RFC 1918, shared address space, unique-local IPv6) only in a
//!   network the node has an address in itself (the same /16, or /48 for IPv6): its LAN;
//! - at most [`MAX_DIALS_PER_PEER`] dials under way to one peer and [`MAX_DIALS`] in all.
//!
//! Addresses the operator configured (bootstrap peers, configured peers' endpoints) pass
//! the address rules whatever they are; the budgets hold for every dial. Each refusal is
//! counted by reason ([`DialRefusal`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use vpn_types::DialRefusal;

use crate::config::PathObserver;

/// Most dials under way to one peer at once.
pub const MAX_DIALS_PER_PEER: usize = 8;
/// Most dials under way at once, to all peers.
pub const MAX_DIALS: usize = 256;

/// The IP address a multiaddr starts with, if any.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Where a connection comes from, as limits count it: an IPv4 address, or an IPv6 /64
/// (one host or household gets a whole /64, and can pick any address in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    V6([u16; 4]),
}

/// The [`Source`] of `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address).
pub(crate) fn source_of(ip: IpAddr) -> Source {
    match ip {
        IpAddr::V4(ip) => Source::V4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => Source::V4(v4),
            None => {
                let [a, b, c, d, ..] = ip.segments();
                Source::V6([a, b, c, d])
            }
        },
    }
}

/// Members' addresses remembered, to let their handshakes in first.
const MEMBERS_KEPT: usize = 1024;

/// The peer ID in a multiaddr (the first one: a relayed address names its relay first, and
/// reaches the transport only as the relay's own address), if any.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// How an address is treated, before the node's own networks are looked at.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Public,
    Private,
    Loopback,
    Never(DialRefusal),
}

fn class_v4(ip: Ipv4Addr) -> Class {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || a == 0 || a >= 240 {
        Class::Never(DialRefusal::NoHost)
    } else if ip.is_link_local() {
        Class::Never(DialRefusal::LinkLocal)
    } else if ip.is_loopback() {
        Class::Loopback
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Class::Private
    } else {
        Class::Public
    }
}

fn class_of(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(ip) => class_v4(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return class_v4(v4);
            }
            let first = ip.segments()[0];
            if ip.is_unspecified() || ip.is_multicast() {
                Class::Never(DialRefusal::NoHost)
            } else if first & 0xffc0 == 0xfe80 {
                Class::Never(DialRefusal::LinkLocal)
            } else if ip.is_loopback() {
                Class::Loopback
            } else if first & 0xfe00 == 0xfc00 {
                Class::Private
            } else {
                Class::Public
            }
        }
    }
}

/// Whether `a` and `b` are in one private network as far as this policy tells (the same
/// /16 for IPv4, the same /48 for IPv6).
fn same_network(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..2] == b.octets()[..2],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..3] == b.segments()[..3],
        _ => false,
    }
}

#[derive(Default)]
struct State {
    /// The overlay's networks: never dialed.
    overlay: Vec<vpn_api::IpNet>,
    /// The loopback addresses the node is configured to listen on.
    loopback: HashSet<IpAddr>,
    /// The node's own addresses, as it listens on them.
    own: HashSet<IpAddr>,
    /// Addresses the operator gave.
    trusted: HashSet<IpAddr>,
    /// Sources members came from.
    members: HashSet<Source>,
    /// Dials under way, per peer (those with no peer under `None`).
    dialing: HashMap<Option<PeerId>, usize>,
    dialing_all: usize,
}

/// The rule every dial passes (see the module's documentation); shared by the transport,
/// which asks it, and the swarm's task, which tells it the node's own and trusted addresses.
pub struct DialPolicy {
    state: Mutex<State>,
    observer: Option<Arc<dyn PathObserver>>,
}

impl DialPolicy {
    /// A policy for a node listening on `listen`, whose overlay is `overlay`; refusals are
    /// told to `observer`.
    pub fn new(
        listen: &[Multiaddr],
        overlay: Vec<vpn_api::IpNet>,
        observer: Option<Arc<dyn PathObserver>>,
    ) -> Self {
        let loopback = listen.iter().filter_map(ip_of).filter(|ip| ip.is_loopback()).collect();
        let state = State { overlay, loopback, ..State::default() };
        Self { state: Mutex::new(state), observer }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An address the operator gave: its IP passes the address rules.
    pub fn trust(&self, addr: &Multiaddr) {
        if let Some(ip) = ip_of(addr) {
            self.state().trusted.insert(ip);
        }
    }

    /// The node listens on `addr` now (or no longer, with `present` false).
    pub fn own(&self, addr: &Multiaddr, present: bool) {
        let Some(ip) = ip_of(addr) else { return };
        let mut state = self.state();
        if present {
            state.own.insert(ip);
        } else {
            state.own.remove(&ip);
        }
    }

    /// Whether `ip` is a public address (no private, loopback or link-local one) the node
    /// listens on itself: a host that holds it needs no NAT to be dialed there.
    pub(crate) fn is_own_public(&self, ip: IpAddr) -> bool {
        class_of(ip) == Class::Public && self.state().own.contains(&ip)
    }

    /// A proven member is connected from `addr`: connections from there are let in first.
    pub fn seen_member(&self, addr: &Multiaddr) {
        let Some(ip) = ip_of(addr) else { return };
        let mut state = self.state();
        if state.members.len() >= MEMBERS_KEPT {
            // Forget them all rather than track their age: they come back as they connect.
            state.members.clear();
        }
        state.members.insert(source_of(ip));
    }

    /// Whether connections from `ip` come from where a member is known to be (an address
    /// the operator gave, or one a member connected from).
    pub fn is_known(&self, ip: IpAddr) -> bool {
        let state = self.state();
        state.trusted.contains(&ip) || state.members.contains(&source_of(ip))
    }

    /// Whether the address rules let `addr` be dialed (the budgets aside); why not if not.
    /// An address with no IP (a relayed one) is judged when its relay is dialed.
    pub fn allows(&self, addr: &Multiaddr) -> Result<(), DialRefusal> {
        let Some(ip) = ip_of(addr) else { return Ok(()) };
        let state = self.state();
        if state.trusted.contains(&ip) {
            return Ok(());
        }
        if state.overlay.iter().any(|net| net.contains(&ip)) {
            return Err(DialRefusal::Overlay);
        }
        match class_of(ip) {
            Class::Public => Ok(()),
            Class::Never(why) => Err(why),
            Class::Loopback if state.loopback.contains(&ip) => Ok(()),
            Class::Loopback => Err(DialRefusal::Loopback),
            Class::Private if state.own.iter().any(|own| same_network(*own, ip)) => Ok(()),
            Class::Private => Err(DialRefusal::Private),
        }
    }

    /// Whether `addr` passes the address rules, a refusal counted if not (for addresses
    /// learned from peers, before they are kept).
    pub fn usable(&self, addr: &Multiaddr) -> bool {
        match self.allows(addr) {
            Ok(()) => true,
            Err(why) => {
                self.refused(addr, why);
                false
            }
        }
    }

    fn refused(&self, addr: &Multiaddr, why: DialRefusal) {
        tracing::debug!(address = %vpn_types::PeerText(&addr.to_string()), %why, "not dialed");
        if let Some(observer) = &self.observer {
            observer.dial_refused(why);
        }
    }

    /// A dial of `addr` begins, if the policy lets it: the guard holds its place in the
    /// budgets until it is dropped (the dial ended, or was given up).
    pub fn begin(self: &Arc<Self>, addr: &Multiaddr) -> Result<DialGuard, DialRefusal> {
        let checked = self.allows(addr).and_then(|()| {
            let peer = peer_of(addr);
            let mut state = self.state();
            let of_peer = state.dialing.get(&peer).copied().unwrap_or(0);
            if state.dialing_all >= MAX_DIALS || (peer.is_some() && of_peer >= MAX_DIALS_PER_PEER) {
                return Err(DialRefusal::Budget);
            }
            state.dialing.insert(peer, of_peer + 1);
            state.dialing_all += 1;
            Ok(DialGuard { policy: self.clone(), peer })
        });
        if let Err(why) = &checked {
            self.refused(addr, *why);
        }
        checked
    }
}

/// A dial's place in the budgets, given back when dropped.
pub struct DialGuard {
    policy: Arc<DialPolicy>,
    peer: Option<PeerId>,
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        let mut state = self.policy.state();
        state.dialing_all = state.dialing_all.saturating_sub(1);
        if let Some(n) = state.dialing.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.dialing.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("test address")
    }

    fn policy(listen: &[&str]) -> Arc<DialPolicy> {
        let listen: Vec<Multiaddr> = listen.iter().map(|s| addr(s)).collect();
        let overlay = vec!["100.64.0.0/10".parse().expect("net"), "fd00::/8".parse().expect("net")];
        Arc::new(DialPolicy::new(&listen, overlay, None))
    }

    #[test]
    fn addresses_that_name_no_host_or_a_link_are_never_dialed() {
        let p = policy(&["/ip4/0.0.0.0/tcp/4001"]);
        for (a, why) in [
            ("/ip4/0.0.0.0/tcp/1", DialRefusal::NoHost),
            ("/ip4/255.255.255.255/tcp/1", DialRefusal::NoHost),
            ("/ip4/224.0.0.251/udp/5353/quic-v1", DialRefusal::NoHost),
            ("/ip4/240.1.2.3/tcp/1", DialRefusal::NoHost),
            ("/ip6/::/tcp/1", DialRefusal::NoHost),
            ("/ip6/ff02::1/tcp/1", DialRefusal::NoHost),
            ("/ip4/169.254.1.1/tcp/1", DialRefusal::LinkLocal),
            ("/ip6/fe80::1/tcp/1", DialRefusal::LinkLocal),
            ("/ip4/127.0.0.1/tcp/22", DialRefusal::Loopback),
            ("/ip6/::1/tcp/22", DialRefusal::Loopback),
            ("/ip6/::ffff:127.0.0.1/tcp/22", DialRefusal::Loopback),
            ("/ip4/100.64.0.7/tcp/4001", DialRefusal::Overlay),
            ("/ip6/fd00::7/tcp/4001", DialRefusal::Overlay),
            ("/ip4/10.1.2.3/tcp/4001", DialRefusal::Private),
            ("/ip4/192.168.1.9/tcp/4001", DialRefusal::Private),
            ("/ip6/fc00::9/tcp/4001", DialRefusal::Private),
        ] {
            assert_eq!(p.allows(&addr(a)), Err(why), "{a}");
        }
        for a in
            ["/ip4/198.18.0.2/tcp/4001", "/ip4/8.8.8.8/udp/4001/quic-v1", "/ip6/2001:db8::1/tcp/1"]
        {
            assert_eq!(p.allows(&addr(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn the_own_lan_and_loopback_only_where_the_node_is() {
        let p = policy(&["/ip4/127.0.0.1/tcp/0"]);
        assert_eq!(p.allows(&addr("/ip4/127.0.0.1/tcp/4001")), Ok(()));
        assert_eq!(p.allows(&addr("/ip4/127.0.0.9/tcp/4001")), Err(DialRefusal::Loopback));
        assert_eq!(p.allows(&addr("/ip4/192.168.7.9/tcp/4001")), Err(DialRefusal::Private));
        p.own(&addr("/ip4/192.168.7.2/tcp/4001"), true);
        assert_eq!(p.allows(&addr("/ip4/192.168.7.9/tcp/4001")), Ok(()));
        assert_eq!(p.allows(&addr("/ip4/192.169.7.9/tcp/4001")), Ok(()), "public");
        assert_eq!(p.allows(&addr("/ip4/10.0.0.9/tcp/4001")), Err(DialRefusal::Private));
        p.own(&addr("/ip4/192.168.7.2/tcp/4001"), false);
        assert_eq!(p.allows(&addr("/ip4/192.168.7.9/tcp/4001")), Err(DialRefusal::Private));
    }

    #[test]
    fn what_the_operator_gave_passes_the_address_rules() {
        let p = policy(&["/ip4/0.0.0.0/tcp/4001"]);
        let given = addr("/ip4/10.9.0.1/tcp/4001");
        assert_eq!(p.allows(&given), Err(DialRefusal::Private));
        p.trust(&given);
        assert_eq!(p.allows(&given), Ok(()));
    }

    #[test]
    fn dials_to_one_peer_are_bounded_and_given_back() {
        let p = policy(&["/ip4/0.0.0.0/tcp/4001"]);
        let peer = PeerId::random();
        let to = |port: u16| addr(&format!("/ip4/198.18.0.2/tcp/{port}/p2p/{peer}"));
        let mut held: Vec<DialGuard> = Vec::new();
        for port in 0..MAX_DIALS_PER_PEER as u16 {
            held.push(p.begin(&to(port)).expect("within the budget"));
        }
        assert_eq!(p.begin(&to(99)).err(), Some(DialRefusal::Budget));
        let other = addr(&format!("/ip4/198.18.0.3/tcp/1/p2p/{}", PeerId::random()));
        assert!(p.begin(&other).is_ok(), "another peer has its own budget");
        held.pop();
        assert!(p.begin(&to(99)).is_ok(), "a dial that ended gives its place back");
    }

    #[test]
    fn dials_in_all_are_bounded() {
        let p = policy(&["/ip4/0.0.0.0/tcp/4001"]);
        let held: Vec<DialGuard> = (0..MAX_DIALS)
            .map(|i| {
                let a = addr(&format!("/ip4/198.18.0.2/tcp/{i}/p2p/{}", PeerId::random()));
                p.begin(&a).expect("within the budget")
            })
            .collect();
        let more = addr(&format!("/ip4/198.18.0.2/tcp/1/p2p/{}", PeerId::random()));
        assert_eq!(p.begin(&more).err(), Some(DialRefusal::Budget));
        drop(held);
        assert!(p.begin(&more).is_ok());
    }
}
