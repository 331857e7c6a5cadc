//! The datagram decoder on any bytes: it never panics, a packet comes out as the very bytes
//! that went in, and a control message encodes back to the bytes it came from.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use vpn_wire::Datagram;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    match Datagram::decode(input.clone()) {
        Ok(Datagram::Packet(packet)) => assert_eq!(packet, input),
        Ok(Datagram::Ping(nonce)) => assert_eq!(Datagram::ping(nonce), input),
        Ok(Datagram::Pong(nonce)) => assert_eq!(Datagram::pong(nonce), input),
        Err(_) => {}
    }
});
