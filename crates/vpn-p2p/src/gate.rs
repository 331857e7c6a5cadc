//! The membership gate: protocols behind it (Kademlia, identify, ping, VPN streams) run on a
//! connection only once its peer is proven a member. Until then the peer's streams to them
//! are refused at negotiation and ours are not opened; only what lies outside the gate (the
//! membership exchange) runs. The gate also keeps unproven connections few: at most
//! [`GateLimits::unproven`] in all and [`GateLimits::unproven_per_ip`] from one address (an
//! IPv6 /64), so strangers can never take the slots members need; and it shares the
//! incoming handshakes fairly among their sources ([`crate::handshakes`]).
//!
//! Each direction opens on its own: inbound once we have checked the peer (before we answer
//! its request, so its first stream finds us open), outbound once the peer has accepted us
//! too (so our first stream finds it open). Proof belongs to the peer, not the connection:
//! every connection of a proven peer is open, until its last one closes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::task::{Context, Poll};

use either::Either;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, ConnectionHandler, ConnectionHandlerEvent, DialUpgradeError,
    FullyNegotiatedInbound, FullyNegotiatedOutbound, ListenUpgradeError, SendWrapper,
    SubstreamProtocol,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dial_policy::{DialPolicy, ip_of, source_of};
use crate::handshakes::Handshakes;
use crate::reach::is_circuit;
use crate::{Admission, PeerRefusal};

/// Most confirmed addresses kept until the event loop takes them.
const MAX_CONFIRMED: usize = 8;

/// How many unproven connections the gate lets in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GateLimits {
    /// Unproven connections in all.
    pub(crate) unproven: usize,
    /// Unproven connections from one IP address.
    pub(crate) unproven_per_ip: usize,
    /// Incoming handshakes at once from one source.
    pub(crate) pending_per_source: usize,
    /// Incoming handshakes at once from sources not known as members'.
    pub(crate) pending_strangers: usize,
}

/// Why the gate refused a connection.
#[derive(Debug, thiserror::Error)]
#[error("too many connections not proven members yet ({0})")]
pub(crate) struct TooManyUnproven(&'static str);

/// Which ways a connection is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Open {
    /// The peer's streams to the protocols behind the gate are taken.
    pub(crate) inbound: bool,
    /// Ours to the peer are opened.
    pub(crate) outbound: bool,
}

struct Tracked {
    peer: PeerId,
    ip: Option<IpAddr>,
    /// Shared with the connection's handler, which reads it for every inbound stream: the
    /// inbound side opens the moment we check the peer, before our answer goes out.
    inbound: Arc<AtomicBool>,
}

/// Wraps the behaviours that only members may use.
pub(crate) struct Gate<B> {
    pub(crate) inner: B,
    limits: GateLimits,
    /// Peers we proved members (inbound open).
    checked: HashSet<PeerId>,
    /// Peers that accepted us (with `checked`: outbound open).
    accepted: HashSet<PeerId>,
    connections: HashMap<ConnectionId, Tracked>,
    notify: Vec<(PeerId, ConnectionId, Open)>,
    /// Addresses of ours AutoNAT confirmed, kept from the swarm until the event loop takes
    /// them: it publishes them only while members vouch for them ([`crate::vouch`]).
    confirmed: Vec<Multiaddr>,
    /// Who is a member: a peer it knows by its ID alone (configured, or certified before)
    /// is proven the moment it connects and takes no unproven slot.
    admission: Option<Arc<dyn Admission>>,
    /// Incoming handshakes under way, by source.
    handshakes: Handshakes,
    /// Which sources are members' (their handshakes are let in first).
    policy: Arc<DialPolicy>,
}

impl<B> Gate<B> {
    pub(crate) fn new(
        inner: B,
        limits: GateLimits,
        admission: Option<Arc<dyn Admission>>,
        policy: Arc<DialPolicy>,
    ) -> Self {
        Self {
            inner,
            handshakes: Handshakes::new(limits.pending_per_source, limits.pending_strangers),
            policy,
            limits,
            checked: HashSet::new(),
            accepted: HashSet::new(),
            connections: HashMap::new(),
            notify: Vec::new(),
            confirmed: Vec::new(),
            admission,
        }
    }

    fn open_of(&self, peer: &PeerId) -> Open {
        let inbound = self.checked.contains(peer);
        Open { inbound, outbound: inbound && self.accepted.contains(peer) }
    }

    /// Takes the addresses of ours AutoNAT confirmed since the last call.
    pub(crate) fn take_confirmed(&mut self) -> Vec<Multiaddr> {
        std::mem::take(&mut self.confirmed)
    }

    /// Whether `peer` is proven and has accepted us: everything runs.
    pub(crate) fn is_open(&self, peer: &PeerId) -> bool {
        self.open_of(peer).outbound
    }

    /// We proved `peer` a member (while it is connected). Returns whether that opened it
    /// both ways.
    pub(crate) fn checked(&mut self, peer: PeerId) -> bool {
        let connected = self.connections.values().any(|c| c.peer == peer);
        connected && self.checked.insert(peer) && self.tell(peer)
    }

    /// `peer` accepted us. Returns whether that opened it both ways.
    pub(crate) fn accepted(&mut self, peer: PeerId) -> bool {
        self.accepted.insert(peer) && self.tell(peer)
    }

    /// `peer` is no member any more (a reload removed it, its certificate was revoked):
    /// its connections are to be closed by the caller; new ones start shut.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.checked.remove(peer);
        self.accepted.remove(peer);
        for conn in self.connections.values().filter(|c| c.peer == *peer) {
            conn.inbound.store(false, Ordering::Release);
        }
    }

    /// Unproven connections now, and from `ip`.
    fn unproven(&self, ip: Option<IpAddr>) -> (usize, usize) {
        let unproven = self.connections.values().filter(|c| !self.checked.contains(&c.peer));
        let source = ip.map(source_of);
        unproven.fold((0, 0), |(all, same), c| {
            (all + 1, same + usize::from(source.is_some() && c.ip.map(source_of) == source))
        })
    }

    /// Tells `peer`'s connections how they are open now; returns whether both ways.
    fn tell(&mut self, peer: PeerId) -> bool {
        let open = self.open_of(&peer);
        for (id, conn) in &self.connections {
            if conn.peer == peer {
                conn.inbound.store(open.inbound, Ordering::Release);
                self.notify.push((peer, *id, open));
            }
        }
        open.outbound
    }

    /// Whether a new connection to `peer` may be taken, and how open it starts. It is
    /// counted from now on.
    fn admit(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        remote: &Multiaddr,
        inbound: bool,
    ) -> Result<(Open, Arc<AtomicBool>), ConnectionDenied> {
        let ip = ip_of(remote);
        if !self.checked.contains(&peer)
            && self.admission.as_ref().is_none_or(|a| a.admit(&peer, &[]).is_ok())
        {
            self.checked.insert(peer);
        }
        let open = self.open_of(&peer);
        if inbound && !open.inbound {
            let (all, same) = self.unproven(ip);
            let over = if all >= self.limits.unproven {
                Some("in all")
            } else if same >= self.limits.unproven_per_ip {
                Some("from one address")
            } else {
                None
            };
            if let Some(over) = over {
                if let Some(admission) = &self.admission {
                    admission.refused(&peer, PeerRefusal::Crowded);
                }
                return Err(ConnectionDenied::new(TooManyUnproven(over)));
            }
        }
        let flag = Arc::new(AtomicBool::new(open.inbound));
        self.connections.insert(id, Tracked { peer, ip, inbound: flag.clone() });
        Ok((open, flag))
    }

    /// The handler of a connection `admit` took, around the inner behaviours' one (which
    /// never refuse; if one did, the connection is forgotten again).
    fn handler<H>(
        &mut self,
        id: ConnectionId,
        admitted: (Open, Arc<AtomicBool>),
        inner: Result<H, ConnectionDenied>,
    ) -> Result<GateHandler<H>, ConnectionDenied> {
        let (open, inbound) = admitted;
        match inner {
            Ok(inner) => Ok(GateHandler { inner, open, inbound }),
            Err(denied) => {
                self.connections.remove(&id);
                Err(denied)
            }
        }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gate<B> {
    type ConnectionHandler = GateHandler<B::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let ip = ip_of(remote);
        let known = ip.is_some_and(|ip| self.policy.is_known(ip));
        self.handshakes.begin(id, ip, known).map_err(ConnectionDenied::new)?;
        let taken = self.inner.handle_pending_inbound_connection(id, local, remote);
        if taken.is_err() {
            self.handshakes.end(id);
        }
        taken
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // The gate first: a connection it refuses never reaches the inner behaviours, which
        // would keep it in their books (no close event follows a refusal).
        let admitted = self.admit(id, peer, remote, true)?;
        let inner = self.inner.handle_established_inbound_connection(id, peer, local, remote);
        self.handler(id, admitted, inner)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let admitted = self.admit(id, peer, addr, false)?;
        let inner =
            self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use);
        self.handler(id, admitted, inner)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A connection a behaviour asked after the gate refused ends as a failure.
        match &event {
            FromSwarm::ListenFailure(failure) => {
                self.handshakes.end(failure.connection_id);
                self.connections.remove(&failure.connection_id);
            }
            FromSwarm::ConnectionEstablished(established) => {
                self.handshakes.end(established.connection_id);
            }
            FromSwarm::DialFailure(failure) => {
                self.connections.remove(&failure.connection_id);
            }
            _ => {}
        }
        if let FromSwarm::ConnectionClosed(closed) = &event {
            self.connections.remove(&closed.connection_id);
            if closed.remaining_established == 0 {
                // Proof is asked again on the next connection: the peer may have restarted
                // with another configuration, or its certificate may have run out.
                self.forget(&closed.peer_id);
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, id, open)) = self.notify.pop() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(id),
                event: Either::Right(open),
            });
        }
        loop {
            match self.inner.poll(cx) {
                // Relay slots confirm their own (relayed) addresses: those pass.
                Poll::Ready(ToSwarm::ExternalAddrConfirmed(addr)) if !is_circuit(&addr) => {
                    if self.confirmed.len() < MAX_CONFIRMED {
                        self.confirmed.push(addr);
                    }
                }
                other => return other.map(|event| event.map_in(Either::Left)),
            }
        }
    }
}

/// The handler of one connection: the inner protocols' handler, and which ways it is open.
pub(crate) struct GateHandler<H> {
    inner: H,
    /// Which ways it is open, as the behaviour last said (the outbound side goes by it).
    open: Open,
    /// Whether the peer's streams are taken, as the behaviour sets it (at once).
    inbound: Arc<AtomicBool>,
}

impl<H: ConnectionHandler> ConnectionHandler for GateHandler<H> {
    type FromBehaviour = Either<H::FromBehaviour, Open>;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = Either<SendWrapper<H::InboundProtocol>, SendWrapper<DeniedUpgrade>>;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = Either<H::InboundOpenInfo, ()>;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        if self.inbound.load(Ordering::Acquire) {
            self.inner
                .listen_protocol()
                .map_upgrade(|u| Either::Left(SendWrapper(u)))
                .map_info(Either::Left)
        } else {
            SubstreamProtocol::new(Either::Right(SendWrapper(DeniedUpgrade)), Either::Right(()))
        }
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            // Requests of the protocols behind the gate wait in their handler until it opens.
            Either::Left(event) => self.inner.on_behaviour_event(event),
            Either::Right(open) => self.open = open,
        }
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if !self.open.outbound {
            // Polled again when an event (the opening) arrives.
            return Poll::Pending;
        }
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        let inner = &mut self.inner;
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info }) => {
                if let (futures::future::Either::Left(protocol), Either::Left(info)) =
                    (protocol, info)
                {
                    inner.on_connection_event(ConnectionEvent::FullyNegotiatedInbound(
                        FullyNegotiatedInbound { protocol, info },
                    ));
                }
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error }) => {
                // A refused stream (the gate was shut) concerns no inner protocol.
                if let (Either::Left(info), Either::Left(error)) = (info, error) {
                    inner.on_connection_event(ConnectionEvent::ListenUpgradeError(
                        ListenUpgradeError { info, error },
                    ));
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol,
                info,
            }) => inner.on_connection_event(ConnectionEvent::FullyNegotiatedOutbound(
                FullyNegotiatedOutbound { protocol, info },
            )),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => inner
                .on_connection_event(ConnectionEvent::DialUpgradeError(DialUpgradeError {
                    info,
                    error,
                })),
            ConnectionEvent::AddressChange(change) => {
                inner.on_connection_event(ConnectionEvent::AddressChange(change))
            }
            ConnectionEvent::LocalProtocolsChange(change) => {
                inner.on_connection_event(ConnectionEvent::LocalProtocolsChange(change))
            }
            ConnectionEvent::RemoteProtocolsChange(change) => {
                inner.on_connection_event(ConnectionEvent::RemoteProtocolsChange(change))
            }
            _ => {}
        }
    }
}
