//! `vpn-node ca`: the network CA's tools. The CA key signs member certificates and
//! revocation lists on the operator's machine; nodes only ever see its public key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use vpn_api::{IpNet, PeerId};
use vpn_discovery::unix_now;
use vpn_service::{create_identity, load_identity};
use vpn_wire::{Certificate, RevocationList, Revoked};

/// The CA key's file in a CA directory.
const CA_KEY: &str = "ca.key";
/// The CA public key's file in a CA directory.
const CA_PUB: &str = "ca.pub";
/// The revocation list's default file in a CA directory.
const CA_LIST: &str = "revoked.crl";

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Makes a network CA in a directory: `ca.key` (mode 0600; keep it off the nodes, it
    /// signs members) and `ca.pub` (its text goes into every node's `[membership] ca`).
    Init {
        /// The CA's directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Signs a member certificate: the peer ID, the overlay addresses and routes it holds, a
    /// name and a lifetime.
    Sign {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// The member's peer ID (`vpn-node id`).
        #[arg(long)]
        peer_id: PeerId,
        /// An overlay address or prefix it holds (a bare address is a /32 or /128); repeat
        /// for more.
        #[arg(long = "address", required = true, value_parser = parse_net)]
        addresses: Vec<IpNet>,
        /// A prefix it routes into the overlay; repeat for more.
        #[arg(long = "route", value_parser = parse_net)]
        routes: Vec<IpNet>,
        /// A name for people (at most 64 bytes).
        #[arg(long, default_value = "")]
        name: String,
        /// How long it is valid, from now (`90d`, `12h`, `1y`).
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
        /// Where to write it.
        #[arg(long, short, default_value = "node.crt")]
        out: PathBuf,
    },
    /// Shows what a certificate or a revocation list says; with `--ca`, whether it
    /// verifies against that CA now.
    Inspect {
        /// The certificate or revocation list.
        file: PathBuf,
        /// A CA directory (or its `ca.pub` file) to verify against.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Signs a revocation list: every certificate given to the named peers until now stops
    /// counting (a certificate signed for them later counts again). Peers revoked before stay
    /// revoked. Nodes read it from `[membership] revocations` at start and at every reload.
    Revoke {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// A peer to revoke; repeat for more.
        #[arg(long = "peer-id", required = true)]
        peers: Vec<PeerId>,
        /// Where the list is kept (read if it exists, then written anew): by default
        /// `revoked.crl` in the CA's directory.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or prefix"))
        .map(|net| net.trunc())
}

/// Hex text of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn run(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init { dir } => init(&dir),
        CaCommand::Sign { ca, peer_id, addresses, routes, name, expires, out } => {
            let cert = sign(&ca, peer_id, addresses, routes, name, expires)?;
            write_new(&out, &cert.1)?;
            eprintln!("wrote {} ({})", out.display(), describe(&cert.0));
            Ok(())
        }
        CaCommand::Inspect { file, ca } => inspect(&file, ca.as_deref()),
        CaCommand::Revoke { ca, peers, out } => revoke(&ca, &peers, out),
    }
}

fn init(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = create_identity(&dir.join(CA_KEY)).context("cannot make the CA key")?;
    let public = hex(&key.public().encode_protobuf());
    let pub_path = dir.join(CA_PUB);
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    println!("{public}");
    eprintln!(
        "wrote {} (keep it off the nodes) and {}; every node lists the text above in [membership] ca",
        dir.join(CA_KEY).display(),
        pub_path.display()
    );
    Ok(())
}

/// The CA key of the CA directory `dir`.
fn ca_key(dir: &Path) -> Result<libp2p_identity::Keypair> {
    load_identity(&dir.join(CA_KEY))
        .with_context(|| format!("{} is not a CA directory (vpn-node ca init)", dir.display()))
}

/// A certificate for `peer_id`, signed by the CA in `ca`: the certificate and its bytes.
pub(crate) fn sign(
    ca: &Path,
    peer_id: PeerId,
    addresses: Vec<IpNet>,
    routes: Vec<IpNet>,
    name: String,
    expires: std::time::Duration,
) -> Result<(Certificate, Vec<u8>)> {
    let key = ca_key(ca)?;
    let now = unix_now();
    let cert = Certificate {
        peer_id,
        addresses,
        routes,
        name,
        not_before_unix: now,
        not_after_unix: now.saturating_add(expires.as_secs()),
    };
    let bytes = cert.sign(&key).context("cannot sign the certificate")?;
    Ok((cert, bytes))
}

/// Writes `bytes` to a new file `path` (an existing one is not overwritten).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn when(unix: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn describe(cert: &Certificate) -> String {
    let join = |nets: &[IpNet]| {
        if nets.is_empty() {
            "-".to_owned()
        } else {
            nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }
    };
    format!(
        "peer {} name {:?} addresses {} routes {} valid {} to {}",
        cert.peer_id,
        cert.name,
        join(&cert.addresses),
        join(&cert.routes),
        when(cert.not_before_unix),
        when(cert.not_after_unix)
    )
}

/// The trusted key named by `ca`: a CA directory or a `ca.pub` file.
pub(crate) fn ca_public(ca: &Path) -> Result<libp2p_identity::PublicKey> {
    let path = if ca.is_dir() { ca.join(CA_PUB) } else { ca.to_owned() };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    vpn_config::parse_ca_key(&text).map_err(|rule| anyhow::anyhow!("{}: {rule}", path.display()))
}

fn inspect(file: &Path, ca: Option<&Path>) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let trusted = ca.map(ca_public).transpose()?;
    if let Ok((cert, issuer)) = Certificate::open(&bytes) {
        println!("certificate: {}", describe(&cert));
        println!("issuer: {}", hex(&issuer.encode_protobuf()));
        if let Some(trusted) = trusted {
            match Certificate::verify(&bytes, &cert.peer_id, &[trusted], unix_now()) {
                Ok(_) => println!("valid now under this CA"),
                Err(e) => bail!("not valid under this CA now: {e}"),
            }
        }
        return Ok(());
    }
    let (list, issuer) = RevocationList::open(&bytes).map_err(|e| {
        anyhow::anyhow!("{} is neither a certificate nor a revocation list: {e}", file.display())
    })?;
    println!("revocation list issued {} with {} peers", when(list.issued_unix), list.revoked.len());
    for revoked in &list.revoked {
        println!("  {} (certificates from before {})", revoked.peer_id, when(revoked.before_unix));
    }
    println!("issuer: {}", hex(&issuer.encode_protobuf()));
    if let Some(trusted) = trusted {
        anyhow::ensure!(issuer == trusted, "not signed by this CA");
        println!("signed by this CA");
    }
    Ok(())
}

fn revoke(ca: &Path, peers: &[PeerId], out: Option<PathBuf>) -> Result<()> {
    let key = ca_key(ca)?;
    let path = out.unwrap_or_else(|| ca.join(CA_LIST));
    let mut list = match std::fs::read(&path) {
        Ok(bytes) => {
            RevocationList::verify(&bytes, &[key.public()])
                .with_context(|| format!("{} is not a revocation list of this CA", path.display()))?
                .0
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RevocationList::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let now = unix_now();
    // Certificates signed up to this second are revoked; the list is newer than any before.
    let before_unix = now + 1;
    for peer in peers {
        list.revoked.retain(|r| r.peer_id != *peer);
        list.revoked.push(Revoked { peer_id: *peer, before_unix });
    }
    list.issued_unix = now.max(list.issued_unix + 1);
    let bytes = list.sign(&key).context("cannot sign the revocation list")?;
    let temp = path.with_extension("crl.new");
    std::fs::write(&temp, &bytes).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote {} ({} peers revoked); copy it to every node's [membership] revocations and run vpn-node reload",
        path.display(),
        list.revoked.len()
    );
    Ok(())
}
