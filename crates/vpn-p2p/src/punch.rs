//! Hole punches over UDP first.
//!
//! DCUtR tells the peer every address others have seen us at (the address candidates) and
//! both sides dial all of them at once; the first connection made wins and the other dials
//! stop. A punched TCP connection carries no datagrams, and a router that answers a stray
//! SYN with a RST stops a TCP punch outright, while nothing stops a UDP one. So while
//! packets ride datagrams, [`UdpFirst`] hands DCUtR our QUIC candidates and holds the TCP
//! ones back; if no QUIC candidate has come [`TCP_AFTER`] after the first TCP one (UDP
//! blocked on our side), the TCP ones are handed over, and a TCP punch is better than none.

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

use crate::datagram::is_direct_quic;

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
}
