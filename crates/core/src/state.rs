//! The read side of the applied key-value state, as the core sees it. The node implements it over
//! the on-disk store (`chorus-storage`), the simulator over a map in memory. Writes never go through
//! here: the core emits `Effect::Apply` and the driver applies entries in log order.

use bytes::Bytes;

use crate::slot::Slot;
use crate::types::{LogIndex, UnixMillis};

/// A stored value and its absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub value: Bytes,
    pub expire_at: Option<UnixMillis>,
}

impl StoredValue {
    /// Whether the value has expired at `now` (Redis: a key whose expiry is in the past is gone).
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expire_at.is_some_and(|at| at <= now)
    }
}

/// A failure to read the applied state: disk errors, corruption. The core turns it into an error
/// reply; it never panics on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StateError(pub String);

/// Where a scan resumes: the first slot to look at, and within that slot the last key already
/// returned (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanFrom {
    pub slot: Slot,
    pub after_key: Option<Bytes>,
}

/// Read access to the applied key-value state.
pub trait StateView {
    /// The value of `key`, expired or not (the caller decides what expiry means).
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StateError>;

    /// Up to `limit` entries in storage order: ascending by (slot, key), starting at `from`.
    fn scan(&self, from: &ScanFrom, limit: usize) -> Result<Vec<(Bytes, StoredValue)>, StateError>;

    /// Up to `limit` keys whose expiry is at or before `now`, earliest first (possibly stale hints:
    /// the caller re-checks each key with `get`).
    fn expired_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<Bytes>, StateError>;

    /// Number of keys stored (including expired keys not yet deleted, as Redis's DBSIZE counts).
    fn key_count(&self) -> Result<u64, StateError>;

    /// The index of the last log entry applied.
    fn applied_index(&self) -> LogIndex;
}
