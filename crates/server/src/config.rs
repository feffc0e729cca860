//! A node's configuration: TOML on disk, overridable by command-line flags. Every option is
//! documented in `docs/configuration.md`; keep the two in step.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When the replication log is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` before a write is acknowledged; concurrent writes share one (group commit).
    #[default]
    Always,
    /// Acknowledge once written to the OS; `fdatasync` at most this often. A power loss can lose the
    /// last interval's writes (a process crash loses nothing).
    Periodic(Duration),
    /// Never `fdatasync`: for tests and throwaway clusters only.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let millis = other
                    .strip_prefix("periodic:")
                    .and_then(|millis| millis.parse::<u64>().ok())
                    .filter(|millis| *millis > 0)
                    .ok_or_else(|| format!("invalid fsync policy '{other}': expected always, periodic:MS or never"))?;
                Ok(FsyncPolicy::Periodic(Duration::from_millis(millis)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Periodic(interval) => write!(f, "periodic:{}", interval.as_millis()),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

impl Serialize for FsyncPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Bounds on what clients may send (see `chorus_resp::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub bulk_bytes_max: usize,
    pub array_len_max: usize,
    pub inline_bytes_max: usize,
    /// Most bytes of one not-yet-complete request a connection may buffer (Redis's
    /// `client-query-buffer-limit`): bounds what a client claiming many large arguments can pin.
    pub query_buffer_bytes_max: usize,
    /// Replies a connection may have outstanding before the node stops reading from it.
    pub pending_replies_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let resp = chorus_resp::Limits::default();
        LimitsConfig {
            bulk_bytes_max: resp.bulk_bytes_max,
            array_len_max: resp.array_len_max,
            inline_bytes_max: resp.inline_bytes_max,
            query_buffer_bytes_max: 1024 * 1024 * 1024,
            pending_replies_max: 16 * 1024,
        }
    }
}

impl LimitsConfig {
    pub fn resp(&self) -> chorus_resp::Limits {
        chorus_resp::Limits {
            bulk_bytes_max: self.bulk_bytes_max,
            array_len_max: self.array_len_max,
            inline_bytes_max: self.inline_bytes_max,
        }
    }
}

/// Storage tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Size at which the log starts a new segment file.
    pub log_segment_bytes_max: u64,
    /// Write the log's space ahead of its appends (zeros), so an append's fdatasync writes no
    /// metadata (see `chorus_storage::LogOptions::preallocate`).
    pub log_preallocate: bool,
    /// After this many applied entries the state is made durable and the log prefix it covers is
    /// deleted (a checkpoint).
    pub checkpoint_entries: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { log_segment_bytes_max: 64 * 1024 * 1024, log_preallocate: true, checkpoint_entries: 500_000 }
    }
}

/// How a group replicates key-value data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Raft: one leader orders every write (the default).
    #[default]
    SingleLeader,
    /// Dynamo style: any node coordinates, quorums of `n`/`w`/`r` replicas (docs/leaderless.md).
    Leaderless,
    /// One Raft group per datacenter, each taking local writes; the groups' leaders stream their
    /// committed changes to each other (docs/multileader.md).
    MultiLeader,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "single-leader" => Ok(Mode::SingleLeader),
            "leaderless" => Ok(Mode::Leaderless),
            "multi-leader" => Ok(Mode::MultiLeader),
            other => Err(format!("invalid mode '{other}': expected single-leader, leaderless or multi-leader")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::SingleLeader => "single-leader",
            Mode::Leaderless => "leaderless",
            Mode::MultiLeader => "multi-leader",
        })
    }
}

/// Tuning of leaderless mode (`[leaderless]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderlessConfig {
    /// Replicas per key, and the default write and read quorums (a connection can pick its own with
    /// `CHORUS.QUORUM`). Every node of a cluster must use the same `n`.
    pub n: u8,
    pub w: u8,
    pub r: u8,
    /// A request not answered by its quorum by then fails.
    pub request_timeout_ms: u64,
    /// How often a node starts a Merkle-tree exchange with the next peer.
    pub anti_entropy_interval_ms: u64,
    /// How often hints are offered back to their home replicas.
    pub handoff_interval_ms: u64,
    /// A peer not heard from (it pings every `failure_timeout_ms / 5`) for this long is taken as
    /// down: fallbacks stand in for it (sloppy quorum).
    pub failure_timeout_ms: u64,
}

impl Default for LeaderlessConfig {
    fn default() -> Self {
        LeaderlessConfig {
            n: 3,
            w: 2,
            r: 2,
            request_timeout_ms: 1000,
            anti_entropy_interval_ms: 10_000,
            handoff_interval_ms: 1000,
            failure_timeout_ms: 1000,
        }
    }
}

/// How a multi-leader DC resolves concurrent writes to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicyConfig {
    /// Last write wins by hybrid-logical-clock timestamp, then origin DC (the default).
    #[default]
    Lww,
    /// Keep every concurrent write (siblings); reads see a deterministic choice.
    Siblings,
}

impl FromStr for ConflictPolicyConfig {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "lww" => Ok(ConflictPolicyConfig::Lww),
            "siblings" => Ok(ConflictPolicyConfig::Siblings),
            other => Err(format!("invalid conflict policy '{other}': expected lww or siblings")),
        }
    }
}

impl fmt::Display for ConflictPolicyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictPolicyConfig::Lww => "lww",
            ConflictPolicyConfig::Siblings => "siblings",
        })
    }
}

pub use chorus_core::multileader::TopologyKind;

/// Multi-leader mode (`[multileader]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MultiLeaderConfig {
    pub conflict_policy: ConflictPolicyConfig,
    pub topology: TopologyKind,
    /// Star: the hub DC's name.
    pub hub: Option<String>,
    /// Ring: DC names in ring order, comma-separated (every DC once).
    pub ring_order: Option<String>,
    /// Changes a DC keeps in its journal for downstream DCs; one that needs older ones gets the
    /// whole multi-leader state instead (a bootstrap).
    pub journal_entries_max: usize,
    /// Most changes in one batch sent to a downstream DC.
    pub batch_changes_max: usize,
    /// A downstream link that has not answered for this long is reset (its leader looked up again).
    pub link_timeout_ms: u64,
}

impl Default for MultiLeaderConfig {
    fn default() -> Self {
        MultiLeaderConfig {
            conflict_policy: ConflictPolicyConfig::Lww,
            topology: TopologyKind::AllToAll,
            hub: None,
            ring_order: None,
            journal_entries_max: 100_000,
            batch_changes_max: 512,
            link_timeout_ms: 2_000,
        }
    }
}

/// Marks a data directory whose node joined an existing group (`--learner`), so that a restart,
/// with or without the flag, still waits for the leader instead of bootstrapping a group.
pub const JOINED_MARKER: &str = "JOINED_AS_LEARNER";

/// The datacenter of a node started without `--datacenter`.
pub const DEFAULT_DATACENTER: &str = "dc1";

/// Whether `name` may name a datacenter (it appears in INFO lines and commands).
pub fn valid_datacenter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Where Redis clients connect.
    pub client_addr: SocketAddr,
    /// Where peers connect (replication; unused while the node runs standalone).
    pub peer_addr: SocketAddr,
    /// HTTP: Prometheus `/metrics` and JSON `/status`.
    pub admin_addr: Option<SocketAddr>,
    pub fsync: FsyncPolicy,
    /// When set, clients must `AUTH` (Redis's `requirepass`).
    pub requirepass: Option<String>,
    pub max_clients: usize,
    /// The replication group, etcd style: `1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103` (node id
    /// = peer address). Unset: the node runs standalone.
    pub initial_cluster: Option<String>,
    /// The group's commit rule: `async`, `semi-sync:K`, `quorum` (default) or `all`.
    pub durability: String,
    /// `single-leader` (Raft, the default) or `leaderless` (needs `initial_cluster`).
    pub mode: Mode,
    pub leaderless: LeaderlessConfig,
    /// This node's datacenter (multi-leader mode: each datacenter is one Raft group). Unset: `dc1`.
    pub datacenter: Option<String>,
    pub multileader: MultiLeaderConfig,
    /// An extra delay on every message between nodes of different datacenters (both directions, in
    /// order), to show WAN latency on one machine. 0: none.
    pub wan_delay_ms: u64,
    /// Join an existing group as a learner (added with `CHORUS.MEMBER ADD` on its leader): the node
    /// starts knowing no configuration and learns it, and the data, from the leader. Remembered in
    /// the data directory, so a restart needs no flag.
    pub learner: bool,
    /// Bounded staleness for follower reads (READONLY): a follower that has not heard from a leader
    /// for longer than this refuses them. Unset: no bound.
    pub replica_read_staleness_max_ms: Option<u64>,
    /// Appends a leader keeps in flight to one follower before new entries wait for an answer (and
    /// then travel together): small values batch more under load.
    pub appends_in_flight_max: usize,
    /// Allow `CHORUS.DEBUG` (fault injection for tests and demos). Off by default, like Redis's
    /// `enable-debug-command`.
    pub debug_commands: bool,
    /// A follower that hears from no leader for a random time in [min, max] starts an election.
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    pub heartbeat_interval_ms: u64,
    /// Threads serving client connections; 0 picks half the cores (at least one), leaving the rest to
    /// the log writer, the applier and the kernel's network stack.
    pub io_threads: usize,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            data_dir: PathBuf::from("./chorus-data/node1"),
            client_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 7101)),
            admin_addr: None,
            fsync: FsyncPolicy::Always,
            requirepass: None,
            max_clients: 10_000,
            io_threads: 0,
            initial_cluster: None,
            durability: "quorum".into(),
            mode: Mode::SingleLeader,
            leaderless: LeaderlessConfig::default(),
            datacenter: None,
            multileader: MultiLeaderConfig::default(),
            wan_delay_ms: 0,
            learner: false,
            replica_read_staleness_max_ms: None,
            debug_commands: false,
            appends_in_flight_max: 2,
            election_timeout_ms_min: 1000,
            election_timeout_ms_max: 2000,
            heartbeat_interval_ms: 100,
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration in {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn from_file(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: NodeConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        Ok(config)
    }

    /// The group's members (node id -> peer address), if the node runs in a replication group.
    pub fn members(&self) -> Result<Option<std::collections::BTreeMap<u64, SocketAddr>>, ConfigError> {
        let Some(text) = &self.initial_cluster else { return Ok(None) };
        let mut members = std::collections::BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let invalid = || ConfigError::Invalid(format!("initial_cluster entry '{part}': expected ID=HOST:PORT"));
            let (id, addr) = part.split_once('=').ok_or_else(invalid)?;
            let id: u64 = id.trim().parse().map_err(|_| invalid())?;
            let addr: SocketAddr = addr.trim().parse().map_err(|_| invalid())?;
            if members.insert(id, addr).is_some() {
                return Err(ConfigError::Invalid(format!("initial_cluster names node {id} twice")));
            }
        }
        if !members.contains_key(&self.id) && !self.joins_as_learner() {
            return Err(ConfigError::Invalid(format!("initial_cluster does not name this node (id {})", self.id)));
        }
        Ok(Some(members))
    }

    /// Whether this node joins (or joined, as its data directory remembers) an existing group as a
    /// learner, rather than being one of the voters that bootstrap it.
    pub fn joins_as_learner(&self) -> bool {
        self.learner || self.data_dir.join(JOINED_MARKER).exists()
    }

    pub fn durability(&self) -> Result<chorus_core::raft::Durability, ConfigError> {
        self.durability.parse().map_err(|error| ConfigError::Invalid(format!("durability: {error}")))
    }

    /// This node's datacenter name (`dc1` when unset).
    pub fn datacenter_name(&self) -> String {
        self.datacenter.clone().unwrap_or_else(|| DEFAULT_DATACENTER.to_string())
    }

    /// The number of connection threads to run (`io_threads`, or half the cores when 0).
    pub fn io_threads_effective(&self) -> usize {
        if self.io_threads > 0 {
            return self.io_threads;
        }
        let cores = std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1);
        (cores / 2).max(1)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_clients == 0 {
            return Err(ConfigError::Invalid("max_clients must be at least 1".into()));
        }
        let limits = &self.limits;
        if limits.bulk_bytes_max == 0
            || limits.array_len_max == 0
            || limits.inline_bytes_max == 0
            || limits.query_buffer_bytes_max == 0
            || limits.pending_replies_max == 0
        {
            return Err(ConfigError::Invalid("limits must be positive".into()));
        }
        self.members()?;
        self.durability()?;
        if self.election_timeout_ms_min == 0 || self.election_timeout_ms_min > self.election_timeout_ms_max {
            return Err(ConfigError::Invalid("election_timeout_ms_min must be positive and at most the max".into()));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.election_timeout_ms_min {
            return Err(ConfigError::Invalid(
                "heartbeat_interval_ms must be positive and below the election timeout".into(),
            ));
        }
        if self.appends_in_flight_max == 0 {
            return Err(ConfigError::Invalid("appends_in_flight_max must be at least 1".into()));
        }
        if self.mode == Mode::Leaderless {
            let ll = &self.leaderless;
            chorus_core::leaderless::Quorum::new(ll.n, ll.w, ll.r)
                .map_err(|error| ConfigError::Invalid(format!("leaderless: {error}")))?;
            let members = self.members()?.map_or(0, |members| members.len());
            if members == 0 {
                return Err(ConfigError::Invalid("mode = \"leaderless\" needs initial_cluster".into()));
            }
            if usize::from(ll.n) > members {
                return Err(ConfigError::Invalid(format!(
                    "leaderless: n = {} replicas per key but initial_cluster names {members} nodes",
                    ll.n
                )));
            }
            if self.learner {
                return Err(ConfigError::Invalid("leaderless mode has no learners".into()));
            }
            if ll.request_timeout_ms == 0
                || ll.anti_entropy_interval_ms == 0
                || ll.handoff_interval_ms == 0
                || ll.failure_timeout_ms < 5
            {
                return Err(ConfigError::Invalid(
                    "leaderless: timeouts and intervals must be positive (failure_timeout_ms at least 5)".into(),
                ));
            }
        }
        if self.mode == Mode::MultiLeader {
            if self.members()?.is_none() {
                return Err(ConfigError::Invalid("mode = \"multi-leader\" needs initial_cluster".into()));
            }
            if self.learner {
                return Err(ConfigError::Invalid("multi-leader mode has no learners (yet)".into()));
            }
            let ml = &self.multileader;
            if ml.journal_entries_max == 0 || ml.batch_changes_max == 0 || ml.link_timeout_ms == 0 {
                return Err(ConfigError::Invalid(
                    "multileader: journal_entries_max, batch_changes_max and link_timeout_ms must be positive".into(),
                ));
            }
            match ml.topology {
                TopologyKind::Star if ml.hub.is_none() => {
                    return Err(ConfigError::Invalid("multileader: topology = \"star\" needs hub".into()));
                }
                TopologyKind::Ring if ml.ring_order.is_none() => {
                    return Err(ConfigError::Invalid("multileader: topology = \"ring\" needs ring_order".into()));
                }
                _ => {}
            }
        }
        if let Some(name) = &self.datacenter
            && !valid_datacenter_name(name)
        {
            return Err(ConfigError::Invalid(format!("datacenter '{name}': use 1-64 letters, digits, '-' or '_'")));
        }
        if self.storage.checkpoint_entries == 0 {
            return Err(ConfigError::Invalid("storage.checkpoint_entries must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies_parse_and_print_back() {
        for text in ["always", "never", "periodic:1000"] {
            let policy: FsyncPolicy = text.parse().expect("valid policy");
            assert_eq!(policy.to_string(), text);
        }
        assert!("periodic:0".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }

    #[test]
    fn a_config_file_overrides_defaults() {
        let config: NodeConfig = toml::from_str(
            "id = 7\nclient_addr = \"127.0.0.1:9001\"\nfsync = \"periodic:50\"\n[limits]\nbulk_bytes_max = 1024\n",
        )
        .expect("valid toml");
        assert_eq!(config.id, 7);
        assert_eq!(config.fsync, FsyncPolicy::Periodic(Duration::from_millis(50)));
        assert_eq!(config.limits.bulk_bytes_max, 1024);
        assert_eq!(config.limits.array_len_max, LimitsConfig::default().array_len_max);
        assert!(toml::from_str::<NodeConfig>("unknown_option = 1").is_err(), "typos are errors");
    }

    #[test]
    fn leaderless_mode_is_configured_and_checked() {
        let cluster = "initial_cluster = \"1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3\"\n";
        let config: NodeConfig =
            toml::from_str(&format!("{cluster}mode = \"leaderless\"\n[leaderless]\nw = 3\nr = 1\n")).unwrap();
        assert_eq!(config.mode, Mode::Leaderless);
        assert_eq!((config.leaderless.n, config.leaderless.w, config.leaderless.r), (3, 3, 1));
        config.validate().unwrap();
        assert_eq!(NodeConfig::default().mode, Mode::SingleLeader);
        assert_eq!("leaderless".parse::<Mode>().unwrap().to_string(), "leaderless");
        assert!("leaderfull".parse::<Mode>().is_err());
        let bad = |text: &str| toml::from_str::<NodeConfig>(text).unwrap().validate().is_err();
        assert!(bad("mode = \"leaderless\"\n"), "needs a cluster");
        assert!(bad(&format!("{cluster}mode = \"leaderless\"\n[leaderless]\nw = 4\n")), "w > n");
        assert!(bad(&format!("{cluster}mode = \"leaderless\"\n[leaderless]\nn = 5\nw = 1\nr = 1\n")), "n > members");
    }

    #[test]
    fn multi_leader_mode_is_configured_and_checked() {
        let cluster = "initial_cluster = \"1=127.0.0.1:1,2=127.0.0.1:2\"\n";
        let config: NodeConfig = toml::from_str(&format!(
            "{cluster}mode = \"multi-leader\"\ndatacenter = \"east\"\nwan_delay_ms = 50\n[multileader]\nconflict_policy = \"siblings\"\ntopology = \"ring\"\nring_order = \"east,west\"\njournal_entries_max = 10\n"
        ))
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.mode, Mode::MultiLeader);
        assert_eq!(config.datacenter_name(), "east");
        assert_eq!(config.multileader.conflict_policy, ConflictPolicyConfig::Siblings);
        assert_eq!(config.multileader.topology, TopologyKind::Ring);
        assert_eq!(NodeConfig::default().datacenter_name(), DEFAULT_DATACENTER);
        assert_eq!("multi-leader".parse::<Mode>().unwrap().to_string(), "multi-leader");
        let bad = |text: &str| toml::from_str::<NodeConfig>(text).map_or(true, |config| config.validate().is_err());
        assert!(bad("mode = \"multi-leader\"\n"), "needs a cluster");
        assert!(
            bad(&format!("{cluster}mode = \"multi-leader\"\n[multileader]\ntopology = \"star\"\n")),
            "star needs a hub"
        );
        assert!(bad(&format!("{cluster}datacenter = \"no spaces\"\n")), "names are checked");
        assert!(bad(&format!("{cluster}mode = \"multi-leader\"\n[multileader]\nconflict_policy = \"mine\"\n")));
    }
}
