//! Certificates and revocation lists as strangers and members present them (in the
//! membership exchange, inside IP records, in the DHT): opening any bytes never panics, and
//! what opens keeps the limits a valid one keeps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_wire::{Certificate, MAX_CERT_NAME, MAX_CERT_NETS, MAX_REVOKED, RevocationList};

fuzz_target!(|data: &[u8]| {
    if let Ok((cert, _issuer)) = Certificate::open(data) {
        assert!(cert.addresses.len() <= MAX_CERT_NETS && cert.routes.len() <= MAX_CERT_NETS);
        assert!(cert.name.len() <= MAX_CERT_NAME);
        // Whatever opens is checked for a peer and a time without panicking.
        let _ = Certificate::verify(data, &cert.peer_id, &[], 1_800_000_000);
        let _ = cert.is_valid_at(u64::MAX);
    }
    if let Ok((list, _issuer)) = RevocationList::open(data) {
        assert!(list.revoked.len() <= MAX_REVOKED);
    }
});
