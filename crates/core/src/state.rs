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

/// The applied state held in memory: the simulator's store, and the reference model that the
/// on-disk store is checked against (`chorus-storage`'s conformance tests).
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    /// Keyed by (slot, key): the same order as the on-disk store.
    entries: std::collections::BTreeMap<(Slot, Bytes), StoredValue>,
    applied_index: LogIndex,
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    /// Applies entries in log order; entries at or below the applied index are skipped, so replay
    /// after a crash is idempotent.
    ///
    /// # Panics
    /// If an entry skips an index: the driver must apply the log without gaps.
    pub fn apply(&mut self, entries: &[crate::LogEntry]) {
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            assert_eq!(entry.index, self.applied_index.next(), "log applied with a gap");
            if let crate::EntryPayload::Write(ops) = &entry.payload {
                for op in ops {
                    self.apply_op(op);
                }
            }
            self.applied_index = entry.index;
        }
    }

    fn apply_op(&mut self, op: &crate::WriteOp) {
        match op {
            crate::WriteOp::Put { key, value, expire_at } => {
                let stored = StoredValue { value: value.clone(), expire_at: *expire_at };
                self.entries.insert((Slot::of_key(key), key.clone()), stored);
            }
            crate::WriteOp::Delete { key } => {
                self.entries.remove(&(Slot::of_key(key), key.clone()));
            }
            crate::WriteOp::Clear => self.entries.clear(),
        }
    }
}

impl StateView for MemoryState {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StateError> {
        let lookup = (Slot::of_key(key), Bytes::copy_from_slice(key));
        Ok(self.entries.get(&lookup).cloned())
    }

    fn scan(&self, from: &ScanFrom, limit: usize) -> Result<Vec<(Bytes, StoredValue)>, StateError> {
        use std::ops::Bound;
        let start = match &from.after_key {
            Some(key) => Bound::Excluded((from.slot, key.clone())),
            None => Bound::Included((from.slot, Bytes::new())),
        };
        Ok(self
            .entries
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|((_, key), stored)| (key.clone(), stored.clone()))
            .collect())
    }

    fn expired_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<Bytes>, StateError> {
        // Earliest first, ties in storage order (slot, key), as the on-disk expiry index orders them.
        let mut expired: Vec<(UnixMillis, Slot, Bytes)> = self
            .entries
            .iter()
            .filter(|(_, stored)| stored.is_expired(now))
            .filter_map(|((slot, key), stored)| stored.expire_at.map(|at| (at, *slot, key.clone())))
            .collect();
        expired.sort();
        Ok(expired.into_iter().take(limit).map(|(_, _, key)| key).collect())
    }

    fn key_count(&self) -> Result<u64, StateError> {
        Ok(self.entries.len() as u64)
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }
}
