//! Typed errors of vpn-node, and their classification by kind.
//!
//! Library crates return these (or their own `thiserror` enums that wrap them). Whether an
//! error is a network error, is worth retrying, or means the connection was reset is
//! decided by its kind — [`NetworkErrorKind`], [`ServiceErrorKind`] or
//! [`std::io::ErrorKind`] anywhere in its source chain — never by its message text.
//!
//! ```
//! use std::io;
//! use vpn_errors::{is_connection_reset_error, is_temporary_error, NetworkError, NetworkErrorKind, VpnError};
//!
//! let err = VpnError::from(NetworkError::from_io("write frames", io::Error::from(io::ErrorKind::ConnectionReset)));
//! assert!(is_connection_reset_error(&err));
//! assert!(is_temporary_error(&err));
//! assert_eq!(err.network_kind(), Some(NetworkErrorKind::ConnectionReset));
//! ```

mod classify;
mod config;
mod network;

mod service;
mod vpn;

pub use classify::{is_connection_reset_error, is_network_error, is_temporary_error};
pub use config::ConfigError;
pub use network::{NetworkError, NetworkErrorKind};
pub use service::{ServiceError, ServiceErrorKind};
pub use vpn::VpnError;
pub use vpn_types::PacketError;

/// A boxed error that can cross threads, kept as the source of our errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
