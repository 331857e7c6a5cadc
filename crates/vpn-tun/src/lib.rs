//! The TUN device of vpn-node, over tun-rs (Linux).
//!
//! [`Tun::create`] makes the named interface with the overlay IPv4 address (and IPv6 when
//! configured), sets its MTU, brings it up and adds a route for every routed prefix of the
//! overlay; [`Tun`] implements [`vpn_api::TunDevice`] with batched reads (one wait, then
//! everything ready) and writes. Dropping the device removes the interface, and its
//! addresses and routes go with it.
//!
//! With offload on, the kernel hands over TCP (and, where it can, UDP) super-packets of up to
//! 64 KiB with a virtio-net header; they are read as one packet with its `GsoInfo`, and
//! written back the same way, so a segment of 64 KiB crosses the tunnel as one frame.
//! Partial checksums the kernel leaves on ordinary packets are finished on read.

mod device;
mod vnet;

pub use device::{OpenTun, Tun, TunConfig};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
