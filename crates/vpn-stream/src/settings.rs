//! The stream pool and health check settings: the `[stream_pool]` and `[health_check]`
//! sections of the configuration file.

use std::time::Duration;

use vpn_types::settings;

settings! {
    /// How many streams are kept to each peer, and for how long.
    StreamPoolSettings {
        /// Streams kept open to a recently used peer.
        min_streams_per_peer: usize = 1, with_min_streams_per_peer;
        /// Most streams open to one peer.
        max_streams_per_peer: usize = 4, with_max_streams_per_peer;
        /// A stream with no lease that carried no packet for this long is closed (health PINGs
        /// do not count; the warmer reopens streams to peers still in use).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sane() {
        let pool = StreamPoolSettings::default();
        assert!(pool.min_streams_per_peer <= pool.max_streams_per_peer);
        let health = HealthCheckSettings::default();
        assert!(health.timeout < health.interval);
    }
}
