//! The certificate scenario of `cargo xtask e2e`: a network CA, members that list no peer
//! ID (the CA's key, their certificate and one bootstrap address), and everyone who must
//! stay out. See `run` for what it proves.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{self, Lab};

/// Members a, b, c; s a stranger (a valid identity, no certificate); r a member the CA has
/// revoked; x a member certified for .5 that runs as .6; e a member whose certificate runs
/// out during the run. Node a runs as `nobody` with CAP_NET_ADMIN alone.
const EXTRA: [(&str, usize); 4] = [("s", 4), ("r", 5), ("x", 6), ("e", 7)];
/// How long e's certificate lasts.
const E_LIFETIME_SECS: u64 = 10;

pub fn run(binary: &Path, strangers: &Path) -> Result<()> {
    let mut lab = Lab::new(binary.to_owned())?;
    let result = scenario(&mut lab, strangers);
    if result.is_err() {
        lab.print_log_tails(&["a", "b", "c", "s", "r", "x", "e"]);
    }
    result
}

/// Writes `name`'s configuration: trusting `ca_pub`, its certificate `node.crt` (if any),
/// node `bootstrap`'s address as its one bootstrap address (no peer ID), and nothing about
/// any peer.
pub fn write_config(
    lab: &Lab,
    name: &str,
    bootstrap: &str,
    ca_pub: Option<&str>,
    extra: &str,
) -> Result<()> {
    let node = lab.node(name)?;
    let a = lab.node(bootstrap)?;
    let mut text = format!(
        "[node]\nidentity_file = \"identity.key\"\naddress = \"{}/10\"\naddress6 = \"{}/64\"\n\
         [interface]\nname = \"vpn-{name}\"\n\
         [network]\nlisten = [\"/ip4/{}/tcp/4001\"]\n",
        node.overlay, node.overlay6, node.underlay
    );
    if name != bootstrap {
        match ca_pub {
            Some(_) => text.push_str(&format!("bootstrap = [\"/ip4/{}/tcp/4001\"]\n", a.underlay)),
            // A stranger has no CA to prove a by: it names a's peer ID.
            None => text.push_str(&format!(
                "bootstrap = [\"/ip4/{}/tcp/4001/p2p/{}\"]\n",
                a.underlay, a.peer_id
            )),
        }
    }
    text.push_str(&format!(
        "[discovery]\nmdns = false\nnegative_cache_ttl = \"1s\"\n\
         [metrics]\nlisten = \"127.0.0.1:9464\"\n[control]\nsocket = \"{}\"\n",
        node.dir.join("control.sock").display()
    ));
    if let Some(ca_pub) = ca_pub {
        text.push_str(&format!(
            "[membership]\nca = [\"{ca_pub}\"]\ncertificate = \"node.crt\"\ntimeout = \"3s\"\n"
        ));
    }
    text.push_str(extra);
    std::fs::write(node.dir.join("vpn-node.toml"), text)?;
    Ok(())
}

/// Signs `name`'s certificate `node.crt` for `addresses` with the CA in `ca`.
pub fn sign(lab: &Lab, ca: &str, name: &str, addresses: &[&str], expires: &str) -> Result<()> {
    let node = lab.node(name)?;
    let out = node.dir.join("node.crt");
    let mut args = vec!["ca", "sign", "--ca", ca, "--peer-id", node.peer_id.as_str()];
    for address in addresses {
        args.extend(["--address", address]);
    }
    let out = out.to_str().context("path")?;
    args.extend(["--expires", expires, "--name", name, "-o", out]);
    lab.vpn_node(&args).map(drop)
}

/// A node's `status` answer from its control socket.
fn status(lab: &Lab, name: &str) -> Result<serde_json::Value> {
    lab.ask(name, "status")
}

fn refused(lab: &Lab, name: &str, reason: &str) -> Result<u64> {
    lab.counter(name, &format!("vpn_peers_refused_total{{reason=\"{reason}\"}}"))
}

fn routing_table(lab: &Lab, name: &str) -> Result<Vec<String>> {
    let status = status(lab, name)?;
    let table = status.get("routing_table").and_then(|t| t.as_array()).context("routing_table")?;
    Ok(table.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
}

use lab::until;

/// Whether one ping from `from` to `dst` is answered.
fn answered(lab: &Lab, from: &str, dst: &str) -> Result<bool> {
    Ok(lab.exec(from, &["ping", "-c", "1", "-W", "1", dst])?.status.success())
}

fn scenario(lab: &mut Lab, strangers: &Path) -> Result<()> {
    for (name, n) in EXTRA {
        lab.add_node(name, n)?;
    }
    let ca_dir = lab.root().join("ca");
    let ca = ca_dir.to_str().context("path")?.to_owned();
    let ca_pub = lab.vpn_node(&["ca", "init", "--dir", &ca])?.trim().to_owned();
    for name in ["a", "b", "c", "r"] {
        let node = lab.node(name)?;
        let (v4, v6) = (node.overlay.clone(), node.overlay6.clone());
        sign(lab, &ca, name, &[&v4, &v6], "30d")?;
    }
    sign(lab, &ca, "x", &["100.64.0.5", "fd00::5"], "30d")?;
    let e = lab.node("e")?;
    let (e_v4, e_v6) = (e.overlay.clone(), e.overlay6.clone());
    sign(lab, &ca, "e", &[&e_v4, &e_v6], &format!("{E_LIFETIME_SECS}s"))?;
    let e_signed = Instant::now();
    let r_peer = lab.node("r")?.peer_id.clone();
    lab.vpn_node(&["ca", "revoke", "--ca", &ca, "--peer-id", &r_peer])?;
    let list = ca_dir.join("revoked.crl");
    let list = list.to_str().context("path")?;
    // a runs as nobody: its folder (control socket) is nobody's; its key stays root's.
    let a_dir = lab.node("a")?.dir.clone();
    lab::run("chown", &["nobody", a_dir.to_str().context("path")?])?;
    let revocations = format!("revocations = \"{list}\"\n");
    write_config(lab, "a", "a", Some(&ca_pub), &revocations)?;
    lab.edit_config("a", |text| text.replacen("[node]\n", "[node]\nuser = \"nobody\"\n", 1))?;
    for name in ["b", "c"] {
        write_config(lab, name, "a", Some(&ca_pub), &revocations)?;
    }
    for name in ["r", "x", "e"] {
        write_config(lab, name, "a", Some(&ca_pub), "")?;
    }
    write_config(lab, "s", "a", None, "")?;
    for name in ["a", "b", "c", "s", "r", "x", "e"] {
        lab.start(name)?;
    }
    for name in ["a", "b", "c", "s", "r", "x", "e"] {
        lab.wait_up(name, Duration::from_secs(20))?;
    }
    println!(
        "certificates: a CA, members a b c with its public key, their certificate and one bootstrap address (no peer ID anywhere)"
    );

    // Least privilege: a runs as nobody with CAP_NET_ADMIN alone, in every thread.
    let pid = lab.pid("a").context("a's PID")?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
    for task in tasks {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        let field = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or("").to_owned()
        };
        let uids = field("Uid:");
        if uids.split_whitespace().any(|uid| uid == "0") {
            bail!("a runs with uid 0 in a thread: Uid {uids}");
        }
        if field("CapEff:") != "0000000000001000" || field("CapPrm:") != "0000000000001000" {
            bail!(
                "a has capabilities other than CAP_NET_ADMIN: CapEff {} CapPrm {}",
                field("CapEff:"),
                field("CapPrm:")
            );
        }
    }
    let a_status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = a_status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("").to_owned();
    println!(
        "  a (pid {pid}) runs as {} with CapEff 0000000000001000 (CAP_NET_ADMIN) in every thread",
        uid_line.split_whitespace().nth(1).unwrap_or("?")
    );

    for (from, to) in [("b", "c"), ("c", "b"), ("a", "b"), ("c", "a"), ("b", "a"), ("a", "c")] {
        let target = lab.node(to)?;
        let (v4, v6) = (target.overlay.clone(), target.overlay6.clone());
        let rtt4 = lab.ping_until(from, &v4, Duration::from_secs(30))?;
        let rtt6 = lab.ping_until(from, &v6, Duration::from_secs(30))?;
        println!("  {from} -> {to}: IPv4 {rtt4}, IPv6 {rtt6}");
    }

    // e is a member while its certificate lasts.
    lab.ping_until("e", &lab.node("b")?.overlay.clone(), Duration::from_secs(20))?;

    // Those who must stay out: refused, closed, nowhere in a routing table, nothing stored.
    until("a refused the stranger and the revoked member", Duration::from_secs(30), || {
        Ok(refused(lab, "a", "not_member")? >= 2)
    })?;
    let outsiders = [("s", lab.node("s")?.peer_id.clone()), ("r", r_peer.clone())];
    for member in ["a", "b", "c"] {
        let table = routing_table(lab, member)?;
        for (name, peer) in &outsiders {
            if table.contains(peer) {
                bail!("{name} is in {member}'s routing table: {table:?}");
            }
        }
    }
    for (name, _) in &outsiders {
        let overlay = lab.node(name)?.overlay.clone();
        for (from, to) in [(*name, "a"), ("b", name)] {
            let dst = if to == *name { overlay.clone() } else { lab.node(to)?.overlay.clone() };
            if answered(lab, from, &dst)? {
                bail!("{from} reached {dst}: {name} is no member");
            }
        }
    }
    println!(
        "  stranger s and revoked member r: refused by a (not_member {}), in no routing table, their addresses found by no one",
        refused(lab, "a", "not_member")?
    );

    // x's certificate says .5; it runs as .6: members drop what it sends as .6, and .6
    // resolves to no one.
    let spoofed = "vpn_packets_dropped_total{reason=\"spoofed\"}";
    let before = lab.counter("b", spoofed)?;
    let _ = answered(lab, "x", &lab.node("b")?.overlay.clone())?;
    until("b dropped x's packets from .6 as spoofed", Duration::from_secs(20), || {
        let _ = answered(lab, "x", "100.64.0.2")?;
        Ok(lab.counter("b", spoofed)? > before)
    })?;
    if answered(lab, "b", "100.64.0.6")? {
        bail!("b reached .6 through a member certified for .5");
    }
    println!(
        "  x (certified for .5, running as .6): b drops its packets as spoofed ({before} -> {}), .6 resolves to no one",
        lab.counter("b", spoofed)?
    );

    // Under 1000 strangers' connection attempts, members still connect and traffic flows.
    let a_underlay = lab.node("a")?.underlay.clone();
    let target = format!("/ip4/{a_underlay}/tcp/4001");
    let flood_args = [strangers.to_str().context("path")?, target.as_str(), "1000", "100"];
    let flood = std::process::Command::new("ip")
        .args(lab.bounded("s", &flood_args, Duration::from_secs(600))?)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start the strangers")?;
    std::thread::sleep(Duration::from_secs(2));
    // c restarts during the flood: a member connecting anew gets in.
    lab.stop("c")?;
    lab.start("c")?;
    lab.wait_up("c", Duration::from_secs(20))?;
    let during = lab.ping_until("c", &lab.node("a")?.overlay.clone(), Duration::from_secs(30))?;
    let flow =
        lab.iperf_for("b", "a", &lab.node("a")?.overlay.clone(), &[], Duration::from_secs(5))?;
    let bps = lab::json_number(&flow, "/end/sum_received/bits_per_second").unwrap_or(0.0);
    let out = flood.wait_with_output().context("the strangers")?;
    let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !report.starts_with("attempts 1000") {
        bail!("the strangers did not report: {report}");
    }
    let refusals: Vec<String> = ["not_member", "timeout", "crowded"]
        .iter()
        .map(|r| Ok(format!("{r} {}", refused(lab, "a", r)?)))
        .collect::<Result<_>>()?;
    println!(
        "  1000 strangers at a ({report}); meanwhile c restarted and reached a ({during}), b -> a TCP {:.2} Gbit/s; a counted {}",
        bps / 1e9,
        refusals.join(", ")
    );
    if answered(lab, "s", &lab.node("a")?.overlay.clone())? {
        bail!("the stranger reached a after the flood");
    }

    // e's certificate runs out: every member cuts it off by itself.
    let e_overlay = lab.node("e")?.overlay.clone();
    // Valid up to 60 s past its end (the clock skew every check allows).
    let left = Duration::from_secs(E_LIFETIME_SECS + 65).saturating_sub(e_signed.elapsed());
    until("e's certificate ran out and b cut it off", left + Duration::from_secs(30), || {
        Ok(!answered(lab, "b", &e_overlay)? && !answered(lab, "e", "100.64.0.2")?)
    })?;
    let table = routing_table(lab, "b")?;
    if table.contains(&lab.node("e")?.peer_id) {
        bail!("e is still in b's routing table after its certificate ran out");
    }
    println!(
        "  e's certificate ran out {:.0} s after it was signed: b no longer reaches it nor takes its packets",
        e_signed.elapsed().as_secs_f64()
    );
    lab.ping_until("b", &lab.node("c")?.overlay.clone(), Duration::from_secs(20))?;
    println!("certificates: all checks passed");
    Ok(())
}
