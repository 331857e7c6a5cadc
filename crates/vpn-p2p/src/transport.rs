//! The swarm's transport: TCP + Noise + yamux and QUIC v1, one of them preferred.
//!
//! A peer that can be dialed both ways is dialed both ways at once (libp2p dials a peer's
//! addresses concurrently and keeps the first connection), but a dial over the transport
//! that is not preferred starts [`HEAD_START`] later. The preferred transport wins whenever
//! it connects promptly; when it is blocked (a firewall that drops UDP, say) the other
//! costs only the head start.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{Multiaddr, PeerId, Transport, noise, tcp, yamux};
use vpn_config::Transport as Kind;
use vpn_quic::{Links, QuicConfig, QuicTransport};

use crate::dial_policy::DialPolicy;

/// How much later a dial over the transport that is not preferred starts.
pub const HEAD_START: Duration = Duration::from_millis(500);

/// The transport an address dials over, if it is one of ours.
pub fn kind_of(addr: &Multiaddr) -> Option<Kind> {
    addr.iter().find_map(|p| match p {
        Protocol::QuicV1 => Some(Kind::Quic),
        Protocol::Tcp(_) => Some(Kind::Tcp),
        _ => None,
    })
}

/// Whether this host has a route to the IP address `addr` starts with (asked of the kernel
/// by connecting a UDP socket, which sends nothing). Anything else counts as routable.
fn routable(addr: &Multiaddr) -> bool {
    let Some(ip) = crate::dial_policy::ip_of(addr) else { return true };
    let any: std::net::IpAddr = match ip {
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let Ok(socket) = std::net::UdpSocket::bind((any, 0)) else { return true };
    match socket.connect((ip, 9)) {
        Ok(()) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NetworkUnreachable,
    }
}

/// Why the transport could not be built (a Noise or TLS key could not be made).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// TCP + Noise + yamux and QUIC v1 (ours, with datagrams, its connections' links kept in
/// `links`), dialing `preferred` first.
pub fn build(
    key: &Keypair,
    preferred: Kind,
    psk: Option<PreSharedKey>,
    links: Links,
    policy: Arc<DialPolicy>,
) -> Result<HeadStart<Boxed<(PeerId, StreamMuxerBox)>>, BuildError> {
    let socket = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    if let Some(psk) = psk {
        // A private network: the key's handshake comes before anything else on TCP, and
        // QUIC (which has no place for it) is not offered.
        let private = socket
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed();
        return Ok(HeadStart::new(private, Kind::Tcp, policy));
    }
    let tcp = socket
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let quic = QuicTransport::new(key, &QuicConfig::default(), links)?
        .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)));
    let both = tcp.or_transport(quic).map(|either, _| either.into_inner()).boxed();
    Ok(HeadStart::new(both, preferred, policy))
}

/// A transport whose dials over the kind that is not `preferred` wait [`HEAD_START`]
/// before they begin (both TCP and QUIC connect only once their dial is polled), and
/// that dials only what its [`DialPolicy`] lets it.
pub struct HeadStart<T> {
    inner: T,
    preferred: Kind,
    policy: Arc<DialPolicy>,
}

impl<T> HeadStart<T> {
    /// Wraps `inner`, preferring `preferred`, dialing what `policy` lets it.
    pub fn new(inner: T, preferred: Kind, policy: Arc<DialPolicy>) -> Self {
        Self { inner, preferred, policy }
    }
}

impl<T> Transport for HeadStart<T>
where
    T: Transport + Unpin,
    T::Dial: Send + 'static,
{
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<T::Output, T::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        if kind_of(&addr) == Some(Kind::Quic) && !routable(&addr) {
            // TCP fails at once without a route; QUIC would wait out the dial timeout,
            // holding back the dials that could reach the peer (through a relay, say).
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let Ok(place) = self.policy.begin(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let later = kind_of(&addr).is_some_and(|kind| kind != self.preferred);
        let dial = self.inner.dial(addr, opts)?;
        Ok(async move {
            let _place = place;
            if later {
                tokio::time::sleep(HEAD_START).await;
            }
            dial.await
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use libp2p::core::Endpoint;
    use libp2p::core::transport::PortUse;
    use tokio::time::Instant;

    use super::*;

    /// A transport whose dials record when they begin and never finish.
    struct Recorder {
        began: Arc<Mutex<Vec<(Multiaddr, Instant)>>>,
    }

    impl Transport for Recorder {
        type Output = ();
        type Error = std::io::Error;
        type ListenerUpgrade = futures::future::Pending<Result<(), std::io::Error>>;
        type Dial = BoxFuture<'static, Result<(), std::io::Error>>;

        fn listen_on(
            &mut self,
            _: ListenerId,
            a: Multiaddr,
        ) -> Result<(), TransportError<Self::Error>> {
            Err(TransportError::MultiaddrNotSupported(a))
        }

        fn remove_listener(&mut self, _: ListenerId) -> bool {
            false
        }

        fn dial(
            &mut self,
            addr: Multiaddr,
            _: DialOpts,
        ) -> Result<Self::Dial, TransportError<Self::Error>> {
            let began = self.began.clone();
            Ok(async move {
                began.lock().unwrap().push((addr, Instant::now()));
                futures::future::pending().await
            }
            .boxed())
        }

        fn poll(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
            Poll::Pending
        }
    }

    fn opts() -> DialOpts {
        DialOpts { role: Endpoint::Dialer, port_use: PortUse::Reuse }
    }

    #[tokio::test(start_paused = true)]
    async fn the_other_transport_dials_after_the_head_start() {
        for preferred in [Kind::Tcp, Kind::Quic] {
            let began = Arc::new(Mutex::new(Vec::new()));
            let policy = Arc::new(DialPolicy::new(&[], Vec::new(), None));
            let mut transport =
                HeadStart::new(Recorder { began: began.clone() }, preferred, policy);
            let tcp: Multiaddr = "/ip4/198.18.0.2/tcp/4001".parse().unwrap();
            let quic: Multiaddr = "/ip4/198.18.0.2/udp/4001/quic-v1".parse().unwrap();
            let start = Instant::now();
            let dials =
                [transport.dial(tcp, opts()).unwrap(), transport.dial(quic, opts()).unwrap()];
            let all = futures::future::select_all(dials);
            let _ = tokio::time::timeout(HEAD_START * 2, all).await;
            let began = began.lock().unwrap().clone();
            let at = |kind| {
                began.iter().find(|(a, _)| kind_of(a) == Some(kind)).map(|(_, t)| *t - start)
            };
            let other = if preferred == Kind::Tcp { Kind::Quic } else { Kind::Tcp };
            assert_eq!(at(preferred), Some(Duration::ZERO), "{preferred:?} dials at once");
            assert_eq!(at(other), Some(HEAD_START), "{other:?} waits its turn");
        }
    }

    #[test]
    fn what_the_policy_refuses_is_never_dialed() {
        let began = Arc::new(Mutex::new(Vec::new()));
        let overlay = vec!["100.64.0.0/10".parse().unwrap()];
        let policy = Arc::new(DialPolicy::new(&[], overlay, None));
        let mut transport = HeadStart::new(Recorder { began: began.clone() }, Kind::Tcp, policy);
        for refused in ["/ip4/127.0.0.1/tcp/22", "/ip4/10.0.0.1/tcp/80", "/ip4/100.64.0.2/tcp/4001"]
        {
            let dial = transport.dial(refused.parse().unwrap(), opts());
            assert!(matches!(dial, Err(TransportError::MultiaddrNotSupported(_))), "{refused}");
        }
        assert!(transport.dial("/ip4/198.18.0.2/tcp/4001".parse().unwrap(), opts()).is_ok());
    }

    #[test]
    fn addresses_name_their_transport() {
        let kind = |a: &str| kind_of(&a.parse().unwrap());
        assert_eq!(
            kind(
                "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
            ),
            Some(Kind::Tcp)
        );
        assert_eq!(kind("/ip6/fd00::2/udp/4001/quic-v1"), Some(Kind::Quic));
        assert_eq!(kind("/ip4/198.18.0.2/udp/4001"), None);
    }
}
