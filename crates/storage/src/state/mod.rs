//! The applied key-value state, on fjall.
//!
//! Apply is not durable on its own: the replication log is the durable record, and after a crash
//! the driver replays it from [`StateStore::applied_index`](chorus_core::StateView::applied_index)
//! (entries at or below it are skipped). [`StateStore::persist`] makes everything applied so far
//! durable, so the log before that point can be compacted.
//!
//! Every apply call is one fjall batch, and every read goes through a fjall snapshot, so a reader
//! sees each apply call entirely or not at all.

mod codec;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chorus_core::{
    EntryPayload, LogEntry, LogIndex, ScanFrom, StateError, StateView, StoredValue, Term, UnixMillis, WriteOp,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable};

pub use codec::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

use crate::error::StorageError;

const DATA_KEYSPACE: &str = "data";
const EXPIRY_KEYSPACE: &str = "expiry";
const META_KEYSPACE: &str = "meta";

/// The key-value state on disk. `Send + Sync`: any number of threads may read while one applies.
pub struct StateStore {
    dir: PathBuf,
    db: Database,
    data: Keyspace,
    expiry: Keyspace,
    meta: Keyspace,
    /// Apply reads old values to maintain the expiry index and the key count, so two applies must
    /// never interleave.
    apply_lock: Mutex<()>,
    /// Mirrors of the meta keyspace, published after each batch commits, so a reader that sees
    /// applied index N is sure to see the data of entry N.
    applied_index: AtomicU64,
    applied_term: AtomicU64,
    key_count: AtomicU64,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .field("applied_index", &self.applied_index.load(Ordering::Acquire))
            .field("applied_term", &self.applied_term.load(Ordering::Acquire))
            .field("key_count", &self.key_count.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

const DATA_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
const EXPIRY_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
const META_MEMTABLE_BYTES: u64 = 1024 * 1024;
const BLOCK_CACHE_BYTES: u64 = 8 * 1024 * 1024;

impl StateStore {
    /// Opens (or creates) the state in `dir`. Holds a lock on the directory until dropped.
    pub fn open(dir: &Path) -> Result<StateStore, StorageError> {
        // fjall's journal reaches the OS on every apply batch (one write per group commit, not per
        // write): a killed process then recovers a consistent prefix of whole batches, data and
        // `applied_index` together. Batches are fsynced only by `persist` (the replication log is the
        // durable record).
        let db = Database::builder(dir).cache_size(BLOCK_CACHE_BYTES).open()?;
        // Memtables keep every version until they are flushed, so their size is memory spent per
        // overwritten key. The data memtable is bounded to keep resident memory proportional to the
        // live keys; the meta keyspace is rewritten on every apply batch (its three counters), so a
        // small memtable flushes those dead versions away quickly.
        let data =
            db.keyspace(DATA_KEYSPACE, || KeyspaceCreateOptions::default().max_memtable_size(DATA_MEMTABLE_BYTES))?;
        let expiry =
            db.keyspace(EXPIRY_KEYSPACE, || KeyspaceCreateOptions::default().max_memtable_size(EXPIRY_MEMTABLE_BYTES))?;
        let meta =
            db.keyspace(META_KEYSPACE, || KeyspaceCreateOptions::default().max_memtable_size(META_MEMTABLE_BYTES))?;
        let read_counter = |key: &[u8]| -> Result<u64, StorageError> {
            match meta.get(key)? {
                None => Ok(0),
                Some(bytes) => codec::decode_u64(&bytes).map_err(|detail| StorageError::Corrupt {
                    path: dir.to_owned(),
                    offset: 0,
                    detail: format!("meta {}: {detail}", String::from_utf8_lossy(key)),
                }),
            }
        };
        let applied_index = read_counter(codec::APPLIED_INDEX_KEY)?;
        let applied_term = read_counter(codec::APPLIED_TERM_KEY)?;
        let key_count = read_counter(codec::KEY_COUNT_KEY)?;
        Ok(StateStore {
            dir: dir.to_owned(),
            db,
            data,
            expiry,
            meta,
            apply_lock: Mutex::new(()),
            applied_index: AtomicU64::new(applied_index),
            applied_term: AtomicU64::new(applied_term),
            key_count: AtomicU64::new(key_count),
        })
    }

    /// Applies `entries` in log order as one atomic batch (not synced: see [`persist`](Self::persist)).
    /// Entries at or below the applied index are skipped, so replaying the log after a crash is
    /// harmless. On error nothing is applied.
    ///
    /// # Panics
    /// If the entries after the applied index do not continue it without a gap.
    pub fn apply(&self, entries: &[LogEntry]) -> Result<(), StorageError> {
        let _apply_guard = self.apply_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let applied_index = LogIndex(self.applied_index.load(Ordering::Acquire));
        let fresh_from = entries.partition_point(|entry| entry.index <= applied_index);
        let fresh = &entries[fresh_from..];
        let Some(last) = fresh.last() else {
            return Ok(());
        };
        let mut index_expected = applied_index.next();
        for entry in fresh {
            assert_eq!(entry.index, index_expected, "log applied with a gap");
            index_expected = index_expected.next();
        }

        let snapshot = self.db.snapshot();
        let mut pending = PendingChanges::new(self.key_count.load(Ordering::Acquire));
        for entry in fresh {
            if let EntryPayload::Write(ops) = &entry.payload {
                for op in ops {
                    pending.apply_op(op, |data_key| self.stored_presence(&snapshot, data_key))?;
                }
            }
        }

        let mut batch = self.db.batch();
        let key_count = pending.key_count;
        pending.write_into(&mut batch, self, &snapshot)?;
        batch.insert(&self.meta, codec::APPLIED_INDEX_KEY, last.index.0.to_le_bytes().to_vec());
        batch.insert(&self.meta, codec::APPLIED_TERM_KEY, last.term.0.to_le_bytes().to_vec());
        batch.insert(&self.meta, codec::KEY_COUNT_KEY, key_count.to_le_bytes().to_vec());
        batch.commit()?;

        self.key_count.store(key_count, Ordering::Release);
        self.applied_term.store(last.term.0, Ordering::Release);
        self.applied_index.store(last.index.0, Ordering::Release);
        Ok(())
    }

    /// The term of the entry at the applied index (0 if nothing was applied): with the applied
    /// index, the point a snapshot of this state stands for, and where a reset log restarts.
    pub fn applied_term(&self) -> Term {
        Term(self.applied_term.load(Ordering::Acquire))
    }

    /// Makes everything applied so far durable (fsync of fjall's journal): after this returns, a
    /// crash keeps the applied index at least this high.
    pub fn persist(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Bytes the state takes on disk, journal included (for INFO).
    pub fn approximate_disk_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.db.disk_space()?)
    }

    /// The directory holding the state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stored_presence(&self, snapshot: &fjall::Snapshot, data_key: &[u8]) -> Result<Presence, StorageError> {
        let Some(encoded) = snapshot.get(&self.data, data_key)? else {
            return Ok(Presence::Absent);
        };
        let expire_at = codec::decode_expiry(&encoded).map_err(|detail| self.corrupt(detail))?;
        Ok(Presence::Present { expire_at })
    }

    fn corrupt(&self, detail: String) -> StorageError {
        StorageError::Corrupt { path: self.dir.clone(), offset: 0, detail }
    }
}

/// Whether a key is stored, and its expiry if it is.
#[derive(Debug, Clone, Copy)]
enum Presence {
    Absent,
    Present { expire_at: Option<UnixMillis> },
}

enum PendingValue {
    Deleted,
    Stored { encoded: Vec<u8>, expire_at: Option<UnixMillis> },
}

/// The net effect of one apply call, built before anything is written. Several ops of one call may
/// touch the same key, and fjall must see each key at most once per batch (two writes of one key
/// at the same sequence number have no defined winner), so changes are folded per key here.
struct PendingChanges {
    /// Every stored key counts as deleted unless `data` says otherwise.
    cleared: bool,
    /// Data key to what it holds after the batch.
    data: BTreeMap<Vec<u8>, PendingValue>,
    /// Expiry key to whether it is present after the batch.
    expiry: BTreeMap<Vec<u8>, bool>,
    key_count: u64,
}

impl PendingChanges {
    fn new(key_count: u64) -> PendingChanges {
        PendingChanges { cleared: false, data: BTreeMap::new(), expiry: BTreeMap::new(), key_count }
    }

    /// Whether `data_key` is present with the changes so far, asking `stored_presence` (the state
    /// before this batch) when the batch has not touched the key.
    fn presence(
        &self,
        data_key: &[u8],
        stored_presence: impl FnOnce(&[u8]) -> Result<Presence, StorageError>,
    ) -> Result<Presence, StorageError> {
        match self.data.get(data_key) {
            Some(PendingValue::Stored { expire_at, .. }) => Ok(Presence::Present { expire_at: *expire_at }),
            Some(PendingValue::Deleted) => Ok(Presence::Absent),
            None if self.cleared => Ok(Presence::Absent),
            None => stored_presence(data_key),
        }
    }

    fn apply_op(
        &mut self,
        op: &WriteOp,
        stored_presence: impl FnOnce(&[u8]) -> Result<Presence, StorageError>,
    ) -> Result<(), StorageError> {
        match op {
            WriteOp::Put { key, value, expire_at } => {
                if key.len() > KEY_BYTES_MAX {
                    return Err(StorageError::Encode(format!("key of {} bytes exceeds {KEY_BYTES_MAX}", key.len())));
                }
                if value.len() > VALUE_BYTES_MAX {
                    return Err(StorageError::Encode(format!(
                        "value of {} bytes exceeds {VALUE_BYTES_MAX}",
                        value.len()
                    )));
                }
                let data_key = codec::data_key(key);
                match self.presence(&data_key, stored_presence)? {
                    Presence::Absent => self.key_count += 1,
                    Presence::Present { expire_at: Some(old_expire_at) } => {
                        self.expiry.insert(codec::expiry_key(old_expire_at, &data_key), false);
                    }
                    Presence::Present { expire_at: None } => {}
                }
                if let Some(at) = expire_at {
                    self.expiry.insert(codec::expiry_key(*at, &data_key), true);
                }
                let encoded = codec::encode_value(value, *expire_at);
                self.data.insert(data_key, PendingValue::Stored { encoded, expire_at: *expire_at });
            }
            WriteOp::Delete { key } => {
                let data_key = codec::data_key(key);
                match self.presence(&data_key, stored_presence)? {
                    Presence::Absent => return Ok(()),
                    Presence::Present { expire_at: Some(old_expire_at) } => {
                        self.expiry.insert(codec::expiry_key(old_expire_at, &data_key), false);
                    }
                    Presence::Present { expire_at: None } => {}
                }
                self.key_count -= 1;
                self.data.insert(data_key, PendingValue::Deleted);
            }
            WriteOp::Clear => {
                self.cleared = true;
                self.data.clear();
                self.expiry.clear();
                self.key_count = 0;
            }
        }
        Ok(())
    }

    fn write_into(
        self,
        batch: &mut OwnedWriteBatch,
        store: &StateStore,
        snapshot: &fjall::Snapshot,
    ) -> Result<(), StorageError> {
        if self.cleared {
            for (keyspace, changed) in [
                (&store.data, self.data.keys().collect::<Vec<_>>()),
                (&store.expiry, self.expiry.keys().collect::<Vec<_>>()),
            ] {
                for stored in snapshot.iter(keyspace) {
                    let stored_key = stored.key()?;
                    let changed_in_batch =
                        changed.binary_search_by(|changed_key| changed_key.as_slice().cmp(stored_key.as_ref())).is_ok();
                    if !changed_in_batch {
                        batch.remove(keyspace, stored_key);
                    }
                }
            }
        }
        for (data_key, value) in self.data {
            match value {
                PendingValue::Stored { encoded, .. } => batch.insert(&store.data, data_key, encoded),
                PendingValue::Deleted => batch.remove(&store.data, data_key),
            }
        }
        for (expiry_key, present) in self.expiry {
            if present {
                batch.insert(&store.expiry, expiry_key, Vec::new());
            } else {
                batch.remove(&store.expiry, expiry_key);
            }
        }
        Ok(())
    }
}

impl StateView for StateStore {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StateError> {
        let snapshot = self.db.snapshot();
        let Some(encoded) = snapshot.get(&self.data, codec::data_key(key)).map_err(StorageError::from)? else {
            return Ok(None);
        };
        let stored = codec::decode_value(&encoded).map_err(|detail| self.corrupt(detail))?;
        Ok(Some(stored))
    }

    fn scan(&self, from: &ScanFrom, limit: usize) -> Result<Vec<(Bytes, StoredValue)>, StateError> {
        let start = match &from.after_key {
            Some(key) => Bound::Excluded(codec::data_key_in_slot(from.slot, key)),
            None => Bound::Included(from.slot.prefix().to_vec()),
        };
        let snapshot = self.db.snapshot();
        let mut found = Vec::with_capacity(limit.min(1024));
        for stored in snapshot.range(&self.data, (start, Bound::Unbounded)).take(limit) {
            let (data_key, encoded) = stored.into_inner().map_err(StorageError::from)?;
            let key = codec::key_of_data_key(&data_key).map_err(|detail| self.corrupt(detail))?;
            let value = codec::decode_value(&encoded).map_err(|detail| self.corrupt(detail))?;
            found.push((Bytes::copy_from_slice(key), value));
        }
        Ok(found)
    }

    fn expired_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<Bytes>, StateError> {
        let end = match codec::expiry_keys_due_end(now) {
            Some(end) => Bound::Excluded(end.to_vec()),
            None => Bound::Unbounded,
        };
        let snapshot = self.db.snapshot();
        let mut due = Vec::with_capacity(limit.min(1024));
        for stored in snapshot.range(&self.expiry, (Bound::Unbounded, end)).take(limit) {
            let expiry_key = stored.key().map_err(StorageError::from)?;
            let key = codec::key_of_expiry_key(&expiry_key).map_err(|detail| self.corrupt(detail))?;
            due.push(Bytes::copy_from_slice(key));
        }
        Ok(due)
    }

    fn key_count(&self) -> Result<u64, StateError> {
        Ok(self.key_count.load(Ordering::Acquire))
    }

    fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied_index.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn state_store_is_send_and_sync() {
        assert_send_sync::<StateStore>();
    }

    #[test]
    fn undecodable_stored_bytes_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.data.insert(codec::data_key(b"bad"), vec![0x80u8, 1, 2]).unwrap();
        store.data.insert(codec::data_key(b"cut"), vec![1u8, 2, 3]).unwrap();
        store.data.insert(vec![0u8], vec![0u8]).unwrap();
        store.expiry.insert(vec![1u8, 2, 3], vec![]).unwrap();

        assert!(store.get(b"bad").is_err());
        assert!(store.get(b"cut").is_err());
        assert!(store.scan(&ScanFrom::default(), usize::MAX).is_err());
        assert!(store.expired_keys(UnixMillis(u64::MAX), 10).is_err());
        let overwrite = LogEntry {
            index: LogIndex(1),
            term: chorus_core::Term(1),
            payload: EntryPayload::Write(vec![WriteOp::Delete { key: Bytes::from_static(b"bad") }]),
        };
        assert!(matches!(store.apply(&[overwrite]), Err(StorageError::Corrupt { .. })));
        assert_eq!(store.applied_index(), LogIndex(0));
    }

    #[test]
    fn bad_meta_counters_fail_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.meta.insert(codec::APPLIED_INDEX_KEY, vec![1u8, 2, 3]).unwrap();
        drop(store);
        assert!(matches!(StateStore::open(dir.path()), Err(StorageError::Corrupt { .. })));
    }
}
