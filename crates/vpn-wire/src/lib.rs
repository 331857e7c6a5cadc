//! The vpn-node wire protocol, version 1, as sans-IO code.
//!
//! - Packet streams (`/vpn-node/packet/1`): [`Frame`]s written with the `encode_*`
//!   functions and read back by the incremental [`FrameDecoder`], which accepts bytes in
//!   any chunking, skips extension kinds, and reports protocol violations as
//!   [`FrameError`]s. [`FrameCodec`] plugs both into `tokio_util::codec`.
//! - Datagrams (QUIC datagrams between members): [`Datagram`], an IP packet as it is or
//!   a PING/PONG that tells whether datagrams get through.
//! - IP records in the DHT: [`IpRecord`], signed into a libp2p `SignedEnvelope` and
//!   checked against every rule of the protocol by [`IpRecord::open`]; [`select_record`]
//!   picks among valid records and refuses conflicts.
//!
//! ```
//! use bytes::BytesMut;
//! use vpn_wire::{encode_packet, encode_ping, Frame, FrameDecoder};
//!
//! let mut wire = BytesMut::new();
//! encode_packet(&mut wire, &[0x45, 0, 0, 20]).unwrap();
//! encode_ping(&mut wire, [7; 8]);
//!
//! let mut decoder = FrameDecoder::new();
//! let mut input = BytesMut::new();
//! let mut frames = Vec::new();
//! // Feed the bytes one at a time: frames come out whole all the same.
//! for byte in wire.iter() {
//!     input.extend_from_slice(&[*byte]);
//!     while let Some(frame) = decoder.decode(&mut input).unwrap() {
//!         frames.push(frame);
//!     }
//! }
//! assert_eq!(frames.len(), 2);
//! assert!(matches!(frames[1], Frame::Ping([7, 7, 7, 7, 7, 7, 7, 7])));
//! ```

// A RecordError names up to two peers (large), but records are checked off the packet path.
#![allow(clippy::result_large_err)]

mod cert;
mod codec;
mod datagram;
mod decoder;
mod error;
mod frame;
mod record;
mod revocation;
mod segment;

pub use cert::{
    CERT_DOMAIN, CERT_PAYLOAD_TYPE, CERT_VERSION, CertError, Certificate, MAX_CERT_BYTES,
    MAX_CERT_NAME, MAX_CERT_NETS,
};
pub use codec::FrameCodec;
pub use datagram::{CONTROL_LEN, DATAGRAM_VERSION, Datagram, DatagramError};
pub use decoder::FrameDecoder;
pub use error::{FrameError, RecordError};
pub use frame::{
    FRAME_HEADER_LEN, Frame, MAX_FRAME, PROTOCOL_ID, encode_extension, encode_packet, encode_ping,
    encode_pong, encode_segmented, kind,
};
pub use record::{
    IpRecord, MAX_CLOCK_SKEW_SECS, MAX_LIFETIME_SECS, RECORD_DOMAIN, RECORD_KEY_PREFIX,
    RECORD_PAYLOAD_TYPE, Selection, record_key, select_record,
};
pub use revocation::{
    MAX_REVOCATION_BYTES, MAX_REVOKED, REVOCATION_DOMAIN, REVOCATION_KEY_PREFIX,
    REVOCATION_PAYLOAD_TYPE, REVOCATION_VERSION, RevocationList, Revoked, revocation_key,
};
pub use segment::{SEGMENT_HEADER_LEN, SegmentError, SegmentHeader};

#[cfg(test)]
mod proptests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
