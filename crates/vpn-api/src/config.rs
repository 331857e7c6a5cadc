use vpn_types::{
    CircuitBreakerSettings, HealthCheckSettings, RetrySettings, StreamPoolSettings, WorkerSettings,
};

/// The settings of each component, validated when they were loaded. Never waits.
pub trait ConfigService: Send + Sync {
    /// Dispatcher and worker settings.
    fn worker(&self) -> WorkerSettings;
    /// Stream pool settings.
    fn stream_pool(&self) -> StreamPoolSettings;
    /// Circuit breaker settings.
    fn circuit_breaker(&self) -> CircuitBreakerSettings;
    /// Health check and warmer settings.
    fn health_check(&self) -> HealthCheckSettings;
    /// Retry settings.
    fn retry(&self) -> RetrySettings;
}
