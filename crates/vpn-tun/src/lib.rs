//! The TUN device of vpn-node, over tun-rs (Linux).
//!
//! [`Tun::create`] makes the named interface with the overlay IPv4 address (and IPv6 when
//! configured), sets its MTU, brings it up and adds a route for every routed prefix of the
//! overlay; [`Tun`] implements [`vpn_api::TunDevice`] with batched reads (one wait, then
//! everything ready) and writes. Dropping the device removes the interface, and its
//! addresses and routes go with it.

mod device;

pub use device::{Tun, TunConfig};
