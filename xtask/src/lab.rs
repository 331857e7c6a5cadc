//! A lab of vpn-node processes, each in its own network namespace, joined by a bridge in a
//! namespace of its own. Underlay addresses are 198.18.0.x/24, overlay 100.64.0.x/10 and
//! fd00::x/64. Everything it makes it removes again, processes by PID first.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The longest any one command of the lab may run.
pub const EXEC_LIMIT: Duration = Duration::from_secs(60);
/// How much longer than its traffic one iperf3 client run may take.
const IPERF_LIMIT: Duration = Duration::from_secs(30);

/// The number at `pointer` (e.g. `/end/sum_received/bits_per_second`) in a JSON text.
pub fn json_number(text: &str, pointer: &str) -> Option<f64> {
    serde_json::from_str::<serde_json::Value>(text).ok()?.pointer(pointer)?.as_f64()
}

/// CPU ticks (user + system) the processes used so far.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start after ')'.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// The largest `field` (VmRSS, VmHWM) among the processes, in MiB.
pub fn memory_mib(pids: &[u32], field: &str) -> Option<f64> {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .reduce(f64::max)
}

/// Waits until `check` holds (at most `within`).
pub fn until(what: &str, within: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("timed out after {within:?} waiting until {what}")
}

/// One node of the lab.
pub struct Node {
    /// Short name: a, b, c.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Underlay IPv4 address.
    pub underlay: String,
    /// Overlay IPv4 address.
    pub overlay: String,
    /// Overlay IPv6 address.
    pub overlay6: String,
    /// Its peer ID.
    pub peer_id: String,
    /// Its folder (key, config, log).
    pub dir: PathBuf,
    process: Option<Child>,
}

/// How the lab's nodes are configured.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Overlay MTU.
    pub mtu: u16,
    /// TUN offload (super-packets).
    pub offload: bool,
    /// Nodes whose TUN has offload off whatever `offload` says.
    pub plain: &'static [&'static str],
    /// Peers dial each other over QUIC instead of TCP.
    pub quic: bool,
    /// Only `a` and `b` know each other (benchmarks); otherwise the end-to-end scenario.
    pub pair_only: bool,
    /// Nodes listen on every address (`0.0.0.0`), following their addresses as they come
    /// and go, instead of on their underlay address alone.
    pub wildcard: bool,
    /// With `pair_only`: `a` and `b` reach each other only through `c`, a relay (their
    /// direct path is dropped by the caller): they know each other by peer ID alone, take
    /// `c` as their bootstrap peer, neither checks its own reachability nor punches holes.
    pub relayed: bool,
    /// Packets take streams only (`[network] datagrams = false`).
    pub streams_only: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            mtu: 1400,
            offload: true,
            plain: &[],
            quic: false,
            pair_only: false,
            wildcard: false,
            relayed: false,
            streams_only: false,
        }
    }
}

/// The whole lab.
pub struct Lab {
    prefix: String,
    switch: String,
    binary: PathBuf,
    root: PathBuf,
    /// The nodes, in order.
    pub nodes: Vec<Node>,
    /// Namespaces that run no node (NAT routers), removed with the lab.
    routers: Vec<String>,
}

/// What the nodes log: `info`, or `LAB_LOG` when set (e.g. `info,vpn_p2p=debug`).
fn log_filter() -> String {
    std::env::var("LAB_LOG").unwrap_or_else(|_| "info".to_owned())
}

/// Runs a command, failing with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(|_| ())
}

impl Lab {
    /// Makes the namespaces, links and node folders (keys and configs) for nodes a, b, c.
    pub fn new(binary: PathBuf) -> Result<Self> {
        let mut lab = Self::bare(binary)?;
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            lab.add_node(name, i + 1)?;
        }
        Ok(lab)
    }

    /// A lab with its switch and no node yet.
    pub fn bare(binary: PathBuf) -> Result<Self> {
        // One name per lab of this run (a run may make several, one after another), and
        // short enough for interface names ("<prefix>a0").
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let prefix = format!("vpnlab{}{nth}", std::process::id() % 100_000);
        let root = std::env::temp_dir().join(&prefix);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        let switch = format!("{prefix}sw");
        let mut lab = Self { prefix, switch, binary, root, nodes: Vec::new(), routers: Vec::new() };
        lab.build_network()?;
        Ok(lab)
    }

    fn build_network(&mut self) -> Result<()> {
        // A lab of the same name left by a killed run (the same PID in another container)
        // has no owner any more: remove it first.
        let names =
            ["sw", "a", "b", "c", "d", "s", "r", "x", "e", "p", "h1", "h2", "hs", "r1", "r2", "rs"];
        let numbered = (1..=64).map(|n| n.to_string());
        let names = names.iter().map(|n| (*n).to_owned()).chain(numbered);
        for stale in names.map(|n| format!("{}{n}", self.prefix)) {
            let _ =
                Command::new("ip").args(["netns", "del", &stale]).stderr(Stdio::null()).status();
        }
        ip(&["netns", "add", &self.switch])?;
        ip(&["-n", &self.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &self.switch, "link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Makes namespace `name` with an `eth0` at `address` (with its prefix length), whose
    /// other end, in namespace `far`, is enslaved to `far`'s `br0` (`bridge`) or named
    /// `far_name` and given `far_address`.
    fn add_namespace(&self, name: &str, address: &str, far: &str, far_end: FarEnd) -> Result<()> {
        let netns = format!("{}{name}", self.prefix);
        ip(&["netns", "add", &netns])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let (inner, outer) = (format!("{}{name}0", self.prefix), format!("{}{name}1", self.prefix));
        ip(&[
            "link", "add", &inner, "netns", &netns, "type", "veth", "peer", "name", &outer,
            "netns", far,
        ])?;
        ip(&["-n", &netns, "link", "set", &inner, "name", "eth0"])?;
        ip(&["-n", &netns, "addr", "add", address, "dev", "eth0"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        match far_end {
            FarEnd::Bridge => ip(&["-n", far, "link", "set", &outer, "master", "br0", "up"]),
            FarEnd::Named(far_name, far_address) => {
                ip(&["-n", far, "link", "set", &outer, "name", far_name])?;
                ip(&["-n", far, "addr", "add", far_address, "dev", far_name])?;
                ip(&["-n", far, "link", "set", far_name, "up"])
            }
        }
    }

    /// Adds a NAT router `name` on the switch at 198.18.0.`n`: it masquerades what its
    /// home network sends out (keeping source ports where it can: endpoint-independent
    /// mapping; or, `symmetric`, a random port for every flow) and drops whatever comes
    /// in unasked, as home routers do (or, `answers`, answers it: a RST, an ICMP error). Its home network is added by [`Lab::add_home_node`].
    pub fn add_router(
        &mut self,
        name: &str,
        n: usize,
        symmetric: bool,
        answers: bool,
    ) -> Result<()> {
        let switch = self.switch.clone();
        self.add_namespace(name, &format!("198.18.0.{n}/24"), &switch, FarEnd::Bridge)?;
        let netns = format!("{}{name}", self.prefix);
        self.routers.push(netns.clone());
        run("ip", &["netns", "exec", &netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let random = if symmetric { " random" } else { "" };
        // A router that answers takes unsolicited packets itself: a SYN to a port it maps
        // nothing to gets a RST, a datagram an ICMP error, as many routers and carrier NATs do.
        let input = if answers { "accept" } else { "drop" };
        let script = format!(
            "table ip nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat;\n    oifname \"eth0\" masquerade{random}\n  }}\n}}\n\
             table inet filter {{\n  chain input {{\n    type filter hook input priority filter; policy {input};\n    iifname \"lo\" accept\n    ct state established,related accept\n    iifname \"home\" accept\n  }}\n  \
             chain forward {{\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    iifname \"home\" oifname \"eth0\" accept\n  }}\n}}\n"
        );
        let path = self.root.join(format!("{name}.nft"));
        fs::write(&path, script)?;
        run("ip", &["netns", "exec", &netns, "nft", "-f", path.to_str().context("nft path")?])?;
        Ok(())
    }

    /// Adds node `name` behind router `router`, in home network 198.19.`k`.0/24 (the
    /// router at .1, the node at .2, its route to the switch's network through the router),
    /// with the overlay addresses 100.64.0.`n` and fd00::`n`.
    pub fn add_home_node(&mut self, name: &str, router: &str, k: usize, n: usize) -> Result<()> {
        let router_netns = format!("{}{router}", self.prefix);
        let far = FarEnd::Named("home", &format!("198.19.{k}.1/24"));
        self.add_namespace(name, &format!("198.19.{k}.2/24"), &router_netns, far)?;
        let netns = format!("{}{name}", self.prefix);
        ip(&["-n", &netns, "route", "add", "198.18.0.0/24", "via", &format!("198.19.{k}.1")])?;
        self.add_identity(name, netns, format!("198.19.{k}.2"), n)
    }

    /// Adds node `name`, the `n`th: its namespace on the switch at 198.18.0.`n`, its
    /// folder with a new identity and the overlay addresses 100.64.0.`n` and fd00::`n`.
    /// No configuration is written.
    pub fn add_node(&mut self, name: &str, n: usize) -> Result<()> {
        let switch = self.switch.clone();
        self.add_namespace(name, &format!("198.18.0.{n}/24"), &switch, FarEnd::Bridge)?;
        let netns = format!("{}{name}", self.prefix);
        self.add_identity(name, netns, format!("198.18.0.{n}"), n)
    }

    /// Makes node `name`'s folder with a new identity and books it.
    fn add_identity(
        &mut self,
        name: &str,
        netns: String,
        underlay: String,
        n: usize,
    ) -> Result<()> {
        let dir = self.root.join(name);
        let init = run(
            self.binary.to_str().context("binary path")?,
            &[
                "init",
                "--dir",
                dir.to_str().context("dir")?,
                "--address",
                &format!("100.64.0.{n}/10"),
            ],
        )?;
        let peer_id = String::from_utf8_lossy(&init.stdout).trim().to_owned();
        self.nodes.push(Node {
            name: name.to_owned(),
            netns,
            underlay,
            overlay: format!("100.64.0.{n}"),
            overlay6: format!("fd00::{n}"),
            peer_id,
            dir,
            process: None,
        });
        Ok(())
    }

    /// Writes each node's configuration for the end-to-end scenario. `a` knows `b` fully
    /// and `c` only as an allowed peer ID; `b` knows everyone; `c` knows every overlay
    /// address but only `b`'s network address (its bootstrap peer), so `a` and `c` find each
    /// other by peer routing. `a` and `b` have TUN offload (the default), `c` has not, so
    /// super-packets from `a` are cut into packets at `c`. `LAB_OFFLOAD=0` turns offload off
    /// everywhere.
    pub fn write_configs(&self) -> Result<()> {
        let offload = std::env::var("LAB_OFFLOAD").map_or(true, |v| v != "0");
        self.write_configs_with(&Setup { offload, plain: &["c"], ..Setup::default() })
    }

    /// Writes each node's configuration as `setup` says.
    pub fn write_configs_with(&self, setup: &Setup) -> Result<()> {
        for node in &self.nodes {
            let mut text = String::new();
            writeln!(
                text,
                "[node]\nidentity_file = \"identity.key\"\naddress = \"{}/10\"\naddress6 = \"{}/64\"",
                node.overlay, node.overlay6
            )?;
            writeln!(
                text,
                "[interface]\nname = \"vpn-{}\"\nmtu = {}\noffload = {}",
                node.name,
                setup.mtu,
                setup.offload && !setup.plain.contains(&node.name.as_str())
            )?;
            let listen = if setup.wildcard { "0.0.0.0" } else { node.underlay.as_str() };
            writeln!(
                text,
                "[network]\nlisten = [\"/ip4/{listen}/tcp/4001\", \"/ip4/{listen}/udp/4001/quic-v1\"]"
            )?;
            if setup.streams_only {
                writeln!(text, "datagrams = false")?;
            }
            let others: Vec<&Node> = self.nodes.iter().filter(|n| n.name != node.name).collect();
            let pair_only = setup.pair_only;
            if node.name == "a" && !pair_only {
                let c = self.node("c")?;
                writeln!(text, "allowed_peers = [\"{}\"]", c.peer_id)?;
            }
            if node.name == "c" && !pair_only {
                let b = self.node("b")?;
                writeln!(text, "bootstrap = [\"/ip4/{}/tcp/4001/p2p/{}\"]", b.underlay, b.peer_id)?;
            }
            let relayed = pair_only && setup.relayed;
            if relayed && node.name != "c" {
                let c = self.node("c")?;
                writeln!(text, "bootstrap = [\"/ip4/{}/tcp/4001/p2p/{}\"]", c.underlay, c.peer_id)?;
            }
            if relayed && node.name == "c" {
                writeln!(text, "external_addresses = [\"/ip4/{}/tcp/4001\"]", node.underlay)?;
            }
            writeln!(
                text,
                "[discovery]\nmdns = false\nnegative_cache_ttl = \"1s\"\nrepublish_interval = \"20m\""
            )?;
            writeln!(
                text,
                "[metrics]\nlisten = \"127.0.0.1:9464\"\n[control]\nsocket = \"{}\"",
                node.dir.join("control.sock").display()
            )?;
            if relayed {
                let serve = node.name == "c";
                writeln!(text, "[relay]\nserve = {serve}\nautonat = false\nhole_punch = false")?;
            }
            for other in others {
                let pair = [node.name.as_str(), other.name.as_str()];
                let skip = if relayed { false } else { pair_only && pair.contains(&"c") };
                if (!pair_only && pair == ["a", "c"]) || skip {
                    continue;
                }
                let endpoint = if relayed || (!pair_only && pair == ["c", "a"]) {
                    String::new()
                } else if setup.quic {
                    format!("\"/ip4/{}/udp/4001/quic-v1\"", other.underlay)
                } else {
                    format!("\"/ip4/{}/tcp/4001\"", other.underlay)
                };
                writeln!(
                    text,
                    "[[peers]]\npeer_id = \"{}\"\naddresses = [\"{}\", \"{}\"]\nendpoints = [{endpoint}]",
                    other.peer_id, other.overlay, other.overlay6
                )?;
            }
            fs::write(node.dir.join("vpn-node.toml"), text)?;
        }
        Ok(())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| format!("no node {name}"))
    }

    /// Starts `vpn-node up` in the node's namespace, logging to its folder.
    pub fn start(&mut self, name: &str) -> Result<()> {
        self.start_with(name, &[])
    }

    /// [`Lab::start`] with `options` given to `vpn-node` before `up`.
    pub fn start_with(&mut self, name: &str, options: &[&str]) -> Result<()> {
        let binary = self.binary.clone();
        let config = self.node(name)?.dir.join("vpn-node.toml");
        let config = config.to_str().context("config path")?.to_owned();
        // `LAB_WRAP` runs the node under another program (a heap profiler, say): its words
        // come first, then the node's command line.
        let wrap = std::env::var("LAB_WRAP").unwrap_or_default();
        let mut words: Vec<&str> = wrap.split_whitespace().collect();
        let binary = match words.is_empty() {
            true => binary,
            false => PathBuf::from(words.remove(0)),
        };
        let node_binary = self.binary.to_str().context("binary path")?.to_owned();
        if !wrap.is_empty() {
            words.push(&node_binary);
        }
        words.extend(options);
        words.extend(["up", "--config", &config]);
        let child = self
            .spawn(name, &binary, &words, &[("RUST_LOG", &log_filter())])
            .context("start vpn-node")?;
        self.node_mut(name)?.process = Some(child);
        Ok(())
    }

    /// Starts `program` in the node's namespace, appending its output to the node's log.
    /// It dies with this process, even when this process is killed outright.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Child> {
        let node = self.node(name)?;
        let log =
            fs::OpenOptions::new().create(true).append(true).open(node.dir.join("node.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.netns, "setpriv", "--pdeathsig", "TERM", "--"])
            .arg(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(child)
    }

    /// Stops a node with SIGTERM (SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        if let Some(child) = self.node_mut(name)?.process.take() {
            stop_child(child);
        }
        Ok(())
    }

    /// Kills a node with SIGKILL, as a crash or the OOM killer would, and waits for it.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let node = self.node_mut(name)?;
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Waits up to `within` for a node to exit by itself; returns its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, name: &str, within: Duration) -> Result<Option<ExitStatus>> {
        let node = self.node_mut(name)?;
        let Some(child) = node.process.as_mut() else { bail!("node {name} is not running") };
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = child.try_wait()? {
                node.process = None;
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    /// Changes a node's configuration file with `edit` (before it is started).
    pub fn edit_config(&self, name: &str, edit: impl FnOnce(String) -> String) -> Result<()> {
        let path = self.node(name)?.dir.join("vpn-node.toml");
        let text = fs::read_to_string(&path)?;
        fs::write(&path, edit(text))?;
        Ok(())
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name == name).with_context(|| format!("no node {name}"))
    }

    /// Waits until the node's TUN interface is up (its node started), or fails.
    pub fn wait_up(&self, name: &str, within: Duration) -> Result<()> {
        let node = self.node(name)?;
        let start = Instant::now();
        while start.elapsed() < within {
            let out = Command::new("ip")
                .args(["-n", &node.netns, "link", "show", &format!("vpn-{name}")])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node {name} did not come up; its log:\n{}", self.log(name))
    }

    /// The node's log so far.
    pub fn log(&self, name: &str) -> String {
        self.node(name)
            .map(|n| fs::read_to_string(n.dir.join("node.log")).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Runs a command in a node's namespace; it is killed after [`EXEC_LIMIT`].
    pub fn exec(&self, name: &str, args: &[&str]) -> Result<Output> {
        self.exec_within(name, args, EXEC_LIMIT)
    }

    /// Runs a command in a node's namespace, killing it if it runs longer than `limit`
    /// (a hung tool fails the run with its output instead of stalling it).
    pub fn exec_within(&self, name: &str, args: &[&str], limit: Duration) -> Result<Output> {
        Ok(Command::new("ip").args(self.bounded(name, args, limit)?).output()?)
    }

    /// The `ip` arguments that run `args` in a node's namespace under coreutils' `timeout`:
    /// TERM after `limit`, KILL 5 s later.
    pub fn bounded(&self, name: &str, args: &[&str], limit: Duration) -> Result<Vec<String>> {
        let node = self.node(name)?;
        let mut all: Vec<String> = ["netns", "exec", node.netns.as_str(), "timeout", "-k", "5"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        all.push(format!("{}", limit.as_secs().max(1)));
        all.extend(args.iter().map(|s| (*s).to_owned()));
        Ok(all)
    }

    /// Runs iperf3 from `client` to a server on `server` bound to `target`; returns the
    /// client's JSON report. Both ends are bounded in time, so a stalled tunnel fails the
    /// run instead of hanging it.
    pub fn iperf(
        &self,
        client: &str,
        server: &str,
        target: &str,
        extra: &[&str],
    ) -> Result<String> {
        self.iperf_for(client, server, target, extra, Duration::from_secs(10))
    }

    /// [`Lab::iperf`] with `length` seconds of traffic.
    pub fn iperf_for(
        &self,
        client: &str,
        server: &str,
        target: &str,
        extra: &[&str],
        length: Duration,
    ) -> Result<String> {
        let limit = IPERF_LIMIT + length;
        let listen = ["iperf3", "-s", "-1", "-B", target];
        let mut daemon = Command::new("ip")
            .args(self.bounded(server, &listen, limit + Duration::from_secs(30))?)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        let seconds = length.as_secs().max(1).to_string();
        let mut args = vec!["iperf3", "-c", target, "-t", &seconds, "-J"];
        args.extend_from_slice(&["--connect-timeout", "3000"]);
        args.extend_from_slice(extra);
        // The server needs a moment to listen: try to connect until it does.
        let start = Instant::now();
        let outcome = loop {
            let out = self.exec_within(client, &args, limit)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // iperf3 may exit 0 with an "error" in its report (a refused connect, say).
            let error = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|report| report.get("error").map(ToString::to_string));
            if out.status.success() && error.is_none() {
                break Ok(text);
            }
            if start.elapsed() > Duration::from_secs(20) || !text.contains("Connection refused") {
                break Err(anyhow::anyhow!(
                    "iperf3 {} failed ({}): {text}",
                    extra.join(" "),
                    out.status
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        // The server ends after its one test; give it a moment, then make sure it is gone.
        end_child(&mut daemon, false, Duration::from_secs(5));
        outcome
    }

    /// Applies an nftables `script` in a node's namespace (kept as `<file>.nft` in the
    /// lab's folder).
    pub fn nft(&self, name: &str, file: &str, script: &str) -> Result<()> {
        let path = self.root.join(format!("{file}.nft"));
        fs::write(&path, script)?;
        let out = self.exec(name, &["nft", "-f", path.to_str().context("nft script path")?])?;
        if !out.status.success() {
            bail!("nft -f in {name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A node's metrics in the Prometheus text format (empty when it does not answer).
    pub fn metrics(&self, name: &str) -> String {
        let script = "exec 3<>/dev/tcp/127.0.0.1/9464; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
        self.exec_within(name, &["bash", "-c", script], Duration::from_secs(5))
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Pings `dst` from `from` until a reply comes or `within` passes; returns the round
    /// trip of the first reply.
    pub fn ping_until(&self, from: &str, dst: &str, within: Duration) -> Result<String> {
        let start = Instant::now();
        while start.elapsed() < within {
            let out = self.exec(from, &["ping", "-c", "1", "-W", "1", dst])?;
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                let rtt = text
                    .split("time=")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .unwrap_or("?");
                return Ok(format!("{rtt} ms"));
            }
            // A failed ping may return at once (no route yet): do not spin.
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("no reply from {dst} to {from} within {within:?}")
    }

    /// A node's Prometheus counter `line_prefix` (e.g. `vpn_packets_dropped_total{reason="spoofed"}`).
    pub fn counter(&self, name: &str, metric: &str) -> Result<u64> {
        self.metrics(name)
            .lines()
            .find_map(|l| l.strip_prefix(metric).and_then(|v| v.trim().parse().ok()))
            .with_context(|| format!("no {metric} in the metrics of {name}"))
    }

    /// Runs the lab's `vpn-node` with `args` (outside every namespace); its standard output.
    pub fn vpn_node(&self, args: &[&str]) -> Result<String> {
        let out = run(self.binary.to_str().context("binary")?, args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A running node's answer to `vpn-node <request> --json` (`status`, `peers`).
    pub fn ask(&self, name: &str, request: &str) -> Result<serde_json::Value> {
        let config = self.node(name)?.dir.join("vpn-node.toml");
        let config = config.to_str().context("config path")?;
        let text = self.vpn_node(&[request, "--json", "--config", config])?;
        serde_json::from_str(&text)
            .with_context(|| format!("{name}'s {request} is not JSON: {text}"))
    }

    /// `from`'s view of `to` in `vpn-node peers --json` (none while not connected).
    pub fn peer_view(&self, from: &str, to: &str) -> Result<Option<serde_json::Value>> {
        let peer = self.node(to)?.peer_id.clone();
        let peers = self.ask(from, "peers")?;
        let list = peers.get("peers").and_then(|p| p.as_array()).context("peers list")?;
        Ok(list
            .iter()
            .find(|p| p.get("peer_id").and_then(|i| i.as_str()) == Some(peer.as_str()))
            .filter(|p| p.get("connected").and_then(serde_json::Value::as_bool) == Some(true))
            .cloned())
    }

    /// The path (`direct` or `relayed`) `from` takes to `to` now, if connected.
    pub fn path_kind(&self, from: &str, to: &str) -> Result<Option<String>> {
        let path = self.peer_view(from, to)?;
        Ok(path.and_then(|p| p.get("path").and_then(|k| k.as_str()).map(str::to_owned)))
    }

    /// The data path (`datagram`, `stream direct` or `stream relayed`) packets from `from`
    /// to `to` take now, if connected.
    pub fn data_path(&self, from: &str, to: &str) -> Result<Option<String>> {
        let path = self.peer_view(from, to)?;
        Ok(path.and_then(|p| p.get("data_path").and_then(|k| k.as_str()).map(str::to_owned)))
    }

    /// Waits (at most `within`) until packets from `from` to `to` take `kind`; returns how
    /// long that took.
    pub fn wait_data_path(
        &self,
        from: &str,
        to: &str,
        kind: &str,
        within: Duration,
    ) -> Result<Duration> {
        let start = std::time::Instant::now();
        loop {
            if self.data_path(from, to)?.as_deref() == Some(kind) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!(
                    "{from} does not reach {to} over {kind} within {within:?} (now {:?})",
                    self.data_path(from, to)?
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Prints the last lines of each node's log (up to a panic's message, not the
    /// backtrace after it): what a failed check needs to be understood.
    pub fn print_log_tails(&self, names: &[&str]) {
        for node in names {
            let log = self.log(node);
            let end = log.find(" panicked at ").map_or(log.len(), |at| (at + 400).min(log.len()));
            let end = (0..=end).rev().find(|i| log.is_char_boundary(*i)).unwrap_or(0);
            let tail: Vec<String> = log[..end].lines().rev().take(15).map(str::to_owned).collect();
            eprintln!("--- last lines of node {node}'s log ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }

    /// The PID of a running node.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.node(name).ok()?.process.as_ref().map(Child::id)
    }

    /// The `vpn-node` binary the lab runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The lab's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Where the far end of a namespace's link goes.
enum FarEnd<'a> {
    /// Into the far namespace's bridge `br0`.
    Bridge,
    /// An interface of its own there, with this name and address.
    Named(&'a str, &'a str),
}

fn stop_child(mut child: Child) {
    end_child(&mut child, true, Duration::from_secs(10));
}

/// Ends a child: SIGTERM first when `term`, then waits up to `grace` before killing it.
pub fn end_child(child: &mut Child, term: bool, grace: Duration) {
    if term {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if start.elapsed() > grace {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.process.take() {
                stop_child(child);
            }
        }
        for node in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &node.netns]).status();
        }
        for router in &self.routers {
            let _ = Command::new("ip").args(["netns", "del", router]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.switch]).status();
        if std::env::var_os("LAB_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}
