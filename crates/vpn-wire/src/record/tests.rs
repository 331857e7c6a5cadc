use super::*;
use vpn_testutil::mocks::MockRegistry;

/// A registry that lets each listed peer hold addresses inside its listed prefixes.
fn allow(list: Vec<(PeerId, IpNet)>) -> MockRegistry {
    let mut registry = MockRegistry::new();
    registry
        .expect_may_hold()
        .returning(move |peer, net| list.iter().any(|(p, range)| p == peer && range.contains(net)));
    registry
}

const NOW: u64 = 1_800_000_000;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

struct Fixture {
    key: Keypair,
    registry: MockRegistry,
}

impl Fixture {
    fn new() -> Self {
        let key = Keypair::generate_ed25519();
        let registry = allow(vec![
            (key.public().to_peer_id(), net("100.64.0.0/24")),
            (key.public().to_peer_id(), net("fd00::/64")),
        ]);
        Self { key, registry }
    }

    fn peer(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    fn record(&self) -> IpRecord {
        IpRecord::new(self.peer(), vec![net("100.64.0.2/32"), net("fd00::2/128")], 7, NOW + 3600)
    }

    fn open(&self, record: &IpRecord, key_addr: &str, now: u64) -> Result<IpRecord, RecordError> {
        let bytes = record.sign(&self.key).unwrap();
        IpRecord::open(&bytes, ip(key_addr), now, &self.registry)
    }
}

#[test]
fn signed_record_opens_intact() {
    let f = Fixture::new();
    let record = f.record();
    assert_eq!(f.open(&record, "100.64.0.2", NOW).unwrap(), record);
    assert_eq!(f.open(&record, "fd00::2", NOW).unwrap(), record);
}

#[test]
fn bad_signature_is_refused() {
    let f = Fixture::new();
    let mut bytes = f.record().sign(&f.key).unwrap();
    // The signature is the envelope's last field: flip its last byte.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    assert_eq!(
        IpRecord::open(&bytes, ip("100.64.0.2"), NOW, &f.registry),
        Err(RecordError::BadSignature)
    );
}

#[test]
fn tampered_payload_is_refused() {
    let f = Fixture::new();
    let bytes = f.record().sign(&f.key).unwrap();
    // Change seq 7 -> 8 inside the payload: the signature no longer covers it.
    let seq_field = [0x18, 7];
    let at = bytes.windows(2).position(|w| w == seq_field).unwrap();
    let mut tampered = bytes.clone();
    tampered[at + 1] = 8;
    assert_eq!(
        IpRecord::open(&tampered, ip("100.64.0.2"), NOW, &f.registry),
        Err(RecordError::BadSignature)
    );
}

#[test]
fn signer_must_be_the_named_peer() {
    let f = Fixture::new();
    let mallory = Keypair::generate_ed25519();
    // Mallory signs a record naming f's peer: build the envelope by hand.
    let record = f.record();
    let payload = IpRecordProto {
        peer_id: record.peer_id.to_bytes(),
        addresses: vec!["100.64.0.2".into()],
        seq: 1,
        expires_unix: NOW + 60,
        certificate: Vec::new(),
    }
    .encode_to_vec();
    let envelope =
        SignedEnvelope::new(&mallory, RECORD_DOMAIN.into(), RECORD_PAYLOAD_TYPE.to_vec(), payload)
            .unwrap();
    let bytes = envelope.into_protobuf_encoding();
    assert_eq!(
        IpRecord::open(&bytes, ip("100.64.0.2"), NOW, &f.registry),
        Err(RecordError::SignerMismatch {
            signer: mallory.public().to_peer_id(),
            claimed: f.peer()
        })
    );
    // And the honest API refuses to sign for someone else.
    assert!(matches!(record.sign(&mallory), Err(RecordError::WrongKey { .. })));
}

#[test]
fn other_payload_type_or_domain_is_refused() {
    let f = Fixture::new();
    let envelope =
        SignedEnvelope::new(&f.key, RECORD_DOMAIN.into(), b"/other/1".to_vec(), vec![]).unwrap();
    let bytes = envelope.into_protobuf_encoding();
    assert_eq!(IpRecord::from_envelope(&bytes), Err(RecordError::PayloadType));
    let payload = IpRecordProto {
        peer_id: f.peer().to_bytes(),
        addresses: vec![],
        seq: 1,
        expires_unix: NOW,
        certificate: Vec::new(),
    }
    .encode_to_vec();
    let envelope =
        SignedEnvelope::new(&f.key, "other-domain".into(), RECORD_PAYLOAD_TYPE.to_vec(), payload)
            .unwrap();
    assert_eq!(
        IpRecord::from_envelope(&envelope.into_protobuf_encoding()),
        Err(RecordError::BadSignature)
    );
    assert!(matches!(IpRecord::from_envelope(b"\xff\xff garbage"), Err(RecordError::Envelope(_))));
}

#[test]
fn expired_records_are_refused_with_skew() {
    let f = Fixture::new();
    let record = IpRecord { expires_unix: NOW, ..f.record() };
    assert!(f.open(&record, "100.64.0.2", NOW + MAX_CLOCK_SKEW_SECS).is_ok());
    assert_eq!(
        f.open(&record, "100.64.0.2", NOW + MAX_CLOCK_SKEW_SECS + 1),
        Err(RecordError::Expired { expires_unix: NOW, now_unix: NOW + MAX_CLOCK_SKEW_SECS + 1 })
    );
}

#[test]
fn records_too_far_ahead_are_refused() {
    let f = Fixture::new();
    let limit = NOW + MAX_LIFETIME_SECS + MAX_CLOCK_SKEW_SECS;
    assert!(f.open(&IpRecord { expires_unix: limit, ..f.record() }, "100.64.0.2", NOW).is_ok());
    assert_eq!(
        f.open(&IpRecord { expires_unix: limit + 1, ..f.record() }, "100.64.0.2", NOW),
        Err(RecordError::TooFarAhead { expires_unix: limit + 1, now_unix: NOW })
    );
}

#[test]
fn key_address_must_be_covered() {
    let f = Fixture::new();
    assert_eq!(
        f.open(&f.record(), "100.64.0.3", NOW),
        Err(RecordError::NotCovered(ip("100.64.0.3")))
    );
    let routed = IpRecord { addresses: vec![net("100.64.0.128/25")], ..f.record() };
    assert!(f.open(&routed, "100.64.0.200", NOW).is_ok());
}

#[test]
fn registry_must_allow_every_address() {
    let f = Fixture::new();
    let greedy =
        IpRecord { addresses: vec![net("100.64.0.2/32"), net("100.64.1.0/24")], ..f.record() };
    assert_eq!(
        f.open(&greedy, "100.64.0.2", NOW),
        Err(RecordError::NotAllowed { peer: f.peer(), net: net("100.64.1.0/24") })
    );
}

#[test]
fn addresses_must_be_canonical() {
    for text in
        ["100.64.0.02", "FD00::2", "fd00:0::2", "100.64.0.1/24", "100.64.0.2/32", "nonsense", ""]
    {
        assert_eq!(net_from_text(text), Err(RecordError::BadAddress(text.to_owned())), "{text}");
    }
    for text in ["100.64.0.2", "fd00::2", "10.1.0.0/24", "fd00:1::/64"] {
        assert_eq!(net_to_text(&net_from_text(text).unwrap()), text);
    }
}

#[test]
fn keys_are_canonical_text() {
    assert_eq!(record_key(ip("100.64.0.2")), b"/vpn-node/ip2/100.64.0.2");
    assert_eq!(record_key(ip("FD00:0:0::0002")), b"/vpn-node/ip2/fd00::2");
}

#[test]
fn lower_seq_loses() {
    let f = Fixture::new();
    let old = IpRecord { seq: 3, ..f.record() };
    let new = IpRecord { seq: 9, ..f.record() };
    assert_eq!(select_record([old.clone(), new.clone()]), Selection::Owner(new.clone()));
    assert_eq!(select_record([new.clone(), old]), Selection::Owner(new));
    assert_eq!(select_record([]), Selection::None);
}

#[test]
fn two_owners_conflict() {
    let a = Fixture::new();
    let b = Fixture::new();
    let mut owners = vec![a.peer(), b.peer()];
    owners.sort();
    assert_eq!(select_record([a.record(), b.record(), a.record()]), Selection::Conflict { owners });
}

#[test]
fn a_records_certificate_is_shown_to_the_registry_before_its_addresses_are_judged() {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    // A registry that lets the peer hold .5 only once it has seen its certificate.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut registry = MockRegistry::new();
    let flag = seen.clone();
    registry
        .expect_present()
        .withf(move |p, c| *p == peer && c == b"certificate bytes")
        .times(1)
        .returning(move |_, _| flag.store(true, std::sync::atomic::Ordering::SeqCst));
    let flag = seen.clone();
    registry.expect_may_hold().returning(move |_, net| {
        flag.load(std::sync::atomic::Ordering::SeqCst) && *net == "100.64.0.5/32".parse().unwrap()
    });
    let record = IpRecord::new(peer, vec![net("100.64.0.5/32")], 1, NOW + 60)
        .with_certificate(b"certificate bytes".to_vec());
    let bytes = record.sign(&key).unwrap();
    assert_eq!(IpRecord::open(&bytes, ip("100.64.0.5"), NOW, &registry).unwrap(), record);
    let bare = IpRecord::new(peer, vec![net("100.64.0.6/32")], 1, NOW + 60).sign(&key).unwrap();
    assert!(matches!(
        IpRecord::open(&bare, ip("100.64.0.6"), NOW, &registry),
        Err(RecordError::NotAllowed { .. })
    ));
    let huge = IpRecord::new(peer, vec![net("100.64.0.5/32")], 1, NOW + 60)
        .with_certificate(vec![0; crate::MAX_CERT_BYTES + 1]);
    assert!(IpRecord::from_envelope(&huge.sign(&key).unwrap()).is_err());
}
