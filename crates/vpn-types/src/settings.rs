//! The shape every settings struct of the node shares.
//!
//! Each crate defines its own section of the configuration file with [`settings!`](crate::settings!). Every struct has `Default`, a `with_<field>` builder per field, and deserializes from the
//! configuration file with durations written with units (`"30s"`, `"250ms"`). A missing
//! field takes its default; an unknown field is an error.

/// Defines a settings struct with its documented fields, defaults and `with_*` builders.
///
/// The struct derives `Deserialize`, so the calling crate depends on `serde` (and on
/// `humantime-serde` when a field is written `@serde(with = "humantime_serde")`).
///
/// ```
/// use std::time::Duration;
/// use vpn_types::settings;
///
/// settings! {
///     /// How often something happens.
///     TickSettings {
///         /// Time between two ticks.
///         @serde(with = "humantime_serde")
///         interval: Duration = Duration::from_secs(1), with_interval;
///     }
/// }
///
/// let s = TickSettings::default().with_interval(Duration::from_millis(5));
/// assert_eq!(s.interval, Duration::from_millis(5));
/// ```
#[macro_export]
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
