use std::fmt;

/// Why a packet could not be parsed.
///
/// Also reachable as `vpn_errors::PacketError`; it lives here so that the packet parsers
/// need no error crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PacketError {
    /// No bytes at all.
    Empty,
    /// The version nibble is neither 4 nor 6.
    BadVersion(u8),
    /// Fewer bytes than the fixed IP header.
    TruncatedHeader {
        /// 4 or 6.
        version: u8,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        len: usize,
    },
    /// The IPv4 header length field is below 5 words or past the packet.
    BadHeaderLength {
        /// The IHL field (in 32-bit words).
        ihl: u8,
        /// Bytes present.
        len: usize,
    },
    /// The IP total (IPv4) or payload (IPv6) length disagrees with the bytes present.
    BadTotalLength {
        /// The total length the header declares.
        declared: usize,
        /// Bytes present.
        len: usize,
    },
    /// An IPv6 extension header runs past the packet.
    TruncatedExtension {
        /// The extension header's type.
        next_header: u8,
    },
    /// The TCP or UDP header is cut short or has an invalid length.
    TruncatedTransport {
        /// The transport protocol number.
        protocol: u8,
    },
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => write!(f, "empty packet"),
            Self::BadVersion(version) => write!(f, "IP version {version} is not 4 or 6"),
            Self::TruncatedHeader { version, needed, len } => {
                write!(f, "IPv{version} header needs {needed} bytes, packet has {len}")
            }
            Self::BadHeaderLength { ihl, len } => {
                write!(f, "IPv4 header length {ihl} words is invalid for a {len}-byte packet")
            }
            Self::BadTotalLength { declared, len } => {
                write!(f, "IP length field says {declared} bytes, packet has {len}")
            }
            Self::TruncatedExtension { next_header } => {
                write!(f, "IPv6 extension header {next_header} is cut short")
            }
            Self::TruncatedTransport { protocol } => {
                write!(f, "protocol {protocol} header is cut short or invalid")
            }
        }
    }
}

impl std::error::Error for PacketError {}

#[cfg(test)]
mod tests {
    use super::PacketError;

    #[test]
    fn messages_name_the_fields() {
        let e = PacketError::BadTotalLength { declared: 60, len: 40 };
        assert_eq!(e.to_string(), "IP length field says 60 bytes, packet has 40");
        assert_eq!(PacketError::BadVersion(5).to_string(), "IP version 5 is not 4 or 6");
    }
}
