//! The replica behind a mutex, and the routing of its effects.
//!
//! Every input to the replica goes through [`CoreHandle::with`], which runs it under the lock and
//! then performs the effects it produced *before releasing the lock*, so entries reach the log writer
//! and the applier in index order even when many connections propose at once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use chorus_core::raft::Membership;
use chorus_core::state::MemoryState;
use chorus_core::{Effect, LogEntry, LogIndex, NodeId, Replica, RequestId};
use chorus_transport::PeerNetwork;

use crate::peer::PeerMessage;
use chorus_resp::Reply;
use tokio::sync::mpsc::UnboundedSender;

/// A reply on its way to a connection: the request's sequence number on that connection, and the reply.
pub type ReplySender = UnboundedSender<(u64, Reply)>;

/// Work for the log writer thread.
#[derive(Debug)]
pub enum LogCommand {
    Append(Vec<LogEntry>),
    /// The state is durable up to here: log segments wholly before it may be deleted.
    Compact(LogIndex),
    /// Delete entries from `from` on (before any later append), durably; write `discarded` to the
    /// rollback file.
    Truncate {
        from: LogIndex,
        discarded: Vec<LogEntry>,
        discards_committed: bool,
    },
    /// A snapshot, durable already, covers the log up to `after` (whose term is `term`): keep the
    /// log after it if it agrees there, else start the log over after it.
    Restart {
        after: LogIndex,
        term: chorus_core::Term,
    },
    /// Finish the current round and end the thread (node shutdown).
    Stop,
}

/// Work for the applier thread.
#[derive(Debug)]
pub enum ApplyCommand {
    Apply(Vec<LogEntry>),
    /// Swap in a state received from the leader, after applying what came before.
    Replace(Box<MemoryState>),
    /// End the thread (node shutdown).
    Stop,
}

pub struct CoreInner {
    pub replica: Replica,
    connections: HashMap<u64, ReplySender>,
    /// A snapshot received from the leader, offered to the replica: its `ReplaceState` effect
    /// hands it to the applier. Always empty outside one `with` call.
    pub offered_state: Option<MemoryState>,
}

#[derive(Clone)]
pub struct CoreHandle {
    inner: Arc<Mutex<CoreInner>>,
    log_tx: std::sync::mpsc::Sender<LogCommand>,
    apply_tx: std::sync::mpsc::Sender<ApplyCommand>,
    group: Option<GroupIo>,
}

/// What a replication-group member needs beyond a standalone node: the peer network and the
/// directory of its hard state.
#[derive(Clone)]
pub struct GroupIo {
    pub network: PeerNetwork<PeerMessage>,
    pub hard_state_dir: std::path::PathBuf,
    /// Peers named by `--initial-cluster`: dialled at their address there unless the replicated
    /// configuration gives another.
    pub initial_peers: std::collections::BTreeMap<u64, std::net::SocketAddr>,
    /// Snapshot transfers to start (to, leader term, least index): see `group::snapshot_sender`.
    pub snapshot_requests: tokio::sync::mpsc::UnboundedSender<SnapshotRequest>,
    /// `CHORUS.DEBUG ISOLATE`: send nothing to peers (the receiving side drops what arrives).
    pub isolated: Arc<std::sync::atomic::AtomicBool>,
    /// Multi-leader mode: the nodes of the other datacenters, dialled whatever this group's
    /// configuration says (they are not members of it).
    pub foreign_peers: std::collections::BTreeMap<u64, std::net::SocketAddr>,
}

/// A follower needs a snapshot of this node's state.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRequest {
    pub to: NodeId,
    pub leader_term: chorus_core::Term,
    pub index: LogIndex,
}

impl CoreHandle {
    pub fn new(
        replica: Replica,
        log_tx: std::sync::mpsc::Sender<LogCommand>,
        apply_tx: std::sync::mpsc::Sender<ApplyCommand>,
        group: Option<GroupIo>,
    ) -> CoreHandle {
        let inner = CoreInner { replica, connections: HashMap::new(), offered_state: None };
        CoreHandle { inner: Arc::new(Mutex::new(inner)), log_tx, apply_tx, group }
    }

    fn lock(&self) -> MutexGuard<'_, CoreInner> {
        // A panic while holding the lock is a bug in the core; the state it guards is still the
        // replica's own, so carrying on with it beats taking the whole node down with a poison error.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `input` against the replica, then performs its effects. Replies for `local_connection`
    /// are handed back instead of being sent through its channel (the caller is that connection).
    pub fn with<T>(
        &self,
        local_connection: Option<u64>,
        local_replies: &mut Vec<(u64, Reply)>,
        input: impl FnOnce(&mut CoreInner) -> T,
    ) -> T {
        let mut inner = self.lock();
        let result = input(&mut inner);
        let CoreInner { replica, connections, offered_state } = &mut *inner;
        let mut storage_failure = None;
        for effect in replica.drain_effects() {
            match effect {
                Effect::PersistHardState { term, voted_for } => {
                    let Some(group) = &self.group else { continue };
                    let state = chorus_storage::HardState { term, voted_for };
                    if let Err(error) = chorus_storage::store_hard_state(&group.hard_state_dir, &state) {
                        // Nothing after this effect may be performed: a vote sent without its term
                        // on disk could be contradicted after a crash.
                        storage_failure = Some(format!("the hard state cannot be written: {error}"));
                        break;
                    }
                }
                Effect::TruncateLog { from, discarded, discards_committed } => {
                    let _ = self.log_tx.send(LogCommand::Truncate { from, discarded, discards_committed });
                }
                Effect::Send { to, message } => {
                    if let Some(group) = &self.group
                        && !group.isolated.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        group.network.send(to.0, &PeerMessage::Raft(message));
                    }
                }
                Effect::StateDiverged { kept } => {
                    tracing::warn!(%kept, "the applied state holds writes the new leader discarded (async failover); follower reads stop until the leader's snapshot replaces it");
                }
                Effect::SnapshotNeeded { to, leader_term, index } => {
                    if let Some(group) = &self.group {
                        let _ = group.snapshot_requests.send(SnapshotRequest { to, leader_term, index });
                    }
                }
                Effect::MembershipChanged(membership) => {
                    if let Some(group) = &self.group {
                        let mut peers = peer_addresses(&membership, &group.initial_peers);
                        peers.extend(group.foreign_peers.iter().map(|(&id, &addr)| (id, addr)));
                        tracing::info!(%membership, "group configuration changed");
                        group.network.set_peers(&peers);
                    }
                }
                Effect::ReplaceState { index, term } => {
                    let _ = self.log_tx.send(LogCommand::Restart { after: index, term });
                    match offered_state.take() {
                        Some(state) => {
                            let _ = self.apply_tx.send(ApplyCommand::Replace(Box::new(state)));
                        }
                        None => storage_failure = Some("a snapshot was installed without its state".to_string()),
                    }
                }
                Effect::Persist(entries) => {
                    // The writer thread lives as long as the node; if it is gone the node is stopping.
                    let _ = self.log_tx.send(LogCommand::Append(entries));
                }
                Effect::Apply(entries) => {
                    let _ = self.apply_tx.send(ApplyCommand::Apply(entries));
                }
                Effect::Reply { request: RequestId { connection, sequence }, reply } => {
                    if Some(connection) == local_connection {
                        local_replies.push((sequence, reply));
                    } else if let Some(sender) = connections.get(&connection) {
                        // A closed connection has stopped listening; its reply has nowhere to go.
                        let _ = sender.send((sequence, reply));
                    }
                }
            }
        }
        if let Some(reason) = storage_failure {
            tracing::error!(%reason, "refusing commands from now on");
            replica.fail(&reason);
        }
        result
    }

    /// Runs an input whose replies all go through connection channels.
    pub fn with_remote<T>(&self, input: impl FnOnce(&mut CoreInner) -> T) -> T {
        let mut ignored = Vec::new();
        self.with(None, &mut ignored, input)
    }

    pub fn register(&self, connection: u64, sender: ReplySender) {
        self.lock().connections.insert(connection, sender);
    }

    /// Sends a reply to a connection's channel (leaderless mode answers outside the replica).
    pub fn deliver(&self, connection: u64, sequence: u64, reply: Reply) {
        if let Some(sender) = self.lock().connections.get(&connection) {
            // A closed connection has stopped listening; its reply has nowhere to go.
            let _ = sender.send((sequence, reply));
        }
    }

    pub fn unregister(&self, connection: u64) {
        self.lock().connections.remove(&connection);
    }

    /// Reads a value from the replica without giving it an input (INFO, status).
    pub fn inspect<T>(&self, read: impl FnOnce(&CoreInner) -> T) -> T {
        read(&self.lock())
    }

    /// Asks the log writer to end after its current round.
    pub fn stop_log_writer(&self) {
        let _ = self.log_tx.send(LogCommand::Stop);
    }

    /// Asks the applier to end once it has applied what it was already sent.
    pub fn stop_applier(&self) {
        let _ = self.apply_tx.send(ApplyCommand::Stop);
    }

    pub fn compact_log(&self, up_to: LogIndex) {
        let _ = self.log_tx.send(LogCommand::Compact(up_to));
    }
}

/// Whom a member dials: every member of `membership`, at the address the configuration records or
/// else the one `--initial-cluster` gave. A node that knows no configuration yet (a learner before
/// its first contact) dials the initial cluster, so its answers reach the leader.
pub fn peer_addresses(membership: &Membership, initial_peers: &BTreeMap<u64, SocketAddr>) -> BTreeMap<u64, SocketAddr> {
    if membership.voters.is_empty() {
        return initial_peers.clone();
    }
    membership
        .members()
        .filter_map(|node| {
            let recorded = membership.addresses.get(&node).and_then(|address| address.parse::<SocketAddr>().ok());
            recorded.or_else(|| initial_peers.get(&node.0).copied()).map(|address| (node.0, address))
        })
        .collect()
}
