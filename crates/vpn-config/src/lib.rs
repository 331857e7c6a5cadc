//! vpn-node configuration: one TOML file plus `VPN_*` environment overrides.
//!
//! [`load_file`] reads the file, applies the environment (`VPN_<SECTION>__<KEY>`, e.g.
//! `VPN_WORKER__MAX_WORKERS=2048` or `VPN_DISCOVERY__MDNS=false`; lists are
//! comma-separated), deserializes it into a [`vpn_types::VpnConfig`] (durations with units:
//! `"30s"`, `"5m"`) and validates the whole of it. Every problem is reported with the key,
//! the value and the rule it breaks. [`FileConfig`] serves the result as the node's
//! [`vpn_api::ConfigService`].
//!
//! ```
//! use vpn_api::ConfigService;
//! use vpn_config::{FileConfig, load_str};
//!
//! let config = load_str("[node]\naddress = \"100.64.0.1/10\"\n[worker]\nmax_workers = 64\n", []).unwrap();
//! let service = FileConfig::new(config);
//! assert_eq!(service.worker().max_workers, 64);
//!
//! let err = load_str("[node]\naddress = \"100.64.0.1/10\"\n[retry]\njitter = 3.0\n", []).unwrap_err();
//! assert_eq!(err.to_string(), "config key `retry.jitter` = 3: must be between 0 and 1");
//! ```

mod error;
mod load;
mod service;
mod validate;

pub use error::ConfigLoadError;
pub use load::{TEMPLATE, load_file, load_file_with_env, load_str};
pub use service::FileConfig;
pub use validate::validate;
pub use vpn_types::VpnConfig;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
