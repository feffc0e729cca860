//! `chorus server`: one node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use chorus_server::{FsyncPolicy, NodeConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// TOML configuration file (docs/configuration.md); flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id, unique in the cluster.
    #[arg(long)]
    id: Option<u64>,
    /// Where the node keeps its log and state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for Redis clients.
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// Address for peer replication traffic.
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// Address for the HTTP admin port (/metrics, /status).
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// always | periodic:MS | never (default always: no acknowledged write is lost to a crash).
    #[arg(long)]
    fsync: Option<FsyncPolicy>,
    /// Require clients to AUTH with this password.
    #[arg(long, env = "CHORUS_REQUIREPASS", hide_env_values = true)]
    requirepass: Option<String>,
    /// Most client connections at once.
    #[arg(long)]
    max_clients: Option<usize>,
    /// The replication group, etcd style: 1=HOST:PEERPORT,2=HOST:PEERPORT,... (unset: standalone).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// The group's commit rule: async | semi-sync:K | quorum | all.
    #[arg(long)]
    durability: Option<String>,
    /// single-leader (Raft, the default) | leaderless (Dynamo-style quorums; docs/leaderless.md).
    #[arg(long)]
    mode: Option<chorus_server::Mode>,
    /// Leaderless mode: replicas per key and default write/read quorums, as N/W/R (e.g. 3/2/2).
    #[arg(long)]
    leaderless_quorum: Option<String>,
    /// Leaderless mode: milliseconds between Merkle anti-entropy exchanges.
    #[arg(long)]
    anti_entropy_interval_ms: Option<u64>,
    /// Threads serving client connections (0: half the cores).
    #[arg(long)]
    io_threads: Option<usize>,
    /// Join an existing group as a learner: add it first with `chorus member add` (or
    /// CHORUS.MEMBER ADD on the leader); --initial-cluster names the members to reach.
    #[arg(long)]
    learner: bool,
    /// Follower reads (READONLY) are refused when the leader was last heard from longer ago.
    #[arg(long)]
    replica_read_staleness_max_ms: Option<u64>,
    /// Allow CHORUS.DEBUG (fault injection: ISOLATE ON|OFF drops every peer message).
    #[arg(long)]
    enable_debug_commands: bool,
    /// Applied entries between snapshots of the state (the log is compacted after each).
    #[arg(long)]
    checkpoint_entries: Option<u64>,
}

impl ServerArgs {
    pub fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(id) = self.id {
            config.id = id;
        }
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(addr) = self.client_addr {
            config.client_addr = addr;
        }
        if let Some(addr) = self.peer_addr {
            config.peer_addr = addr;
        }
        if self.admin_addr.is_some() {
            config.admin_addr = self.admin_addr;
        }
        if let Some(fsync) = self.fsync {
            config.fsync = fsync;
        }
        if self.requirepass.is_some() {
            config.requirepass = self.requirepass;
        }
        if let Some(max_clients) = self.max_clients {
            config.max_clients = max_clients;
        }
        if self.initial_cluster.is_some() {
            config.initial_cluster = self.initial_cluster;
        }
        if let Some(durability) = self.durability {
            config.durability = durability;
        }
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(quorum) = &self.leaderless_quorum {
            let parts: Vec<Option<u8>> = quorum.split('/').map(|part| part.trim().parse().ok()).collect();
            let [Some(n), Some(w), Some(r)] = parts[..] else {
                anyhow::bail!("--leaderless-quorum '{quorum}': expected N/W/R, e.g. 3/2/2");
            };
            (config.leaderless.n, config.leaderless.w, config.leaderless.r) = (n, w, r);
        }
        if let Some(interval) = self.anti_entropy_interval_ms {
            config.leaderless.anti_entropy_interval_ms = interval;
        }
        if let Some(io_threads) = self.io_threads {
            config.io_threads = io_threads;
        }
        if self.learner {
            config.learner = true;
        }
        if self.replica_read_staleness_max_ms.is_some() {
            config.replica_read_staleness_max_ms = self.replica_read_staleness_max_ms;
        }
        if self.enable_debug_commands {
            config.debug_commands = true;
        }
        if let Some(entries) = self.checkpoint_entries {
            config.storage.checkpoint_entries = entries;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Lets one process hold thousands of client sockets: raise the soft open-files limit to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(%error, soft, hard, "could not raise the open files limit");
    }
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    crate::init_logging();
    let config = args.into_config()?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.io_threads_effective())
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // The handlers are installed before the node listens: a test (or an init system) that sees the
    // port open and sends SIGTERM at once must get a clean shutdown, not the default action.
    let (mut terminate, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _runtime = runtime.enter();
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    runtime.block_on(async move {
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        chorus_server::run(config, shutdown, None).await
    })?;
    Ok(())
}
