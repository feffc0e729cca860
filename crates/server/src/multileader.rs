//! Multi-leader mode in the node (`mode = "multi-leader"`): datacenter discovery at start, and the
//! cross-datacenter stream between datacenter leaders.
//!
//! Each datacenter (DC) is one Raft group made of its own nodes. Every node runs [`MlNode::run`],
//! but only a DC's ready leader does anything with it:
//!
//! ```text
//!   upstream DC leader                                   downstream DC (any node / its leader)
//!   ------------------                                   -------------------------------------
//!   Locate { from_dc, epoch }  ───────────────────────▶  not the leader: Located { leader hint }
//!                              ◀───────────────────────  leader: Located { position }  (its
//!                                                        upstream_position for us, or what it has
//!                                                        proposed past that in this term)
//!   Batch { after, Remote/Bootstrap .. through } ─────▶  after <= proposed: propose it (Raft), else
//!   (journal_batch from `sent`, pipelined up to a        Nack { proposed } (the sender rewinds)
//!    window of positions; `export()` when trimmed)
//!                              ◀───────────────────────  Ack { upstream_position } once applied
//!                                                        (and every ACK_INTERVAL as a heartbeat)
//! ```
//!
//! Everything a link needs to resume is replicated state on the receiving side
//! (`upstream_position`, plus the per-origin applied vector that drops duplicates), so a restart or
//! a leader change on either side only costs a new `Locate`. A downstream DC that does not answer
//! within `link_timeout_ms` is retried with backoff and reported as unreachable (and routed around in
//! star and ring topologies).
//!
//! Datacenters: `--initial-cluster` names every node of every DC; nodes learn each other's DC from
//! the peer hello (`PeerMessage::Hello { datacenter }`). A node waits at its first start until it
//! knows every node's DC, then records the assignment in its data directory (`DATACENTERS`), so a
//! restart never waits. A DC's id ([`DcId`]) is the index of its name among the sorted distinct
//! names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chorus_core::multileader::{ConflictPolicy, DcId, MlEntry, MultiLeaderState, Topology};
use chorus_core::raft::Role;
use chorus_core::{Term, UnixMillis};
use chorus_transport::PeerNetwork;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{ConflictPolicyConfig, NodeConfig, TopologyKind, valid_datacenter_name};
use crate::context::{NodeContext, now_millis};
use crate::node::NodeError;
use crate::peer::PeerMessage;

/// Where a node records every node's datacenter once it has learnt them.
pub const DATACENTERS_FILE: &str = "DATACENTERS";
/// Journal positions remembered per link for its lag in milliseconds (past this, the newest sample
/// is replaced: the oldest, which the lag reads, stays right).
const LAG_SAMPLES_MAX: usize = 4096;
/// The least time between two rounds of the driver (see `MlNode::run`).
const STEP_GAP_MIN: Duration = Duration::from_millis(2);
/// How often a datacenter leader's driver runs at the least (retries, timeouts, heartbeats); it
/// also runs after every batch the applier applies (new journal items to send, positions to
/// acknowledge).
const DRIVER_INTERVAL: Duration = Duration::from_millis(10);
/// How often the driver of a node that does not lead its datacenter checks whether it does now.
const DRIVER_INTERVAL_IDLE: Duration = Duration::from_millis(50);
/// A downstream leader acknowledges at least this often, so a quiet link still shows it is alive.
const ACK_INTERVAL: Duration = Duration::from_millis(100);
const LOCATE_RETRY_MIN: Duration = Duration::from_millis(50);
const LOCATE_RETRY_MAX: Duration = Duration::from_secs(2);
/// How often a node waiting for the other nodes' datacenters says hello again.
const DISCOVERY_HELLO_INTERVAL: Duration = Duration::from_millis(200);

/// What datacenter leaders say to each other (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MlMessage {
    /// Upstream DC `from_dc` looks for the leader of the receiver's DC and its resume position.
    Locate { from_dc: DcId, epoch: u64 },
    /// The answer: `position` is set only by the ready leader of DC `dc`; others give a hint.
    Located { dc: DcId, epoch: u64, leader: Option<u64>, position: Option<u64> },
    /// Changes of `from_dc`'s journal after position `after` (the entry says through where).
    Batch { from_dc: DcId, epoch: u64, after: u64, entry: MlEntry },
    /// DC `dc` has applied the sender's journal through `position`.
    Ack { dc: DcId, epoch: u64, position: u64 },
    /// DC `dc` cannot take a batch starting past `position`: resend from there.
    Nack { dc: DcId, epoch: u64, position: u64 },
}

/// Every node's datacenter, and the DC ids derived from the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datacenters {
    /// Sorted distinct names: a DC's id is its index here.
    names: Vec<String>,
    of_node: BTreeMap<u64, DcId>,
}

impl Datacenters {
    /// From `node id -> datacenter name`. DC ids are the names' indexes in sorted order.
    pub fn new(assignment: &BTreeMap<u64, String>) -> Datacenters {
        let names: Vec<String> = assignment.values().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let of_node = assignment
            .iter()
            .filter_map(|(&node, name)| {
                let index = names.iter().position(|known| known == name)?;
                Some((node, DcId(u16::try_from(index).ok()?)))
            })
            .collect();
        Datacenters { names, of_node }
    }

    pub fn dc_of(&self, node: u64) -> Option<DcId> {
        self.of_node.get(&node).copied()
    }

    pub fn name(&self, dc: DcId) -> &str {
        self.names.get(usize::from(dc.0)).map_or("?", String::as_str)
    }

    pub fn by_name(&self, name: &str) -> Option<DcId> {
        self.names.iter().position(|known| known == name).and_then(|index| u16::try_from(index).ok()).map(DcId)
    }

    pub fn all(&self) -> Vec<DcId> {
        (0..self.names.len()).filter_map(|index| u16::try_from(index).ok()).map(DcId).collect()
    }

    pub fn nodes_in(&self, dc: DcId) -> Vec<u64> {
        self.of_node.iter().filter(|(_, of)| **of == dc).map(|(&node, _)| node).collect()
    }
}

/// Learns the datacenter of every node in `members`: from the data directory if this node has
/// recorded them before, else from the peers' hellos (waiting until every node has said), then
/// records them.
pub async fn discover_datacenters(
    config: &NodeConfig,
    network: &PeerNetwork<PeerMessage>,
    inbound: &mut mpsc::Receiver<(u64, PeerMessage)>,
    members: &BTreeMap<u64, SocketAddr>,
) -> Result<BTreeMap<u64, String>, NodeError> {
    let own = config.datacenter_name();
    let path = config.data_dir.join(DATACENTERS_FILE);
    if let Some(recorded) = read_assignment(&path)? {
        if recorded.get(&config.id) != Some(&own) {
            return Err(NodeError::Inconsistent(format!(
                "{} records this node in datacenter {:?}, but it was started with --datacenter {own}: a node cannot move",
                path.display(),
                recorded.get(&config.id)
            )));
        }
        if members.keys().all(|id| recorded.contains_key(id)) {
            return Ok(recorded);
        }
    }
    let mut known: BTreeMap<u64, String> = BTreeMap::from([(config.id, own.clone())]);
    let hello = PeerMessage::Hello { client_addr: config.client_addr.to_string(), datacenter: own };
    let mut next_hello = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(5);
    while !members.keys().all(|id| known.contains_key(id)) {
        if Instant::now() >= next_hello {
            for &peer in members.keys().filter(|&&peer| peer != config.id) {
                network.send(peer, &hello);
            }
            next_hello = Instant::now() + DISCOVERY_HELLO_INTERVAL;
        }
        if Instant::now() >= next_report {
            let missing: Vec<u64> = members.keys().filter(|id| !known.contains_key(id)).copied().collect();
            tracing::info!(?missing, "waiting to learn the datacenter of every node in initial_cluster");
            next_report = Instant::now() + Duration::from_secs(5);
        }
        match tokio::time::timeout(DISCOVERY_HELLO_INTERVAL, inbound.recv()).await {
            Ok(Some((from, PeerMessage::Hello { datacenter, .. }))) => {
                if members.contains_key(&from) && valid_datacenter_name(&datacenter) {
                    known.insert(from, datacenter);
                } else {
                    tracing::warn!(from, %datacenter, "a hello from an unknown node or with an invalid datacenter; ignored");
                }
            }
            // Anything else is for the group, which does not exist yet: its senders retry.
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => return Err(NodeError::Inconsistent("the peer network stopped during start-up".into())),
        }
    }
    write_assignment(&path, &known)?;
    tracing::info!(?known, "learnt every node's datacenter");
    Ok(known)
}

fn read_assignment(path: &std::path::Path) -> Result<Option<BTreeMap<u64, String>>, NodeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(NodeError::Io { context: format!("reading {}", path.display()), source }),
    };
    let mut assignment = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let parsed = line
            .split_once('=')
            .and_then(|(id, name)| Some((id.trim().parse::<u64>().ok()?, name.trim().to_string())))
            .filter(|(_, name)| valid_datacenter_name(name));
        let Some((id, name)) = parsed else {
            return Err(NodeError::Inconsistent(format!("{}: bad line '{line}'", path.display())));
        };
        assignment.insert(id, name);
    }
    Ok(Some(assignment))
}

fn write_assignment(path: &std::path::Path, assignment: &BTreeMap<u64, String>) -> Result<(), NodeError> {
    use std::io::Write as _;
    let text: String = assignment.iter().map(|(id, name)| format!("{id}={name}\n")).collect();
    let temp = path.with_extension("tmp");
    let io = |source| NodeError::Io { context: format!("writing {}", path.display()), source };
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// The conflict policy and topology the configuration names, with DC names resolved to ids.
pub fn resolve_config(config: &NodeConfig, dcs: &Datacenters) -> Result<(ConflictPolicy, Topology), NodeError> {
    let policy = match config.multileader.conflict_policy {
        ConflictPolicyConfig::Lww => ConflictPolicy::LastWriteWins,
        ConflictPolicyConfig::Siblings => ConflictPolicy::Siblings,
    };
    let lookup = |name: &str| {
        dcs.by_name(name.trim())
            .ok_or_else(|| NodeError::Inconsistent(format!("multileader: no node is in datacenter '{name}'")))
    };
    let topology = match config.multileader.topology {
        TopologyKind::AllToAll => Topology::AllToAll,
        TopologyKind::Star => Topology::Star { hub: lookup(config.multileader.hub.as_deref().unwrap_or_default())? },
        TopologyKind::Ring => {
            let order = config.multileader.ring_order.as_deref().unwrap_or_default();
            let order: Vec<DcId> = order.split(',').map(lookup).collect::<Result<_, _>>()?;
            let distinct: BTreeSet<DcId> = order.iter().copied().collect();
            if distinct.len() != order.len() || distinct.len() != dcs.all().len() {
                return Err(NodeError::Inconsistent("multileader: ring_order must name every datacenter once".into()));
            }
            Topology::Ring { order }
        }
    };
    Ok((policy, topology))
}

/// Where an outgoing link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// This node does not lead its DC: no link.
    Idle,
    /// Looking for the downstream DC's leader and its resume position.
    Locating,
    /// Sending batches to `target`.
    Streaming,
}

/// This DC's stream to one downstream DC (on the DC's leader).
#[derive(Debug)]
struct Link {
    phase: Phase,
    /// Bumped at every reset, so answers to an older attempt are ignored.
    epoch: u64,
    /// The downstream node believed to lead its DC.
    target: Option<u64>,
    /// Journal position sent through, and acknowledged (applied downstream) through.
    sent: u64,
    acked: u64,
    last_heard: Option<Instant>,
    next_locate: Instant,
    backoff: Duration,
    /// Since when the link has been trying without an answer (reported as unreachable past the
    /// link timeout).
    trying_since: Option<Instant>,
    /// Whether the topology routes changes to this DC now.
    routed: bool,
    /// When each journal position past the acknowledged one was first seen (sampled once per
    /// driver round, bounded): the oldest gives the replication lag in milliseconds.
    pending_since: std::collections::VecDeque<(u64, Instant)>,
    lag_changes: u64,
    batches_sent: u64,
    bootstraps_sent: u64,
    bootstrap_failures: u64,
    resets: u64,
}

impl Link {
    fn new() -> Link {
        Link {
            phase: Phase::Idle,
            epoch: 0,
            target: None,
            sent: 0,
            acked: 0,
            last_heard: None,
            next_locate: Instant::now(),
            backoff: LOCATE_RETRY_MIN,
            trying_since: None,
            routed: false,
            pending_since: std::collections::VecDeque::new(),
            lag_changes: 0,
            batches_sent: 0,
            bootstraps_sent: 0,
            bootstrap_failures: 0,
            resets: 0,
        }
    }

    fn reset(&mut self, now: Instant) {
        self.phase = Phase::Locating;
        self.epoch += 1;
        self.next_locate = now;
        self.backoff = LOCATE_RETRY_MIN;
        self.trying_since.get_or_insert(now);
        self.resets += 1;
    }

    /// Alive unless it has been trying without an answer for longer than `timeout`.
    fn alive(&self, now: Instant, timeout: Duration) -> bool {
        self.trying_since.is_none_or(|since| now.duration_since(since) <= timeout)
    }
}

/// A stream this DC receives from one upstream DC (on the DC's leader).
#[derive(Debug)]
struct Upstream {
    term: Term,
    /// The upstream journal position proposed through in this term (at least what is applied).
    proposed_through: u64,
    /// The upstream node streaming to us, and its link epoch: acknowledgements go there.
    sender: Option<(u64, u64)>,
    last_acked: u64,
    last_ack_at: Option<Instant>,
    batches_received: u64,
    nacks_sent: u64,
}

/// One remote DC as INFO reports it.
#[derive(Debug, Clone)]
pub struct LinkReport {
    pub dc: DcId,
    pub name: String,
    pub state: &'static str,
    pub routed: bool,
    pub target: Option<u64>,
    pub sent: u64,
    pub acked: u64,
    pub lag_changes: u64,
    pub lag_ms: u64,
    pub batches_sent: u64,
    pub bootstraps_sent: u64,
    pub resets: u64,
    /// The journal position of that DC applied here (the incoming side).
    pub received_through: u64,
    pub partitioned: bool,
}

/// The multi-leader part of a node: the DC map, the topology, and the links.
pub struct MlNode {
    pub dcs: Datacenters,
    pub this: DcId,
    pub topology: Topology,
    pub policy: ConflictPolicy,
    network: PeerNetwork<PeerMessage>,
    batch_changes_max: usize,
    link_timeout: Duration,
    links: Mutex<BTreeMap<DcId, Link>>,
    upstreams: Mutex<BTreeMap<DcId, Upstream>>,
    partitioned: Mutex<BTreeSet<DcId>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MlNode {
    pub fn new(
        config: &NodeConfig,
        dcs: Datacenters,
        this: DcId,
        policy: ConflictPolicy,
        topology: Topology,
        network: PeerNetwork<PeerMessage>,
    ) -> MlNode {
        MlNode {
            dcs,
            this,
            topology,
            policy,
            network,
            batch_changes_max: config.multileader.batch_changes_max,
            link_timeout: Duration::from_millis(config.multileader.link_timeout_ms),
            links: Mutex::new(BTreeMap::new()),
            upstreams: Mutex::new(BTreeMap::new()),
            partitioned: Mutex::new(BTreeSet::new()),
        }
    }

    /// The multi-leader state a node of DC `this` starts with when its state has none.
    pub fn initial_state(config: &NodeConfig, this: DcId, policy: ConflictPolicy) -> MultiLeaderState {
        MultiLeaderState::new(this, policy, config.multileader.journal_entries_max)
    }

    fn send(&self, to: u64, message: MlMessage) {
        self.network.send(to, &PeerMessage::Ml(message));
    }

    /// `CHORUS.DEBUG DC-PARTITION dc ON|OFF`: cuts this node off from every node of `dc` (both
    /// ways), or reconnects it.
    pub fn set_partitioned(&self, dc: DcId, on: bool) {
        for node in self.dcs.nodes_in(dc) {
            self.network.set_blocked(node, on);
        }
        let mut partitioned = lock(&self.partitioned);
        if on {
            partitioned.insert(dc);
        } else {
            partitioned.remove(&dc);
        }
    }

    /// Runs the driver until the node stops: after every applied batch and at least every
    /// `DRIVER_INTERVAL`, the DC leader streams what its journal gained and acknowledges what it
    /// applied.
    pub async fn run(self: Arc<Self>, context: Arc<NodeContext>) {
        loop {
            let started = tokio::time::Instant::now();
            let wait = if self.step(&context) { DRIVER_INTERVAL } else { DRIVER_INTERVAL_IDLE };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = context.state.applied.notified() => {
                    // Under load, applies come every few hundred microseconds: gather what they
                    // bring into one batch per gap rather than one small batch (one log entry
                    // downstream) per apply.
                    tokio::time::sleep_until(started + STEP_GAP_MIN).await;
                }
            }
        }
    }

    /// One round of the driver; returns whether this node leads its datacenter.
    fn step(&self, context: &NodeContext) -> bool {
        let (leading, term) = context.core.inspect(|inner| {
            let status = inner.replica.status();
            (status.role == Some(Role::Leader) && status.leader_ready, status.term)
        });
        let now = Instant::now();
        if !leading {
            for link in lock(&self.links).values_mut() {
                link.phase = Phase::Idle;
                link.trying_since = None;
                link.pending_since.clear();
            }
            lock(&self.upstreams).clear();
            return false;
        }
        let state = context.state.read();
        if let Some(ml) = state.multileader() {
            self.stream(ml, now);
            self.acknowledge(ml, term, now);
        }
        true
    }

    /// The upstream side: keeps a link to every other DC, streams to the routed ones.
    fn stream(&self, ml: &MultiLeaderState, now: Instant) {
        let all = self.dcs.all();
        let journal_last = ml.journal_last();
        let mut links = lock(&self.links);
        let dead: BTreeSet<DcId> = links
            .iter()
            .filter(|(_, link)| link.phase != Phase::Idle && !link.alive(now, self.link_timeout))
            .map(|(&dc, _)| dc)
            .collect();
        let alive = |dc: DcId| !dead.contains(&dc);
        let routes = self.topology.routes(self.this, &all, &alive);
        for &dc in all.iter().filter(|&&dc| dc != self.this) {
            let link = links.entry(dc).or_insert_with(Link::new);
            link.routed = routes.send_to.contains(&dc);
            if link.phase == Phase::Idle {
                link.reset(now);
            }
            if link.phase == Phase::Streaming
                && link.last_heard.is_none_or(|heard| now.duration_since(heard) > self.link_timeout)
            {
                tracing::warn!(
                    dc = self.dcs.name(dc),
                    "a downstream datacenter stopped answering; looking for its leader again"
                );
                link.reset(now);
            }
            if link.phase == Phase::Locating && now >= link.next_locate {
                let message = MlMessage::Locate { from_dc: self.this, epoch: link.epoch };
                match link.target {
                    // The believed leader first; everyone once the hint has failed.
                    Some(target) if link.backoff == LOCATE_RETRY_MIN => self.send(target, message),
                    _ => {
                        for node in self.dcs.nodes_in(dc) {
                            self.send(node, message.clone());
                        }
                    }
                }
                link.next_locate = now + link.backoff;
                link.backoff = (link.backoff * 2).min(LOCATE_RETRY_MAX);
            }
            if link.phase == Phase::Streaming && link.routed {
                self.send_batches(ml, dc, link, &all, &alive);
            }
            // Lag: journal positions not yet acknowledged, and how long the oldest has waited
            // (only on routed links).
            link.lag_changes = if link.routed { journal_last.saturating_sub(link.acked) } else { 0 };
            while link.pending_since.front().is_some_and(|(position, _)| *position <= link.acked) {
                link.pending_since.pop_front();
            }
            if !link.routed {
                link.pending_since.clear();
            } else if journal_last > link.acked
                && link.pending_since.back().is_none_or(|(last, _)| *last < journal_last)
            {
                if link.pending_since.len() >= LAG_SAMPLES_MAX {
                    link.pending_since.pop_back();
                }
                link.pending_since.push_back((journal_last, now));
            }
        }
    }

    /// Sends what the journal holds past `link.sent`, up to a window of unacknowledged positions.
    fn send_batches(
        &self,
        ml: &MultiLeaderState,
        dc: DcId,
        link: &mut Link,
        all: &[DcId],
        alive: &dyn Fn(DcId) -> bool,
    ) {
        let Some(target) = link.target else { return };
        let window = (self.batch_changes_max as u64).saturating_mul(8);
        let forward = |origin: DcId| self.topology.forwards(self.this, origin, dc, all, alive);
        while link.sent < ml.journal_last() && link.sent.saturating_sub(link.acked) < window {
            let after = link.sent;
            let entry = match ml.journal_batch(after, self.batch_changes_max, &forward) {
                Ok((items, through)) => {
                    let changes = items.into_iter().map(|item| item.change).collect();
                    MlEntry::Remote { from: self.this, through, changes }
                }
                Err(trimmed) => {
                    tracing::info!(dc = self.dcs.name(dc), %trimmed, "sending a bootstrap");
                    let through = ml.journal_last();
                    MlEntry::Bootstrap { from: self.this, through, state: Box::new(ml.export()) }
                }
            };
            let through = match &entry {
                MlEntry::Remote { through, .. } | MlEntry::Bootstrap { through, .. } => *through,
                MlEntry::Local { .. } => after,
            };
            if through <= after {
                break; // nothing more to say (cannot happen while sent < journal_last)
            }
            let bootstrap = matches!(entry, MlEntry::Bootstrap { .. });
            let message = PeerMessage::Ml(MlMessage::Batch { from_dc: self.this, epoch: link.epoch, after, entry });
            if !self.network.send(target, &message) {
                if bootstrap {
                    link.bootstrap_failures += 1;
                    if link.bootstrap_failures.is_power_of_two() {
                        tracing::error!(
                            dc = self.dcs.name(dc),
                            failures = link.bootstrap_failures,
                            "a bootstrap could not be sent (too large for one peer frame, or the queue is full); retrying"
                        );
                    }
                }
                break; // retried from `sent` at a later round (or after the link resets)
            }
            link.sent = through;
            link.batches_sent += 1;
            link.bootstraps_sent += u64::from(bootstrap);
        }
    }

    /// The downstream side: tells each upstream how far its stream has been applied.
    fn acknowledge(&self, ml: &MultiLeaderState, term: Term, now: Instant) {
        let mut upstreams = lock(&self.upstreams);
        for (&dc, upstream) in upstreams.iter_mut() {
            if upstream.term != term {
                upstream.term = term;
                upstream.proposed_through = ml.upstream_position(dc);
            }
            let position = ml.upstream_position(dc);
            upstream.proposed_through = upstream.proposed_through.max(position);
            let Some((sender, epoch)) = upstream.sender else { continue };
            let due = upstream.last_ack_at.is_none_or(|at| now.duration_since(at) >= ACK_INTERVAL);
            if position != upstream.last_acked || due {
                self.send(sender, MlMessage::Ack { dc: self.this, epoch, position });
                upstream.last_acked = position;
                upstream.last_ack_at = Some(now);
            }
        }
    }

    /// A multi-leader message from peer `from`.
    pub fn receive(&self, context: &NodeContext, from: u64, message: MlMessage) {
        match message {
            MlMessage::Locate { from_dc, epoch } => self.on_locate(context, from, from_dc, epoch),
            MlMessage::Batch { from_dc, epoch, after, entry } => {
                self.on_batch(context, from, from_dc, epoch, after, entry)
            }
            MlMessage::Located { dc, epoch, leader, position } => {
                self.on_located(from, dc, epoch, leader, position);
            }
            MlMessage::Ack { dc, epoch, position } => {
                let mut links = lock(&self.links);
                let Some(link) = links.get_mut(&dc) else { return };
                if link.phase == Phase::Streaming && link.epoch == epoch && link.target == Some(from) {
                    link.acked = link.acked.max(position);
                    link.sent = link.sent.max(position);
                    link.last_heard = Some(Instant::now());
                }
            }
            MlMessage::Nack { dc, epoch, position } => {
                let mut links = lock(&self.links);
                let Some(link) = links.get_mut(&dc) else { return };
                if link.phase == Phase::Streaming && link.epoch == epoch && link.target == Some(from) {
                    link.sent = position;
                    link.acked = link.acked.min(position);
                    link.last_heard = Some(Instant::now());
                }
            }
        }
    }

    /// Whether this node is its DC's ready leader, its term, and its leader hint otherwise.
    fn leadership(context: &NodeContext) -> (bool, Term, Option<u64>) {
        context.core.inspect(|inner| {
            let status = inner.replica.status();
            let leading = status.role == Some(Role::Leader) && status.leader_ready;
            (leading, status.term, status.leader.map(|leader| leader.0))
        })
    }

    fn upstream_entry(
        upstreams: &mut BTreeMap<DcId, Upstream>,
        dc: DcId,
        term: Term,
        applied_position: u64,
    ) -> &mut Upstream {
        let upstream = upstreams.entry(dc).or_insert_with(|| Upstream {
            term,
            proposed_through: applied_position,
            sender: None,
            last_acked: 0,
            last_ack_at: None,
            batches_received: 0,
            nacks_sent: 0,
        });
        if upstream.term != term {
            upstream.term = term;
            upstream.proposed_through = applied_position;
        }
        upstream.proposed_through = upstream.proposed_through.max(applied_position);
        upstream
    }

    fn on_locate(&self, context: &NodeContext, from: u64, from_dc: DcId, epoch: u64) {
        if self.dcs.dc_of(from) != Some(from_dc) || from_dc == self.this {
            return;
        }
        let (leading, term, hint) = Self::leadership(context);
        if !leading {
            self.send(from, MlMessage::Located { dc: self.this, epoch, leader: hint, position: None });
            return;
        }
        let applied = context.state.read().multileader().map_or(0, |ml| ml.upstream_position(from_dc));
        let mut upstreams = lock(&self.upstreams);
        let upstream = Self::upstream_entry(&mut upstreams, from_dc, term, applied);
        upstream.sender = Some((from, epoch));
        upstream.last_ack_at = None;
        let position = upstream.proposed_through;
        drop(upstreams);
        self.send(
            from,
            MlMessage::Located { dc: self.this, epoch, leader: Some(context.config.id), position: Some(position) },
        );
    }

    fn on_located(&self, from: u64, dc: DcId, epoch: u64, leader: Option<u64>, position: Option<u64>) {
        if self.dcs.dc_of(from) != Some(dc) {
            return;
        }
        let mut links = lock(&self.links);
        let Some(link) = links.get_mut(&dc) else { return };
        if link.epoch != epoch || link.phase == Phase::Idle {
            return;
        }
        let now = Instant::now();
        match position {
            Some(position) if link.phase == Phase::Locating => {
                tracing::info!(dc = self.dcs.name(dc), leader = from, position, "streaming to a downstream datacenter");
                link.phase = Phase::Streaming;
                link.target = Some(from);
                link.sent = position;
                link.acked = position;
                link.last_heard = Some(now);
                link.trying_since = None;
            }
            Some(_) => {}
            None => {
                // Not the leader: follow its hint (a redirect), at once.
                let hint = leader.filter(|&leader| leader != from && self.dcs.dc_of(leader) == Some(dc));
                if link.phase == Phase::Streaming && link.target == Some(from) {
                    link.reset(now);
                }
                if let Some(hint) = hint
                    && link.phase == Phase::Locating
                    && link.target != Some(hint)
                {
                    link.target = Some(hint);
                    self.send(hint, MlMessage::Locate { from_dc: self.this, epoch: link.epoch });
                }
            }
        }
    }

    fn on_batch(&self, context: &NodeContext, from: u64, from_dc: DcId, epoch: u64, after: u64, entry: MlEntry) {
        if self.dcs.dc_of(from) != Some(from_dc) || from_dc == self.this {
            return;
        }
        let through = match &entry {
            MlEntry::Remote { from, through, .. } | MlEntry::Bootstrap { from, through, .. } if *from == from_dc => {
                *through
            }
            _ => {
                tracing::warn!(from, "a malformed multi-leader batch (a local entry, or another origin); dropped");
                return;
            }
        };
        let (leading, term, hint) = Self::leadership(context);
        if !leading {
            self.send(from, MlMessage::Located { dc: self.this, epoch, leader: hint, position: None });
            return;
        }
        // State before core, as connections take them.
        let state = context.state.read();
        let applied = state.multileader().map_or(0, |ml| ml.upstream_position(from_dc));
        let mut upstreams = lock(&self.upstreams);
        let upstream = Self::upstream_entry(&mut upstreams, from_dc, term, applied);
        upstream.sender = Some((from, epoch));
        if after > upstream.proposed_through {
            upstream.nacks_sent += 1;
            let position = upstream.proposed_through;
            drop(upstreams);
            self.send(from, MlMessage::Nack { dc: self.this, epoch, position });
            return;
        }
        if through <= upstream.proposed_through {
            return; // already proposed (a resend)
        }
        let now: UnixMillis = now_millis();
        let result = context.core.with_remote(|inner| inner.replica.propose_multileader(now, entry));
        drop(state);
        match result {
            Ok(_) => {
                upstream.proposed_through = through;
                upstream.batches_received += 1;
            }
            Err(error) => {
                tracing::debug!(%error, "a multi-leader batch was not proposed");
                drop(upstreams);
                self.send(from, MlMessage::Located { dc: self.this, epoch, leader: hint, position: None });
            }
        }
    }

    /// Every remote DC's link, for INFO and metrics.
    pub fn report(&self, ml: Option<&MultiLeaderState>) -> Vec<LinkReport> {
        let now = Instant::now();
        let links = lock(&self.links);
        let partitioned = lock(&self.partitioned).clone();
        self.dcs
            .all()
            .into_iter()
            .filter(|&dc| dc != self.this)
            .map(|dc| {
                let link = links.get(&dc);
                let state = match link {
                    None => "idle",
                    Some(link) => match link.phase {
                        Phase::Idle => "idle",
                        Phase::Streaming => "streaming",
                        Phase::Locating if !link.alive(now, self.link_timeout) => "unreachable",
                        Phase::Locating => "connecting",
                    },
                };
                LinkReport {
                    dc,
                    name: self.dcs.name(dc).to_string(),
                    state,
                    routed: link.is_some_and(|link| link.routed),
                    target: link.and_then(|link| link.target),
                    sent: link.map_or(0, |link| link.sent),
                    acked: link.map_or(0, |link| link.acked),
                    lag_changes: link.map_or(0, |link| link.lag_changes),
                    lag_ms: link.and_then(|link| link.pending_since.front()).map_or(0, |(_, since)| {
                        u64::try_from(now.duration_since(*since).as_millis()).unwrap_or(u64::MAX)
                    }),
                    batches_sent: link.map_or(0, |link| link.batches_sent),
                    bootstraps_sent: link.map_or(0, |link| link.bootstraps_sent),
                    resets: link.map_or(0, |link| link.resets),
                    received_through: ml.map_or(0, |ml| ml.upstream_position(dc)),
                    partitioned: partitioned.contains(&dc),
                }
            })
            .collect()
    }

    /// The DCs this DC's own changes cannot reach now (reported in INFO).
    pub fn unreachable(&self) -> Vec<String> {
        let now = Instant::now();
        let links = lock(&self.links);
        if links.values().all(|link| link.phase == Phase::Idle) {
            return Vec::new();
        }
        let dead: BTreeSet<DcId> = links
            .iter()
            .filter(|(_, link)| link.phase != Phase::Idle && !link.alive(now, self.link_timeout))
            .map(|(&dc, _)| dc)
            .collect();
        let alive = |dc: DcId| !dead.contains(&dc);
        let routes = self.topology.routes(self.this, &self.dcs.all(), &alive);
        routes.unreachable.into_iter().map(|dc| self.dcs.name(dc).to_string()).collect()
    }

    pub fn topology_text(&self) -> String {
        match &self.topology {
            Topology::AllToAll => "all-to-all".into(),
            Topology::Star { hub } => format!("star:{}", self.dcs.name(*hub)),
            Topology::Ring { order } => {
                format!("ring:{}", order.iter().map(|&dc| self.dcs.name(dc)).collect::<Vec<_>>().join(","))
            }
        }
    }

    pub fn policy_text(&self) -> &'static str {
        match self.policy {
            ConflictPolicy::LastWriteWins => "lww",
            ConflictPolicy::Siblings => "siblings",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datacenter_ids_are_the_sorted_names_indexes() {
        let assignment: BTreeMap<u64, String> =
            [(1, "west"), (2, "east"), (3, "west"), (4, "central")].map(|(id, name)| (id, name.to_string())).into();
        let dcs = Datacenters::new(&assignment);
        assert_eq!(dcs.all(), vec![DcId(0), DcId(1), DcId(2)]);
        assert_eq!(dcs.by_name("central"), Some(DcId(0)));
        assert_eq!(dcs.by_name("east"), Some(DcId(1)));
        assert_eq!(dcs.dc_of(3), Some(DcId(2)));
        assert_eq!(dcs.nodes_in(DcId(2)), vec![1, 3]);
        assert_eq!(dcs.name(DcId(1)), "east");
        assert_eq!(dcs.by_name("north"), None);
    }

    #[test]
    fn topologies_and_policies_resolve_datacenter_names_to_ids() {
        let assignment: BTreeMap<u64, String> =
            [(1, "dc1"), (2, "dc2"), (3, "dc3")].map(|(id, name)| (id, name.to_string())).into();
        let dcs = Datacenters::new(&assignment);
        let mut config = NodeConfig::default();
        assert_eq!(resolve_config(&config, &dcs).unwrap(), (ConflictPolicy::LastWriteWins, Topology::AllToAll));
        config.multileader.conflict_policy = ConflictPolicyConfig::Siblings;
        config.multileader.topology = TopologyKind::Star;
        config.multileader.hub = Some("dc2".into());
        assert_eq!(resolve_config(&config, &dcs).unwrap(), (ConflictPolicy::Siblings, Topology::Star { hub: DcId(1) }));
        config.multileader.topology = TopologyKind::Ring;
        config.multileader.ring_order = Some("dc3, dc1,dc2".into());
        let order = vec![DcId(2), DcId(0), DcId(1)];
        assert_eq!(resolve_config(&config, &dcs).unwrap().1, Topology::Ring { order });
        for bad in ["dc1,dc2", "dc1,dc2,dc2", "dc1,dc2,dc4"] {
            config.multileader.ring_order = Some(bad.into());
            assert!(resolve_config(&config, &dcs).is_err(), "ring order {bad} must name every datacenter once");
        }
        config.multileader.topology = TopologyKind::Star;
        config.multileader.hub = Some("nowhere".into());
        assert!(resolve_config(&config, &dcs).is_err(), "an unknown hub");
    }

    #[test]
    fn the_assignment_file_round_trips_and_bad_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATACENTERS_FILE);
        assert!(read_assignment(&path).unwrap().is_none());
        let assignment: BTreeMap<u64, String> = [(1, "dc1".to_string()), (4, "dc2".to_string())].into();
        write_assignment(&path, &assignment).unwrap();
        assert_eq!(read_assignment(&path).unwrap(), Some(assignment));
        std::fs::write(&path, "1=dc1\nnonsense\n").unwrap();
        assert!(read_assignment(&path).is_err());
        std::fs::write(&path, "1=bad name\n").unwrap();
        assert!(read_assignment(&path).is_err());
    }
}
