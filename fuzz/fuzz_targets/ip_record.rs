//! Signed IP records as peers store and serve them: opening any bytes under any key never
//! panics, and a record that opens holds the key's address and passes the registry.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use vpn_api::IpRegistry;
use vpn_api::{IpNet, PeerId};
use vpn_wire::IpRecord;

/// A registry that lets every peer hold anything in the overlay.
struct Overlay;

impl IpRegistry for Overlay {
    fn may_hold(&self, _: &PeerId, net: &IpNet) -> bool {
        let overlay: [IpNet; 2] = ["100.64.0.0/10".parse().unwrap(), "fd00::/8".parse().unwrap()];
        overlay.iter().any(|o| o.contains(net))
    }
}

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes name the key's address (an IPv4 one when the first byte is even).
    let Some((addr, bytes)) = data.split_first_chunk::<16>() else { return };
    let key = match addr[0] % 2 {
        0 => IpAddr::from([addr[1], addr[2], addr[3], addr[4]]),
        _ => IpAddr::from(*addr),
    };
    let now = 1_800_000_000;
    if let Ok(record) = IpRecord::open(bytes, key, now, &Overlay) {
        assert!(record.addresses.iter().any(|net| net.contains(&key)));
        assert!(record.addresses.iter().all(|net| Overlay.may_hold(&record.peer_id, net)));
    }
});
