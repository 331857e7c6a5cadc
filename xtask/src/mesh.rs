//! `cargo xtask mesh --nodes N`: N nodes on one bridge, each given one bootstrap address
//! and the network's CA (a certificate each, no peer listed anywhere), find every other
//! through the DHT. With `--allowed-peers` there is no CA: each node is given node 1's
//! address and peer ID and the list of every member's peer ID (`network.allowed_peers`).
//! Reports the time until every pair has exchanged a ping, each node's idle memory and CPU
//! over a minute, and what each asked of the DHT.
//!
//! Past a few dozen nodes the kernel's neighbour tables (one for all namespaces, 1 024
//! entries by default) overflow and sends fail with ENOBUFS: the run raises them and puts
//! them back when it ends.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, cpu_ticks, memory_mib};
use crate::membership::{sign, write_config};

/// Longest the whole mesh may take to reach every pair.
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);
/// How long idle use is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(60);

/// Node `i`'s name (1-based): short, since interface names are built from it.
fn name(i: usize) -> String {
    format!("{i}")
}

/// Most nodes: interface names are built from the node's name and must fit in 15 bytes.
const MOST_NODES: usize = 99;

/// The neighbour-table limits raised for the run, each with its value before.
struct NeighbourTables(Vec<(String, String)>);

impl NeighbourTables {
    /// Raises `gc_thresh1..3` for IPv4 and IPv6 to fit `nodes` nodes' neighbours many times.
    fn raise(nodes: usize) -> Result<Self> {
        let mut saved = Vec::new();
        for family in ["ipv4", "ipv6"] {
            for (n, per_node) in [(1, 32), (2, 64), (3, 128)] {
                let path = format!("/proc/sys/net/{family}/neigh/default/gc_thresh{n}");
                let before = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {path}"))?
                    .trim()
                    .to_owned();
                let want = (nodes * per_node).max(before.parse().unwrap_or(0));
                std::fs::write(&path, want.to_string())
                    .with_context(|| format!("writing {path}"))?;
                saved.push((path, before));
            }
        }
        Ok(Self(saved))
    }
}

impl Drop for NeighbourTables {
    fn drop(&mut self) {
        for (path, before) in &self.0 {
            if let Err(e) = std::fs::write(path, before) {
                eprintln!("mesh: could not put {path} back to {before}: {e}");
            }
        }
    }
}

pub fn run(binary: &Path, nodes: usize, allowed: bool) -> Result<()> {
    if !(2..=MOST_NODES).contains(&nodes) {
        bail!("--nodes must be between 2 and {MOST_NODES}, not {nodes}");
    }
    crate::tools::ensure_these(&[("fping", "fping")])?;
    let _tables = NeighbourTables::raise(nodes)?;
    let mut lab = Lab::bare(binary.to_owned())?;
    let result = scenario(&mut lab, nodes, allowed);
    if result.is_err() {
        let names: Vec<String> = (1..=nodes.min(4)).map(name).collect();
        lab.print_log_tails(&names.iter().map(String::as_str).collect::<Vec<_>>());
    }
    result
}

/// The pairs (source, target) among `names` that have not answered yet, pinged at once
/// from every source: one `fping` in each source's namespace pings all its targets (one
/// ping each, 1 ms apart, 2 s to answer) and says which answered. (A `ping` process per
/// pair, 9 120 at once for 96 nodes, starved the nodes of the 2-core machine.)
fn ping_round(lab: &Lab, missing: &BTreeSet<(usize, usize)>) -> Result<BTreeSet<(usize, usize)>> {
    let sources: BTreeSet<usize> = missing.iter().map(|(s, _)| *s).collect();
    let mut children = Vec::new();
    for source in sources {
        let targets: Vec<String> = missing
            .iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, t)| lab.node(&name(*t)).map(|n| n.overlay.clone()))
            .collect::<Result<_>>()?;
        let mut fping = vec!["fping", "-a", "-q", "-r", "0", "-t", "2000", "-i", "1"];
        fping.extend(targets.iter().map(String::as_str));
        let args = lab.bounded(&name(source), &fping, Duration::from_secs(20))?;
        let child = std::process::Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start pings")?;
        children.push((source, child));
    }
    let mut answered = BTreeSet::new();
    for (source, child) in children {
        let out = child.wait_with_output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let target = lab.nodes.iter().position(|n| n.overlay == line.trim());
            if let Some(target) = target {
                answered.insert((source, target + 1));
            }
        }
    }
    Ok(missing.difference(&answered).copied().collect())
}

/// Members by certificate: a CA, and a certificate for each node.
fn certificates(lab: &Lab, nodes: usize) -> Result<()> {
    let ca = lab.root().join("ca");
    let ca = ca.to_str().context("ca path")?.to_owned();
    let ca_pub = lab.vpn_node(&["ca", "init", "--dir", &ca])?.trim().to_owned();
    for i in 1..=nodes {
        let node = lab.node(&name(i))?;
        let (v4, v6) = (node.overlay.clone(), node.overlay6.clone());
        sign(lab, &ca, &name(i), &[&v4, &v6], "30d")?;
        write_config(lab, &name(i), "1", Some(&ca_pub), "")?;
    }
    Ok(())
}

/// Members by list: every node's configuration names every member's peer ID.
fn allowed_peers(lab: &Lab, nodes: usize) -> Result<()> {
    let ids: Vec<String> = (1..=nodes)
        .map(|i| lab.node(&name(i)).map(|n| format!("\"{}\"", n.peer_id)))
        .collect::<Result<_>>()?;
    let line = format!("[network]\nallowed_peers = [{}]\n", ids.join(", "));
    for i in 1..=nodes {
        write_config(lab, &name(i), "1", None, "")?;
        let path = lab.node(&name(i))?.dir.join("vpn-node.toml");
        let text = std::fs::read_to_string(&path)?;
        if !text.contains("[network]\n") {
            bail!("no [network] table in {}", path.display());
        }
        std::fs::write(&path, text.replacen("[network]\n", &line, 1))?;
    }
    Ok(())
}

/// The PID of the `vpn-node` process running in node `name`'s namespace (the lab starts
/// it through `ip netns exec` and `setpriv`, which exec into it).
fn node_pid(lab: &Lab, name: &str) -> Result<u32> {
    lab.pid(name).with_context(|| format!("node {name} is not running"))
}

fn scenario(lab: &mut Lab, nodes: usize, allowed: bool) -> Result<()> {
    for i in 1..=nodes {
        lab.add_node(&name(i), i)?;
    }
    if allowed {
        allowed_peers(lab, nodes)?;
        println!(
            "mesh: {nodes} nodes on one bridge; each knows node 1's address and peer ID and every member's peer ID, no CA"
        );
    } else {
        certificates(lab, nodes)?;
        println!(
            "mesh: {nodes} nodes on one bridge; each knows the CA and node 1's address, no peer ID"
        );
    }
    let start = Instant::now();
    for i in 1..=nodes {
        lab.start(&name(i))?;
    }
    for i in 1..=nodes {
        lab.wait_up(&name(i), Duration::from_secs(60))?;
    }
    let up = start.elapsed();
    let mut missing: BTreeSet<(usize, usize)> = (1..=nodes)
        .flat_map(|s| (1..=nodes).filter(move |t| *t != s).map(move |t| (s, t)))
        .collect();
    let pairs = missing.len();
    let mut rounds = 0;
    while !missing.is_empty() {
        if start.elapsed() > CONVERGE_LIMIT {
            let sample: Vec<String> =
                missing.iter().take(10).map(|(s, t)| format!("{s}->{t}")).collect();
            bail!(
                "{} of {pairs} pairs still unanswered after {CONVERGE_LIMIT:?}: {}",
                missing.len(),
                sample.join(" ")
            );
        }
        missing = ping_round(lab, &missing)?;
        rounds += 1;
    }
    let converged = start.elapsed();
    println!(
        "  every node up after {:.1} s; all {pairs} pairs answered a ping after {:.1} s ({rounds} rounds)",
        up.as_secs_f64(),
        converged.as_secs_f64()
    );

    // Idle: memory and CPU of each node over a minute with no traffic.
    let pids: Vec<u32> = (1..=nodes).map(|i| node_pid(lab, &name(i))).collect::<Result<_>>()?;
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(&[*p])).collect();
    std::thread::sleep(IDLE_WINDOW);
    let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(&[*p])).collect();
    // USER_HZ, the unit of the times in /proc/<pid>/stat, is 100 on Linux.
    let tick = 100.0;
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / tick / IDLE_WINDOW.as_secs_f64() * 100.0)
        .collect();
    let rss: Vec<f64> = pids
        .iter()
        .map(|p| memory_mib(&[*p], "VmRSS:").with_context(|| format!("no VmRSS for {p}")))
        .collect::<Result<_>>()?;
    let stats = |v: &[f64]| {
        let max = v.iter().copied().fold(0.0, f64::max);
        (v.iter().sum::<f64>() / v.len() as f64, max)
    };
    let (cpu_mean, cpu_max) = stats(&cpu);
    let (rss_mean, rss_max) = stats(&rss);
    println!(
        "  idle over {} s: CPU {cpu_mean:.2} % of a core per node (max {cpu_max:.2} %), RSS {rss_mean:.1} MiB (max {rss_max:.1} MiB)",
        IDLE_WINDOW.as_secs()
    );

    // What each node asked of the DHT.
    let mut lookups = Vec::new();
    for i in 1..=nodes {
        let status = lab.ask(&name(i), "status")?;
        let dht = status.get("dht").context("no dht in status")?;
        let n = |k: &str| dht.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        lookups.push((n("record_lookups"), n("peer_lookups"), n("records_published")));
    }
    let mean = |f: fn(&(u64, u64, u64)) -> u64| {
        lookups.iter().map(f).sum::<u64>() as f64 / lookups.len() as f64
    };
    let max = |f: fn(&(u64, u64, u64)) -> u64| lookups.iter().map(f).max().unwrap_or(0);
    println!(
        "  DHT per node since start: record lookups {:.1} (max {}), peer lookups {:.1} (max {}), records published {:.1}",
        mean(|l| l.0),
        max(|l| l.0),
        mean(|l| l.1),
        max(|l| l.1),
        mean(|l| l.2)
    );
    println!("mesh: every pair reached");
    Ok(())
}
