//! What every behaviour that wraps another and changes only some of its events shares.

/// The connection-handling methods of a `NetworkBehaviour` implementation for a wrapper
/// whose wrapped behaviour is `self.inner`: each passes straight through. Needs
/// `ConnectionDenied`, `ConnectionId`, `Endpoint`, `Multiaddr`, `PeerId`, `PortUse`,
/// `THandler` and `THandlerOutEvent` in scope.
macro_rules! pass_connections_through {
    () => {
        fn handle_pending_inbound_connection(
            &mut self,
            id: ConnectionId,
            local: &Multiaddr,
            remote: &Multiaddr,
        ) -> Result<(), ConnectionDenied> {
            self.inner.handle_pending_inbound_connection(id, local, remote)
        }

        fn handle_established_inbound_connection(
            &mut self,
            id: ConnectionId,
            peer: PeerId,
            local: &Multiaddr,
            remote: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.inner.handle_established_inbound_connection(id, peer, local, remote)
        }

        fn handle_pending_outbound_connection(
            &mut self,
            id: ConnectionId,
            peer: Option<PeerId>,
            addresses: &[Multiaddr],
            effective_role: Endpoint,
        ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
            self.inner.handle_pending_outbound_connection(id, peer, addresses, effective_role)
        }

        fn handle_established_outbound_connection(
            &mut self,
            id: ConnectionId,
            peer: PeerId,
            addr: &Multiaddr,
            role_override: Endpoint,
            port_use: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.inner.handle_established_outbound_connection(
                id,
                peer,
                addr,
                role_override,
                port_use,
            )
        }

        fn on_connection_handler_event(
            &mut self,
            peer: PeerId,
            id: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            self.inner.on_connection_handler_event(peer, id, event)
        }
    };
}

pub(crate) use pass_connections_through;
