//! Chorus's on-disk storage.
//!
//! - [`SegmentedLog`]: the replication log, our own segmented append-only files with checksummed
//!   records, group-committed by an explicit [`SegmentedLog::sync`], truncated at the end when Raft
//!   resolves a conflict and compacted at the front once a snapshot covers it.
//! - snapshots: the applied key-value state (held in memory as [`chorus_core::state::MemoryState`])
//!   written whole to one checksummed file at a log index, so the log prefix it covers can go.
//!
//! The log is the durable record; the state is rebuilt from it after a crash (applying is
//! idempotent), so only the log is fsynced on the write path.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod hard_state;
mod log;
mod snapshot;

pub use error::StorageError;
pub use hard_state::{HardState, RollbackRecord, append_rollback, load_hard_state, read_rollback, store_hard_state};
pub use log::{LogOptions, RESERVE_CHUNK_BYTES, SegmentedLog};
pub use snapshot::{
    SnapshotMeta, adopt_snapshot_file, latest_snapshot_file, load_latest_snapshot, load_snapshot, write_snapshot,
};
