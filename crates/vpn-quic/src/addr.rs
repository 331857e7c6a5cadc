//! QUIC multiaddrs (`/ip4/…/udp/…/quic-v1[/p2p/…]`) to socket addresses and back.

use std::net::{IpAddr, SocketAddr};

use libp2p_core::Multiaddr;
use libp2p_core::multiaddr::Protocol;
use libp2p_identity::PeerId;

/// The socket address and peer ID a QUIC v1 multiaddr names; `None` for any other address.
pub fn socket_addr_of(addr: &Multiaddr) -> Option<(SocketAddr, Option<PeerId>)> {
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Udp(port) = parts.next()? else { return None };
    let Protocol::QuicV1 = parts.next()? else { return None };
    let peer = match parts.next() {
        None => None,
        Some(Protocol::P2p(peer)) => Some(peer),
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((SocketAddr::new(ip, port), peer))
}

/// The QUIC v1 multiaddr of `addr`.
pub fn multiaddr_of(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_addresses_and_only_those_convert() {
        let peer = PeerId::random();
        let a: Multiaddr = format!("/ip4/198.18.0.2/udp/4001/quic-v1/p2p/{peer}").parse().unwrap();
        assert_eq!(socket_addr_of(&a), Some(("198.18.0.2:4001".parse().unwrap(), Some(peer))));
        let b: Multiaddr = "/ip6/fd00::2/udp/9/quic-v1".parse().unwrap();
        let (socket, none) = socket_addr_of(&b).unwrap();
        assert_eq!((socket, none), ("[fd00::2]:9".parse().unwrap(), None));
        assert_eq!(multiaddr_of(socket), b);
        for other in
            ["/ip4/198.18.0.2/tcp/4001", "/ip4/198.18.0.2/udp/4001", "/dns/x/udp/1/quic-v1"]
        {
            assert_eq!(socket_addr_of(&other.parse().unwrap()), None, "{other}");
        }
        let relayed: Multiaddr =
            format!("/ip4/198.18.0.2/udp/4001/quic-v1/p2p/{peer}/p2p-circuit").parse().unwrap();
        assert_eq!(socket_addr_of(&relayed), None);
    }
}
