//! The worker settings: the `[worker]` section of the configuration file.

use std::time::Duration;

use vpn_types::settings;

settings! {
    /// How flows are dispatched to workers.
    WorkerSettings {
        /// Packets a worker may hold before new ones are dropped as `queue_full`.
        queue_capacity: usize = 1024, with_queue_capacity;
        /// Most packets a worker writes to its stream in one batch.
        batch_max: usize = 64, with_batch_max;
        /// A worker with no packet for this long stops.
        @serde(with = "humantime_serde")
        idle_timeout: Duration = Duration::from_secs(60), with_idle_timeout;
        /// How often idle workers are looked for.
        @serde(with = "humantime_serde")
        cleanup_interval: Duration = Duration::from_secs(10), with_cleanup_interval;
        /// Most workers alive at once; packets of a new flow beyond it are dropped.
        max_workers: usize = 4096, with_max_workers;
        /// A packet not sent within this bound is dropped as `timeout`.
        @serde(with = "humantime_serde")
        send_timeout: Duration = Duration::from_millis(1000), with_send_timeout;
        /// Bytes of outbound packets held at once, all flows together, from the TUN read
        /// until their frames are written to a stream; a packet beyond it is dropped as
        /// `queue_full`.
        max_queued_bytes: usize = 16 * 1024 * 1024, with_max_queued_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_one_field() {
        let s = WorkerSettings::default().with_max_workers(7);
        assert_eq!(s.max_workers, 7);
        assert_eq!(s.queue_capacity, WorkerSettings::default().queue_capacity);
    }
}
