//! A node as a member of a replication group: restoring the Raft engine from disk, the tasks that
//! feed it peer messages and tell peers where this node serves clients, and snapshot streaming.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_core::raft::{self, Membership, Raft, RaftConfig, RestoredState, SnapshotMeta};
use chorus_core::state::MemoryState;
use chorus_core::{LogIndex, NodeId, StateView, Term};
use chorus_storage::SegmentedLog;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{JOINED_MARKER, NodeConfig};
use crate::context::{NodeContext, now_millis};
use crate::core_handle::{GroupIo, SnapshotRequest};
use crate::node::NodeError;
use crate::peer::{PeerMessage, SnapshotChunk};

/// How often the engine is ticked (elections and heartbeats are timed in milliseconds).
pub const TICK_INTERVAL: Duration = Duration::from_millis(10);
/// How often a node repeats where it serves clients.
const HELLO_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes of a snapshot file per peer message.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Where a snapshot from the leader is assembled (outside the snapshot directory's naming).
const INCOMING_SNAPSHOT: &str = "incoming-snapshot.partial";

/// Rebuilds the engine from what is durable: the hard state, the snapshot point of the state (with
/// the configuration there), and the log after it.
pub fn restore_raft(
    config: &NodeConfig,
    initial_cluster: &BTreeMap<u64, SocketAddr>,
    state: &MemoryState,
    log: &SegmentedLog,
) -> Result<Raft, NodeError> {
    let hard = chorus_storage::load_hard_state(&config.data_dir)?;
    let joined = joined_as_learner(config)?;
    let snapshot_index = state.applied_index();
    let membership = match state.membership() {
        Some(membership) => membership.clone(),
        // A learner learns the configuration from the leader; it never campaigns before.
        None if joined => Membership::default(),
        None => Membership::with_voters(initial_cluster.keys().map(|&id| NodeId(id))),
    };
    let snapshot = raft::SnapshotMeta { index: snapshot_index, term: state.applied_term(), membership };
    let first = LogIndex(snapshot_index.0 + 1).max(log.first_index());
    let entries = if log.last_index() >= first { log.read(first, log.last_index())? } else { Vec::new() };
    let restored = RestoredState {
        hard_state: raft::HardState { term: hard.term, voted_for: hard.voted_for },
        snapshot,
        entries,
        committed_index: snapshot_index,
    };
    let mut raft_config = RaftConfig::new(NodeId(config.id), election_seed(config.id));
    raft_config.durability = config.durability()?;
    raft_config.election_timeout_ms_min = config.election_timeout_ms_min;
    raft_config.election_timeout_ms_max = config.election_timeout_ms_max;
    raft_config.heartbeat_interval_ms = config.heartbeat_interval_ms;
    // A snapshot the follower did not take (it arrived before the follower knew the leader, or a
    // chunk was dropped) is streamed again after this long; a transfer still going then is not
    // duplicated (see `snapshot_sender`).
    raft_config.snapshot_timeout_ms = 3 * config.election_timeout_ms_max;
    raft_config.appends_in_flight_max = config.appends_in_flight_max;
    Ok(Raft::new(raft_config, restored))
}

/// Whether this node joined as a learner: `--learner` now (recorded for later starts), or earlier.
fn joined_as_learner(config: &NodeConfig) -> Result<bool, NodeError> {
    let marker = config.data_dir.join(JOINED_MARKER);
    if config.learner && !marker.exists() {
        std::fs::write(&marker, b"this node joined its group as a learner\n")
            .and_then(|()| std::fs::File::open(&config.data_dir)?.sync_all())
            .map_err(|source| NodeError::Io { context: format!("cannot write {}", marker.display()), source })?;
    }
    Ok(config.joins_as_learner())
}

/// The engine draws its election timeouts from a seed given as an input; the node seeds it from the
/// clock and its process id, so restarted nodes do not replay the same timeouts.
fn election_seed(node_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32) ^ node_id
}

/// Starts the tasks of a group member: peer messages into the replica, periodic hellos, and the
/// snapshot sender.
pub fn spawn_tasks(
    context: Arc<NodeContext>,
    io: GroupIo,
    mut inbound: mpsc::Receiver<(u64, PeerMessage)>,
    snapshot_requests: mpsc::UnboundedReceiver<SnapshotRequest>,
    client_addr: SocketAddr,
) -> Vec<JoinHandle<()>> {
    let receiver_context = Arc::clone(&context);
    let receiver = tokio::spawn(async move {
        let mut snapshots = SnapshotReceiver::new(Arc::clone(&receiver_context));
        while let Some((from, message)) = inbound.recv().await {
            if receiver_context.isolated.load(Ordering::Relaxed) {
                continue;
            }
            let from = NodeId(from);
            match message {
                PeerMessage::Raft(message) => receiver_context
                    .core
                    .with_remote(|inner| inner.replica.handle_peer_message(now_millis(), from, message)),
                PeerMessage::Hello { client_addr, .. } => {
                    receiver_context.core.with_remote(|inner| inner.replica.set_peer_client_addr(from, client_addr))
                }
                PeerMessage::Ml(message) => match &receiver_context.multileader {
                    Some(ml) => ml.receive(&receiver_context, from.0, message),
                    None => tracing::debug!(%from, "a multi-leader message outside multi-leader mode; ignored"),
                },
                PeerMessage::SnapshotChunk(chunk) => snapshots.take(from, chunk),
                PeerMessage::Leaderless(_) => {
                    tracing::debug!(%from, "a leaderless message in single-leader mode; ignored")
                }
            }
        }
    });
    let hello_network = io.network.clone();
    let datacenter = context.config.datacenter_name();
    let hello = tokio::spawn(async move {
        let mut interval = tokio::time::interval(HELLO_INTERVAL);
        loop {
            interval.tick().await;
            for peer in hello_network.peers().into_keys() {
                hello_network.send(
                    peer,
                    &PeerMessage::Hello { client_addr: client_addr.to_string(), datacenter: datacenter.clone() },
                );
            }
        }
    });
    let sender = tokio::spawn(snapshot_sender(context, io, snapshot_requests));
    vec![receiver, hello, sender]
}

/// Streams snapshots to followers that need one, one transfer per follower at a time.
async fn snapshot_sender(
    context: Arc<NodeContext>,
    io: GroupIo,
    mut requests: mpsc::UnboundedReceiver<SnapshotRequest>,
) {
    let in_flight: Arc<Mutex<BTreeSet<NodeId>>> = Arc::default();
    while let Some(request) = requests.recv().await {
        let fresh = in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(request.to);
        if !fresh {
            continue;
        }
        let context = Arc::clone(&context);
        let network = io.network.clone();
        let in_flight = Arc::clone(&in_flight);
        tokio::task::spawn_blocking(move || {
            match send_snapshot(&context, &network, request) {
                Ok(bytes) => tracing::info!(peer = %request.to, bytes, "snapshot streamed to a follower"),
                Err(error) => {
                    tracing::warn!(peer = %request.to, %error, "could not stream a snapshot; the leader will retry");
                    context.core.with_remote(|inner| inner.replica.snapshot_failed(now_millis(), request.to));
                }
            }
            in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&request.to);
        });
    }
}

/// Sends the newest snapshot file (writing one first if none reaches `request.index`) in chunks.
/// Returns the bytes sent.
fn send_snapshot(
    context: &NodeContext,
    network: &chorus_transport::PeerNetwork<PeerMessage>,
    request: SnapshotRequest,
) -> Result<u64, String> {
    wait_for_first_answer(context, request.to);
    let dir = context.config.data_dir.join("snapshots");
    let latest = chorus_storage::latest_snapshot_file(&dir).map_err(|error| error.to_string())?;
    let (index, path) = match latest {
        Some((index, path)) if index >= request.index => (index, path),
        _ => {
            crate::pipeline::checkpoint(&context.state, &dir).map_err(|error| error.to_string())?;
            chorus_storage::latest_snapshot_file(&dir)
                .map_err(|error| error.to_string())?
                .ok_or("no snapshot after writing one")?
        }
    };
    let meta = context
        .core
        .inspect(|inner| inner.replica.snapshot_meta(index))
        .ok_or_else(|| format!("the snapshot at {index} is no longer a point of the log"))?;
    // The file stays readable through this handle even if a newer checkpoint deletes it.
    let mut file = std::fs::File::open(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    let length = file.metadata().map_err(|error| error.to_string())?.len();
    let mut offset = 0u64;
    loop {
        let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        let read = read_full(&mut file, &mut data).map_err(|error| format!("{}: {error}", path.display()))?;
        data.truncate(read);
        let last = offset + read as u64 >= length || read == 0;
        let chunk = SnapshotChunk { leader_term: request.leader_term, meta: meta.clone(), offset, data, last };
        if !network.send(request.to.0, &PeerMessage::SnapshotChunk(chunk)) {
            return Err(
                "the chunk was dropped (the peer's queue is full, its connection failed, or it left the group)".into(),
            );
        }
        offset += read as u64;
        if last {
            return Ok(offset);
        }
    }
}

/// A follower only takes a snapshot from the leader it follows, so one streamed to a node that has
/// not heard from this leader yet (a member just added, whose first append asked for a snapshot at
/// once) is ignored and re-sent only after the snapshot timeout. Waits, briefly and boundedly, until
/// the follower has answered this leader once (heartbeats go out every `heartbeat_interval_ms`).
fn wait_for_first_answer(context: &NodeContext, to: NodeId) {
    let patience = Duration::from_millis(4 * context.config.heartbeat_interval_ms.max(50));
    let started = std::time::Instant::now();
    while started.elapsed() < patience {
        let answered = context.core.inspect(|inner| {
            inner.replica.group_status().is_some_and(|status| {
                status.followers.iter().any(|follower| follower.node_id == to && follower.last_contact.is_some())
            })
        });
        if answered {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads until `buffer` is full or the file ends.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// A snapshot being received.
struct Incoming {
    from: NodeId,
    leader_term: Term,
    meta: SnapshotMeta,
    file: std::fs::File,
    next_offset: u64,
}

/// Assembles snapshot chunks from the leader into a file, then installs it off the message loop.
struct SnapshotReceiver {
    context: Arc<NodeContext>,
    path: PathBuf,
    current: Option<Incoming>,
    installing: Arc<AtomicBool>,
}

impl SnapshotReceiver {
    fn new(context: Arc<NodeContext>) -> SnapshotReceiver {
        let path = context.config.data_dir.join(INCOMING_SNAPSHOT);
        SnapshotReceiver { context, path, current: None, installing: Arc::default() }
    }

    fn take(&mut self, from: NodeId, chunk: SnapshotChunk) {
        if self.installing.load(Ordering::Acquire) {
            return; // the leader retries after its snapshot timeout if this one is not taken
        }
        if chunk.offset == 0 {
            self.current = None;
            // A snapshot from an older term is stale. One from a newer or current term is taken
            // even if this node has not heard from that leader yet (it just started, say): the
            // engine decides once the file is complete (see `install`).
            let term = self.context.core.inspect(|inner| inner.replica.status().term);
            if chunk.leader_term < term {
                return;
            }
            match std::fs::File::create(&self.path) {
                Ok(file) => {
                    self.current = Some(Incoming {
                        from,
                        leader_term: chunk.leader_term,
                        meta: chunk.meta.clone(),
                        file,
                        next_offset: 0,
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, path = %self.path.display(), "cannot receive a snapshot");
                    return;
                }
            }
        }
        let Some(incoming) = self.current.as_mut() else { return };
        let in_sequence = incoming.from == from
            && incoming.leader_term == chunk.leader_term
            && incoming.meta.index == chunk.meta.index
            && incoming.next_offset == chunk.offset;
        if !in_sequence {
            tracing::debug!(%from, offset = chunk.offset, "snapshot chunk out of sequence; dropping the transfer");
            self.current = None;
            return;
        }
        if let Err(error) = incoming.file.write_all(&chunk.data) {
            tracing::warn!(%error, "cannot write a received snapshot");
            self.current = None;
            return;
        }
        incoming.next_offset += chunk.data.len() as u64;
        if !chunk.last {
            return;
        }
        let Some(incoming) = self.current.take() else { return };
        self.installing.store(true, Ordering::Release);
        let context = Arc::clone(&self.context);
        let installing = Arc::clone(&self.installing);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = install(&context, &path, incoming) {
                tracing::warn!(%error, "a snapshot from the leader was not installed");
            }
            installing.store(false, Ordering::Release);
        });
    }
}

/// Verifies the received file, makes it this node's snapshot and offers it to the replica.
fn install(context: &NodeContext, path: &std::path::Path, incoming: Incoming) -> Result<(), String> {
    let Incoming { from, leader_term, meta, file, .. } = incoming;
    file.sync_all().map_err(|error| format!("syncing {}: {error}", path.display()))?;
    drop(file);
    let state = chorus_storage::load_snapshot(path).map_err(|error| error.to_string())?;
    if state.applied_index() != meta.index || state.applied_term() != meta.term {
        return Err(format!(
            "the snapshot file stands at {}/{} but was announced at {}/{}",
            state.applied_index(),
            state.applied_term(),
            meta.index,
            meta.term
        ));
    }
    let snapshot_dir = context.config.data_dir.join("snapshots");
    let index = meta.index;
    // A node that has just started may not know the sender leads yet: its first append arrives
    // within a few heartbeats.
    let patience = Duration::from_millis(4 * context.config.heartbeat_interval_ms.max(50));
    let started = std::time::Instant::now();
    while started.elapsed() < patience
        && !context.core.inspect(|inner| inner.replica.snapshot_needed(from, leader_term, &meta))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let installed = context.core.with_remote(|inner| {
        if !inner.replica.snapshot_needed(from, leader_term, &meta) {
            return Ok::<bool, String>(false);
        }
        // Durable under its final name before the log is restarted after it (a crash in between
        // restarts from the snapshot with the old log, which the leader then repairs).
        chorus_storage::adopt_snapshot_file(&snapshot_dir, path, index).map_err(|error| error.to_string())?;
        inner.offered_state = Some(state);
        let taken = inner.replica.install_snapshot(now_millis(), from, leader_term, meta);
        if !taken {
            inner.offered_state = None;
        }
        Ok(taken)
    })?;
    if installed {
        tracing::info!(%index, leader = %from, "installed a snapshot from the leader");
    } else {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
