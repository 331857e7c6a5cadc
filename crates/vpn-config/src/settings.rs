//! Settings of the node itself: identity, addresses, interface, network, discovery, peers,
//! firewall, metrics and control socket; and [`VpnConfig`], the whole file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use serde::Deserialize;

use vpn_resilience::{CircuitBreakerSettings, RetrySettings};
use vpn_stream::{HealthCheckSettings, StreamPoolSettings};
use vpn_types::settings;
use vpn_worker::WorkerSettings;

/// Deserializes addresses and prefixes, a bare address standing for a /32 or /128.
fn nets<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::invalid_value(
                        serde::de::Unexpected::Str(text),
                        &"an IP address or prefix",
                    )
                })
        })
        .collect()
}

fn multiaddrs(list: &[&str]) -> Vec<Multiaddr> {
    list.iter().filter_map(|a| a.parse().ok()).collect()
}

settings! {
    /// Who this node is and which overlay addresses it holds.
    NodeSettings {
        /// The Ed25519 identity key file (written by `vpn-node init`, mode 0600). A relative
        /// path is taken from the configuration file's directory.
        identity_file: PathBuf = PathBuf::from("identity.key"), with_identity_file;
        /// The overlay IPv4 address with the overlay's prefix length, e.g. `100.64.0.1/10`.
        address: Option<Ipv4Net> = None, with_address;
        /// The overlay IPv6 address with its prefix length, e.g. `fd00::1/64`.
        address6: Option<Ipv6Net> = None, with_address6;
        /// Prefixes behind this node that it routes for the overlay.
        @serde(deserialize_with = "nets")
        routes: Vec<IpNet> = Vec::new(), with_routes;
        /// `vpn-node up` started as root becomes this user before it starts, keeping only
        /// CAP_NET_ADMIN (the identity and this file are read first, as root; certificate,
        /// revocation list and the control socket's directory must be open to the user).
        /// Unset: it keeps the privileges it was started with (under systemd: the unit's
        /// user and `AmbientCapabilities=CAP_NET_ADMIN`).
        user: Option<String> = None, with_user;
    }
}

settings! {
    /// The TUN interface.
    InterfaceSettings {
        /// Interface name.
        name: String = "vpn0".to_owned(), with_name;
        /// Interface MTU.
        mtu: u16 = 1400, with_mtu;
        /// Use TUN offload (TSO/GSO super-packets) where the kernel offers it; a kernel that
        /// refuses it gets a plain TUN.
        offload: bool = true, with_offload;
    }
}

/// The transport preferred when dialing a peer that offers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP with Noise and yamux.
    Tcp,
    /// QUIC v1.
    Quic,
}

settings! {
    /// The libp2p swarm: where it listens, whom it trusts and how many connections it keeps.
    NetworkSettings {
        /// Multiaddrs to listen on (TCP and QUIC).
        listen: Vec<Multiaddr> =
            multiaddrs(&["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]), with_listen;
        /// Bootstrap peers, each a multiaddr ending in `/p2p/<peer id>` (which makes it a
        /// member); with `membership.ca` set the peer ID may be left out, and the bootstrap
        /// peer proves itself by certificate.
        bootstrap: Vec<Multiaddr> = Vec::new(), with_bootstrap;
        /// Peers that may join and claim addresses in the overlay through the DHT, besides
        /// the configured `[[peers]]`.
        allowed_peers: Vec<PeerId> = Vec::new(), with_allowed_peers;
        /// The transport preferred for dialing.
        transport: Transport = Transport::Tcp, with_transport;
        /// Send IP packets to a member as QUIC datagrams while a direct QUIC connection to
        /// it carries them (no retransmission, no head-of-line blocking); streams carry
        /// them otherwise. Off with a pre-shared key (QUIC is not offered then).
        datagrams: bool = true, with_datagrams;
        /// A pre-shared key file (`vpn-node psk`, the libp2p `swarm.key` format): a private
        /// network whose TCP listeners are silent to anyone without the same key. QUIC has
        /// no place for the key, so with one the node listens and dials on TCP only. A
        /// relative path is taken from the configuration file's directory.
        psk_file: Option<PathBuf> = None, with_psk_file;
        /// Addresses this node is known to be reachable at from outside (a public address,
        /// a forwarded port), announced to members as confirmed at once; others are found
        /// by asking members to dial us back.
        external_addresses: Vec<Multiaddr> = Vec::new(), with_external_addresses;
        /// Most connections in all.
        max_connections: u32 = 512, with_max_connections;
        /// Most connections to one peer (a relayed one and a direct one, and room for a
        /// member checking that it can dial us back).
        max_connections_per_peer: u32 = 4, with_max_connections_per_peer;
        /// Dialing a peer (connection and handshake) may take this long. Short, since a
        /// dial stuck on a path that was black-holed holds back the next one until then.
        @serde(with = "humantime_serde")
        dial_timeout: Duration = Duration::from_secs(5), with_dial_timeout;
        /// A connection with no stream for this long is closed.
        @serde(with = "humantime_serde")
        idle_connection_timeout: Duration = Duration::from_secs(120), with_idle_connection_timeout;
    }
}

settings! {
    /// How peers and the owners of addresses are found.
    DiscoverySettings {
        /// Find peers on the local network by mDNS.
        mdns: bool = true, with_mdns;
        /// Publish and look up IP records in the Kademlia DHT.
        dht: bool = true, with_dht;
        /// Lifetime of our published IP record.
        @serde(with = "humantime_serde")
        record_ttl: Duration = Duration::from_secs(3600), with_record_ttl;
        /// How often our record is published again (before half its lifetime).
        @serde(with = "humantime_serde")
        republish_interval: Duration = Duration::from_secs(1200), with_republish_interval;
        /// How long a found owner is remembered.
        @serde(with = "humantime_serde")
        cache_ttl: Duration = Duration::from_secs(60), with_cache_ttl;
        /// How long "nobody owns this address" is remembered.
        @serde(with = "humantime_serde")
        negative_cache_ttl: Duration = Duration::from_secs(5), with_negative_cache_ttl;
        /// A DHT lookup may take this long.
        @serde(with = "humantime_serde")
        lookup_timeout: Duration = Duration::from_secs(5), with_lookup_timeout;
        /// Addresses whose owner (or lack of one) is remembered at once; the least recently
        /// used is forgotten first.
        cache_entries: usize = 4096, with_cache_entries;
        /// Records one publisher may keep in this node's share of the DHT; a record beyond
        /// it is refused.
        records_per_publisher: usize = 64, with_records_per_publisher;
    }
}

settings! {
    /// What one peer can make this node hold while it receives from it. Each budget that
    /// bites is counted in `vpn_budget_exceeded_total`, by budget.
    LimitSettings {
        /// Streams one peer may have open to this node at once; a stream beyond it is reset.
        inbound_streams_per_peer: usize = 16, with_inbound_streams_per_peer;
        /// Bytes of one peer's packets that may wait for their source's owner to be looked
        /// up; a packet beyond it is dropped as `over_budget`.
        lookup_bytes_per_peer: usize = 1024 * 1024, with_lookup_bytes_per_peer;
        /// Lookups of unknown source addresses that one peer's packets may start per
        /// second (as many at once); a packet beyond it is dropped as `over_budget`.
        lookups_per_second: u32 = 10, with_lookups_per_second;
        /// An inbound stream that sends nothing (not even a health-check ping) for this
        /// long is closed.
        @serde(with = "humantime_serde")
        inbound_idle_timeout: Duration = Duration::from_secs(60), with_inbound_idle_timeout;
        /// A reply (a PONG) the peer does not take within this long resets its stream.
        @serde(with = "humantime_serde")
        inbound_write_timeout: Duration = Duration::from_secs(10), with_inbound_write_timeout;
    }
}

/// A peer known from the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSettings {
    /// Its peer ID.
    pub peer_id: PeerId,
    /// Its overlay addresses (bare addresses, e.g. `100.64.0.2`).
    #[serde(default, deserialize_with = "nets")]
    pub addresses: Vec<IpNet>,
    /// Prefixes behind it that it routes.
    #[serde(default, deserialize_with = "nets")]
    pub routes: Vec<IpNet>,
    /// Multiaddrs where it can be dialed.
    #[serde(default)]
    pub endpoints: Vec<Multiaddr>,
}

settings! {
    /// Inbound packets refused before they reach the TUN.
    FirewallSettings {
        /// Upper-layer protocol numbers refused (e.g. 47 for GRE).
        deny_protocols: Vec<u8> = Vec::new(), with_deny_protocols;
        /// TCP and UDP destination ports refused.
        deny_ports: Vec<u16> = Vec::new(), with_deny_ports;
    }
}

settings! {
    /// Prometheus metrics.
    MetricsSettings {
        /// Address to serve `/metrics` on; none turns the endpoint off.
        listen: Option<SocketAddr> = None, with_listen;
    }
}

settings! {
    /// The local control socket used by `vpn-node status` and `vpn-node peers`.
    ControlSettings {
        /// Path of the Unix socket.
        socket: PathBuf = PathBuf::from("/run/vpn-node.sock"), with_socket;
    }
}

settings! {
    /// What the node logs.
    LogSettings {
        /// Which events are written, as a tracing filter: a level (`error`, `warn`, `info`,
        /// `debug`, `trace`) or directives such as `info,vpn_stream=debug`. `RUST_LOG`, when
        /// set, takes its place. Applied again by `vpn-node reload`.
        level: String = "info".to_owned(), with_level;
    }
}

settings! {
    /// Membership by certificate: peers that present a certificate from a trusted network
    /// CA are members, besides `[[peers]]`, bootstrap peers and `network.allowed_peers`.
    MembershipSettings {
        /// Trusted network CA public keys, each the text of a `ca.pub` written by
        /// `vpn-node ca init` (hex).
        ca: Vec<String> = Vec::new(), with_ca;
        /// This node's certificate (`vpn-node ca sign`). A relative path is taken from the
        /// configuration file's directory.
        certificate: Option<PathBuf> = None, with_certificate;
        /// A revocation list from the CA (`vpn-node ca revoke`), read at start. A relative
        /// path is taken from the configuration file's directory.
        revocations: Option<PathBuf> = None, with_revocations;
        /// A connection whose peer has not proven itself a member after this long is closed.
        @serde(with = "humantime_serde")
        timeout: Duration = Duration::from_secs(10), with_timeout;
        /// Most connections at once whose peers have not proven themselves yet: the rest of
        /// `network.max_connections` is kept for members.
        max_unproven: u32 = 128, with_max_unproven;
        /// Most of those from one IP address.
        max_unproven_per_ip: u32 = 8, with_max_unproven_per_ip;
        /// Most incoming connections still in their handshake.
        max_pending_incoming: u32 = 64, with_max_pending_incoming;
        /// How often revocation lists are fetched from the DHT (newer ones are taken, the
        /// members they revoke cut off) and the ones held published there.
        @serde(with = "humantime_serde")
        revocation_sync: Duration = Duration::from_secs(60), with_revocation_sync;
    }
}

settings! {
    /// Reaching members behind NAT: relaying for them, slots on their relays, hole punching.
    RelaySettings {
        /// Relay for members: `true` always, `false` never; unset, while other members
        /// confirm they can dial this node (AutoNAT). Only members may use the relay.
        serve: Option<bool> = None, with_serve;
        /// While no member can dial this node, hold a slot on this many member relays
        /// (0: none) and announce the addresses through them.
        reservations: u32 = 2, with_reservations;
        /// As a relay: most slots held for members.
        max_reservations: u32 = 128, with_max_reservations;
        /// As a relay: most circuits at once.
        max_circuits: u32 = 64, with_max_circuits;
        /// As a relay: most circuits at once from one member.
        max_circuits_per_peer: u32 = 8, with_max_circuits_per_peer;
        /// As a relay: a circuit is cut after this long (its peers open another).
        @serde(with = "humantime_serde")
        circuit_duration: Duration = Duration::from_secs(24 * 3600), with_circuit_duration;
        /// As a relay: a circuit is cut after carrying this many bytes each way; 0 never.
        circuit_bytes: u64 = 0, with_circuit_bytes;
        /// Punch holes through NATs to replace a relayed connection by a direct one (DCUtR).
        hole_punch: bool = true, with_hole_punch;
        /// Ask members whether they can dial our addresses, and answer them (AutoNAT v2).
        autonat: bool = true, with_autonat;
    }
}

settings! {
    /// The whole configuration file, one field per section.
    VpnConfig {
        /// `[node]`
        node: NodeSettings = NodeSettings::default(), with_node;
        /// `[interface]`
        interface: InterfaceSettings = InterfaceSettings::default(), with_interface;
        /// `[network]`
        network: NetworkSettings = NetworkSettings::default(), with_network;
        /// `[discovery]`
        discovery: DiscoverySettings = DiscoverySettings::default(), with_discovery;
        /// `[[peers]]`
        peers: Vec<PeerSettings> = Vec::new(), with_peers;
        /// `[firewall]`
        firewall: FirewallSettings = FirewallSettings::default(), with_firewall;
        /// `[metrics]`
        metrics: MetricsSettings = MetricsSettings::default(), with_metrics;
        /// `[control]`
        control: ControlSettings = ControlSettings::default(), with_control;
        /// `[log]`
        log: LogSettings = LogSettings::default(), with_log;
        /// `[worker]`
        worker: WorkerSettings = WorkerSettings::default(), with_worker;
        /// `[stream_pool]`
        stream_pool: StreamPoolSettings = StreamPoolSettings::default(), with_stream_pool;
        /// `[circuit_breaker]`
        circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings::default(), with_circuit_breaker;
        /// `[health_check]`
        health_check: HealthCheckSettings = HealthCheckSettings::default(), with_health_check;
        /// `[retry]`
        retry: RetrySettings = RetrySettings::default(), with_retry;
        /// `[limits]`
        limits: LimitSettings = LimitSettings::default(), with_limits;
        /// `[membership]`
        membership: MembershipSettings = MembershipSettings::default(), with_membership;
        /// `[relay]`
        relay: RelaySettings = RelaySettings::default(), with_relay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_listens_on_tcp_and_quic() {
        let net = NetworkSettings::default();
        assert_eq!(net.listen.len(), 2);
        assert_eq!(net.listen[1].to_string(), "/ip4/0.0.0.0/udp/4001/quic-v1");
    }
}
