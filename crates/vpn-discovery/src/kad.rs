use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use libp2p_identity::Keypair;
use tokio::time::Instant;
use vpn_api::{DhtRecords, IpRegistry, PeerDiscoveryService};
use vpn_errors::{NetworkError, NetworkErrorKind, VpnError};
use vpn_types::{DiscoverySettings, IpNet, PeerId};
use vpn_wire::{IpRecord, RECORD_KEY_PREFIX, Selection, record_key, select_record};

/// Seconds since the epoch now (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    peer: Option<PeerId>,
    until: Instant,
}

fn no_peer(ip: IpAddr) -> VpnError {
    VpnError::Network(
        NetworkError::new(NetworkErrorKind::NoPeer, "find the owner of an address").with_addr(ip),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's [`PeerDiscoveryService`] over the Kademlia DHT. See the crate docs.
pub struct KadDiscovery {
    dht: Arc<dyn DhtRecords>,
    registry: Arc<dyn IpRegistry>,
    keypair: Keypair,
    own: Vec<IpNet>,
    /// Configured claims, most specific first.
    configured: Vec<(IpNet, PeerId)>,
    settings: DiscoverySettings,
    cache: Mutex<HashMap<IpAddr, Cached>>,
    lookups: Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>,
    known: Mutex<HashMap<PeerId, Vec<IpNet>>>,
    last_seq: AtomicU64,
    conflicts: AtomicU64,
}

impl KadDiscovery {
    /// Discovery for the node with `keypair`, publishing `own` (its addresses and routes),
    /// resolving `configured` claims first and the DHT after, checking records against
    /// `registry`.
    pub fn new(
        dht: Arc<dyn DhtRecords>,
        registry: Arc<dyn IpRegistry>,
        keypair: Keypair,
        own: Vec<IpNet>,
        mut configured: Vec<(IpNet, PeerId)>,
        settings: DiscoverySettings,
    ) -> Self {
        configured.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Self {
            dht,
            registry,
            keypair,
            own,
            configured,
            settings,
            cache: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            last_seq: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        }
    }

    /// Whether `peer` holds `ip` as far as this node knows now, without waiting:
    /// `Some(true)` when a configured claim or a checked record of the peer covers it,
    /// `Some(false)` when it is known to be someone else's, `None` when nothing is known.
    pub fn holds_now(&self, peer: &PeerId, ip: IpAddr) -> Option<bool> {
        if let Some((_, owner)) = self.configured.iter().find(|(net, _)| net.contains(&ip)) {
            return Some(owner == peer);
        }
        if lock(&self.known).get(peer).is_some_and(|nets| nets.iter().any(|n| n.contains(&ip))) {
            return Some(true);
        }
        let cached = lock(&self.cache).get(&ip).copied()?;
        (Instant::now() < cached.until).then(|| cached.peer.as_ref() == Some(peer))
    }

    /// Conflicting claims seen so far (two valid owners of one address).
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Forgets every cached answer (e.g. after a peer came back with a new record).
    pub fn clear_cache(&self) {
        lock(&self.cache).clear();
    }

    fn cached(&self, ip: IpAddr) -> Option<Result<PeerId, VpnError>> {
        let entry = lock(&self.cache).get(&ip).copied()?;
        (Instant::now() < entry.until).then(|| entry.peer.ok_or_else(|| no_peer(ip)))
    }

    fn remember(&self, ip: IpAddr, peer: Option<PeerId>, ttl: Duration) {
        lock(&self.cache).insert(ip, Cached { peer, until: Instant::now() + ttl });
    }

    /// Asks the DHT who owns `ip` and caches the answer.
    async fn lookup(&self, ip: IpAddr) -> Result<PeerId, VpnError> {
        let found = tokio::time::timeout(
            self.settings.lookup_timeout,
            self.dht.get_records(record_key(ip)),
        )
        .await;
        let values = match found {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => {
                self.remember(ip, None, self.settings.negative_cache_ttl);
                return Err(e);
            }
            Err(_) => {
                self.remember(ip, None, self.settings.negative_cache_ttl);
                return Err(VpnError::Network(
                    NetworkError::new(NetworkErrorKind::Timeout, "DHT lookup").with_addr(ip),
                ));
            }
        };
        let now = unix_now();
        let valid = values.iter().filter_map(|bytes| {
            match IpRecord::open(bytes, ip, now, self.registry.as_ref()) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "ignored an invalid IP record");
                    None
                }
            }
        });
        match select_record(valid) {
            Selection::Owner(record) => {
                let left = Duration::from_secs(record.expires_unix.saturating_sub(now));
                self.remember(ip, Some(record.peer_id), left.min(self.settings.cache_ttl));
                lock(&self.known).insert(record.peer_id, record.addresses.clone());
                Ok(record.peer_id)
            }
            Selection::Conflict { owners } => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%ip, ?owners, "conflict: several peers hold valid records for this address; using none");
                self.remember(ip, None, self.settings.negative_cache_ttl);
                Err(no_peer(ip))
            }
            Selection::None => {
                self.remember(ip, None, self.settings.negative_cache_ttl);
                Err(no_peer(ip))
            }
        }
    }
}

#[async_trait]
impl PeerDiscoveryService for KadDiscovery {
    async fn peer_for_ip(&self, ip: IpAddr) -> Result<PeerId, VpnError> {
        if let Some((_, peer)) = self.configured.iter().find(|(net, _)| net.contains(&ip)) {
            return Ok(*peer);
        }
        if let Some(answer) = self.cached(ip) {
            return answer;
        }
        if !self.settings.dht {
            return Err(no_peer(ip));
        }
        // One lookup per address at a time; the others wait for it and read the cache.
        let gate = lock(&self.lookups).entry(ip).or_default().clone();
        let _turn = gate.lock().await;
        if let Some(answer) = self.cached(ip) {
            return answer;
        }
        let answer = self.lookup(ip).await;
        lock(&self.lookups).remove(&ip);
        answer
    }

    async fn sync_to_dht(&self) -> Result<(), VpnError> {
        // Publish time in ms, and always above the last one we used.
        let now_ms = unix_now_ms();
        let previous = self
            .last_seq
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now_ms.max(last + 1)))
            .unwrap_or_else(|last| last);
        let seq = now_ms.max(previous + 1);
        let ttl = self.settings.record_ttl;
        let record = IpRecord::new(
            self.keypair.public().to_peer_id(),
            self.own.clone(),
            seq,
            unix_now() + ttl.as_secs(),
        );
        let bytes = record
            .sign(&self.keypair)
            .map_err(|e| VpnError::Other { context: "sign our IP record", source: Box::new(e) })?;
        let mut stored = 0;
        let mut last_error = None;
        for net in &self.own {
            match self.dht.put_record(record_key(net.network()), bytes.clone(), ttl).await {
                Ok(()) => stored += 1,
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) if stored == 0 => Err(e),
            _ => Ok(()),
        }
    }

    async fn virtual_ips(&self, peer: &PeerId) -> Result<Vec<IpNet>, VpnError> {
        let configured: Vec<IpNet> =
            self.configured.iter().filter(|(_, p)| p == peer).map(|(n, _)| *n).collect();
        if !configured.is_empty() {
            return Ok(configured);
        }
        lock(&self.known).get(peer).cloned().ok_or_else(|| {
            VpnError::Network(
                NetworkError::new(NetworkErrorKind::NoPeer, "addresses of a peer").with_peer(*peer),
            )
        })
    }
}

/// The check on every record another peer asks us to store: a valid IP record (PROTOCOL.md
/// section 2) under its own address's key; against a valid record already stored, only the
/// same owner with a sequence number at least as high may replace it, and a different
/// owner is a conflict that is refused and logged.
pub fn record_filter(
    registry: Arc<dyn IpRegistry>,
) -> impl Fn(&[u8], &[u8], Option<&[u8]>) -> bool + Send + Sync + 'static {
    move |key, value, existing| {
        let Some(ip) = key
            .strip_prefix(RECORD_KEY_PREFIX.as_bytes())
            .and_then(|text| std::str::from_utf8(text).ok())
            .and_then(|text| IpAddr::from_str(text).ok())
        else {
            return false;
        };
        let now = unix_now();
        let new = match IpRecord::open(value, ip, now, registry.as_ref()) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(%ip, error = %e, "refused to store an invalid IP record");
                return false;
            }
        };
        match existing.and_then(|old| IpRecord::open(old, ip, now, registry.as_ref()).ok()) {
            None => true,
            Some(old) if old.peer_id == new.peer_id => new.seq >= old.seq,
            Some(old) => {
                tracing::error!(%ip, held_by = %old.peer_id, claimed_by = %new.peer_id, "conflict: refused a second owner's record");
                false
            }
        }
    }
}
