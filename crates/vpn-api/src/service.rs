use crate::MetricsSnapshot;
use async_trait::async_trait;
use vpn_errors::VpnError;

/// The whole node: brings every part up in order and down again.
#[async_trait]
pub trait VpnService: Send + Sync {
    /// Starts every part (network, discovery, streams, TUN, packet engine) in dependency
    /// order and returns once packets flow. Waits on the network (listening, bootstrap).
    ///
    /// Errors: a `ServiceError` of kind `Startup` naming the part that failed, with its
    /// cause; `AlreadyStarted` if running. Parts started before the failure are stopped.
    async fn start(&self) -> Result<(), VpnError>;

    /// Stops every part in reverse order, closing streams and removing the TUN device and
    /// its routes. Stopping a stopped service is harmless and returns `Ok`.
    async fn stop(&self) -> Result<(), VpnError>;

    /// A copy of the node's counters now. Never waits.
    fn metrics(&self) -> MetricsSnapshot;
}
