//! The publisher: our IP record in the DHT, kept fresh.

use std::sync::Arc;
use std::time::Duration;

use vpn_api::PeerDiscoveryService;

/// A failed publication is tried again this soon (or at the republish interval if sooner).
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// Publishes our IP record, and again before half its lifetime has passed.
pub(crate) async fn publish(discovery: Arc<dyn PeerDiscoveryService>, every: Duration) {
    loop {
        let wait = match discovery.sync_to_dht().await {
            Ok(()) => every,
            Err(e) => {
                tracing::debug!(error = %e, "publishing our IP record failed; trying again soon");
                PUBLISH_RETRY.min(every)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
