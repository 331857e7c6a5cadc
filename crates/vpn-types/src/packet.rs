use std::fmt;
use std::net::IpAddr;

/// What the packet layer needs to know about one IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    /// Source address from the IP header.
    pub src_ip: IpAddr,
    /// Destination address from the IP header.
    pub dst_ip: IpAddr,
    /// Source port, for TCP and UDP in an unfragmented packet or a first fragment.
    pub src_port: Option<u16>,
    /// Destination port, for TCP and UDP in an unfragmented packet or a first fragment.
    pub dst_port: Option<u16>,
    /// The upper-layer protocol number (for IPv6, the one after the extension headers).
    pub protocol: u8,
}

/// The key that ties packets to one ordered worker: destination IP and port, or the
/// destination IP alone when the packet has no ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Destination port, when the packet carries one.
    pub dst_port: Option<u16>,
}

impl FlowKey {
    /// A key for a destination address and optional port.
    pub fn new(dst_ip: IpAddr, dst_port: Option<u16>) -> Self {
        Self { dst_ip, dst_port }
    }
}

impl From<&PacketInfo> for FlowKey {
    fn from(info: &PacketInfo) -> Self {
        Self::new(info.dst_ip, info.dst_port)
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.dst_ip, self.dst_port) {
            (IpAddr::V4(ip), Some(port)) => write!(f, "{ip}:{port}"),
            (IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
            (ip, None) => write!(f, "{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn info(dst: IpAddr, src_port: Option<u16>, dst_port: Option<u16>) -> PacketInfo {
        PacketInfo {
            src_ip: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
            dst_ip: dst,
            src_port,
            dst_port,
            protocol: 17,
        }
    }

    #[test]
    fn flow_key_uses_destination_only() {
        let dst = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 9));
        let a = FlowKey::from(&info(dst, Some(1000), Some(53)));
        let b = FlowKey::from(&info(dst, Some(2000), Some(53)));
        let c = FlowKey::from(&info(dst, Some(1000), Some(54)));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let set: HashSet<_> = [a, b, c].into_iter().collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn flow_key_display() {
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        assert_eq!(FlowKey::new(v6, Some(80)).to_string(), "[fd00::2]:80");
        assert_eq!(FlowKey::new(v6, None).to_string(), "fd00::2");
        let v4 = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(FlowKey::new(v4, None).to_string(), "100.64.0.2");
    }
}
