use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc::error::TrySendError, oneshot};
use tokio::task::JoinHandle;
use vpn_api::TunPacket;
use vpn_types::{DropReason, FlowKey};
use vpn_utils::extract_ip_and_ports;
use vpn_worker::{QueuedPacket, SendResult};
use vpn_worker::{Worker, WorkerContext, WorkerFigures, WorkerHandle};

struct Inner {
    ctx: Arc<WorkerContext>,
    workers: Mutex<HashMap<FlowKey, WorkerHandle>>,
    cleanup: Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// Hands packets to their flow's worker. See the crate docs.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl Dispatcher {
    /// A dispatcher whose workers share `ctx`.
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        let inner = Inner {
            ctx,
            workers: Mutex::new(HashMap::new()),
            cleanup: Mutex::new(None),
            stopped: AtomicBool::new(false),
        };
        Self { inner: Arc::new(inner) }
    }

    fn workers(&self) -> MutexGuard<'_, HashMap<FlowKey, WorkerHandle>> {
        // The map stays consistent across a panic elsewhere: entries are whole values.
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the idle clean-up. Needs a tokio runtime; starting twice is harmless.
    pub fn start(&self) {
        let mut cleanup = self.inner.cleanup.lock().unwrap_or_else(|e| e.into_inner());
        if cleanup.is_some() {
            return;
        }
        let every = self.inner.ctx.settings().cleanup_interval;
        let me = self.clone();
        *cleanup = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                me.stop_idle_workers();
            }
        }));
    }

    /// Stops taking packets, stops the clean-up, and waits for every worker to send what
    /// it holds and end. Stopping twice is harmless.
    pub async fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        let cleanup = self.inner.cleanup.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = cleanup {
            task.abort();
            let _ = task.await;
        }
        let workers: Vec<_> = self.workers().drain().map(|(_, w)| w).collect();
        self.inner.ctx.metrics().set_active_workers(0);
        for worker in workers {
            worker.finish().await;
        }
    }

    /// Hands a packet read from the TUN to its flow's worker. Never waits. Returns the
    /// drop reason (already counted) when the packet was dropped here.
    pub fn dispatch(&self, packet: TunPacket) -> SendResult {
        self.dispatch_queued(packet, None)
    }

    /// Like [`Dispatcher::dispatch`], and reports the packet's fate on `done`: sent (handed
    /// to a stream), or dropped with its reason, here or later in the worker.
    pub fn dispatch_with_callback(&self, packet: TunPacket, done: oneshot::Sender<SendResult>) {
        let _ = self.dispatch_queued(packet, Some(done));
    }

    fn dispatch_queued(
        &self,
        packet: TunPacket,
        done: Option<oneshot::Sender<SendResult>>,
    ) -> SendResult {
        let drop_with = |reason: DropReason, done: Option<oneshot::Sender<SendResult>>| {
            self.inner.ctx.metrics().record_drop(reason);
            if let Some(done) = done {
                let _ = done.send(Err(reason));
            }
            Err(reason)
        };
        if self.inner.stopped.load(Ordering::Acquire) {
            return drop_with(DropReason::Shutdown, done);
        }
        let info = match extract_ip_and_ports(&packet.data) {
            Ok(info) => info,
            Err(_) => return drop_with(DropReason::Malformed, done),
        };
        let key = FlowKey::from(&info);
        // The packet's share of the outbound byte budget, held until its frame is written.
        let Some(permit) = self.inner.ctx.budget().try_take(packet.data.len()) else {
            return drop_with(DropReason::QueueFull, done);
        };
        let mut queued = QueuedPacket {
            data: packet.data,
            dst: info.dst_ip,
            gso: packet.gso,
            done,
            permit: Some(permit),
        };
        let mut workers = self.workers();
        // Two tries: the second after replacing a worker that had ended.
        for _ in 0..2 {
            let worker = match workers.get(&key) {
                Some(worker) => worker,
                None => {
                    if workers.len() >= self.inner.ctx.settings().max_workers {
                        drop(workers);
                        return drop_with(DropReason::WorkerLimit, queued.done.take());
                    }
                    let worker = Worker::spawn(key, self.inner.ctx.clone());
                    self.inner.ctx.metrics().set_active_workers(workers.len() as u64 + 1);
                    workers.entry(key).or_insert(worker)
                }
            };
            match worker.try_send(queued) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(mut packet)) => {
                    drop(workers);
                    return drop_with(DropReason::QueueFull, packet.done.take());
                }
                Err(TrySendError::Closed(packet)) => {
                    workers.remove(&key);
                    queued = packet;
                }
            }
        }
        drop(workers);
        drop_with(DropReason::Shutdown, queued.done.take())
    }

    /// Stops workers idle for `idle_timeout` with nothing queued, and forgets ended ones.
    /// The clean-up task calls this every `cleanup_interval`.
    pub fn stop_idle_workers(&self) {
        let idle = self.inner.ctx.settings().idle_timeout;
        let mut workers = self.workers();
        workers.retain(|_, w| {
            !w.is_finished() && (w.queued() > 0 || w.idle_for(&self.inner.ctx) < idle)
        });
        self.inner.ctx.metrics().set_active_workers(workers.len() as u64);
    }

    /// Workers alive now.
    pub fn active_workers(&self) -> usize {
        self.workers().len()
    }

    /// Each worker's figures now.
    pub fn worker_figures(&self) -> Vec<(FlowKey, WorkerFigures)> {
        self.workers().iter().map(|(k, w)| (*k, w.figures())).collect()
    }
}
