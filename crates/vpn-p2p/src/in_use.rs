//! Keeps a member's connections open while its packets go as datagrams.
//!
//! The swarm closes a connection once no behaviour needs it and no stream is open on it
//! for `idle_connection_timeout`. Packets on the stream path keep their streams open;
//! datagrams open none, so without this a connection carrying a bulk transfer as datagrams
//! would be closed under it. A connection is needed while a datagram link to its peer
//! carried packets within the idle timeout; it closes one idle timeout after the last.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use vpn_quic::Links;

/// See the module docs.
pub(crate) struct DatagramsInUse {
    links: Links,
    idle: Duration,
}

impl DatagramsInUse {
    /// Connections stay while `links` carried packets of their peer within `idle`.
    pub(crate) fn new(links: Links, idle: Duration) -> Self {
        Self { links, idle }
    }

    fn handler(&self, peer: PeerId) -> InUseHandler {
        InUseHandler { links: self.links.clone(), peer, idle: self.idle }
    }
}

impl NetworkBehaviour for DatagramsInUse {
    type ConnectionHandler = InUseHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        match e {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// One connection's part: no protocol, only whether the connection is in use.
pub(crate) struct InUseHandler {
    links: Links,
    peer: PeerId,
    idle: Duration,
}

impl libp2p::swarm::ConnectionHandler for InUseHandler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.links.carried_within(&self.peer, self.idle)
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {}

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }
}
