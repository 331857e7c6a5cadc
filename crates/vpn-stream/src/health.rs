//! Stream health: PINGs on idle streams, and warm streams to recently used peers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::HealthCheckSettings;
use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vpn_api::HealthSnapshot;
use vpn_api::StreamHealthService;
use vpn_errors::{ServiceError, ServiceErrorKind, VpnError};

use crate::StreamPool;
use crate::liveness::Outstanding;
use crate::pooled::PooledStream;

/// The node's [`StreamHealthService`] over a [`StreamPool`].
///
/// Every `interval`, each stream with no write for at least `interval` gets a PING (busy
/// streams prove themselves by writing, and a PING queued behind a burst would time out for
/// no fault of the peer). A PONG later than `timeout` counts as missed; after
/// `max_consecutive_failures` misses in a row the stream is reset and leaves the pool. A
/// stream whose queue is full while it has written nothing for `interval` is stuck: each
/// such round counts as a miss too. Any
/// PONG, even a late one, shows the stream alive and clears the count. Every
/// `warm_interval`, peers used within `recent_peer_window` are topped up to
/// `min_streams_per_peer` streams.
#[derive(Clone)]
pub struct StreamHealth {
    inner: Arc<Inner>,
}

struct Inner {
    pool: StreamPool,
    settings: HealthCheckSettings,
    min_streams: usize,
    checker: Mutex<Option<JoinHandle<()>>>,
    warmer: Mutex<Option<JoinHandle<()>>>,
}

impl StreamHealth {
    /// Health checking for `pool`, keeping `min_streams` streams to recently used peers.
    pub fn new(pool: StreamPool, settings: HealthCheckSettings, min_streams: usize) -> Self {
        let inner = Inner {
            pool,
            settings,
            min_streams,
            checker: Mutex::new(None),
            warmer: Mutex::new(None),
        };
        Self { inner: Arc::new(inner) }
    }

    /// One round of the checker: PINGs idle streams, counts late PONGs, and resets streams
    /// that missed too many. The running checker calls it every `interval`.
    pub fn check_once(&self) {
        self.inner.check_once();
    }

    /// One round of the warmer. The running warmer calls it every `warm_interval`.
    pub fn warm_once(&self) {
        self.inner.warm_once();
    }
}

impl Inner {
    fn check_once(&self) {
        let now = Instant::now();
        let mut failed = Vec::new();
        for stream in self.pool.streams() {
            if self.check_stream(&stream, now) {
                failed.push(stream);
            }
        }
        for stream in failed {
            stream.counters.marked_unhealthy();
            tracing::info!(peer = %stream.peer, stream = stream.id, "stream stopped answering PINGs; resetting it");
            self.pool.retire_unhealthy(&stream);
        }
    }

    /// Returns true when the stream has now missed too many PONGs.
    fn check_stream(&self, stream: &PooledStream, now: Instant) -> bool {
        if stream.is_closed() {
            return false;
        }
        let limit = self.settings.max_consecutive_failures;
        let mut live = stream.liveness.lock().unwrap_or_else(|e| e.into_inner());
        match live.settle(now, self.settings.timeout, limit) {
            Outstanding::Waiting => return false,
            Outstanding::Missed { dead } => {
                stream.counters.missed();
                if dead {
                    return true;
                }
            }
            Outstanding::None => {}
        }
        if stream.idle_for() >= self.settings.interval {
            // The top bit is the drains' (see `DRAIN_TAG`).
            let nonce = (fastrand::u64(..) & !crate::pooled::DRAIN_TAG).to_be_bytes();
            if stream.try_ping(nonce) {
                live.sent(nonce, now);
                stream.counters.ping_sent();
            } else if !stream.is_closed() {
                // The queue is full, yet nothing was written for a whole interval: the
                // stream's write is stuck. That counts as a missed PONG, or a stuck stream
                // would hold its flows for ever.
                stream.counters.missed();
                return live.stuck(limit);
            }
        }
        false
    }

    fn warm_once(&self) {
        for (peer, streams) in self.pool.recent_peers(self.settings.recent_peer_window) {
            if streams < self.min_streams {
                self.pool.warm(peer, self.min_streams);
            }
        }
    }

    fn start_loop(
        slot: &Mutex<Option<JoinHandle<()>>>,
        every: Duration,
        what: &'static str,
        round: impl Fn() + Send + 'static,
    ) -> Result<(), VpnError> {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return Err(VpnError::Service(ServiceError::new(
                ServiceErrorKind::AlreadyStarted,
                "stream health",
                what,
            )));
        }
        *slot = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                round();
            }
        }));
        Ok(())
    }

    async fn stop_loop(slot: &Mutex<Option<JoinHandle<()>>>) {
        let task = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

#[async_trait]
impl StreamHealthService for StreamHealth {
    async fn start_health_checker(&self) -> Result<(), VpnError> {
        let me = self.inner.clone();
        let every = self.inner.settings.interval;
        Inner::start_loop(&self.inner.checker, every, "start health checker", move || {
            me.check_once()
        })
    }

    async fn stop_health_checker(&self) {
        Inner::stop_loop(&self.inner.checker).await;
    }

    async fn start_warmer(&self) -> Result<(), VpnError> {
        let me = self.inner.clone();
        let every = self.inner.settings.warm_interval;
        Inner::start_loop(&self.inner.warmer, every, "start warmer", move || me.warm_once())
    }

    async fn stop_warmer(&self) {
        Inner::stop_loop(&self.inner.warmer).await;
    }

    fn health(&self) -> HealthSnapshot {
        HealthSnapshot { peers: self.inner.pool.peer_health() }
    }
}
