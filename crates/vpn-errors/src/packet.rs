/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// No bytes at all.
    #[error("empty packet")]
    Empty,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0} is not 4 or 6")]
    BadVersion(u8),
    /// Fewer bytes than the fixed IP header.
    #[error("IPv{version} header needs {needed} bytes, packet has {len}")]
    TruncatedHeader {
        /// 4 or 6.
        version: u8,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        len: usize,
    },
    /// The IPv4 header length field is below 5 words or past the packet.
    #[error("IPv4 header length {ihl} words is invalid for a {len}-byte packet")]
    BadHeaderLength {
        /// The IHL field (in 32-bit words).
        ihl: u8,
        /// Bytes present.
        len: usize,
    },
    /// The IP total (IPv4) or payload (IPv6) length disagrees with the bytes present.
    #[error("IP length field says {declared} bytes, packet has {len}")]
    BadTotalLength {
        /// The total length the header declares.
        declared: usize,
        /// Bytes present.
        len: usize,
    },
    /// An IPv6 extension header runs past the packet.
    #[error("IPv6 extension header {next_header} is cut short")]
    TruncatedExtension {
        /// The extension header's type.
        next_header: u8,
    },
    /// The TCP or UDP header is cut short or has an invalid length.
    #[error("protocol {protocol} header is cut short or invalid")]
    TruncatedTransport {
        /// The transport protocol number.
        protocol: u8,
    },
}
