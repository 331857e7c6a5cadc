//! `vpn-node`: the command-line program of a vpn-node peer. It parses arguments, loads the
//! configuration and identity, and runs a [`vpn_service::VpnNode`]; everything else lives in
//! the library crates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use vpn_api::VpnService;
use vpn_errors::ServiceError;
use vpn_metrics::AtomicMetrics;
use vpn_service::{CREATE_TUN, VpnNode, create_identity, load_identity};

mod ca;
mod privilege;

/// A peer-to-peer mesh VPN over libp2p.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// How log lines are written: plain text (colours only at a terminal) or one JSON
    /// object per event.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Plain text; colours only when stderr is a terminal.
    Text,
    /// One JSON object per event.
    Json,
}

/// The logger's filter, which `[log] level` sets and `reload` changes (unless `RUST_LOG`
/// is set: it takes the configuration's place).
#[derive(Clone)]
struct Logs {
    filter: tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    from_env: bool,
}

impl Logs {
    /// Writes log lines to stderr in `format`, at `info` (or `RUST_LOG`) until a
    /// configuration says otherwise.
    fn init(format: LogFormat) -> Self {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        // A `RUST_LOG` that is not a filter is passed over, as if unset.
        let from_env = EnvFilter::try_from_default_env().ok();
        let filter_from_env = from_env.is_some();
        let filter = from_env.unwrap_or_else(|| EnvFilter::new("info"));
        let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        match format {
            // Colours only for a person at a terminal, not in a journal or a log file.
            LogFormat::Text => registry
                .with(layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
                .init(),
            LogFormat::Json => registry.with(layer.json()).init(),
        }
        Self { filter: handle, from_env: filter_from_env }
    }

    /// The filter `level` stands for. Errors: it is not a filter (the key is named).
    fn parse(level: &str) -> Result<EnvFilter> {
        EnvFilter::try_new(level).map_err(|e| {
            anyhow::Error::new(vpn_errors::ConfigError::new(
                "log.level",
                format!("{level:?}"),
                e.to_string(),
            ))
        })
    }

    /// Puts `level` in force, unless `RUST_LOG` chose the filter.
    fn apply(&self, level: EnvFilter) -> Result<()> {
        if !self.from_env {
            self.filter.reload(level).context("cannot change the log filter")?;
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a new identity key (mode 0600) and a commented configuration file.
    Init {
        /// Folder for `identity.key` and `vpn-node.toml`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// This node's overlay address with the overlay's prefix length.
        #[arg(long, default_value = "100.64.0.1/10")]
        address: String,
        /// Its overlay IPv6 address with the overlay's prefix length, if any.
        #[arg(long)]
        address6: Option<String>,
        /// A network CA directory (`vpn-node ca init`): the node gets a certificate for its
        /// addresses (`node.crt`) and trusts that CA, ready to join with one bootstrap
        /// address.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The certificate's name (with `--ca`).
        #[arg(long, default_value = "", requires = "ca")]
        name: String,
        /// How long the certificate is valid (with `--ca`).
        #[arg(long, default_value = "90d", requires = "ca", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
    },
    /// Writes a new pre-shared key (mode 0600) for a private network (`[network]
    /// psk_file`): every node of the network gets the same file.
    Psk {
        /// Where to write it (it must not exist).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// The network CA: makes it, signs member certificates and revocation lists, shows
    /// what a certificate says.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Runs the node in the foreground until SIGINT or SIGTERM.
    Up {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Shows the running node's identity, addresses and counters.
    Status {
        /// The configuration file naming the control socket.
        #[arg(long, short)]
        config: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows the running node's peers and the health of their streams.
    Peers {
        /// The configuration file naming the control socket.
        #[arg(long, short)]
        config: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pings a peer over the tunnel: the path to it and the round trip of the tunnel's own
    /// PING frames, a second apart.
    Ping {
        /// An overlay address (its owner is looked up) or a peer ID.
        target: String,
        /// The configuration file naming the control socket.
        #[arg(long, short)]
        config: PathBuf,
        /// PINGs to send.
        #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(vpn_service::MAX_PINGS)))]
        count: u32,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Makes the running node read its configuration file again and apply `[[peers]]`,
    /// `network.allowed_peers`, `[firewall]` and `[log]` without dropping established
    /// flows (SIGHUP does the same). A change only a restart applies is named, and nothing
    /// is applied.
    Reload {
        /// The configuration file naming the control socket.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Prints the manual page (roff; `vpn-node man | man -l -`).
    Man,
    /// Prints this node's peer ID.
    Id {
        /// The configuration file naming the identity key.
        #[arg(long, short, conflicts_with = "identity")]
        config: Option<PathBuf>,
        /// The identity key file.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // `up` reads what only root may read and gives root up while it has one thread: every
    // thread the runtime starts then has the node's user and CAP_NET_ADMIN alone.
    let prepared = match &cli.command {
        Command::Up { config } => match Prepared::load(config) {
            Ok(prepared) => Some(prepared),
            Err(e) => return fail(&e),
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, prepared)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Says what went wrong (and what to do about it, when we know) and fails.
fn fail(e: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {}", report(e));
    if let Some(hint) = hint(e) {
        eprintln!("hint: {hint}");
    }
    std::process::ExitCode::FAILURE
}

/// The one line `up` prints once the node carries traffic: who it is, its overlay
/// addresses, where it listens and its TUN device.
async fn readiness(node: &VpnNode) -> String {
    let join = |items: Vec<String>| if items.is_empty() { "-".to_owned() } else { items.join(",") };
    let overlay = join(node.own_addresses().iter().map(ToString::to_string).collect());
    let listen = join(node.listen_addrs().await.iter().map(ToString::to_string).collect());
    let tun = node.tun_name().await.unwrap_or_else(|| "-".to_owned());
    format!("ready: peer {} overlay {overlay} listen {listen} tun {tun}", node.local_peer_id())
}

/// The chain of causes on one line, each said once.
fn report(error: &anyhow::Error) -> String {
    vpn_service::error_chain(error.as_ref())
}

/// What the operator can do about an error we recognise.
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    let denied = error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
            == Some(std::io::ErrorKind::PermissionDenied)
    });
    let tun = error.chain().any(|cause| {
        cause.downcast_ref::<ServiceError>().is_some_and(|e| e.operation() == CREATE_TUN)
    });
    (denied && tun).then_some(
        "creating the TUN device needs root or CAP_NET_ADMIN: run vpn-node as root, or give \
         it the capability (setcap cap_net_admin+ep \"$(command -v vpn-node)\")",
    )
}

/// Two malloc arenas instead of the C library's eight per core, unless the operator set
/// `MALLOC_ARENA_MAX`: every runtime thread otherwise grows an arena of its own to its peak
/// and keeps it, so a node's memory creeps up under a long load (over QUIC its peak was 59
/// to 70 MiB with the default and 37 MiB with two arenas, docs/benchmarks.md).
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of the C library's allocator; it is called
        // before any other thread exists.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

/// What `up` reads and does before any thread exists: the configuration, the identity
/// (both perhaps readable by root only), and the change to `[node] user`.
struct Prepared {
    config: vpn_config::VpnConfig,
    keypair: libp2p_identity::Keypair,
    /// The user it became, if it changed.
    became: Option<(String, u32)>,
    /// The TUN device, opened as root before root was given up.
    tun: Option<vpn_tun::OpenTun>,
}

impl Prepared {
    fn load(config_path: &Path) -> Result<Self> {
        let config = load_config(config_path)?;
        let keypair = load_identity(&config.node.identity_file)?;
        let (mut became, mut tun) = (None, None);
        if let Some(user) = config.node.user.as_ref().filter(|_| privilege::is_root()) {
            // The device file is root's: the interface is made first.
            let tun_config = vpn_service::tun_config(&config)?;
            let opened = vpn_tun::OpenTun::open(&tun_config).map_err(|e| {
                anyhow::Error::new(
                    ServiceError::new(
                        vpn_errors::ServiceErrorKind::Startup,
                        "vpn node",
                        CREATE_TUN,
                    )
                    .with_source(e),
                )
            })?;
            tun = Some(opened);
            became = Some((user.clone(), privilege::drop_to(user)?));
        }
        Ok(Self { config, keypair, became, tun })
    }
}

async fn run(cli: Cli, prepared: Option<Prepared>) -> Result<()> {
    let logs = Logs::init(cli.log_format);
    match cli.command {
        Command::Init { dir, address, address6, ca, name, expires } => {
            let ca = ca.map(|dir| Signer { dir, name, expires });
            init(&dir, &address, address6.as_deref(), ca)
        }
        Command::Ca { command } => ca::run(command),
        Command::Psk { out } => psk(&out),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vpn-node", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => Ok(clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?),
        Command::Up { config } => {
            let prepared = prepared.context("the node was not prepared")?;
            up(&config, prepared, logs).await
        }
        Command::Id { config, identity } => id(config.as_deref(), identity.as_deref()),
        Command::Status { config, json } => ask(&config, "status", json).await,
        Command::Peers { config, json } => ask(&config, "peers", json).await,
        Command::Ping { target, config, count, json } => ping(&config, &target, count, json).await,
        Command::Reload { config } => reload(&config).await,
    }
}

fn load_config(path: &Path) -> Result<vpn_config::VpnConfig> {
    vpn_config::load_file(path)
        .with_context(|| format!("configuration {} is not usable", path.display()))
}

fn psk(out: &Path) -> Result<()> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .context("cannot read /dev/urandom")?;
    let text = vpn_p2p::PreSharedKey::new(key).to_string();
    let mut file =
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {}; give every node of the network this file as [network] psk_file",
        out.display()
    );
    Ok(())
}

/// The CA that signs a new node's certificate at `init`.
struct Signer {
    dir: PathBuf,
    name: String,
    expires: std::time::Duration,
}

fn init(dir: &Path, address: &str, address6: Option<&str>, ca: Option<Signer>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = dir.join("vpn-node.toml");
    if config_path.exists() {
        bail!("{} exists already; not overwriting it", config_path.display());
    }
    let mut text = vpn_config::TEMPLATE.replacen(
        "# address = \"100.64.0.1/10\"",
        &format!("address = \"{address}\""),
        1,
    );
    if let Some(address6) = address6 {
        text =
            text.replacen("# address6 = \"fd00::1/64\"", &format!("address6 = \"{address6}\""), 1);
    }
    if let Some(ca) = &ca {
        let public = ca::hex(&ca::ca_public(&ca.dir)?.encode_protobuf());
        text = text
            .replacen("# ca = [\"<text of ca.pub>\"]", &format!("ca = [\"{public}\"]"), 1)
            .replacen("# certificate = \"node.crt\"", "certificate = \"node.crt\"", 1);
    }
    // Check the result before writing anything: a bad address stops here.
    let config = vpn_config::load_str(&text, []).with_context(|| format!("--address {address}"))?;
    let keypair = create_identity(&dir.join("identity.key"))?;
    let peer = keypair.public().to_peer_id();
    if let Some(ca) = ca {
        let v4 = config.node.address.map(|a| vpn_api::IpNet::from(std::net::IpAddr::V4(a.addr())));
        let v6 = config.node.address6.map(|a| vpn_api::IpNet::from(std::net::IpAddr::V6(a.addr())));
        let addresses = v4.into_iter().chain(v6).collect();
        let (_, cert) = ca::sign(&ca.dir, peer, addresses, Vec::new(), ca.name, ca.expires)?;
        let cert_path = dir.join("node.crt");
        std::fs::write(&cert_path, cert)
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
    }
    std::fs::write(&config_path, text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("{peer}");
    eprintln!("wrote {} and {}", dir.join("identity.key").display(), config_path.display());
    Ok(())
}

fn id(config: Option<&Path>, identity: Option<&Path>) -> Result<()> {
    let path = match (config, identity) {
        (_, Some(identity)) => identity.to_owned(),
        (Some(config), None) => load_config(config)?.node.identity_file,
        (None, None) => PathBuf::from("identity.key"),
    };
    println!("{}", load_identity(&path)?.public().to_peer_id());
    Ok(())
}

async fn ask(config: &Path, request: &str, json: bool) -> Result<()> {
    let socket = load_config(config)?.control.socket;
    let reply = vpn_service::query_control(&socket, request).await?;
    if json {
        println!("{reply}");
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(&reply).context("the node's answer is not JSON")?;
    let mut out = String::new();
    render(&value, 0, &mut out);
    print!("{out}");
    Ok(())
}

async fn ping(config: &Path, target: &str, count: u32, json: bool) -> Result<()> {
    target.parse::<vpn_service::PingTarget>().map_err(anyhow::Error::msg)?;
    let socket = load_config(config)?.control.socket;
    let reply = vpn_service::query_control(&socket, &format!("ping {target} {count}")).await?;
    let value: serde_json::Value =
        serde_json::from_str(&reply).context("the node's answer is not JSON")?;
    if let Some(error) = value.get("error").and_then(serde_json::Value::as_str) {
        anyhow::bail!("ping {target}: {error}");
    }
    let received = value.get("received").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if json {
        println!("{reply}");
    } else {
        print!("{}", ping_text(target, &value));
    }
    anyhow::ensure!(received > 0, "ping {target}: no PONG came back");
    Ok(())
}

/// A ping answer for a person: the path, each round trip, and a summary.
fn ping_text(target: &str, value: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = |key: &str| value.get(key).and_then(serde_json::Value::as_str).unwrap_or("-");
    let number = |v: &serde_json::Value| v.as_f64();
    let path: Vec<&str> = value
        .get("path")
        .and_then(serde_json::Value::as_array)
        .map(|p| p.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let via = if path.is_empty() { "-".to_owned() } else { path.join(", ") };
    let mut out = format!("PING {target}: peer {} via {via}\n", text("peer_id"));
    if let Some(open) = value.get("open_ms").and_then(number) {
        let _ = writeln!(out, "stream opened in {open:.3} ms");
    }
    let rtts: Vec<Option<f64>> = value
        .get("rtt_ms")
        .and_then(serde_json::Value::as_array)
        .map(|r| r.iter().map(number).collect())
        .unwrap_or_default();
    for (seq, rtt) in rtts.iter().enumerate() {
        match rtt {
            Some(ms) => writeln!(out, "seq {}: {ms:.3} ms", seq + 1),
            None => writeln!(out, "seq {}: lost (no PONG in time)", seq + 1),
        }
        .unwrap_or_default();
    }
    let answered: Vec<f64> = rtts.iter().flatten().copied().collect();
    let _ = write!(out, "{} sent, {} answered", rtts.len(), answered.len());
    if !answered.is_empty() {
        let min = answered.iter().copied().fold(f64::INFINITY, f64::min);
        let max = answered.iter().copied().fold(0.0, f64::max);
        let avg = answered.iter().sum::<f64>() / answered.len() as f64;
        let _ = write!(out, "; rtt min/avg/max {min:.3}/{avg:.3}/{max:.3} ms");
    }
    out.push('\n');
    out
}

/// Renders a JSON answer as indented `key: value` lines.
fn render(value: &serde_json::Value, depth: usize, out: &mut String) {
    use std::fmt::Write as _;
    let pad = "  ".repeat(depth);
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if v.is_object() || v.is_array() {
                    let _ = writeln!(out, "{pad}{key}:");
                    render(v, depth + 1, out);
                } else {
                    let _ = writeln!(
                        out,
                        "{pad}{key}: {}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    );
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                if item.is_object() {
                    let _ = writeln!(out, "{pad}-");
                    render(item, depth + 1, out);
                } else {
                    let _ = writeln!(
                        out,
                        "{pad}- {}",
                        item.as_str().map_or_else(|| item.to_string(), str::to_owned)
                    );
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{other}");
        }
    }
}

async fn up(config_path: &Path, prepared: Prepared, logs: Logs) -> Result<()> {
    let Prepared { config, keypair, became, tun } = prepared;
    logs.apply(Logs::parse(&config.log.level)?)?;
    if let Some((user, uid)) = became {
        tracing::info!(%user, uid, "running as an unprivileged user with CAP_NET_ADMIN only");
    }
    let metrics_listen = config.metrics.listen;
    let socket = config.control.socket.clone();
    // Signals first: a SIGHUP or SIGTERM while the node starts must not kill it outright.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // The program's node: every part the default, the counters kept for Prometheus.
    let metrics = Arc::new(AtomicMetrics::new());
    let mut builder = VpnNode::builder(config, keypair).metrics(metrics.clone());
    if let Some(tun) = tun {
        let tun = tun.start().await.context("the node could not start")?;
        builder = builder.tun(Arc::new(tun.with_metrics(metrics.clone())));
    }
    let node = Arc::new(builder.build());
    node.start().await.context("the node could not start")?;
    if let Some(addr) = metrics_listen {
        tokio::spawn(serve_metrics(addr, metrics));
    }
    let reloader: vpn_service::Reloader = {
        let (path, node, logs) = (config_path.to_owned(), node.clone(), logs.clone());
        Arc::new(move || {
            let (path, node, logs) = (path.clone(), node.clone(), logs.clone());
            Box::pin(async move { reload_from(&path, &node, &logs).await.map_err(|e| report(&e)) })
        })
    };
    let control = match vpn_service::serve_control(&socket, node.clone(), Some(reloader.clone()))
        .await
    {
        Ok(task) => Some(task),
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "no control socket: `status` and `peers` will not answer");
            None
        }
    };
    println!("{}", readiness(&node).await);
    let fault = loop {
        tokio::select! {
            _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); break None }
            _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); break None }
            _ = hangup.recv() => match reloader().await {
                Ok(changed) => tracing::info!(?changed, "SIGHUP: configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
            },
            fault = node.fatal_fault() => break Some(fault),
        }
    };
    if let Some(control) = control {
        control.abort();
        let _ = control.await;
    }
    node.stop().await?;
    match fault {
        // Exiting lets a supervisor (systemd, say) start the node afresh.
        Some(fault) => Err(anyhow::anyhow!("{fault}: stopped")),
        None => Ok(()),
    }
}

/// Reads the configuration at `path` again and applies it to `node` and the logger: the
/// sections that changed, or why nothing was applied.
async fn reload_from(path: &Path, node: &VpnNode, logs: &Logs) -> Result<Vec<&'static str>> {
    let config = load_config(path)?;
    let level = Logs::parse(&config.log.level)?;
    let changed = node.reload(config).await.context("the running node refused the change")?;
    logs.apply(level)?;
    Ok(changed)
}

/// `vpn-node reload`: asks the running node to reload, and says what changed.
async fn reload(config: &Path) -> Result<()> {
    let socket = load_config(config)?.control.socket;
    let reply = vpn_service::query_control(&socket, "reload").await?;
    let value: serde_json::Value =
        serde_json::from_str(&reply).context("the node's answer is not JSON")?;
    if let Some(error) = value.get("error").and_then(serde_json::Value::as_str) {
        bail!("reload: {error}");
    }
    let changed: Vec<&str> = value
        .get("reloaded")
        .and_then(serde_json::Value::as_array)
        .map(|c| c.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    if changed.is_empty() {
        println!("reloaded: nothing changed");
    } else {
        println!("reloaded: {}", changed.join(", "));
    }
    Ok(())
}

/// Metrics connections served at once; one past them is closed at once.
const METRICS_CONNECTIONS: usize = 8;
/// A metrics connection sends its request and takes the answer within this, or is closed.
const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the Prometheus text exposition on `addr`.
async fn serve_metrics(addr: std::net::SocketAddr, metrics: Arc<AtomicMetrics>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics");
            return;
        }
    };
    tracing::info!(%addr, "serving metrics");
    if addr.ip().is_unspecified() {
        tracing::warn!(
            %addr,
            "metrics are served on every address, the overlay's included: any member can \
             read them; [metrics] listen on 127.0.0.1 (or one address) chooses who may"
        );
    }
    serve_metrics_on(listener, metrics, METRICS_CONNECTIONS, METRICS_TIMEOUT).await;
}

/// Answers every connection on `listener` with the metrics: at most `most` at once (the
/// rest are closed as they come), each within `within`, so silent or slow clients hold
/// neither tasks nor sockets for long.
async fn serve_metrics_on(
    listener: tokio::net::TcpListener,
    metrics: Arc<AtomicMetrics>,
    most: usize,
    within: std::time::Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(most));
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors, say: a moment later there may be some again.
                tracing::debug!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let mut body = metrics.render_prometheus();
        let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        body.push_str(&format!(
            "# HELP vpn_runtime_tasks Tasks alive in the node's runtime.\n# TYPE vpn_runtime_tasks gauge\nvpn_runtime_tasks {tasks}\n"
        ));
        tokio::spawn(async move {
            let _slot = slot;
            let answer = async {
                // Read the request first: closing with it unread would reset the
                // connection and could lose the answer.
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            };
            let _ = tokio::time::timeout(within, answer).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, hint, ping_text, report, serve_metrics_on};
    use clap::CommandFactory;
    use std::io;
    use vpn_errors::{ServiceError, ServiceErrorKind, VpnError};

    fn tun_denied() -> anyhow::Error {
        let io = io::Error::from(io::ErrorKind::PermissionDenied);
        let cause = VpnError::from(vpn_errors::NetworkError::from_io("open /dev/net/tun", io));
        let err = ServiceError::new(ServiceErrorKind::Startup, "vpn node", vpn_service::CREATE_TUN)
            .with_source(cause);
        anyhow::Error::new(err).context("starting the node")
    }

    #[test]
    fn completions_and_the_manual_cover_every_command() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "vpn-node",
            &mut script,
        );
        let mut page = Vec::new();
        let rendered = clap_mangen::Man::new(Cli::command()).render(&mut page);
        assert!(rendered.is_ok());
        let (script, page) = (String::from_utf8_lossy(&script), String::from_utf8_lossy(&page));
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        for command in Cli::command().get_subcommands().map(|c| c.get_name().to_owned()) {
            assert!(script.contains(&command), "bash completion lacks {command}");
            assert!(page.contains(&command), "the manual lacks {command}");
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let line = report(&tun_denied());
        assert_eq!(line.matches("denied").count(), 1, "{line}");
        assert!(line.starts_with("starting the node: vpn node create TUN"), "{line}");
    }

    #[test]
    fn a_tun_refused_for_lack_of_privilege_says_what_is_needed() {
        assert!(hint(&tun_denied()).is_some_and(|h| h.contains("CAP_NET_ADMIN")));
        let unreadable = anyhow::Error::new(io::Error::from(io::ErrorKind::PermissionDenied))
            .context("reading /etc/vpn-node/config.toml");
        assert_eq!(hint(&unreadable), None);
    }

    #[test]
    fn a_ping_answer_reads_as_path_round_trips_and_summary() {
        let answer = serde_json::json!({
            "peer_id": "12D3KooWpeer", "address": "100.64.0.2", "path": ["/ip4/198.18.0.2/tcp/4001"],
            "open_ms": 1.5, "sent": 3, "received": 2, "rtt_ms": [0.5, null, 1.5],
        });
        let text = ping_text("100.64.0.2", &answer);
        assert_eq!(
            text,
            "PING 100.64.0.2: peer 12D3KooWpeer via /ip4/198.18.0.2/tcp/4001\n\
             stream opened in 1.500 ms\n\
             seq 1: 0.500 ms\n\
             seq 2: lost (no PONG in time)\n\
             seq 3: 1.500 ms\n\
             3 sent, 2 answered; rtt min/avg/max 0.500/1.000/1.500 ms\n"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_metrics_clients_hold_a_few_slots_for_a_moment_and_scrapes_go_on() {
        use std::sync::Arc;
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(vpn_metrics::AtomicMetrics::new());
        let within = Duration::from_millis(300);
        tokio::spawn(serve_metrics_on(listener, metrics, 4, within));

        // A hundred clients that never send a request: four take the slots, the rest are
        // closed at once, and the four are closed when their time is up.
        let mut silent = Vec::new();
        for _ in 0..100 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let closed_by_server = |mut conn: TcpStream| async move {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
            matches!(read, Ok(Ok(0) | Err(_)))
        };
        for conn in silent {
            assert!(closed_by_server(conn).await, "a silent client was closed");
        }

        // Then a scrape gets its answer.
        let mut scrape = TcpStream::connect(addr).await.unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), scrape.read_to_string(&mut answer));
        read.await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.0 200 OK") && answer.contains("vpn_runtime_tasks"));
    }
}
