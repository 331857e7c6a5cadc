//! Stream health: PINGs on idle streams, and warm streams to recently used peers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::HealthCheckSettings;
use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vpn_api::StreamHealthService;
use vpn_api::{HealthSnapshot, PeerHealth};
use vpn_errors::{ServiceError, ServiceErrorKind, VpnError};

use crate::StreamPool;
use crate::pooled::PooledStream;

/// Health counters of the streams to one peer, shared by its streams and the checker.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pings_sent: AtomicU64,
    pongs_received: AtomicU64,
    pongs_missed: AtomicU64,
    marked_unhealthy: AtomicU64,
    last_rtt_us: AtomicU64,
}

impl PeerCounters {
    pub(crate) fn pong(&self, rtt: Duration) {
        self.pongs_received.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_rtt_us.store(us, Ordering::Relaxed);
    }
}

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
            stream.counters.marked_unhealthy_inc();
            tracing::info!(peer = %stream.peer, stream = stream.id, "stream stopped answering PINGs; resetting it");
            self.pool.retire_unhealthy(&stream);
        }
    }

    /// Returns true when the stream has now missed too many PONGs.
    fn check_stream(&self, stream: &PooledStream, now: Instant) -> bool {
        if stream.is_closed() {
            return false;
        }
        let mut ping = stream.ping.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, sent)) = ping.outstanding {
            if now.duration_since(sent) < self.settings.timeout {
                return false;
            }
            ping.outstanding = None;
            ping.missed += 1;
            stream.counters.pongs_missed.fetch_add(1, Ordering::Relaxed);
            if ping.missed >= self.settings.max_consecutive_failures {
                return true;
            }
        }
        if stream.idle_for() >= self.settings.interval {
            let nonce = fastrand::u64(..).to_be_bytes();
            if stream.try_ping(nonce) {
                ping.outstanding = Some((nonce, now));
                stream.counters.pings_sent.fetch_add(1, Ordering::Relaxed);
            } else if !stream.is_closed() {
                // The queue is full, yet nothing was written for a whole interval: the
                // stream's write is stuck. That counts as a missed PONG, or a stuck stream
                // would hold its flows for ever.
                ping.missed += 1;
                stream.counters.pongs_missed.fetch_add(1, Ordering::Relaxed);
                return ping.missed >= self.settings.max_consecutive_failures;
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

impl PeerCounters {
    fn marked_unhealthy_inc(&self) {
        self.marked_unhealthy.fetch_add(1, Ordering::Relaxed);
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
        let peers = self
            .inner
            .pool
            .peer_counters()
            .into_iter()
            .map(|(peer, c, streams, healthy_streams)| {
                let rtt = c.last_rtt_us.load(Ordering::Relaxed);
                PeerHealth {
                    peer,
                    streams,
                    healthy_streams,
                    pings_sent: c.pings_sent.load(Ordering::Relaxed),
                    pongs_received: c.pongs_received.load(Ordering::Relaxed),
                    pongs_missed: c.pongs_missed.load(Ordering::Relaxed),
                    streams_marked_unhealthy: c.marked_unhealthy.load(Ordering::Relaxed),
                    last_rtt: (rtt > 0).then(|| Duration::from_micros(rtt)),
                }
            })
            .collect();
        HealthSnapshot { peers }
    }
}
