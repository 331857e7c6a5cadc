//! The node's counters: [`AtomicMetrics`] implements `vpn_api::MetricsService` with
//! lock-free atomics and renders them in the Prometheus text format.
//!
//! ```
//! use vpn_api::MetricsService;
//! use vpn_metrics::AtomicMetrics;
//! use vpn_types::DropReason;
//!
//! let metrics = AtomicMetrics::new();
//! metrics.record_sent(2, 2800);
//! metrics.record_drop(DropReason::QueueFull);
//! assert_eq!(metrics.snapshot().bytes_sent, 2800);
//! assert!(metrics.render_prometheus().contains("vpn_packets_dropped_total{reason=\"queue_full\"} 1"));
//! ```

mod atomic;

pub use atomic::AtomicMetrics;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
