//! Hole punches over UDP first.
//!
//! DCUtR tells the peer every address others have seen us at (the address candidates) and
//! both sides dial all of them at once; the first connection made wins and the other dials
//! stop. A punched TCP connection carries no datagrams, and a router that answers a stray
//! SYN with a RST stops a TCP punch outright, while nothing stops a UDP one. So while
//! packets ride datagrams, [`UdpFirst`] hands DCUtR our QUIC candidates and holds the TCP
//! ones back; if no QUIC candidate has come [`TCP_AFTER`] after the first TCP one (UDP
//! blocked on our side), the TCP ones are handed over, and a TCP punch is better than none.
//!
//! A punch that failed is tried again ([`Repunch`]): DCUtR punches once per relayed
//! connection, and a failure is not always for good. A router that answers a stray packet
//! (an ICMP "port unreachable") books the peer's early packet as a flow to itself, so our
//! own packets to the peer leave from another port than the one the peer aims at, for as
//! long as the peer keeps sending; once both sides have been quiet for a while the same
//! punch works. So a peer reached through relays only is dialed through a relay again
//! after [`REPUNCH_FIRST`], the pause doubling up to [`REPUNCH_MAX`]: the new relayed
//! connection starts a new punch, and is closed again when that one fails.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::NewExternalAddrCandidate;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

use crate::datagram::{Schedule, is_direct_quic, keep_addrs};
use crate::reach::is_circuit;

/// How long TCP candidates wait for a QUIC one before they are handed over anyway.
pub(crate) const TCP_AFTER: Duration = Duration::from_secs(20);
/// Most TCP candidates held back.
const HELD: usize = 16;

/// Which address candidates reach the wrapped behaviour, and when. Plain state.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    /// Whether TCP candidates are held back at all.
    udp_first: bool,
    /// TCP candidates held back, and when the first came.
    held: Vec<Multiaddr>,
    since: Option<Instant>,
    quic_seen: bool,
}

impl Candidates {
    /// Whether `addr`, a new candidate, goes to the behaviour now (else it is held).
    pub(crate) fn admit(&mut self, addr: &Multiaddr, now: Instant) -> bool {
        if !self.udp_first {
            return true;
        }
        if is_direct_quic(addr) {
            self.quic_seen = true;
            self.held.clear();
            return true;
        }
        if self.quic_seen {
            return false;
        }
        self.since.get_or_insert(now);
        if self.held.len() < HELD && !self.held.contains(addr) {
            self.held.push(addr.clone());
        }
        false
    }

    /// The held TCP candidates to hand over now: all of them once [`TCP_AFTER`] has passed
    /// with no QUIC candidate.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Multiaddr> {
        match self.since {
            Some(since) if !self.quic_seen && now.duration_since(since) >= TCP_AFTER => {
                self.since = None;
                std::mem::take(&mut self.held)
            }
            _ => Vec::new(),
        }
    }
}

/// The pause before a failed hole punch is tried again: longer than a NAT keeps the state
/// of a flow that got no answer (30 s on Linux), so both sides' mappings start afresh.
pub(crate) const REPUNCH_FIRST: Duration = Duration::from_secs(40);
/// The longest pause between punches to one peer.
pub(crate) const REPUNCH_MAX: Duration = Duration::from_secs(600);
/// Most relayed addresses kept per peer.
const RELAYED_ADDRS: usize = 8;

/// Which peers to punch a hole to again, and through which relays. Plain state.
#[derive(Debug, Default)]
pub(crate) struct Repunch {
    /// The relayed addresses peers announce.
    relayed: HashMap<PeerId, Vec<Multiaddr>>,
    /// Peers whose punch failed, and when to try again.
    schedule: HashMap<PeerId, Schedule>,
    /// The relayed connection made for a new punch, by peer.
    probes: HashMap<PeerId, ConnectionId>,
}

impl Repunch {
    /// `peer` announces `addrs` (all its listen addresses; the relayed ones are kept).
    pub(crate) fn learned(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        keep_addrs(&mut self.relayed, peer, addrs, is_circuit, RELAYED_ADDRS);
    }

    /// A punch to `peer` failed: one is tried again after the pause (if none is due
    /// already). Returns the connection made for that punch, to be closed.
    pub(crate) fn failed(&mut self, peer: PeerId, now: Instant) -> Option<ConnectionId> {
        self.schedule.entry(peer).or_insert_with(|| {
            let mut schedule = Schedule::at(now);
            schedule.try_now(now, REPUNCH_FIRST, REPUNCH_MAX);
            schedule
        });
        self.probes.remove(&peer)
    }

    /// The relayed addresses to dial `peer` at now for a new punch, if its punch failed,
    /// it is still reached through relays only (`relayed_only`) and its pause is over.
    pub(crate) fn due(
        &mut self,
        peer: PeerId,
        relayed_only: bool,
        now: Instant,
    ) -> Option<Vec<Multiaddr>> {
        if !relayed_only {
            self.schedule.remove(&peer);
            self.probes.remove(&peer);
            return None;
        }
        let addrs = self.relayed.get(&peer)?;
        let schedule = self.schedule.get_mut(&peer)?;
        schedule.try_now(now, REPUNCH_FIRST, REPUNCH_MAX).then(|| addrs.clone())
    }

    /// The dial for `peer`'s new punch made connection `id` (or will).
    pub(crate) fn probing(&mut self, peer: PeerId, id: ConnectionId) {
        self.probes.insert(peer, id);
    }

    /// Whether `id` is the connection made for a new punch to `peer`.
    pub(crate) fn is_probe(&self, peer: &PeerId, id: ConnectionId) -> bool {
        self.probes.get(peer) == Some(&id)
    }

    /// `peer` is gone: nothing of it is kept.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.relayed.remove(peer);
        self.schedule.remove(peer);
        self.probes.remove(peer);
    }
}

/// Wraps DCUtR, handing it address candidates UDP first (see the module docs).
pub(crate) struct UdpFirst<B> {
    pub(crate) inner: B,
    candidates: Candidates,
}

impl<B> UdpFirst<B> {
    /// Wraps `inner`; with `udp_first` off, every candidate passes at once.
    pub(crate) fn new(inner: B, udp_first: bool) -> Self {
        Self { inner, candidates: Candidates { udp_first, ..Candidates::default() } }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for UdpFirst<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    crate::wrap::pass_connections_through!();

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::NewExternalAddrCandidate(NewExternalAddrCandidate { addr }) => {
                if self.candidates.admit(addr, Instant::now()) {
                    self.inner.on_swarm_event(event);
                }
            }
            other => self.inner.on_swarm_event(other),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        for addr in self.candidates.due(Instant::now()) {
            let event = NewExternalAddrCandidate { addr: &addr };
            self.inner.on_swarm_event(FromSwarm::NewExternalAddrCandidate(event));
        }
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_candidates_pass_and_tcp_ones_wait_for_none_to_come() {
        let tcp: Multiaddr = "/ip4/198.18.0.11/tcp/40123".parse().unwrap();
        let quic: Multiaddr = "/ip4/198.18.0.11/udp/40999/quic-v1".parse().unwrap();
        let start = Instant::now();
        let held = || Candidates { udp_first: true, ..Candidates::default() };
        // Off: everything passes.
        assert!(Candidates::default().admit(&tcp, start));
        // A QUIC candidate: TCP ones are held for good.
        let mut c = held();
        assert!(!c.admit(&tcp, start));
        assert!(c.admit(&quic, start));
        assert!(!c.admit(&tcp, start));
        assert!(c.due(start + TCP_AFTER * 2).is_empty());
        // None: the TCP ones go over once TCP_AFTER has passed, once.
        let mut c = held();
        assert!(!c.admit(&tcp, start));
        assert!(c.due(start + TCP_AFTER / 2).is_empty());
        assert_eq!(c.due(start + TCP_AFTER), vec![tcp.clone()]);
        assert!(c.due(start + TCP_AFTER * 3).is_empty());
    }

    #[test]
    fn a_failed_punch_is_tried_again_through_a_relay_after_a_doubling_pause() {
        let peer = PeerId::random();
        let relay = PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}/p2p-circuit").parse().unwrap();
        let direct: Multiaddr = "/ip4/198.18.0.11/udp/4001/quic-v1".parse().unwrap();
        let start = Instant::now();
        let mut r = Repunch::default();
        r.learned(peer, &[direct, circuit.clone()]);
        assert_eq!(r.due(peer, true, start), None, "no punch failed: nothing to do");
        assert_eq!(r.failed(peer, start), None);
        assert_eq!(r.due(peer, true, start + REPUNCH_FIRST / 2), None);
        assert_eq!(r.due(peer, true, start + REPUNCH_FIRST), Some(vec![circuit.clone()]));
        let probe = ConnectionId::new_unchecked(7);
        r.probing(peer, probe);
        assert!(r.is_probe(&peer, probe));
        // That punch fails too: its connection is handed back to close, the pause doubles.
        let again = start + REPUNCH_FIRST;
        assert_eq!(r.failed(peer, again), Some(probe));
        assert!(!r.is_probe(&peer, probe));
        assert_eq!(r.due(peer, true, again + REPUNCH_FIRST), None);
        assert_eq!(r.due(peer, true, again + REPUNCH_FIRST * 2), Some(vec![circuit.clone()]));
        // A direct connection ends it; so does the peer leaving.
        assert_eq!(r.due(peer, false, again + REPUNCH_MAX * 2), None);
        assert_eq!(r.due(peer, true, again + REPUNCH_MAX * 4), None);
        r.failed(peer, start);
        r.forget(&peer);
        assert_eq!(r.due(peer, true, start + REPUNCH_MAX * 2), None);
    }
}
