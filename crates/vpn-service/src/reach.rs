//! How peers are reached (directly or through a relay), as the metrics count it.

use std::sync::{Arc, OnceLock};

use vpn_api::{MetricsService, PeerId};
use vpn_p2p::PathObserver;
use vpn_stream::StreamPool;

/// The swarm's [`PathObserver`]: paths and hole punches go to the metrics; a peer that got
/// a direct connection has its flows moved onto it.
pub(crate) struct PathMetrics {
    pub(crate) metrics: Arc<dyn MetricsService>,
    /// The stream pool, once started (the swarm starts first).
    pub(crate) pool: Arc<OnceLock<StreamPool>>,
}

impl PathObserver for PathMetrics {
    fn paths(&self, direct: usize, relayed: usize) {
        self.metrics.set_peer_paths(direct as u64, relayed as u64);
    }

    fn hole_punch(&self, _peer: &PeerId, succeeded: bool) {
        self.metrics.record_hole_punch(succeeded);
    }

    fn dial_refused(&self, why: vpn_types::DialRefusal) {
        self.metrics.record_dial_refused(why);
    }

    fn went_direct(&self, peer: &PeerId) {
        if let Some(pool) = self.pool.get() {
            pool.move_peer(*peer);
        }
    }
}
