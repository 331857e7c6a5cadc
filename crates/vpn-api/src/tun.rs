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
    /// Errors: `BrokenPipe` once the device is closed or gone (the caller should stop);
    /// any other I/O error is passing and the caller may read again.
    async fn recv_batch(&self, batch: &mut Vec<TunPacket>, max: usize) -> io::Result<usize>;

    /// Writes `packets` to the device, in order, and returns how many were written. A
    /// packet the kernel does not take (refused, no buffer, interface down) is skipped,
    /// not an error: the caller counts `packets.len()` minus the result as dropped.
    ///
    /// Errors: `BrokenPipe` once the device is closed or gone; nothing more can be written.
    async fn send_batch(&self, packets: &[TunPacket]) -> io::Result<usize>;
}
