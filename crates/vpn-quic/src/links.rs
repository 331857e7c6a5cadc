//! The datagram side of every QUIC connection, by peer ID.
//!
//! A connection is registered when its handshake proves the peer ID and leaves when the
//! swarm drops it. It is *open* once the node admits the peer ([`Links::admit`]): only
//! then is it handed to the reader ([`Links::subscribe`]) and probed. It *carries packets*
//! while the peer answers the probes: a PING every [`PROBE_INTERVAL`], a link with no PONG
//! for [`PATH_TIMEOUT`] (plus the path's round trip) is down until one comes again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use libp2p_identity::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vpn_wire::{Datagram, DatagramError};

/// How often an open link is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A link whose last PONG is older than this (plus its round trip) carries no packets.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(1);

/// What a link's reader gets.
#[derive(Debug)]
pub enum Incoming {
    /// An IP packet, to be checked as any packet from the peer.
    Packet(Bytes),
    /// A datagram that was not understood (dropped; the caller counts it).
    Malformed(DatagramError),
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// Larger than the path carries now.
    #[error("larger than the {0} bytes a datagram carries now")]
    TooLarge(usize),
    /// The peer does not take datagrams.
    #[error("the peer takes no datagrams")]
    Unsupported,
}

struct Probe {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last PONG, plus one (0: none yet).
    last_pong: AtomicU64,
    /// Milliseconds since `epoch` when the link last carried packets (probes aside),
    /// plus one (0: never).
    last_packet: AtomicU64,
    nonce: AtomicU64,
    open: AtomicBool,
}

impl Probe {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn stamp(&self, at: &AtomicU64) {
        at.store(self.now() + 1, Ordering::Release);
    }

    fn since(&self, at: &AtomicU64) -> Option<Duration> {
        let last = at.load(Ordering::Acquire).checked_sub(1)?;
        Some(Duration::from_millis(self.now().saturating_sub(last)))
    }
}

/// One QUIC connection's datagrams, to a peer proven by its TLS certificate. Cheap to clone.
#[derive(Clone)]
pub struct DatagramLink {
    peer: PeerId,
    conn: quinn::Connection,
    probe: Arc<Probe>,
}

impl std::fmt::Debug for DatagramLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramLink")
            .field("peer", &self.peer)
            .field("remote", &self.conn.remote_address())
            .field("up", &self.is_up())
            .finish()
    }
}

impl DatagramLink {
    fn new(peer: PeerId, conn: quinn::Connection) -> Self {
        let probe = Probe {
            epoch: Instant::now(),
            last_pong: AtomicU64::new(0),
            last_packet: AtomicU64::new(0),
            nonce: AtomicU64::new(fastrand::u64(..)),
            open: AtomicBool::new(false),
        };
        Self { peer, conn, probe: Arc::new(probe) }
    }

    /// The peer at the other end.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> std::net::SocketAddr {
        self.conn.remote_address()
    }

    /// The connection's smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// How long since the peer last answered a probe (`None`: never).
    pub fn since_pong(&self) -> Option<Duration> {
        self.probe.since(&self.probe.last_pong)
    }

    /// How long since the link last carried packets either way (`None`: never).
    pub fn since_packet(&self) -> Option<Duration> {
        self.probe.since(&self.probe.last_packet)
    }

    /// Notes that packets went over the link now (the sender calls it once per batch).
    pub fn note_packets(&self) {
        self.probe.stamp(&self.probe.last_packet);
    }

    /// Whether packets go over this link now: open, and the peer answered a probe lately.
    pub fn is_up(&self) -> bool {
        self.probe.open.load(Ordering::Acquire)
            && self.is_open()
            && self.since_pong().is_some_and(|since| since < PATH_TIMEOUT + self.conn.rtt())
    }

    /// The largest datagram the path carries now (`None`: the peer takes none).
    pub fn max_datagram(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    /// Sends one datagram (an IP packet as it is), waiting while the connection's datagram
    /// buffer is full, so a fast sender is paced by the path instead of queueing.
    pub async fn send(&self, datagram: Bytes) -> Result<(), SendError> {
        self.conn.send_datagram_wait(datagram).await.map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => {
                SendError::TooLarge(self.conn.max_datagram_size().unwrap_or(0))
            }
            quinn::SendDatagramError::UnsupportedByPeer | quinn::SendDatagramError::Disabled => {
                SendError::Unsupported
            }
            quinn::SendDatagramError::ConnectionLost(_) => SendError::Closed,
        })
    }

    /// The next packet the peer sent; PINGs are answered and PONGs noted on the way.
    /// Errors: the connection closed.
    pub async fn recv(&self) -> Result<Incoming, SendError> {
        loop {
            let datagram = self.conn.read_datagram().await.map_err(|_| SendError::Closed)?;
            if let Some(incoming) = self.take(datagram) {
                // Once per wake-up: the batch read after it with `try_recv` is as recent.
                self.note_packets();
                return Ok(incoming);
            }
        }
    }

    /// [`DatagramLink::recv`] if a datagram is waiting now, without waiting.
    pub fn try_recv(&self) -> Option<Result<Incoming, SendError>> {
        loop {
            let datagram = match self.conn.read_datagram().now_or_never()? {
                Ok(datagram) => datagram,
                Err(_) => return Some(Err(SendError::Closed)),
            };
            if let Some(incoming) = self.take(datagram) {
                return Some(Ok(incoming));
            }
        }
    }

    fn take(&self, datagram: Bytes) -> Option<Incoming> {
        match Datagram::decode(datagram) {
            Ok(Datagram::Packet(packet)) => Some(Incoming::Packet(packet)),
            Ok(Datagram::Ping(nonce)) => {
                // An unanswered PING is one lost probe; the connection's fate is told
                // elsewhere.
                let _ = self.conn.send_datagram(Datagram::pong(nonce));
                None
            }
            Ok(Datagram::Pong(_)) => {
                self.probe.stamp(&self.probe.last_pong);
                None
            }
            Err(e) => Some(Incoming::Malformed(e)),
        }
    }

    /// Probes the link until its connection closes.
    async fn probe(self) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closed = self.conn.closed();
        futures::pin_mut!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => return,
                _ = tick.tick() => {
                    let nonce = self.probe.nonce.fetch_add(1, Ordering::Relaxed);
                    // A full buffer or a lost probe only delays the answer.
                    let _ = self.conn.send_datagram(Datagram::ping(nonce.to_be_bytes()));
                }
            }
        }
    }
}

#[derive(Default)]
struct Table {
    links: HashMap<PeerId, Vec<DatagramLink>>,
    admitted: HashSet<PeerId>,
    subscriber: Option<mpsc::UnboundedSender<DatagramLink>>,
}

impl Table {
    /// Opens `link` if its peer is admitted: it is probed and handed to the reader.
    fn open(&self, link: &DatagramLink) {
        if !self.admitted.contains(&link.peer) || link.probe.open.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(link.clone().probe());
        }
        if let Some(subscriber) = &self.subscriber {
            let _ = subscriber.send(link.clone());
        }
    }
}

/// Every QUIC connection's datagram link, by peer ID. Cheap to clone; clones share.
#[derive(Clone, Default)]
pub struct Links {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("peers", &self.lock().links.len()).finish()
    }
}

impl Links {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open links, each once, from now on (links open already are sent first). A new call
    /// replaces the receiver before it. Every link handed out must be read
    /// ([`DatagramLink::recv`]): that is where the peer's PINGs are answered and its PONGs
    /// noted, so an unread link is never up.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<DatagramLink> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut table = self.lock();
        for link in table.links.values().flatten() {
            if link.probe.open.load(Ordering::Acquire) {
                let _ = tx.send(link.clone());
            }
        }
        table.subscriber = Some(tx);
        rx
    }

    /// `peer` is proven a member: its links open.
    pub fn admit(&self, peer: PeerId) {
        let mut table = self.lock();
        table.admitted.insert(peer);
        for link in table.links.get(&peer).into_iter().flatten() {
            table.open(link);
        }
    }

    /// `peer` is no member now, or no longer connected: links it opens from now on stay
    /// shut until it is admitted again, and the open ones stop carrying packets.
    pub fn forget(&self, peer: &PeerId) {
        let mut table = self.lock();
        table.admitted.remove(peer);
        for link in table.links.get(peer).into_iter().flatten() {
            link.probe.open.store(false, Ordering::Release);
        }
    }

    /// The link packets to `peer` take now: the oldest that is open and up. Packets stay
    /// on one connection while it works: two peers often hold two QUIC connections (each
    /// dialed the other), and packets spread over both would reach the peer out of order
    /// (each connection is read on its own), which the tunnelled TCP takes for loss.
    pub fn best(&self, peer: &PeerId) -> Option<DatagramLink> {
        let table = self.lock();
        table.links.get(peer)?.iter().find(|l| l.is_up()).cloned()
    }

    /// Whether a link to `peer` carried packets within `within`: the connections to a
    /// peer whose traffic goes as datagrams are in use though no stream is open on them.
    pub fn carried_within(&self, peer: &PeerId, within: Duration) -> bool {
        let table = self.lock();
        let links = table.links.get(peer).into_iter().flatten();
        links.filter_map(DatagramLink::since_packet).any(|since| since < within)
    }

    /// Every link to `peer`.
    pub fn of(&self, peer: &PeerId) -> Vec<DatagramLink> {
        self.lock().links.get(peer).cloned().unwrap_or_default()
    }

    /// Registers a connection whose handshake proved `peer`; it leaves the table when the
    /// returned guard is dropped.
    pub(crate) fn register(&self, peer: PeerId, conn: quinn::Connection) -> Registration {
        let id = conn.stable_id();
        let link = DatagramLink::new(peer, conn);
        let mut table = self.lock();
        table.open(&link);
        table.links.entry(peer).or_default().push(link);
        Registration { links: self.clone(), peer, id }
    }
}

/// A connection's place in [`Links`], given up when the swarm drops the connection. The
/// connection is closed then too: the link's reader and prober hold handles on it, and
/// would otherwise keep a connection the swarm gave up open (and answering) for good.
pub(crate) struct Registration {
    links: Links,
    peer: PeerId,
    id: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut table = self.links.lock();
        if let Some(links) = table.links.get_mut(&self.peer) {
            for link in links.iter().filter(|l| l.conn.stable_id() == self.id) {
                link.conn.close(0u32.into(), b"");
            }
            links.retain(|l| l.conn.stable_id() != self.id);
            if links.is_empty() {
                table.links.remove(&self.peer);
            }
        }
    }
}
