//! Whether a stream is alive, as plain state: the PING out on it, the PONGs missed in a row,
//! and the health counters of its peer. Nothing here does I/O or reads a clock; the pooled
//! stream (which sees PONGs) and the health checker (which sends PINGs and judges) both
//! drive it with the time they pass in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use vpn_api::{PeerHealth, PeerId};

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
    pub(crate) fn ping_sent(&self) {
        self.pings_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn pong(&self, rtt: Duration) {
        self.pongs_received.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_rtt_us.store(us, Ordering::Relaxed);
    }

    pub(crate) fn missed(&self) {
        self.pongs_missed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn marked_unhealthy(&self) {
        self.marked_unhealthy.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as a [`PeerHealth`] for `peer` with its streams (all, and healthy).
    pub(crate) fn health(&self, peer: PeerId, streams: u32, healthy_streams: u32) -> PeerHealth {
        let rtt = self.last_rtt_us.load(Ordering::Relaxed);
        PeerHealth {
            peer,
            streams,
            healthy_streams,
            pings_sent: self.pings_sent.load(Ordering::Relaxed),
            pongs_received: self.pongs_received.load(Ordering::Relaxed),
            pongs_missed: self.pongs_missed.load(Ordering::Relaxed),
            streams_marked_unhealthy: self.marked_unhealthy.load(Ordering::Relaxed),
            last_rtt: (rtt > 0).then(|| Duration::from_micros(rtt)),
        }
    }
}

/// What became of the PING out on a stream, at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outstanding {
    /// No PING is out.
    None,
    /// A PING is out and its PONG may still come in time.
    Waiting,
    /// The PING's time ran out: one more miss; `dead` once the misses reach the limit.
    Missed { dead: bool },
}

/// The PING out on one stream and the misses in a row so far.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    outstanding: Option<([u8; 8], Instant)>,
    missed: u32,
}

impl Liveness {
    /// Settles the PING out at `now`: still `Waiting` within `timeout`, else a miss (and the
    /// PING is forgotten, so a later PONG still shows the stream alive).
    pub(crate) fn settle(&mut self, now: Instant, timeout: Duration, limit: u32) -> Outstanding {
        let Some((_, sent)) = self.outstanding else { return Outstanding::None };
        if now.saturating_duration_since(sent) < timeout {
            return Outstanding::Waiting;
        }
        self.outstanding = None;
        Outstanding::Missed { dead: self.miss(limit) }
    }

    /// A PING with `nonce` went out at `now`.
    pub(crate) fn sent(&mut self, nonce: [u8; 8], now: Instant) {
        self.outstanding = Some((nonce, now));
    }

    /// A PING was due but could not even be queued while nothing was written: the stream's
    /// write is stuck, which counts as a miss. True once the misses reach `limit`.
    pub(crate) fn stuck(&mut self, limit: u32) -> bool {
        self.miss(limit)
    }

    /// A PONG arrived at `now`: the stream is alive, whichever PING it answers. Returns the
    /// round-trip time when it answers the PING out.
    pub(crate) fn pong(&mut self, nonce: [u8; 8], now: Instant) -> Option<Duration> {
        self.missed = 0;
        match self.outstanding {
            Some((sent_nonce, sent)) if sent_nonce == nonce => {
                self.outstanding = None;
                Some(now.saturating_duration_since(sent))
            }
            _ => None,
        }
    }

    fn miss(&mut self, limit: u32) -> bool {
        self.missed = self.missed.saturating_add(1);
        self.missed >= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn a_ping_waits_its_timeout_then_counts_as_missed() {
        let t0 = Instant::now();
        let mut live = Liveness::default();
        assert_eq!(live.settle(t0, TIMEOUT, 3), Outstanding::None);
        live.sent([1; 8], t0);
        assert_eq!(live.settle(t0 + Duration::from_secs(4), TIMEOUT, 3), Outstanding::Waiting);
        assert_eq!(live.settle(t0 + TIMEOUT, TIMEOUT, 3), Outstanding::Missed { dead: false });
        // Settled once: the PING is forgotten.
        assert_eq!(live.settle(t0 + TIMEOUT * 2, TIMEOUT, 3), Outstanding::None);
    }

    #[test]
    fn misses_in_a_row_reach_the_limit_and_any_pong_clears_them() {
        let t0 = Instant::now();
        let mut live = Liveness::default();
        for round in 1..=2u32 {
            live.sent([1; 8], t0);
            assert_eq!(live.settle(t0 + TIMEOUT, TIMEOUT, 3), Outstanding::Missed { dead: false });
            assert!(round < 3);
        }
        // A late PONG (its PING already settled) still shows the stream alive.
        assert_eq!(live.pong([1; 8], t0 + TIMEOUT), None);
        live.sent([2; 8], t0);
        assert_eq!(live.settle(t0 + TIMEOUT, TIMEOUT, 3), Outstanding::Missed { dead: false });
        assert!(!live.stuck(3));
        assert!(live.stuck(3), "the third miss in a row");
    }

    #[test]
    fn the_answering_pong_gives_the_round_trip() {
        let t0 = Instant::now();
        let mut live = Liveness::default();
        live.sent([7; 8], t0);
        assert_eq!(live.pong([8; 8], t0 + Duration::from_millis(3)), None, "another PING's");
        assert_eq!(
            live.pong([7; 8], t0 + Duration::from_millis(4)),
            Some(Duration::from_millis(4))
        );
        assert_eq!(live.settle(t0 + TIMEOUT, TIMEOUT, 3), Outstanding::None);
    }

    #[test]
    fn counters_report_the_last_round_trip() {
        let counters = PeerCounters::default();
        let peer = PeerId::random();
        assert_eq!(counters.health(peer, 1, 1).last_rtt, None);
        counters.ping_sent();
        counters.pong(Duration::from_micros(250));
        counters.missed();
        counters.marked_unhealthy();
        let health = counters.health(peer, 2, 1);
        assert_eq!((health.pings_sent, health.pongs_received, health.pongs_missed), (1, 1, 1));
        assert_eq!(health.streams_marked_unhealthy, 1);
        assert_eq!((health.streams, health.healthy_streams), (2, 1));
        assert_eq!(health.last_rtt, Some(Duration::from_micros(250)));
    }
}
