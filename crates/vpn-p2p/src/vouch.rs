//! Whether to believe AutoNAT that this node can be dialed from outside.
//!
//! AutoNAT's client takes one server's word for an address, and the dial-back proving it on
//! any incoming connection (a relayed one too), so one member could make a node behind a
//! NAT believe it is public at an address of the member's choosing: the node would give up
//! its relay slots and every member would be told to dial that address. So an address
//! AutoNAT confirms is held here, and published only
//!
//! - if it is a public address the node holds itself (it listens there: no NAT between),
//!   or
//! - while members vouch for the node by deed: at least [`VOUCHERS`] members, from as many
//!   sources (an IPv4 address, an IPv6 /64), have each connected to it directly as their
//!   first connection (not a hole punch, which follows a relayed one) within
//!   [`VOUCH_FOR`]. A node behind a NAT gets no such connections; a public one gets them
//!   from the members that find it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use crate::dial_policy::Source;

/// Members (from as many sources) that must have dialed us directly.
pub(crate) const VOUCHERS: usize = 2;
/// How long a member's direct connection vouches for us.
pub(crate) const VOUCH_FOR: Duration = Duration::from_secs(30 * 60);
/// Most addresses held; AutoNAT tests a few candidates only.
const MAX_HELD: usize = 8;
/// Most sources remembered; the oldest goes first.
const MAX_SOURCES: usize = 64;

/// Addresses AutoNAT confirmed and the members' direct connections that vouch for them.
#[derive(Debug, Default)]
pub(crate) struct Vouches {
    held: Vec<Multiaddr>,
    /// The last member that dialed us directly from each source, and when.
    seen: HashMap<Source, (PeerId, Instant)>,
}

impl Vouches {
    /// AutoNAT confirmed `addr`.
    pub(crate) fn confirmed(&mut self, addr: Multiaddr) {
        if !self.held.contains(&addr) && self.held.len() < MAX_HELD {
            self.held.push(addr);
        }
    }

    /// Member `peer` connected to us directly from `source` at `now`, its first connection.
    pub(crate) fn dialed_by(&mut self, peer: PeerId, source: Source, now: Instant) {
        self.seen.insert(source, (peer, now));
        if self.seen.len() > MAX_SOURCES {
            let oldest = self.seen.iter().min_by_key(|(_, (_, at))| *at).map(|(s, _)| *s);
            if let Some(oldest) = oldest {
                self.seen.remove(&oldest);
            }
        }
    }

    /// The addresses AutoNAT confirmed.
    pub(crate) fn held(&self) -> &[Multiaddr] {
        &self.held
    }

    /// Whether enough members vouch for us at `now`.
    pub(crate) fn vouched(&self, now: Instant) -> bool {
        let mut peers: Vec<PeerId> = self
            .seen
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) < VOUCH_FOR)
            .map(|(peer, _)| *peer)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers.len() >= VOUCHERS
    }

    /// The addresses to publish as ours at `now`: the confirmed ones that are `own`
    /// (public, held by this host), and all of them while vouched for.
    pub(crate) fn published(
        &self,
        now: Instant,
        own: impl Fn(&Multiaddr) -> bool,
    ) -> Vec<Multiaddr> {
        let vouched = self.vouched(now);
        self.held.iter().filter(|a| vouched || own(a)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn source(last: u8) -> Source {
        Source::V4(Ipv4Addr::new(198, 18, 0, last))
    }

    fn none(_: &Multiaddr) -> bool {
        false
    }

    #[test]
    fn an_address_the_host_holds_is_published_on_autonats_word() {
        let (own, other): (Multiaddr, Multiaddr) = (
            "/ip4/198.18.0.1/tcp/4001".parse().unwrap(),
            "/ip4/198.18.0.77/tcp/4001".parse().unwrap(),
        );
        let mut vouches = Vouches::default();
        vouches.confirmed(own.clone());
        vouches.confirmed(other);
        assert_eq!(vouches.published(Instant::now(), |a| *a == own), std::slice::from_ref(&own));
    }

    #[test]
    fn an_address_is_published_only_while_two_members_from_two_sources_vouch() {
        let addr: Multiaddr = "/ip4/198.18.0.1/tcp/4001".parse().unwrap();
        let (m1, m2) = (PeerId::random(), PeerId::random());
        let start = Instant::now();
        let mut vouches = Vouches::default();
        vouches.confirmed(addr.clone());
        assert!(vouches.published(start, none).is_empty(), "AutoNAT's word alone");

        // One member, however many sources: not enough. Two members from one source: not
        // enough either (the later replaces the earlier).
        vouches.dialed_by(m1, source(2), start);
        vouches.dialed_by(m1, source(3), start);
        assert!(vouches.published(start, none).is_empty());
        let mut one_source = Vouches::default();
        one_source.confirmed(addr.clone());
        one_source.dialed_by(m1, source(2), start);
        one_source.dialed_by(m2, source(2), start);
        assert!(one_source.published(start, none).is_empty());

        vouches.dialed_by(m2, source(4), start + Duration::from_secs(60));
        assert_eq!(
            vouches.published(start + Duration::from_secs(60), none),
            std::slice::from_ref(&addr)
        );
        // m1's connections grow old: m2 alone is not enough any more.
        assert!(vouches.published(start + VOUCH_FOR, none).is_empty());
        vouches.dialed_by(m1, source(2), start + VOUCH_FOR);
        assert_eq!(vouches.published(start + VOUCH_FOR, none), [addr]);
    }

    #[test]
    fn held_addresses_and_sources_are_bounded() {
        let mut vouches = Vouches::default();
        for port in 0..100u16 {
            vouches.confirmed(format!("/ip4/198.18.0.1/tcp/{port}").parse().unwrap());
        }
        assert_eq!(vouches.held.len(), MAX_HELD);
        let start = Instant::now();
        for i in 0..200u32 {
            let source = Source::V4(Ipv4Addr::from(0xc612_0000 + i));
            vouches.dialed_by(PeerId::random(), source, start + Duration::from_millis(i.into()));
        }
        assert_eq!(vouches.seen.len(), MAX_SOURCES);
        let newest = Source::V4(Ipv4Addr::from(0xc612_0000 + 199));
        assert!(vouches.seen.contains_key(&newest), "the oldest go first");
    }
}
