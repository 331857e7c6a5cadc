//! A real TUN device, in a network namespace of the test's own: the kernel answers a ping
//! written into it, and routes and the interface go away with the device. Needs root.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::process::Command;

use bytes::Bytes;
use vpn_api::{TunDevice, TunPacket};
use vpn_testutil::PacketBuilder;
use vpn_tun::{Tun, TunConfig};
use vpn_utils::extract_ip_and_ports;

/// Runs `test` on a thread moved into a new, empty network namespace.
fn in_own_netns(test: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("this test needs root (CAP_SYS_ADMIN) to make a network namespace");
        test();
    })
    .join()
    .unwrap();
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("iproute2 (`ip`) is needed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_kernel_answers_a_ping_through_the_device() {
    in_own_netns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let config = TunConfig {
                name: "vpntest0".into(),
                mtu: 1400,
                address: "100.64.250.1/24".parse().unwrap(),
                address6: None,
                routes: vec!["100.65.0.0/24".parse().unwrap()],
                offload: false,
            };
            let tun = Tun::create(&config).await.unwrap();
            assert_eq!((tun.name(), tun.mtu()), ("vpntest0", 1400));
            assert!(ip(&["route", "show", "dev", "vpntest0"]).contains("100.65.0.0/24"));
            assert!(ip(&["addr", "show", "dev", "vpntest0"]).contains("100.64.250.1/24"));

            let echo = PacketBuilder::icmp_echo(
                "100.64.250.2".parse().unwrap(),
                "100.64.250.1".parse().unwrap(),
                7,
                1,
            )
            .payload(b"are you there")
            .build();
            assert_eq!(tun.send_batch(&[TunPacket::new(Bytes::from(echo))]).await.unwrap(), 1);
            // The reply comes back out of the device (other packets, e.g. IPv6 router
            // solicitations, may come first).
            let reply = loop {
                let mut batch = Vec::new();
                tun.recv_batch(&mut batch, 8).await.unwrap();
                if let Some(p) = batch.into_iter().find(|p| p.data.first() == Some(&0x45)) {
                    break p;
                }
            };
            let info = extract_ip_and_ports(&reply.data).unwrap();
            assert_eq!(info.src_ip.to_string(), "100.64.250.1");
            assert_eq!(info.dst_ip.to_string(), "100.64.250.2");
            assert_eq!((info.protocol, reply.data[20]), (1, 0), "an ICMP echo reply");
            assert!(reply.data.ends_with(b"are you there"));
            drop(tun);
        });
        assert!(
            !ip(&["link", "show"]).contains("vpntest0"),
            "the interface is gone with the device"
        );
    });
}

#[test]
fn offload_is_on_when_asked_for() {
    in_own_netns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let config = TunConfig {
                name: "vpntest1".into(),
                mtu: 1400,
                address: "100.64.251.1/24".parse().unwrap(),
                address6: None,
                routes: Vec::new(),
                offload: true,
            };
            let tun = Tun::create(&config).await.unwrap();
            assert!(tun.offload(), "this kernel has TUN offload (TSO) since 2.6");
            // A plain packet still makes the round trip through the kernel with offload on.
            let echo = PacketBuilder::icmp_echo(
                "100.64.251.2".parse().unwrap(),
                "100.64.251.1".parse().unwrap(),
                7,
                1,
            )
            .payload(b"offload on")
            .build();
            tun.send_batch(&[TunPacket::new(Bytes::from(echo))]).await.unwrap();
            let reply = loop {
                let mut batch = Vec::new();
                tun.recv_batch(&mut batch, 8).await.unwrap();
                if let Some(p) = batch.into_iter().find(|p| p.data.first() == Some(&0x45)) {
                    break p;
                }
            };
            assert!(reply.gso.is_none());
            assert!(reply.data.ends_with(b"offload on"));
            assert_eq!(
                extract_ip_and_ports(&reply.data).unwrap().dst_ip.to_string(),
                "100.64.251.2"
            );
        });
    });
}
