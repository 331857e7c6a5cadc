use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use ipnet::IpNet;
use vpn_errors::ConfigError;
use vpn_resilience::{CircuitBreakerSettings, RetrySettings};
use vpn_stream::{HealthCheckSettings, StreamPoolSettings};
use vpn_worker::WorkerSettings;

use crate::{DiscoverySettings, VpnConfig};

/// Collects every rule broken.
#[derive(Default)]
struct Checks(Vec<ConfigError>);

impl Checks {
    fn require(&mut self, ok: bool, key: &str, value: impl Display, rule: impl Into<String>) {
        if !ok {
            self.0.push(ConfigError::new(key, value, rule));
        }
    }

    fn positive(&mut self, key: &str, value: Duration) {
        self.require(!value.is_zero(), key, fmt_duration(value), "must be longer than zero");
    }

    fn at_least(&mut self, key: &str, value: u64, min: u64) {
        self.require(value >= min, key, value, format!("must be at least {min}"));
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{d:?}")
}

/// Every rule the configuration breaks, each with its key, value and rule; empty when the
/// configuration is sound.
pub fn validate(config: &VpnConfig) -> Vec<ConfigError> {
    let mut c = Checks::default();
    node(&mut c, config);
    worker(&mut c, &config.worker);
    pool(&mut c, &config.stream_pool);
    breaker(&mut c, &config.circuit_breaker);
    health(&mut c, &config.health_check);
    retry(&mut c, &config.retry);
    timeouts(&mut c, config);
    network(&mut c, config);
    discovery(&mut c, &config.discovery);
    limits(&mut c, config);
    peers(&mut c, config);
    membership(&mut c, config);
    relay(&mut c, &config.relay);
    c.0
}

fn relay(c: &mut Checks, r: &crate::RelaySettings) {
    c.at_least("relay.max_circuits", u64::from(r.max_circuits), 1);
    c.at_least("relay.max_circuits_per_peer", u64::from(r.max_circuits_per_peer), 1);
    c.at_least("relay.max_reservations", u64::from(r.max_reservations), 1);
    c.require(
        r.reservations <= 8,
        "relay.reservations",
        r.reservations,
        "must be at most 8 (one or two relays are enough)",
    );
    c.require(
        r.circuit_duration >= Duration::from_secs(60)
            && r.circuit_duration <= Duration::from_secs(365 * 24 * 3600),
        "relay.circuit_duration",
        fmt_duration(r.circuit_duration),
        "must be between 1m and 365 days",
    );
}

/// A trusted CA public key from its text (hex of the protobuf-encoded key).
pub fn parse_ca_key(text: &str) -> Result<libp2p_identity::PublicKey, String> {
    let text = text.trim();
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .filter(|_| text.len().is_multiple_of(2))
        .ok_or("is not hex")?;
    libp2p_identity::PublicKey::try_decode_protobuf(&bytes)
        .map_err(|_| "is not a public key (the text of a ca.pub)".to_owned())
}

fn membership(c: &mut Checks, config: &VpnConfig) {
    let m = &config.membership;
    for key in &m.ca {
        if let Err(rule) = parse_ca_key(key) {
            c.require(false, "membership.ca", key, rule);
        }
    }
    c.require(
        m.certificate.is_none() || !m.ca.is_empty(),
        "membership.certificate",
        m.certificate.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "needs membership.ca: the CA that signed it",
    );
    c.positive("membership.timeout", m.timeout);
    c.positive("membership.revocation_sync", m.revocation_sync);
    c.at_least("membership.max_unproven", u64::from(m.max_unproven), 1);
    c.at_least("membership.max_unproven_per_ip", u64::from(m.max_unproven_per_ip), 1);
    c.at_least("membership.max_pending_incoming", u64::from(m.max_pending_incoming), 1);
    c.require(
        m.max_unproven < config.network.max_connections,
        "membership.max_unproven",
        m.max_unproven,
        format!(
            "must be below network.max_connections ({}): members need the rest",
            config.network.max_connections
        ),
    );
}

fn node(c: &mut Checks, config: &VpnConfig) {
    let node = &config.node;
    c.require(
        node.address.is_some(),
        "node.address",
        "(unset)",
        "must be set, e.g. \"100.64.0.1/10\"",
    );
    if let Some(address) = node.address {
        let host = address.addr();
        c.require(
            address.prefix_len() == 32
                || (host != address.network() && host != address.broadcast()),
            "node.address",
            address,
            "must be a host address, not the network or broadcast address of its prefix",
        );
    }
    let mtu = config.interface.mtu;
    c.require((576..=65_535).contains(&mtu), "interface.mtu", mtu, "must be between 576 and 65535");
    if node.address6.is_some() {
        c.require(
            mtu >= 1280,
            "interface.mtu",
            mtu,
            "must be at least 1280 when node.address6 is set",
        );
    }
    let name = &config.interface.name;
    c.require(
        !name.is_empty()
            && name.len() < 16
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
        "interface.name",
        format!("{name:?}"),
        "must be 1 to 15 characters of letters, digits, '-', '_' or '.'",
    );
}

fn worker(c: &mut Checks, w: &WorkerSettings) {
    c.at_least("worker.queue_capacity", w.queue_capacity as u64, 1);
    c.at_least("worker.max_workers", w.max_workers as u64, 1);
    // At least one largest frame (docs/protocol.md, section 3.2: 65 600 bytes), or a
    // super-packet could never
    // be sent.
    c.at_least("worker.max_queued_bytes", w.max_queued_bytes as u64, 65_600);
    c.require(
        w.queue_capacity == 0 || (w.batch_max >= 1 && w.batch_max <= w.queue_capacity),
        "worker.batch_max",
        w.batch_max,
        format!("must be between 1 and worker.queue_capacity ({})", w.queue_capacity),
    );
    c.positive("worker.idle_timeout", w.idle_timeout);
    c.positive("worker.cleanup_interval", w.cleanup_interval);
    c.positive("worker.send_timeout", w.send_timeout);
}

fn pool(c: &mut Checks, p: &StreamPoolSettings) {
    c.at_least("stream_pool.max_streams_per_peer", p.max_streams_per_peer as u64, 1);
    c.require(
        p.min_streams_per_peer <= p.max_streams_per_peer,
        "stream_pool.min_streams_per_peer",
        p.min_streams_per_peer,
        format!("must be at most stream_pool.max_streams_per_peer ({})", p.max_streams_per_peer),
    );
    c.at_least("stream_pool.writer_queue_capacity", p.writer_queue_capacity as u64, 1);
    c.positive("stream_pool.stream_idle_timeout", p.stream_idle_timeout);
    c.positive("stream_pool.cleanup_interval", p.cleanup_interval);
    c.positive("stream_pool.open_timeout", p.open_timeout);
}

fn breaker(c: &mut Checks, b: &CircuitBreakerSettings) {
    c.at_least("circuit_breaker.failure_threshold", u64::from(b.failure_threshold), 1);
    c.at_least("circuit_breaker.success_threshold", u64::from(b.success_threshold), 1);
    c.positive("circuit_breaker.reset_timeout", b.reset_timeout);
    c.require(
        b.idle_eviction > b.reset_timeout,
        "circuit_breaker.idle_eviction",
        fmt_duration(b.idle_eviction),
        format!(
            "must be longer than circuit_breaker.reset_timeout ({})",
            fmt_duration(b.reset_timeout)
        ),
    );
}

fn health(c: &mut Checks, h: &HealthCheckSettings) {
    c.positive("health_check.interval", h.interval);
    c.positive("health_check.timeout", h.timeout);
    c.require(
        h.timeout <= h.interval,
        "health_check.timeout",
        fmt_duration(h.timeout),
        format!("must be at most health_check.interval ({})", fmt_duration(h.interval)),
    );
    c.at_least("health_check.max_consecutive_failures", u64::from(h.max_consecutive_failures), 1);
    c.positive("health_check.warm_interval", h.warm_interval);
}

fn retry(c: &mut Checks, r: &RetrySettings) {
    c.at_least("retry.max_attempts", u64::from(r.max_attempts), 1);
    c.positive("retry.initial_interval", r.initial_interval);
    c.require(
        r.initial_interval <= r.max_interval,
        "retry.max_interval",
        fmt_duration(r.max_interval),
        format!("must be at least retry.initial_interval ({})", fmt_duration(r.initial_interval)),
    );
    c.require(
        r.multiplier >= 1.0 && r.multiplier.is_finite(),
        "retry.multiplier",
        r.multiplier,
        "must be at least 1",
    );
    c.require((0.0..=1.0).contains(&r.jitter), "retry.jitter", r.jitter, "must be between 0 and 1");
}

/// Timeouts that can cut one another short. Stream opens, dials and DHT lookups run
/// detached under their own limits (`stream_pool.open_timeout`, `network.dial_timeout`,
/// `discovery.lookup_timeout`), so none of them is cut by `worker.send_timeout`, which
/// bounds only how long one packet waits; the one pair left is retry inside the send
/// timeout.
fn timeouts(c: &mut Checks, config: &VpnConfig) {
    let (w, r) = (&config.worker, &config.retry);
    c.require(
        r.max_attempts <= 1 || r.initial_interval < w.send_timeout,
        "retry.initial_interval",
        fmt_duration(r.initial_interval),
        format!(
            "must be shorter than worker.send_timeout ({}), or no retry could ever run",
            fmt_duration(w.send_timeout)
        ),
    );
}

fn network(c: &mut Checks, config: &VpnConfig) {
    let n = &config.network;
    c.require(!n.listen.is_empty(), "network.listen", "[]", "must name at least one address");
    // A bootstrap peer is a member by its ID, unless it proves itself by certificate.
    let certified = !config.membership.ca.is_empty();
    for (i, addr) in n.bootstrap.iter().enumerate() {
        let has_peer = addr.iter().any(|p| matches!(p, vpn_api::multiaddr::Protocol::P2p(_)));
        c.require(
            has_peer || certified,
            &format!("network.bootstrap[{i}]"),
            addr,
            "must end in /p2p/<peer id> (or membership.ca must be set: a bootstrap peer then proves itself by certificate)",
        );
    }
    if n.psk_file.is_some() {
        let quic = n
            .listen
            .iter()
            .find(|a| a.iter().any(|p| matches!(p, vpn_api::multiaddr::Protocol::QuicV1)));
        if let Some(quic) = quic {
            c.require(
                false,
                "network.listen",
                quic,
                "QUIC cannot carry network.psk_file's key: listen on TCP only",
            );
        }
        c.require(
            n.transport == crate::Transport::Tcp,
            "network.transport",
            "quic",
            "QUIC cannot carry network.psk_file's key: use tcp",
        );
    }
    c.at_least("network.max_connections", u64::from(n.max_connections), 1);
    c.at_least("network.max_connections_per_peer", u64::from(n.max_connections_per_peer), 1);
    c.require(
        n.dial_timeout >= Duration::from_secs(1),
        "network.dial_timeout",
        fmt_duration(n.dial_timeout),
        "must be at least 1s: the transport not preferred is dialed 0.5 s into a dial",
    );
    c.positive("network.idle_connection_timeout", n.idle_connection_timeout);
}

fn discovery(c: &mut Checks, d: &DiscoverySettings) {
    c.positive("discovery.record_ttl", d.record_ttl);
    c.require(
        d.record_ttl <= Duration::from_secs(7 * 24 * 3600),
        "discovery.record_ttl",
        fmt_duration(d.record_ttl),
        "must be at most 7 days",
    );
    c.require(
        !d.republish_interval.is_zero() && d.republish_interval < d.record_ttl / 2,
        "discovery.republish_interval",
        fmt_duration(d.republish_interval),
        format!(
            "must be longer than zero and shorter than half of discovery.record_ttl ({})",
            fmt_duration(d.record_ttl)
        ),
    );
    c.positive("discovery.cache_ttl", d.cache_ttl);
    c.positive("discovery.negative_cache_ttl", d.negative_cache_ttl);
    c.positive("discovery.lookup_timeout", d.lookup_timeout);
    c.at_least("discovery.cache_entries", d.cache_entries as u64, 1);
    c.at_least("discovery.records_per_publisher", d.records_per_publisher as u64, 1);
}

fn limits(c: &mut Checks, config: &VpnConfig) {
    let (l, pool, health) = (&config.limits, &config.stream_pool, &config.health_check);
    // Peers run with settings like ours: a sender's pool must fit in a receiver's budget.
    c.require(
        l.inbound_streams_per_peer >= pool.max_streams_per_peer.max(1),
        "limits.inbound_streams_per_peer",
        l.inbound_streams_per_peer,
        format!(
            "must be at least stream_pool.max_streams_per_peer ({}), or a peer's own pool is refused",
            pool.max_streams_per_peer
        ),
    );
    // At least one largest packet (docs/protocol.md, sections 3.2 and 6: 65 535 bytes and a
    // segmentation header).
    c.at_least("limits.lookup_bytes_per_peer", l.lookup_bytes_per_peer as u64, 65_600);
    c.at_least("limits.lookups_per_second", u64::from(l.lookups_per_second), 1);
    c.require(
        l.inbound_idle_timeout > health.interval,
        "limits.inbound_idle_timeout",
        fmt_duration(l.inbound_idle_timeout),
        format!(
            "must be longer than health_check.interval ({}): idle streams are kept by its pings",
            fmt_duration(health.interval)
        ),
    );
    c.positive("limits.inbound_write_timeout", l.inbound_write_timeout);
}

fn peers(c: &mut Checks, config: &VpnConfig) {
    // Who holds each address or prefix, ourselves included, to refuse overlaps.
    let mut holders: Vec<(IpNet, String)> = Vec::new();
    if let Some(own) = config.node.address {
        holders.push((IpNet::from(std::net::IpAddr::from(own.addr())), "node.address".to_owned()));
    }
    if let Some(own) = config.node.address6 {
        holders.push((IpNet::from(std::net::IpAddr::from(own.addr())), "node.address6".to_owned()));
    }
    for (i, route) in config.node.routes.iter().enumerate() {
        holders.push((*route, format!("node.routes[{i}]")));
    }
    let mut seen = HashMap::new();
    for (i, peer) in config.peers.iter().enumerate() {
        if let Some(first) = seen.insert(peer.peer_id, i) {
            c.require(
                false,
                &format!("peers[{i}].peer_id"),
                peer.peer_id,
                format!("is already peers[{first}]"),
            );
        }
        let nets = peer
            .addresses
            .iter()
            .map(|n| ("addresses", n))
            .chain(peer.routes.iter().map(|n| ("routes", n)));
        for (j, (field, net)) in nets.enumerate() {
            let index = if field == "addresses" { j } else { j - peer.addresses.len() };
            let key = format!("peers[{i}].{field}[{index}]");
            if field == "addresses" {
                c.require(
                    net.prefix_len() == net.max_prefix_len(),
                    &key,
                    net,
                    "must be a single address",
                );
            }
            if let Some((_, other)) =
                holders.iter().find(|(held, _)| held.contains(net) || net.contains(held))
            {
                c.require(false, &key, net, format!("overlaps {other}"));
            }
            holders.push((*net, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    const MINIMAL: &str = "[node]\naddress = \"100.64.0.1/10\"\n";

    fn problems(extra: &str) -> Vec<ConfigError> {
        match load_str(&format!("{MINIMAL}{extra}"), []) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        }
    }

    fn only(extra: &str) -> ConfigError {
        let p = problems(extra);
        assert_eq!(p.len(), 1, "{p:?}");
        p.into_iter().next().unwrap()
    }

    #[test]
    fn minimal_config_is_valid() {
        assert!(problems("").is_empty());
    }

    #[test]
    fn address_is_required() {
        let err = load_str("", []).unwrap_err();
        assert_eq!(err.problems()[0].key, "node.address");
    }

    #[test]
    fn each_rule_names_its_key() {
        let cases = [
            ("[worker]\nqueue_capacity = 0\nbatch_max = 1\n", "worker.queue_capacity"),
            ("[worker]\nbatch_max = 5000\n", "worker.batch_max"),
            ("[worker]\nidle_timeout = \"0s\"\n", "worker.idle_timeout"),
            ("[worker]\nmax_queued_bytes = 65599\n", "worker.max_queued_bytes"),
            ("[limits]\ninbound_streams_per_peer = 3\n", "limits.inbound_streams_per_peer"),
            ("[limits]\nlookup_bytes_per_peer = 1500\n", "limits.lookup_bytes_per_peer"),
            ("[limits]\nlookups_per_second = 0\n", "limits.lookups_per_second"),
            ("[limits]\ninbound_idle_timeout = \"10s\"\n", "limits.inbound_idle_timeout"),
            ("[limits]\ninbound_write_timeout = \"0s\"\n", "limits.inbound_write_timeout"),
            ("[discovery]\ncache_entries = 0\n", "discovery.cache_entries"),
            ("[discovery]\nrecords_per_publisher = 0\n", "discovery.records_per_publisher"),
            (
                "[stream_pool]\nmin_streams_per_peer = 5\nmax_streams_per_peer = 4\n",
                "stream_pool.min_streams_per_peer",
            ),
            ("[circuit_breaker]\nfailure_threshold = 0\n", "circuit_breaker.failure_threshold"),
            ("[circuit_breaker]\nreset_timeout = \"1h\"\n", "circuit_breaker.idle_eviction"),
            ("[health_check]\ntimeout = \"20s\"\n", "health_check.timeout"),
            (
                "[retry]\ninitial_interval = \"500ms\"\nmax_interval = \"100ms\"\n",
                "retry.max_interval",
            ),
            ("[retry]\nmultiplier = 0.5\n", "retry.multiplier"),
            (
                "[retry]\ninitial_interval = \"2s\"\nmax_interval = \"2s\"\n",
                "retry.initial_interval",
            ),
            ("[interface]\nmtu = 100\n", "interface.mtu"),
            ("[interface]\nname = \"a-name-far-too-long\"\n", "interface.name"),
            ("[network]\nlisten = []\n", "network.listen"),
            ("[network]\ndial_timeout = \"500ms\"\n", "network.dial_timeout"),
            ("[network]\nbootstrap = [\"/ip4/198.18.0.1/tcp/4001\"]\n", "network.bootstrap[0]"),
            ("[network]\npsk_file = \"swarm.key\"\n", "network.listen"),
            ("[membership]\ncertificate = \"node.crt\"\n", "membership.certificate"),
            ("[membership]\nca = [\"not hex\"]\n", "membership.ca"),
            ("[membership]\nca = [\"0801\"]\n", "membership.ca"),
            ("[membership]\nmax_unproven = 600\n", "membership.max_unproven"),
            ("[membership]\ntimeout = \"0s\"\n", "membership.timeout"),
            ("[discovery]\nrepublish_interval = \"40m\"\n", "discovery.republish_interval"),
            (
                "[discovery]\nrecord_ttl = \"8d\"\nrepublish_interval = \"1h\"\n",
                "discovery.record_ttl",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(only(extra).key, key, "{extra}");
        }
    }

    #[test]
    fn message_names_value_and_rule() {
        let p = only("[stream_pool]\nmin_streams_per_peer = 5\nmax_streams_per_peer = 4\n");
        assert_eq!(
            p.to_string(),
            "config key `stream_pool.min_streams_per_peer` = 5: must be at most stream_pool.max_streams_per_peer (4)"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let p = problems("[worker]\nmax_workers = 0\n[retry]\njitter = 2.0\n");
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["worker.max_workers", "retry.jitter"]);
    }

    #[test]
    fn overlapping_peer_addresses_are_refused() {
        let a = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let b = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq";
        let extra = format!(
            "[[peers]]\npeer_id = \"{a}\"\naddresses = [\"100.64.0.2\"]\nroutes = [\"10.1.0.0/24\"]\n\
             [[peers]]\npeer_id = \"{b}\"\naddresses = [\"100.64.0.2\", \"100.64.0.1\"]\nroutes = [\"10.1.0.128/25\"]\n\
             [[peers]]\npeer_id = \"{a}\"\n"
        );
        let p = problems(&extra);
        let text: Vec<_> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(text, vec![
            "config key `peers[1].addresses[0]` = 100.64.0.2/32: overlaps peers[0].addresses[0]".to_owned(),
            "config key `peers[1].addresses[1]` = 100.64.0.1/32: overlaps node.address".to_owned(),
            "config key `peers[1].routes[0]` = 10.1.0.128/25: overlaps peers[0].routes[0]".to_owned(),
            format!("config key `peers[2].peer_id` = {a}: is already peers[0]"),
        ]);
    }
}
