//! The stream pool: a few streams per peer, lent to flows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::StreamPoolSettings;
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vpn_api::{MetricsService, StreamLease, StreamPoolService, StreamService};
use vpn_api::{PeerHealth, PeerId};
use vpn_errors::{NetworkError, NetworkErrorKind, ServiceError, ServiceErrorKind, VpnError};
use vpn_types::FlowKey;

use crate::liveness::PeerCounters;
use crate::pooled::{Clock, PooledStream};

/// The streams to one peer.
#[derive(Debug)]
struct PeerStreams {
    streams: Vec<Arc<PooledStream>>,
    /// Streams flows are leaving (see [`StreamPool::move_peer`]), until the last lets go.
    moving: Vec<Arc<PooledStream>>,
    /// How many times the peer's flows were moved: a stream whose open began before a move
    /// may run over the old path, and is not taken.
    moves: u64,
    /// Opens under way.
    opening: usize,
    /// Opens that failed so far, and the kind of the last failure: a caller that waited for
    /// an open learns from these that it failed.
    failures: u64,
    last_failure: NetworkErrorKind,
    last_used: Instant,
    /// No background open before this (after one failed).
    grow_after: Instant,
    /// Woken when an open finishes, for callers waiting on it.
    opened: Arc<Notify>,
    counters: Arc<PeerCounters>,
}

impl PeerStreams {
    fn new(now: Instant) -> Self {
        Self {
            streams: Vec::new(),
            moving: Vec::new(),
            moves: 0,
            opening: 0,
            failures: 0,
            last_failure: NetworkErrorKind::Unreachable,
            last_used: now,
            grow_after: now,
            opened: Arc::new(Notify::new()),
            counters: Arc::new(PeerCounters::default()),
        }
    }

    /// Ends one open under way that failed with `kind`, waking whoever waits for it.
    fn book_failure(&mut self, kind: NetworkErrorKind) {
        self.opening = self.opening.saturating_sub(1);
        self.failures += 1;
        self.last_failure = kind;
        self.opened.notify_waiters();
    }

    /// Forgets streams that closed or were retired (their tasks finish them).
    fn prune(&mut self) {
        self.streams.retain(|s| s.usable());
        self.moving.retain(|s| !s.is_closed());
    }
}

#[derive(Debug, Default)]
struct PoolState {
    peers: HashMap<PeerId, PeerStreams>,
    stopped: bool,
}

/// What `get_stream` does after looking at the pool under its lock.
enum Step {
    Lease(Arc<PooledStream>, bool),
    /// Wait for the opens under way (starting one first when set); `failures` is the
    /// peer's failure count when the wait began.
    Wait {
        opened: tokio::sync::futures::OwnedNotified,
        start: bool,
        failures: u64,
    },
    /// An open this caller waited for failed with this kind.
    Failed(NetworkErrorKind),
}

/// One open under way, counted in its peer's `opening`: released when it ends, also when
/// its task is dropped, so a peer is never left "opening" by an open that no longer runs.
struct OpenSlot {
    pool: StreamPool,
    peer: PeerId,
    /// Set once the open's outcome was booked under the lock.
    booked: bool,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        if !self.booked {
            let mut state = self.pool.lock();
            if let Some(entry) = state.peers.get_mut(&self.peer) {
                entry.book_failure(NetworkErrorKind::Timeout);
            }
        }
    }
}

struct Shared {
    opener: Arc<dyn StreamService>,
    metrics: Arc<dyn MetricsService>,
    settings: StreamPoolSettings,
    state: Mutex<PoolState>,
    next_id: AtomicU64,
    clock: Clock,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Keeps between `min_streams_per_peer` and `max_streams_per_peer` streams to each peer
/// and lends them to flows: the node's [`StreamPoolService`].
///
/// - A lease goes to the peer's least-leased healthy stream; the worker keeps it while the
///   stream stays healthy, so a flow stays on one stream and its order holds.
/// - When every stream to a peer is leased and the maximum is not reached, another is opened
///   in the background; a caller waits for an open only when the peer has no stream at all.
/// - No lock is held across an open; an open that finishes after [`StreamPool::stop`] closes
///   its stream at once, so every stream opened is either in the pool or closed.
/// - Each stream has one task that owns it (see [`crate`]); a failed stream is dropped from
///   the pool and its lessees move to another on their next lease.
/// - Streams with no lease and no packet written for `stream_idle_timeout` are closed by a cleanup
///   that runs every `cleanup_interval` once [`StreamPool::start`] was called.
#[derive(Clone)]
pub struct StreamPool {
    shared: Arc<Shared>,
}

impl StreamPool {
    /// A pool opening streams with `opener`.
    pub fn new(
        opener: Arc<dyn StreamService>,
        metrics: Arc<dyn MetricsService>,
        settings: StreamPoolSettings,
    ) -> Self {
        let shared = Shared {
            opener,
            metrics,
            settings,
            state: Mutex::new(PoolState::default()),
            next_id: AtomicU64::new(1),
            clock: Clock::new(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Starts the idle cleanup. Needs a tokio runtime.
    pub fn start(&self) {
        let pool = self.clone();
        let shutdown = self.shared.shutdown.clone();
        let every = self.shared.settings.cleanup_interval;
        self.shared.tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => pool.close_idle(),
                }
            }
        });
    }

    /// Closes every stream (writing what is queued first) and waits for their tasks and any
    /// open under way. Later leases fail. Stopping twice is harmless.
    pub async fn stop(&self) {
        let streams: Vec<_> = {
            let mut state = self.lock();
            state.stopped = true;
            state
                .peers
                .drain()
                .flat_map(|(_, p)| {
                    // Callers waiting for an open see the pool stopped at once.
                    p.opened.notify_waiters();
                    p.streams.into_iter().chain(p.moving)
                })
                .collect()
        };
        for stream in streams {
            stream.retire(false);
        }
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.update_gauge();
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Plain bookkeeping: a panic elsewhere leaves it consistent enough to go on.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped_error() -> VpnError {
        VpnError::Service(ServiceError::new(ServiceErrorKind::Stopped, "stream pool", "get stream"))
    }

    fn update_gauge(&self) {
        let open = self.active_streams();
        self.shared.metrics.set_active_streams(open as u64);
    }

    /// Every stream in the pool now.
    pub(crate) fn streams(&self) -> Vec<Arc<PooledStream>> {
        let state = self.lock();
        state.peers.values().flat_map(|p| p.streams.iter().chain(&p.moving).cloned()).collect()
    }

    /// Peers used within `window`, with their usable streams plus opens under way.
    pub(crate) fn recent_peers(&self, window: Duration) -> Vec<(PeerId, usize)> {
        let now = Instant::now();
        self.lock()
            .peers
            .iter_mut()
            .filter(|(_, p)| now.duration_since(p.last_used) <= window)
            .map(|(peer, p)| {
                p.prune();
                (*peer, p.streams.len() + p.opening)
            })
            .collect()
    }

    /// The health of every peer in the pool, with its streams (all, and healthy).
    pub(crate) fn peer_health(&self) -> Vec<PeerHealth> {
        self.lock()
            .peers
            .iter()
            .map(|(peer, p)| {
                let open = p.streams.iter().filter(|s| !s.is_closed()).count();
                let healthy = p.streams.iter().filter(|s| s.usable()).count();
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                p.counters.health(*peer, count(open), count(healthy))
            })
            .collect()
    }

    /// Opens streams in the background until `peer` has `target` (counting opens under way).
    pub(crate) fn warm(&self, peer: PeerId, target: usize) {
        let missing = {
            let mut state = self.lock();
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let entry = state.peers.entry(peer).or_insert_with(|| PeerStreams::new(now));
            entry.prune();
            let target = target.min(self.shared.settings.max_streams_per_peer);
            let missing = target.saturating_sub(entry.streams.len() + entry.opening);
            entry.opening += missing;
            missing
        };
        for _ in 0..missing {
            self.open_in_background(peer);
        }
    }

    /// Moves `peer`'s flows to new streams (its path changed: a direct connection now
    /// carries what a relay did). Its streams take no new flows; each flow drains the one
    /// it holds before it takes a new one, so its packets stay in order; a stream closes
    /// gracefully once no flow holds it.
    pub fn move_peer(&self, peer: PeerId) {
        {
            let mut state = self.lock();
            let Some(entry) = state.peers.get_mut(&peer) else { return };
            entry.moves += 1;
            for stream in std::mem::take(&mut entry.streams) {
                stream.start_moving();
                if stream.leases() > 0 {
                    entry.moving.push(stream);
                }
            }
        }
        self.update_gauge();
    }

    /// Takes a stream out of the pool for missing PONGs: it is reset.
    pub(crate) fn retire_unhealthy(&self, stream: &PooledStream) {
        stream.retire(true);
        if let Some(entry) = self.lock().peers.get_mut(&stream.peer) {
            entry.prune();
        }
        self.update_gauge();
    }

    fn close_idle(&self) {
        let now = Instant::now();
        let idle = self.shared.settings.stream_idle_timeout;
        let mut retired = Vec::new();
        {
            let mut state = self.lock();
            state.peers.retain(|_, p| {
                p.prune();
                p.streams.retain(|s| {
                    let keep = s.leases() > 0 || s.data_idle_for() < idle;
                    if !keep {
                        retired.push(s.clone());
                    }
                    keep
                });
                // Streams being left stay booked until their last flow lets go.
                !p.streams.is_empty()
                    || !p.moving.is_empty()
                    || p.opening > 0
                    || now.duration_since(p.last_used) < idle
            });
        }
        for stream in retired {
            stream.retire(false);
        }
        self.update_gauge();
    }

    /// Opens one stream to `peer` and adds it to the pool; the caller has counted the open
    /// in `opening`. Runs detached from whoever asked, under `open_timeout`, so an open
    /// outlives a caller that gave up and serves the next one; `stop` cancels it.
    async fn open(&self, mut slot: OpenSlot) {
        let peer = slot.peer;
        let moves = self.lock().peers.get(&peer).map_or(0, |p| p.moves);
        let open = self.shared.opener.open_stream(peer);
        let opened = tokio::select! {
            () = self.shared.shutdown.cancelled() => return,
            opened = tokio::time::timeout(self.shared.settings.open_timeout, open) => opened,
        };
        let opened = opened.unwrap_or_else(|_| {
            let err = NetworkError::new(NetworkErrorKind::Timeout, "open stream").with_peer(peer);
            Err(VpnError::Network(err))
        });
        let mut state = self.lock();
        let stopped = state.stopped;
        let now = Instant::now();
        let entry = state.peers.entry(peer).or_insert_with(|| PeerStreams::new(now));
        slot.booked = true;
        let stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                let kind = e.network_kind().unwrap_or(NetworkErrorKind::Unreachable);
                entry.book_failure(kind);
                entry.grow_after = now + self.shared.settings.open_timeout;
                drop(state);
                tracing::debug!(%peer, error = %e, "cannot open a stream");
                self.shared.metrics.record_stream_error();
                return;
            }
        };
        entry.opening = entry.opening.saturating_sub(1);
        entry.opened.notify_waiters();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let pooled = PooledStream::spawn(
            id,
            stream,
            self.shared.settings.writer_queue_capacity,
            self.shared.clock,
            entry.counters.clone(),
            self.shared.metrics.clone(),
            &self.shared.tasks,
        );
        if stopped || entry.moves != moves {
            // Stopped, or the peer's path changed while it opened: the stream may run over
            // the old path (a relay); the next lease opens another.
            drop(state);
            pooled.retire(false);
            return;
        }
        entry.streams.push(pooled);
        drop(state);
        self.update_gauge();
    }

    fn open_in_background(&self, peer: PeerId) {
        let pool = self.clone();
        // Made before the task, so the count comes back even if the task never runs.
        let slot = OpenSlot { pool: self.clone(), peer, booked: false };
        // A failure is counted by `open` and retried by a later lease or the warmer.
        self.shared.tasks.spawn(async move { pool.open(slot).await });
    }

    fn lease(stream: &Arc<PooledStream>) -> StreamLease {
        StreamLease { peer: stream.peer, stream_id: stream.id, sink: stream.clone() }
    }
}

#[async_trait]
impl StreamPoolService for StreamPool {
    async fn get_stream(&self, peer: PeerId, _flow: FlowKey) -> Result<StreamLease, VpnError> {
        // The failure count when this caller began waiting for an open, if it did.
        let mut waited_from: Option<u64> = None;
        loop {
            let step = {
                let mut state = self.lock();
                if state.stopped {
                    return Err(Self::stopped_error());
                }
                let now = Instant::now();
                let max = self.shared.settings.max_streams_per_peer;
                let entry = state.peers.entry(peer).or_insert_with(|| PeerStreams::new(now));
                entry.last_used = now;
                entry.prune();
                match entry.streams.iter().min_by_key(|s| s.leases()) {
                    Some(stream) => {
                        let grow = stream.leases() > 0
                            && entry.streams.len() + entry.opening < max
                            && now >= entry.grow_after;
                        stream.add_lease();
                        let stream = stream.clone();
                        if grow {
                            entry.opening += 1;
                        }
                        Step::Lease(stream, grow)
                    }
                    // Failed once no open is left that could still bring a stream.
                    None if entry.opening == 0
                        && waited_from.is_some_and(|seen| entry.failures != seen) =>
                    {
                        Step::Failed(entry.last_failure)
                    }
                    None => {
                        let start = entry.opening == 0;
                        if start {
                            entry.opening += 1;
                        }
                        // Registered under the lock, so the open's wake-up cannot be missed.
                        let opened = entry.opened.clone().notified_owned();
                        Step::Wait { opened, start, failures: entry.failures }
                    }
                }
            };
            match step {
                Step::Lease(stream, grow) => {
                    if grow {
                        self.open_in_background(peer);
                    }
                    return Ok(Self::lease(&stream));
                }
                Step::Failed(kind) => {
                    let err = NetworkError::new(kind, "open stream").with_peer(peer);
                    return Err(VpnError::Network(err));
                }
                Step::Wait { opened, start, failures } => {
                    if start {
                        self.open_in_background(peer);
                    }
                    waited_from.get_or_insert(failures);
                    // Every open ends within `open_timeout`; the bound is a second guard.
                    let _ = tokio::time::timeout(self.shared.settings.open_timeout, opened).await;
                }
            }
        }
    }

    fn release(&self, lease: StreamLease, healthy: bool) {
        let retired = {
            let mut state = self.lock();
            let Some(entry) = state.peers.get_mut(&lease.peer) else { return };
            if let Some(pos) = entry.moving.iter().position(|s| s.id == lease.stream_id) {
                // A flow left a stream it drained; the last one closes it.
                let stream = entry.moving.get(pos).cloned();
                let last = stream.as_ref().is_some_and(|s| {
                    s.drop_lease();
                    s.leases() == 0
                });
                if last {
                    entry.moving.remove(pos);
                }
                stream.filter(|_| last)
            } else {
                let Some(pos) = entry.streams.iter().position(|s| s.id == lease.stream_id) else {
                    return;
                };
                let stream = entry.streams.get(pos).cloned();
                if let Some(stream) = &stream {
                    stream.drop_lease();
                }
                if healthy {
                    None
                } else {
                    stream.inspect(|_| {
                        entry.streams.remove(pos);
                    })
                }
            }
        };
        if let Some(stream) = retired {
            stream.retire(false);
            self.update_gauge();
        }
    }

    fn active_streams(&self) -> usize {
        self.lock()
            .peers
            .values()
            .map(|p| p.streams.iter().filter(|s| !s.is_closed()).count())
            .sum()
    }
}
