use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tun_rs::{AsyncDevice, DeviceBuilder};
use vpn_api::{MetricsService, TunDevice, TunPacket};
use vpn_errors::{ServiceError, ServiceErrorKind, VpnError};
use vpn_types::DropReason;

use crate::vnet;

/// Bytes kept ready for reads: several packets' worth, so reads rarely allocate.
const READ_BUFFER: usize = 256 * 1024;
/// The largest read: the virtio-net header and the largest IP packet (an IPv6 header and
/// a payload of 65 535 bytes).
const LARGEST_READ: usize = vnet::LEN + 40 + 65_535;

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
    /// Read and write offload super-packets (TSO/USO) with a virtio-net header.
    pub offload: bool,
}

/// The reader's buffers: one packet's scratch space, and the region packets are copied
/// into (handed out as `Bytes`, reclaimed once they are dropped).
struct ReadBuffers {
    scratch: Vec<u8>,
    packets: BytesMut,
}

impl ReadBuffers {
    /// The packet of `len` bytes read into the scratch space, with its offload info when the
    /// device has offload on; `None` for a read that cannot be used.
    fn take(&mut self, len: usize, offload: bool) -> Option<TunPacket> {
        let (start, gso) = if offload {
            match vnet::on_read(self.scratch.get_mut(..len)?) {
                vnet::Read::Packet => (vnet::LEN, None),
                vnet::Read::Super(gso) => (vnet::LEN, Some(gso)),
                vnet::Read::Unusable => return None,
            }
        } else {
            (0, None)
        };
        let packet = self.scratch.get(start..len)?;
        if self.packets.capacity() < packet.len() {
            self.packets.reserve(READ_BUFFER);
        }
        self.packets.extend_from_slice(packet);
        Some(TunPacket { data: self.packets.split().freeze(), gso })
    }
}

/// Most coalescers kept for reuse (one per writer writing at the same moment).
const COALESCERS_KEPT: usize = 8;

/// What turns a run of plain packets into as few writes as it can: consecutive segments
/// of one TCP (or UDP) flow are merged into one offload super-packet (GRO), the way the
/// kernel would have received them from a NIC, so a burst of datagrams costs the receiving
/// kernel a few large packets instead of many small ones.
struct Coalescer {
    table: tun_rs::GROTable,
    /// One buffer per packet: the virtio-net header's room, then the packet.
    bufs: Vec<BytesMut>,
}

/// Room in each coalescing buffer: the largest packet merging can make, and the headers'
/// room tun-rs asks for (it merges into a buffer only if that fits without growing it).
const COALESCED_ROOM: usize = 2 * vnet::LEN + u16::MAX as usize;
/// Buffers a coalescer keeps between batches (more are made for a larger batch, then
/// dropped).
const BUFS_KEPT: usize = 64;

impl Coalescer {
    fn new() -> Self {
        Self { table: tun_rs::GROTable::new(), bufs: Vec::new() }
    }

    /// Copies `packets` in, each behind the header's room in a buffer of its own with room
    /// to merge the packets that follow it into it.
    fn load(&mut self, packets: &[TunPacket]) {
        for (i, packet) in packets.iter().enumerate() {
            if let Some(buf) = self.bufs.get_mut(i) {
                buf.clear();
            } else {
                self.bufs.push(BytesMut::with_capacity(COALESCED_ROOM));
            }
            if let Some(buf) = self.bufs.get_mut(i) {
                buf.resize(vnet::LEN, 0);
                buf.extend_from_slice(&packet.data);
            }
        }
    }
}

/// A TUN interface.
pub struct Tun {
    device: AsyncDevice,
    name: String,
    mtu: u16,
    offload: bool,
    reader: tokio::sync::Mutex<ReadBuffers>,
    /// Coalescing state for writes of plain packets, lent to one writer at a time.
    coalescers: std::sync::Mutex<Vec<Coalescer>>,
    /// Where reads that cannot be used are counted (as `malformed` drops).
    metrics: Option<Arc<dyn MetricsService>>,
}

/// Errors that mean the device itself is gone (closed descriptor, interface deleted)
/// become `BrokenPipe`, as the [`TunDevice`] contract says; others pass unchanged.
fn gone_as_broken_pipe(e: io::Error) -> io::Error {
    const EBADF: i32 = 9;
    const ENODEV: i32 = 19;
    const EBADFD: i32 = 77;
    match e.raw_os_error() {
        Some(EBADF | ENODEV | EBADFD) => io::Error::new(io::ErrorKind::BrokenPipe, e),
        _ => e,
    }
}

fn startup(what: &'static str, e: io::Error) -> VpnError {
    VpnError::Service(ServiceError::new(ServiceErrorKind::Startup, "tun", what).with_source(e))
}

impl Tun {
    /// Creates and configures the interface. Needs `CAP_NET_ADMIN` and `/dev/net/tun`.
    ///
    /// Errors: a `Startup` service error naming the step that failed.
    pub async fn create(config: &TunConfig) -> Result<Self, VpnError> {
        OpenTun::open(config)?.start().await
    }

    /// Counts reads that cannot be used (a header it cannot take apart, a cut-off read) in
    /// `metrics`, as `malformed` drops.
    pub fn with_metrics(mut self, metrics: Arc<dyn MetricsService>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn unusable(&self, len: usize) {
        tracing::debug!(interface = %self.name, len, "dropped a TUN read that cannot be used");
        if let Some(metrics) = &self.metrics {
            metrics.record_drop(DropReason::Malformed);
        }
    }
}

/// A TUN interface opened and addressed, not yet in an async runtime: what needs root (the
/// device file) is done by [`OpenTun::open`], so a node can give root up before it starts
/// its runtime, and finish with [`OpenTun::start`].
pub struct OpenTun {
    device: tun_rs::SyncDevice,
    offload: bool,
    config: TunConfig,
}

impl OpenTun {
    /// Opens `/dev/net/tun` and creates the interface with its addresses (with offload
    /// first when asked, a plain TUN where the kernel refuses it). Needs `CAP_NET_ADMIN`
    /// and access to `/dev/net/tun`; starts no thread and needs no runtime.
    ///
    /// Errors: a `Startup` service error naming the step that failed.
    pub fn open(config: &TunConfig) -> Result<Self, VpnError> {
        let open = |offload: bool| {
            let mut builder = DeviceBuilder::new()
                .name(config.name.clone())
                .mtu(config.mtu)
                .ipv4(config.address.addr(), config.address.prefix_len(), None)
                .offload(offload);
            if let Some(v6) = config.address6 {
                builder = builder.ipv6(v6.addr(), v6.prefix_len());
            }
            builder.build_sync()
        };
        let (device, offload) =
            open_with_fallback(config.offload, open).map_err(|e| startup("create interface", e))?;
        Ok(Self { device, offload, config: config.clone() })
    }

    /// Finishes the interface inside the async runtime: its routes (through the `ip`
    /// command, which inherits CAP_NET_ADMIN) and the cap on segments per super-packet.
    ///
    /// Errors: a `Startup` service error naming the step that failed.
    pub async fn start(self) -> Result<Tun, VpnError> {
        let Self { device, offload, config } = self;
        let device = AsyncDevice::new(device).map_err(|e| startup("register interface", e))?;
        let name = device.name().map_err(|e| startup("read interface name", e))?;
        for route in &config.routes {
            add_route(&name, route).await.map_err(|e| startup("add route", e))?;
        }
        tracing::info!(interface = %name, address = %config.address, mtu = config.mtu, "TUN device up");
        let reader = ReadBuffers {
            scratch: vec![0; LARGEST_READ],
            packets: BytesMut::with_capacity(READ_BUFFER),
        };
        let offload = offload && device.tcp_gso();
        if config.offload && !offload {
            tracing::warn!(interface = %name, "TUN offload is off: the kernel does not offer it here");
        }
        if offload {
            // Super-packets of more segments are cut by the kernel before they reach us,
            // so every one we send is one a peer takes (vpn_utils::MAX_SEGMENTS).
            let segs = vpn_utils::MAX_SEGMENTS.to_string();
            if let Err(e) = ip(&["link", "set", "dev", &name, "gso_max_segs", &segs]).await {
                tracing::warn!(interface = %name, error = %e, "cannot cap segments per super-packet; larger ones are dropped");
            }
        }
        let reader = tokio::sync::Mutex::new(reader);
        let coalescers = std::sync::Mutex::new(Vec::new());
        Ok(Tun { device, name, mtu: config.mtu, offload, reader, coalescers, metrics: None })
    }
}

/// Opens the device with `open`, asking for offload when `offload` is set. A kernel that
/// refuses offload (an old kernel, a device that cannot take the virtio-net header) gets a
/// plain device instead of a node that does not start. Returns the device and whether it
/// was opened with offload; the error of the plain attempt when both fail.
fn open_with_fallback<T>(
    offload: bool,
    mut open: impl FnMut(bool) -> io::Result<T>,
) -> io::Result<(T, bool)> {
    if offload {
        match open(true) {
            Ok(device) => return Ok((device, true)),
            Err(e) => {
                tracing::warn!(error = %e, "opening the TUN with offload failed; trying a plain TUN")
            }
        }
    }
    open(false).map(|device| (device, false))
}

/// Adds `route` via the interface with iproute2.
async fn add_route(interface: &str, route: &IpNet) -> io::Result<()> {
    let family = if matches!(route.addr(), IpAddr::V4(_)) { "-4" } else { "-6" };
    ip(&[family, "route", "replace", &route.to_string(), "dev", interface]).await
}

/// Runs iproute2's `ip` with `args`.
async fn ip(args: &[&str]) -> io::Result<()> {
    let status = tokio::process::Command::new("ip").args(args).status().await?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("`ip {}` failed ({status})", args.join(" "))))
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
        self.offload
    }

    async fn recv_batch(&self, batch: &mut Vec<TunPacket>, max: usize) -> io::Result<usize> {
        let mut reader = self.reader.lock().await;
        let mut read = 0;
        // Wait for the first usable packet, then take whatever else is ready.
        while read == 0 {
            let len = self.device.recv(&mut reader.scratch).await.map_err(gone_as_broken_pipe)?;
            match reader.take(len, self.offload) {
                Some(packet) => {
                    batch.push(packet);
                    read += 1;
                }
                None => self.unusable(len),
            }
        }
        while read < max {
            match self.device.try_recv(&mut reader.scratch) {
                Ok(len) => match reader.take(len, self.offload) {
                    Some(packet) => {
                        batch.push(packet);
                        read += 1;
                    }
                    None => self.unusable(len),
                },
                // Hand over what was read; a lasting error shows again on the next call.
                Err(_) => break,
            }
        }
        Ok(read)
    }

    async fn send_batch(&self, packets: &[TunPacket]) -> io::Result<usize> {
        if self.offload && packets.len() > 1 && packets.iter().all(|p| p.gso.is_none()) {
            return self.send_coalesced(packets).await;
        }
        let mut written = 0;
        for packet in packets {
            let sent = if self.offload {
                let header = vnet::header(packet.gso.as_ref());
                self.device
                    .send_vectored(&[IoSlice::new(&header), IoSlice::new(&packet.data)])
                    .await
            } else {
                self.device.send(&packet.data).await
            };
            match sent.map_err(gone_as_broken_pipe) {
                Ok(_) => written += 1,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(e),
                // This packet only: refused (bad header), no buffer, interface down.
                Err(e) => tracing::debug!(error = %e, "the kernel did not take a packet"),
            }
        }
        Ok(written)
    }
}

impl Tun {
    /// Writes plain packets merged where they belong to one flow (see [`Coalescer`]).
    /// Counts every packet as written unless the device is gone.
    async fn send_coalesced(&self, packets: &[TunPacket]) -> io::Result<usize> {
        let lock = |c: &std::sync::Mutex<Vec<Coalescer>>| {
            c.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
        };
        let mut coalescer = lock(&self.coalescers).unwrap_or_else(Coalescer::new);
        coalescer.load(packets);
        let Coalescer { table, bufs } = &mut coalescer;
        let loaded = bufs.get_mut(..packets.len()).unwrap_or_default();
        let sent = self.device.send_multiple(table, loaded, vnet::LEN).await;
        coalescer.bufs.truncate(BUFS_KEPT);
        {
            let mut kept =
                self.coalescers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.len() < COALESCERS_KEPT {
                kept.push(coalescer);
            }
        }
        match sent.map_err(gone_as_broken_pipe) {
            Ok(_) => Ok(packets.len()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "the kernel did not take a coalesced batch");
                Ok(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens that fail when asked for offload (if `refuse`), recording each request.
    fn opener(
        refuse: bool,
        asked: &mut Vec<bool>,
    ) -> impl FnMut(bool) -> io::Result<&'static str> + '_ {
        move |offload| {
            asked.push(offload);
            if offload && refuse {
                Err(io::Error::from_raw_os_error(22))
            } else if offload {
                Ok("offload")
            } else {
                Ok("plain")
            }
        }
    }

    #[test]
    fn offload_refused_by_the_kernel_falls_back_to_a_plain_device() {
        let mut asked = Vec::new();
        let opened = open_with_fallback(true, opener(true, &mut asked)).unwrap();
        assert_eq!(opened, ("plain", false));
        assert_eq!(asked, [true, false]);
    }

    #[test]
    fn offload_granted_opens_once() {
        let mut asked = Vec::new();
        let opened = open_with_fallback(true, opener(false, &mut asked)).unwrap();
        assert_eq!(opened, ("offload", true));
        assert_eq!(asked, [true]);
    }

    #[test]
    fn offload_not_wanted_is_never_asked_for() {
        let mut asked = Vec::new();
        let opened = open_with_fallback(false, opener(false, &mut asked)).unwrap();
        assert_eq!(opened, ("plain", false));
        assert_eq!(asked, [false]);
    }

    #[test]
    fn when_both_opens_fail_the_plain_error_is_returned() {
        let mut asked = Vec::new();
        let failed = open_with_fallback(true, |offload| -> io::Result<()> {
            asked.push(offload);
            Err(io::Error::from_raw_os_error(if offload { 22 } else { 1 }))
        });
        assert_eq!(failed.unwrap_err().raw_os_error(), Some(1));
        assert_eq!(asked, [true, false]);
    }
}
