//! Which members to dial over QUIC, so that packets to them can ride datagrams.
//!
//! A member reached over TCP (or through a relay) gets a QUIC connection beside it at the
//! direct QUIC addresses it announces: the TCP connection keeps carrying streams, the QUIC
//! one carries datagrams. A dial that fails is tried again after a pause that doubles up to
//! [`MAX_PAUSE`]; a QUIC connection coming up resets it. Plain state, driven by the event
//! loop's tick.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::core::Multiaddr;
use libp2p::multiaddr::Protocol;

/// The pause after the first failed QUIC dial to a peer.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between QUIC dials to one peer.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(4);
/// Most QUIC addresses kept per peer.
const MAX_ADDRS: usize = 8;

/// Whether `addr` is a direct QUIC address (not through a relay).
pub(crate) fn is_direct_quic(addr: &Multiaddr) -> bool {
    let mut quic = false;
    for p in addr.iter() {
        match p {
            Protocol::QuicV1 => quic = true,
            Protocol::P2pCircuit => return false,
            _ => {}
        }
    }
    quic
}

/// Keeps the first `most` of `addrs` that are `wanted` as `peer`'s in `book` (none: the
/// peer leaves it).
pub(crate) fn keep_addrs(
    book: &mut HashMap<PeerId, Vec<Multiaddr>>,
    peer: PeerId,
    addrs: &[Multiaddr],
    wanted: fn(&Multiaddr) -> bool,
    most: usize,
) {
    let kept: Vec<Multiaddr> = addrs.iter().filter(|a| wanted(a)).take(most).cloned().collect();
    if kept.is_empty() {
        book.remove(&peer);
    } else {
        book.insert(peer, kept);
    }
}

/// When something may be tried again: a pause that doubles from `first` up to `max` with
/// each try.
#[derive(Debug)]
pub(crate) struct Schedule {
    next: Instant,
    pause: Duration,
}

impl Schedule {
    /// A schedule whose first try is due at `next`.
    pub(crate) fn at(next: Instant) -> Self {
        Self { next, pause: Duration::ZERO }
    }

    /// Whether a try is due at `now`; if so the next pause starts.
    pub(crate) fn try_now(&mut self, now: Instant, first: Duration, max: Duration) -> bool {
        if now < self.next {
            return false;
        }
        self.pause = (self.pause * 2).clamp(first, max);
        self.next = now + self.pause;
        true
    }
}

/// The QUIC addresses members announce, and when each may be dialed again.
#[derive(Debug, Default)]
pub(crate) struct QuicDials {
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    schedule: HashMap<PeerId, Schedule>,
}

impl QuicDials {
    /// `peer` announces `addrs` (all its listen addresses; the direct QUIC ones are kept).
    pub(crate) fn learned(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        keep_addrs(&mut self.addrs, peer, addrs, is_direct_quic, MAX_ADDRS);
    }

    /// The addresses to dial `peer` at now, if it has no QUIC connection (`has_quic`) and
    /// its pause is over; the next pause starts.
    pub(crate) fn due(
        &mut self,
        peer: PeerId,
        has_quic: bool,
        now: Instant,
    ) -> Option<Vec<Multiaddr>> {
        if has_quic {
            self.schedule.remove(&peer);
            return None;
        }
        let addrs = self.addrs.get(&peer)?;
        let schedule = self.schedule.entry(peer).or_insert_with(|| Schedule::at(now));
        schedule.try_now(now, FIRST_PAUSE, MAX_PAUSE).then(|| addrs.clone())
    }

    /// `peer` is gone: nothing of it is kept.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.addrs.remove(peer);
        self.schedule.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn only_direct_quic_addresses_are_dialed_and_pauses_double_to_the_limit() {
        let peer = PeerId::random();
        let mut dials = QuicDials::default();
        let start = Instant::now();
        assert_eq!(dials.due(peer, false, start), None, "nothing known: nothing to dial");
        let relay = PeerId::random();
        dials.learned(
            peer,
            &addrs(&[
                "/ip4/198.18.0.2/tcp/4001",
                "/ip4/198.18.0.2/udp/4001/quic-v1",
                &format!("/ip4/198.18.0.9/udp/4001/quic-v1/p2p/{relay}/p2p-circuit"),
            ]),
        );
        let quic = addrs(&["/ip4/198.18.0.2/udp/4001/quic-v1"]);
        assert_eq!(dials.due(peer, false, start), Some(quic.clone()));
        let mut at = start;
        let mut pauses = Vec::new();
        for _ in 0..5 {
            let mut wait = Duration::ZERO;
            while dials.due(peer, false, at + wait).is_none() {
                wait += Duration::from_millis(250);
            }
            pauses.push(wait);
            at += wait;
        }
        let secs = |s| Duration::from_secs(s);
        assert_eq!(pauses, [secs(1), secs(2), secs(4), secs(4), secs(4)]);
        // A QUIC connection resets the pause; without one, the next dial is due at once.
        assert_eq!(dials.due(peer, true, at), None);
        assert_eq!(dials.due(peer, false, at), Some(quic));
        dials.forget(&peer);
        assert_eq!(dials.due(peer, false, at + secs(10)), None);
    }
}
