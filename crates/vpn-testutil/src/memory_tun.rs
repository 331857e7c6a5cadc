use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use vpn_api::{TunDevice, TunPacket};

/// An in-memory TUN device. Packets injected through its [`MemoryTunHandle`] are what the
/// node reads; packets the node writes come out of the handle.
#[derive(Debug)]
pub struct MemoryTun {
    name: String,
    mtu: u16,
    offload: bool,
    from_os: Mutex<mpsc::Receiver<TunPacket>>,
    to_os: mpsc::UnboundedSender<TunPacket>,
}

/// The operating system's side of a [`MemoryTun`].
#[derive(Debug)]
pub struct MemoryTunHandle {
    inject: mpsc::Sender<TunPacket>,
    written: mpsc::UnboundedReceiver<TunPacket>,
}

impl MemoryTun {
    /// A device named `name` with MTU `mtu`, holding up to `capacity` injected packets
    /// not yet read.
    pub fn new(name: &str, mtu: u16, capacity: usize) -> (Self, MemoryTunHandle) {
        let (inject, from_os) = mpsc::channel(capacity);
        let (to_os, written) = mpsc::unbounded_channel();
        let tun = Self {
            name: name.to_owned(),
            mtu,
            offload: false,
            from_os: Mutex::new(from_os),
            to_os,
        };
        (tun, MemoryTunHandle { inject, written })
    }

    /// The same device, claiming offload support.
    pub fn with_offload(mut self, offload: bool) -> Self {
        self.offload = offload;
        self
    }
}

fn closed() -> io::Error {
    io::Error::from(io::ErrorKind::BrokenPipe)
}

#[async_trait]
impl TunDevice for MemoryTun {
    fn name(&self) -> &str {
        &self.name
    }

    fn mtu(&self) -> u16 {
        self.mtu
    }

    fn offload(&self) -> bool {
        self.offload
    }

    async fn recv_batch(&self, batch: &mut Vec<TunPacket>, max: usize) -> io::Result<usize> {
        let mut from_os = self.from_os.lock().await;
        let first = from_os.recv().await.ok_or_else(closed)?;
        batch.push(first);
        let mut read = 1;
        while read < max {
            match from_os.try_recv() {
                Ok(packet) => batch.push(packet),
                Err(_) => break,
            }
            read += 1;
        }
        Ok(read)
    }

    async fn send_batch(&self, packets: &[TunPacket]) -> io::Result<usize> {
        for packet in packets {
            self.to_os.send(packet.clone()).map_err(|_| closed())?;
        }
        Ok(packets.len())
    }
}

impl MemoryTunHandle {
    /// Hands the node a packet to read, waiting while the device's queue is full.
    pub async fn inject(&self, packet: impl Into<Bytes>) {
        self.inject_packet(TunPacket::new(packet.into())).await;
    }

    /// Hands the node a packet (with offload info) to read.
    pub async fn inject_packet(&self, packet: TunPacket) {
        self.inject.send(packet).await.expect("the TUN device was dropped");
    }

    /// The next packet the node wrote, waiting for it; `None` once the device is gone.
    pub async fn next_written(&mut self) -> Option<TunPacket> {
        self.written.recv().await
    }

    /// A packet the node already wrote, if any, without waiting.
    pub fn try_written(&mut self) -> Option<TunPacket> {
        self.written.try_recv().ok()
    }

    /// Closes the reading side: the node's next read fails once the queue is drained.
    pub fn close(self) -> mpsc::UnboundedReceiver<TunPacket> {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn injected_packets_are_read_in_batches_and_writes_come_out() {
        let (tun, mut os) = MemoryTun::new("mem0", 1400, 16);
        for i in 0..5u8 {
            os.inject(vec![i]).await;
        }
        let mut batch = Vec::new();
        assert_eq!(tun.recv_batch(&mut batch, 3).await.unwrap(), 3);
        assert_eq!(tun.recv_batch(&mut batch, 8).await.unwrap(), 2);
        let bytes: Vec<u8> = batch.iter().map(|p| p.data[0]).collect();
        assert_eq!(bytes, vec![0, 1, 2, 3, 4]);

        tun.send_batch(&batch[..2]).await.unwrap();
        assert_eq!(os.next_written().await.unwrap().data.as_ref(), &[0]);
        assert_eq!(os.try_written().unwrap().data.as_ref(), &[1]);
        assert!(os.try_written().is_none());
        assert_eq!((tun.name(), tun.mtu(), tun.offload()), ("mem0", 1400, false));
    }

    #[tokio::test]
    async fn closed_handle_ends_reads_and_writes() {
        let (tun, os) = MemoryTun::new("mem0", 1400, 4);
        let written = os.close();
        drop(written);
        let mut batch = Vec::new();
        assert_eq!(
            tun.recv_batch(&mut batch, 4).await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        let packet = TunPacket::new(Bytes::from_static(b"x"));
        assert_eq!(tun.send_batch(&[packet]).await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
