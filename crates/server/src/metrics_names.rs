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
