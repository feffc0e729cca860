//! Starting and stopping a node: recover storage, start the storage threads, listen for clients.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chorus_core::{NodeId, Recovered, Replica, ReplicaConfig, StateView};
use chorus_storage::{LogOptions, SegmentedLog};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::NodeConfig;
use crate::context::{NodeContext, ServerStats, now_millis};
use crate::core_handle::CoreHandle;
use crate::core_handle::GroupIo;
use crate::shared_state::SharedState;
use crate::{admin, connection, group, pipeline};
use chorus_transport::{PeerConfig, PeerNetwork};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("storage: {0}")]
    Storage(#[from] chorus_storage::StorageError),
    #[error("storage is inconsistent: {0}")]
    Inconsistent(String),
    #[error("data directory {0} is in use by another chorus process")]
    DataDirLocked(String),
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

/// Where a started node listens (the configured ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub client: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Runs a node until `shutdown` completes. `bound` learns the listening addresses once the node
/// accepts clients.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    bound: Option<oneshot::Sender<BoundAddrs>>,
) -> Result<(), NodeError> {
    config.validate()?;
    if config.admin_addr.is_some() {
        // Before any thread takes its metric handles: a handle taken before the recorder exists
        // records nothing, ever (the log writer's fsync metrics were missing on most nodes).
        let _ = admin::prometheus_handle();
    }
    let started = Instant::now();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_error(format!("cannot create data directory {}", config.data_dir.display())))?;
    let lock_path = config.data_dir.join("LOCK");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(format!("cannot open {}", lock_path.display())))?;
    if lock_file.try_lock().is_err() {
        return Err(NodeError::DataDirLocked(config.data_dir.display().to_string()));
    }

    let snapshot_dir = config.data_dir.join("snapshots");
    let mut state = chorus_storage::load_latest_snapshot(&snapshot_dir)?.unwrap_or_default();
    let mut log = SegmentedLog::open(
        &config.data_dir.join("log"),
        LogOptions {
            segment_bytes_max: config.storage.log_segment_bytes_max,
            preallocate: config.storage.log_preallocate,
        },
    )?;
    if state.applied_index() > log.last_index() {
        // The snapshot is past what the log kept (the log's unsynced tail was lost with
        // `fsync = never` after a power loss): the snapshot is the more complete record.
        tracing::warn!(applied = %state.applied_index(), log_last = %log.last_index(), "log is behind the snapshot; resetting it");
        log.reset(state.applied_index(), state.applied_term())?;
    }
    if state.applied_index().next() < log.first_index() {
        return Err(NodeError::Inconsistent(format!(
            "the snapshot covers up to {} but the log starts at {}: entries in between are gone",
            state.applied_index(),
            log.first_index()
        )));
    }
    let leaderless_members = if config.mode == crate::config::Mode::Leaderless { config.members()? } else { None };
    let (inbound_tx, mut inbound_rx) = tokio::sync::mpsc::channel(65_536);
    // Multi-leader mode: the peer network reaches every node of every datacenter; the node first
    // learns which datacenter each is in, and its Raft group is the nodes of its own.
    let mut ml_setup = None;
    if config.mode == crate::config::Mode::MultiLeader
        && let Some(all) = config.members()?
    {
        let peer_listener = TcpListener::bind(config.peer_addr)
            .await
            .map_err(io_error(format!("cannot listen for peers on {}", config.peer_addr)))?;
        let network = PeerNetwork::<crate::peer::PeerMessage>::start(
            PeerConfig::new(config.id, all.clone()),
            peer_listener,
            inbound_tx.clone(),
        );
        let assignment = crate::multileader::discover_datacenters(&config, &network, &mut inbound_rx, &all).await?;
        let dcs = crate::multileader::Datacenters::new(&assignment);
        let this = dcs.dc_of(config.id).ok_or_else(|| NodeError::Inconsistent("this node has no datacenter".into()))?;
        let (policy, topology) = crate::multileader::resolve_config(&config, &dcs)?;
        let (own, foreign): (BTreeMap<u64, SocketAddr>, BTreeMap<u64, SocketAddr>) =
            all.iter().partition(|(id, _)| dcs.dc_of(**id) == Some(this));
        if config.wan_delay_ms > 0 {
            for &peer in foreign.keys() {
                network.set_link_delay(peer, std::time::Duration::from_millis(config.wan_delay_ms));
            }
        }
        match state.multileader() {
            None => state.set_multileader(Some(crate::multileader::MlNode::initial_state(&config, this, policy))),
            Some(ml) if ml.this() != this => {
                return Err(NodeError::Inconsistent(format!(
                    "the state belongs to datacenter id {} but this node is in {} ({}): the datacenter names changed",
                    ml.this().0,
                    this.0,
                    dcs.name(this)
                )));
            }
            Some(_) => {}
        }
        tracing::info!(datacenter = dcs.name(this), dc_id = this.0, group = ?own.keys().collect::<Vec<_>>(), "multi-leader mode");
        let ml = crate::multileader::MlNode::new(&config, dcs, this, policy, topology, network.clone());
        ml_setup = Some((network, own, foreign, Arc::new(ml)));
    }
    // In leaderless mode the Raft replica runs standalone and idle (key-value commands go to the
    // leaderless coordinator); it still answers the node's own commands.
    let members = match &ml_setup {
        Some((_, own, _, _)) => Some(own.clone()),
        None if leaderless_members.is_some() => None,
        None => config.members()?,
    };
    let replayed_from = state.applied_index();
    // Standalone, everything in the log was committed. In a group, entries after the snapshot may
    // not be: they are re-applied as the group commits them.
    let applied = if members.is_some() { state.applied_index() } else { pipeline::replay_log(&log, &mut state)? };
    tracing::info!(
        node = config.id,
        snapshot = %replayed_from,
        log_first = %log.first_index(),
        log_last = %log.last_index(),
        replayed = applied.0 - replayed_from.0,
        keys = state.key_count().unwrap_or(0),
        "recovered storage"
    );
    let listener =
        listen(config.client_addr).map_err(io_error(format!("cannot listen for clients on {}", config.client_addr)))?;
    let client_addr = listener.local_addr().map_err(io_error("client listener address"))?;

    let isolated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (snapshot_tx, snapshot_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut leaderless_network = None;
    if let Some(members) = &leaderless_members {
        let peer_listener = TcpListener::bind(config.peer_addr)
            .await
            .map_err(io_error(format!("cannot listen for peers on {}", config.peer_addr)))?;
        leaderless_network = Some(PeerNetwork::<crate::peer::PeerMessage>::start(
            PeerConfig::new(config.id, members.clone()),
            peer_listener,
            inbound_tx.clone(),
        ));
    }
    let (replica, group_io) = match &members {
        None => {
            let recovered =
                Recovered { last_index: log.last_index(), last_term: log.last_term(), applied_index: applied };
            (Replica::new(ReplicaConfig::new(NodeId(config.id)), recovered), None)
        }
        Some(members) => {
            let raft = group::restore_raft(&config, members, &state, &log)?;
            let (network, foreign_peers) = match &ml_setup {
                Some((network, _, foreign, _)) => (network.clone(), foreign.clone()),
                None => {
                    let peer_listener = TcpListener::bind(config.peer_addr)
                        .await
                        .map_err(io_error(format!("cannot listen for peers on {}", config.peer_addr)))?;
                    let peers = crate::core_handle::peer_addresses(raft.membership(), members);
                    let network = PeerNetwork::start(PeerConfig::new(config.id, peers), peer_listener, inbound_tx);
                    if config.wan_delay_ms > 0 {
                        // A single group spanning datacenters (for comparisons with multi-leader
                        // mode): members in other datacenters are reached over the emulated WAN.
                        let assignment =
                            crate::multileader::discover_datacenters(&config, &network, &mut inbound_rx, members)
                                .await?;
                        let own = config.datacenter_name();
                        let delay = std::time::Duration::from_millis(config.wan_delay_ms);
                        for (&peer, _) in assignment.iter().filter(|(_, dc)| **dc != own) {
                            network.set_link_delay(peer, delay);
                        }
                    }
                    (network, BTreeMap::new())
                }
            };
            let io = GroupIo {
                foreign_peers,
                network,
                hard_state_dir: config.data_dir.clone(),
                initial_peers: members.clone(),
                snapshot_requests: snapshot_tx,
                isolated: Arc::clone(&isolated),
            };
            let mut replica_config = ReplicaConfig::new(NodeId(config.id));
            replica_config.replica_read_staleness_max_ms = config.replica_read_staleness_max_ms;
            replica_config.multi_leader = ml_setup.is_some();
            (Replica::in_group(replica_config, raft, applied), Some(io))
        }
    };
    let state = Arc::new(SharedState::new(state));
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    let (apply_tx, apply_rx) = std::sync::mpsc::channel();
    let core = CoreHandle::new(replica, log_tx, apply_tx, group_io.clone());
    let leaderless = match (&leaderless_members, &leaderless_network) {
        (Some(members), Some(network)) => {
            let node = crate::leaderless::LeaderlessNode::open(
                &config,
                members,
                network.clone(),
                core.clone(),
                Arc::clone(&isolated),
            )
            .map_err(|error| NodeError::Inconsistent(format!("leaderless store: {error}")))?;
            Some(Arc::new(node))
        }
        _ => None,
    };
    let admin_listener = match config.admin_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(io_error(format!("cannot listen on admin {addr}")))?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|listener| listener.local_addr().ok());

    let fsync = config.fsync;
    // In a group too: a follower the compacted log no longer reaches is sent a snapshot.
    let checkpoint_entries = config.storage.checkpoint_entries;
    let writer_core = core.clone();
    let rollback_dir = config.data_dir.clone();
    let writer = std::thread::Builder::new()
        .name("chorus-log-writer".into())
        .spawn(move || pipeline::run_log_writer(log, log_rx, fsync, rollback_dir, writer_core))
        .map_err(io_error("cannot start the log writer thread"))?;
    let applier_core = core.clone();
    let applier_state = Arc::clone(&state);
    let applier_snapshots = snapshot_dir.clone();
    let applier = std::thread::Builder::new()
        .name("chorus-applier".into())
        .spawn(move || {
            pipeline::run_applier(applier_state, apply_rx, applier_snapshots, checkpoint_entries, applier_core)
        })
        .map_err(io_error("cannot start the applier thread"))?;

    let run_id = format!("{:016x}{:024x}", config.id, now_millis().0 as u128 * 0x9E37_79B9_7F4A_7C15);
    let context = Arc::new(NodeContext {
        config,
        core: core.clone(),
        state: Arc::clone(&state),
        stats: ServerStats::default(),
        started,
        run_id: run_id.chars().take(40).collect(),
        client_port: client_addr.port(),
        isolated,
        leaderless: leaderless.clone(),
        multileader: ml_setup.as_ref().map(|(_, _, _, ml)| Arc::clone(ml)),
    });

    let admin_task = admin_listener.map(|admin_listener| {
        let router = admin::router(Arc::clone(&context));
        tokio::spawn(async move {
            if let Err(error) = axum::serve(admin_listener, router).await {
                tracing::warn!(%error, "admin port stopped");
            }
        })
    });
    let network = group_io.as_ref().map(|io| io.network.clone());
    let network = network.or_else(|| leaderless_network.clone());
    let group_tasks = match (group_io, &leaderless) {
        (Some(io), _) => Some(group::spawn_tasks(Arc::clone(&context), io, inbound_rx, snapshot_rx, client_addr)),
        (None, Some(node)) => Some(node.spawn_tasks(inbound_rx, client_addr)),
        (None, None) => None,
    };
    let group_tasks = match &context.multileader {
        Some(ml) => {
            let driver = tokio::spawn(Arc::clone(ml).run(Arc::clone(&context)));
            Some(group_tasks.into_iter().flatten().chain([driver]).collect::<Vec<_>>())
        }
        None => group_tasks,
    };
    let ticker_context = Arc::clone(&context);
    let tick_interval = if members.is_some() { group::TICK_INTERVAL } else { pipeline::TICK_INTERVAL };
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick_interval);
        loop {
            interval.tick().await;
            let state_guard = ticker_context.state.read();
            let state = &*state_guard;
            ticker_context.core.with_remote(|inner| inner.replica.tick(now_millis(), state));
        }
    });

    tracing::info!(node = context.config.id, %client_addr, admin = ?admin_addr, fsync = %context.config.fsync, mode = %context.config.mode, "chorus node ready");
    if let Some(bound) = bound {
        let _ = bound.send(BoundAddrs { client: client_addr, admin: admin_addr });
    }

    let mut connections = tokio::task::JoinSet::new();
    tokio::select! {
        () = accept_loop(Arc::clone(&context), listener, &mut connections) => {}
        () = shutdown => tracing::info!("shutting down"),
    }
    // Stop everything that can propose, then let the storage threads finish their rounds. Every
    // acknowledged write is already durable in the log; the final checkpoint only makes the next
    // start faster.
    connections.shutdown().await;
    ticker.abort();
    let _ = ticker.await;
    for task in group_tasks.into_iter().flatten() {
        task.abort();
        let _ = task.await;
    }
    if let Some(network) = network {
        network.shut_down();
    }
    if let Some(admin) = admin_task {
        admin.abort();
        let _ = admin.await;
    }
    core.stop_log_writer();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    core.stop_applier();
    let _ = tokio::task::spawn_blocking(move || applier.join()).await;
    if let Err(error) = pipeline::checkpoint(&state, &snapshot_dir) {
        tracing::warn!(%error, "final snapshot failed; the next start replays the log");
    }
    drop(context);
    drop(leaderless);
    drop(core);
    drop(state);
    drop(lock_file);
    tracing::info!("stopped");
    Ok(())
}

/// Pending connections the kernel queues before `accept` (Redis's `tcp-backlog` is 511; the
/// default of 128 drops SYNs when thousands of clients connect at once, stalling them for a
/// second-long retransmit).
const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(context: Arc<NodeContext>, listener: TcpListener, connections: &mut tokio::task::JoinSet<()>) {
    let mut next_connection_id: u64 = 1;
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors must not end the node: wait a little and go on.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let connected = context.stats.connected_clients.load(Ordering::Relaxed);
        if connected as usize >= context.config.max_clients {
            context.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut socket = socket;
                let _ = socket.write_all(b"-ERR max number of clients reached\r\n").await;
            });
            continue;
        }
        context.stats.connected_clients.fetch_add(1, Ordering::Relaxed);
        context.stats.total_connections.fetch_add(1, Ordering::Relaxed);
        let id = next_connection_id;
        next_connection_id += 1;
        // Finished connections are reaped as new ones arrive, so the set stays as large as the
        // number of live connections.
        while connections.try_join_next().is_some() {}
        connections.spawn(connection::serve(Arc::clone(&context), socket, id));
    }
}
