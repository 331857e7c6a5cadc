//! `cargo xtask bench`: the tunnel measured beside raw veth and the VPNs people use today,
//! all in the same network namespaces on this machine, in one run (TESTING.md
//! "Benchmarks"). Every system is brought up between nodes `a` and `b` of the lab, measured
//! with iperf3 and ping, and taken down again; then the same with 1% and 5% random loss on
//! the underlay (nftables). Prints the tables and writes them as JSON.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{self, Lab, Setup, cpu_ticks, json_number, memory_mib};
use crate::tools;

/// Programs the comparison needs, with their Debian packages.
const TOOLS: [(&str, &str); 5] = [
    ("wireguard-go", "wireguard-go"),
    ("wg", "wireguard-tools"),
    ("nebula", "nebula"),
    ("nebula-cert", "nebula"),
    ("getconf", "libc-bin"),
];

/// Underlay loss rates measured, in percent.
const LOSSES: [u32; 3] = [0, 1, 5];

/// The figures of one system at one loss rate.
#[derive(Debug, Clone, Default)]
struct Row {
    system: String,
    loss: u32,
    tcp1_gbps: Option<f64>,
    tcp4_gbps: Option<f64>,
    udp_kpps: Option<f64>,
    ping_ms: Option<f64>,
    /// Ping while one TCP flow fills the tunnel.
    ping_load_ms: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    peak_rss_mib: Option<f64>,
    idle_rss_mib: Option<f64>,
    note: String,
}

/// A system brought up between `a` and `b`.
struct Tunnel {
    /// The address iperf3 and ping aim at, on `b`.
    target: String,
    /// Daemons whose CPU time and memory count (none for raw veth).
    pids: Vec<u32>,
    /// Daemons to stop at teardown.
    children: Vec<Child>,
    /// Commands (in a node's namespace) that undo the setup.
    undo: Vec<(String, Vec<String>)>,
    /// vpn-node processes of the lab to stop.
    nodes: bool,
    /// The relay `c` runs too.
    relay: bool,
}

impl Tunnel {
    fn plain(target: String) -> Self {
        Self {
            target,
            pids: Vec::new(),
            children: Vec::new(),
            undo: Vec::new(),
            nodes: false,
            relay: false,
        }
    }

    fn down(mut self, lab: &mut Lab) {
        for child in &mut self.children {
            lab::end_child(child, true, Duration::from_secs(5));
        }
        for (node, args) in &self.undo {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = lab.exec(node, &args);
        }
        if self.nodes {
            let _ = lab.stop("a");
            let _ = lab.stop("b");
        }
        if self.relay {
            let _ = lab.stop("c");
        }
    }
}

/// The systems compared, in table order. vpn-node runs with its defaults (datagrams where
/// a QUIC connection carries them, TCP for streams, TUN offload, MTU 1400) unless its name
/// says otherwise: `streams` turns datagrams off.
const SYSTEMS: [&str; 9] = [
    "raw veth",
    "vpn-node (datagrams)",
    "vpn-node (TCP, streams)",
    "vpn-node (QUIC, streams)",
    "vpn-node (TCP, streams, no offload)",
    "vpn-node (TCP, relayed)",
    "wireguard-go",
    "boringtun",
    "nebula",
];

/// The systems and loss rates to run: all, or those named in `BENCH_SYSTEMS` and
/// `BENCH_LOSSES` (separated by `;` and `,`). Other vpn-node settings can be named there
/// too, e.g. `vpn-node (TCP, no offload, MTU 9000)`, to evaluate a change.
fn selection() -> Result<(Vec<String>, Vec<u32>)> {
    let systems: Vec<String> = match std::env::var("BENCH_SYSTEMS") {
        Ok(list) => list.split(';').map(|s| s.trim().to_owned()).collect(),
        Err(_) => SYSTEMS.iter().map(|s| (*s).to_owned()).collect(),
    };
    // A misspelt name fails here, before anything is installed or measured.
    for system in &systems {
        if !SYSTEMS.contains(&system.as_str()) {
            vpn_setup(system).with_context(|| format!("BENCH_SYSTEMS: {system:?}"))?;
        }
    }
    let losses = match std::env::var("BENCH_LOSSES") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse().with_context(|| format!("BENCH_LOSSES: {s}")))
            .collect::<Result<_>>()?,
        Err(_) => LOSSES.to_vec(),
    };
    Ok((systems, losses))
}

/// The lab setup a vpn-node system name asks for:
/// `vpn-node (datagrams|TCP|QUIC[, streams][, no offload][, relayed][, MTU n])`.
fn vpn_setup(system: &str) -> Result<Setup> {
    let inner = system
        .strip_prefix("vpn-node (")
        .and_then(|s| s.strip_suffix(')'))
        .with_context(|| format!("unknown system {system}"))?;
    let mut setup = Setup { pair_only: true, ..Setup::default() };
    for part in inner.split(',').map(str::trim) {
        match part {
            "TCP" | "datagrams" => setup.quic = false,
            "streams" => setup.streams_only = true,
            "QUIC" => setup.quic = true,
            "no offload" => setup.offload = false,
            "relayed" => setup.relayed = true,
            _ => match part.strip_prefix("MTU ") {
                Some(mtu) => setup.mtu = mtu.parse().with_context(|| format!("MTU in {system}"))?,
                None => bail!("unknown setting `{part}` in {system}"),
            },
        }
    }
    Ok(setup)
}

/// Runs the whole comparison with the release `vpn-node` at `binary`; extra tools are
/// installed under `tools_dir`. Writes the JSON to `out`.
pub fn run(binary: &Path, tools_dir: &Path, out: &Path) -> Result<()> {
    let (systems, losses) = selection()?;
    tools::ensure()?;
    tools::ensure_these(&TOOLS)?;
    let boringtun = boringtun(tools_dir)?;
    let mut lab = Lab::new(binary.to_owned())?;
    let work = lab.root().join("bench");
    fs::create_dir_all(&work)?;
    let ticks = clock_ticks()?;
    let raw_dir = out.with_file_name("raw");
    fs::create_dir_all(&raw_dir)?;
    let mut rows = Vec::new();
    for loss in losses {
        set_loss(&lab, loss)?;
        for system in systems.iter().map(String::as_str) {
            eprintln!("bench: {system}, {loss}% loss");
            let row = match up(&mut lab, system, &boringtun, &work) {
                Ok(tunnel) => {
                    let slug: String = system
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                        .collect();
                    let raw = raw_dir.join(format!("{slug}-loss{loss}"));
                    let measured = measure(&lab, &tunnel, ticks, &raw);
                    tunnel.down(&mut lab);
                    match measured {
                        Ok(mut row) => {
                            row.system = system.to_owned();
                            row.loss = loss;
                            row
                        }
                        Err(e) => failed(system, loss, &e),
                    }
                }
                Err(e) => failed(system, loss, &e),
            };
            eprintln!(
                "bench:   TCP {} / {} Gbit/s, UDP {} kpps, ping {} ms ({} loaded), {} CPU s/GB, RSS {} MiB",
                cell(row.tcp1_gbps, 2),
                cell(row.tcp4_gbps, 2),
                cell(row.udp_kpps, 1),
                cell(row.ping_ms, 3),
                cell(row.ping_load_ms, 3),
                cell(row.cpu_s_per_gb, 2),
                cell(row.peak_rss_mib, 1),
            );
            rows.push(row);
        }
    }
    set_loss(&lab, 0)?;
    let table = render(&rows);
    println!("{table}");
    println!(
        "yggdrasil is not run: its addresses are fixed inside 200::/7, outside the overlay \
         ranges this project may use (100.64.0.0/10, fd00::/8)."
    );
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(out, json(&rows)?)?;
    println!("written: {}", out.display());
    Ok(())
}

fn failed(system: &str, loss: u32, e: &anyhow::Error) -> Row {
    eprintln!("bench: {system} at {loss}% loss failed: {e:#}");
    Row { system: system.to_owned(), loss, note: format!("failed: {e}"), ..Row::default() }
}

/// `boringtun-cli` from crates.io, built once into `dir`.
fn boringtun(dir: &Path) -> Result<PathBuf> {
    let binary = dir.join("bin").join("boringtun-cli");
    if binary.exists() {
        return Ok(binary);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["install", "--locked", "boringtun-cli", "--root"])
        .arg(dir)
        .status()
        .context("cargo install boringtun-cli")?;
    if !status.success() {
        bail!("cargo install boringtun-cli failed");
    }
    Ok(binary)
}

/// The kernel's clock ticks per second (CPU times in /proc are in ticks).
fn clock_ticks() -> Result<f64> {
    let out = lab::run("getconf", &["CLK_TCK"])?;
    String::from_utf8_lossy(&out.stdout).trim().parse().context("CLK_TCK")
}

/// Drops `loss` percent of the packets arriving on the underlay of `a` and of `b` (each
/// direction), or removes the rule for 0.
fn set_loss(lab: &Lab, loss: u32) -> Result<()> {
    for node in ["a", "b"] {
        let _ = lab.exec(node, &["nft", "delete", "table", "inet", "vpnbench"]);
        if loss == 0 {
            continue;
        }
        let script = format!(
            "add table inet vpnbench\n\
             add chain inet vpnbench input {{ type filter hook input priority 0; policy accept; }}\n\
             add rule inet vpnbench input iifname \"eth0\" numgen random mod 100 < {loss} drop\n"
        );
        lab.nft(node, &format!("loss-{node}"), &script)?;
    }
    Ok(())
}

/// Brings `system` up between `a` and `b`.
fn up(lab: &mut Lab, system: &str, boringtun: &Path, work: &Path) -> Result<Tunnel> {
    match system {
        "raw veth" => Ok(Tunnel::plain(lab.node("b")?.underlay.clone())),
        "wireguard-go" => wireguard(lab, Path::new("wireguard-go"), &["-f"], "wg", work),
        // Privileges cannot be dropped without a login terminal; one thread per core.
        "boringtun" => wireguard(
            lab,
            boringtun,
            &["--foreground", "--disable-drop-privileges", "--threads", "2"],
            "bt",
            work,
        ),
        "nebula" => nebula(lab, work),
        other => vpn_node(lab, &vpn_setup(other)?),
    }
}

fn vpn_node(lab: &mut Lab, setup: &Setup) -> Result<Tunnel> {
    lab.write_configs_with(setup)?;
    let mut tunnel = Tunnel::plain(lab.node("b")?.overlay.clone());
    tunnel.nodes = true;
    let mut nodes = vec!["a", "b"];
    if setup.relayed {
        // The relay c carries the tunnel; a and b cannot reach each other directly.
        nodes.insert(0, "c");
        tunnel.relay = true;
        for (node, other) in [("a", "b"), ("b", "a")] {
            let other = lab.node(other)?.underlay.clone();
            let script = format!(
                "add table inet vpnrelay\n\
                 add chain inet vpnrelay output {{ type filter hook output priority 0; policy accept; }}\n\
                 add rule inet vpnrelay output ip daddr {other} drop\n"
            );
            lab.nft(node, &format!("relay-{node}"), &script)?;
            let undo = ["nft", "delete", "table", "inet", "vpnrelay"];
            tunnel.undo.push((node.to_owned(), undo.map(str::to_owned).to_vec()));
        }
    }
    for node in &nodes {
        lab.start(node)?;
    }
    for node in &nodes {
        lab.wait_up(node, Duration::from_secs(20))?;
    }
    // The relay's work counts too.
    tunnel.pids = nodes.iter().filter_map(|n| lab.pid(n)).collect();
    lab.ping_until("a", &tunnel.target, Duration::from_secs(30))?;
    // Measured once the tunnel is settled: packets on the path they will keep (the datagram
    // path comes up beside the first connection a moment later).
    if !setup.relayed && !setup.streams_only {
        lab.wait_data_path("a", "b", "datagram", Duration::from_secs(30))?;
        lab.wait_data_path("b", "a", "datagram", Duration::from_secs(30))?;
    }
    if setup.relayed {
        let path = lab.path_kind("a", "b")?;
        if path.as_deref() != Some("relayed") {
            bail!("a reaches b over {path:?}, not through the relay");
        }
    }
    Ok(tunnel)
}

/// Overlay address of the comparison VPNs on node `n` (1 or 2).
fn overlay(n: u8) -> String {
    format!("100.64.1.{n}")
}

/// A WireGuard tunnel run by a userspace implementation (`program` with `flags`, in the
/// foreground), configured with `wg`. Interface names start with `prefix`: the control
/// sockets in /var/run/wireguard are shared by every namespace, so names must differ.
fn wireguard(
    lab: &mut Lab,
    program: &Path,
    flags: &[&str],
    prefix: &str,
    work: &Path,
) -> Result<Tunnel> {
    let mut tunnel = Tunnel::plain(overlay(2));
    let mut keys = Vec::new();
    for node in ["a", "b"] {
        let private = lab::run("wg", &["genkey"])?;
        let private = String::from_utf8_lossy(&private.stdout).trim().to_owned();
        let file = work.join(format!("wg-{node}.key"));
        fs::write(&file, &private)?;
        let public =
            Command::new("sh").args(["-c", &format!("wg pubkey < {}", file.display())]).output()?;
        keys.push((file, String::from_utf8_lossy(&public.stdout).trim().to_owned()));
    }
    for (i, node) in ["a", "b"].iter().enumerate() {
        let name = format!("{prefix}{node}{}", std::process::id() % 100_000);
        let mut args = flags.to_vec();
        args.push(&name);
        let child = lab
            .spawn(node, program, &args, &[("WG_PROCESS_FOREGROUND", "1")])
            .with_context(|| format!("start {}", program.display()))?;
        tunnel.pids.push(child.id());
        tunnel.children.push(child);
        tunnel.undo.push((
            (*node).to_owned(),
            vec!["ip".into(), "link".into(), "del".into(), name.clone()],
        ));
        wait_for(Path::new(&format!("/var/run/wireguard/{name}.sock")))?;
        let (Some((key, _)), Some((_, peer_public))) = (keys.get(i), keys.get(1 - i)) else {
            bail!("two keys were made");
        };
        let peer = lab.node(if i == 0 { "b" } else { "a" })?.underlay.clone();
        let port = "51820";
        let key = key.to_str().context("key path")?;
        let endpoint = format!("{peer}:{port}");
        let allowed = format!("{}/32", overlay(2 - i as u8));
        checked(lab.exec(
            node,
            &[
                "wg",
                "set",
                &name,
                "private-key",
                key,
                "listen-port",
                port,
                "peer",
                peer_public,
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
        )?)?;
        let address = format!("{}/24", overlay(1 + i as u8));
        checked(lab.exec(node, &["ip", "addr", "add", &address, "dev", &name])?)?;
        checked(lab.exec(node, &["ip", "link", "set", &name, "mtu", "1420", "up"])?)?;
    }
    lab.ping_until("a", &tunnel.target, Duration::from_secs(30))?;
    Ok(tunnel)
}

/// A nebula network of `a` and `b`, each in the other's static host map (no lighthouse),
/// certificates made here; nebula's defaults otherwise (MTU 1300, AES).
fn nebula(lab: &mut Lab, work: &Path) -> Result<Tunnel> {
    let dir = work.join("nebula");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    lab::run(
        "nebula-cert",
        &["ca", "-name", "vpnbench", "-out-crt", &d("ca.crt"), "-out-key", &d("ca.key")],
    )?;
    let mut tunnel = Tunnel::plain(overlay(2));
    for (i, node) in ["a", "b"].iter().enumerate() {
        let ip = format!("{}/24", overlay(1 + i as u8));
        lab::run(
            "nebula-cert",
            &[
                "sign",
                "-name",
                node,
                "-ip",
                &ip,
                "-ca-crt",
                &d("ca.crt"),
                "-ca-key",
                &d("ca.key"),
                "-out-crt",
                &d(&format!("{node}.crt")),
                "-out-key",
                &d(&format!("{node}.key")),
            ],
        )?;
    }
    for (i, node) in ["a", "b"].iter().enumerate() {
        let peer = lab.node(if i == 0 { "b" } else { "a" })?.underlay.clone();
        let mut config = String::new();
        write!(
            config,
            "pki:\n  ca: {ca}\n  cert: {cert}\n  key: {key}\n\
             static_host_map:\n  \"{peer_overlay}\": [\"{peer}:4242\"]\n\
             lighthouse:\n  am_lighthouse: false\n\
             listen:\n  host: 0.0.0.0\n  port: 4242\n\
             punchy:\n  punch: false\n\
             relay:\n  am_relay: false\n  use_relays: false\n\
             tun:\n  disabled: false\n  dev: nb{node}{pid}\n\
             logging:\n  level: warning\n\
             firewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n\
             \x20 inbound:\n    - port: any\n      proto: any\n      host: any\n",
            ca = d("ca.crt"),
            cert = d(&format!("{node}.crt")),
            key = d(&format!("{node}.key")),
            peer_overlay = overlay(2 - i as u8),
            pid = std::process::id() % 100_000,
        )?;
        let file = dir.join(format!("{node}.yml"));
        fs::write(&file, config)?;
        let child = lab.spawn(
            node,
            Path::new("nebula"),
            &["-config", file.to_str().context("path")?],
            &[],
        )?;
        tunnel.pids.push(child.id());
        tunnel.children.push(child);
    }
    lab.ping_until("a", &tunnel.target, Duration::from_secs(30))?;
    Ok(tunnel)
}

fn checked(out: std::process::Output) -> Result<()> {
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Waits until `path` exists (a daemon's control socket), at most 10 s.
fn wait_for(path: &Path) -> Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Measures a tunnel that is up: TCP with one and four flows, UDP packets per second, ping,
/// and the daemons' CPU time per GB and memory.
fn measure(lab: &Lab, tunnel: &Tunnel, ticks: f64, raw: &Path) -> Result<Row> {
    let target = tunnel.target.as_str();
    // Every iperf3 report is kept beside the table, named by its test.
    let iperf = |test: &str, extra: &[&str]| -> Result<String> {
        let report = lab.iperf("a", "b", target, extra)?;
        fs::write(raw.with_file_name(format!("{}-{test}.json", file_name(raw))), &report)?;
        Ok(report)
    };
    let mut row = Row::default();
    let daemons = !tunnel.pids.is_empty();
    if daemons {
        row.idle_rss_mib = memory_mib(&tunnel.pids, "VmRSS:");
    }
    row.ping_ms = ping_avg(lab, target).ok();
    // Pings from 2 s into the flow for 5 s: the queue a bulk flow builds in the tunnel.
    let pings = format!("sleep 2; ping -c 100 -i 0.05 -q {target}");
    let loaded = Command::new("ip")
        .args(lab.bounded("a", &["sh", "-c", &pings], Duration::from_secs(30))?)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start ping under load")?;
    let before = cpu_ticks(&tunnel.pids);
    let tcp1 = iperf("tcp1", &[]);
    let after = cpu_ticks(&tunnel.pids);
    let loaded = loaded.wait_with_output().context("ping under load")?;
    row.ping_load_ms = ping_summary(&loaded.stdout).ok();
    let tcp1 = tcp1?;
    row.tcp1_gbps = json_number(&tcp1, "/end/sum_received/bits_per_second").map(|b| b / 1e9);
    let bytes = json_number(&tcp1, "/end/sum_received/bytes").unwrap_or(0.0);
    if daemons && bytes > 0.0 {
        row.cpu_s_per_gb = Some((after.saturating_sub(before)) as f64 / ticks / (bytes / 1e9));
    }
    let tcp4 = iperf("tcp4", &["-P", "4"])?;
    row.tcp4_gbps = json_number(&tcp4, "/end/sum_received/bits_per_second").map(|b| b / 1e9);
    let udp = iperf("udp", &["-u", "-b", "0", "-l", "1200"])?;
    let packets = json_number(&udp, "/end/sum/packets");
    let lost = json_number(&udp, "/end/sum/lost_packets");
    let seconds = json_number(&udp, "/end/sum/seconds");
    if let (Some(p), Some(l), Some(s)) = (packets, lost, seconds)
        && s > 0.0
    {
        row.udp_kpps = Some((p - l) / s / 1e3);
    }
    if daemons {
        row.peak_rss_mib = memory_mib(&tunnel.pids, "VmHWM:");
    }
    Ok(row)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The average round trip of 200 pings 20 ms apart, in ms (fewer let the noise between runs
/// decide comparisons of a few percent).
fn ping_avg(lab: &Lab, target: &str) -> Result<f64> {
    let out = lab.exec("a", &["ping", "-c", "200", "-i", "0.02", "-q", target])?;
    ping_summary(&out.stdout)
}

/// The average round trip ping's summary gives, in ms.
fn ping_summary(stdout: &[u8]) -> Result<f64> {
    let text = String::from_utf8_lossy(stdout);
    // rtt min/avg/max/mdev = 0.051/0.062/0.090/0.008 ms
    let stats = text.lines().find(|l| l.contains("min/avg/max")).context("no ping summary")?;
    let values = stats.split('=').nth(1).context("ping summary")?;
    values.trim().split('/').nth(1).context("ping average")?.parse().context("ping average")
}

fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// The tables, one per loss rate measured, in the columns of TESTING.md.
fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut losses: Vec<u32> = Vec::new();
    for row in rows {
        if !losses.contains(&row.loss) {
            losses.push(row.loss);
        }
    }
    for loss in losses {
        let _ = writeln!(out, "\nunderlay loss {loss}%\n");
        let _ = writeln!(
            out,
            "| system | TCP 1 flow Gbit/s | TCP 4 flows Gbit/s | UDP kpps | ping avg ms | ping under load ms | daemon CPU s per GB | peak RSS MiB (idle) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in rows.iter().filter(|r| r.loss == loss) {
            let rss = match (row.peak_rss_mib, row.idle_rss_mib) {
                (Some(peak), Some(idle)) => format!("{peak:.1} ({idle:.1})"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {} | {} | {} | {} | {} |",
                row.system,
                if row.note.is_empty() { String::new() } else { format!(" ({})", row.note) },
                cell(row.tcp1_gbps, 2),
                cell(row.tcp4_gbps, 2),
                cell(row.udp_kpps, 1),
                cell(row.ping_ms, 3),
                cell(row.ping_load_ms, 3),
                cell(row.cpu_s_per_gb, 2),
                rss,
            );
        }
    }
    out
}

fn json(rows: &[Row]) -> Result<String> {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "system": r.system,
                "loss_percent": r.loss,
                "tcp_1_flow_gbit_s": r.tcp1_gbps,
                "tcp_4_flows_gbit_s": r.tcp4_gbps,
                "udp_kpps": r.udp_kpps,
                "ping_avg_ms": r.ping_ms,
                "ping_under_load_ms": r.ping_load_ms,
                "daemon_cpu_s_per_gb": r.cpu_s_per_gb,
                "peak_rss_mib": r.peak_rss_mib,
                "idle_rss_mib": r.idle_rss_mib,
                "note": r.note,
            })
        })
        .collect();
    Ok(serde_json::to_string_pretty(&serde_json::json!({ "rows": rows }))?)
}

#[cfg(test)]
mod tests {
    use super::{Row, render, vpn_setup};

    #[test]
    fn tables_are_drawn_for_the_loss_rates_measured_only() {
        let row = |system: &str, loss| Row { system: system.into(), loss, ..Row::default() };
        let text = render(&[row("a", 5), row("b", 0), row("c", 5)]);
        let headings: Vec<&str> = text.lines().filter(|l| l.starts_with("underlay")).collect();
        assert_eq!(headings, ["underlay loss 5%", "underlay loss 0%"]);
        let five = text.split("underlay loss 0%").next().unwrap_or_default();
        assert!(five.contains("| a |") && five.contains("| c |") && !five.contains("| b |"));
    }

    #[test]
    fn vpn_node_system_names_set_up_the_lab() {
        let default = vpn_setup("vpn-node (datagrams)").unwrap();
        assert!(!default.quic && default.offload && default.pair_only && !default.streams_only);
        let streams = vpn_setup("vpn-node (QUIC, streams)").unwrap();
        assert!(streams.quic && streams.streams_only);
        assert_eq!(default.mtu, 1400);
        let variant = vpn_setup("vpn-node (QUIC, no offload, MTU 9000)").unwrap();
        assert!(variant.quic && !variant.offload);
        assert_eq!(variant.mtu, 9000);
        assert!(vpn_setup("vpn-node (TCP, fast)").is_err());
        assert!(vpn_setup("vpn-node (TCP, MTU big)").is_err());
        assert!(vpn_setup("tinc").is_err());
    }
}
