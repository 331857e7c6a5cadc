//! [`QuicTransport`]: listening, dialing and hole punching over quinn endpoints.
//!
//! Each listen address is one UDP socket and one quinn endpoint that both accepts and
//! dials (so a dial that reuses the port leaves from the address peers and NATs know). A
//! dial with no listener of its address family uses one client endpoint per family. When
//! DCUtR makes this node the *listener* of a hole punch, the transport sends a few random
//! datagrams to the peer's address from the listening socket (opening our NAT's mapping)
//! and takes the connection the peer then dials from that address as the dial's result.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use if_watch::IfEvent;
use libp2p_core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p_core::{Endpoint, Multiaddr, Transport};
use libp2p_identity::{Keypair, PeerId};

use crate::addr::{multiaddr_of, socket_addr_of};
use crate::config::QuinnConfigs;
use crate::{Links, QuicConfig, QuicError, QuicMuxer};

/// Handshakes under way on one listener past which a new one from an address not proven
/// yet is answered with a Retry (QUIC address validation): a client at a real address
/// answers it with the token and goes on, a round trip later; Initials from forged
/// addresses cost a stateless reply and hold nothing.
pub const RETRY_ABOVE: usize = 16;

/// A connection being set up: the handshake, then the peer ID check.
pub type Upgrade = BoxFuture<'static, Result<(PeerId, QuicMuxer), QuicError>>;

/// A libp2p transport over quinn with datagrams on. See the module docs.
pub struct QuicTransport {
    configs: QuinnConfigs,
    handshake_timeout: Duration,
    links: Links,
    listeners: Vec<Listener>,
    /// Client endpoints by address family (`true`: IPv6), for dials no listener serves.
    dialers: HashMap<bool, quinn::Endpoint>,
    /// Hole punches waiting for the peer's connection from this address.
    punches: HashMap<SocketAddr, oneshot::Sender<Upgrade>>,
    waker: Option<Waker>,
}

impl QuicTransport {
    /// A transport proving `key`'s peer ID, registering every connection in `links`.
    pub fn new(key: &Keypair, config: &QuicConfig, links: Links) -> Result<Self, QuicError> {
        Ok(Self {
            configs: QuinnConfigs::new(key, config)?,
            handshake_timeout: config.handshake_timeout,
            links,
            listeners: Vec::new(),
            dialers: HashMap::new(),
            punches: HashMap::new(),
            waker: None,
        })
    }

    /// The links of this transport's connections.
    pub fn links(&self) -> &Links {
        &self.links
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The listener a dial to `to` leaves from: one of its family, on loopback for a
    /// loopback address and off it otherwise; spread over several by the address.
    fn listener_for(&self, to: &SocketAddr) -> Option<&Listener> {
        let fits = |l: &&Listener| {
            let ip = l.local.ip();
            !l.closed
                && ip.is_ipv6() == to.is_ipv6()
                && (ip.is_unspecified() || ip.is_loopback() == to.ip().is_loopback())
        };
        let candidates: Vec<&Listener> = self.listeners.iter().filter(fits).collect();
        let pick = (to.port() as usize) % candidates.len().max(1);
        candidates.get(pick).copied()
    }

    fn dialer(&mut self, v6: bool) -> Result<quinn::Endpoint, QuicError> {
        if let Some(endpoint) = self.dialers.get(&v6) {
            return Ok(endpoint.clone());
        }
        let any: IpAddr =
            if v6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
        let socket = udp_socket(SocketAddr::new(any, 0))?;
        let endpoint = endpoint(self.configs.endpoint.clone(), None, socket)?;
        self.dialers.insert(v6, endpoint.clone());
        Ok(endpoint)
    }

    /// Dials `to` as the hole punch's listener: punches from the listening socket and
    /// waits for the peer's connection from `to`.
    fn punch(&mut self, to: SocketAddr, peer: Option<PeerId>) -> Result<Upgrade, QuicError> {
        let listener = self.listener_for(&to).ok_or(QuicError::NoListener)?;
        let socket = listener.socket.try_clone()?;
        if self.punches.get(&to).is_some_and(|waiting| !waiting.is_canceled()) {
            return Err(QuicError::PunchInProgress(to));
        }
        let (tx, rx) = oneshot::channel();
        self.punches.insert(to, tx);
        let limit = self.handshake_timeout;
        Ok(async move {
            let punching = punch(socket, to);
            futures::pin_mut!(punching);
            let upgrade = tokio::time::timeout(limit, async {
                tokio::select! {
                    upgrade = rx => upgrade.map_err(|_| QuicError::HandshakeTimeout),
                    e = &mut punching => Err(e),
                }
            });
            let (remote, muxer) = upgrade.await.map_err(|_| QuicError::HandshakeTimeout)??.await?;
            match peer {
                Some(peer) if peer != remote => Err(QuicError::WrongPeer(Box::new((peer, remote)))),
                _ => Ok((remote, muxer)),
            }
        }
        .boxed())
    }
}

/// Sends a random datagram to `to` every 10-200 ms until dropped; returns the error that
/// stopped it.
async fn punch(socket: UdpSocket, to: SocketAddr) -> QuicError {
    let socket =
        match socket.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(socket)) {
            Ok(socket) => socket,
            Err(e) => return e.into(),
        };
    loop {
        let noise: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..)).take(64).collect();
        if let Err(e) = socket.send_to(&noise, to).await {
            return e.into();
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(10..=200))).await;
    }
}

/// Bytes of the kernel's buffers of one UDP socket, each way: a burst of a few thousand
/// datagrams waits there while the endpoint's task is busy, instead of being dropped (the
/// kernel's default, about 200 KiB, overflows within a millisecond at a gigabit).
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A UDP socket bound to `at`, with [`SOCKET_BUFFER`]-sized buffers: forced past the
/// system's limit where the process may (CAP_NET_ADMIN, which a node keeps), else as
/// large as the limit allows.
fn udp_socket(at: SocketAddr) -> Result<UdpSocket, QuicError> {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if at.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
    socket.bind(&at.into())?;
    Ok(socket.into())
}

fn endpoint(
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    socket: UdpSocket,
) -> Result<quinn::Endpoint, QuicError> {
    Ok(quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))?)
}

/// The handshake of `connecting` within `limit`, then the peer ID its certificate proves
/// (checked against `expected`), registered in `links`.
async fn handshake(
    connecting: quinn::Connecting,
    limit: Duration,
    links: Links,
    expected: Option<PeerId>,
) -> Result<(PeerId, QuicMuxer), QuicError> {
    let conn = tokio::time::timeout(limit, connecting)
        .await
        .map_err(|_| QuicError::HandshakeTimeout)?
        .map_err(QuicError::Connection)?;
    let peer = peer_of(&conn).inspect_err(|_| conn.close(1u32.into(), b"no certificate"))?;
    if let Some(expected) = expected.filter(|e| *e != peer) {
        conn.close(1u32.into(), b"wrong peer");
        return Err(QuicError::WrongPeer(Box::new((expected, peer))));
    }
    let registration = links.register(peer, conn.clone());
    Ok((peer, QuicMuxer::new(conn, registration)))
}

/// The peer ID the connection's TLS certificate proves (libp2p's TLS verifier checked the
/// certificate and its signature during the handshake).
fn peer_of(conn: &quinn::Connection) -> Result<PeerId, QuicError> {
    let identity = conn.peer_identity().ok_or(QuicError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<quinn::rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| QuicError::NoCertificate)?;
    let first = chain.first().ok_or(QuicError::NoCertificate)?;
    let certificate =
        libp2p_tls::certificate::parse(first).map_err(|_| QuicError::NoCertificate)?;
    Ok(certificate.peer_id())
}

impl Transport for QuicTransport {
    type Output = (PeerId, QuicMuxer);
    type Error = QuicError;
    type ListenerUpgrade = Upgrade;
    type Dial = Upgrade;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some((local, None)) = socket_addr_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let listener = Listener::bind(id, local, &self.configs, self.handshake_timeout)
            .map_err(TransportError::Other)?;
        // A dial of this family now leaves from the listening port.
        self.dialers.remove(&local.is_ipv6());
        self.listeners.push(listener);
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(listener) = self.listeners.iter_mut().find(|l| l.id == id) else { return false };
        listener.close();
        self.wake();
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some((to, peer)) = socket_addr_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if to.port() == 0 || to.ip().is_unspecified() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if opts.role == Endpoint::Listener && opts.port_use == PortUse::New {
            return self.punch(to, peer).map_err(TransportError::Other);
        }
        let endpoint = match (opts.port_use, self.listener_for(&to)) {
            (PortUse::Reuse, Some(listener)) => listener.endpoint.clone(),
            _ => self.dialer(to.is_ipv6()).map_err(TransportError::Other)?,
        };
        let connecting = endpoint
            .connect_with(self.configs.client.clone(), to, "l")
            .map_err(|e| TransportError::Other(QuicError::Connect(e)))?;
        Ok(handshake(connecting, self.handshake_timeout, self.links.clone(), peer).boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        let mut i = 0;
        while let Some(listener) = this.listeners.get_mut(i) {
            match listener.poll(cx, &this.links) {
                Poll::Ready(Some(TransportEvent::Incoming {
                    listener_id,
                    upgrade,
                    local_addr,
                    send_back_addr,
                })) => {
                    let from = socket_addr_of(&send_back_addr).map(|(a, _)| a);
                    let waiting = from.and_then(|from| this.punches.remove(&from));
                    let upgrade = match waiting {
                        // The hole punch waiting for this peer's connection takes it.
                        Some(tx) => match tx.send(upgrade) {
                            Ok(()) => continue,
                            Err(upgrade) => upgrade,
                        },
                        None => upgrade,
                    };
                    return Poll::Ready(TransportEvent::Incoming {
                        listener_id,
                        upgrade,
                        local_addr,
                        send_back_addr,
                    });
                }
                Poll::Ready(Some(event)) => return Poll::Ready(event),
                Poll::Ready(None) => {
                    this.listeners.remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
        this.punches.retain(|_, tx| !tx.is_canceled());
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One listening socket and its endpoint.
struct Listener {
    id: ListenerId,
    local: SocketAddr,
    endpoint: quinn::Endpoint,
    /// A second handle on the endpoint's socket, for hole punching.
    socket: UdpSocket,
    accept: BoxFuture<'static, Option<quinn::Incoming>>,
    handshake_timeout: Duration,
    /// Interface addresses, when listening on an unspecified address.
    interfaces: Option<if_watch::tokio::IfWatcher>,
    announced: HashSet<IpAddr>,
    events: VecDeque<TransportEvent<Upgrade, QuicError>>,
    closed: bool,
    /// Handshakes under way on this listener (see [`RETRY_ABOVE`]).
    handshakes: Arc<AtomicUsize>,
}

/// One handshake under way, counted until it ends or is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accepting(endpoint: &quinn::Endpoint) -> BoxFuture<'static, Option<quinn::Incoming>> {
    let endpoint = endpoint.clone();
    async move { endpoint.accept().await }.boxed()
}

impl Listener {
    fn bind(
        id: ListenerId,
        at: SocketAddr,
        configs: &QuinnConfigs,
        handshake_timeout: Duration,
    ) -> Result<Self, QuicError> {
        let socket = udp_socket(at)?;
        let local = socket.local_addr()?;
        let spare = socket.try_clone()?;
        let endpoint = endpoint(configs.endpoint.clone(), Some(configs.server.clone()), socket)?;
        let mut listener = Self {
            id,
            local,
            accept: accepting(&endpoint),
            endpoint,
            socket: spare,
            handshake_timeout,
            interfaces: None,
            announced: HashSet::new(),
            events: VecDeque::new(),
            closed: false,
            handshakes: Arc::default(),
        };
        if local.ip().is_unspecified() {
            listener.interfaces = Some(if_watch::tokio::IfWatcher::new()?);
        } else {
            listener.announce(local.ip(), true);
        }
        Ok(listener)
    }

    fn announce(&mut self, ip: IpAddr, up: bool) {
        let listen_addr = multiaddr_of(SocketAddr::new(ip, self.local.port()));
        let listener_id = self.id;
        let event = if up && self.announced.insert(ip) {
            TransportEvent::NewAddress { listener_id, listen_addr }
        } else if !up && self.announced.remove(&ip) {
            TransportEvent::AddressExpired { listener_id, listen_addr }
        } else {
            return;
        };
        self.events.push_back(event);
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.endpoint.close(0u32.into(), &[]);
        self.closed = true;
        self.events
            .push_back(TransportEvent::ListenerClosed { listener_id: self.id, reason: Ok(()) });
    }

    /// The next event; `None` once closed and every event was taken.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        links: &Links,
    ) -> Poll<Option<TransportEvent<Upgrade, QuicError>>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(Some(event));
            }
            if self.closed {
                return Poll::Ready(None);
            }
            if let Some(interfaces) = self.interfaces.as_mut()
                && let Poll::Ready(Some(event)) = interfaces.poll_next_unpin(cx)
            {
                match event {
                    Ok(IfEvent::Up(net)) if net.addr().is_ipv6() == self.local.is_ipv6() => {
                        self.announce(net.addr(), true)
                    }
                    Ok(IfEvent::Down(net)) => self.announce(net.addr(), false),
                    Ok(IfEvent::Up(_)) => {}
                    Err(error) => {
                        let error = QuicError::Io(error);
                        return Poll::Ready(Some(TransportEvent::ListenerError {
                            listener_id: self.id,
                            error,
                        }));
                    }
                }
                continue;
            }
            match self.accept.poll_unpin(cx) {
                Poll::Ready(Some(incoming)) => {
                    self.accept = accepting(&self.endpoint);
                    let from = incoming.remote_address();
                    let busy = self.handshakes.load(Ordering::Acquire) >= RETRY_ABOVE;
                    if busy && !incoming.remote_address_validated() && incoming.may_retry() {
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().ignore();
                        }
                        continue;
                    }
                    let connecting = match incoming.accept() {
                        Ok(connecting) => connecting,
                        Err(e) => {
                            tracing::debug!(%from, error = %e, "refused a QUIC connection");
                            continue;
                        }
                    };
                    let counted = InFlight::new(&self.handshakes);
                    let handshake =
                        handshake(connecting, self.handshake_timeout, links.clone(), None);
                    let upgrade = async move {
                        let _counted = counted;
                        handshake.await
                    }
                    .boxed();
                    return Poll::Ready(Some(TransportEvent::Incoming {
                        listener_id: self.id,
                        upgrade,
                        local_addr: multiaddr_of(self.local),
                        send_back_addr: multiaddr_of(from),
                    }));
                }
                Poll::Ready(None) => self.close(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures::future::poll_fn;
    use tokio::net::UdpSocket;

    use super::*;

    /// The Initial packet a client that never says more sends to `to`.
    fn silent_initial(client: &quinn::ClientConfig, to: SocketAddr) -> Vec<u8> {
        let config = Arc::new(quinn_proto::EndpointConfig::default());
        let mut endpoint = quinn_proto::Endpoint::new(config, None, true, None);
        let (_, mut conn) = endpoint.connect(Instant::now(), client.clone(), to, "l").unwrap();
        let mut packet = Vec::new();
        let sent = conn.poll_transmit(Instant::now(), 1, &mut packet).unwrap();
        packet.truncate(sent.size);
        packet
    }

    /// The long-header packet type of the first reply to `initial` sent from a new socket
    /// (0: Initial, 3: Retry); the socket is returned too, to keep its port taken.
    async fn first_reply(initial: &[u8], to: SocketAddr) -> (u8, UdpSocket) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(initial, to).await.unwrap();
        let mut reply = [0u8; 2048];
        let wait = Duration::from_secs(5);
        let (n, _) =
            tokio::time::timeout(wait, socket.recv_from(&mut reply)).await.unwrap().unwrap();
        assert!(n > 0 && reply[0] & 0x80 != 0, "a long-header reply");
        ((reply[0] >> 4) & 0x3, socket)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_limit_new_addresses_are_asked_to_prove_themselves_and_real_ones_get_in() {
        let config = QuicConfig::default().with_handshake_timeout(Duration::from_secs(30));
        let key = Keypair::generate_ed25519();
        let mut transport = QuicTransport::new(&key, &config, Links::new()).unwrap();
        let at = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
        transport.listen_on(ListenerId::next(), at).unwrap();
        let event = poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await;
        let TransportEvent::NewAddress { listen_addr, .. } = event else {
            panic!("the listener's address comes first")
        };
        let (listen, _) = socket_addr_of(&listen_addr).unwrap();
        let driver = tokio::spawn(async move {
            loop {
                let event = poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await;
                if let TransportEvent::Incoming { upgrade, .. } = event {
                    tokio::spawn(upgrade);
                }
            }
        });

        // Clients that send an Initial and nothing more hold handshakes until the limit.
        let client = QuinnConfigs::new(&Keypair::generate_ed25519(), &config).unwrap().client;
        let mut held = Vec::new();
        for _ in 0..RETRY_ABOVE {
            let (kind, socket) = first_reply(&silent_initial(&client, listen), listen).await;
            assert_eq!(kind, 0, "below the limit a handshake starts at once");
            held.push(socket);
        }
        let (kind, _socket) = first_reply(&silent_initial(&client, listen), listen).await;
        assert_eq!(kind, 3, "past the limit a new address is sent a Retry");

        // A client at a real address answers the Retry and gets in.
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client);
        let connected = endpoint.connect(listen, "l").unwrap().await;
        assert!(connected.is_ok(), "{connected:?}");
        driver.abort();
    }
}
