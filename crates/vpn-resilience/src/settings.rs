//! The circuit breaker and retry settings: the `[circuit_breaker]` and `[retry]` sections
//! of the configuration file.

use std::time::Duration;

use vpn_types::settings;

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
    fn retry_delays_grow_to_their_bound() {
        let retry = RetrySettings::default();
        assert!(retry.initial_interval <= retry.max_interval);
    }
}
