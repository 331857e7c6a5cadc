//! Settings of every part of the node, each with its defaults: the sections of the
//! configuration file.
//!
//! Every struct has `Default`, a `with_<field>` builder per field, and deserializes from the
//! configuration file with durations written with units (`"30s"`, `"250ms"`). A missing
//! field takes its default; an unknown field is an error.

/// Defines a settings struct with its documented fields, defaults and `with_*` builders.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(@serde($serde:meta))?
                $field:ident : $ty:ty = $default:expr, $with:ident;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                $(#[serde($serde)])?
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl $name {
            $(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                #[must_use]
                pub fn $with(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

mod engine;
mod node;

pub use engine::{
    CircuitBreakerSettings, HealthCheckSettings, RetrySettings, StreamPoolSettings, WorkerSettings,
};
pub use node::{
    ControlSettings, DiscoverySettings, FirewallSettings, InterfaceSettings, LimitSettings,
    MetricsSettings, NetworkSettings, NodeSettings, PeerSettings, Transport, VpnConfig,
};
