//! Discovery against a mocked DHT and real signed records.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p_identity::Keypair;
use vpn_api::{IpNet, PeerId};
use vpn_api::{IpRegistry, MetricsService, PeerDiscoveryService};
use vpn_config::DiscoverySettings;
use vpn_errors::{NetworkErrorKind, VpnError};
use vpn_testutil::mocks::MockDht;
use vpn_wire::{IpRecord, record_key};

use crate::{KadDiscovery, StaticRegistry, record_filter, unix_now};

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A signed record of `key` holding `addr`.
fn record(key: &Keypair, addr: &str, seq: u64) -> Vec<u8> {
    IpRecord::new(key.public().to_peer_id(), vec![net(addr)], seq, unix_now() + 600)
        .sign(key)
        .unwrap()
}

struct World {
    me: Keypair,
    b: PeerId,
    c: Keypair,
    d: Keypair,
    registry: Arc<StaticRegistry>,
}

fn world() -> World {
    let (me, c, d) =
        (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let b = PeerId::random();
    let registry = StaticRegistry::new(
        vec![
            (me.public().to_peer_id(), net("100.64.0.1/32")),
            (b, net("100.64.0.2/32")),
            (b, net("10.1.0.0/24")),
        ],
        [c.public().to_peer_id(), d.public().to_peer_id()],
        vec![net("100.64.0.0/10"), net("fd00::/8")],
    );
    World { me, b, c, d, registry: Arc::new(registry) }
}

fn discovery(w: &World, dht: MockDht) -> KadDiscovery {
    let configured = w.registry.claims().iter().map(|(p, n)| (*n, *p)).collect();
    KadDiscovery::new(
        Arc::new(dht),
        w.registry.clone(),
        w.me.clone(),
        vec![net("100.64.0.1/32")],
        configured,
        DiscoverySettings::default().with_cache_ttl(Duration::from_secs(60)),
    )
}

#[tokio::test]
async fn configured_peers_resolve_without_the_dht() {
    let w = world();
    let d = discovery(&w, MockDht::new());
    assert_eq!(d.peer_for_ip(ip("100.64.0.2")).await.unwrap(), w.b);
    assert_eq!(d.peer_for_ip(ip("10.1.0.77")).await.unwrap(), w.b);
    assert_eq!(d.virtual_ips(&w.b).await.unwrap().len(), 2);
}

#[tokio::test]
async fn dht_records_resolve_once_and_are_cached() {
    let w = world();
    let mut dht = MockDht::new();
    let value = record(&w.c, "100.64.0.3/32", 1);
    dht.expect_get_records()
        .withf(|key| key == &record_key("100.64.0.3".parse().unwrap()))
        .times(1)
        .returning(move |_| Ok(vec![value.clone()]));
    let d = discovery(&w, dht);
    let c = w.c.public().to_peer_id();
    assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
    assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c, "second answer from the cache");
    assert_eq!(d.virtual_ips(&c).await.unwrap(), vec![net("100.64.0.3/32")]);
}

#[tokio::test]
async fn invalid_records_are_ignored_and_the_miss_is_cached() {
    let w = world();
    let mut dht = MockDht::new();
    let stranger = Keypair::generate_ed25519();
    let values = vec![
        record(&stranger, "100.64.0.4/32", 1), // not allowed by the registry
        record(&w.c, "100.64.0.2/32", 1),      // a configured address
        b"garbage".to_vec(),
    ];
    dht.expect_get_records().times(1).returning(move |_| Ok(values.clone()));
    let d = discovery(&w, dht);
    for _ in 0..2 {
        let err = d.peer_for_ip(ip("100.64.0.4")).await.unwrap_err();
        assert_eq!(err.network_kind(), Some(NetworkErrorKind::NoPeer));
    }
}

#[tokio::test]
async fn two_owners_are_a_conflict() {
    let w = world();
    let mut dht = MockDht::new();
    let values = vec![record(&w.c, "100.64.0.5/32", 1), record(&w.d, "100.64.0.5/32", 1)];
    dht.expect_get_records().returning(move |_| Ok(values.clone()));
    let d = discovery(&w, dht);
    let err = d.peer_for_ip(ip("100.64.0.5")).await.unwrap_err();
    assert_eq!(err.network_kind(), Some(NetworkErrorKind::NoPeer));
    assert_eq!(d.conflicts(), 1);
}

#[tokio::test]
async fn the_newest_record_of_one_owner_wins() {
    let w = world();
    let mut dht = MockDht::new();
    let values = vec![record(&w.c, "100.64.0.6/32", 5), record(&w.c, "100.64.0.0/24", 9)];
    dht.expect_get_records().returning(move |_| Ok(values.clone()));
    let d = discovery(&w, dht);
    let c = w.c.public().to_peer_id();
    // The /24 contains configured addresses, so that record is invalid: the /32 one is used.
    assert_eq!(d.peer_for_ip(ip("100.64.0.6")).await.unwrap(), c);
    assert_eq!(d.virtual_ips(&c).await.unwrap(), vec![net("100.64.0.6/32")]);
}

#[tokio::test]
async fn sync_publishes_a_signed_record_under_each_address() {
    let w = world();
    let mut dht = MockDht::new();
    let stored = Arc::new(Mutex::new(Vec::new()));
    let keep = stored.clone();
    dht.expect_put_record().returning(move |key, value, _| {
        keep.lock().unwrap().push((key, value));
        Ok(())
    });
    let d = discovery(&w, dht);
    d.sync_to_dht().await.unwrap();
    d.sync_to_dht().await.unwrap();
    let stored = stored.lock().unwrap();
    assert_eq!(stored.len(), 2);
    let first =
        IpRecord::open(&stored[0].1, ip("100.64.0.1"), unix_now(), w.registry.as_ref()).unwrap();
    let second =
        IpRecord::open(&stored[1].1, ip("100.64.0.1"), unix_now(), w.registry.as_ref()).unwrap();
    assert_eq!(stored[0].0, record_key(ip("100.64.0.1")));
    assert_eq!(first.peer_id, w.me.public().to_peer_id());
    assert!(second.seq > first.seq, "every publication has a higher seq");
}

#[tokio::test]
async fn the_store_filter_checks_every_put() {
    let w = world();
    let registry: Arc<dyn IpRegistry> = w.registry.clone();
    let filter = record_filter(registry, 64, None);
    let key = record_key(ip("100.64.0.7"));
    let c1 = record(&w.c, "100.64.0.7/32", 1);
    let c2 = record(&w.c, "100.64.0.7/32", 2);
    let d1 = record(&w.d, "100.64.0.7/32", 3);
    assert!(filter(&key, &c1, None));
    assert!(filter(&key, &c2, Some(&c1)), "a newer record of the same owner replaces");
    assert!(!filter(&key, &c1, Some(&c2)), "a lower seq loses");
    assert!(!filter(&key, &d1, Some(&c2)), "a second owner is a conflict");
    assert!(!filter(&record_key(ip("100.64.0.8")), &c1, None), "the key's address must be covered");
    assert!(!filter(b"/other/key", &c1, None));
    assert!(!filter(&key, b"garbage", None));
}

#[test]
fn records_are_stored_only_under_the_key_they_are_published_under() {
    let w = world();
    let registry: Arc<dyn IpRegistry> = w.registry.clone();
    let filter = record_filter(registry, 64, None);
    let v6 = record(&w.c, "fd00::7/128", 1);
    assert!(filter(&record_key(ip("fd00::7")), &v6, None));
    // The same address spelled otherwise: each would take a slot of the store.
    for spelling in ["fd00:0::7", "fd00:0000:0000::0007", "FD00::7", "fd00::0.0.0.7"] {
        let key = format!("{}{spelling}", vpn_wire::RECORD_KEY_PREFIX).into_bytes();
        assert!(!filter(&key, &v6, None), "{spelling}");
    }
    // A prefix's record is published under its network address only.
    let prefix = record(&w.c, "100.64.9.0/24", 1);
    assert!(filter(&record_key(ip("100.64.9.0")), &prefix, None));
    for inside in ["100.64.9.1", "100.64.9.77", "100.64.9.255"] {
        assert!(!filter(&record_key(ip(inside)), &prefix, None), "{inside}");
    }
}

/// A DHT whose lookups wait at a gate (a black-holed path) or fail (an unreachable DHT),
/// counting every lookup it was asked for.
struct GatedDht {
    gate: tokio::sync::Semaphore,
    failing: std::sync::atomic::AtomicBool,
    asked: std::sync::atomic::AtomicUsize,
    values: Vec<Vec<u8>>,
}

impl GatedDht {
    fn new(values: Vec<Vec<u8>>) -> Arc<Self> {
        Arc::new(Self {
            gate: tokio::sync::Semaphore::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            asked: std::sync::atomic::AtomicUsize::new(0),
            values,
        })
    }

    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl vpn_api::DhtRecords for GatedDht {
    async fn put_record(&self, _: Vec<u8>, _: Vec<u8>, _: Duration) -> Result<(), VpnError> {
        Ok(())
    }

    async fn get_records(&self, _key: Vec<u8>) -> Result<Vec<Vec<u8>>, VpnError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let err = vpn_errors::NetworkError::new(NetworkErrorKind::Unreachable, "get records");
            return Err(VpnError::Network(err));
        }
        let _through = self.gate.acquire().await.map_err(|_| {
            VpnError::Network(vpn_errors::NetworkError::new(NetworkErrorKind::Io, "gate"))
        })?;
        Ok(self.values.clone())
    }
}

fn gated_discovery(w: &World, dht: Arc<GatedDht>) -> KadDiscovery {
    KadDiscovery::new(
        dht,
        w.registry.clone(),
        w.me.clone(),
        vec![net("100.64.0.1/32")],
        Vec::new(),
        DiscoverySettings::default()
            .with_cache_ttl(Duration::from_secs(60))
            .with_lookup_timeout(Duration::from_secs(5)),
    )
}

#[tokio::test(start_paused = true)]
async fn a_lookup_its_caller_gave_up_on_answers_the_next_caller() {
    let w = world();
    let dht = GatedDht::new(vec![record(&w.c, "100.64.0.3/32", 1)]);
    let d = gated_discovery(&w, dht.clone());
    let c = w.c.public().to_peer_id();
    // The caller gives up mid-lookup, as a worker's send timeout (1 s) does.
    let gave_up = tokio::time::timeout(Duration::from_secs(1), d.peer_for_ip(ip("100.64.0.3")));
    assert!(gave_up.await.is_err());
    // The DHT answers while nobody waits; the answer is kept for the next caller.
    dht.gate.add_permits(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let next = tokio::time::timeout(Duration::from_millis(1), d.peer_for_ip(ip("100.64.0.3")));
    assert_eq!(next.await.expect("answered without waiting").unwrap(), c);
    assert_eq!(dht.asked(), 1, "one lookup served both callers");
}

#[tokio::test(start_paused = true)]
async fn callers_join_the_lookup_under_way() {
    let w = world();
    let dht = GatedDht::new(vec![record(&w.c, "100.64.0.3/32", 1)]);
    let d = gated_discovery(&w, dht.clone());
    let first = tokio::time::timeout(Duration::from_secs(1), d.peer_for_ip(ip("100.64.0.3")));
    assert!(first.await.is_err());
    let (second, ()) = tokio::join!(d.peer_for_ip(ip("100.64.0.3")), async {
        dht.gate.add_permits(1);
    });
    assert_eq!(second.unwrap(), w.c.public().to_peer_id());
    assert_eq!(dht.asked(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lookup_that_timed_out_leaves_nothing_behind() {
    let w = world();
    let dht = GatedDht::new(vec![record(&w.c, "100.64.0.3/32", 1)]);
    let d = gated_discovery(&w, dht.clone());
    let gave_up = tokio::time::timeout(Duration::from_secs(1), d.peer_for_ip(ip("100.64.0.3")));
    assert!(gave_up.await.is_err());
    // Longer than lookup_timeout and the short miss it leaves.
    tokio::time::sleep(Duration::from_secs(12)).await;
    dht.gate.add_permits(1);
    let next = tokio::time::timeout(Duration::from_millis(1), d.peer_for_ip(ip("100.64.0.3")));
    assert_eq!(next.await.expect("a fresh lookup").unwrap(), w.c.public().to_peer_id());
    assert_eq!(dht.asked(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_live_peer_stays_resolved_while_the_dht_is_unreachable() {
    let w = world();
    let dht = GatedDht::new(vec![record(&w.c, "100.64.0.3/32", 1)]);
    dht.gate.add_permits(100);
    let d = gated_discovery(&w, dht.clone());
    let c = w.c.public().to_peer_id();
    assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
    dht.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    // A running flow asks every second for five cache lifetimes (the record lives 600 s).
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
    }
    assert!(dht.asked() > 1, "the answer was looked up again in the background");
    assert!(dht.asked() < 100, "background refreshes are paced, not one per packet");
}

#[tokio::test(start_paused = true)]
async fn a_kept_answer_ends_with_its_record() {
    let w = world();
    let value =
        IpRecord::new(w.c.public().to_peer_id(), vec![net("100.64.0.3/32")], 1, unix_now() + 90)
            .sign(&w.c)
            .unwrap();
    let dht = GatedDht::new(vec![value]);
    dht.gate.add_permits(100);
    let d = gated_discovery(&w, dht.clone());
    assert!(d.peer_for_ip(ip("100.64.0.3")).await.is_ok());
    dht.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut resolved_for = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if d.peer_for_ip(ip("100.64.0.3")).await.is_err() {
            break;
        }
        resolved_for += 1;
    }
    assert!(resolved_for < 95, "the answer outlived its record ({resolved_for} s)");
    assert!(resolved_for >= 60, "the answer was not kept through the outage ({resolved_for} s)");
}

/// A record of `key` holding every address of `addrs`, expiring in `secs`.
fn record_of(key: &Keypair, addrs: &[&str], secs: u64) -> Vec<u8> {
    let nets = addrs.iter().map(|a| net(a)).collect();
    IpRecord::new(key.public().to_peer_id(), nets, 1, unix_now() + secs).sign(key).unwrap()
}

#[tokio::test]
async fn a_conflict_outweighs_what_a_peer_claimed_before() {
    let w = world();
    let c_both = record_of(&w.c, &["100.64.0.3/32", "100.64.0.9/32"], 600);
    let d_nine = record_of(&w.d, &["100.64.0.9/32"], 600);
    let mut dht = MockDht::new();
    dht.expect_get_records().returning(move |key| {
        if key == record_key(ip("100.64.0.9")) {
            Ok(vec![c_both.clone(), d_nine.clone()])
        } else {
            Ok(vec![c_both.clone()])
        }
    });
    let d = discovery(&w, dht);
    let c = w.c.public().to_peer_id();
    assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
    assert_eq!(d.holds_now(&c, ip("100.64.0.9")), Some(true), "c's record covers .9");
    assert!(d.peer_for_ip(ip("100.64.0.9")).await.is_err(), "c and d both claim .9");
    assert_eq!(d.holds_now(&c, ip("100.64.0.9")), Some(false), "a conflict is nobody's");
    assert_eq!(d.holds_now(&w.d.public().to_peer_id(), ip("100.64.0.9")), Some(false));
}

#[tokio::test(start_paused = true)]
async fn what_a_record_proved_ends_with_the_record() {
    let w = world();
    let short = record_of(&w.c, &["100.64.0.3/32", "100.64.0.9/32"], 90);
    let mut dht = MockDht::new();
    dht.expect_get_records().returning(move |_| Ok(vec![short.clone()]));
    let d = discovery(&w, dht);
    let c = w.c.public().to_peer_id();
    assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
    assert_eq!(d.holds_now(&c, ip("100.64.0.9")), Some(true));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(d.holds_now(&c, ip("100.64.0.9")), None, "the record has expired");
    assert!(d.virtual_ips(&c).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_dht_that_finds_nothing_does_not_unseat_a_live_owner() {
    // An unreachable DHT's queries fail fast and find nothing; the owner's record is
    // still valid, so its answer stays while the flow runs.
    let w = world();
    let value = record(&w.c, "100.64.0.3/32", 1);
    let mut dht = MockDht::new();
    let asked = std::sync::atomic::AtomicUsize::new(0);
    dht.expect_get_records().returning(move |_| {
        let first = asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        Ok(if first { vec![value.clone()] } else { Vec::new() })
    });
    let d = discovery(&w, dht);
    let c = w.c.public().to_peer_id();
    for _ in 0..180 {
        assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn the_cache_holds_its_budget_of_addresses_and_forgets_the_least_recently_used() {
    let w = world();
    let mut dht = MockDht::new();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let c_record = record(&w.c, "100.64.0.3/32", 1);
    dht.expect_get_records().returning(move |key| {
        seen.lock().unwrap().push(key.clone());
        match key == record_key(ip("100.64.0.3")) {
            true => Ok(vec![c_record.clone()]),
            false => Ok(Vec::new()),
        }
    });
    let metrics = Arc::new(vpn_metrics::AtomicMetrics::new());
    let configured = w.registry.claims().iter().map(|(p, n)| (*n, *p)).collect();
    let d = KadDiscovery::new(
        Arc::new(dht),
        w.registry.clone(),
        w.me.clone(),
        vec![net("100.64.0.1/32")],
        configured,
        DiscoverySettings::default().with_cache_entries(8),
    )
    .with_metrics(metrics.clone());
    let c = w.c.public().to_peer_id();
    assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
    // A flood of addresses nobody owns: each is a miss, and the cache keeps 8 answers.
    for n in 0..100u8 {
        let unknown = IpAddr::from([100, 64, 9, n]);
        assert!(d.peer_for_ip(unknown).await.is_err());
        // The owner in use stays: it is used between the misses.
        assert_eq!(d.holds_now(&c, ip("100.64.0.3")), Some(true));
    }
    let lookups = asked.lock().unwrap().len();
    assert_eq!(lookups, 1 + 100);
    assert_eq!(d.peer_for_ip(ip("100.64.0.3")).await.unwrap(), c);
    assert_eq!(asked.lock().unwrap().len(), lookups, "the owner in use was still cached");
    // The first misses were forgotten: asking again looks them up again.
    assert!(d.peer_for_ip(IpAddr::from([100, 64, 9, 0])).await.is_err());
    assert_eq!(asked.lock().unwrap().len(), lookups + 1);
    let forgotten = metrics.snapshot().exceeded(vpn_types::Budget::DiscoveryCache);
    assert_eq!(forgotten, 101 + 1 - 8);
}

#[test]
fn each_owner_keeps_its_quota_of_records_in_our_store() {
    let w = world();
    let registry: Arc<dyn IpRegistry> = w.registry.clone();
    let metrics = Arc::new(vpn_metrics::AtomicMetrics::new());
    let filter = record_filter(registry, 3, Some(metrics.clone()));
    // One record claiming many addresses, offered under each of their keys.
    let addresses: Vec<IpNet> = (10..20u8).map(|n| net(&format!("100.64.1.{n}/32"))).collect();
    let c = w.c.public().to_peer_id();
    let many = IpRecord::new(c, addresses.clone(), 1, unix_now() + 600).sign(&w.c).unwrap();
    let stored: Vec<bool> =
        addresses.iter().map(|a| filter(&record_key(a.network()), &many, None)).collect();
    assert_eq!(stored.iter().filter(|s| **s).count(), 3, "{stored:?}");
    assert_eq!(metrics.snapshot().exceeded(vpn_types::Budget::StoreQuota), 7);
    // Its stored keys can still be renewed; another owner has its own quota.
    let renewed = IpRecord::new(c, addresses.clone(), 2, unix_now() + 600).sign(&w.c).unwrap();
    assert!(filter(&record_key(addresses[0].network()), &renewed, Some(&many)));
    assert!(filter(&record_key(ip("100.64.2.1")), &record(&w.d, "100.64.2.1/32", 1), None));
    // A new key of the first owner is still refused.
    let more =
        IpRecord::new(c, vec![net("100.64.3.1/32")], 3, unix_now() + 600).sign(&w.c).unwrap();
    assert!(!filter(&record_key(ip("100.64.3.1")), &more, None), "still over the quota");
    assert_eq!(metrics.snapshot().records_refused, 7 + 1);
}
