//! The first fault a running node cannot carry traffic after.

use std::sync::Arc;

use tokio::sync::watch;
use vpn_api::TunDevice;

/// The first fault a running node cannot carry traffic after (its TUN device is gone, its
/// swarm's task died), shared by the parts that can meet one.
#[derive(Clone, Default)]
pub(crate) struct Fault(Arc<watch::Sender<Option<String>>>);

impl Fault {
    /// Records `what` unless a fault was recorded before; logs it once.
    pub(crate) fn raise(&self, what: String) {
        self.0.send_if_modified(|fault| {
            if fault.is_some() {
                return false;
            }
            tracing::error!("{what}; the node cannot carry traffic any more");
            *fault = Some(what);
            true
        });
    }

    pub(crate) fn tun_gone(&self, tun: &dyn TunDevice) {
        self.raise(format!("the TUN device {} is gone", tun.name()));
    }

    /// Forgets the fault of an earlier run (a node started again).
    pub(crate) fn clear(&self) {
        self.0.send_replace(None);
    }

    /// The fault, once one was raised.
    pub(crate) async fn wait(&self) -> String {
        let mut seen = self.0.subscribe();
        match seen.wait_for(Option::is_some).await {
            Ok(fault) => fault.clone().unwrap_or_default(),
            // The sender lives in `self`: this cannot close while we wait.
            Err(_) => std::future::pending().await,
        }
    }

    /// The fault raised so far, if any.
    #[cfg(test)]
    pub(crate) fn raised(&self) -> Option<String> {
        self.0.borrow().clone()
    }
}
