//! The datagram format, version 1 (docs/protocol.md section 13): what one unreliable QUIC
//! datagram between two members carries.
//!
//! - A datagram whose first byte has 4 or 6 as its top four bits is one whole IP packet,
//!   sent as it is: the packet's own version field tells it apart, so packets cross with no
//!   header of ours and no copy.
//! - A datagram whose first byte is 0 is a control message: `0x00, kind, version, nonce`
//!   with an 8-byte nonce. Kind 1 (PING) asks the other end to answer with kind 2 (PONG)
//!   carrying the same nonce; both carry the sender's datagram format version. A node
//!   sends IP packets as datagrams to a peer only while that peer answers its PINGs, so a
//!   peer that speaks no datagrams (or another version) is sent none.
//! - Anything else is malformed and dropped.

use bytes::Bytes;

/// The datagram format this code speaks.
pub const DATAGRAM_VERSION: u8 = 1;
/// Bytes of a control datagram.
pub const CONTROL_LEN: usize = 11;

const CONTROL: u8 = 0;
const PING: u8 = 1;
const PONG: u8 = 2;

/// One datagram, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// An IP packet (checked no further here: the receiver checks it as any packet).
    Packet(Bytes),
    /// Asks for a [`Datagram::Pong`] with this nonce.
    Ping([u8; 8]),
    /// Answers the [`Datagram::Ping`] with this nonce.
    Pong([u8; 8]),
}

/// Why a datagram was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Empty.
    #[error("an empty datagram")]
    Empty,
    /// Neither an IP packet nor a control message.
    #[error("a datagram of unknown kind (first byte {0:#04x})")]
    UnknownKind(u8),
    /// A control message of the wrong length or an unknown kind.
    #[error("a malformed control datagram")]
    BadControl,
    /// A control message of a datagram format version this node does not speak.
    #[error("datagram format version {0} (this node speaks {DATAGRAM_VERSION})")]
    Version(u8),
}

impl Datagram {
    /// Decodes one datagram; an IP packet keeps sharing `datagram`'s bytes.
    pub fn decode(datagram: Bytes) -> Result<Self, DatagramError> {
        let first = *datagram.first().ok_or(DatagramError::Empty)?;
        match first >> 4 {
            4 | 6 => return Ok(Datagram::Packet(datagram)),
            _ if first != CONTROL => return Err(DatagramError::UnknownKind(first)),
            _ => {}
        }
        let Some(&[_, kind, version, ref nonce @ ..]) = datagram.get(..CONTROL_LEN) else {
            return Err(DatagramError::BadControl);
        };
        if datagram.len() != CONTROL_LEN {
            return Err(DatagramError::BadControl);
        }
        if version != DATAGRAM_VERSION {
            return Err(DatagramError::Version(version));
        }
        let nonce: [u8; 8] = nonce.try_into().map_err(|_| DatagramError::BadControl)?;
        match kind {
            PING => Ok(Datagram::Ping(nonce)),
            PONG => Ok(Datagram::Pong(nonce)),
            _ => Err(DatagramError::BadControl),
        }
    }

    /// A PING datagram.
    pub fn ping(nonce: [u8; 8]) -> Bytes {
        control(PING, nonce)
    }

    /// A PONG datagram.
    pub fn pong(nonce: [u8; 8]) -> Bytes {
        control(PONG, nonce)
    }
}

fn control(kind: u8, nonce: [u8; 8]) -> Bytes {
    let mut out = Vec::with_capacity(CONTROL_LEN);
    out.extend_from_slice(&[CONTROL, kind, DATAGRAM_VERSION]);
    out.extend_from_slice(&nonce);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_messages_round_trip_and_packets_pass_whole() {
        assert_eq!(Datagram::decode(Datagram::ping([3; 8])), Ok(Datagram::Ping([3; 8])));
        assert_eq!(Datagram::decode(Datagram::pong([9; 8])), Ok(Datagram::Pong([9; 8])));
        let v4 = Bytes::from_static(&[0x45, 0, 0, 20]);
        assert_eq!(Datagram::decode(v4.clone()), Ok(Datagram::Packet(v4)));
        let v6 = Bytes::from_static(&[0x60, 0, 0, 0]);
        assert_eq!(Datagram::decode(v6.clone()), Ok(Datagram::Packet(v6)));
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        let decode = |b: &'static [u8]| Datagram::decode(Bytes::from_static(b));
        assert_eq!(decode(&[]), Err(DatagramError::Empty));
        assert_eq!(decode(&[0x55, 1]), Err(DatagramError::UnknownKind(0x55)));
        assert_eq!(decode(&[0, 1, 1]), Err(DatagramError::BadControl));
        assert_eq!(decode(&[0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Err(DatagramError::BadControl));
        assert_eq!(decode(&[0, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0]), Err(DatagramError::BadControl));
        assert_eq!(decode(&[0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0]), Err(DatagramError::Version(2)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let decoded = Datagram::decode(Bytes::from(bytes.clone()));
            if let Ok(Datagram::Packet(p)) = decoded {
                prop_assert_eq!(&p[..], &bytes[..]);
            }
        }
    }
}
