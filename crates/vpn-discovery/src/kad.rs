use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use libp2p_identity::Keypair;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;
use vpn_api::{DhtRecords, IpRegistry, MetricsService, PeerDiscoveryService};
use vpn_api::{IpNet, PeerId};
use vpn_config::DiscoverySettings;
use vpn_errors::{NetworkError, NetworkErrorKind, VpnError};
use vpn_types::Budget;
use vpn_wire::{IpRecord, RECORD_KEY_PREFIX, Selection, record_key, select_record};

use crate::lru::Lru;

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
    /// Several peers hold valid records for the address: it is nobody's.
    conflict: bool,
    until: Instant,
    /// When a positive answer is looked up again in the background (before `until`).
    refresh_at: Instant,
    /// When the record behind a positive answer expires: a refresh that fails keeps the
    /// answer up to here, never past it.
    record_until: Instant,
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

/// What a lookup needs, shared with the detached tasks that run lookups.
struct Resolver {
    dht: Arc<dyn DhtRecords>,
    registry: Arc<dyn IpRegistry>,
    settings: DiscoverySettings,
    /// Answers by address, at most `cache_entries` of them, least recently used forgotten
    /// first.
    cache: Mutex<Lru<IpAddr, Cached>>,
    /// Where forgotten answers are counted.
    metrics: Option<Arc<dyn MetricsService>>,
    /// Lookups under way, each with the callers waiting for it.
    in_flight: Mutex<HashMap<IpAddr, Arc<Notify>>>,
    /// What each peer's newest checked record holds, until the record expires.
    known: Mutex<HashMap<PeerId, (Vec<IpNet>, Instant)>>,
    conflicts: AtomicU64,
    /// Warnings about what lookups found, at most one of each kind every few seconds.
    warnings: vpn_types::WarnGate<&'static str>,
}

/// One lookup under way: when it ends (also when its task is dropped) the address leaves
/// `in_flight` and the callers waiting for it wake and read the cache.
struct Flight {
    resolver: Arc<Resolver>,
    ip: IpAddr,
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(done) = lock(&self.resolver.in_flight).remove(&self.ip) {
            done.notify_waiters();
        }
    }
}

impl Resolver {
    fn cached(&self, ip: IpAddr) -> Option<Cached> {
        lock(&self.cache).get_mut(&ip).copied().filter(|entry| Instant::now() < entry.until)
    }

    fn remember(&self, ip: IpAddr, entry: Cached) {
        let forgotten = lock(&self.cache).insert(ip, entry);
        if let Some(metrics) = &self.metrics {
            for _ in 0..forgotten {
                metrics.record_budget_exceeded(Budget::DiscoveryCache);
            }
        }
    }

    fn remember_miss(&self, ip: IpAddr, conflict: bool) {
        let now = Instant::now();
        let until = now + self.settings.negative_cache_ttl;
        let entry = Cached { peer: None, conflict, until, refresh_at: until, record_until: until };
        self.remember(ip, entry);
    }

    /// The prefixes a checked record of `peer` holds now (none once the record expired).
    fn known_nets(&self, peer: &PeerId) -> Option<Vec<IpNet>> {
        let known = lock(&self.known);
        let (nets, until) = known.get(peer)?;
        (Instant::now() < *until).then(|| nets.clone())
    }

    /// The DHT could not answer: a positive answer of a record still valid is kept (its
    /// peer may still be there, and a running flow should not stop because the DHT is
    /// unreachable); anything else becomes a short miss.
    fn remember_failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        if let Some(entry) = cache.get_mut(&ip)
            && entry.peer.is_some()
            && now < entry.record_until
        {
            let ttl = self.settings.cache_ttl;
            entry.until = (now + ttl).min(entry.record_until);
            entry.refresh_at = now + self.settings.negative_cache_ttl.min(ttl / 2);
            return;
        }
        drop(cache);
        self.remember_miss(ip, false);
    }

    fn remember_owner(&self, ip: IpAddr, peer: PeerId, record_left: Duration) {
        let now = Instant::now();
        let ttl = self.settings.cache_ttl.min(record_left);
        let entry = Cached {
            peer: Some(peer),
            conflict: false,
            until: now + ttl,
            refresh_at: now + ttl / 2,
            record_until: now + record_left,
        };
        self.remember(ip, entry);
    }

    /// Starts a lookup of `ip` unless one is under way; returns a wake-up for its end,
    /// registered before the lookup can end. `None` when the cache answers after all.
    fn join_or_start(self: &Arc<Self>, ip: IpAddr) -> Option<OwnedNotified> {
        let mut flights = lock(&self.in_flight);
        if let Some(done) = flights.get(&ip) {
            return Some(done.clone().notified_owned());
        }
        let done = Arc::new(Notify::new());
        let notified = done.clone().notified_owned();
        flights.insert(ip, done);
        drop(flights);
        let flight = Flight { resolver: self.clone(), ip };
        // Detached: a caller that gives up does not cancel the lookup, which fills the
        // cache for the next one; `lookup_timeout` bounds it.
        tokio::spawn(async move {
            flight.resolver.lookup(ip).await;
            drop(flight);
        });
        Some(notified)
    }

    /// Asks the DHT who owns `ip` and caches the answer.
    async fn lookup(&self, ip: IpAddr) {
        let found = tokio::time::timeout(
            self.settings.lookup_timeout,
            self.dht.get_records(record_key(ip)),
        )
        .await;
        let values = match found {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => {
                tracing::debug!(%ip, error = %e, "DHT lookup failed");
                return self.remember_failure(ip);
            }
            Err(_) => {
                tracing::debug!(%ip, "DHT lookup timed out");
                return self.remember_failure(ip);
            }
        };
        let now = unix_now();
        let valid = values.iter().filter_map(|bytes| {
            match IpRecord::open(bytes, ip, now, self.registry.as_ref()) {
                Ok(record) => Some(record),
                Err(e) => {
                    if let Some(held_back) = self.warnings.admit("invalid") {
                        tracing::warn!(%ip, error = %e, held_back, "ignored an invalid IP record");
                    }
                    None
                }
            }
        });
        match select_record(valid) {
            Selection::Owner(record) => {
                let left = Duration::from_secs(record.expires_unix.saturating_sub(now));
                self.remember_owner(ip, record.peer_id, left);
                let now = Instant::now();
                let mut known = lock(&self.known);
                known.retain(|_, (_, until)| now < *until);
                known.insert(record.peer_id, (record.addresses.clone(), now + left));
            }
            Selection::Conflict { owners } => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = self.warnings.admit("conflict") {
                    tracing::error!(%ip, ?owners, held_back, "conflict: several peers hold valid records for this address; using none");
                }
                self.remember_miss(ip, true);
            }
            // Nothing found is what an unreachable DHT answers too (its queries fail fast):
            // an owner whose record is still valid is kept, as for a failed lookup.
            Selection::None => self.remember_failure(ip),
        }
    }
}

/// The node's [`PeerDiscoveryService`] over the Kademlia DHT. See the crate docs.
///
/// Lookups run detached from their callers, one per address at a time, under
/// `lookup_timeout`: a caller that gives up (a worker's send timeout) leaves nothing
/// behind, and the lookup's answer serves the next caller from the cache. A positive
/// answer is looked up again in the background once half its time is over, and kept while
/// the DHT cannot be reached (up to its record's expiry), so a running flow does not stop
/// for a DHT outage.
pub struct KadDiscovery {
    resolver: Arc<Resolver>,
    keypair: Keypair,
    own: Vec<IpNet>,
    /// Configured claims, most specific first (replaced by `vpn-node reload`).
    configured: RwLock<Vec<(IpNet, PeerId)>>,
    last_seq: AtomicU64,
    /// Our membership certificate, carried in our records (empty: none).
    certificate: Vec<u8>,
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
        configured: Vec<(IpNet, PeerId)>,
        settings: DiscoverySettings,
    ) -> Self {
        let resolver = Resolver {
            dht,
            registry,
            cache: Mutex::new(Lru::new(settings.cache_entries)),
            settings,
            metrics: None,
            in_flight: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            conflicts: AtomicU64::new(0),
            warnings: vpn_types::WarnGate::per_peer(),
        };
        let discovery = Self {
            resolver: Arc::new(resolver),
            keypair,
            own,
            configured: RwLock::new(Vec::new()),
            last_seq: AtomicU64::new(0),
            certificate: Vec::new(),
        };
        discovery.set_configured(configured, |_| true);
        discovery
    }

    /// Puts new configured claims in force (`vpn-node reload`, after the registry the
    /// records are checked against was replaced) and forgets every cached answer and every
    /// recorded peer `keep` refuses, so no address is still placed by claims or records that
    /// no longer hold.
    pub fn set_configured(
        &self,
        mut configured: Vec<(IpNet, PeerId)>,
        keep: impl Fn(&PeerId) -> bool,
    ) {
        configured.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        *self.configured.write().unwrap_or_else(PoisonError::into_inner) = configured;
        lock(&self.resolver.known).retain(|peer, _| keep(peer));
        self.clear_cache();
    }

    /// The configured claim that covers `ip`, if any: its owner.
    fn configured_owner(&self, ip: IpAddr) -> Option<PeerId> {
        let configured = self.configured.read().unwrap_or_else(PoisonError::into_inner);
        configured.iter().find(|(net, _)| net.contains(&ip)).map(|(_, peer)| *peer)
    }

    /// Our records carry `certificate` (our membership certificate), so that members that
    /// never met us can check what we hold.
    pub fn with_certificate(mut self, certificate: Vec<u8>) -> Self {
        self.certificate = certificate;
        self
    }

    /// Counts the answers the cache forgets to make room in `metrics`
    /// ([`Budget::DiscoveryCache`]). Call before the first lookup.
    pub fn with_metrics(mut self, metrics: Arc<dyn MetricsService>) -> Self {
        if let Some(resolver) = Arc::get_mut(&mut self.resolver) {
            resolver.metrics = Some(metrics);
        }
        self
    }

    /// Conflicting claims seen so far (two valid owners of one address).
    pub fn conflicts(&self) -> u64 {
        self.resolver.conflicts.load(Ordering::Relaxed)
    }

    /// Forgets every cached answer (e.g. after a peer came back with a new record).
    pub fn clear_cache(&self) {
        lock(&self.resolver.cache).clear();
    }

    /// The cached answer for `ip`, if any; a positive one due for refreshing starts a
    /// lookup in the background and is answered meanwhile.
    fn answer_from_cache(&self, ip: IpAddr) -> Option<Result<PeerId, VpnError>> {
        let entry = self.resolver.cached(ip)?;
        let Some(peer) = entry.peer else { return Some(Err(no_peer(ip))) };
        if self.resolver.settings.dht && Instant::now() >= entry.refresh_at {
            let _ = self.resolver.join_or_start(ip);
        }
        Some(Ok(peer))
    }
}

#[async_trait]
impl PeerDiscoveryService for KadDiscovery {
    async fn peer_for_ip(&self, ip: IpAddr) -> Result<PeerId, VpnError> {
        if let Some(peer) = self.configured_owner(ip) {
            return Ok(peer);
        }
        if let Some(answer) = self.answer_from_cache(ip) {
            return answer;
        }
        if !self.resolver.settings.dht {
            return Err(no_peer(ip));
        }
        if let Some(done) = self.resolver.join_or_start(ip) {
            // The lookup is bounded by `lookup_timeout`; this bound only guards the wait.
            let _ = tokio::time::timeout(self.resolver.settings.lookup_timeout * 2, done).await;
        }
        match self.resolver.cached(ip) {
            Some(Cached { peer: Some(peer), .. }) => Ok(peer),
            _ => Err(no_peer(ip)),
        }
    }

    async fn sync_to_dht(&self) -> Result<(), VpnError> {
        // Publish time in ms, and always above the last one we used.
        let now_ms = unix_now_ms();
        let previous = self
            .last_seq
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now_ms.max(last + 1)))
            .unwrap_or_else(|last| last);
        let seq = now_ms.max(previous + 1);
        let ttl = self.resolver.settings.record_ttl;
        let record = IpRecord::new(
            self.keypair.public().to_peer_id(),
            self.own.clone(),
            seq,
            unix_now() + ttl.as_secs(),
        )
        .with_certificate(self.certificate.clone());
        let bytes = record
            .sign(&self.keypair)
            .map_err(|e| VpnError::Other { context: "sign our IP record", source: Box::new(e) })?;
        let mut stored = 0;
        let mut last_error = None;
        for net in &self.own {
            match self.resolver.dht.put_record(record_key(net.network()), bytes.clone(), ttl).await
            {
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
        let configured: Vec<IpNet> = {
            let configured = self.configured.read().unwrap_or_else(PoisonError::into_inner);
            configured.iter().filter(|(_, p)| p == peer).map(|(n, _)| *n).collect()
        };
        if !configured.is_empty() {
            return Ok(configured);
        }
        self.resolver.known_nets(peer).ok_or_else(|| {
            VpnError::Network(
                NetworkError::new(NetworkErrorKind::NoPeer, "addresses of a peer").with_peer(*peer),
            )
        })
    }

    /// Whether `peer` holds `ip` as far as this node knows now, without waiting:
    /// `Some(true)` when a configured claim, the address's cached owner or an unexpired
    /// checked record of the peer says so; `Some(false)` when it is configured or cached as
    /// someone else's, or in conflict (several valid claims: nobody's); `None` when nothing
    /// is known. The conflict and the cached owner are looked at before the peer's own
    /// records, and what a record proved ends when the record expires.
    fn holds_now(&self, peer: &PeerId, ip: IpAddr) -> Option<bool> {
        if let Some(owner) = self.configured_owner(ip) {
            return Some(owner == *peer);
        }
        let cached = self.resolver.cached(ip);
        if let Some(Cached { conflict: true, .. }) = cached {
            return Some(false);
        }
        if let Some(Cached { peer: Some(owner), .. }) = cached {
            return Some(owner == *peer);
        }
        let nets = self.resolver.known_nets(peer);
        if nets.is_some_and(|nets| nets.iter().any(|n| n.contains(&ip))) {
            return Some(true);
        }
        cached.map(|_| false)
    }
}

/// The check on every record another peer asks us to store: a valid IP record (docs/protocol.md,
/// sections 7.3 and 7.4) under the canonical key of one of the addresses it claims (the network
/// address of one of its prefixes, as its owner publishes it), so one record cannot fill
/// the store under many spellings of an address or every address of a prefix; against a
/// valid record already stored, only the same owner with a sequence number at least as
/// high may replace it, and a different owner is a conflict that is refused and logged.
/// Each owner keeps at most `records_per_publisher` unexpired records with us; a record
/// beyond it is refused and counted in `metrics` ([`Budget::StoreQuota`]).
pub fn record_filter(
    registry: Arc<dyn IpRegistry>,
    records_per_publisher: usize,
    metrics: Option<Arc<dyn MetricsService>>,
) -> impl Fn(&[u8], &[u8], Option<&[u8]>) -> bool + Send + Sync + 'static {
    // The keys each owner holds in our store, with their records' expiry (unix seconds).
    let ledger: Mutex<HashMap<PeerId, HashMap<Vec<u8>, u64>>> = Mutex::new(HashMap::new());
    let quota_metrics = metrics.clone();
    let refused = move || {
        if let Some(metrics) = &metrics {
            metrics.record_refused_record();
        }
        false
    };
    move |key, value, existing| {
        let Some(ip) = key
            .strip_prefix(RECORD_KEY_PREFIX.as_bytes())
            .and_then(|text| std::str::from_utf8(text).ok())
            .and_then(|text| IpAddr::from_str(text).ok())
        else {
            return refused();
        };
        let now = unix_now();
        let new = match IpRecord::open(value, ip, now, registry.as_ref()) {
            Ok(record) => record,
            Err(e) => {
                tracing::debug!(%ip, error = %e, "refused to store an invalid IP record");
                return refused();
            }
        };
        let published_here = new.addresses.iter().any(|net| net.network() == ip);
        if key != record_key(ip).as_slice() || !published_here {
            tracing::debug!(%ip, "refused an IP record under a key its owner does not publish it under");
            return refused();
        }
        let replaces = match existing
            .and_then(|old| IpRecord::open(old, ip, now, registry.as_ref()).ok())
        {
            None => true,
            Some(old) if old.peer_id == new.peer_id => new.seq >= old.seq,
            Some(old) => {
                tracing::debug!(%ip, held_by = %old.peer_id, claimed_by = %new.peer_id, "conflict: refused a second owner's record");
                false
            }
        };
        if !replaces {
            return refused();
        }
        let mut ledger = lock(&ledger);
        ledger.retain(|_, keys| {
            keys.retain(|_, expires| *expires > now);
            !keys.is_empty()
        });
        let keys = ledger.entry(new.peer_id).or_default();
        if !keys.contains_key(key) && keys.len() >= records_per_publisher {
            drop(ledger);
            if let Some(metrics) = &quota_metrics {
                metrics.record_budget_exceeded(Budget::StoreQuota);
            }
            tracing::debug!(%ip, owner = %new.peer_id, "refused an IP record: its owner has its quota of records stored");
            return refused();
        }
        keys.insert(key.to_vec(), new.expires_unix);
        true
    }
}
