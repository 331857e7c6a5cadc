//! Membership by certificate on real swarms over 127.0.0.1 with in-memory TUN devices:
//! members that list no peer ID, only the CA and one bootstrap address, reach each other
//! through the DHT; a stranger, an expired member and a revoked one are refused (a revoked
//! one on the datagram path too); a member holds only what its certificate says.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Member, certify, crosses_as_datagram, hex, ping, reaches, start, until};
use vpn_api::VpnService;
use vpn_discovery::unix_now;
use vpn_p2p::{Keypair, Multiaddr};
use vpn_service::VpnNode;
use vpn_testutil::MemoryTun;
use vpn_types::{DropReason, PeerRefusal};
use vpn_wire::{RevocationList, Revoked};

/// A member's configuration: the CA, its certificate, one bootstrap address and nothing else.
fn config(
    address: &str,
    ca: &Keypair,
    cert: &str,
    bootstrap: Option<&Multiaddr>,
    extra: &str,
) -> vpn_config::VpnConfig {
    config_on("\"/ip4/127.0.0.1/tcp/0\"", address, ca, cert, bootstrap, extra)
}

/// [`config`], listening on `listen` (a TOML list's items).
fn config_on(
    listen: &str,
    address: &str,
    ca: &Keypair,
    cert: &str,
    bootstrap: Option<&Multiaddr>,
    extra: &str,
) -> vpn_config::VpnConfig {
    let mut text = format!("[node]\naddress = \"{address}/10\"\n[network]\nlisten = [{listen}]\n");
    if let Some(addr) = bootstrap {
        text.push_str(&format!("bootstrap = [\"{addr}\"]\n"));
    }
    text.push_str("[discovery]\nmdns = false\nnegative_cache_ttl = \"100ms\"\n");
    text.push_str(&format!(
        "[membership]\nca = [\"{}\"]\ncertificate = \"{cert}\"\ntimeout = \"3s\"\n\
         revocation_sync = \"500ms\"\n{extra}",
        hex(&ca.public().encode_protobuf())
    ));
    vpn_config::load_str(&text, []).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_by_certificate_find_each_other_and_outsiders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Keypair::generate_ed25519();
    let now = unix_now();
    let keys: Vec<Keypair> = (0..6).map(|_| Keypair::generate_ed25519()).collect();
    let [ka, kb, kc, kx, kr, kt] = [&keys[0], &keys[1], &keys[2], &keys[3], &keys[4], &keys[5]];
    let cert = |key, address| certify(dir.path(), &ca, key, &[address], now - 10, 3600);

    let a_cert = cert(ka, "100.64.0.1");
    let mut a = start(ka, config("100.64.0.1", &ca, &a_cert, None, "")).await;
    // The bootstrap address names no peer ID: A proves itself by its certificate.
    let boot: Multiaddr = a.node.listen_addrs().await.remove(0);
    let b_cert = cert(kb, "100.64.0.2");
    let mut b = start(kb, config("100.64.0.2", &ca, &b_cert, Some(&boot), "")).await;
    let mut c =
        start(kc, config("100.64.0.3", &ca, &cert(kc, "100.64.0.3"), Some(&boot), "")).await;
    reaches(&b, &mut c, ping("100.64.0.2", "100.64.0.3", 1)).await;
    reaches(&c, &mut b, ping("100.64.0.3", "100.64.0.2", 2)).await;
    reaches(&a, &mut b, ping("100.64.0.1", "100.64.0.2", 3)).await;
    reaches(&c, &mut a, ping("100.64.0.3", "100.64.0.1", 4)).await;

    // A member whose certificate says .5 runs as .6: nothing it sends as .6 gets in.
    let wrong = cert(kx, "100.64.0.5");
    let x = start(kx, config("100.64.0.6", &ca, &wrong, Some(&boot), "")).await;
    let spoofed = |m: &Member| m.node.metrics().dropped(DropReason::Spoofed);
    let before = spoofed(&b);
    for seq in 0..20 {
        x.os.inject(ping("100.64.0.6", "100.64.0.2", 100 + seq)).await;
        if spoofed(&b) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(spoofed(&b) > before, "B took .6 from a member certified for .5");
    assert!(b.os.try_written().is_none(), "nothing of .6 reached B");
    // Nor does .6 lead to it: its record claiming .6 is refused, so B finds no owner.
    let mut x = x;
    let no_peer = |m: &Member| m.node.metrics().dropped(DropReason::NoPeer);
    let before = no_peer(&b);
    b.os.inject(ping("100.64.0.2", "100.64.0.6", 200)).await;
    until("B found no owner of .6", || no_peer(&b) > before).await;
    assert!(x.os.try_written().is_none(), "B's packet to .6 reached the member certified for .5");

    // A stranger (a valid identity, no certificate), an expired member and a revoked one
    // are refused and closed, and never get a packet in.
    let refused = |m: &Member| m.node.metrics().refused(PeerRefusal::NotMember);
    let stranger_key = Keypair::generate_ed25519();
    let stranger_text = format!(
        "[node]\naddress = \"100.64.0.9/10\"\n[network]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n\
         bootstrap = [\"{}\"]\n[discovery]\nmdns = false\n",
        boot.clone().with(libp2p::multiaddr::Protocol::P2p(a.node.local_peer_id()))
    );
    let stranger = start(&stranger_key, vpn_config::load_str(&stranger_text, []).unwrap()).await;
    until("A refused the stranger", || refused(&a) >= 1).await;
    let table = a.node.routing_table().await;
    assert!(table.contains(&kb.public().to_peer_id()), "members are in A's routing table");
    assert!(!table.contains(&stranger_key.public().to_peer_id()), "the stranger is not");

    // A node whose certificate ran out does not start, and says why.
    let expired = certify(dir.path(), &ca, kt, &["100.64.0.7"], now - 7200, 3600);
    let (tun, _os) = MemoryTun::new("mem", 1400, 1024);
    let t = VpnNode::builder(config("100.64.0.7", &ca, &expired, Some(&boot), ""), kt.clone())
        .tun(Arc::new(tun))
        .build();
    let error = vpn_service::error_chain(&t.start().await.unwrap_err());
    assert!(error.contains("membership.certificate") && error.contains("expired"), "{error}");
    let revoked_cert = cert(kr, "100.64.0.8");
    let list = RevocationList {
        issued_unix: now,
        revoked: vec![Revoked { peer_id: kr.public().to_peer_id(), before_unix: now + 1 }],
    };
    let list_path = dir.path().join("revoked.crl");
    std::fs::write(&list_path, list.sign(&ca).unwrap()).unwrap();
    let r = start(kr, config("100.64.0.8", &ca, &revoked_cert, Some(&boot), "")).await;
    reaches(&r, &mut a, ping("100.64.0.8", "100.64.0.1", 5)).await;
    // B takes the revocation list at its next reload and passes it on through the DHT: A,
    // which was given nothing, cuts R off and refuses it from then on.
    let revocations = format!("revocations = \"{}\"\n", list_path.display());
    let with_list = config("100.64.0.2", &ca, &b_cert, Some(&boot), &revocations);
    let applied = b.node.reload(with_list).await.unwrap();
    assert!(applied.iter().any(|s| s.starts_with("membership.revocations")), "{applied:?}");
    let r_peer = kr.public().to_peer_id();
    // Once A has cut R off, R's next packets dial again and are refused.
    let before = refused(&a);
    let refused_again = async {
        for seq in 10.. {
            r.os.inject(ping("100.64.0.8", "100.64.0.1", seq)).await;
            if refused(&a) > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), refused_again)
        .await
        .expect("A refuses R after B passed the revocation on");
    while a.os.try_written().is_some() {}
    // A refused connection closes a grace period after the answer; R may have dialed
    // again just before the refusal was counted.
    let closed = async {
        while a.node.connected_peers().await.contains(&r_peer) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed).await.expect("A closed R's connections");
    assert!(!a.node.routing_table().await.contains(&r_peer), "R is still in the routing table");
    let got = tokio::time::timeout(Duration::from_secs(2), a.os.next_written()).await;
    assert!(got.is_err(), "a revoked member's packet reached A: {got:?}");

    // The members go on.
    reaches(&b, &mut c, ping("100.64.0.2", "100.64.0.3", 6)).await;
    for member in [a, b, c, x, stranger, r] {
        member.node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_is_cut_off_on_the_datagram_path_too() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Keypair::generate_ed25519();
    let now = unix_now();
    let (ka, kr) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let cert = |key, address| certify(dir.path(), &ca, key, &[address], now - 10, 3600);
    let listen = "\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/udp/0/quic-v1\"";
    let a_cert = cert(&ka, "100.64.0.1");
    let mut a = start(&ka, config_on(listen, "100.64.0.1", &ca, &a_cert, None, "")).await;
    let addrs = a.node.listen_addrs().await;
    let boot = addrs.into_iter().find(|a| a.to_string().contains("/tcp/")).unwrap();
    let r_cert = cert(&kr, "100.64.0.8");
    let r = start(&kr, config_on(listen, "100.64.0.8", &ca, &r_cert, Some(&boot), "")).await;
    crosses_as_datagram(&r, &mut a, "100.64.0.8", "100.64.0.1").await;

    // A reload gives A a revocation list naming R: from then on nothing of R's gets in, its
    // datagram link carries nothing, and its connections (the QUIC one too) are closed.
    let r_peer = kr.public().to_peer_id();
    let list = RevocationList {
        issued_unix: now,
        revoked: vec![Revoked { peer_id: r_peer, before_unix: now + 1 }],
    };
    let list_path = dir.path().join("revoked.crl");
    std::fs::write(&list_path, list.sign(&ca).unwrap()).unwrap();
    let revocations = format!("revocations = \"{}\"\n", list_path.display());
    let with_list = config_on(listen, "100.64.0.1", &ca, &a_cert, None, &revocations);
    let applied = a.node.reload(with_list).await.unwrap();
    assert!(applied.iter().any(|s| s.starts_with("membership.revocations")), "{applied:?}");
    let received = a.node.metrics().packets_received;
    while a.os.try_written().is_some() {}
    let cut = async {
        for seq in 100.. {
            r.os.inject(ping("100.64.0.8", "100.64.0.1", seq)).await;
            let link = a.node.datagram_link(&r_peer).await;
            if link.is_none() && !a.node.connected_peers().await.contains(&r_peer) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), cut).await.expect("A cut R off");
    r.os.inject(ping("100.64.0.8", "100.64.0.1", 1)).await;
    let got = tokio::time::timeout(Duration::from_secs(2), a.os.next_written()).await;
    assert!(got.is_err(), "a revoked member's packet reached A: {got:?}");
    assert_eq!(a.node.metrics().packets_received, received, "nothing of R's got in");
    for member in [a, r] {
        member.node.stop().await.unwrap();
    }
}
