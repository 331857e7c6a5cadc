//! The NAT scenario of `cargo xtask e2e`: two public nodes (bootstrap peers of each
//! other and of everyone, relays once a member confirms it can dial them back), two home
//! nodes each behind its own NAT router with endpoint-independent mapping (one router
//! answers unsolicited packets with a RST or an ICMP error, the other drops them), and
//! one behind a router that maps every flow to a random port (symmetric NAT). All run on
//! the defaults and find each other through the DHT. Home to home must end on a direct
//! connection made by a UDP hole punch, carrying packets as datagrams; symmetric to home
//! must stay on the relay, on streams; both carry ping and iperf3; each path is read from
//! `vpn-node peers --json` on both ends. Then, 20 times, p and the homes are stopped and
//! started at once: each time they must be proven members of each other within 5 s.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{self, Lab, until};

/// The public nodes, on the switch at 198.18.0.1 and .2: each confirms the other's
/// address by dialing it back (AutoNAT), and each relays once confirmed.
const PUBLIC: &str = "p";
const PUBLIC2: &str = "q";
/// Home nodes: name, router, router's number on the switch, home network, overlay number,
/// whether the router's NAT is symmetric, whether it answers unsolicited packets.
const HOMES: [(&str, &str, usize, usize, usize, bool, bool); 3] = [
    ("h1", "r1", 11, 1, 21, false, true),
    ("h2", "r2", 12, 2, 22, false, false),
    ("hs", "rs", 13, 3, 23, true, false),
];
/// Longest wait for anything in the scenario to happen.
const WAIT: Duration = Duration::from_secs(60);
/// How long two homes may take to end on a punched hole: a first punch can fail (a router
/// that answers a stray packet spoils the mapping) and is tried again after a pause.
const PUNCH_WAIT: Duration = Duration::from_secs(150);

/// Times p and the homes start all at once.
const STARTS: usize = 20;
/// Longest wait for p and the homes started at once to be members of each other.
const START_WAIT: Duration = Duration::from_secs(5);

/// How long the soak's relayed flow runs, and the least it must move.
const SOAK: Duration = Duration::from_secs(600);
const SOAK_LEAST_BYTES: f64 = 1024.0 * 1024.0 * 1024.0;

/// The scenario; with `soak`, then a relayed flow for ten minutes.
pub fn run(binary: &Path, soak: bool) -> Result<()> {
    let mut lab = Lab::bare(binary.to_owned())?;
    let result = scenario(&mut lab).and_then(|()| match soak {
        true => relayed_soak(&lab),
        false => all_at_once(&mut lab, STARTS),
    });
    if result.is_err() {
        lab.print_log_tails(&["p", "q", "h1", "h2", "hs"]);
    }
    result
}

/// Writes `name`'s configuration: every other node a member by its peer ID, the public
/// nodes its bootstrap peers (p for the home nodes), addresses found through the DHT.
fn write_config(lab: &Lab, name: &str) -> Result<()> {
    let node = lab.node(name)?;
    let public = lab.node(if name == PUBLIC { PUBLIC2 } else { PUBLIC })?;
    let u = &node.underlay;
    let mut text = format!(
        "[node]\nidentity_file = \"identity.key\"\naddress = \"{}/10\"\naddress6 = \"{}/64\"\n\
         [interface]\nname = \"vpn-{name}\"\n\
         [network]\nlisten = [\"/ip4/{u}/tcp/4001\", \"/ip4/{u}/udp/4001/quic-v1\"]\n",
        node.overlay, node.overlay6
    );
    {
        text.push_str(&format!(
            "bootstrap = [\"/ip4/{}/tcp/4001/p2p/{}\"]\n",
            public.underlay, public.peer_id
        ));
    }
    text.push_str(&format!(
        "[discovery]\nmdns = false\nnegative_cache_ttl = \"1s\"\n\
         [metrics]\nlisten = \"127.0.0.1:9464\"\n[control]\nsocket = \"{}\"\n",
        node.dir.join("control.sock").display()
    ));
    for other in lab.nodes.iter().filter(|n| n.name != name) {
        text.push_str(&format!(
            "[[peers]]\npeer_id = \"{}\"\naddresses = [\"{}\", \"{}\"]\nendpoints = []\n",
            other.peer_id, other.overlay, other.overlay6
        ));
    }
    std::fs::write(node.dir.join("vpn-node.toml"), text)?;
    Ok(())
}

/// One line about `from`'s path to `to`: kind, address, whether punched, round trip.
fn describe(lab: &Lab, from: &str, to: &str) -> Result<String> {
    let path =
        lab.peer_view(from, to)?.with_context(|| format!("{from} is not connected to {to}"))?;
    let field = |k: &str| path.get(k).map(ToString::to_string).unwrap_or_default();
    Ok(format!(
        "{from} -> {to}: {} ({}) via {} (hole punched {}, connection rtt {} ms)",
        field("data_path"),
        field("path"),
        field("address"),
        field("hole_punched"),
        field("connection_rtt_ms")
    ))
}

/// A reachability field of `name`'s status.
fn reachability(lab: &Lab, name: &str) -> Result<serde_json::Value> {
    lab.ask(name, "status")?.get("reachability").cloned().context("no reachability in status")
}

/// Received throughput of a 10 s iperf3 run from `client` to `server`, in Gbit/s.
fn iperf(lab: &Lab, client: &str, server: &str) -> Result<f64> {
    let target = lab.node(server)?.overlay.clone();
    let report = lab.iperf(client, server, &target, &[])?;
    let bps = lab::json_number(&report, "/end/sum_received/bits_per_second")
        .context("no throughput in iperf3's report")?;
    Ok(bps / 1e9)
}

/// One TCP flow from hs to h1 through the relay for [`SOAK`]: it must move more than
/// 1 GiB, stay on the relay, never stall for a whole second, and hs must never have had to
/// connect to h1 anew (a cut circuit would make it).
fn relayed_soak(lab: &Lab) -> Result<()> {
    let h1 = lab.node("h1")?.peer_id.clone();
    let connections = |lab: &Lab| {
        let log = lab.log("hs");
        log.lines().filter(|l| l.contains("connected through a relay") && l.contains(&h1)).count()
    };
    let before = connections(lab);
    let target = lab.node("h1")?.overlay.clone();
    println!("  soak: one TCP flow hs -> h1 through the relay for {} s", SOAK.as_secs());
    let report = lab.iperf_for("hs", "h1", &target, &[], SOAK)?;
    let bytes = lab::json_number(&report, "/end/sum_received/bytes")
        .context("no bytes in iperf3's report")?;
    let gbps = lab::json_number(&report, "/end/sum_received/bits_per_second").unwrap_or(0.0) / 1e9;
    let anew = connections(lab) - before;
    let path = lab.path_kind("hs", "h1")?;
    let seconds: Vec<f64> = serde_json::from_str::<serde_json::Value>(&report)?
        .get("intervals")
        .and_then(|i| i.as_array())
        .map(|all| {
            let bps = |i: &serde_json::Value| i.pointer("/sum/bits_per_second")?.as_f64();
            all.iter().filter_map(bps).collect()
        })
        .unwrap_or_default();
    let slowest = seconds.iter().copied().fold(f64::INFINITY, f64::min) / 1e9;
    println!(
        "    moved {:.2} GiB ({gbps:.2} Gbit/s; slowest of {} seconds {slowest:.2} Gbit/s); \
         new connections hs -> h1 meanwhile: {anew}; path now {path:?}",
        bytes / SOAK_LEAST_BYTES,
        seconds.len()
    );
    let stalled = seconds.is_empty() || slowest <= 0.0;
    if bytes <= SOAK_LEAST_BYTES || anew != 0 || stalled || path.as_deref() != Some("relayed") {
        bail!("the relayed flow did not run its ten minutes uncut over the relay");
    }
    println!("nat: the relayed flow ran {} s uncut", SOAK.as_secs());
    Ok(())
}

/// The peer IDs in `name`'s routing table (proven members only enter it).
fn routing_table(lab: &Lab, name: &str) -> Result<Vec<String>> {
    let status = lab.ask(name, "status")?;
    let table = status.get("routing_table").and_then(|t| t.as_array()).cloned();
    let table = table.context("no routing table in status")?;
    Ok(table.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
}

/// Stops every node, then starts p and the homes at once (in well under a second), `rounds`
/// times: each time every home and p must be proven members of each other (in each other's
/// routing tables) within [`START_WAIT`]; the time from the first start is reported.
fn all_at_once(lab: &mut Lab, rounds: usize) -> Result<()> {
    let homes: Vec<&str> = HOMES.iter().map(|(name, ..)| *name).collect();
    let ids = |lab: &Lab, names: &[&str]| -> Result<Vec<String>> {
        names.iter().map(|n| Ok(lab.node(n)?.peer_id.clone())).collect()
    };
    let (p_id, home_ids) = (lab.node(PUBLIC)?.peer_id.clone(), ids(lab, &homes)?);
    let mut took = Vec::new();
    for round in 1..=rounds {
        for name in [PUBLIC, PUBLIC2].iter().chain(&homes) {
            lab.stop(name)?;
        }
        let start = Instant::now();
        for name in [PUBLIC].iter().chain(&homes) {
            lab.start(name)?;
        }
        let started = start.elapsed();
        until(
            &format!("start {round}: p and the homes are members of each other"),
            START_WAIT,
            || {
                let at_p = routing_table(lab, PUBLIC).unwrap_or_default();
                for (home, id) in homes.iter().zip(&home_ids) {
                    let at_home = routing_table(lab, home).unwrap_or_default();
                    if !at_p.contains(id) || !at_home.contains(&p_id) {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        took.push(start.elapsed().as_secs_f64());
        if started > Duration::from_secs(1) {
            bail!("start {round}: starting the nodes took {started:?}, not at once");
        }
    }
    let worst = took.iter().copied().fold(0.0, f64::max);
    let mean = took.iter().sum::<f64>() / took.len().max(1) as f64;
    let each: Vec<String> = took.iter().map(|t| format!("{t:.2}")).collect();
    println!(
        "  p and the homes started at once, {rounds} times: members of each other after {mean:.2} s on average, {worst:.2} s at worst ({} s)",
        each.join(", ")
    );
    Ok(())
}

fn scenario(lab: &mut Lab) -> Result<()> {
    lab.add_node(PUBLIC, 1)?;
    lab.add_node(PUBLIC2, 2)?;
    for (name, router, at, home, n, symmetric, answers) in HOMES {
        lab.add_router(router, at, symmetric, answers)?;
        lab.add_home_node(name, router, home, n)?;
    }
    for node in ["p", "q", "h1", "h2", "hs"] {
        write_config(lab, node)?;
    }
    println!(
        "nat: public p, q (198.18.0.1, .2); h1, h2 behind NATs with endpoint-independent mapping; (r1 answers unsolicited packets, r2 drops them); hs behind a symmetric NAT"
    );
    for public in [PUBLIC, PUBLIC2] {
        lab.start(public)?;
    }
    for public in [PUBLIC, PUBLIC2] {
        lab.wait_up(public, Duration::from_secs(20))?;
    }
    for (name, ..) in HOMES {
        lab.start(name)?;
    }
    for (name, ..) in HOMES {
        lab.wait_up(name, Duration::from_secs(20))?;
    }
    let start = Instant::now();

    // Reachability: p and q confirmed dialable by each other and relaying; the home nodes
    // not dialable, each holding a slot on a relay.
    for public in [PUBLIC, PUBLIC2] {
        until(&format!("{public} is confirmed reachable and relays"), WAIT, || {
            let r = reachability(lab, public)?;
            let confirmed =
                r.get("public").and_then(|p| p.as_array()).is_some_and(|p| !p.is_empty());
            Ok(confirmed && r.get("relaying").and_then(serde_json::Value::as_bool) == Some(true))
        })?;
        println!(
            "  {public}: reachable at {} (confirmed by a member dialing back) after {:.1} s, relaying for members",
            reachability(lab, public)?.get("public").map(ToString::to_string).unwrap_or_default(),
            start.elapsed().as_secs_f64()
        );
    }
    for (name, ..) in HOMES {
        until(&format!("{name} holds a slot on a relay"), WAIT, || {
            let r = reachability(lab, name)?;
            Ok(r.get("relays").and_then(|p| p.as_array()).is_some_and(|p| !p.is_empty()))
        })?;
        let r = reachability(lab, name)?;
        let public = r.get("public").and_then(|p| p.as_array()).map_or(0, Vec::len);
        if public != 0 {
            bail!("{name} is behind a NAT, yet believes itself reachable: {r}");
        }
    }
    for (name, ..) in HOMES {
        let relays = reachability(lab, name)?.get("relays").map(ToString::to_string);
        println!(
            "  {name}: not dialable from outside (AutoNAT); slots on {}",
            relays.unwrap_or_default()
        );
    }

    // Home to home: through the relay first, then a punched hole.
    let h2 = lab.node("h2")?.overlay.clone();
    let asked = Instant::now();
    let rtt = lab.ping_until("h1", &h2, WAIT)?;
    let first = asked.elapsed();
    until("h1 and h2 are connected directly", PUNCH_WAIT, || {
        Ok(lab.path_kind("h1", "h2")?.as_deref() == Some("direct")
            && lab.path_kind("h2", "h1")?.as_deref() == Some("direct"))
    })?;
    let direct = asked.elapsed();
    lab.wait_data_path("h1", "h2", "datagram", WAIT)?;
    lab.wait_data_path("h2", "h1", "datagram", WAIT)?;
    let datagrams = asked.elapsed();
    println!(
        "  h1 -> h2: first reply after {:.2} s ({rtt}), direct connection after {:.2} s, datagrams after {:.2} s",
        first.as_secs_f64(),
        direct.as_secs_f64(),
        datagrams.as_secs_f64()
    );
    println!("    {}", describe(lab, "h1", "h2")?);
    println!("    {}", describe(lab, "h2", "h1")?);
    let punched = ["h1", "h2"].iter().try_fold(0, |sum, n| {
        lab.counter(n, "vpn_hole_punches_total{result=\"succeeded\"}").map(|c| sum + c)
    })?;
    if punched == 0 {
        bail!("h1 and h2 are connected directly, yet neither counted a hole punch");
    }
    let direct_gbps = iperf(lab, "h1", "h2")?;
    lab.ping_until("h1", &h2, Duration::from_secs(5))?;
    if lab.data_path("h1", "h2")?.as_deref() != Some("datagram") {
        bail!("h1 -> h2 left the datagram path: {}", describe(lab, "h1", "h2")?);
    }
    println!("    iperf3 h1 -> h2 as datagrams over the punched hole: {direct_gbps:.2} Gbit/s");

    // Symmetric to home: the punch cannot work; the relay carries the tunnel.
    let h1 = lab.node("h1")?.overlay.clone();
    let rtt = lab.ping_until("hs", &h1, WAIT)?;
    let failed = || {
        ["hs", "h1"].iter().try_fold(0, |sum, n| {
            lab.counter(n, "vpn_hole_punches_total{result=\"failed\"}").map(|c| sum + c)
        })
    };
    until("the hole punch between hs and h1 has failed", WAIT, || Ok(failed()? > 0))?;
    let failed_first = failed()?;
    let connections = |from: &str, to: &str| -> Result<u64> {
        let view = lab.peer_view(from, to)?;
        Ok(view.and_then(|v| v.get("connections").and_then(|c| c.as_u64())).unwrap_or(0))
    };
    let connections_first = connections("hs", "h1")?.max(connections("h1", "hs")?);
    for (from, to) in [("hs", "h1"), ("h1", "hs")] {
        let kind = lab.data_path(from, to)?;
        if kind.as_deref() != Some("stream relayed") {
            bail!("{from} -> {to} should be on relayed streams, is on {kind:?}");
        }
    }
    println!("  hs -> h1: {rtt}; the hole punch failed, as it must through a symmetric NAT");
    println!("    {}", describe(lab, "hs", "h1")?);
    println!("    {}", describe(lab, "h1", "hs")?);
    let relayed_gbps = iperf(lab, "hs", "h1")?;
    lab.ping_until("hs", &h1, Duration::from_secs(5))?;
    if lab.path_kind("hs", "h1")?.as_deref() != Some("relayed") {
        bail!("hs -> h1 left the relay: {}", describe(lab, "hs", "h1")?);
    }
    println!("    iperf3 hs -> h1 through the relay: {relayed_gbps:.2} Gbit/s");

    // A failed punch is tried again after a pause, through a new relayed connection that
    // goes again when that punch fails as well; the relay carries on throughout.
    until("the hole punch between hs and h1 is tried again", PUNCH_WAIT, || {
        Ok(failed()? > failed_first)
    })?;
    until("the connection made for the second punch is closed again", WAIT, || {
        Ok(connections("hs", "h1")?.max(connections("h1", "hs")?) <= connections_first)
    })?;
    lab.ping_until("hs", &h1, Duration::from_secs(5))?;
    println!(
        "  hs -> h1: the punch was tried again, failed again, and its relayed connection closed ({} connections)",
        connections("hs", "h1")?
    );
    println!(
        "  throughput relayed / direct: {:.2}",
        if direct_gbps > 0.0 { relayed_gbps / direct_gbps } else { 0.0 }
    );
    println!("nat: all checks passed");
    Ok(())
}
