use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use vpn_types::GsoInfo;

/// One packet read from or written to a TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunPacket {
    /// The IP packet (an offload super-packet when `gso` is set).
    pub data: Bytes,
    /// Segmentation info, for an offload super-packet.
    pub gso: Option<GsoInfo>,
}

impl TunPacket {
    /// A plain packet.
    pub fn new(data: Bytes) -> Self {
        Self { data, gso: None }
    }
}

/// The local packet interface: a TUN device, or an in-memory one in tests.
#[async_trait]
pub trait TunDevice: Send + Sync {
    /// The interface name, e.g. `vpn0`.
    fn name(&self) -> &str;

    /// The interface MTU in bytes.
    fn mtu(&self) -> u16;

    /// Whether the device reads and takes offload super-packets (with `gso` set).
    fn offload(&self) -> bool;

    /// Waits for at least one packet, then appends to `batch` every packet that is ready,
    /// at most `max`. Returns how many were appended. Packets a device cannot take apart
    /// are not returned; the device counts them.
    ///
    /// Errors: the device's I/O error; `BrokenPipe` once the device is closed.
    async fn recv_batch(&self, batch: &mut Vec<TunPacket>, max: usize) -> io::Result<usize>;

    /// Writes `packets` to the device, in order, and returns how many were written. A
    /// packet the kernel refuses is skipped (and counted by the device), not an error.
    ///
    /// Errors: the device's I/O error; `BrokenPipe` once the device is closed.
    async fn send_batch(&self, packets: &[TunPacket]) -> io::Result<usize>;
}
