//! Settings of the packet engine: workers, stream pool, breakers, health checks, retry.

use std::time::Duration;

settings! {
    /// How flows are dispatched to workers.
    WorkerSettings {
        /// Packets a worker may hold before new ones are dropped as `queue_full`.
        queue_capacity: usize = 1024, with_queue_capacity;
        /// Most packets a worker writes to its stream in one batch.
        batch_max: usize = 64, with_batch_max;
        /// A worker with no packet for this long stops.
        @serde(with = "humantime_serde")
        idle_timeout: Duration = Duration::from_secs(60), with_idle_timeout;
        /// How often idle workers are looked for.
        @serde(with = "humantime_serde")
        cleanup_interval: Duration = Duration::from_secs(10), with_cleanup_interval;
        /// Most workers alive at once; packets of a new flow beyond it are dropped.
        max_workers: usize = 4096, with_max_workers;
        /// A packet not sent within this bound is dropped as `timeout`.
        @serde(with = "humantime_serde")
        send_timeout: Duration = Duration::from_millis(1000), with_send_timeout;
        /// Bytes of outbound packets held at once, all flows together, from the TUN read
        /// until their frames are written to a stream; a packet beyond it is dropped as
        /// `queue_full`.
        max_queued_bytes: usize = 16 * 1024 * 1024, with_max_queued_bytes;
    }
}

settings! {
    /// How many streams are kept to each peer, and for how long.
    StreamPoolSettings {
        /// Streams kept open to a recently used peer.
        min_streams_per_peer: usize = 1, with_min_streams_per_peer;
        /// Most streams open to one peer.
        max_streams_per_peer: usize = 4, with_max_streams_per_peer;
        /// A stream with no traffic for this long is closed (down to the minimum).
        @serde(with = "humantime_serde")
        stream_idle_timeout: Duration = Duration::from_secs(300), with_stream_idle_timeout;
        /// How often idle streams are looked for.
        @serde(with = "humantime_serde")
        cleanup_interval: Duration = Duration::from_secs(30), with_cleanup_interval;
        /// Opening one stream may take this long before it counts as failed.
        @serde(with = "humantime_serde")
        open_timeout: Duration = Duration::from_secs(5), with_open_timeout;
        /// Write batches queued for one stream's writer.
        writer_queue_capacity: usize = 256, with_writer_queue_capacity;
    }
}

settings! {
    /// When a destination's circuit breaker opens and closes again.
    CircuitBreakerSettings {
        /// Consecutive failures that open the breaker.
        failure_threshold: u32 = 5, with_failure_threshold;
        /// How long an open breaker waits before admitting a probe. Short: a probe costs
        /// little (stream opens are shared and bounded by their own timeout), and this is
        /// how long a peer that is back stays refused.
        @serde(with = "humantime_serde")
        reset_timeout: Duration = Duration::from_secs(1), with_reset_timeout;
        /// Successful probes that close a half-open breaker.
        success_threshold: u32 = 2, with_success_threshold;
        /// A breaker unused for this long is forgotten.
        @serde(with = "humantime_serde")
        idle_eviction: Duration = Duration::from_secs(600), with_idle_eviction;
    }
}

settings! {
    /// How streams are checked for health and kept warm.
    HealthCheckSettings {
        /// How often idle streams are pinged.
        @serde(with = "humantime_serde")
        interval: Duration = Duration::from_secs(10), with_interval;
        /// A PONG later than this counts as missed.
        @serde(with = "humantime_serde")
        timeout: Duration = Duration::from_secs(5), with_timeout;
        /// Missed PONGs in a row that mark a stream unhealthy.
        max_consecutive_failures: u32 = 3, with_max_consecutive_failures;
        /// How often the warmer tops up streams to recently used peers.
        @serde(with = "humantime_serde")
        warm_interval: Duration = Duration::from_secs(30), with_warm_interval;
        /// A peer used within this window counts as recently used.
        @serde(with = "humantime_serde")
        recent_peer_window: Duration = Duration::from_secs(300), with_recent_peer_window;
    }
}

settings! {
    /// Retry with exponential backoff, used around opening streams.
    RetrySettings {
        /// Attempts in all, the first included.
        max_attempts: u32 = 3, with_max_attempts;
        /// Delay before the first retry.
        @serde(with = "humantime_serde")
        initial_interval: Duration = Duration::from_millis(50), with_initial_interval;
        /// Upper bound of any delay.
        @serde(with = "humantime_serde")
        max_interval: Duration = Duration::from_secs(1), with_max_interval;
        /// Factor by which the delay grows after each retry.
        multiplier: f64 = 2.0, with_multiplier;
        /// Random spread of each delay, as a fraction of it (0.2 = plus or minus 20%).
        jitter: f64 = 0.2, with_jitter;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_one_field() {
        let s = WorkerSettings::default().with_max_workers(7);
        assert_eq!(s.max_workers, 7);
        assert_eq!(s.queue_capacity, WorkerSettings::default().queue_capacity);
    }

    #[test]
    fn defaults_are_sane() {
        let pool = StreamPoolSettings::default();
        assert!(pool.min_streams_per_peer <= pool.max_streams_per_peer);
        let retry = RetrySettings::default();
        assert!(retry.initial_interval <= retry.max_interval);
        let health = HealthCheckSettings::default();
        assert!(health.timeout < health.interval);
    }
}
