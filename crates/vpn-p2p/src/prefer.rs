//! Streams go over a direct connection whenever a peer has one.
//!
//! The stream behaviour opens a new stream on any connection it knows to the peer. Once a
//! hole is punched a peer has two, one through a relay and one direct; [`PreferDirect`]
//! shows the stream behaviour only the direct ones while there are any, and the relayed
//! ones again when the last direct one closes. Of direct connections, TCP ones carry the
//! streams while a peer has one: its QUIC connection is for datagrams, and streams stay up
//! when UDP alone fails. Every connection keeps its handler, so
//! streams the peer opens are taken on either, and the relayed connection stays up as the
//! fallback.

use std::collections::{HashMap, HashSet};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

/// How good a connection is for streams: a direct TCP one (2) before a direct QUIC one (1),
/// which carries datagrams and may fail with UDP alone, before a relayed one (0).
fn rank(endpoint: &ConnectedPoint) -> u8 {
    if endpoint.is_relayed() {
        0
    } else if crate::datagram::is_direct_quic(endpoint.get_remote_address()) {
        1
    } else {
        2
    }
}

/// Wraps a behaviour, showing it a peer's direct connections only while it has any.
pub(crate) struct PreferDirect<B> {
    pub(crate) inner: B,
    /// Every established connection, by peer.
    connections: HashMap<PeerId, Vec<(ConnectionId, ConnectedPoint)>>,
    /// The connections the inner behaviour takes as established.
    shown: HashSet<ConnectionId>,
    /// Peers a dial found no address for (any behaviour's dial), for the event loop to
    /// look up in the DHT; at most [`NO_ADDRESSES_HELD`].
    pub(crate) no_addresses: Vec<PeerId>,
}

/// Most peers without addresses held for a lookup at once.
const NO_ADDRESSES_HELD: usize = 256;

impl<B: NetworkBehaviour> PreferDirect<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self { inner, connections: HashMap::new(), shown: HashSet::new(), no_addresses: Vec::new() }
    }

    /// Shows the inner behaviour what it should see of `peer`'s connections now: those of
    /// the best kind it has (see [`rank`]).
    fn reconcile(&mut self, peer: PeerId) {
        let conns = self.connections.get(&peer).cloned().unwrap_or_default();
        let best = conns.iter().map(|(_, e)| rank(e)).max().unwrap_or(0);
        let mut visible = conns.iter().filter(|(id, _)| self.shown.contains(id)).count();
        for (id, endpoint) in &conns {
            let want = rank(endpoint) == best;
            if want && self.shown.insert(*id) {
                self.inner.on_swarm_event(FromSwarm::ConnectionEstablished(
                    ConnectionEstablished {
                        peer_id: peer,
                        connection_id: *id,
                        endpoint,
                        failed_addresses: &[],
                        other_established: visible,
                    },
                ));
                visible += 1;
            }
        }
        for (id, endpoint) in &conns {
            let want = rank(endpoint) == best;
            if !want && self.shown.remove(id) {
                visible = visible.saturating_sub(1);
                self.inner.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                    peer_id: peer,
                    connection_id: *id,
                    endpoint,
                    cause: None,
                    remaining_established: visible,
                }));
            }
        }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for PreferDirect<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    crate::wrap::pass_connections_through!();

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let conns = self.connections.entry(e.peer_id).or_default();
                conns.push((e.connection_id, e.endpoint.clone()));
                self.reconcile(e.peer_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(conns) = self.connections.get_mut(&e.peer_id) {
                    conns.retain(|(id, _)| *id != e.connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
                if self.shown.remove(&e.connection_id) {
                    self.inner.on_swarm_event(FromSwarm::ConnectionClosed(e));
                }
                self.reconcile(e.peer_id);
            }
            FromSwarm::DialFailure(failure) => {
                if let (Some(peer), libp2p::swarm::DialError::NoAddresses) =
                    (failure.peer_id, failure.error)
                    && self.no_addresses.len() < NO_ADDRESSES_HELD
                    && !self.no_addresses.contains(&peer)
                {
                    self.no_addresses.push(peer);
                }
                self.inner.on_swarm_event(FromSwarm::DialFailure(failure));
            }
            other => self.inner.on_swarm_event(other),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
