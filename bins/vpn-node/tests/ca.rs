//! The CA's tools, run as the program: a CA, a node made ready by `init --ca` whose
//! configuration loads and whose certificate verifies, signing, and a revocation list.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn vpn_node(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpn-node"))
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = vpn_node(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vpn-node {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_ca_makes_a_node_ready_signs_and_revokes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let public = ok(dir, &["ca", "init", "--dir", "ca"]);
    assert_eq!(std::fs::read_to_string(dir.join("ca/ca.pub")).unwrap(), public);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("ca/ca.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the CA key is private");

    let init = ["init", "--dir", "n1", "--address", "100.64.0.5/10", "--address6", "fd00::5/64"];
    let peer = ok(dir, &[&init[..], &["--ca", "ca", "--name", "laptop"]].concat());
    let config = vpn_config::load_file(&dir.join("n1/vpn-node.toml")).unwrap();
    assert_eq!(config.membership.ca, vec![public.trim().to_owned()]);
    assert_eq!(config.membership.certificate, Some(dir.join("n1/node.crt")));
    let shown = ok(dir, &["ca", "inspect", "n1/node.crt", "--ca", "ca"]);
    assert!(shown.contains(peer.trim()) && shown.contains("\"laptop\""), "{shown}");
    assert!(shown.contains("100.64.0.5/32,fd00::5/128"), "{shown}");
    assert!(shown.contains("valid now under this CA"), "{shown}");

    // Another CA's certificate does not verify under this one.
    ok(dir, &["ca", "init", "--dir", "other"]);
    let sign = ["ca", "sign", "--ca", "other", "--peer-id", peer.trim(), "--address", "100.64.0.6"];
    ok(dir, &[&sign[..], &["-o", "foreign.crt"]].concat());
    let foreign = vpn_node(dir, &["ca", "inspect", "foreign.crt", "--ca", "ca"]);
    assert!(!foreign.status.success());
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("not valid under this CA"));
    // A file is never overwritten.
    assert!(!vpn_node(dir, &[&sign[..], &["-o", "foreign.crt"]].concat()).status.success());

    ok(dir, &["ca", "revoke", "--ca", "ca", "--peer-id", peer.trim()]);
    let other = libp2p_identity::PeerId::random().to_string();
    ok(dir, &["ca", "revoke", "--ca", "ca", "--peer-id", &other]);
    let list = ok(dir, &["ca", "inspect", "ca/revoked.crl", "--ca", "ca"]);
    assert!(
        list.contains("with 2 peers") && list.contains(peer.trim()) && list.contains(&other),
        "{list}"
    );
    assert!(list.contains("signed by this CA"), "{list}");
}
