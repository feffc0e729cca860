//! Names of the Prometheus metrics the node exports (on the admin port's `/metrics`).

pub const COMMANDS_TOTAL: &str = "chorus_commands_total";
pub const CONNECTIONS_TOTAL: &str = "chorus_connections_total";
pub const CONNECTED_CLIENTS: &str = "chorus_connected_clients";
pub const REJECTED_CONNECTIONS_TOTAL: &str = "chorus_rejected_connections_total";
pub const PROTOCOL_ERRORS_TOTAL: &str = "chorus_protocol_errors_total";
pub const FSYNCS_TOTAL: &str = "chorus_log_fsyncs_total";
pub const FSYNC_SECONDS: &str = "chorus_log_fsync_seconds";
pub const GROUP_COMMIT_ENTRIES: &str = "chorus_log_group_commit_entries";
pub const COMMIT_INDEX: &str = "chorus_commit_index";
pub const APPLIED_INDEX: &str = "chorus_applied_index";
pub const KEYS: &str = "chorus_keys";
pub const ML_CONFLICTS_RESOLVED_TOTAL: &str = "chorus_ml_conflicts_resolved_total";
pub const ML_CHANGES_LOCAL_TOTAL: &str = "chorus_ml_changes_local_total";
pub const ML_CHANGES_REMOTE_TOTAL: &str = "chorus_ml_changes_remote_total";
pub const ML_DUPLICATES_DROPPED_TOTAL: &str = "chorus_ml_duplicates_dropped_total";
pub const ML_HELD_BACK: &str = "chorus_ml_held_back";
pub const ML_JOURNAL_LAST: &str = "chorus_ml_journal_last";
/// Per remote datacenter (label `datacenter`): 1 while the link streams.
pub const ML_LINK_UP: &str = "chorus_ml_link_up";
pub const ML_LAG_CHANGES: &str = "chorus_ml_replication_lag_changes";
pub const ML_LAG_SECONDS: &str = "chorus_ml_replication_lag_seconds";
pub const ML_POSITION_SENT: &str = "chorus_ml_position_sent";
pub const ML_POSITION_ACKED: &str = "chorus_ml_position_acknowledged";
pub const ML_POSITION_RECEIVED: &str = "chorus_ml_position_received";

// Leaderless mode (`mode = "leaderless"`): the counters of INFO's `leaderless` section.
pub const LL_READ_REPAIRS_TOTAL: &str = "chorus_ll_read_repairs_total";
pub const LL_ANTI_ENTROPY_ROUNDS_TOTAL: &str = "chorus_ll_anti_entropy_rounds_total";
pub const LL_ANTI_ENTROPY_KEYS_RECEIVED_TOTAL: &str = "chorus_ll_anti_entropy_keys_received_total";
pub const LL_ANTI_ENTROPY_KEYS_SENT_TOTAL: &str = "chorus_ll_anti_entropy_keys_sent_total";
pub const LL_HINTS: &str = "chorus_ll_hints";
pub const LL_HINTS_STORED_TOTAL: &str = "chorus_ll_hints_stored_total";
pub const LL_HINTS_DELIVERED_TOTAL: &str = "chorus_ll_hints_delivered_total";
pub const LL_HANDOFFS_RECEIVED_TOTAL: &str = "chorus_ll_handoffs_received_total";
pub const LL_TOMBSTONES_PURGED_TOTAL: &str = "chorus_ll_tombstones_purged_total";
pub const LL_KEYS: &str = "chorus_ll_keys";
pub const LL_KEYS_WITH_SIBLINGS: &str = "chorus_ll_keys_with_siblings";
pub const LL_SIBLINGS_MAX: &str = "chorus_ll_siblings_max";
pub const LL_FORWARDED_TOTAL: &str = "chorus_ll_forwarded_total";
pub const LL_FORWARD_TIMEOUTS_TOTAL: &str = "chorus_ll_forward_timeouts_total";
pub const LL_PEERS_DOWN: &str = "chorus_ll_peers_down";
pub const LL_PEER_DOWN_EVENTS_TOTAL: &str = "chorus_ll_peer_down_events_total";
pub const LL_IN_FLIGHT: &str = "chorus_ll_in_flight";
