//! Reaching peers behind NAT: whether we are publicly reachable, the member relays we hold
//! a slot on, and how each peer is connected.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// How this node can be reached, as far as it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reachability {
    /// Addresses other members confirmed they could dial (AutoNAT), relayed ones aside.
    pub public: Vec<Multiaddr>,
    /// Relays holding a slot for us, and the address we are reachable at through each.
    pub relays: Vec<(PeerId, Multiaddr)>,
    /// Whether we relay for other members now.
    pub serving: bool,
    /// Addresses AutoNAT confirmed that too few members vouch for yet by dialing us
    /// (not published; see `public`).
    pub unvouched: Vec<Multiaddr>,
}

/// How one peer is connected now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPath {
    /// The peer.
    pub peer: PeerId,
    /// Whether streams to it go through a relay (it has no direct connection).
    pub relayed: bool,
    /// The far end of the connection streams go over.
    pub address: Multiaddr,
    /// Connections to it, relayed ones included.
    pub connections: usize,
    /// Round trip of the last ping on that connection.
    pub rtt: Option<Duration>,
    /// Whether the direct connection was made by punching a hole through NATs.
    pub hole_punched: bool,
}

/// Whether `addr` runs through a relay.
pub(crate) fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// A reservation wanted or held on one relay.
struct Slot {
    listener: ListenerId,
    address: Multiaddr,
    accepted: bool,
}

/// The event loop's view of reachability and relays.
pub(crate) struct Reach {
    /// This node.
    local: PeerId,
    /// Serve as a relay: always, never, or while publicly reachable (`None`).
    serve: Option<bool>,
    /// Relays to hold a slot on while not publicly reachable.
    wanted: usize,
    /// Members that relay (they offer the relay protocol), and the addresses they announce.
    pub(crate) relays: HashMap<PeerId, Vec<Multiaddr>>,
    slots: HashMap<PeerId, Slot>,
    /// A relay whose reservation failed is asked again after this.
    retry: HashMap<PeerId, (Instant, Duration)>,
    /// Our addresses confirmed dialable, relayed ones aside.
    public: Vec<Multiaddr>,
    /// Whether we relay now.
    pub(crate) serving: bool,
}

impl Reach {
    const FIRST_RETRY: Duration = Duration::from_secs(5);
    const LONGEST_RETRY: Duration = Duration::from_secs(300);

    pub(crate) fn new(local: PeerId, serve: Option<bool>, wanted: usize) -> Self {
        Self {
            local,
            serve,
            wanted,
            relays: HashMap::new(),
            slots: HashMap::new(),
            retry: HashMap::new(),
            public: Vec::new(),
            serving: serve == Some(true),
        }
    }

    /// An address of ours was confirmed dialable; returns whether we should relay now
    /// (`Some`: the relay's status changes).
    pub(crate) fn confirmed(&mut self, addr: Multiaddr) -> Option<bool> {
        if is_circuit(&addr) || self.public.contains(&addr) {
            return None;
        }
        self.public.push(addr);
        self.update_serving()
    }

    /// An address of ours is no longer confirmed; as [`Reach::confirmed`].
    pub(crate) fn expired(&mut self, addr: &Multiaddr) -> Option<bool> {
        self.public.retain(|a| a != addr);
        self.update_serving()
    }

    fn update_serving(&mut self) -> Option<bool> {
        let serving = self.serve.unwrap_or(!self.public.is_empty());
        (serving != self.serving).then(|| {
            self.serving = serving;
            serving
        })
    }

    /// Whether others can dial us directly.
    pub(crate) fn is_public(&self) -> bool {
        !self.public.is_empty()
    }

    /// The relays to reserve a slot on now (not publicly reachable, fewer slots than
    /// wanted, among `usable` relays), at most enough to make up the number.
    pub(crate) fn relays_to_ask(&self, usable: impl Fn(&PeerId) -> bool) -> Vec<PeerId> {
        if self.is_public() || self.slots.len() >= self.wanted {
            return Vec::new();
        }
        let now = Instant::now();
        let mut candidates: Vec<PeerId> = self
            .relays
            .keys()
            .filter(|r| !self.slots.contains_key(r))
            .filter(|r| self.retry.get(r).is_none_or(|(at, _)| now >= *at))
            .filter(|r| usable(r))
            .copied()
            .collect();
        // Nearest first by Kademlia distance: each node has its own order, so nodes behind
        // NAT spread over the relays instead of all taking the same ones.
        let us = libp2p::kad::KBucketKey::from(self.local);
        candidates.sort_by_cached_key(|r| us.distance(&libp2p::kad::KBucketKey::from(*r)));
        candidates.truncate(self.wanted - self.slots.len());
        candidates
    }

    /// The slots to give up once we are publicly reachable: every one its relay accepted.
    /// One still being asked for is given up once accepted, not before: libp2p's relay
    /// client panics (taking the swarm down) when the answer comes for a reservation whose
    /// listener was closed meanwhile (seen in a 48-node mesh, where nodes find themselves
    /// reachable moments after asking).
    pub(crate) fn release_if_public(&mut self) -> Vec<ListenerId> {
        if !self.is_public() {
            return Vec::new();
        }
        let accepted: Vec<PeerId> =
            self.slots.iter().filter(|(_, slot)| slot.accepted).map(|(relay, _)| *relay).collect();
        accepted
            .into_iter()
            .filter_map(|relay| self.slots.remove(&relay))
            .map(|s| s.listener)
            .collect()
    }

    /// A reservation on `relay` was asked for with `listener`.
    pub(crate) fn reserving(&mut self, relay: PeerId, listener: ListenerId, address: Multiaddr) {
        self.slots.insert(relay, Slot { listener, address, accepted: false });
    }

    /// `relay` accepted our reservation; returns whether it is new.
    pub(crate) fn accepted(&mut self, relay: PeerId) -> bool {
        self.retry.remove(&relay);
        self.slots.get_mut(&relay).is_some_and(|slot| !std::mem::replace(&mut slot.accepted, true))
    }

    /// A listener closed: if it was a reservation, the relay is asked again later (sooner
    /// if it had been accepted: the relay connection dropped, not the relay refusing).
    pub(crate) fn listener_closed(&mut self, listener: ListenerId) -> Option<PeerId> {
        let relay = self.slots.iter().find(|(_, s)| s.listener == listener).map(|(r, _)| *r)?;
        let slot = self.slots.remove(&relay)?;
        let wait = match (slot.accepted, self.retry.get(&relay)) {
            (true, _) | (false, None) => Self::FIRST_RETRY,
            (false, Some((_, last))) => (*last * 2).min(Self::LONGEST_RETRY),
        };
        self.retry.insert(relay, (Instant::now() + wait, wait));
        Some(relay)
    }

    /// `peer` is no relay (it stopped offering the protocol, or left).
    pub(crate) fn not_a_relay(&mut self, peer: &PeerId) {
        self.relays.remove(peer);
    }

    /// What we know of our reachability now.
    pub(crate) fn snapshot(&self) -> Reachability {
        let mut relays: Vec<(PeerId, Multiaddr)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.accepted)
            .map(|(r, s)| (*r, s.address.clone()))
            .collect();
        relays.sort();
        Reachability {
            public: self.public.clone(),
            relays,
            serving: self.serving,
            unvouched: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn relays_only_while_public_unless_told() {
        let mut reach = Reach::new(PeerId::random(), None, 2);
        assert!(!reach.serving);
        let relayed = addr(
            "/ip4/198.18.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
        );
        assert_eq!(reach.confirmed(relayed), None, "a relayed address is not reachability");
        assert_eq!(reach.confirmed(addr("/ip4/198.18.0.1/tcp/4001")), Some(true));
        assert_eq!(reach.confirmed(addr("/ip4/198.18.0.1/udp/4001/quic-v1")), None);
        assert_eq!(reach.expired(&addr("/ip4/198.18.0.1/tcp/4001")), None);
        assert_eq!(reach.expired(&addr("/ip4/198.18.0.1/udp/4001/quic-v1")), Some(false));

        let mut never = Reach::new(PeerId::random(), Some(false), 2);
        assert_eq!(never.confirmed(addr("/ip4/198.18.0.1/tcp/4001")), None);
        assert!(!never.serving);
        let always = Reach::new(PeerId::random(), Some(true), 2);
        assert!(always.serving);
    }

    #[test]
    fn reserves_up_to_the_number_wanted_and_gives_up_when_public() {
        let mut reach = Reach::new(PeerId::random(), None, 2);
        let relays: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        reach.relays.extend(relays.iter().map(|r| (*r, Vec::new())));
        let first = reach.relays_to_ask(|_| true);
        assert_eq!(first.len(), 2);
        let circuit = addr("/ip4/198.18.0.1/tcp/4001/p2p-circuit");
        for (i, relay) in first.iter().enumerate() {
            reach.reserving(*relay, ListenerId::next(), circuit.clone());
            assert!(reach.accepted(*relay), "relay {i} accepted");
            assert!(!reach.accepted(*relay), "a renewal is not new");
        }
        assert!(reach.relays_to_ask(|_| true).is_empty(), "two slots are enough");
        assert_eq!(reach.snapshot().relays.len(), 2);

        // A slot lost: another relay is asked, the lost one only after a while.
        let lost = reach.slots.get(&first[0]).map(|s| s.listener).unwrap();
        assert_eq!(reach.listener_closed(lost), Some(first[0]));
        let next = reach.relays_to_ask(|_| true);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0], first[0]);
        assert!(reach.relays_to_ask(|r| *r == first[0]).is_empty(), "the lost one waits");

        // Publicly reachable: no relay needed. A slot still being asked for is given up
        // only once its relay answered.
        reach.reserving(next[0], ListenerId::next(), circuit.clone());
        reach.confirmed(addr("/ip4/198.18.0.9/tcp/4001"));
        assert_eq!(reach.release_if_public().len(), 1, "the accepted one");
        assert!(reach.release_if_public().is_empty(), "the other is still being asked for");
        assert!(reach.accepted(next[0]));
        assert_eq!(reach.release_if_public().len(), 1);
        assert!(reach.relays_to_ask(|_| true).is_empty());
    }

    #[test]
    fn each_node_asks_the_relays_nearest_itself() {
        let relays: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let distance = |from: PeerId, to: PeerId| {
            libp2p::kad::KBucketKey::from(from).distance(&libp2p::kad::KBucketKey::from(to))
        };
        let mut picks = std::collections::HashSet::new();
        for _ in 0..32 {
            let local = PeerId::random();
            let mut reach = Reach::new(local, None, 2);
            reach.relays.extend(relays.iter().map(|r| (*r, Vec::new())));
            let asked = reach.relays_to_ask(|_| true);
            assert_eq!(asked.len(), 2);
            let farthest = asked.iter().map(|r| distance(local, *r)).max().unwrap();
            for other in relays.iter().filter(|r| !asked.contains(r)) {
                assert!(distance(local, *other) > farthest, "a nearer relay was passed over");
            }
            picks.extend(asked);
        }
        assert!(picks.len() > 2, "32 nodes all picked the same two of eight relays");
    }
}
