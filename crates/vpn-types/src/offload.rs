/// The kind of an offload super-packet (the `gso_type` of a SEGMENTED frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoType {
    /// TCP over IPv4 (TSO).
    TcpV4 = 1,
    /// TCP over IPv6 (TSO6).
    TcpV6 = 2,
    /// UDP segmentation (USO).
    Udp = 3,
}

impl GsoType {
    /// The wire value, or `None` for a value this version does not know.
    pub fn from_wire(value: u8) -> Option<Self> {
        match value {
            1 => Some(GsoType::TcpV4),
            2 => Some(GsoType::TcpV6),
            3 => Some(GsoType::Udp),
            _ => None,
        }
    }
}

/// How an offload super-packet is to be cut into segments: the fields of the SEGMENTED
/// frame header, which mirror the kernel's virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GsoInfo {
    /// What kind of segmentation applies.
    pub gso_type: GsoType,
    /// The transport checksum still has to be completed.
    pub needs_csum: bool,
    /// Bytes of IP and transport headers at the start of the packet.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}
