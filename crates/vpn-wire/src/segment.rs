use vpn_types::{GsoInfo, GsoType};

/// Bytes of the SEGMENTED frame's header.
pub const SEGMENT_HEADER_LEN: usize = 10;

/// The SEGMENTED frame header exactly as sent: its values are not checked until
/// [`SegmentHeader::to_gso`], so a bad header drops one packet, not the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentHeader {
    /// 1 = TCP over IPv4, 2 = TCP over IPv6, 3 = UDP.
    pub gso_type: u8,
    /// Bit 0: the transport checksum still has to be completed.
    pub flags: u8,
    /// Bytes of IP and transport headers at the start of the packet.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

/// Why a SEGMENTED header cannot be used for its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The `gso_type` is not one this version knows.
    #[error("unknown gso_type {0}")]
    UnknownType(u8),
    /// `gso_size` is zero.
    #[error("gso_size is zero")]
    ZeroSegmentSize,
    /// The headers claimed are longer than the packet.
    #[error("hdr_len {hdr_len} exceeds the {len}-byte packet")]
    HeaderPastPacket {
        /// The claimed header length.
        hdr_len: u16,
        /// The packet's length.
        len: usize,
    },
    /// The checksum field lies outside the headers.
    #[error("checksum field at {csum_start}+{csum_offset} lies outside the {hdr_len}-byte headers")]
    ChecksumOutsideHeader {
        /// Where checksumming starts.
        csum_start: u16,
        /// The checksum field's offset from there.
        csum_offset: u16,
        /// The header length.
        hdr_len: u16,
    },
}

impl SegmentHeader {
    /// Reads a header from the first [`SEGMENT_HEADER_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8; SEGMENT_HEADER_LEN]) -> Self {
        let [gso_type, flags, h0, h1, g0, g1, s0, s1, o0, o1] = *bytes;
        Self {
            gso_type,
            flags,
            hdr_len: u16::from_be_bytes([h0, h1]),
            gso_size: u16::from_be_bytes([g0, g1]),
            csum_start: u16::from_be_bytes([s0, s1]),
            csum_offset: u16::from_be_bytes([o0, o1]),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let [h0, h1] = self.hdr_len.to_be_bytes();
        let [g0, g1] = self.gso_size.to_be_bytes();
        let [s0, s1] = self.csum_start.to_be_bytes();
        let [o0, o1] = self.csum_offset.to_be_bytes();
        [self.gso_type, self.flags, h0, h1, g0, g1, s0, s1, o0, o1]
    }

    /// The segmentation info for a super-packet of `packet_len` bytes, after checking that
    /// the header makes sense for it.
    pub fn to_gso(&self, packet_len: usize) -> Result<GsoInfo, SegmentError> {
        let gso_type =
            GsoType::from_wire(self.gso_type).ok_or(SegmentError::UnknownType(self.gso_type))?;
        if self.gso_size == 0 {
            return Err(SegmentError::ZeroSegmentSize);
        }
        if usize::from(self.hdr_len) > packet_len {
            return Err(SegmentError::HeaderPastPacket { hdr_len: self.hdr_len, len: packet_len });
        }
        let needs_csum = self.flags & 1 != 0;
        // The 2-byte checksum field must lie inside the headers that every segment copies.
        if needs_csum
            && u32::from(self.csum_start) + u32::from(self.csum_offset) + 2
                > u32::from(self.hdr_len)
        {
            return Err(SegmentError::ChecksumOutsideHeader {
                csum_start: self.csum_start,
                csum_offset: self.csum_offset,
                hdr_len: self.hdr_len,
            });
        }
        Ok(GsoInfo {
            gso_type,
            needs_csum,
            hdr_len: self.hdr_len,
            gso_size: self.gso_size,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
        })
    }
}

impl From<GsoInfo> for SegmentHeader {
    fn from(gso: GsoInfo) -> Self {
        Self {
            gso_type: gso.gso_type as u8,
            flags: u8::from(gso.needs_csum),
            hdr_len: gso.hdr_len,
            gso_size: gso.gso_size,
            csum_start: gso.csum_start,
            csum_offset: gso.csum_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4() -> GsoInfo {
        GsoInfo {
            gso_type: GsoType::TcpV4,
            needs_csum: true,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        let header = SegmentHeader::from(tcp4());
        let bytes = header.to_bytes();
        assert_eq!(bytes, [1, 1, 0, 52, 0x05, 0xa8, 0, 20, 0, 16]);
        assert_eq!(SegmentHeader::from_bytes(&bytes), header);
        assert_eq!(header.to_gso(60_000), Ok(tcp4()));
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = SegmentHeader::from(tcp4());
        assert_eq!(
            SegmentHeader { gso_type: 9, ..good }.to_gso(100),
            Err(SegmentError::UnknownType(9))
        );
        assert_eq!(
            SegmentHeader { gso_size: 0, ..good }.to_gso(100),
            Err(SegmentError::ZeroSegmentSize)
        );
        assert!(matches!(good.to_gso(40), Err(SegmentError::HeaderPastPacket { .. })));
        assert!(matches!(
            SegmentHeader { csum_offset: 40, ..good }.to_gso(100),
            Err(SegmentError::ChecksumOutsideHeader { .. })
        ));
        // Without the checksum flag the offsets are not used.
        assert!(SegmentHeader { csum_offset: 40, flags: 0, ..good }.to_gso(100).is_ok());
    }
}
