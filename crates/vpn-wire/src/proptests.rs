//! Property tests of the frame codec over arbitrary input and chunking.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::{Frame, FrameDecoder, MAX_FRAME, SegmentHeader, encode_extension};

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(|p| Frame::Packet(Bytes::from(p))),
        (any::<[u8; 10]>(), proptest::collection::vec(any::<u8>(), 0..3000)).prop_map(|(h, p)| {
            Frame::Segmented { header: SegmentHeader::from_bytes(&h), packet: Bytes::from(p) }
        }),
        any::<[u8; 8]>().prop_map(Frame::Ping),
        any::<[u8; 8]>().prop_map(Frame::Pong),
    ]
}

/// Splits `bytes` at the given cut points (taken modulo the length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

/// Feeds `chunks` one by one, collecting frames until the first error.
fn feed(chunks: &[Vec<u8>]) -> (Vec<Frame>, Option<crate::FrameError>, FrameDecoder, BytesMut) {
    let mut decoder = FrameDecoder::new();
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        src.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e), decoder, src),
            }
        }
    }
    (frames, None, decoder, src)
}

proptest! {
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let (_, error, mut decoder, mut src) = feed(&chunks(&bytes, &cuts));
        if error.is_none() {
            let _ = decoder.decode_eof(&mut src);
        }
    }

    #[test]
    fn decoder_never_panics_on_frame_like_bytes(
        length in 0u32..70_000,
        kind in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = length.to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        let (frames, error, ..) = feed(&[bytes]);
        let valid = (1..=MAX_FRAME as u32).contains(&length);
        if !valid {
            prop_assert!(error.is_some());
            prop_assert!(frames.is_empty());
        }
    }

    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec(frame(), 0..20),
        extensions in proptest::collection::vec((0x80u8..=0xff, proptest::collection::vec(any::<u8>(), 0..300)), 0..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut wire = BytesMut::new();
        // Interleave extension frames: the decoder must skip them.
        for (i, frame) in frames.iter().enumerate() {
            if let Some((kind, body)) = extensions.get(i) {
                encode_extension(&mut wire, *kind, body).unwrap();
            }
            frame.encode(&mut wire).unwrap();
        }
        let total: usize = frames.iter().map(Frame::encoded_len).sum::<usize>()
            + extensions.iter().take(frames.len()).map(|(_, b)| b.len() + 5).sum::<usize>();
        prop_assert_eq!(wire.len(), total);
        let (decoded, error, mut decoder, mut src) = feed(&chunks(&wire, &cuts));
        prop_assert!(error.is_none());
        prop_assert_eq!(decoder.decode_eof(&mut src).unwrap(), None);
        prop_assert_eq!(decoded, frames.clone());
        prop_assert_eq!(decoder.skipped_extensions() as usize, extensions.len().min(frames.len()));
    }
}
