//! vpn-node configuration: one TOML file plus `VPN_*` environment overrides.
//!
//! [`load_file`] reads the file, applies the environment (`VPN_<SECTION>__<KEY>`, e.g.
//! `VPN_WORKER__MAX_WORKERS=2048` or `VPN_DISCOVERY__MDNS=false`; lists are
//! comma-separated), deserializes it into a [`VpnConfig`] (durations with units:
//! `"30s"`, `"5m"`) and validates the whole of it. Every problem is reported with the key,
//! the value and the rule it breaks.
//!
//! The node-level sections ([`NodeSettings`], [`NetworkSettings`], [`DiscoverySettings`], ...)
//! are defined here; the engine sections belong to the crates they configure
//! (`vpn_worker::WorkerSettings`, `vpn_stream::StreamPoolSettings` and
//! `HealthCheckSettings`, `vpn_resilience::CircuitBreakerSettings` and `RetrySettings`) and
//! [`VpnConfig`] gathers them all.
//!
//! ```
//! use vpn_config::load_str;
//!
//! let config = load_str("[node]\naddress = \"100.64.0.1/10\"\n[worker]\nmax_workers = 64\n", []).unwrap();
//! assert_eq!(config.worker.max_workers, 64);
//!
//! let err = load_str("[node]\naddress = \"100.64.0.1/10\"\n[retry]\njitter = 3.0\n", []).unwrap_err();
//! assert_eq!(err.to_string(), "config key `retry.jitter` = 3: must be between 0 and 1");
//! ```

mod error;
mod load;
mod settings;
mod validate;

pub use error::ConfigLoadError;
pub use load::{TEMPLATE, load_file, load_file_with_env, load_str};
pub use settings::{
    ControlSettings, DiscoverySettings, FirewallSettings, InterfaceSettings, LimitSettings,
    LogSettings, MembershipSettings, MetricsSettings, NetworkSettings, NodeSettings, PeerSettings,
    RelaySettings, Transport, VpnConfig,
};
pub use validate::{parse_ca_key, validate};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
