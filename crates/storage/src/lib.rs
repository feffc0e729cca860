//! Chorus's on-disk storage.
//!
//! - [`SegmentedLog`]: the replication log, our own segmented append-only files with checksummed
//!   records, group-committed by an explicit [`SegmentedLog::sync`], truncated at the end when Raft
//!   resolves a conflict and compacted at the front once a snapshot covers it.
//! - [`StateStore`]: the applied key-value state on fjall, readable through
//!   [`chorus_core::StateView`] while one thread applies committed entries.
//!
//! The log is the durable record; the state is rebuilt from it after a crash (applying is
//! idempotent), so only the log is fsynced on the write path.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod log;
mod state;

pub use error::StorageError;
pub use log::{LogOptions, SegmentedLog};
pub use state::{KEY_BYTES_MAX, StateStore, VALUE_BYTES_MAX};
