//! Strangers' certificates against a node's logs, on a real swarm over 127.0.0.1: 10 000
//! connections, each from a new peer ID presenting a bad certificate (some signed by the
//! network's CA but naming an "address" with a line break and 1 500 more characters), cost
//! the node a few warning lines a second, none longer than 300 bytes, and no line break of
//! a peer's making.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::core::SignedEnvelope;
use libp2p::futures::{self, AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use vpn_api::VpnService;
use vpn_p2p::Keypair;
use vpn_types::PeerRefusal;

/// Every warning line written while this binary runs (one test: nothing else writes).
static WARNED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps each warning as the log would show it.
struct Warnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN {
            // As the log writes it: a timestamp (27 characters), the level and the target.
            let mut line = Line(format!("{:27}  WARN {}:", "", meta.target()));
            event.record(&mut line);
            WARNED.lock().unwrap().push(line.0);
        }
    }
}

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // The message is formatted text: its Debug is the text itself, as the log writes it.
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn bytes_field(out: &mut Vec<u8>, tag: u64, bytes: &[u8]) {
    varint(out, tag << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A certificate payload (docs/protocol.md, section 10) naming `address` as it is.
fn payload_naming(peer: PeerId, address: &str) -> Vec<u8> {
    let now = vpn_discovery::unix_now();
    let mut out = Vec::new();
    varint(&mut out, 1 << 3);
    varint(&mut out, u64::from(vpn_wire::CERT_VERSION));
    bytes_field(&mut out, 2, &peer.to_bytes());
    bytes_field(&mut out, 3, address.as_bytes());
    varint(&mut out, 6 << 3);
    varint(&mut out, now - 60);
    varint(&mut out, 7 << 3);
    varint(&mut out, now + 3600);
    out
}

/// The `n`th stranger's certificate: signed by the network's CA with a forged line in an
/// address, signed by a CA nobody trusts, or no envelope at all.
fn bad_certificate(n: usize, ca: &Keypair, peer: PeerId) -> Vec<u8> {
    let forged = format!("1.2.3.4\nWARN forged line {n}\r{}", "x".repeat(1500));
    let seal = |key: &Keypair| {
        SignedEnvelope::new(
            key,
            vpn_wire::CERT_DOMAIN.to_owned(),
            vpn_wire::CERT_PAYLOAD_TYPE.to_vec(),
            payload_naming(peer, &forged),
        )
        .unwrap()
        .into_protobuf_encoding()
    };
    match n % 3 {
        0 => seal(ca),
        1 => seal(&Keypair::generate_ed25519()),
        _ => format!("garbage\n{n}").into_bytes(),
    }
}

/// One stranger: a new identity connects, sends `certificate` in the membership exchange
/// and reads the answer. Returns whether it was refused.
async fn stranger(to: Multiaddr, node: PeerId, ca: &Keypair, n: usize) -> bool {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .build();
    let certificate = bad_certificate(n, ca, *swarm.local_peer_id());
    let mut control = swarm.behaviour().new_control();
    swarm.dial(to).unwrap();
    let (connected, up) = tokio::sync::oneshot::channel();
    let driver = tokio::spawn(async move {
        let mut connected = Some(connected);
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await
                && let Some(connected) = connected.take()
            {
                let _ = connected.send(());
            }
        }
    });
    let exchange = async {
        up.await.ok()?;
        let mut stream = control.open_stream(node, vpn_p2p::MEMBERSHIP_PROTOCOL).await.ok()?;
        let len = u16::try_from(certificate.len()).unwrap();
        stream.write_all(&len.to_be_bytes()).await.ok()?;
        stream.write_all(&certificate).await.ok()?;
        stream.flush().await.ok()?;
        let mut verdict = [0u8; 1];
        stream.read_exact(&mut verdict).await.ok()?;
        Some(verdict[0] == 1)
    };
    let refused = tokio::time::timeout(Duration::from_secs(20), exchange).await;
    driver.abort();
    matches!(refused, Ok(Some(true)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_certificates_cost_a_few_short_warning_lines_a_second() {
    use tracing_subscriber::layer::SubscriberExt;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Warnings)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let now = vpn_discovery::unix_now();
    let cert = common::certify(dir.path(), &ca, &key, &["100.64.0.1"], now - 10, 3600);
    let text = format!(
        "[node]\naddress = \"100.64.0.1/10\"\n[network]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n\
         [discovery]\nmdns = false\n[membership]\nca = [\"{}\"]\ncertificate = \"{cert}\"\n\
         max_unproven_per_ip = 128\n",
        common::hex(&ca.public().encode_protobuf())
    );
    let node = common::start(&key, vpn_config::load_str(&text, []).unwrap()).await;
    let addr = node.node.listen_addrs().await.remove(0);
    let id = node.node.local_peer_id();

    const STRANGERS: usize = 10_000;
    let started = Instant::now();
    let refused = futures::stream::iter(0..STRANGERS)
        .map(|n| stranger(addr.clone(), id, &ca, n))
        .buffer_unordered(32)
        .filter(|refused| std::future::ready(*refused))
        .count()
        .await;
    let elapsed = started.elapsed();
    let lines = WARNED.lock().unwrap().clone();
    println!(
        "{STRANGERS} strangers in {elapsed:?}: {refused} refused, {} counted, {} warning lines",
        node.node.metrics().refused(PeerRefusal::NotMember),
        lines.len()
    );
    assert!(refused >= STRANGERS * 9 / 10, "{refused} of {STRANGERS} strangers were refused");
    // Five lines a second at most over the attack's seconds (counted from the first line's,
    // so one more), and the DHT's one line that it has no peers yet.
    let allowed = 5 * (elapsed.as_secs() as usize + 2) + 1;
    assert!(lines.len() <= allowed, "{} warning lines in {elapsed:?}", lines.len());
    let told = lines.iter().find(|l| l.contains("bad address")).expect("the bad address was told");
    println!("as told: {told}");
    for line in &lines {
        assert!(line.len() <= 300, "{} bytes: {line}", line.len());
        assert!(!line.contains(['\n', '\r']), "a peer broke a line: {line}");
    }
    node.node.stop().await.unwrap();
}
