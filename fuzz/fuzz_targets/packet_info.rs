//! The packet parsers on any bytes: they never panic, and a packet that validates also
//! parses to the same addresses and ports.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = vpn_utils::extract_ip_and_ports(data);
    if let Ok(valid) = vpn_utils::validate_ip_packet(data) {
        assert_eq!(parsed.ok(), Some(valid));
    }
});
