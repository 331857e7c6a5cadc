//! `cargo xtask e2e`: three vpn-node processes in three network namespaces with real TUN
//! devices. See `run` for what it proves.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{self, Lab, json_number};

const PAIRS: [(&str, &str); 6] =
    [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")];

/// Runs the whole end-to-end test with the `vpn-node` binary at `binary`.
pub fn run(binary: &Path, forger: &Path) -> Result<()> {
    let mut lab = Lab::new(binary.to_owned())?;
    let result = scenario(&mut lab, forger);
    if result.is_err() {
        for node in ["a", "b", "c"] {
            let log = lab.log(node);
            let metrics = lab.metrics(node);
            let counters: Vec<&str> =
                metrics.lines().filter(|l| l.starts_with("vpn_") && !l.ends_with(" 0")).collect();
            eprintln!("--- non-zero counters of node {node} ---\n{}", counters.join("\n"));
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of node {node}'s log ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    result
}

fn scenario(lab: &mut Lab, forger: &Path) -> Result<()> {
    lab.write_configs()?;
    for node in ["a", "b", "c"] {
        lab.start(node)?;
    }
    for node in ["a", "b", "c"] {
        lab.wait_up(node, Duration::from_secs(20))?;
    }
    println!("nodes up in {}", lab.root().display());
    for node in ["a", "b", "c"] {
        // Stdout and stderr go to a file: the node must say it is ready, once, in plain text.
        let start = Instant::now();
        let is_ready = |log: &str| log.lines().any(|l| l.starts_with("ready: "));
        while !is_ready(&lab.log(node)) && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let (log, peer_id) = (lab.log(node), lab.node(node)?.peer_id.clone());
        let ready: Vec<&str> = log.lines().filter(|l| l.starts_with("ready: ")).collect();
        match ready.as_slice() {
            [line] if line.contains(&peer_id) && line.contains(" tun ") => {}
            _ => bail!("{node} did not print one readiness line naming {peer_id}: {ready:?}"),
        }
        if log.contains('\u{1b}') {
            bail!("{node}'s log, written to a file, carries terminal colour codes");
        }
    }
    println!("each node printed one readiness line; logs written to a file are plain text");
    for node in &lab.nodes {
        println!(
            "  {}  {:<15} {:<10} {:<8} {}",
            node.name, node.netns, node.underlay, node.overlay, node.peer_id
        );
    }

    println!("ping, every pair, both ways (a knows c only as an allowed peer ID):");
    for (from, to) in PAIRS {
        let target = lab.node(to)?;
        let (v4, v6) = (target.overlay.clone(), target.overlay6.clone());
        let rtt4 = lab.ping_until(from, &v4, Duration::from_secs(30))?;
        let rtt6 = lab.ping_until(from, &v6, Duration::from_secs(30))?;
        println!("  {from} -> {to}: IPv4 {rtt4}, IPv6 {rtt6}");
    }

    let config = lab.node("a")?.dir.join("vpn-node.toml");
    let config = config.to_str().context("config path")?;
    let status = lab::run(
        lab.binary().to_str().context("binary")?,
        &["status", "--config", config, "--json"],
    )?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    if !status.contains(&lab.node("a")?.peer_id) {
        bail!("`vpn-node status` did not name a: {status}");
    }
    let peers = lab::run(lab.binary().to_str().context("binary")?, &["peers", "--config", config])?;
    let peers = String::from_utf8_lossy(&peers.stdout).into_owned();
    if !peers.contains(&lab.node("b")?.peer_id) || !peers.contains(&lab.node("c")?.peer_id) {
        bail!("`vpn-node peers` on a does not list b and c:\n{peers}");
    }
    println!(
        "vpn-node status and peers answer on a's control socket ({} peers listed)",
        peers.matches("peer_id").count()
    );
    vpn_node_ping(lab, config)?;

    let target = lab.node("b")?.overlay.clone();
    let tcp = lab.iperf("a", "b", &target, &[])?;
    let tcp_bps = json_number(&tcp, "/end/sum_received/bits_per_second")
        .context("TCP rate in the iperf3 report")?;
    println!("iperf3 TCP a -> b, 10 s: {:.2} Gbit/s", tcp_bps / 1e9);
    // c's TUN has no offload: a's super-packets are cut into packets on arrival, and every
    // packet must reach c's kernel whole, with good checksums.
    if lab.log("a").contains("plain TUN") || lab.log("a").contains("TUN offload is off") {
        bail!("a runs without TUN offload, so cutting super-packets is not exercised");
    }
    let malformed = "vpn_packets_dropped_total{reason=\"malformed\"}";
    let (malformed_before, csum_before) =
        (lab.counter("c", malformed)?, tcp_csum_errors(lab, "c")?);
    let plain_target = lab.node("c")?.overlay.clone();
    let plain = lab.iperf("a", "c", &plain_target, &[])?;
    let plain_bps = json_number(&plain, "/end/sum_received/bits_per_second")
        .context("TCP rate in the iperf3 report")?;
    if json_number(&plain, "/end/sum_received/bytes").unwrap_or(0.0) <= 0.0 {
        bail!("no bytes reached c over TCP");
    }
    let malformed_after = lab.counter("c", malformed)?;
    let csum_after = tcp_csum_errors(lab, "c")?;
    if malformed_after != malformed_before || csum_after != csum_before {
        bail!(
            "packets cut at c were damaged: malformed drops {malformed_before} -> \
             {malformed_after}, TCP checksum errors {csum_before} -> {csum_after}"
        );
    }
    println!("iperf3 TCP a -> c (c without TUN offload), 10 s: {:.2} Gbit/s", plain_bps / 1e9);
    let udp = lab.iperf("a", "b", &target, &["-u", "-b", "200M"])?;
    let udp_bps =
        json_number(&udp, "/end/sum/bits_per_second").context("UDP rate in the iperf3 report")?;
    let lost = json_number(&udp, "/end/sum/lost_percent").unwrap_or(f64::NAN);
    println!(
        "iperf3 UDP a -> b, 10 s at 200 Mbit/s: {:.0} Mbit/s received, {lost:.2}% lost",
        udp_bps / 1e6
    );

    let spoofed = "vpn_packets_dropped_total{reason=\"spoofed\"}";
    let before = lab.counter("b", spoofed)?;
    let forged = lab.exec(
        "a",
        &[forger.to_str().context("forger path")?, "forge", "100.64.0.77", "100.64.0.2"],
    )?;
    if !forged.status.success() {
        bail!("sending the forged packet failed: {}", String::from_utf8_lossy(&forged.stderr));
    }
    let start = Instant::now();
    loop {
        let now = lab.counter("b", spoofed)?;
        if now > before {
            println!(
                "forged source 100.64.0.77 from a: dropped by b and counted ({spoofed} {before} -> {now})"
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("b did not count the forged packet as spoofed");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    lab.stop("b")?;
    let restarted = Instant::now();
    lab.start("b")?;
    lab.wait_up("b", Duration::from_secs(20))?;
    lab.ping_until("a", "100.64.0.2", Duration::from_secs(30))?;
    println!(
        "b stopped and started again: a reaches it {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    reload_adds_a_peer(lab)?;
    println!("e2e: all checks passed");
    Ok(())
}

/// A fourth node, d, knows a; a does not know d and refuses it. While a TCP flow runs from
/// a to b, a's configuration gains d: `vpn-node reload` first refuses a file that also
/// changes `[worker]` (naming it), then applies the peer; d and a reach each other, SIGHUP
/// reloads too, and the flow to b runs to its end.
fn reload_adds_a_peer(lab: &mut Lab) -> Result<()> {
    lab.add_node("d", 4)?;
    let a = lab.node("a")?;
    let (a_overlay, a_overlay6) = (a.overlay.clone(), a.overlay6.clone());
    let (a_peer, a_underlay) = (a.peer_id.clone(), a.underlay.clone());
    let a_config = a.dir.join("vpn-node.toml").to_str().context("config path")?.to_owned();
    let d = lab.node("d")?;
    let (d_overlay, d_overlay6, d_peer, d_underlay) =
        (d.overlay.clone(), d.overlay6.clone(), d.peer_id.clone(), d.underlay.clone());
    let d_config = format!(
        "[node]\nidentity_file = \"identity.key\"\naddress = \"{d_overlay}/10\"\naddress6 = \"{d_overlay6}/64\"\n\
         [interface]\nname = \"vpn-d\"\n\
         [network]\nlisten = [\"/ip4/{d_underlay}/tcp/4001\"]\n\
         [discovery]\nmdns = false\nnegative_cache_ttl = \"1s\"\n\
         [metrics]\nlisten = \"127.0.0.1:9464\"\n[control]\nsocket = \"{}\"\n\
         [[peers]]\npeer_id = \"{a_peer}\"\naddresses = [\"{a_overlay}\", \"{a_overlay6}\"]\nendpoints = [\"/ip4/{a_underlay}/tcp/4001\"]\n",
        d.dir.join("control.sock").display()
    );
    std::fs::write(d.dir.join("vpn-node.toml"), d_config)?;
    lab.start_with("d", &["--log-format", "json"])?;
    lab.wait_up("d", Duration::from_secs(20))?;
    let early = lab.exec("d", &["ping", "-c", "2", "-W", "1", &a_overlay])?;
    if early.status.success() {
        bail!("a answered d before d was in its configuration");
    }
    let binary = lab.binary().to_str().context("binary")?.to_owned();
    let b_overlay = lab.node("b")?.overlay.clone();
    let lab: &Lab = lab;
    std::thread::scope(|scope| -> Result<()> {
        let flow = scope.spawn(|| lab.iperf_for("a", "b", &b_overlay, &[], Duration::from_secs(8)));
        // The flow is under way once b has taken a few thousand packets more.
        let received = |lab: &Lab| lab.counter("b", "vpn_packets_received_total").unwrap_or(0);
        let (before, start) = (received(lab), Instant::now());
        while received(lab) < before + 2000 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let peer_block = format!(
            "[[peers]]\npeer_id = \"{d_peer}\"\naddresses = [\"{d_overlay}\", \"{d_overlay6}\"]\nendpoints = [\"/ip4/{d_underlay}/tcp/4001\"]\n"
        );
        lab.edit_config("a", |text| format!("{text}{peer_block}[worker]\nmax_workers = 64\n"))?;
        let refused = lab.exec("a", &[&binary, "reload", "--config", &a_config])?;
        let said = String::from_utf8_lossy(&refused.stderr).into_owned();
        if refused.status.success() || !said.contains("worker") || !said.contains("restart") {
            bail!("`vpn-node reload` took a change to [worker]: {said}");
        }
        lab.edit_config("a", |text| text.replace("[worker]\nmax_workers = 64\n", ""))?;
        let applied = lab.exec("a", &[&binary, "reload", "--config", &a_config])?;
        let said = String::from_utf8_lossy(&applied.stdout).into_owned();
        if !applied.status.success() || said.trim() != "reloaded: peers" {
            bail!("`vpn-node reload` on a: {said}{}", String::from_utf8_lossy(&applied.stderr));
        }
        let d_to_a = lab.ping_until("d", &a_overlay, Duration::from_secs(30))?;
        let a_to_d = lab.ping_until("a", &d_overlay6, Duration::from_secs(30))?;
        let pid = lab.pid("a").context("a's PID")?.to_string();
        lab::run("kill", &["-HUP", &pid])?;
        let start = Instant::now();
        while !lab.log("a").contains("SIGHUP: configuration reloaded") {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("a did not log the reload on SIGHUP");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // d logs in JSON: every line but the readiness line is one event object.
        let log = lab.log("d");
        let events: Vec<&str> = log.lines().filter(|l| !l.starts_with("ready: ")).collect();
        let json = |line: &str| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("level").is_some())
        };
        if events.is_empty() || !events.iter().all(|l| json(l)) {
            bail!("d was started with --log-format json, yet logged:\n{log}");
        }
        let report = flow.join().map_err(|_| anyhow::anyhow!("the iperf3 thread panicked"))??;
        let bps = json_number(&report, "/end/sum_received/bits_per_second").unwrap_or(0.0);
        let retransmits = json_number(&report, "/end/sum_sent/retransmits").unwrap_or(f64::NAN);
        if bps <= 0.0 {
            bail!("the flow from a to b did not survive the reload: {report}");
        }
        println!(
            "reload: a change to [worker] refused and named; d added to a live: d -> a {d_to_a}, a -> d (IPv6) {a_to_d}; SIGHUP reloads too; a -> b TCP across the reloads: {:.2} Gbit/s, {retransmits} retransmits; d's log ({} events) is JSON",
            bps / 1e9,
            events.len()
        );
        Ok(())
    })
}

/// `vpn-node ping` from a: b by overlay address (JSON: every PING answered, b's peer ID, the
/// connection to b's underlay address), and c by peer ID (the summary line for a person).
fn vpn_node_ping(lab: &Lab, config: &str) -> Result<()> {
    let binary = lab.binary().to_str().context("binary")?;
    let b = lab.node("b")?;
    let args = ["ping", b.overlay.as_str(), "--config", config, "--count", "3", "--json"];
    let answer = String::from_utf8_lossy(&lab::run(binary, &args)?.stdout).into_owned();
    let value: serde_json::Value =
        serde_json::from_str(&answer).with_context(|| format!("ping answer: {answer}"))?;
    let path = value.pointer("/path/0").and_then(serde_json::Value::as_str).unwrap_or("");
    let rtts: Vec<f64> = value
        .get("rtt_ms")
        .and_then(serde_json::Value::as_array)
        .map(|r| r.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    let named_b = value.get("peer_id").and_then(serde_json::Value::as_str) == Some(&b.peer_id);
    if !named_b || rtts.len() != 3 || !path.contains(&format!("/{}/", b.underlay)) {
        bail!("`vpn-node ping {}` from a: {answer}", b.overlay);
    }
    let c = lab.node("c")?;
    let args = ["ping", c.peer_id.as_str(), "--config", config, "--count", "1"];
    let text = String::from_utf8_lossy(&lab::run(binary, &args)?.stdout).into_owned();
    if !text.contains(&c.peer_id) || !text.contains("1 sent, 1 answered") {
        bail!("`vpn-node ping <c's peer ID>` from a:\n{text}");
    }
    let avg = rtts.iter().sum::<f64>() / 3.0;
    println!(
        "vpn-node ping from a: b by address 3/3 answered (avg {avg:.3} ms, via {path}); c by peer ID 1/1"
    );
    Ok(())
}

/// The TCP checksum errors the kernel of `node`'s namespace has counted.
fn tcp_csum_errors(lab: &Lab, node: &str) -> Result<u64> {
    let snmp = lab.exec(node, &["cat", "/proc/net/snmp"])?;
    csum_errors(&String::from_utf8_lossy(&snmp.stdout)).context("no InCsumErrors in /proc/net/snmp")
}

/// `InCsumErrors` of the `Tcp:` lines of `/proc/net/snmp` (a line of names, then values).
fn csum_errors(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "InCsumErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{csum_errors, json_number};

    #[test]
    fn reads_tcp_checksum_errors_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm InSegs InErrs InCsumErrors\nTcp: 1 900 2 7\n\
                    Udp: InDatagrams InCsumErrors\nUdp: 5 3\n";
        assert_eq!(csum_errors(snmp), Some(7));
        assert_eq!(csum_errors("Tcp: InSegs\nTcp: 9\n"), None);
        assert_eq!(csum_errors(""), None);
    }

    #[test]
    fn reads_numbers_from_iperf_json() {
        // The per-interval sums come first; the totals are under "end".
        let text = r#"{"intervals": [{"sum": {"packets": 7}}],
            "end": {"sum": {"packets": 100, "lost_packets": 3},
                    "sum_received": {"bytes": 5, "bits_per_second": 2.5e9}}}"#;
        assert_eq!(json_number(text, "/end/sum_received/bits_per_second"), Some(2.5e9));
        assert_eq!(json_number(text, "/end/sum/packets"), Some(100.0));
        assert_eq!(json_number(text, "/end/nothing/packets"), None);
        assert_eq!(json_number("not json", "/end"), None);
    }
}
