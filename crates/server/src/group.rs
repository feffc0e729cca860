//! A node as a member of a replication group: restoring the Raft engine from disk, and the tasks
//! that feed it peer messages and tell peers where this node serves clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::raft::{self, Membership, Raft, RaftConfig, RestoredState, SnapshotMeta};
use chorus_core::state::MemoryState;
use chorus_core::{LogIndex, NodeId, StateView};
use chorus_storage::SegmentedLog;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::context::{NodeContext, now_millis};
use crate::core_handle::GroupIo;
use crate::node::NodeError;
use crate::peer::PeerMessage;

/// How often the engine is ticked (elections and heartbeats are timed in milliseconds).
pub const TICK_INTERVAL: Duration = Duration::from_millis(10);
/// How often a node repeats where it serves clients.
const HELLO_INTERVAL: Duration = Duration::from_secs(1);

/// Rebuilds the engine from what is durable: the hard state, the snapshot point of the state, and
/// the log after it.
pub fn restore_raft(
    config: &NodeConfig,
    members: &BTreeMap<u64, SocketAddr>,
    state: &MemoryState,
    log: &SegmentedLog,
) -> Result<Raft, NodeError> {
    let hard = chorus_storage::load_hard_state(&config.data_dir)?;
    let snapshot_index = state.applied_index();
    let membership = Membership::with_voters(members.keys().map(|&id| NodeId(id)));
    let snapshot = SnapshotMeta { index: snapshot_index, term: state.applied_term(), membership };
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
    Ok(Raft::new(raft_config, restored))
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

/// Starts the tasks of a group member: peer messages into the replica, and periodic hellos.
pub fn spawn_tasks(
    context: Arc<NodeContext>,
    io: GroupIo,
    mut inbound: mpsc::Receiver<(u64, PeerMessage)>,
    client_addr: SocketAddr,
) -> Vec<JoinHandle<()>> {
    let receiver_context = Arc::clone(&context);
    let receiver = tokio::spawn(async move {
        while let Some((from, message)) = inbound.recv().await {
            let from = NodeId(from);
            match message {
                PeerMessage::Raft(message) => receiver_context
                    .core
                    .with_remote(|inner| inner.replica.handle_peer_message(now_millis(), from, message)),
                PeerMessage::Hello { client_addr } => {
                    receiver_context.core.with_remote(|inner| inner.replica.set_peer_client_addr(from, client_addr))
                }
            }
        }
    });
    let peers: Vec<u64> =
        context.config.members().ok().flatten().map(|m| m.keys().copied().collect()).unwrap_or_default();
    let own_id = context.config.id;
    let hello = tokio::spawn(async move {
        let mut interval = tokio::time::interval(HELLO_INTERVAL);
        loop {
            interval.tick().await;
            for &peer in peers.iter().filter(|&&peer| peer != own_id) {
                io.network.send(peer, &PeerMessage::Hello { client_addr: client_addr.to_string() });
            }
        }
    });
    vec![receiver, hello]
}
