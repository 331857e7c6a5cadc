use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::{ListenerId, PortUse};
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, GetRecordOk, QueryId, QueryResult, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, dcutr, identify, mdns, noise, ping, relay, request_response, yamux,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use vpn_types::PeerText;

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, MembersEvent};
use crate::dial_policy::{DialPolicy, ip_of, peer_of, source_of};
use crate::exchange::Verdict;
use crate::listeners::SpecificListeners;
use crate::reach::{PeerPath, Reach, Reachability, is_circuit};
use crate::vouch::Vouches;
use crate::{Admission, P2pConfig, P2pError, PathObserver, PeerRefusal, RecordFilter};

/// Addresses kept of the ones a peer announces (identify): a few reach it; hundreds would
/// only be dialed in its name.
const ADDRESSES_KEPT: usize = 8;
/// How long a stop waits for connections to close gracefully.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);
/// How long start-up waits for every listener to report its address.
const LISTEN_WAIT: Duration = Duration::from_secs(3);
/// A new connection dialed by a peer replaces our older connections to it when they are at
/// least this old: the peer dialed because it lost them (it restarted, or its address
/// changed), while younger ones are a simultaneous dial's twin (closing those could close
/// both twins, each side one).
const REPLACE_OLDER_THAN: Duration = Duration::from_secs(2);
/// Connections to one peer allowed past `max_connections_per_peer` for a moment: a peer
/// that reconnects must get through while its dead connections still count, to replace
/// them. The event loop closes whatever is still over the limit [`REPLACE_OLDER_THAN`]
/// after the newest came.
pub(crate) const REPLACEMENT_ROOM: u32 = 2;
/// A refused peer's connections close this long after our answer.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// How often connections of peers not proven members in time are looked for.
const MEMBERSHIP_TICK: Duration = Duration::from_millis(500);
/// A peer whose dial failed is looked up in the DHT at most this often.
const FIND_PEER_EVERY: Duration = Duration::from_secs(5);
/// Most lookups of where peers are at once.
const FIND_PEER_AT_ONCE: usize = 16;
/// Members a published record is sent to straight away, beside its DHT walk: a member
/// answering the walk with made-up peers that never answer cannot keep it from everyone.
/// Kademlia's own replication factor.
const PUSH_TO: usize = 20;
/// How often the routing table is refreshed from the peers in it.
const BOOTSTRAP_EVERY: Duration = Duration::from_secs(300);

type Reply<T> = oneshot::Sender<Result<T, P2pError>>;

enum Command {
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply<()>,
    },
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
        reply: Reply<()>,
    },
    GetRecords {
        key: Vec<u8>,
        reply: Reply<Vec<Vec<u8>>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Connected {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    RoutingTable {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Connections {
        reply: oneshot::Sender<Vec<(PeerId, Multiaddr)>>,
    },
    Paths {
        reply: oneshot::Sender<Vec<PeerPath>>,
    },
    Reachability {
        reply: oneshot::Sender<Reachability>,
    },
    DhtCounts {
        reply: oneshot::Sender<DhtCounts>,
    },
    /// The peer is no member any more: close its connections and drop it from the
    /// routing table.
    Expel {
        peer: PeerId,
    },
    /// Close every connection, telling the peers, and end the task.
    Shutdown,
    /// Panic inside the task, as a bug in the swarm would.
    #[cfg(test)]
    Panic,
}

/// What this node asked of the DHT since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhtCounts {
    /// Record lookups (the owners of overlay addresses, revocation lists).
    pub record_lookups: u64,
    /// Lookups of where a peer is.
    pub peer_lookups: u64,
    /// Records published.
    pub records_published: u64,
}

/// Callers waiting to be connected to one peer, and the dials this loop started for them
/// that have not failed yet.
#[derive(Default)]
struct Dials {
    attempts: usize,
    replies: Vec<Reply<()>>,
}

enum Pending {
    Get {
        found: Vec<Vec<u8>>,
        reply: Reply<Vec<Vec<u8>>>,
    },
    /// A record's DHT walk. (Its push to the nearest members answers nobody.)
    Put {
        reply: Reply<()>,
    },
    /// Looking for where `PeerId` is, to dial it once found.
    FindPeer(PeerId),
}

/// Talks to the task that owns the swarm. Cheap to clone.
#[derive(Clone)]
pub struct P2pHandle {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    local: PeerId,
}

/// The running swarm: its handle and the task that owns it.
pub struct P2pNode {
    handle: P2pHandle,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Why the task ended, once it did.
    ended: watch::Receiver<Option<&'static str>>,
    /// Set by [`P2pNode::stop`]: the task's end is no fault then.
    stopping: Arc<AtomicBool>,
}

/// Lives as long as the swarm's task and tells [`P2pNode::ended`] when the task ends,
/// however it ends (a panic unwinds through it).
struct EndReport(watch::Sender<Option<&'static str>>);

impl Drop for EndReport {
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            "the swarm's task panicked"
        } else {
            "the swarm's task ended"
        };
        self.0.send_replace(Some(why));
    }
}

impl P2pNode {
    /// Builds the swarm, starts listening on every configured address (waiting until each
    /// reports where it listens), dials the bootstrap peers and starts the swarm's task.
    ///
    /// Errors: [`P2pError::Startup`] naming what failed (transport, mDNS, a listen address).
    pub async fn start(config: P2pConfig) -> Result<Self, P2pError> {
        let startup =
            |what: &str, e: &dyn std::fmt::Display| P2pError::Startup(format!("{what}: {e}"));
        let policy = Arc::new(DialPolicy::new(
            &config.listen,
            config.overlay.clone(),
            config.observer.clone(),
        ));
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_other_transport(|key| {
                let (links, policy) = (config.links.clone(), policy.clone());
                crate::transport::build(key, config.transport, config.psk, links, policy)
            })
            .map_err(|e| startup("transport", &e))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| startup("relay transport", &e))?
            .with_behaviour(|key, relay_client| {
                Behaviour::new(key, &config, relay_client, policy.clone())
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| startup("behaviour (mDNS)", &e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
            .with_connection_timeout(config.dial_timeout)
            .build();
        let mut listeners = HashMap::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| startup(&format!("listen on {addr}"), &e))?;
            listeners.insert(id, addr.clone());
        }
        let specific = SpecificListeners::new(listeners.iter().map(|(id, addr)| (*id, addr)));
        wait_for_listeners(&mut swarm, listeners, &policy).await?;
        // Only needed for listeners on one IP; a failure leaves them as libp2p has them.
        let interfaces = specific.any().then(if_watch::tokio::IfWatcher::new).and_then(Result::ok);
        for (peer, addrs) in &config.known_peers {
            for addr in addrs {
                policy.trust(addr);
                swarm.behaviour_mut().gate.inner.kad.add_address(peer, addr.clone());
            }
            // Say hello: a peer that knew us at an old address (we restarted on another
            // port, or moved) learns the new one from this connection.
            if !addrs.is_empty() {
                let opts = DialOpts::peer_id(*peer).addresses(addrs.clone()).build();
                if let Err(e) = swarm.dial(opts) {
                    tracing::debug!(%peer, error = %e, "cannot dial a configured peer");
                }
            }
        }
        for addr in &config.bootstrap {
            policy.trust(addr);
            if let Some(peer) = peer_of(addr) {
                swarm.behaviour_mut().gate.inner.kad.add_address(&peer, addr.clone());
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        let local = *swarm.local_peer_id();
        let mut reach = Reach::new(local, config.reach.serve, config.reach.reservations);
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
            let _ = reach.confirmed(addr.clone());
        }
        if let Some(relay) = swarm.behaviour_mut().gate.inner.relay.as_mut() {
            let on = if reach.serving { relay::Status::Enable } else { relay::Status::Disable };
            relay.set_status(Some(on));
        }
        let control = swarm.behaviour().gate.inner.stream.inner.new_control();
        let (commands, rx) = mpsc::channel(64);
        let (report, ended) = watch::channel(None);
        let report = EndReport(report);
        let event_loop = EventLoop {
            swarm,
            commands: rx,
            pending: HashMap::new(),
            dials: HashMap::new(),
            connections: HashMap::new(),
            overlay: config.overlay,
            policy,
            max_per_peer: config.max_connections_per_peer,
            filter: config.record_filter,
            warnings: vpn_types::WarnGate::per_peer(),
            admission: config.admission,
            membership_timeout: config.membership_timeout,
            refused: HashMap::new(),
            presented: HashSet::new(),
            bootstrap: Redial::new(config.bootstrap.clone()),
            reach,
            observer: config.observer,
            links: config.links,
            quic_dials: config.datagrams.then(Default::default),
            repunch: Default::default(),
            paths_told: (0, 0),
            looked_up: HashMap::new(),
            dht: DhtCounts::default(),
            vouches: Vouches::default(),
            vouched: Vec::new(),
            external: config.external.clone(),
            specific,
            interfaces,
        };
        let task = tokio::spawn(async move {
            let _report = report;
            event_loop.run().await;
        });
        Ok(Self {
            handle: P2pHandle { commands, control, local },
            task: std::sync::Mutex::new(Some(task)),
            ended,
            stopping: Arc::default(),
        })
    }

    /// Resolves when the swarm's task ends without [`P2pNode::stop`] having been called (a
    /// panic in it, say), with what happened. The node cannot reach any peer after that;
    /// the future does not hold the node.
    pub fn ended(&self) -> impl Future<Output = &'static str> + Send + 'static {
        let mut ended = self.ended.clone();
        let stopping = self.stopping.clone();
        async move {
            let why = match ended.wait_for(Option::is_some).await {
                Ok(why) => why.unwrap_or_default(),
                // The report always sends before the sender goes.
                Err(_) => "the swarm's task ended",
            };
            if stopping.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            why
        }
    }

    /// The handle to the swarm.
    pub fn handle(&self) -> &P2pHandle {
        &self.handle
    }

    /// Stops the swarm's task; connections close. Harmless twice.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut task) = task {
            // Closed connections are told to the peers (a QUIC peer would otherwise keep a
            // dead connection until its idle timeout); what does not close in time is cut.
            let asked = self.handle.commands.try_send(Command::Shutdown).is_ok();
            if !asked || tokio::time::timeout(SHUTDOWN_WAIT, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// The next change of the host's addresses, if they are watched (never, otherwise).
async fn next_if_event(
    watcher: &mut Option<if_watch::tokio::IfWatcher>,
) -> Option<std::io::Result<if_watch::IfEvent>> {
    match watcher {
        Some(watcher) => watcher.next().await,
        None => std::future::pending().await,
    }
}

/// Waits until every listener reports an address and, when one listens on every address
/// (`0.0.0.0`, `::`), until one of them is more than loopback; fails with the address of a
/// listener that fails. After [`LISTEN_WAIT`] it goes on regardless, with one line that
/// says what the node waits for (a host whose network is not up yet): the listeners report
/// their addresses later, when an interface comes up.
async fn wait_for_listeners(
    swarm: &mut Swarm<Behaviour>,
    mut waiting: HashMap<ListenerId, Multiaddr>,
    policy: &DialPolicy,
) -> Result<(), P2pError> {
    let wildcard = waiting.values().any(|a| ip_of(a).is_some_and(|ip| ip.is_unspecified()));
    let all: Vec<String> = waiting.values().map(ToString::to_string).collect();
    let mut reachable = !wildcard;
    let wait = async {
        while !waiting.is_empty() || !reachable {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    tracing::info!(%address, "listening");
                    policy.own(&address, true);
                    reachable |= ip_of(&address).is_some_and(|ip| !ip.is_loopback());
                    waiting.remove(&listener_id);
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    let addr = waiting.get(&listener_id).map(ToString::to_string);
                    let addr = addr.unwrap_or_else(|| "a listen address".to_owned());
                    return Err(P2pError::Startup(format!("listen on {addr}: {error}")));
                }
                SwarmEvent::ListenerClosed { listener_id, addresses, reason, .. } => {
                    let addr = waiting.get(&listener_id).map(ToString::to_string);
                    let addr = addr.unwrap_or_else(|| format!("{addresses:?}"));
                    return Err(P2pError::Startup(format!(
                        "listen on {addr}: the listener closed ({reason:?})"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    };
    if let Ok(result) = tokio::time::timeout(LISTEN_WAIT, wait).await {
        return result;
    }
    tracing::warn!(
        listen = %all.join(", "),
        "no network interface has an address other than loopback yet; waiting for one to come up"
    );
    Ok(())
}

struct EventLoop {
    /// Listen addresses on one IP, closed while the host lacks it.
    specific: SpecificListeners,
    /// The host's addresses, watched while there are such listeners.
    interfaces: Option<if_watch::tokio::IfWatcher>,
    /// Addresses AutoNAT confirmed, and the members that vouch for them by dialing us.
    vouches: Vouches,
    /// The confirmed addresses published now (as external addresses).
    vouched: Vec<Multiaddr>,
    /// The operator's external addresses (`network.external_addresses`), never taken back.
    external: Vec<Multiaddr>,
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pending: HashMap<QueryId, Pending>,
    dials: HashMap<PeerId, Dials>,
    connections: HashMap<PeerId, Vec<Connection>>,
    overlay: Vec<vpn_api::IpNet>,
    /// What may be dialed; told our own addresses and the operator's.
    policy: Arc<DialPolicy>,
    max_per_peer: u32,
    filter: Option<RecordFilter>,
    /// Warnings about records a peer sent, at most one per peer every few seconds.
    warnings: vpn_types::WarnGate<PeerId>,
    /// Who is a member; none: every peer.
    admission: Option<Arc<dyn Admission>>,
    /// An unproven connection is closed after this long.
    membership_timeout: Duration,
    /// Peers refused and when: their connections close [`REFUSAL_GRACE`] later, time for
    /// our answer to reach them (at most the unproven connections' number).
    refused: HashMap<PeerId, std::time::Instant>,
    /// Peers we sent our certificate since they connected.
    presented: HashSet<PeerId>,
    /// The bootstrap addresses, dialed again while no member is connected.
    bootstrap: Redial,
    /// Reachability, relays and our slots on them.
    reach: Reach,
    /// Told of paths and hole punches.
    observer: Option<Arc<dyn PathObserver>>,
    /// The QUIC connections' datagram links, opened as members are proven.
    links: vpn_quic::Links,
    /// Members to dial over QUIC for datagrams (`None`: packets take streams only).
    quic_dials: Option<crate::datagram::QuicDials>,
    /// Peers whose hole punch failed, to punch again.
    repunch: crate::punch::Repunch,
    /// The paths last told: peers connected directly, and through relays only.
    paths_told: (usize, usize),
    /// When peers whose dials failed were last looked up (at most 1024).
    looked_up: HashMap<PeerId, std::time::Instant>,
    /// What was asked of the DHT.
    dht: DhtCounts,
}

/// Dials the bootstrap addresses again while the node has no member to talk to (they were
/// down when it started, or every member went away): after 2 s, then twice as long each
/// time up to a minute; from the start again once a member is connected.
struct Redial {
    addrs: Vec<Multiaddr>,
    wait: Duration,
    next: std::time::Instant,
}

impl Redial {
    const FIRST: Duration = Duration::from_secs(2);
    const LONGEST: Duration = Duration::from_secs(60);

    fn new(addrs: Vec<Multiaddr>) -> Self {
        Self { addrs, wait: Self::FIRST, next: std::time::Instant::now() + Self::FIRST }
    }

    /// The addresses to dial now, if it is time (`alone`: no member connected).
    fn due(&mut self, alone: bool) -> Vec<Multiaddr> {
        let now = std::time::Instant::now();
        if !alone {
            self.wait = Self::FIRST;
            self.next = now + Self::FIRST;
            return Vec::new();
        }
        if now < self.next {
            return Vec::new();
        }
        self.next = now + self.wait;
        self.wait = (self.wait * 2).min(Self::LONGEST);
        self.addrs.clone()
    }
}

/// One open connection, as the event loop keeps track of it.
struct Connection {
    id: ConnectionId,
    since: std::time::Instant,
    endpoint: ConnectedPoint,
    /// Round trip of its last ping.
    rtt: Option<Duration>,
    /// Made by punching a hole through NATs.
    punched: bool,
    /// The peer's first connection at the time (a hole punch never is).
    first: bool,
}

/// Whether a connection runs over QUIC directly (not through a relay).
fn is_direct_quic_connection(endpoint: &ConnectedPoint) -> bool {
    !endpoint.is_relayed() && crate::datagram::is_direct_quic(endpoint.get_remote_address())
}

impl EventLoop {
    /// The proven members connected now whose IDs are nearest `key`, at most `most`: where
    /// a record goes straight away, whatever its DHT walk meets.
    fn members_nearest(&self, key: &RecordKey, most: usize) -> Vec<PeerId> {
        let target = kad::KBucketKey::new(key.clone());
        let gate = &self.swarm.behaviour().gate;
        let mut members: Vec<PeerId> =
            self.swarm.connected_peers().filter(|p| gate.is_open(p)).copied().collect();
        members.sort_by_key(|p| kad::KBucketKey::from(*p).distance(&target));
        members.truncate(most);
        members
    }

    /// Publishes the addresses AutoNAT confirmed while members vouch for them, and takes
    /// them back when they no longer do (relay slots are asked for again then).
    fn publish_vouched(&mut self) {
        for addr in self.swarm.behaviour_mut().gate.take_confirmed() {
            tracing::debug!(address = %addr, "a member dialed us back at this address");
            // The operator's addresses are published from the start and stay.
            if !self.external.contains(&addr) {
                self.vouches.confirmed(addr);
            }
        }
        let now = std::time::Instant::now();
        let policy = &self.policy;
        let own = |addr: &Multiaddr| ip_of(addr).is_some_and(|ip| policy.is_own_public(ip));
        let want = self.vouches.published(now, own);
        let was = std::mem::replace(&mut self.vouched, want.clone());
        for addr in want.into_iter().filter(|a| !was.contains(a)) {
            tracing::info!(address = %addr, "other members can dial us at this address");
            self.swarm.add_external_address(addr.clone());
            let change = self.reach.confirmed(addr);
            self.set_serving(change);
        }
        let gone: Vec<Multiaddr> = was.into_iter().filter(|a| !self.vouched.contains(a)).collect();
        for addr in &gone {
            tracing::info!(address = %addr, "no member dialed us lately: asking relays again");
            self.swarm.remove_external_address(addr);
            let change = self.reach.expired(addr);
            self.set_serving(change);
        }
    }

    /// Refreshes the routing table from the peers in it, if there are any.
    fn refresh_routing_table(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().gate.inner.kad;
        if kad.kbuckets().any(|bucket| bucket.num_entries() > 0) {
            // Fails only with an empty table, which was just ruled out.
            let _ = kad.bootstrap();
        }
    }

    async fn run(mut self) {
        let mut refresh = tokio::time::interval(BOOTSTRAP_EVERY);
        let mut deadline = tokio::time::interval(MEMBERSHIP_TICK);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) => return self.shut_down().await,
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                event = next_if_event(&mut self.interfaces) => self.on_if_event(event),
                _ = refresh.tick() => self.refresh_routing_table(),
                _ = deadline.tick() => {
                    self.close_unproven();
                    self.trim_connections();
                    self.recheck_members();
                    self.redial_bootstrap();
                    self.publish_vouched();
                    self.update_relays();
                    self.look_up_unknown();
                    self.dial_quic();
                    self.punch_again();
                }
            }
        }
    }

    /// Closes every connection and drives the swarm until they are closed.
    async fn shut_down(mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        while self.swarm.network_info().num_peers() > 0 {
            let _ = self.swarm.select_next_some().await;
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            #[cfg(test)]
            Command::Panic => panic!("asked to panic"),
            Command::Dial { peer, addrs, reply } => {
                addrs.iter().for_each(|a| self.policy.trust(a));
                if self.swarm.behaviour().gate.is_open(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                if self.swarm.is_connected(&peer) {
                    // Connected, not proven yet: answered when the exchange ends.
                    self.dials.entry(peer).or_default().replies.push(reply);
                    return;
                }
                // New addresses are dialed even while another dial is under way: that one
                // may be stuck on an address that no longer answers (a peer restarted on
                // another port, a path that was black-holed).
                let condition = if addrs.is_empty() {
                    PeerCondition::DisconnectedAndNotDialing
                } else {
                    PeerCondition::Disconnected
                };
                let opts = DialOpts::peer_id(peer)
                    .condition(condition)
                    .addresses(addrs)
                    .extend_addresses_through_behaviour()
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        let dials = self.dials.entry(peer).or_default();
                        dials.attempts += 1;
                        dials.replies.push(reply);
                    }
                    // A dial already under way answers this one too.
                    Err(DialError::DialPeerConditionFalse(_)) => {
                        self.dials.entry(peer).or_default().replies.push(reply)
                    }
                    Err(DialError::NoAddresses) => {
                        // Asked of the DHT; the caller's retry finds it connected.
                        self.find_peer(peer);
                        let _ = reply.send(Err(P2pError::Dial(DialError::NoAddresses.to_string())));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(P2pError::Dial(e.to_string())));
                    }
                }
            }
            Command::AddAddresses { peer, addrs } => {
                for addr in addrs {
                    self.swarm.behaviour_mut().gate.inner.kad.add_address(&peer, addr);
                }
            }
            Command::PutRecord { key, value, ttl, reply } => {
                self.dht.records_published += 1;
                let mut record = Record::new(RecordKey::new(&key), value);
                record.publisher = Some(*self.swarm.local_peer_id());
                record.expires = Some(std::time::Instant::now() + ttl);
                let nearest = self.members_nearest(&record.key, PUSH_TO);
                let kad = &mut self.swarm.behaviour_mut().gate.inner.kad;
                match kad.put_record(record.clone(), Quorum::One) {
                    Ok(walk) => {
                        if !nearest.is_empty() {
                            kad.put_record_to(record, nearest.into_iter(), Quorum::All);
                        }
                        self.pending.insert(walk, Pending::Put { reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(P2pError::Dht(e.to_string())));
                    }
                }
            }
            Command::GetRecords { key, reply } => {
                self.dht.record_lookups += 1;
                let id = self.swarm.behaviour_mut().gate.inner.kad.get_record(RecordKey::new(&key));
                self.pending.insert(id, Pending::Get { found: Vec::new(), reply });
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Connected { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Shutdown => {}
            Command::RoutingTable { reply } => {
                let kad = &mut self.swarm.behaviour_mut().gate.inner.kad;
                let peers = kad
                    .kbuckets()
                    .flat_map(|bucket| {
                        bucket.iter().map(|entry| *entry.node.key.preimage()).collect::<Vec<_>>()
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Expel { peer } => self.expel(peer),
            Command::Paths { reply } => {
                let _ = reply.send(self.paths());
            }
            Command::Reachability { reply } => {
                let mut reach = self.reach.snapshot();
                reach.unvouched = self
                    .vouches
                    .held()
                    .iter()
                    .filter(|a| !self.vouched.contains(a))
                    .cloned()
                    .collect();
                let _ = reply.send(reach);
            }
            Command::DhtCounts { reply } => {
                let _ = reply.send(self.dht);
            }
            Command::Connections { reply } => {
                let all = self.connections.iter().flat_map(|(peer, conns)| {
                    conns.iter().map(|c| (*peer, c.endpoint.get_remote_address().clone()))
                });
                let _ = reply.send(all.collect());
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::Kad(event))) => {
                self.on_kad(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::Identify(
                identify::Event::Received { peer_id, info, .. },
            ))) if info.protocols.contains(&KAD_PROTOCOL) => {
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    let addrs = info.listen_addrs.iter().filter(|a| self.usable_for_relay(a));
                    self.reach.relays.insert(peer_id, addrs.cloned().collect());
                } else {
                    self.reach.not_a_relay(&peer_id);
                }
                // Only what the dial policy lets us dial is kept, a few per peer.
                let usable: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| self.policy.usable(a))
                    .take(ADDRESSES_KEPT)
                    .collect();
                if let Some(dials) = self.quic_dials.as_mut() {
                    dials.learned(peer_id, &usable);
                }
                self.repunch.learned(peer_id, &usable);
                for addr in usable {
                    self.swarm.behaviour_mut().gate.inner.kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let found: Vec<_> =
                    found.into_iter().filter(|(_, a)| self.policy.usable(a)).collect();
                // Whoever answers on the local link is dialed; the routing table takes it
                // once it proves itself a member.
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "found on the local link");
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    let opts = DialOpts::peer_id(peer)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .addresses(addrs)
                        .build();
                    let _ = self.swarm.dial(opts);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            }))) => {
                let conns = self.connections.get_mut(&peer).into_iter().flatten();
                if let Some(conn) = conns.into_iter().find(|c| c.id == connection) {
                    conn.rtt = Some(rtt);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            }))) if !matches!(error, ping::Failure::Unsupported)
                && !self.is_datagram_companion(peer, connection) =>
            {
                // The connection carries nothing any more; the next stream dials anew.
                tracing::warn!(%peer, %error, "connection stopped answering pings; closing it");
                self.swarm.close_connection(connection);
                if self.links.best(&peer).is_none() {
                    // Datagrams do not get through either: the whole path is gone, and a
                    // QUIC connection kept for them would hold the peer "connected" and take
                    // its streams until QUIC's idle timeout.
                    let quic = self.connections.get(&peer).into_iter().flatten();
                    let quic: Vec<ConnectionId> = quic
                        .filter(|c| c.id != connection && is_direct_quic_connection(&c.endpoint))
                        .map(|c| c.id)
                        .collect();
                    for id in quic {
                        self.swarm.close_connection(id);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Membership(event)) => self.on_membership(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::Dcutr(event))) => {
                self.on_hole_punch(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::RelayClient(event))) => {
                self.on_relay_client(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::Relay(event))) => {
                on_relay_server(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gate(MembersEvent::Autonat(event))) => {
                match event.result {
                    Ok(()) => {
                        tracing::debug!(address = %event.tested_addr, server = %event.server, "a member dialed us back")
                    }
                    Err(e) => {
                        tracing::debug!(address = %event.tested_addr, server = %event.server, error = %e, "a member could not dial us back")
                    }
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                if !is_circuit(&address) {
                    tracing::info!(%address, "other members can dial us at this address");
                }
                let change = self.reach.confirmed(address);
                self.set_serving(change);
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                let change = self.reach.expired(&address);
                self.set_serving(change);
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                self.specific.closed(listener_id);
                if let Some(relay) = self.reach.listener_closed(listener_id) {
                    tracing::info!(%relay, ?reason, "our slot on a relay is gone");
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                tracing::debug!(peer = %peer_id, ?endpoint, "connected");
                if self.repunch.is_probe(&peer_id, connection_id) {
                    tracing::debug!(peer = %peer_id, "connected through a relay again, to punch a hole anew");
                } else if endpoint.is_relayed() {
                    tracing::info!(peer = %peer_id, address = %endpoint.get_remote_address(), "connected through a relay");
                }
                // The dialer presents its certificate first; the dialed side presents its
                // own once it took the dialer's (a stranger learns nothing of it).
                if endpoint.is_dialer() && !self.presented.contains(&peer_id) {
                    self.present_to(peer_id);
                }
                self.on_connected(peer_id, connection_id, endpoint);
                if self.swarm.behaviour().gate.is_open(&peer_id) {
                    self.answer_dials(peer_id, Ok(()));
                } else if let Some(dials) = self.dials.get_mut(&peer_id) {
                    // The dial went through; its callers wait for the exchange.
                    dials.attempts = 0;
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                if matches!(error, DialError::NoAddresses | DialError::Transport(_)) {
                    self.find_peer(peer);
                }
                // Callers wait while another dial of theirs may still get through.
                let settled = self.dials.get_mut(&peer).is_some_and(|dials| {
                    dials.attempts = dials.attempts.saturating_sub(1);
                    dials.attempts == 0
                });
                if settled && !self.swarm.is_connected(&peer) {
                    self.answer_dials(peer, Err(P2pError::Dial(error.to_string())));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|c| c.id != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                self.tell_paths();
                if !self.swarm.is_connected(&peer_id) {
                    // The gate asks a peer that comes back to prove itself again.
                    self.presented.remove(&peer_id);
                    self.links.forget(&peer_id);
                    if let Some(dials) = self.quic_dials.as_mut() {
                        dials.forget(&peer_id);
                    }
                    self.repunch.forget(&peer_id);
                }
                let waiting = self.dials.get(&peer_id).is_some_and(|d| d.attempts == 0);
                if waiting && !self.swarm.is_connected(&peer_id) {
                    let closed = "the connection closed before membership was proven";
                    self.answer_dials(peer_id, Err(P2pError::Dial(closed.to_owned())));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                self.policy.own(&address, true);
                if is_circuit(&address) {
                    tracing::info!(%address, "reachable through a relay");
                } else {
                    tracing::info!(%address, "listening");
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.policy.own(&address, false);
                self.on_address_gone(&address)
            }
            _ => {}
        }
    }

    /// Looks up the peers dials found no address for.
    fn look_up_unknown(&mut self) {
        let peers = std::mem::take(&mut self.swarm.behaviour_mut().gate.inner.stream.no_addresses);
        for peer in peers {
            self.find_peer(peer);
        }
    }

    /// Peer routing: asks the DHT where `peer` is now, and dials it when found (the caller's
    /// retry or the next packet finds it connected). For a peer with no address, or none
    /// that answered: it may have moved, or reserved a slot on a relay since we learned its
    /// addresses. One lookup per peer at a time, and at most one every [`FIND_PEER_EVERY`].
    fn find_peer(&mut self, peer: PeerId) {
        let now = std::time::Instant::now();
        // Any peer a dial names: a certified member we never met is known by no ID yet. A
        // member that names made-up peers costs at most these bounded lookups.
        let finding = self.pending.values().filter(|p| matches!(p, Pending::FindPeer(_)));
        if finding.count() >= FIND_PEER_AT_ONCE
            || self.pending.values().any(|p| matches!(p, Pending::FindPeer(t) if *t == peer))
            || self.looked_up.get(&peer).is_some_and(|at| now.duration_since(*at) < FIND_PEER_EVERY)
        {
            return;
        }
        if self.looked_up.len() >= 1024 {
            self.looked_up.retain(|_, at| now.duration_since(*at) < FIND_PEER_EVERY);
        }
        if self.looked_up.len() >= 1024 {
            return;
        }
        self.looked_up.insert(peer, now);
        tracing::debug!(%peer, "looking the peer up in the DHT");
        self.dht.peer_lookups += 1;
        let id = self.swarm.behaviour_mut().gate.inner.kad.get_closest_peers(peer);
        self.pending.insert(id, Pending::FindPeer(peer));
    }

    /// Sends `peer` our certificate (the membership exchange's request).
    fn present_to(&mut self, peer: PeerId) {
        self.presented.insert(peer);
        let certificate = self.admission.as_ref().map(|a| a.certificate()).unwrap_or_default();
        self.swarm.behaviour_mut().membership.send_request(&peer, certificate);
    }

    /// The membership exchange: a peer's certificate to judge, or its answer to ours.
    fn on_membership(&mut self, event: request_response::Event<Vec<u8>, Verdict>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                connection_id,
                message: Message::Request { request, channel, .. },
            } => {
                // The peer opened the exchange: this connection is its first to us, so any
                // older one is dead on its side (it restarted, or moved).
                let replaced = self.replace_older(peer, connection_id);
                let verdict = match &self.admission {
                    Some(admission) => admission.admit(&peer, &request),
                    None => Ok(()),
                };
                let answer = match verdict {
                    Ok(()) => {
                        // Open before answering: the peer's first stream may follow the answer.
                        if self.swarm.behaviour_mut().gate.checked(peer) {
                            self.opened(peer);
                        }
                        Verdict::Accepted
                    }
                    Err(why) => {
                        // Our own words; what they quote of the peer's certificate was
                        // escaped and cut where it was read (vpn-wire).
                        if let Some(held_back) = self.warnings.admit(peer) {
                            tracing::warn!(%peer, held_back, "refused a peer that is no member: {why}");
                        }
                        self.refuse(peer, PeerRefusal::NotMember);
                        let error = P2pError::Dial(format!("{peer} is no member: {why}"));
                        self.answer_dials(peer, Err(error));
                        Verdict::Refused(why)
                    }
                };
                let accepted = answer == Verdict::Accepted;
                let _ = self.swarm.behaviour_mut().membership.send_response(channel, answer);
                // Our certificate only now, to a peer we take (again, on a new connection
                // that replaced the one it went out on).
                if accepted && (replaced || !self.presented.contains(&peer)) {
                    self.present_to(peer);
                }
            }
            Event::Message { peer, message: Message::Response { response, .. }, .. } => {
                match response {
                    Verdict::Accepted => {
                        if self.swarm.behaviour_mut().gate.accepted(peer) {
                            self.opened(peer);
                        }
                    }
                    Verdict::Refused(why) => {
                        // The peer's own words: escaped and cut before anything shows them.
                        let why = PeerText(&why);
                        let error = P2pError::Dial(format!("{peer} does not take us: {why}"));
                        self.answer_dials(peer, Err(error));
                        if let Some(held_back) = self.warnings.admit(peer) {
                            tracing::warn!(%peer, held_back, "the peer does not take us for a member: {why}");
                        }
                        self.refuse(peer, PeerRefusal::RefusedUs);
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "membership exchange failed");
                // The connection it went out on closed while another is up: again there.
                if matches!(error, request_response::OutboundFailure::ConnectionClosed)
                    && self.swarm.is_connected(&peer)
                {
                    self.present_to(peer);
                }
            }
            Event::ResponseSent { .. } | Event::InboundFailure { .. } => {}
        }
    }

    /// Answers everyone waiting for a connection to `peer`.
    fn answer_dials(&mut self, peer: PeerId, result: Result<(), P2pError>) {
        for reply in self.dials.remove(&peer).unwrap_or_default().replies {
            let _ = reply.send(result.clone());
        }
    }

    /// `peer` is proven a member both ways: everything runs. It enters the routing table
    /// and whoever waits for it is answered.
    fn opened(&mut self, peer: PeerId) {
        // Where it connects from is a member's address now: let in first from there.
        let now = std::time::Instant::now();
        for conn in self.connections.get(&peer).into_iter().flatten() {
            if conn.endpoint.is_relayed() {
                continue;
            }
            let remote = conn.endpoint.get_remote_address();
            self.policy.seen_member(remote);
            // It dialed us straight from outside: it vouches that we can be dialed.
            if let (ConnectedPoint::Listener { .. }, true, Some(ip)) =
                (&conn.endpoint, conn.first, ip_of(remote))
            {
                self.vouches.dialed_by(peer, source_of(ip), now);
            }
        }
        self.links.admit(peer);
        self.add_to_routing_table(peer);
        self.answer_dials(peer, Ok(()));
    }

    /// Books `peer` as refused (`why`), to be disconnected once our answer had time to
    /// reach it (a peer that reads it leaves by itself).
    fn refuse(&mut self, peer: PeerId, why: PeerRefusal) {
        if why == PeerRefusal::NotMember {
            // The first refusal starts the grace: asking again does not extend it.
            self.refused.entry(peer).or_insert_with(std::time::Instant::now);
        }
        if let Some(admission) = &self.admission {
            admission.refused(&peer, why);
        }
    }

    /// A proven member enters the routing table at the addresses we dialed it on (identify
    /// adds the ones it listens on).
    fn add_to_routing_table(&mut self, peer: PeerId) {
        let dialed: Vec<Multiaddr> = self
            .connections
            .get(&peer)
            .into_iter()
            .flatten()
            .filter_map(|c| match &c.endpoint {
                ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
                ConnectedPoint::Listener { .. } => None,
            })
            .collect();
        for addr in dialed {
            self.swarm.behaviour_mut().gate.inner.kad.add_address(&peer, addr);
        }
    }

    /// Cuts off connected members that are members no more (a certificate ran out): the
    /// gate shuts, the routing table drops them, their connections close, and it is counted.
    fn recheck_members(&mut self) {
        let Some(admission) = self.admission.clone() else { return };
        let lapsed: Vec<PeerId> = self
            .connections
            .keys()
            .filter(|peer| self.swarm.behaviour().gate.is_open(peer))
            .filter(|peer| admission.admit(peer, &[]).is_err())
            .copied()
            .collect();
        for peer in lapsed {
            tracing::info!(%peer, "no member any more (its certificate ran out); cutting it off");
            admission.refused(&peer, PeerRefusal::NotMember);
            self.expel(peer);
        }
    }

    /// Dials members whose hole punch failed through a relay again once their pause is
    /// over, which starts a new punch (see [`crate::punch::Repunch`]); not past the
    /// connections allowed per peer.
    fn punch_again(&mut self) {
        if !self.swarm.behaviour().gate.inner.dcutr.is_enabled() {
            return;
        }
        let now = std::time::Instant::now();
        let mut due = Vec::new();
        for (peer, conns) in &self.connections {
            let relayed_only = conns.iter().all(|c| c.endpoint.is_relayed());
            if conns.len() >= self.max_per_peer as usize && relayed_only {
                continue;
            }
            if let Some(addrs) = self.repunch.due(*peer, relayed_only, now) {
                due.push((*peer, addrs));
            }
        }
        for (peer, addrs) in due {
            tracing::debug!(%peer, ?addrs, "dialing through a relay again, to punch a hole anew");
            let opts =
                DialOpts::peer_id(peer).condition(PeerCondition::Always).addresses(addrs).build();
            let id = opts.connection_id();
            if self.swarm.dial(opts).is_ok() {
                self.repunch.probing(peer, id);
            }
        }
    }

    /// Dials members that have no QUIC connection over QUIC, so packets can ride datagrams.
    fn dial_quic(&mut self) {
        let Some(dials) = self.quic_dials.as_mut() else { return };
        let now = std::time::Instant::now();
        let gate = &self.swarm.behaviour().gate;
        let mut due = Vec::new();
        for (peer, conns) in &self.connections {
            if !gate.is_open(peer) {
                continue;
            }
            // A reachability check's dial back (from a new port) does not count: it goes.
            let has_quic = conns.iter().any(|c| {
                let dial_back =
                    matches!(c.endpoint, ConnectedPoint::Dialer { port_use: PortUse::New, .. });
                is_direct_quic_connection(&c.endpoint) && !dial_back
            });
            if let Some(addrs) = dials.due(*peer, has_quic, now) {
                due.push((*peer, addrs));
            }
        }
        for (peer, addrs) in due {
            tracing::debug!(%peer, ?addrs, "dialing over QUIC for datagrams");
            let opts =
                DialOpts::peer_id(peer).condition(PeerCondition::Always).addresses(addrs).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial over QUIC");
            }
        }
    }

    /// Whether `connection` is a direct QUIC connection to `peer` while it has another
    /// direct one: it carries datagrams, which tell for themselves whether they get
    /// through, and QUIC's idle timeout ends it; a lapse of UDP alone does not.
    fn is_datagram_companion(&self, peer: PeerId, connection: ConnectionId) -> bool {
        let Some(conns) = self.connections.get(&peer) else { return false };
        let quic =
            conns.iter().any(|c| c.id == connection && is_direct_quic_connection(&c.endpoint));
        quic && conns.iter().any(|c| c.id != connection && !c.endpoint.is_relayed())
    }

    /// Dials the bootstrap addresses again while no member is connected.
    fn redial_bootstrap(&mut self) {
        let gate = &self.swarm.behaviour().gate;
        let alone = !self.connections.keys().any(|peer| gate.is_open(peer));
        for addr in self.bootstrap.due(alone) {
            tracing::debug!(%addr, "no member connected; dialing the bootstrap peer again");
            // Not while a connection to it is being made or proven (a busy bootstrap peer
            // takes longer than the first pause): another would only add to its load.
            let dial = match peer_of(&addr) {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => addr.into(),
            };
            let _ = self.swarm.dial(dial);
        }
    }

    /// Shuts the gate on `peer`, drops it from the routing table, closes its connections.
    fn expel(&mut self, peer: PeerId) {
        self.links.forget(&peer);
        let behaviour = self.swarm.behaviour_mut();
        behaviour.gate.forget(&peer);
        behaviour.gate.inner.kad.remove_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Closes connections of refused peers, and of peers that have not proven themselves
    /// members in time.
    fn close_unproven(&mut self) {
        let now = std::time::Instant::now();
        let done: Vec<PeerId> = self
            .refused
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= REFUSAL_GRACE)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in done {
            self.refused.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let mut late = Vec::new();
        for (peer, conns) in &self.connections {
            if self.swarm.behaviour().gate.is_open(peer) || self.refused.contains_key(peer) {
                continue;
            }
            let old =
                conns.iter().filter(|c| now.duration_since(c.since) >= self.membership_timeout);
            late.extend(old.map(|c| (*peer, c.id)));
        }
        let mut told = std::collections::HashSet::new();
        for (peer, id) in late {
            if self.swarm.close_connection(id) && told.insert(peer) {
                tracing::debug!(%peer, "closing a connection not proven a member in time");
                if let Some(admission) = &self.admission {
                    admission.refused(&peer, PeerRefusal::Timeout);
                }
            }
        }
    }

    /// Whether `addr` lies in the overlay (see [`P2pConfig::overlay`]).
    fn in_overlay(&self, addr: &Multiaddr) -> bool {
        ip_of(addr).is_some_and(|ip| self.overlay.iter().any(|net| net.contains(&ip)))
    }

    /// Books a new connection. One over the peer's limit stays for now (the swarm holds
    /// it to [`REPLACEMENT_ROOM`] more): it may be the peer's new first connection, come to
    /// replace dead ones; [`Self::trim_connections`] closes what is still over later.
    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: ConnectedPoint) {
        let now = std::time::Instant::now();
        let conns = self.connections.entry(peer).or_default();
        let went_direct = !endpoint.is_relayed()
            && !conns.is_empty()
            && conns.iter().all(|c| c.endpoint.is_relayed());
        // A direct connection next to a relayed one is a punched hole, whichever side
        // dialed (only the dialing side hears of it from the hole punching itself).
        let punched = went_direct && self.swarm.behaviour().gate.inner.dcutr.is_enabled();
        let first = conns.is_empty();
        conns.push(Connection { id, since: now, endpoint, rtt: None, punched, first });
        self.tell_paths();
        if went_direct {
            tracing::info!(%peer, "a direct connection now carries what the relay did");
            if let Some(observer) = &self.observer {
                observer.went_direct(&peer);
            }
        }
    }

    /// Holds each peer to `max_connections_per_peer` once its newest connection is
    /// [`REPLACE_OLDER_THAN`] old (time for the membership exchange to replace dead ones):
    /// while it has a direct connection its relayed ones go first, then the newest.
    fn trim_connections(&mut self) {
        let now = std::time::Instant::now();
        let max = self.max_per_peer as usize;
        let mut close = Vec::new();
        for (peer, conns) in &mut self.connections {
            if conns.len() <= max
                || conns.iter().any(|c| now.duration_since(c.since) < REPLACE_OLDER_THAN)
            {
                continue;
            }
            let direct = conns.iter().any(|c| !c.endpoint.is_relayed());
            // Kept first: direct ones (when there are any) before relayed, older before newer.
            conns.sort_by_key(|c| (direct && c.endpoint.is_relayed(), c.since));
            close.extend(conns.drain(max..).map(|c| (*peer, c.id)));
        }
        for (peer, id) in &close {
            tracing::debug!(%peer, "over the connections allowed per peer; closing one");
            self.swarm.close_connection(*id);
        }
        if !close.is_empty() {
            self.tell_paths();
        }
    }

    /// The peer began the membership exchange on `newest`, which it does only on its first
    /// connection to us: our older connections to it are dead on its side, though we may
    /// not have noticed yet (it restarted, or moved to another address and cannot answer
    /// on the old path), whichever path each takes: a peer that roams behind a NAT comes
    /// back through a relay while our direct connection to its old address is dead.
    /// Connections less than [`REPLACE_OLDER_THAN`] older than `newest` are a simultaneous
    /// dial's twins and stay, and so does every connection newer than it (the request may
    /// come on an older connection, when the peer presents itself again: a hole punched
    /// since stays). A younger one with the peer at another IP address is no twin and goes
    /// too. A second connection the peer makes while it keeps the first (a punched
    /// hole, a reachability check dialing back) starts no exchange and replaces nothing.
    fn replace_older(&mut self, peer: PeerId, newest: ConnectionId) -> bool {
        let Some(conns) = self.connections.get_mut(&peer) else { return false };
        // A connection closed since (trimmed, say) is judged as if it came now.
        let (since, from) = conns.iter().find(|c| c.id == newest).map_or_else(
            || (std::time::Instant::now(), None),
            |c| (c.since, ip_of(c.endpoint.get_remote_address())),
        );
        let replaced = |c: &Connection| {
            let ip = ip_of(c.endpoint.get_remote_address());
            c.id != newest
                && (c.since + REPLACE_OLDER_THAN <= since
                    // Younger, but with the peer at another IP address: not a twin (those
                    // run between the addresses the two have), a path it left (it roamed
                    // and came back at once).
                    || (c.since <= since && from.is_some() && ip.is_some() && ip != from))
        };
        let (old, keep): (Vec<_>, Vec<_>) = conns.drain(..).partition(replaced);
        *conns = keep;
        for old in &old {
            tracing::info!(%peer, "the peer connected anew; closing the older connection");
            self.swarm.close_connection(old.id);
        }
        // Our half of the exchange went out on an older connection, if at all: it goes
        // again once the peer is taken.
        !old.is_empty()
    }

    /// The paths of every connected peer.
    fn paths(&self) -> Vec<PeerPath> {
        let mut paths: Vec<PeerPath> = self
            .connections
            .iter()
            .filter_map(|(peer, conns)| {
                let used = conns.iter().find(|c| !c.endpoint.is_relayed()).or(conns.first())?;
                Some(PeerPath {
                    peer: *peer,
                    relayed: used.endpoint.is_relayed(),
                    address: used.endpoint.get_remote_address().clone(),
                    connections: conns.len(),
                    rtt: used.rtt,
                    hole_punched: used.punched,
                })
            })
            .collect();
        paths.sort_by_key(|p| p.peer);
        paths
    }

    /// Tells the observer how many peers are connected directly and through relays only,
    /// when that changed.
    fn tell_paths(&mut self) {
        let Some(observer) = &self.observer else { return };
        let direct = self
            .connections
            .values()
            .filter(|c| c.iter().any(|c| !c.endpoint.is_relayed()))
            .count();
        let relayed = self.connections.len() - direct;
        if (direct, relayed) != self.paths_told {
            self.paths_told = (direct, relayed);
            observer.paths(direct, relayed);
        }
    }

    /// Whether a relay's address `addr` (from identify) can carry a reservation: one of
    /// the underlay, neither loopback nor relayed itself.
    fn usable_for_relay(&self, addr: &Multiaddr) -> bool {
        !is_circuit(addr) && ip_of(addr).is_some() && self.policy.allows(addr).is_ok()
    }

    /// The address to reach `relay` at, for our reservation on it: the one we dialed it on,
    /// else the first it announced.
    fn relay_address(&self, relay: &PeerId) -> Option<Multiaddr> {
        let dialed =
            self.connections.get(relay).into_iter().flatten().find_map(|c| match &c.endpoint {
                ConnectedPoint::Dialer { address, .. } if !is_circuit(address) => {
                    Some(address.clone())
                }
                _ => None,
            });
        let announced = || self.reach.relays.get(relay).and_then(|a| a.first().cloned());
        let addr = dialed.or_else(announced)?;
        Some(addr.into_iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect())
    }

    /// Holds slots on member relays while we are not publicly reachable; gives them up
    /// once we are.
    fn update_relays(&mut self) {
        for listener in self.reach.release_if_public() {
            tracing::info!("reachable directly; giving up our slot on a relay");
            self.swarm.remove_listener(listener);
        }
        let gate = &self.swarm.behaviour().gate;
        let relays = self.reach.relays_to_ask(|relay| gate.is_open(relay));
        for relay in relays {
            let Some(addr) = self.relay_address(&relay) else { continue };
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(listener) => {
                    tracing::debug!(%relay, %circuit, "asking a relay for a slot");
                    self.reach.reserving(relay, listener, circuit);
                }
                Err(e) => tracing::debug!(%relay, error = %e, "cannot ask the relay for a slot"),
            }
        }
    }

    /// Turns relaying on or off (`Some`), as reachability changed.
    fn set_serving(&mut self, change: Option<bool>) {
        let Some(on) = change else { return };
        if let Some(relay) = self.swarm.behaviour_mut().gate.inner.relay.as_mut() {
            let status = if on { relay::Status::Enable } else { relay::Status::Disable };
            relay.set_status(Some(status));
            tracing::info!(serving = on, "relaying for members");
        }
    }

    fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } => {
                if self.reach.accepted(relay_peer_id) {
                    tracing::info!(relay = %relay_peer_id, "holding a slot on a member relay");
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "circuit through a relay open");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "a member reached us through our relay");
            }
        }
    }

    /// A hole punch ended: the direct connection is marked, the outcome counted.
    fn on_hole_punch(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        let relayed_since = self
            .connections
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|c| c.endpoint.is_relayed())
            .map(|c| c.since)
            .min();
        let took = relayed_since.map(|t| t.elapsed().as_millis()).unwrap_or_default();
        let succeeded = event.result.is_ok();
        match event.result {
            Ok(id) => {
                let conns = self.connections.get_mut(&peer).into_iter().flatten();
                if let Some(conn) = conns.into_iter().find(|c| c.id == id) {
                    conn.punched = true;
                }
                tracing::info!(%peer, took_ms = took, "punched a hole: a direct connection now carries the peer's streams");
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "hole punching failed; the relay carries the peer's streams");
                let probe = self.repunch.failed(peer, std::time::Instant::now());
                // The connection made for this punch goes, unless it is all that is left.
                let others = self
                    .connections
                    .get(&peer)
                    .is_some_and(|conns| conns.iter().any(|c| Some(c.id) != probe));
                if let Some(probe) = probe.filter(|_| others) {
                    self.swarm.close_connection(probe);
                }
            }
        }
        if let Some(observer) = &self.observer {
            observer.hole_punch(&peer, succeeded);
        }
    }

    /// The host gained or lost an address: listeners on one IP follow it.
    fn on_if_event(&mut self, event: Option<std::io::Result<if_watch::IfEvent>>) {
        match event {
            Some(Ok(if_watch::IfEvent::Down(net))) => {
                for (id, addr) in self.specific.ip_gone(net.addr()) {
                    tracing::info!(address = %addr, "our listen address went away; listening there again when it is back");
                    self.swarm.remove_listener(id);
                    self.policy.own(&addr, false);
                    self.on_address_gone(&addr);
                }
            }
            Some(Ok(if_watch::IfEvent::Up(net))) => {
                for addr in self.specific.ip_back(net.addr()) {
                    match self.swarm.listen_on(addr.clone()) {
                        Ok(id) => self.specific.listening(&addr, id),
                        Err(e) => {
                            tracing::warn!(address = %addr, error = %e, "cannot listen again")
                        }
                    }
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "watching the host's addresses"),
            None => self.interfaces = None,
        }
    }

    /// One of our own addresses went away (an interface went down, the host moved to
    /// another network): connections on it are dead even if the kernel has not said so.
    /// Connections we dialed to addresses of its family, and those that came in on a
    /// wildcard listener of its family, may have used it, so they go too; the next packet
    /// dials again from an address we have.
    fn on_address_gone(&mut self, address: &Multiaddr) {
        let Some(gone) = ip_of(address) else { return };
        // Loopback and link-local addresses carry no connection to another host.
        let local_only = match gone {
            IpAddr::V4(ip) => ip.is_loopback() || ip.is_link_local(),
            IpAddr::V6(ip) => ip.is_loopback() || ip.is_unicast_link_local(),
        };
        if local_only || self.in_overlay(address) {
            return;
        }
        let mut closed = 0;
        let swarm = &mut self.swarm;
        for conns in self.connections.values_mut() {
            conns.retain(|conn| {
                let on_it = match &conn.endpoint {
                    ConnectedPoint::Dialer { address, .. } => {
                        ip_of(address).is_some_and(|to| to.is_ipv4() == gone.is_ipv4())
                    }
                    // A QUIC listener's connections name the wildcard it listens on, not
                    // the address they came in on: of the lost address's family, they may
                    // be on it.
                    ConnectedPoint::Listener { local_addr, .. } => match ip_of(local_addr) {
                        Some(at) if at.is_unspecified() => at.is_ipv4() == gone.is_ipv4(),
                        at => at == Some(gone),
                    },
                };
                if on_it && swarm.close_connection(conn.id) {
                    closed += 1;
                }
                !on_it
            });
        }
        tracing::info!(address = %gone, closed, "our address went away; its connections are closed and will be dialed anew");
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            } if self.swarm.behaviour().gate.is_open(&source) => {
                let existing = self
                    .swarm
                    .behaviour_mut()
                    .gate
                    .inner
                    .kad
                    .store_mut()
                    .get(&record.key)
                    .map(|r| r.value.clone());
                let allowed = self.filter.as_ref().is_none_or(|filter| {
                    filter(record.key.as_ref(), &record.value, existing.as_deref())
                });
                let stored = match allowed {
                    true => self
                        .swarm
                        .behaviour_mut()
                        .gate
                        .inner
                        .kad
                        .store_mut()
                        .put(record)
                        .map_err(|e| e.to_string()),
                    false => Err("it does not pass the checks".to_owned()),
                };
                if let Err(why) = stored
                    && let Some(held_back) = self.warnings.admit(source)
                {
                    let why = PeerText(&why);
                    tracing::warn!(peer = %source, held_back, "refused a DHT record: {why}");
                }
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => {
                self.on_query(id, result, step.last)
            }
            _ => {}
        }
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::GetRecord(outcome) => {
                if let Some(Pending::Get { found, .. }) = self.pending.get_mut(&id)
                    && let Ok(GetRecordOk::FoundRecord(peer_record)) = outcome
                {
                    found.push(peer_record.record.value);
                }
                if last && let Some(Pending::Get { found, reply }) = self.pending.remove(&id) {
                    // Finding nothing is an answer, not an error.
                    let _ = reply.send(Ok(found));
                }
            }
            QueryResult::GetClosestPeers(Ok(found)) => {
                if let Some(Pending::FindPeer(target)) = self.pending.get(&id) {
                    let target = *target;
                    if let Some(info) = found.peers.into_iter().find(|p| p.peer_id == target) {
                        self.pending.remove(&id);
                        // Found: the query's remaining steps would only cost lookups.
                        if let Some(mut query) =
                            self.swarm.behaviour_mut().gate.inner.kad.query_mut(&id)
                        {
                            query.finish();
                        }
                        tracing::debug!(peer = %target, addrs = ?info.addrs, "found by peer routing");
                        // Also while a dial to addresses that no longer answer is under way.
                        let opts = DialOpts::peer_id(target)
                            .condition(PeerCondition::Disconnected)
                            .addresses(info.addrs)
                            .build();
                        let _ = self.swarm.dial(opts);
                    }
                }
                if last && let Some(Pending::FindPeer(target)) = self.pending.remove(&id) {
                    tracing::debug!(peer = %target, "peer routing did not find the peer");
                }
            }
            QueryResult::PutRecord(outcome) => {
                if let Some(Pending::Put { reply }) = self.pending.remove(&id) {
                    let _ =
                        reply.send(outcome.map(|_| ()).map_err(|e| P2pError::Dht(e.to_string())));
                }
            }
            _ => {
                if last {
                    self.pending.remove(&id);
                }
            }
        }
    }
}

impl P2pHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| P2pError::Stopped)?;
        rx.await.map_err(|_| P2pError::Stopped)
    }

    /// This node's peer ID.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// A clone of the stream control, for opening and accepting raw streams.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Connects to `peer` (at `addrs`, or wherever the DHT knows it to be); returns once
    /// connected. Harmless when already connected. The dial belongs to the swarm: a caller
    /// that stops waiting does not cancel it, and new `addrs` are dialed even while an
    /// older dial is under way.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), P2pError> {
        self.ask(|reply| Command::Dial { peer, addrs, reply }).await?
    }

    /// Remembers where `peer` can be reached.
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), P2pError> {
        self.commands
            .send(Command::AddAddresses { peer, addrs })
            .await
            .map_err(|_| P2pError::Stopped)
    }

    /// Stores a record in the DHT (and locally) for `ttl`; returns once at least one other
    /// peer stored it.
    pub async fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), P2pError> {
        self.ask(|reply| Command::PutRecord { key, value, ttl, reply }).await?
    }

    /// Every value found under `key`, locally and in the DHT (empty when none).
    pub async fn get_records(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, P2pError> {
        self.ask(|reply| Command::GetRecords { key, reply }).await?
    }

    /// The addresses the swarm listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, P2pError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Every connection now: the peer and its address at the far end.
    pub async fn connections(&self) -> Result<Vec<(PeerId, Multiaddr)>, P2pError> {
        self.ask(|reply| Command::Connections { reply }).await
    }

    /// How every connected peer is reached: directly or through a relay, and the round trip.
    pub async fn paths(&self) -> Result<Vec<PeerPath>, P2pError> {
        self.ask(|reply| Command::Paths { reply }).await
    }

    /// How this node is reached: its confirmed addresses, its relays, whether it relays.
    pub async fn reachability(&self) -> Result<Reachability, P2pError> {
        self.ask(|reply| Command::Reachability { reply }).await
    }

    /// What this node asked of the DHT since it started.
    pub async fn dht_counts(&self) -> Result<DhtCounts, P2pError> {
        self.ask(|reply| Command::DhtCounts { reply }).await
    }

    /// `peer` is no member any more: its connections close and the routing table drops it.
    pub async fn expel(&self, peer: PeerId) -> Result<(), P2pError> {
        self.commands.send(Command::Expel { peer }).await.map_err(|_| P2pError::Stopped)
    }

    /// The peers in the Kademlia routing table now.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, P2pError> {
        self.ask(|reply| Command::RoutingTable { reply }).await
    }

    /// The peers connected now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, P2pError> {
        self.ask(|reply| Command::Connected { reply }).await
    }
}

#[async_trait::async_trait]
impl vpn_api::DhtRecords for P2pHandle {
    async fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), vpn_errors::VpnError> {
        P2pHandle::put_record(self, key, value, ttl).await.map_err(Into::into)
    }

    async fn get_records(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, vpn_errors::VpnError> {
        P2pHandle::get_records(self, key).await.map_err(Into::into)
    }
}

/// Logs what the relay did for members.
fn on_relay_server(event: relay::Event) {
    match event {
        relay::Event::ReservationReqAccepted { src_peer_id, renewed: false } => {
            tracing::info!(peer = %src_peer_id, "a member holds a slot on us as its relay")
        }
        relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
            tracing::info!(from = %src_peer_id, to = %dst_peer_id, "relaying between members")
        }
        relay::Event::CircuitClosed { src_peer_id, dst_peer_id, error } => {
            tracing::info!(from = %src_peer_id, to = %dst_peer_id, ?error, "relayed circuit closed")
        }
        other => tracing::debug!(?other, "relay"),
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    async fn start() -> P2pNode {
        let listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        let config = P2pConfig::new(libp2p::identity::Keypair::generate_ed25519(), listen);
        P2pNode::start(config).await.unwrap()
    }

    #[tokio::test]
    async fn a_swarm_task_that_dies_is_reported_and_a_stopped_one_is_not() {
        let node = start().await;
        let ended = node.ended();
        node.handle.commands.send(Command::Panic).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), ended).await;
        assert_eq!(why.expect("the end is reported"), "the swarm's task panicked");
        node.stop().await;

        let node = start().await;
        let ended = node.ended();
        node.stop().await;
        assert!(node.task.lock().unwrap().is_none(), "the task is gone");
        assert_eq!(ended.now_or_never(), None, "a stop is no fault");
    }
}
