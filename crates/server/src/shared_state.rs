//! The applied key-value state, shared between the applier thread (the only writer) and the
//! connections (readers, through the replica).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use chorus_core::state::MemoryState;
use chorus_core::{LogEntry, LogIndex, ScanFrom, StateError, StateView, StoredValue, UnixMillis};

#[derive(Debug)]
pub struct SharedState {
    inner: RwLock<MemoryState>,
}

impl SharedState {
    pub fn new(state: MemoryState) -> SharedState {
        SharedState { inner: RwLock::new(state) }
    }

    /// A panic while holding the lock can only come from a bug in applying (an assert); the state is
    /// still the last fully applied one, so readers may go on.
    pub fn read(&self) -> RwLockReadGuard<'_, MemoryState> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, MemoryState> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies committed entries in order (the applier thread only). Each call is atomic for readers.
    pub fn apply(&self, entries: &[LogEntry]) {
        self.write().apply(entries);
    }
}

impl StateView for SharedState {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StateError> {
        self.read().get(key)
    }

    fn scan(&self, from: &ScanFrom, limit: usize) -> Result<Vec<(Bytes, StoredValue)>, StateError> {
        self.read().scan(from, limit)
    }

    fn expired_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<Bytes>, StateError> {
        self.read().expired_keys(now, limit)
    }

    fn key_count(&self) -> Result<u64, StateError> {
        self.read().key_count()
    }

    fn expiring_key_count(&self) -> Result<u64, StateError> {
        self.read().expiring_key_count()
    }

    fn applied_index(&self) -> LogIndex {
        self.read().applied_index()
    }
}
