use std::io;
use std::net::IpAddr;

use async_trait::async_trait;
use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tun_rs::{AsyncDevice, DeviceBuilder};
use vpn_api::{TunDevice, TunPacket};
use vpn_errors::{ServiceError, ServiceErrorKind, VpnError};

/// Bytes kept ready for reads: several packets' worth, so reads rarely allocate.
const READ_BUFFER: usize = 256 * 1024;

/// What the interface looks like.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u16,
    /// The overlay IPv4 address and prefix.
    pub address: Ipv4Net,
    /// The overlay IPv6 address and prefix, if any.
    pub address6: Option<Ipv6Net>,
    /// Prefixes routed into the interface besides the overlay's own.
    pub routes: Vec<IpNet>,
}

/// The reader's buffers: one packet's scratch space, and the region packets are copied
/// into (handed out as `Bytes`, reclaimed once they are dropped).
struct ReadBuffers {
    scratch: Vec<u8>,
    packets: BytesMut,
}

impl ReadBuffers {
    fn take(&mut self, len: usize) -> bytes::Bytes {
        if self.packets.capacity() < len {
            self.packets.reserve(READ_BUFFER);
        }
        self.packets.extend_from_slice(self.scratch.get(..len).unwrap_or_default());
        self.packets.split().freeze()
    }
}

/// A TUN interface.
pub struct Tun {
    device: AsyncDevice,
    name: String,
    mtu: u16,
    reader: tokio::sync::Mutex<ReadBuffers>,
}

fn startup(what: &'static str, e: io::Error) -> VpnError {
    VpnError::Service(ServiceError::new(ServiceErrorKind::Startup, "tun", what).with_source(e))
}

impl Tun {
    /// Creates and configures the interface. Needs `CAP_NET_ADMIN` and `/dev/net/tun`.
    ///
    /// Errors: a `Startup` service error naming the step that failed.
    pub async fn create(config: &TunConfig) -> Result<Self, VpnError> {
        let mut builder = DeviceBuilder::new().name(config.name.clone()).mtu(config.mtu).ipv4(
            config.address.addr(),
            config.address.prefix_len(),
            None,
        );
        if let Some(v6) = config.address6 {
            builder = builder.ipv6(v6.addr(), v6.prefix_len());
        }
        let device = builder.build_async().map_err(|e| startup("create interface", e))?;
        let name = device.name().map_err(|e| startup("read interface name", e))?;
        for route in &config.routes {
            add_route(&name, route).await.map_err(|e| startup("add route", e))?;
        }
        tracing::info!(interface = %name, address = %config.address, mtu = config.mtu, "TUN device up");
        let reader = ReadBuffers {
            // A packet through a TUN is at most 64 KiB.
            scratch: vec![0; usize::from(u16::MAX)],
            packets: BytesMut::with_capacity(READ_BUFFER),
        };
        Ok(Self { device, name, mtu: config.mtu, reader: tokio::sync::Mutex::new(reader) })
    }
}

/// Adds `route` via the interface with iproute2.
async fn add_route(interface: &str, route: &IpNet) -> io::Result<()> {
    let family = if matches!(route.addr(), IpAddr::V4(_)) { "-4" } else { "-6" };
    let status = tokio::process::Command::new("ip")
        .args([family, "route", "replace", &route.to_string(), "dev", interface])
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip route replace {route} dev {interface}` failed ({status})"
        )))
    }
}

#[async_trait]
impl TunDevice for Tun {
    fn name(&self) -> &str {
        &self.name
    }

    fn mtu(&self) -> u16 {
        self.mtu
    }

    fn offload(&self) -> bool {
        false
    }

    async fn recv_batch(&self, batch: &mut Vec<TunPacket>, max: usize) -> io::Result<usize> {
        let mut reader = self.reader.lock().await;
        let len = self.device.recv(&mut reader.scratch).await?;
        batch.push(TunPacket::new(reader.take(len)));
        let mut read = 1;
        while read < max {
            match self.device.try_recv(&mut reader.scratch) {
                Ok(len) => {
                    batch.push(TunPacket::new(reader.take(len)));
                    read += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(read)
    }

    async fn send_batch(&self, packets: &[TunPacket]) -> io::Result<usize> {
        let mut written = 0;
        for packet in packets {
            match self.device.send(&packet.data).await {
                Ok(_) => written += 1,
                // The kernel refuses this packet only (bad header, unknown protocol).
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    tracing::debug!(error = %e, "the kernel refused a packet");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}
