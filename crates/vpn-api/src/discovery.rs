use std::net::IpAddr;

use crate::{IpNet, PeerId};
use async_trait::async_trait;
use vpn_errors::VpnError;

/// Finds which peer owns an overlay address, and publishes our own addresses.
#[async_trait]
pub trait PeerDiscoveryService: Send + Sync {
    /// The peer that owns `ip`: configured peers and routes first, then the cache, then a
    /// validated DHT record. May wait on the DHT when the cache has no answer.
    ///
    /// Errors: a network error of kind `NoPeer` when nobody owns the address (or two
    /// peers claim it: a conflict is never resolved silently); `Timeout` when the DHT did
    /// not answer in time.
    async fn peer_for_ip(&self, ip: IpAddr) -> Result<PeerId, VpnError>;

    /// Signs this node's IP record (a higher sequence number than any before) and stores
    /// it in the DHT under each of our addresses. Waits on the DHT.
    ///
    /// Errors: a network error when no DHT peer accepted the record.
    async fn sync_to_dht(&self) -> Result<(), VpnError>;

    /// The overlay addresses and routed prefixes `peer` holds, as far as this node knows
    /// and the registry allows (configured, cached or recorded). May wait on the DHT.
    ///
    /// Errors: a network error of kind `NoPeer` when nothing is known of the peer.
    async fn virtual_ips(&self, peer: &PeerId) -> Result<Vec<IpNet>, VpnError>;

    /// Whether `peer` holds `ip` as far as this node knows now, without waiting (the
    /// receiver asks this of every packet): `Some(true)` when it does, `Some(false)` when
    /// the address is someone else's or in conflict, `None` when nothing is known yet and
    /// [`peer_for_ip`](Self::peer_for_ip) must tell. An implementation that keeps no
    /// answers makes every packet wait for a lookup, within each peer's lookup budget: keep
    /// what `peer_for_ip` found.
    fn holds_now(&self, peer: &PeerId, ip: IpAddr) -> Option<bool>;
}

/// The DHT as the discovery service needs it: store and find opaque records.
#[async_trait]
pub trait DhtRecords: Send + Sync {
    /// Stores `value` under `key` for `ttl`, locally and with the closest peers. Waits on
    /// the network.
    ///
    /// Errors: a network error when no peer took the record.
    async fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: std::time::Duration,
    ) -> Result<(), VpnError>;

    /// Every value found under `key`, locally and from other peers (empty when none).
    /// Waits on the network, at most the lookup timeout.
    ///
    /// Errors: a network or service error when the DHT cannot be asked at all.
    async fn get_records(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, VpnError>;
}
