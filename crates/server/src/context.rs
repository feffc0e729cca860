//! What every connection of a node shares: configuration, the replica, the state, counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chorus_core::UnixMillis;

use crate::config::NodeConfig;
use crate::core_handle::CoreHandle;
use crate::shared_state::SharedState;

/// Counters INFO reports.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connected_clients: AtomicU64,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub total_commands: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl ServerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub struct NodeContext {
    pub config: NodeConfig,
    pub core: CoreHandle,
    pub state: Arc<SharedState>,
    pub stats: ServerStats,
    pub started: Instant,
    /// Redis's `run_id`: 40 hex characters, new at every start.
    pub run_id: String,
    /// The port clients actually reached (differs from the configured one when that was port 0).
    pub client_port: u16,
    /// Fault injection (`CHORUS.DEBUG ISOLATE`, with `debug_commands` on): drop every message to
    /// and from peers, as if the network cut this node off, while clients can still reach it.
    pub isolated: Arc<std::sync::atomic::AtomicBool>,
    /// Leaderless mode: the coordinator that serves key-value commands instead of the replica.
    pub leaderless: Option<Arc<crate::leaderless::LeaderlessNode>>,
    /// Multi-leader mode: the datacenters, the topology and the cross-datacenter links.
    pub multileader: Option<Arc<crate::multileader::MlNode>>,
}

/// The wall clock, read at the edge and handed to the core as an input.
pub fn now_millis() -> UnixMillis {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}
