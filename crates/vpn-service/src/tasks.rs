//! Every task a running node spawns, under one owner.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The owner of a running node's tasks: the TUN reader, the publisher, the receiver's accept
/// loop, and each inbound stream's reader and lookup task. Every task ends when the owner
/// stops (at its next `.await`), and [`Tasks::stop`] returns once all have ended, so nothing
/// the node spawned — nor anything such a task holds, like the TUN device — outlives it.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it ends or the owner stops. Spawning after the stop is allowed:
    /// the task ends at once.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Tasks not yet ended.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Ends every task and waits until all have ended.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_what_they_spawned() {
        let tasks = Tasks::default();
        let held = Arc::new(());
        let (inner, outer) = (tasks.clone(), held.clone());
        tasks.spawn(async move {
            let held = outer.clone();
            inner.spawn(async move {
                let _held = held;
                std::future::pending::<()>().await;
            });
            let _held = outer;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(tasks.running(), 2);
        assert_eq!(Arc::strong_count(&held), 3);
        tasks.stop().await;
        assert_eq!(tasks.running(), 0);
        assert_eq!(Arc::strong_count(&held), 1, "what the tasks held is released");
        // A task spawned after the stop ends at once.
        tasks.spawn(std::future::pending());
        tasks.stop().await;
        assert_eq!(tasks.running(), 0);
    }
}
