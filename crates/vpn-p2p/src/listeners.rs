//! Listen addresses on one specific IP, closed while the host lacks that IP.
//!
//! A listener bound to a specific address keeps its socket when the host loses the address
//! (a laptop that changes networks), and every dial that leaves from it (TCP's port reuse,
//! QUIC's shared socket) fails from then on: the node would never reach a peer again. So
//! the event loop watches the host's addresses: when the IP of a configured listen address
//! goes, its listeners are closed, so that dials leave from whatever address the host has
//! now, on a new port; when the IP comes back, the address is listened on again. Plain
//! state, driven by the event loop.

use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::core::transport::ListenerId;

use crate::dial_policy::ip_of;

/// The configured listen addresses on one specific IP, and whether each is listened on.
#[derive(Debug, Default)]
pub(crate) struct SpecificListeners {
    /// Each address, with its listener while it has one.
    addrs: Vec<(Multiaddr, Option<ListenerId>)>,
}

impl SpecificListeners {
    /// The addresses of `listening` (listener and address) that name one IP other than
    /// loopback (a wildcard listener follows the host's addresses by itself).
    pub(crate) fn new<'a>(
        listening: impl IntoIterator<Item = (ListenerId, &'a Multiaddr)>,
    ) -> Self {
        let specific = |addr: &Multiaddr| {
            ip_of(addr).is_some_and(|ip| !ip.is_unspecified() && !ip.is_loopback())
        };
        let addrs = listening
            .into_iter()
            .filter(|(_, addr)| specific(addr))
            .map(|(id, addr)| (addr.clone(), Some(id)))
            .collect();
        Self { addrs }
    }

    /// Whether there is anything to watch the host's addresses for.
    pub(crate) fn any(&self) -> bool {
        !self.addrs.is_empty()
    }

    /// The host lost `ip`: the listeners to close, with their addresses.
    pub(crate) fn ip_gone(&mut self, ip: IpAddr) -> Vec<(ListenerId, Multiaddr)> {
        let mut closing = Vec::new();
        for (addr, listener) in &mut self.addrs {
            if ip_of(addr) == Some(ip)
                && let Some(id) = listener.take()
            {
                closing.push((id, addr.clone()));
            }
        }
        closing
    }

    /// The host has `ip` again: the addresses to listen on anew.
    pub(crate) fn ip_back(&self, ip: IpAddr) -> Vec<Multiaddr> {
        let parked = self
            .addrs
            .iter()
            .filter(|(addr, listener)| listener.is_none() && ip_of(addr) == Some(ip));
        parked.map(|(addr, _)| addr.clone()).collect()
    }

    /// `addr` is listened on again, by `id`.
    pub(crate) fn listening(&mut self, addr: &Multiaddr, id: ListenerId) {
        if let Some((_, listener)) = self.addrs.iter_mut().find(|(a, _)| a == addr) {
            *listener = Some(id);
        }
    }

    /// Listener `id` closed, whatever the reason: its address waits for its IP to come
    /// back (the host's addresses are watched from the start, so one that is there now is
    /// reported again only after going away).
    pub(crate) fn closed(&mut self, id: ListenerId) -> bool {
        let entry = self.addrs.iter_mut().find(|(_, listener)| *listener == Some(id));
        entry.map(|(_, listener)| listener.take()).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_address_closes_with_its_ip_and_opens_again_with_it() {
        let (tcp, quic, any, lo): (Multiaddr, Multiaddr, Multiaddr, Multiaddr) = (
            "/ip4/198.18.0.1/tcp/4001".parse().unwrap(),
            "/ip4/198.18.0.1/udp/4001/quic-v1".parse().unwrap(),
            "/ip4/0.0.0.0/tcp/4002".parse().unwrap(),
            "/ip4/127.0.0.1/tcp/4003".parse().unwrap(),
        );
        let ids: Vec<ListenerId> = (0..5).map(|_| ListenerId::next()).collect();
        let mut listeners = SpecificListeners::new([
            (ids[0], &tcp),
            (ids[1], &quic),
            (ids[2], &any),
            (ids[3], &lo),
        ]);
        assert!(listeners.any());
        let (ip, other): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.11".parse().unwrap());
        assert!(listeners.ip_gone(other).is_empty());
        assert!(listeners.ip_back(ip).is_empty(), "listened on: nothing to open");
        assert_eq!(listeners.ip_gone(ip), [(ids[0], tcp.clone()), (ids[1], quic.clone())]);
        assert!(listeners.ip_gone(ip).is_empty(), "closed once");
        assert!(!listeners.closed(ids[0]), "already closed");
        assert_eq!(listeners.ip_back(ip), [tcp.clone(), quic.clone()]);
        listeners.listening(&tcp, ids[4]);
        assert_eq!(listeners.ip_back(ip), [quic]);
        assert!(listeners.closed(ids[4]));
        assert_eq!(listeners.ip_back(ip).len(), 2);
        // Wildcard and loopback listeners are not watched.
        assert!(!SpecificListeners::new([(ids[2], &any), (ids[3], &lo)]).any());
    }
}
