//! The frame decoder on any bytes, fed in the pieces the input chooses: it never panics,
//! every frame it yields encodes back to the bytes it came from, and it never takes more
//! than it was given.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vpn_wire::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size of the pieces the stream arrives in.
    let Some((&piece, stream)) = data.split_first() else { return };
    let piece = usize::from(piece).max(1);
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut decoded = BytesMut::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame.encode(&mut decoded).expect("a decoded frame encodes"),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    while let Ok(Some(frame)) = decoder.decode_eof(&mut buf) {
        frame.encode(&mut decoded).expect("a decoded frame encodes");
    }
    assert!(decoded.len() <= stream.len());
});
