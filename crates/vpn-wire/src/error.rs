use std::io;

use vpn_api::{IpNet, PeerId};
use vpn_errors::{NetworkError, NetworkErrorKind, VpnError};

/// A violation of the frame format. The receiver resets the stream it came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field is 0 or above `MAX_FRAME`.
    #[error("frame length {0} is outside 1..=65600")]
    BadLength(u32),
    /// The kind is neither known nor an extension kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The body does not have the size its kind requires.
    #[error("frame kind {kind:#04x} with a {len}-byte body")]
    BadBody {
        /// The frame kind.
        kind: u8,
        /// The body's length.
        len: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A body too large for one frame was to be encoded.
    #[error("a {0}-byte body does not fit in a frame")]
    TooLarge(usize),
    /// Reading or writing the stream failed.
    #[error("stream I/O: {0}")]
    Io(#[from] io::Error),
}

impl PartialEq for FrameError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FrameError::BadLength(a), FrameError::BadLength(b)) => a == b,
            (FrameError::UnknownKind(a), FrameError::UnknownKind(b)) => a == b,
            (FrameError::BadBody { kind: a, len: x }, FrameError::BadBody { kind: b, len: y }) => {
                a == b && x == y
            }
            (FrameError::Truncated, FrameError::Truncated) => true,
            (FrameError::TooLarge(a), FrameError::TooLarge(b)) => a == b,
            (FrameError::Io(a), FrameError::Io(b)) => a.kind() == b.kind(),
            _ => false,
        }
    }
}

impl From<FrameError> for VpnError {
    fn from(err: FrameError) -> Self {
        let network = match err {
            FrameError::Io(io) => NetworkError::from_io("stream frames", io),
            other => {
                NetworkError::new(NetworkErrorKind::Protocol, "stream frames").with_source(other)
            }
        };
        VpnError::Network(network)
    }
}

/// Why an IP record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes are not a signed envelope.
    #[error("not a signed envelope: {0}")]
    Envelope(String),
    /// The envelope carries another payload type.
    #[error("envelope payload type is not /vpn-node/ip-record/2")]
    PayloadType,
    /// The envelope's signature does not verify.
    #[error("envelope signature does not verify")]
    BadSignature,
    /// The payload is not an IpRecord message.
    #[error("payload is not an IpRecord: {0}")]
    Payload(String),
    /// The record's `peer_id` is not a peer ID.
    #[error("record peer_id is not a valid peer ID")]
    BadPeerId,
    /// The envelope was signed by another peer than the record names.
    #[error("record for {claimed} is signed by {signer}")]
    SignerMismatch {
        /// The peer that signed.
        signer: PeerId,
        /// The peer the record names.
        claimed: PeerId,
    },
    /// An address in the record cannot be parsed or is not canonical (its text as a log
    /// may show it: escaped and cut, see `vpn_types::PeerText`).
    #[error("record address \"{0}\" is not an address or prefix in canonical form")]
    BadAddress(String),
    /// The record has expired.
    #[error("record expired at {expires_unix} (now {now_unix})")]
    Expired {
        /// Its expiry.
        expires_unix: u64,
        /// Now.
        now_unix: u64,
    },
    /// The record expires more than 7 days ahead.
    #[error("record expires at {expires_unix}, more than 7 days after {now_unix}")]
    TooFarAhead {
        /// Its expiry.
        expires_unix: u64,
        /// Now.
        now_unix: u64,
    },
    /// The DHT key's address is not among the record's addresses.
    #[error("record does not cover {0}")]
    NotCovered(std::net::IpAddr),
    /// The registry does not let the peer hold an address it claims.
    #[error("{peer} may not hold {net}")]
    NotAllowed {
        /// The claiming peer.
        peer: PeerId,
        /// The address or prefix claimed.
        net: IpNet,
    },
    /// The record was to be signed with another peer's key.
    #[error("record for {claimed} cannot be signed with the key of {signer}")]
    WrongKey {
        /// The key's peer.
        signer: PeerId,
        /// The peer the record names.
        claimed: PeerId,
    },
}
