//! `cargo xtask faults`: the path between two vpn-node processes in network namespaces is
//! broken in every way the real internet breaks it (black holes, cuts, crashes, restarts on
//! another port, an address that moves, a deleted TUN, a start before the network is up,
//! listen addresses that cannot work, lasting loss), and each check measures how long the
//! path takes to carry packets again by itself.
//!
//! Cuts, black holes and loss are nftables rules in node `a`'s namespace that drop the
//! underlay packets between `a` and `b`, both ways. Recovery is the time from the path
//! returning to the first ping reply after it, read from `ping -D` timestamps, for pings
//! running both ways every 100 ms. A check fails when the path has not recovered within
//! [`RECOVERY_LIMIT`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::lab::{self, Lab, Setup};

/// A check fails when the path has not recovered this long after it returned.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
/// The longest a node may take to start.
const START_LIMIT: Duration = Duration::from_secs(20);
/// The nftables table the faults live in.
const TABLE: &str = "vpnfault";
/// How long the loss soak carries traffic.
const SOAK: Duration = Duration::from_secs(600);

/// What one check measured.
struct Outcome {
    /// Seconds from the path returning to the first packet across, where it applies.
    recovery: Option<f64>,
    /// What else it saw.
    detail: String,
}

impl Outcome {
    fn recovered(recovery: f64, detail: String) -> Self {
        Self { recovery: Some(recovery), detail }
    }

    fn held(detail: String) -> Self {
        Self { recovery: None, detail }
    }
}

/// One row of the report.
struct Row {
    name: String,
    result: Result<Outcome>,
}

/// Runs every check (and the loss soak when `soak`) with the `vpn-node` at `binary`; with
/// `only`, just the checks whose names contain one of its words.
pub fn run(binary: &Path, soak: bool, only: &[String]) -> Result<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|w| name.contains(w.as_str()));
    let mut rows = Vec::new();
    for quic in [false, true] {
        let transport = if quic { "QUIC" } else { "TCP" };
        let mut lab = Lab::new(binary.to_owned())?;
        lab.write_configs_with(&setup(quic))?;
        let checks: [(&str, Check); 7] = [
            ("UDP alone black-holed, 20 s", udp_black_hole),
            ("black hole at first contact, 4 s", |lab| black_hole_at_start(lab, 4)),
            ("black hole at first contact, 12 s", |lab| black_hole_at_start(lab, 12)),
            ("cut of an established path, 30 s", cut_established),
            ("SIGKILL and restart", kill_and_restart),
            ("restart on a new port", restart_on_new_port),
            ("own address changed mid-flow (roaming)", roaming),
        ];
        for (name, check) in checks {
            if quic && name.starts_with("UDP alone") {
                // QUIC's streams ride UDP too: nothing would be left to fall back on.
                continue;
            }
            let name = format!("{name} ({transport})");
            if wanted(&name) {
                rows.push(run_check(&mut lab, name, check));
            }
        }
    }
    // Roaming again, `a` listening on its one underlay address alone: the address goes away
    // under the listener, and comes back.
    let name = "own address changed mid-flow, listening on it alone (TCP)";
    if wanted(name) {
        let mut lab = Lab::new(binary.to_owned())?;
        lab.write_configs_with(&Setup { wildcard: false, ..setup(false) })?;
        rows.push(run_check(&mut lab, name.to_owned(), roaming));
    }
    let mut lab = Lab::new(binary.to_owned())?;
    lab.write_configs_with(&setup(false))?;
    let checks: [(&str, Check); 3] = [
        ("TUN deleted", tun_deleted),
        ("start with no interface up", start_without_network),
        ("listen addresses that cannot work", bad_listen_addresses),
    ];
    for (name, check) in checks.into_iter().filter(|(name, _)| wanted(name)) {
        rows.push(run_check(&mut lab, name.to_owned(), check));
    }
    if soak {
        rows.push(run_check(&mut lab, "5% loss soak, 10 min".to_owned(), loss_soak));
    }
    drop(lab);
    report(&rows)
}

type Check = fn(&mut Lab) -> Result<Outcome>;

fn setup(quic: bool) -> Setup {
    Setup { pair_only: true, quic, wildcard: true, ..Setup::default() }
}

/// Starts whichever of `a` and `b` is not running.
fn ensure_running(lab: &mut Lab) -> Result<()> {
    for node in ["a", "b"] {
        if lab.pid(node).is_none() {
            lab.start(node)?;
            lab.wait_up(node, START_LIMIT)?;
        }
    }
    Ok(())
}

/// Runs one check with both nodes running; on failure prints the nodes' last log lines;
/// leaves no fault rule behind.
fn run_check(lab: &mut Lab, name: String, check: Check) -> Row {
    println!("faults: {name} ...");
    let result = ensure_running(lab).and_then(|()| check(lab));
    match &result {
        Ok(outcome) => println!("  ok: {}", outcome.detail),
        Err(e) => {
            println!("  FAILED: {e:#}");
            for node in ["a", "b"] {
                let metrics = lab.metrics(node);
                let counters: Vec<&str> = metrics
                    .lines()
                    .filter(|l| l.starts_with("vpn_") && !l.ends_with(" 0"))
                    .collect();
                eprintln!("--- non-zero counters of node {node} ---\n{}", counters.join("\n"));
                let log = lab.log(node);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!("--- last lines of node {node}'s log ---");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
    let _ = heal(lab);
    Row { name, result }
}

fn report(rows: &[Row]) -> Result<()> {
    println!("\n| check | result | recovery s | what was seen |\n|---|---|---|---|");
    let mut failed = 0;
    for row in rows {
        let (result, recovery, detail) = match &row.result {
            Ok(o) => {
                ("ok", o.recovery.map_or("-".to_owned(), |r| format!("{r:.2}")), o.detail.clone())
            }
            Err(e) => {
                failed += 1;
                ("FAILED", "-".to_owned(), format!("{e:#}"))
            }
        };
        println!("| {} | {result} | {recovery} | {} |", row.name, detail.replace('\n', " "));
    }
    println!("{} passed, {failed} failed", rows.len() - failed);
    if failed > 0 {
        bail!("{failed} fault checks failed");
    }
    Ok(())
}

/// Seconds since the epoch, the clock `ping -D` stamps replies with.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Installs nftables `rules` (drop statements matching the peer) in `node`'s namespace,
/// on its input and output paths.
fn install(lab: &Lab, node: &str, rules: &[String]) -> Result<()> {
    let mut script = format!(
        "table inet {TABLE} {{\n chain input {{ type filter hook input priority 0; policy accept;\n"
    );
    for rule in rules.iter().filter(|r| r.contains("saddr")) {
        script.push_str(&format!("  {rule}\n"));
    }
    script.push_str(" }\n chain output { type filter hook output priority 0; policy accept;\n");
    for rule in rules.iter().filter(|r| r.contains("daddr")) {
        script.push_str(&format!("  {rule}\n"));
    }
    script.push_str(" }\n}\n");
    lab.nft(node, &format!("{node}-fault"), &script)
}

/// Drops every underlay packet between `a` and `b`, both ways.
fn cut(lab: &Lab) -> Result<()> {
    let b = lab.node("b")?.underlay.clone();
    install(lab, "a", &[format!("ip saddr {b} drop"), format!("ip daddr {b} drop")])
}

/// Drops `percent`% of the underlay packets between `a` and `b`, at random, both ways.
fn lossy(lab: &Lab, percent: u32) -> Result<()> {
    let b = lab.node("b")?.underlay.clone();
    install(
        lab,
        "a",
        &[
            format!("ip saddr {b} numgen random mod 100 < {percent} drop"),
            format!("ip daddr {b} numgen random mod 100 < {percent} drop"),
        ],
    )
}

/// Removes every fault rule; returns the moment the path was whole again.
fn heal(lab: &Lab) -> Result<f64> {
    let out = lab.exec("a", &["nft", "delete", "table", "inet", TABLE])?;
    let healed = unix_now();
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !text.contains("No such file") {
        bail!("removing the fault rules failed: {text}");
    }
    Ok(healed)
}

/// A `ping -D` running in a node's namespace every 100 ms, its output in a file.
struct Pinger {
    child: Child,
    out: PathBuf,
    label: String,
}

impl Pinger {
    fn start(lab: &Lab, from: &str, to: &str, for_at_most: Duration) -> Result<Self> {
        let dst = lab.node(to)?.overlay.clone();
        let out = lab.root().join(format!("ping-{from}-{to}.txt"));
        let file = fs::File::create(&out)?;
        let secs = for_at_most.as_secs().to_string();
        let args = ["ping", "-D", "-n", "-i", "0.1", "-W", "1", "-w", &secs, &dst];
        let child = Command::new("ip")
            .args(lab.bounded(from, &args, for_at_most + Duration::from_secs(5))?)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .context("start ping")?;
        Ok(Self { child, out, label: format!("{from}->{to}") })
    }

    /// Timestamps of every reply so far.
    fn replies(&self) -> Vec<f64> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }

    /// Waits for the first reply stamped after `since` (up to [`RECOVERY_LIMIT`] past it);
    /// returns the seconds from `since` to it.
    fn recovery_after(&self, since: f64) -> Result<f64> {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        loop {
            if let Some(first) = self.replies().into_iter().find(|&t| t > since) {
                return Ok(first - since);
            }
            if Instant::now() > deadline {
                bail!("{}: no reply within {RECOVERY_LIMIT:?} of the path returning", self.label);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        lab::end_child(&mut self.child, true, Duration::from_secs(3));
    }
}

/// Pings both ways from now on.
fn ping_both(lab: &Lab, for_at_most: Duration) -> Result<[Pinger; 2]> {
    Ok([Pinger::start(lab, "a", "b", for_at_most)?, Pinger::start(lab, "b", "a", for_at_most)?])
}

/// The recovery both ways after `since`: the slower direction, and both in words.
fn recovery_both(pingers: &[Pinger; 2], since: f64) -> Result<(f64, String)> {
    let mut worst: f64 = 0.0;
    let mut words = Vec::new();
    for pinger in pingers {
        let r = pinger.recovery_after(since)?;
        worst = worst.max(r);
        words.push(format!("{} {r:.2} s", pinger.label));
    }
    Ok((worst, words.join(", ")))
}

/// Both nodes carry pings both ways (within `within`).
fn path_works(lab: &Lab, within: Duration) -> Result<()> {
    lab.ping_until("a", &lab.node("b")?.overlay, within)?;
    lab.ping_until("b", &lab.node("a")?.overlay, within)?;
    Ok(())
}

/// Replies in a row that make a flow established: three seconds of pings.
const ESTABLISHED: usize = 30;

/// Pings both ways until each direction has [`ESTABLISHED`] more replies than `pingers`
/// had (a flow that has run for a while, not one a moment old), within 30 s.
fn wait_established(pingers: &[Pinger; 2]) -> Result<()> {
    let start: Vec<usize> = pingers.iter().map(|p| p.replies().len()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pingers.iter().zip(&start).any(|(p, s)| p.replies().len() < s + ESTABLISHED) {
        if Instant::now() > deadline {
            bail!("the path does not carry a steady flow both ways");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// An established flow: pings both ways for at most `for_at_most`, returned once both
/// have carried [`ESTABLISHED`] replies.
fn established(lab: &Lab, for_at_most: Duration) -> Result<[Pinger; 2]> {
    path_works(lab, Duration::from_secs(30))?;
    let pingers = ping_both(lab, for_at_most)?;
    wait_established(&pingers)?;
    Ok(pingers)
}

/// The nodes start while the path between them drops everything; it opens `secs` later.
fn black_hole_at_start(lab: &mut Lab, secs: u64) -> Result<Outcome> {
    for node in ["a", "b"] {
        lab.stop(node)?;
    }
    cut(lab)?;
    for node in ["a", "b"] {
        lab.start(node)?;
    }
    for node in ["a", "b"] {
        lab.wait_up(node, START_LIMIT)?;
    }
    let pingers = ping_both(lab, Duration::from_secs(secs + 30))?;
    std::thread::sleep(Duration::from_secs(secs));
    let healed = heal(lab)?;
    let (recovery, words) = recovery_both(&pingers, healed)?;
    Ok(Outcome::recovered(recovery, words))
}

/// An established path drops everything for 30 s (longer than the health check's and
/// the connection pings' timeouts), then returns.
fn cut_established(lab: &mut Lab) -> Result<Outcome> {
    let pingers = established(lab, Duration::from_secs(80))?;
    cut(lab)?;
    std::thread::sleep(Duration::from_secs(30));
    let healed = heal(lab)?;
    let (recovery, words) = recovery_both(&pingers, healed)?;
    Ok(Outcome::recovered(recovery, words))
}

/// UDP alone is dropped between the nodes for 20 s (TCP still passes): packets leave the
/// datagram path for streams, and return to datagrams once UDP does.
fn udp_black_hole(lab: &mut Lab) -> Result<Outcome> {
    let pingers = established(lab, Duration::from_secs(80))?;
    lab.wait_data_path("a", "b", "datagram", RECOVERY_LIMIT)?;
    lab.wait_data_path("b", "a", "datagram", RECOVERY_LIMIT)?;
    let b = lab.node("b")?.underlay.clone();
    let cut_at = unix_now();
    install(
        lab,
        "a",
        &[
            format!("ip saddr {b} meta l4proto udp drop"),
            format!("ip daddr {b} meta l4proto udp drop"),
        ],
    )?;
    let moved = lab.wait_data_path("a", "b", "stream direct", RECOVERY_LIMIT)?;
    let (carried, on_streams) = recovery_both(&pingers, cut_at + moved.as_secs_f64())?;
    std::thread::sleep(Duration::from_secs(20));
    let healed = heal(lab)?;
    let (recovery, _) = recovery_both(&pingers, healed)?;
    let back = lab.wait_data_path("a", "b", "datagram", RECOVERY_LIMIT)?;
    let detail = format!(
        "on streams {:.2} s after UDP was cut, pings through {carried:.2} s later ({on_streams}); \
         back on datagrams {:.2} s after UDP returned",
        moved.as_secs_f64(),
        back.as_secs_f64()
    );
    Ok(Outcome::recovered(back.as_secs_f64().max(recovery), detail))
}

/// `b` is killed outright mid-flow and started again with the same identity and port.
fn kill_and_restart(lab: &mut Lab) -> Result<Outcome> {
    let [a_to_b, b_to_a] = established(lab, Duration::from_secs(60))?;
    drop(b_to_a);
    lab.kill("b")?;
    lab.start("b")?;
    lab.wait_up("b", START_LIMIT)?;
    let up = unix_now();
    // b's own pings start with its new TUN (a ping outlives no interface it was using).
    let pingers = [a_to_b, Pinger::start(lab, "b", "a", Duration::from_secs(60))?];
    let (recovery, words) = recovery_both(&pingers, up)?;
    Ok(Outcome::recovered(recovery, format!("from b's TUN up: {words}")))
}

/// `b` stops and starts again listening on another port; `a`'s configuration still names
/// the old one.
fn restart_on_new_port(lab: &mut Lab) -> Result<Outcome> {
    let [a_to_b, b_to_a] = established(lab, Duration::from_secs(60))?;
    drop(b_to_a);
    lab.stop("b")?;
    lab.edit_config("b", |text| listen_port(&text, 4001, 4002))?;
    let started = lab.start("b").and_then(|()| lab.wait_up("b", START_LIMIT));
    let up = unix_now();
    let measured = started
        .and_then(|()| Ok([a_to_b, Pinger::start(lab, "b", "a", Duration::from_secs(60))?]))
        .and_then(|pingers| recovery_both(&pingers, up));
    lab.stop("b")?;
    lab.edit_config("b", |text| listen_port(&text, 4002, 4001))?;
    let (recovery, words) = measured?;
    Ok(Outcome::recovered(recovery, format!("from b's TUN up: {words}")))
}

/// A configuration's text with port `from` changed to `to` on its `listen` line only.
fn listen_port(text: &str, from: u16, to: u16) -> String {
    text.lines()
        .map(|line| {
            if line.starts_with("listen = [") {
                line.replace(&format!("/{from}\""), &format!("/{to}\""))
                    .replace(&format!("/{from}/"), &format!("/{to}/"))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Moves a node's underlay address: the old one removed, a new one added on the same
/// interface, as when a laptop changes networks. Returns when the new one is in place.
fn move_address(lab: &Lab, node: &str, from: &str, to: &str) -> Result<f64> {
    let netns = lab.node(node)?.netns.clone();
    lab::run("ip", &["-n", &netns, "addr", "del", &format!("{from}/24"), "dev", "eth0"])?;
    lab::run("ip", &["-n", &netns, "addr", "add", &format!("{to}/24"), "dev", "eth0"])?;
    Ok(unix_now())
}

/// `a`'s underlay address changes while pings run both ways, and changes back.
fn roaming(lab: &mut Lab) -> Result<Outcome> {
    let old = lab.node("a")?.underlay.clone();
    let new = "198.18.0.11";
    let pingers = established(lab, Duration::from_secs(80))?;
    let moved = move_address(lab, "a", &old, new)?;
    // The flow settles on the new address before the way back.
    let there =
        recovery_both(&pingers, moved).and_then(|there| wait_established(&pingers).map(|()| there));
    let back = move_address(lab, "a", new, &old)?;
    let (there, there_words) = there?;
    let (back, back_words) = recovery_both(&pingers, back)?;
    Ok(Outcome::recovered(
        there.max(back),
        format!("to {new}: {there_words}; back to {old}: {back_words}"),
    ))
}

/// `a`'s TUN device is deleted under it: the node stops with an error naming it.
fn tun_deleted(lab: &mut Lab) -> Result<Outcome> {
    path_works(lab, Duration::from_secs(30))?;
    let netns = lab.node("a")?.netns.clone();
    let deleted = Instant::now();
    lab::run("ip", &["-n", &netns, "link", "del", "vpn-a"])?;
    let Some(status) = lab.wait_exit("a", RECOVERY_LIMIT)? else {
        bail!("a still runs {RECOVERY_LIMIT:?} after its TUN was deleted");
    };
    let took = deleted.elapsed().as_secs_f64();
    if status.success() {
        bail!("a exited with success after losing its TUN");
    }
    let log = lab.log("a");
    let last = log.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_default();
    if !last.contains("vpn-a") {
        bail!("a's closing error does not name its interface: {last:?}");
    }
    Ok(Outcome::held(format!("exited ({status}) {took:.2} s after the delete: {last}")))
}

/// `a` starts before its network is up: every interface down and without an address, as
/// in a new namespace or a host whose DHCP has not answered yet. It says what it waits
/// for, and carries traffic once the network comes up.
fn start_without_network(lab: &mut Lab) -> Result<Outcome> {
    lab.stop("a")?;
    let (netns, underlay) = (lab.node("a")?.netns.clone(), lab.node("a")?.underlay.clone());
    for dev in ["eth0", "lo"] {
        lab::run("ip", &["-n", &netns, "link", "set", dev, "down"])?;
        lab::run("ip", &["-n", &netns, "addr", "flush", "dev", dev])?;
    }
    let log_before = lab.log("a").len();
    lab.start("a")?;
    let said = wait_for_log(lab, "a", log_before, "waiting for", START_LIMIT);
    let running = lab.wait_exit("a", Duration::from_millis(10))?.is_none();
    lab::run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
    lab::run("ip", &["-n", &netns, "addr", "add", &format!("{underlay}/24"), "dev", "eth0"])?;
    lab::run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
    let up = unix_now();
    let line = said?;
    if !running {
        bail!("a exited while its network was down");
    }
    lab.wait_up("a", START_LIMIT)?;
    let pingers = ping_both(lab, Duration::from_secs(40))?;
    let (recovery, words) = recovery_both(&pingers, up)?;
    Ok(Outcome::recovered(recovery, format!("said {line:?}; from the network up: {words}")))
}

/// The first line containing `needle` that `node` logged past byte `from` of its log,
/// waiting up to `within` for it.
fn wait_for_log(
    lab: &Lab,
    node: &str,
    from: usize,
    needle: &str,
    within: Duration,
) -> Result<String> {
    let start = Instant::now();
    loop {
        let log = lab.log(node);
        if let Some(line) = log.get(from..).and_then(|new| new.lines().find(|l| l.contains(needle)))
        {
            return Ok(line.trim().to_owned());
        }
        if start.elapsed() > within {
            bail!("{node} did not log {needle:?} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `a` is started with a listen address not on its host, then with a port another
/// program holds: each time it stops within seconds, naming the address.
fn bad_listen_addresses(lab: &mut Lab) -> Result<Outcome> {
    lab.stop("a")?;
    let mut seen = Vec::new();
    let holder = lab.spawn("a", Path::new("iperf3"), &["-s", "-p", "4001"], &[])?;
    let mut holder = Holder(holder);
    let cases = [
        ("an address not on this host", "/ip4/198.18.0.99/tcp/4001"),
        ("a port in use", "/ip4/0.0.0.0/tcp/4001"),
    ];
    let outcome = (|| {
        for (what, addr) in cases {
            lab.edit_config("a", |text| {
                let mut out = String::new();
                for line in text.lines() {
                    if line.starts_with("listen = [") {
                        out.push_str(&format!("listen = [\"{addr}\"]\n"));
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                out
            })?;
            if what == "a port in use" {
                wait_listening(lab, "a", 4001)?;
            }
            let started = Instant::now();
            lab.start("a")?;
            let Some(status) = lab.wait_exit("a", RECOVERY_LIMIT)? else {
                bail!("a still runs {RECOVERY_LIMIT:?} after starting with {what} ({addr})");
            };
            let log = lab.log("a");
            let last = log.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_default();
            if status.success() || !last.contains(addr) {
                bail!("with {what}, a exited ({status}) with {last:?}, not naming {addr}");
            }
            seen.push(format!("{what}: stopped in {:.2} s", started.elapsed().as_secs_f64()));
        }
        Ok(())
    })();
    lab::end_child(&mut holder.0, true, Duration::from_secs(3));
    let setup = setup(false);
    lab.write_configs_with(&setup)?;
    outcome?;
    Ok(Outcome::held(seen.join("; ")))
}

/// A helper process stopped when dropped.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        lab::end_child(&mut self.0, true, Duration::from_secs(3));
    }
}

/// Waits until something listens on TCP `port` in `node`'s namespace.
fn wait_listening(lab: &Lab, node: &str, port: u16) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let out = lab.exec(node, &["ss", "-Htln", &format!("sport = :{port}")])?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on port {port} in {node}")
}

/// What a node holds: resident memory, open descriptors, runtime tasks.
#[derive(Debug, Clone, Copy)]
struct Holdings {
    rss_kib: u64,
    /// Of the resident memory, what the node allocated (the rest is pages of its binary and
    /// libraries, which the kernel loads as code first runs and may drop again).
    anon_kib: u64,
    fds: u64,
    tasks: u64,
}

fn holdings(lab: &Lab, node: &str) -> Result<Holdings> {
    let pid = lab.pid(node).with_context(|| format!("{node} is not running"))?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("{field} of {node}"))
    };
    let (rss_kib, anon_kib) = (kib("VmRSS:")?, kib("RssAnon:")?);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let tasks = lab.counter(node, "vpn_runtime_tasks")?;
    Ok(Holdings { rss_kib, anon_kib, fds, tasks })
}

/// What a node holds, as the median of five readings 2 s apart: under load its memory
/// moves with what is queued at the instant read, and one reading can land on a burst.
fn settled_holdings(lab: &Lab, node: &str) -> Result<Holdings> {
    let mut readings = Vec::new();
    for i in 0..5 {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        readings.push(holdings(lab, node)?);
    }
    let median = |field: fn(&Holdings) -> u64| {
        let mut values: Vec<u64> = readings.iter().map(field).collect();
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    Ok(Holdings {
        rss_kib: median(|h| h.rss_kib),
        anon_kib: median(|h| h.anon_kib),
        fds: median(|h| h.fds),
        tasks: median(|h| h.tasks),
    })
}

/// Whether `now` is within 10% of `base` (or within `slack` of it, for small counts).
fn within_tenth(base: u64, now: u64, slack: u64) -> bool {
    now.abs_diff(base) <= (base / 10).max(slack)
}

/// Ten minutes of 5% random loss both ways under four TCP flows and a ping: every flow
/// completes, drops are counted by reason, and what each node holds at the end is within
/// 10% of what it held after the first minute.
fn loss_soak(lab: &mut Lab) -> Result<Outcome> {
    path_works(lab, Duration::from_secs(30))?;
    // With the defaults the soak's packets ride datagrams; it says so if they do not.
    lab.wait_data_path("a", "b", "datagram", RECOVERY_LIMIT)?;
    lossy(lab, 5)?;
    let target = lab.node("b")?.overlay.clone();
    let ping = Pinger::start(lab, "a", "b", SOAK + Duration::from_secs(30))?;
    let soak_lab: &Lab = lab;
    let soak_started = std::time::Instant::now();
    let report = std::thread::scope(|scope| {
        let flows = scope.spawn(|| soak_lab.iperf_for("a", "b", &target, &["-P", "4"], SOAK));
        std::thread::sleep(Duration::from_secs(60));
        let first = [settled_holdings(soak_lab, "a"), settled_holdings(soak_lab, "b")];
        // The sender's memory each minute after the first, for the record.
        let mut minutes = Vec::new();
        while !flows.is_finished() {
            std::thread::sleep(Duration::from_secs(1));
            let elapsed = minutes.len() as u64 * 60 + 120;
            if flows.is_finished() || elapsed > SOAK.as_secs() {
                continue;
            }
            if soak_started.elapsed().as_secs() >= elapsed
                && let Ok(h) = holdings(soak_lab, "a")
            {
                minutes.push(format!("{}/{}", h.rss_kib, h.anon_kib));
            }
        }
        eprintln!("a: RSS/anonymous KiB each minute from the second: {}", minutes.join(" "));
        let report = flows.join().map_err(|_| anyhow::anyhow!("the iperf3 thread panicked"))?;
        Ok::<_, anyhow::Error>((first, report))
    });
    let (first, report) = report?;
    let [first_a, first_b] = first;
    let first = [first_a?, first_b?];
    let last = [settled_holdings(lab, "a")?, settled_holdings(lab, "b")?];
    let report = report?;
    for flow in 0..4 {
        let bytes = lab::json_number(&report, &format!("/end/streams/{flow}/receiver/bytes"));
        if bytes.unwrap_or(0.0) <= 0.0 {
            bail!("flow {flow} carried nothing during the soak");
        }
    }
    let replies = ping.replies().len();
    let path = lab.data_path("a", "b")?;
    if path.as_deref() != Some("datagram") {
        bail!("the soak ended off the datagram path: {path:?}");
    }
    let mut words = vec![format!(
        "4 flows {:.0} Mbit/s in all over datagrams, {replies} ping replies",
        lab::json_number(&report, "/end/sum_received/bits_per_second").unwrap_or(0.0) / 1e6
    )];
    for ((node, f), l) in ["a", "b"].iter().zip(first).zip(last) {
        words.push(format!(
            "{node}: RSS {} -> {} KiB (allocated {} -> {}), fds {} -> {}, tasks {} -> {}",
            f.rss_kib, l.rss_kib, f.anon_kib, l.anon_kib, f.fds, l.fds, f.tasks, l.tasks
        ));
        if !within_tenth(f.rss_kib, l.rss_kib, 1024)
            || !within_tenth(f.fds, l.fds, 2)
            || !within_tenth(f.tasks, l.tasks, 4)
        {
            bail!("{node} grew during the soak: {}", words.join("; "));
        }
        let drops: Vec<String> = lab
            .metrics(node)
            .lines()
            .filter(|l| l.starts_with("vpn_packets_dropped_total{") && !l.ends_with(" 0"))
            .map(str::to_owned)
            .collect();
        words.push(format!(
            "{node} drops: {}",
            if drops.is_empty() { "none".to_owned() } else { drops.join(", ") }
        ));
    }
    heal(lab)?;
    Ok(Outcome::held(words.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::{listen_port, within_tenth};

    #[test]
    fn only_the_listen_line_changes_port() {
        let text = "[network]\nlisten = [\"/ip4/0.0.0.0/tcp/4001\", \"/ip4/0.0.0.0/udp/4001/quic-v1\"]\n\
                    [[peers]]\nendpoints = [\"/ip4/198.18.0.1/tcp/4001\"]";
        let moved = listen_port(text, 4001, 4002);
        assert!(
            moved.contains(
                "listen = [\"/ip4/0.0.0.0/tcp/4002\", \"/ip4/0.0.0.0/udp/4002/quic-v1\"]"
            )
        );
        assert!(moved.contains("endpoints = [\"/ip4/198.18.0.1/tcp/4001\"]"));
        assert_eq!(listen_port(&moved, 4002, 4001), text);
    }

    #[test]
    fn a_tenth_either_way_or_the_slack() {
        assert!(within_tenth(1000, 1100, 0));
        assert!(within_tenth(1000, 900, 0));
        assert!(!within_tenth(1000, 1101, 0));
        assert!(within_tenth(10, 13, 4));
        assert!(!within_tenth(10, 15, 4));
    }
}
