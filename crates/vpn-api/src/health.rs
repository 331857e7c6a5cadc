use crate::HealthSnapshot;
use async_trait::async_trait;
use vpn_errors::VpnError;

/// Keeps pooled streams honest: PINGs idle streams and marks those that stop answering
/// unhealthy, and keeps a few streams open to recently used peers.
#[async_trait]
pub trait StreamHealthService: Send + Sync {
    /// Starts the checker task. Errors with `AlreadyStarted` if it runs.
    async fn start_health_checker(&self) -> Result<(), VpnError>;

    /// Stops the checker task and waits for it to end. Harmless when not running.
    async fn stop_health_checker(&self);

    /// Starts the warmer task. Errors with `AlreadyStarted` if it runs.
    async fn start_warmer(&self) -> Result<(), VpnError>;

    /// Stops the warmer task and waits for it to end. Harmless when not running.
    async fn stop_warmer(&self);

    /// Health figures per peer now. Never waits.
    fn health(&self) -> HealthSnapshot;
}
