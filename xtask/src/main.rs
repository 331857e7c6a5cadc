//! `cargo xtask`: the project's tasks.
//!
//! - `cargo xtask test`: every test: the workspace's unit, property, integration and doc
//!   tests, then the end-to-end test (root; installs iproute2, iputils-ping, iperf3 and
//!   nftables from Debian's packages when missing).
//! - `cargo xtask e2e`: only the end-to-end test.
//! - `cargo xtask faults [--soak] [WORD...]`: black holes, cuts, crashes, restarts, roaming, a
//!   deleted TUN, a start before the network, bad listen addresses (and with `--soak` ten
//!   minutes of 5% loss): each a check that prints how long the path took to recover.
//! - `cargo xtask fuzz [--seconds N] [TARGET...]`: every fuzz target of `fuzz/` for N
//!   seconds (20 by default) with cargo-fuzz on the nightly toolchain (installs cargo-fuzz
//!   when missing).
//! - `cargo xtask ci`: formatting, lints, docs, then `test` — what `.ci/run` runs.
//! - `cargo xtask demo`: three nodes in network namespaces on this machine, until Ctrl-C.
//! - `cargo xtask bench`: vpn-node (release build, over TCP and over QUIC) beside raw veth,
//!   wireguard-go, boringtun and nebula in network namespaces, without and with underlay
//!   loss (root; installs what it needs); prints the tables and writes
//!   `target/bench/bench.json`.

mod bench;
mod e2e;
mod faults;
mod forge;
mod fuzz;
mod lab;
mod membership;
mod mesh;
mod nat;
mod tools;
mod unit_file;

use std::env;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = args.first().cloned().unwrap_or_default();
    let result = match task.as_str() {
        "test" => test(),
        "e2e" => e2e(),
        "nat" => nat(args.iter().any(|a| a == "--soak")),
        "mesh" => {
            let rest = args.get(1..).unwrap_or_default();
            let nodes = rest
                .iter()
                .position(|a| a == "--nodes")
                .and_then(|i| rest.get(i + 1))
                .map_or(Ok(24), |n| n.parse::<usize>());
            let allowed = rest.iter().any(|a| a == "--allowed-peers");
            match nodes {
                Ok(nodes) => mesh(nodes, allowed),
                Err(e) => Err(anyhow::anyhow!("--nodes: {e}")),
            }
        }
        "faults" => {
            let rest = args.get(1..).unwrap_or_default();
            let only: Vec<String> = rest.iter().filter(|a| !a.starts_with("--")).cloned().collect();
            faults(rest.iter().any(|a| a == "--soak"), &only)
        }
        "ci" => ci(),
        "demo" => demo(),
        "bench" => bench(),
        "forge" => forge::run(args.get(1..).unwrap_or_default()),
        "fuzz" => fuzz::run(&root(), args.get(1..).unwrap_or_default()),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|e2e|nat [--soak]|mesh [--nodes N] [--allowed-peers]|faults [--soak]|fuzz [--seconds N]|ci|demo|bench>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR").trim_end_matches("/xtask"))
}

/// Runs `cargo` with `args` from the workspace root, failing if it fails.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test() -> Result<()> {
    cargo(&["test", "--workspace", "--all-targets", "--locked"], &[])?;
    cargo(&["test", "--workspace", "--doc", "--locked"], &[])?;
    e2e()?;
    faults(false, &[])?;
    fuzz::run(&root(), &[])
}

/// The directory debug builds go to.
fn debug_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("debug")
}

/// Builds every test target of the workspace, the node's binary among them, as `cargo test`
/// does: after the tests ran this builds nothing (a plain `cargo build -p vpn-node` would
/// build the dependencies again, with other features).
fn build_test_targets() -> Result<PathBuf> {
    cargo(&["test", "--workspace", "--all-targets", "--locked", "--no-run"], &[])?;
    Ok(debug_dir())
}

/// Builds the node and returns its path.
fn node_binary() -> Result<PathBuf> {
    Ok(build_test_targets()?.join("vpn-node"))
}

fn needs_root(what: &str) -> Result<()> {
    if !tools::is_root() {
        bail!("{what} needs root: it makes network namespaces and TUN devices");
    }
    tools::ensure()
}

fn e2e() -> Result<()> {
    needs_root("the end-to-end test")?;
    unit_file::check(&root())?;
    let binary = node_binary()?;
    let me = env::current_exe().context("the xtask binary's path")?;
    e2e::run(&binary, &me)?;
    membership::run(&binary, &strangers_binary()?)?;
    nat::run(&binary, false)
}

/// A mesh of `nodes` nodes finding each other through the DHT (members by certificate, or
/// with `allowed` by a list of every peer ID).
fn mesh(nodes: usize, allowed: bool) -> Result<()> {
    needs_root("the mesh")?;
    mesh::run(&node_binary()?, nodes, allowed)
}

/// The NAT scenario alone (also the last part of `e2e`).
fn nat(soak: bool) -> Result<()> {
    needs_root("the NAT scenario")?;
    nat::run(&node_binary()?, soak)
}

/// Builds the strangers tool (an example of vpn-p2p) and returns its path.
fn strangers_binary() -> Result<PathBuf> {
    // The tests build examples as test harnesses; this builds them as programs, with the
    // dependencies the tests built (the same features).
    cargo(&["build", "--workspace", "--examples", "--locked"], &[])?;
    Ok(debug_dir().join("examples").join("strangers"))
}

fn faults(soak: bool, only: &[String]) -> Result<()> {
    needs_root("the fault checks")?;
    let binary = node_binary()?;
    faults::run(&binary, soak, only)
}

/// The benchmark; `BENCH_BINARY` names a `vpn-node` to measure instead of a fresh release
/// build (for trying the harness itself).
fn bench() -> Result<()> {
    needs_root("the benchmark")?;
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let binary = match env::var_os("BENCH_BINARY") {
        Some(binary) => PathBuf::from(binary),
        None => {
            cargo(&["build", "--release", "--locked", "-p", "vpn-node"], &[])?;
            target.join("release").join("vpn-node")
        }
    };
    bench::run(&binary, &target.join("bench-tools"), &target.join("bench").join("bench.json"))
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"], &[])?;
    cargo(&["doc", "--workspace", "--no-deps", "--locked"], &[("RUSTDOCFLAGS", "-D warnings")])?;
    test()
}

/// The demo; `DEMO_BINARY` names a `vpn-node` to run instead of a fresh debug build (a
/// release build, say).
fn demo() -> Result<()> {
    needs_root("the demo")?;
    let binary = match env::var_os("DEMO_BINARY") {
        Some(binary) => PathBuf::from(binary),
        None => node_binary()?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut lab = lab::Lab::new(binary)?;
    lab.write_configs()?;
    for node in ["a", "b", "c"] {
        lab.start(node)?;
    }
    for node in ["a", "b", "c"] {
        lab.wait_up(node, Duration::from_secs(20))?;
    }
    println!("three vpn-node peers, each in its own network namespace:");
    for node in &lab.nodes {
        println!(
            "  {}  netns {:<14} underlay {:<11} overlay {} / {}  {}",
            node.name, node.netns, node.underlay, node.overlay, node.overlay6, node.peer_id
        );
    }
    for (from, to) in [("a", "b"), ("a", "c"), ("b", "c")] {
        let target = lab.node(to)?.overlay.clone();
        let rtt = lab.ping_until(from, &target, Duration::from_secs(30))?;
        println!("  ping {from} -> {to} ({target}): {rtt}");
    }
    println!("try: sudo ip netns exec {} ping {}", lab.node("a")?.netns, lab.node("c")?.overlay);
    println!("press Ctrl-C to stop");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping");
    Ok(())
}
