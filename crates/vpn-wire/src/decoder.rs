use bytes::{Buf, BytesMut};

use crate::FrameError;
use crate::frame::{FRAME_HEADER_LEN, Frame, MAX_FRAME, kind};
use crate::segment::{SEGMENT_HEADER_LEN, SegmentHeader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a frame header.
    Header,
    /// Waiting for `len` body bytes of a frame of `kind`.
    Body { kind: u8, len: usize },
    /// Discarding the rest of an extension frame's body.
    Skip { remaining: usize },
}

/// An incremental frame decoder: give it bytes as they arrive, in any chunking, and take
/// whole frames out.
///
/// Bodies are split off the input buffer without copying; in steady state (frames taken
/// and dropped as they come) it allocates nothing per frame. Extension frames are
/// discarded as their bytes arrive, without being buffered. After an error the stream is
/// to be reset: the decoder's state is not meaningful any more.
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
    skipped: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self { state: State::Header, skipped: 0 }
    }

    /// Extension frames skipped so far.
    pub fn skipped_extensions(&self) -> u64 {
        self.skipped
    }

    /// Whether the decoder is between frames (an end of stream here is clean).
    pub fn is_between_frames(&self) -> bool {
        self.state == State::Header
    }

    /// Takes the next whole frame out of `src`, or returns `Ok(None)` when more bytes are
    /// needed. Consumed bytes are removed from `src`.
    ///
    /// Errors: a length of 0 or above `MAX_FRAME`, an unknown kind, or a body whose size
    /// does not fit its kind.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            match self.state {
                State::Header => {
                    let Some(header) = src.get(..FRAME_HEADER_LEN) else {
                        return Ok(None);
                    };
                    let [l0, l1, l2, l3, kind] = header else { return Ok(None) };
                    let length = u32::from_be_bytes([*l0, *l1, *l2, *l3]);
                    self.state = start_frame(length, *kind)?;
                    src.advance(FRAME_HEADER_LEN);
                }
                State::Skip { remaining } => {
                    let n = remaining.min(src.len());
                    src.advance(n);
                    if n < remaining {
                        self.state = State::Skip { remaining: remaining - n };
                        return Ok(None);
                    }
                    self.skipped += 1;
                    self.state = State::Header;
                }
                State::Body { kind, len } => {
                    if src.len() < len {
                        src.reserve(len - src.len());
                        return Ok(None);
                    }
                    let body = src.split_to(len).freeze();
                    self.state = State::Header;
                    return Ok(Some(body_to_frame(kind, body)));
                }
            }
        }
    }

    /// Like [`FrameDecoder::decode`], at the end of the stream: bytes left over that do
    /// not make a whole frame are an error ([`FrameError::Truncated`]).
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.is_between_frames() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

/// Checks a frame header and returns the state that reads its body.
fn start_frame(length: u32, kind: u8) -> Result<State, FrameError> {
    let len = usize::try_from(length).map_err(|_| FrameError::BadLength(length))?;
    if len == 0 || len > MAX_FRAME {
        return Err(FrameError::BadLength(length));
    }
    let body = len - 1;
    let fits = match kind {
        kind::PACKET => true,
        kind::SEGMENTED => body >= SEGMENT_HEADER_LEN,
        kind::PING | kind::PONG => body == 8,
        k if k >= kind::EXTENSION_MIN => return Ok(State::Skip { remaining: body }),
        other => return Err(FrameError::UnknownKind(other)),
    };
    if !fits {
        return Err(FrameError::BadBody { kind, len: body });
    }
    Ok(State::Body { kind, len: body })
}

/// Builds the frame of a known `kind` from a body whose size `start_frame` checked.
fn body_to_frame(kind: u8, mut body: bytes::Bytes) -> Frame {
    let nonce = |body: &[u8]| {
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(body.get(..8).unwrap_or(&[0; 8]));
        nonce
    };
    match kind {
        kind::SEGMENTED => {
            let mut raw = [0u8; SEGMENT_HEADER_LEN];
            raw.copy_from_slice(body.get(..SEGMENT_HEADER_LEN).unwrap_or(&[0; SEGMENT_HEADER_LEN]));
            body.advance(SEGMENT_HEADER_LEN.min(body.len()));
            Frame::Segmented { header: SegmentHeader::from_bytes(&raw), packet: body }
        }
        kind::PING => Frame::Ping(nonce(&body)),
        kind::PONG => Frame::Pong(nonce(&body)),
        _ => Frame::Packet(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_extension, encode_packet, encode_pong};
    use bytes::{BufMut, Bytes};

    fn decode_all(
        decoder: &mut FrameDecoder,
        src: &mut BytesMut,
    ) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(src)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    fn header(length: u32, kind: u8) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(length);
        b.put_u8(kind);
        b
    }

    #[test]
    fn bad_lengths_and_kinds_are_errors() {
        let mut d = FrameDecoder::new();
        assert_eq!(d.decode(&mut header(0, kind::PACKET)), Err(FrameError::BadLength(0)));
        let mut d = FrameDecoder::new();
        assert_eq!(d.decode(&mut header(65_601, kind::PACKET)), Err(FrameError::BadLength(65_601)));
        let mut d = FrameDecoder::new();
        assert_eq!(d.decode(&mut header(2, 0x03)), Err(FrameError::UnknownKind(0x03)));
        let mut d = FrameDecoder::new();
        assert_eq!(
            d.decode(&mut header(8, kind::PING)),
            Err(FrameError::BadBody { kind: kind::PING, len: 7 })
        );
        let mut d = FrameDecoder::new();
        assert_eq!(
            d.decode(&mut header(10, kind::SEGMENTED)),
            Err(FrameError::BadBody { kind: kind::SEGMENTED, len: 9 })
        );
    }

    #[test]
    fn max_frame_is_accepted() {
        let mut d = FrameDecoder::new();
        let mut src = BytesMut::new();
        encode_packet(&mut src, &vec![0x45; MAX_FRAME - 1]).unwrap();
        let frames = decode_all(&mut d, &mut src).unwrap();
        assert!(matches!(&frames[..], [Frame::Packet(p)] if p.len() == MAX_FRAME - 1));
    }

    #[test]
    fn extension_frames_are_skipped_even_in_pieces() {
        let mut wire = BytesMut::new();
        encode_extension(&mut wire, 0xfe, &[9; 1000]).unwrap();
        encode_pong(&mut wire, [3; 8]);
        let mut d = FrameDecoder::new();
        let mut src = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(7) {
            src.extend_from_slice(chunk);
            frames.extend(decode_all(&mut d, &mut src).unwrap());
            // Skipped bytes are never buffered.
            assert!(src.len() < FRAME_HEADER_LEN + 8);
        }
        assert_eq!(frames, vec![Frame::Pong([3; 8])]);
        assert_eq!(d.skipped_extensions(), 1);
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_truncation() {
        let mut wire = BytesMut::new();
        encode_packet(&mut wire, b"abcdef").unwrap();
        for cut in 1..wire.len() {
            let mut d = FrameDecoder::new();
            let mut src = BytesMut::from(&wire[..cut]);
            assert_eq!(d.decode_eof(&mut src), Err(FrameError::Truncated), "cut at {cut}");
        }
        let mut d = FrameDecoder::new();
        let mut src = wire.clone();
        assert_eq!(
            d.decode_eof(&mut src).unwrap(),
            Some(Frame::Packet(Bytes::from_static(b"abcdef")))
        );
        assert_eq!(d.decode_eof(&mut src).unwrap(), None);
    }

    #[test]
    fn steady_state_reuses_the_buffer() {
        let mut wire = BytesMut::new();
        encode_packet(&mut wire, &[1; 1400]).unwrap();
        let mut d = FrameDecoder::new();
        let mut src = BytesMut::with_capacity(64 * 1024);
        let start = src.as_ptr() as usize;
        let mut seen_other_buffer = false;
        for _ in 0..1000 {
            src.extend_from_slice(&wire);
            let frame = d.decode(&mut src).unwrap().unwrap();
            drop(frame);
            // Once every frame is dropped, the buffer's memory is reclaimed rather than
            // reallocated: the data stays in the one 64 KiB region.
            let at = src.as_ptr() as usize;
            seen_other_buffer |= !(start..start + 64 * 1024).contains(&at);
        }
        assert!(!seen_other_buffer);
    }
}
