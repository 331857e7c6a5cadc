//! What the swarm tests share: a node on an in-memory TUN, ICMP packets, and waiting for
//! a packet to come out of another node.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use vpn_api::VpnService;
use vpn_p2p::Keypair;
use vpn_service::VpnNode;
use vpn_testutil::{MemoryTun, MemoryTunHandle, PacketBuilder};

pub struct Member {
    pub node: VpnNode,
    pub os: MemoryTunHandle,
}

pub async fn start(key: &Keypair, config: vpn_config::VpnConfig) -> Member {
    let (tun, os) = MemoryTun::new("mem", 1400, 1024);
    let node = VpnNode::builder(config, key.clone()).tun(Arc::new(tun)).build();
    node.start().await.unwrap();
    Member { node, os }
}

pub fn ping(src: &str, dst: &str, seq: u16) -> Bytes {
    Bytes::from(
        PacketBuilder::icmp_echo(src.parse().unwrap(), dst.parse().unwrap(), 1, seq)
            .payload(b"hello")
            .build(),
    )
}

/// Injects `packet` into `from` until it comes out of `to`'s TUN (a few tries: the sender
/// may still be looking its peer up, or backing off from connections it was refused;
/// packets it queued then may come out first).
pub async fn reaches(from: &Member, to: &mut Member, packet: Bytes) {
    for _ in 0..40 {
        from.os.inject(packet.clone()).await;
        while let Ok(out) =
            tokio::time::timeout(Duration::from_millis(500), to.os.next_written()).await
        {
            if out.unwrap().data == packet {
                return;
            }
        }
    }
    panic!("the packet never arrived");
}

/// The configuration text of a node at `address` listening on `listen` (loopback
/// addresses), bootstrapping from `bootstrap`, letting `allowed` join; no mDNS.
pub fn config_text(
    address: &str,
    listen: &[&str],
    bootstrap: Option<&vpn_p2p::Multiaddr>,
    allowed: &[&Keypair],
) -> String {
    let quoted = |items: Vec<String>| items.join(", ");
    let listen = quoted(listen.iter().map(|a| format!("\"{a}\"")).collect());
    let allowed =
        quoted(allowed.iter().map(|k| format!("\"{}\"", k.public().to_peer_id())).collect());
    let mut text = format!(
        "[node]\naddress = \"{address}/10\"\n[network]\nlisten = [{listen}]\n\
         allowed_peers = [{allowed}]\n"
    );
    if let Some(addr) = bootstrap {
        text.push_str(&format!("bootstrap = [\"{addr}\"]\n"));
    }
    text.push_str("[discovery]\nmdns = false\nnegative_cache_ttl = \"100ms\"\n");
    text
}

/// Waits (at most 20 s) until `done` holds.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let wait = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Injects pings from `from` until one comes out of `to` having crossed as a datagram (a
/// ping may be lost, as on any network, or cross on a stream while the datagram path comes
/// up; what comes out is only ever a ping that went in).
pub async fn crosses_as_datagram(from: &Member, to: &mut Member, src: &str, dst: &str) {
    for seq in 0..100 {
        let before = to.node.metrics().datagrams_received;
        let packet = ping(src, dst, seq);
        from.os.inject(packet.clone()).await;
        let wait = tokio::time::timeout(Duration::from_secs(2), to.os.next_written()).await;
        if let Ok(out) = wait {
            let out = out.unwrap().data;
            let sent: Vec<_> = (0..=seq).map(|s| ping(src, dst, s)).collect();
            assert!(sent.contains(&out), "only pings that were sent come out");
            if out == packet && to.node.metrics().datagrams_received > before {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no packet crossed as a datagram");
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a certificate for `key` holding `addresses`, valid from `from` for `secs`.
pub fn certify(
    dir: &std::path::Path,
    ca: &Keypair,
    key: &Keypair,
    addresses: &[&str],
    from: u64,
    secs: u64,
) -> String {
    let peer_id = key.public().to_peer_id();
    let cert = vpn_wire::Certificate {
        peer_id,
        addresses: addresses
            .iter()
            .map(|a| vpn_api::IpNet::from(a.parse::<std::net::IpAddr>().unwrap()))
            .collect(),
        routes: Vec::new(),
        name: String::new(),
        not_before_unix: from,
        not_after_unix: from + secs,
    };
    let path = dir.join(format!("{peer_id}.crt"));
    std::fs::write(&path, cert.sign(ca).unwrap()).unwrap();
    path.display().to_string()
}
