//! The local control socket: `vpn-node status` and `vpn-node peers` ask a running node.
//!
//! One request per connection: a line `status`, `peers`, `ping <overlay address | peer ID>
//! <count>` or `reload`; the answer is one line of JSON (`{"error": ...}` when the request
//! failed).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};
use vpn_api::VpnService;
use vpn_types::{Budget, DropReason, PeerRefusal};

use crate::ping::PingTarget;
use crate::{VpnNode, json};

/// The answer to `status`.
pub async fn status_json(node: &VpnNode) -> String {
    let m = node.metrics();
    let drops = DropReason::ALL
        .iter()
        .map(|r| format!("{}:{}", json::string(r.as_str()), m.dropped(*r)))
        .collect::<Vec<_>>();
    let budgets = Budget::ALL
        .iter()
        .map(|b| format!("{}:{}", json::string(b.as_str()), m.exceeded(*b)))
        .collect::<Vec<_>>();
    let refused = PeerRefusal::ALL
        .iter()
        .map(|r| format!("{}:{}", json::string(r.as_str()), m.refused(*r)))
        .collect::<Vec<_>>();
    let routing = node.routing_table().await;
    let reach = node.reachability().await.unwrap_or_default();
    let relays = reach.relays.iter().map(|(relay, addr)| {
        format!(
            "{{\"relay\":{},\"address\":{}}}",
            json::string(&relay.to_string()),
            json::string(&addr.to_string())
        )
    });
    let reachability = format!(
        "{{\"public\":{},\"unvouched\":{},\"relays\":{},\"relaying\":{}}}",
        json::list(reach.public.iter().map(|a| json::string(&a.to_string()))),
        json::list(reach.unvouched.iter().map(|a| json::string(&a.to_string()))),
        json::list(relays),
        reach.serving
    );
    let d = node.dht_counts().await;
    let dht = format!(
        "{{\"record_lookups\":{},\"peer_lookups\":{},\"records_published\":{}}}",
        d.record_lookups, d.peer_lookups, d.records_published
    );
    format!(
        "{{\"peer_id\":{},\"addresses\":{},\"listen\":{},\"reachability\":{reachability},\"dht\":{dht},\"routing_table\":{},\"metrics\":{{\"peers_direct\":{},\"peers_relayed\":{},\"hole_punches_succeeded\":{},\"hole_punches_failed\":{},\"packets_sent\":{},\"bytes_sent\":{},\"packets_received\":{},\"bytes_received\":{},\"stream_errors\":{},\"records_refused\":{},\"active_workers\":{},\"active_streams\":{},\"dropped\":{{{}}},\"budget_exceeded\":{{{}}},\"peers_refused\":{{{}}}}}}}",
        json::string(&node.local_peer_id().to_string()),
        json::list(node.own_addresses().iter().map(|a| json::string(&a.to_string()))),
        json::list(node.listen_addrs().await.iter().map(|a| json::string(&a.to_string()))),
        json::list(routing.iter().map(|p| json::string(&p.to_string()))),
        m.peers_direct,
        m.peers_relayed,
        m.hole_punches_succeeded,
        m.hole_punches_failed,
        m.packets_sent,
        m.bytes_sent,
        m.packets_received,
        m.bytes_received,
        m.stream_errors,
        m.records_refused,
        m.active_workers,
        m.active_streams,
        drops.join(","),
        budgets.join(","),
        refused.join(","),
    )
}

/// The answer to `peers`.
pub async fn peers_json(node: &VpnNode) -> String {
    let paths = node.paths().await;
    let health = node.stream_health();
    let ms = |d: Option<Duration>| {
        d.map_or_else(|| "null".to_owned(), |r| format!("{:.3}", r.as_secs_f64() * 1e3))
    };
    let mut datagrams = Vec::with_capacity(paths.len());
    for path in &paths {
        datagrams.push(node.datagram_path(&path.peer).await);
    }
    let mut peers: Vec<String> = paths
        .iter()
        .zip(datagrams)
        .map(|(path, datagram)| {
            let h = health.peers.iter().find(|h| h.peer == path.peer);
            let data_path = match (&datagram, path.relayed) {
                (Some(_), _) => "datagram",
                (None, false) => "stream direct",
                (None, true) => "stream relayed",
            };
            let datagram_address =
                datagram.map_or_else(|| "null".to_owned(), |(a, _)| json::string(&a.to_string()));
            format!(
                "{{\"peer_id\":{},\"connected\":true,\"data_path\":{},\"datagram_address\":{},\"datagram_rtt_ms\":{},\"path\":{},\"address\":{},\"connections\":{},\"hole_punched\":{},\"connection_rtt_ms\":{},\"streams\":{},\"healthy_streams\":{},\"rtt_ms\":{}}}",
                json::string(&path.peer.to_string()),
                json::string(data_path),
                datagram_address,
                ms(datagram.map(|(_, rtt)| rtt)),
                json::string(if path.relayed { "relayed" } else { "direct" }),
                json::string(&path.address.to_string()),
                path.connections,
                path.hole_punched,
                ms(path.rtt),
                h.map_or(0, |h| h.streams),
                h.map_or(0, |h| h.healthy_streams),
                ms(h.and_then(|h| h.last_rtt)),
            )
        })
        .collect();
    let connected = |peer: &vpn_api::PeerId| paths.iter().any(|p| p.peer == *peer);
    peers.extend(health.peers.iter().filter(|h| !connected(&h.peer)).map(|h| {
        format!(
            "{{\"peer_id\":{},\"connected\":false,\"path\":null,\"streams\":{},\"healthy_streams\":{},\"rtt_ms\":null}}",
            json::string(&h.peer.to_string()),
            h.streams,
            h.healthy_streams
        )
    }));
    format!("{{\"peers\":{}}}", json::list(peers))
}

/// The answer to `ping <target> <count>`.
async fn ping_json(node: &VpnNode, target: &str, count: &str) -> String {
    let target = match target.parse::<PingTarget>() {
        Ok(target) => target,
        Err(e) => return json::error(&e),
    };
    let Ok(count) = count.parse::<u32>() else {
        return json::error(&format!("{count:?} is not a number of PINGs"));
    };
    match node.ping(target, count).await {
        Ok(report) => report.to_json(),
        Err(e) => json::error(&crate::error_chain(&e)),
    }
}

/// Requests answered at once; a connection beyond them is closed unanswered.
const CONCURRENT_REQUESTS: usize = 8;
/// A request line must arrive within this.
const REQUEST_READ_LIMIT: Duration = Duration::from_secs(5);

/// What the `reload` request runs: reads the configuration file again and applies it.
/// Answers the sections that changed, or why nothing was applied.
pub type Reloader = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Vec<&'static str>, String>> + Send>>
        + Send
        + Sync,
>;

/// The answer to `reload`.
async fn reload_json(reload: Option<&Reloader>) -> String {
    let Some(reload) = reload else {
        return json::error("this node cannot reload its configuration");
    };
    match reload().await {
        Ok(changed) => {
            format!("{{\"reloaded\":{}}}", json::list(changed.iter().map(|s| json::string(s))))
        }
        Err(e) => json::error(&e),
    }
}

async fn answer(conn: UnixStream, node: Arc<VpnNode>, reload: Option<Reloader>) -> io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    // A request is one short line, sent at once; nothing longer is read.
    let mut reader = BufReader::new(read.take(256));
    // Bounded: a client that connects and says nothing does not hold a request slot.
    tokio::time::timeout(REQUEST_READ_LIMIT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["status"] => status_json(&node).await,
        ["peers"] => peers_json(&node).await,
        ["ping", target, count] => ping_json(&node, target, count).await,
        ["reload"] => reload_json(reload.as_ref()).await,
        _ => json::error(&format!(
            "unknown request {:?}; ask `status`, `peers`, `ping <target> <count>` or `reload`",
            line.trim()
        )),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Serves the control socket at `path` for `node` until the task is aborted; `reload`
/// answers the `reload` request. A stale socket file left by a node that died is replaced;
/// one a running node answers on is not.
pub async fn serve_control(
    path: &Path,
    node: Arc<VpnNode>,
    reload: Option<Reloader>,
) -> io::Result<JoinHandle<()>> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running node", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let path: PathBuf = path.to_owned();
    Ok(tokio::spawn(async move {
        let _remove = RemoveOnDrop(path);
        // The requests under way end with the server (the set aborts them when dropped).
        let mut requests = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((conn, _)) = accepted else { break };
                    if requests.len() >= CONCURRENT_REQUESTS {
                        // Busy: the client sees the connection close and can ask again.
                        continue;
                    }
                    let (node, reload) = (node.clone(), reload.clone());
                    requests.spawn(async move {
                        if let Err(e) = answer(conn, node, reload).await {
                            tracing::debug!(error = %e, "control request failed");
                        }
                    });
                }
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
            }
        }
    }))
}

/// Removes the socket file when the server ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Asks the node serving `path` for `request` (`status` or `peers`); returns its JSON.
pub async fn query_control(path: &Path, request: &str) -> io::Result<String> {
    let mut conn = UnixStream::connect(path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no node answers on {}: {e} (is `vpn-node up` running?)", path.display()),
        )
    })?;
    conn.write_all(format!("{request}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply).await?;
    Ok(reply.trim_end().to_owned())
}
