use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::{Frame, FrameDecoder, FrameError};

/// [`FrameDecoder`] and [`Frame::encode`] as a `tokio_util` codec, for `FramedRead` and
/// `FramedWrite` over a stream.
#[derive(Debug, Default)]
pub struct FrameCodec {
    decoder: FrameDecoder,
}

impl FrameCodec {
    /// A codec at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Extension frames skipped so far.
    pub fn skipped_extensions(&self) -> u64 {
        self.decoder.skipped_extensions()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode_eof(src)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode(dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode(dst)
    }
}
