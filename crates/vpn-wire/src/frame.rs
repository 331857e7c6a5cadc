use bytes::{BufMut, Bytes, BytesMut};
use vpn_types::GsoInfo;

use crate::FrameError;
use crate::segment::{SEGMENT_HEADER_LEN, SegmentHeader};

/// The libp2p protocol ID of packet streams.
pub const PROTOCOL_ID: &str = "/vpn-node/packet/1";

/// The largest valid `length` field: the kind byte plus the body.
pub const MAX_FRAME: usize = 65_600;

/// Bytes before the body: the 4-byte length and the kind.
pub const FRAME_HEADER_LEN: usize = 5;

/// Frame kinds.
pub mod kind {
    /// One IPv4 or IPv6 packet.
    pub const PACKET: u8 = 0x01;
    /// A segment header, then one offload super-packet.
    pub const SEGMENTED: u8 = 0x02;
    /// 8 opaque bytes to be echoed.
    pub const PING: u8 = 0x10;
    /// The 8 bytes of the PING it answers.
    pub const PONG: u8 = 0x11;
    /// The first extension kind; every kind from here to 0xFF is skipped if unknown.
    pub const EXTENSION_MIN: u8 = 0x80;
}

/// A decoded frame. Extension frames are skipped by the decoder and never appear here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One IP packet (not yet checked).
    Packet(Bytes),
    /// An offload super-packet and how to cut it.
    Segmented {
        /// The segment header as sent (checked with [`SegmentHeader::to_gso`]).
        header: SegmentHeader,
        /// The super-packet.
        packet: Bytes,
    },
    /// A liveness probe.
    Ping([u8; 8]),
    /// The answer to a probe.
    Pong([u8; 8]),
}

impl Frame {
    /// Appends this frame's encoding to `dst`.
    ///
    /// Errors: [`FrameError::TooLarge`] when the body would exceed [`MAX_FRAME`].
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Frame::Packet(packet) => encode_packet(dst, packet),
            Frame::Segmented { header, packet } => {
                put_frame(dst, kind::SEGMENTED, &[&header.to_bytes(), packet])
            }
            Frame::Ping(nonce) => {
                encode_ping(dst, *nonce);
                Ok(())
            }
            Frame::Pong(nonce) => {
                encode_pong(dst, *nonce);
                Ok(())
            }
        }
    }

    /// The number of bytes [`Frame::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN
            + match self {
                Frame::Packet(packet) => packet.len(),
                Frame::Segmented { packet, .. } => SEGMENT_HEADER_LEN + packet.len(),
                Frame::Ping(_) | Frame::Pong(_) => 8,
            }
    }
}

/// Appends a frame of `kind` whose body is the concatenation of `parts`.
fn put_frame(dst: &mut BytesMut, kind: u8, parts: &[&[u8]]) -> Result<(), FrameError> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let length = body + 1;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(body));
    }
    dst.reserve(FRAME_HEADER_LEN + body);
    // `length <= MAX_FRAME` fits in a u32.
    dst.put_u32(length as u32);
    dst.put_u8(kind);
    for part in parts {
        dst.put_slice(part);
    }
    Ok(())
}

/// Appends a PACKET frame carrying `packet`.
///
/// Errors: [`FrameError::TooLarge`] when the packet is longer than `MAX_FRAME - 1`.
pub fn encode_packet(dst: &mut BytesMut, packet: &[u8]) -> Result<(), FrameError> {
    put_frame(dst, kind::PACKET, &[packet])
}

/// Appends a SEGMENTED frame carrying the super-packet `packet` cut as `gso` says.
///
/// Errors: [`FrameError::TooLarge`] when header and packet exceed the frame limit.
pub fn encode_segmented(
    dst: &mut BytesMut,
    gso: &GsoInfo,
    packet: &[u8],
) -> Result<(), FrameError> {
    put_frame(dst, kind::SEGMENTED, &[&SegmentHeader::from(*gso).to_bytes(), packet])
}

/// Appends a PING frame.
pub fn encode_ping(dst: &mut BytesMut, nonce: [u8; 8]) {
    // An 8-byte body always fits.
    let _ = put_frame(dst, kind::PING, &[&nonce]);
}

/// Appends a PONG frame answering the PING with `nonce`.
pub fn encode_pong(dst: &mut BytesMut, nonce: [u8; 8]) {
    let _ = put_frame(dst, kind::PONG, &[&nonce]);
}

/// Appends an extension frame (kind 0x80..=0xFF) that receivers without it skip.
///
/// Errors: [`FrameError::UnknownKind`] for a kind below 0x80; [`FrameError::TooLarge`].
pub fn encode_extension(dst: &mut BytesMut, kind: u8, body: &[u8]) -> Result<(), FrameError> {
    if kind < kind::EXTENSION_MIN {
        return Err(FrameError::UnknownKind(kind));
    }
    put_frame(dst, kind, &[body])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_frame_layout() {
        let mut dst = BytesMut::new();
        encode_packet(&mut dst, &[0xaa, 0xbb]).unwrap();
        assert_eq!(&dst[..], &[0, 0, 0, 3, kind::PACKET, 0xaa, 0xbb]);
    }

    #[test]
    fn ping_frame_layout() {
        let mut dst = BytesMut::new();
        encode_ping(&mut dst, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&dst[..], &[0, 0, 0, 9, kind::PING, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Frame::Ping([0; 8]).encoded_len(), dst.len());
    }

    #[test]
    fn largest_packet_fits_and_one_more_byte_does_not() {
        let mut dst = BytesMut::new();
        encode_packet(&mut dst, &vec![0; MAX_FRAME - 1]).unwrap();
        assert_eq!(dst.len(), FRAME_HEADER_LEN + MAX_FRAME - 1);
        let before = dst.len();
        assert_eq!(
            encode_packet(&mut dst, &vec![0; MAX_FRAME]),
            Err(FrameError::TooLarge(MAX_FRAME))
        );
        assert_eq!(dst.len(), before, "a refused frame writes nothing");
    }

    #[test]
    fn extension_kinds_only_from_0x80() {
        let mut dst = BytesMut::new();
        assert_eq!(encode_extension(&mut dst, 0x7f, b""), Err(FrameError::UnknownKind(0x7f)));
        encode_extension(&mut dst, 0x80, b"x").unwrap();
        assert_eq!(&dst[..], &[0, 0, 0, 2, 0x80, b'x']);
    }
}
