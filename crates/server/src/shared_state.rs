//! The applied key-value state, shared between the applier thread (the only writer) and the
//! connections (readers, through the replica).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use chorus_core::state::MemoryState;
use chorus_core::{LogEntry, LogIndex, ScanFrom, StateError, StateView, StoredValue, UnixMillis};

#[derive(Debug)]
pub struct SharedState {
    inner: RwLock<MemoryState>,
    /// Held while a snapshot file is written: the applier's checkpoints and a leader's snapshot for
    /// a follower would otherwise write the same temporary file.
    checkpoint: std::sync::Mutex<()>,
    /// Woken after every applied batch (multi-leader mode: the stream driver sends what the journal
    /// gained, and acknowledges what was applied, without waiting for its timer).
    pub applied: tokio::sync::Notify,
}

impl SharedState {
    pub fn new(state: MemoryState) -> SharedState {
        SharedState {
            inner: RwLock::new(state),
            checkpoint: std::sync::Mutex::new(()),
            applied: tokio::sync::Notify::new(),
        }
    }

    /// A panic while holding the lock can only come from a bug in applying (an assert); the state is
    /// still the last fully applied one, so readers may go on.
    pub fn read(&self) -> RwLockReadGuard<'_, MemoryState> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, MemoryState> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Exclusive right to write a snapshot file of this state.
    pub fn checkpoint_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.checkpoint.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Swaps in a whole new state (a snapshot received from the leader; the applier thread only).
    pub fn replace(&self, state: MemoryState) {
        *self.write() = state;
    }

    /// Applies committed entries in order (the applier thread only). Each call is atomic for readers.
    pub fn apply(&self, entries: &[LogEntry]) {
        self.write().apply(entries);
        self.applied.notify_one();
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
