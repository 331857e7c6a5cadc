use vpn_api::ConfigService;
use vpn_types::{
    CircuitBreakerSettings, HealthCheckSettings, RetrySettings, StreamPoolSettings, VpnConfig,
    WorkerSettings,
};

/// A loaded, validated configuration serving the node's settings.
#[derive(Debug, Clone)]
pub struct FileConfig {
    config: VpnConfig,
}

impl FileConfig {
    /// Serves `config`, which [`crate::load_file`] or [`crate::load_str`] returned.
    pub fn new(config: VpnConfig) -> Self {
        Self { config }
    }

    /// The whole configuration.
    pub fn config(&self) -> &VpnConfig {
        &self.config
    }
}

impl ConfigService for FileConfig {
    fn worker(&self) -> WorkerSettings {
        self.config.worker.clone()
    }

    fn stream_pool(&self) -> StreamPoolSettings {
        self.config.stream_pool.clone()
    }

    fn circuit_breaker(&self) -> CircuitBreakerSettings {
        self.config.circuit_breaker.clone()
    }

    fn health_check(&self) -> HealthCheckSettings {
        self.config.health_check.clone()
    }

    fn retry(&self) -> RetrySettings {
        self.config.retry.clone()
    }
}
