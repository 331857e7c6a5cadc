//! The example configuration in docs/ loads, and says what it seems to say.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use vpn_config::{Transport, load_file_with_env};

#[test]
fn docs_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.example.toml");
    let config = load_file_with_env(&path, []).expect("the example is valid");
    assert_eq!(config.node.address.unwrap().to_string(), "100.64.0.1/10");
    assert_eq!(config.node.identity_file, path.parent().unwrap().join("a.key"));
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.peers[0].addresses.len(), 2);
    assert_eq!(config.network.allowed_peers.len(), 1);
    assert_eq!(config.network.transport, Transport::Tcp);
    assert!(!config.discovery.mdns);
    assert_eq!(config.firewall.deny_ports, vec![23]);

    assert_eq!(config.worker.max_workers, 8192);
    assert_eq!(config.worker.idle_timeout, Duration::from_secs(120));
    assert_eq!(config.stream_pool.max_streams_per_peer, 8);
    assert_eq!(config.circuit_breaker.reset_timeout, Duration::from_secs(5));
    assert_eq!(config.health_check.timeout, Duration::from_secs(3));
    assert_eq!(config.retry.initial_interval, Duration::from_millis(25));
    // Untouched keys keep their defaults.
    assert_eq!(config.retry.max_interval, Duration::from_secs(1));
}
