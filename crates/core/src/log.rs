//! The replication log's entries. The log is logical (row-based): the leader resolves every
//! non-deterministic command (INCR, SET ... GET, relative expiry) into plain puts and deletes before
//! the entry is proposed, so applying an entry gives the same state on every replica, at any time.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{LogIndex, Term, UnixMillis};

/// One entry of the replication log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub index: LogIndex,
    pub term: Term,
    pub payload: EntryPayload,
}

/// What an entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by a new leader to commit entries of earlier terms (Raft section 5.4.2).
    Noop,
    /// Key-value changes applied atomically (MSET is one entry, not several).
    Write(Vec<WriteOp>),
    /// A new replication-group configuration, whole (not a delta). It takes effect on a node as soon as
    /// the node appends the entry, and is undone if the entry is truncated (Raft dissertation section
    /// 4.1). Applying it leaves the key-value state unchanged.
    Membership(crate::raft::Membership),
    /// Multi-leader mode: a local change (a client write at this datacenter's leader) or changes
    /// received from another datacenter. Applied through the state's `MultiLeaderState`, which
    /// decides what the key-value view shows (docs/multileader.md).
    MultiLeader(crate::multileader::MlEntry),
}

/// A deterministic change to the key-value state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Sets `key` to `value`. `expire_at` is absolute (never relative), so replaying the entry later
    /// or on another replica gives the same expiry.
    Put { key: Bytes, value: Bytes, expire_at: Option<UnixMillis> },
    /// Removes `key` if present.
    Delete { key: Bytes },
    /// Removes every key.
    Clear,
}
