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

    /// Number of stored keys that have an expiry (INFO's `expires`).
    fn expiring_key_count(&self) -> Result<u64, StateError>;

    /// The index of the last log entry applied.
    fn applied_index(&self) -> LogIndex;
}

/// The applied key-value state, held in memory.
///
/// Keys are kept per hash slot, each slot an ordered map, so that iteration (SCAN, snapshots, and
/// later moving a slot to another group) goes in (slot, key) order, and a lookup searches only the
/// few keys of one slot without building a composite key. An expiry index keeps keys with a TTL in
/// time order for active expiry. The node persists this state as snapshot files next to the
/// replication log (`chorus-storage`), exactly as Raft's state machines do; the simulator uses it
/// as is.
#[derive(Debug, Clone)]
pub struct MemoryState {
    /// One entry per hash slot; `None` for a slot without keys. Most states (a small node, every
    /// state the simulator checkpoints several times a second) use few of the 16384 slots, and
    /// cloning or dropping 16384 empty maps was 40% of the simulator's time.
    slots: Vec<Option<Box<SlotMap>>>,
    expiry: std::collections::BTreeSet<(UnixMillis, Slot, Box<[u8]>)>,
    key_count: u64,
    applied_index: LogIndex,
    applied_term: crate::types::Term,
    /// The replication group's configuration as of the applied index (the latest membership entry
    /// applied); `None` until one is, when the group runs on its bootstrap configuration. Kept with
    /// the state so a snapshot carries it and a restart after compaction still knows its peers.
    membership: Option<crate::raft::Membership>,
}

type SlotMap = std::collections::BTreeMap<Box<[u8]>, Resident>;

/// A value as the state holds it: one exact-size allocation, no reference count. Redis keeps about
/// 200 bytes per small key; shared `Bytes` (a second allocation for the shared header, 32-byte
/// handles) would double that, so values are copied in on apply and out on read instead.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resident {
    value: Box<[u8]>,
    expire_at: Option<UnixMillis>,
}

impl Resident {
    fn to_stored(&self) -> StoredValue {
        StoredValue { value: Bytes::copy_from_slice(&self.value), expire_at: self.expire_at }
    }
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            slots: vec![None; usize::from(crate::slot::SLOT_COUNT)],
            expiry: std::collections::BTreeSet::new(),
            key_count: 0,
            applied_index: LogIndex::ZERO,
            applied_term: crate::types::Term(0),
            membership: None,
        }
    }
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    /// A state restored from a snapshot taken at `applied_index`.
    pub fn restored(applied_index: LogIndex, applied_term: crate::types::Term) -> MemoryState {
        MemoryState { applied_index, applied_term, ..MemoryState::default() }
    }

    /// The group configuration as of the applied index (see the field).
    pub fn membership(&self) -> Option<&crate::raft::Membership> {
        self.membership.as_ref()
    }

    /// Restores the configuration a snapshot recorded.
    pub fn set_membership(&mut self, membership: Option<crate::raft::Membership>) {
        self.membership = membership;
    }

    /// The term of the last applied entry: with the applied index, the point a snapshot stands for.
    pub fn applied_term(&self) -> crate::types::Term {
        self.applied_term
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
            match &entry.payload {
                crate::EntryPayload::Write(ops) => {
                    for op in ops {
                        self.apply_op(op);
                    }
                }
                crate::EntryPayload::Membership(membership) => self.membership = Some(membership.clone()),
                crate::EntryPayload::Noop => {}
            }
            self.applied_index = entry.index;
            self.applied_term = entry.term;
        }
    }

    fn apply_op(&mut self, op: &crate::WriteOp) {
        match op {
            crate::WriteOp::Put { key, value, expire_at } => self.insert(key, value, *expire_at),
            crate::WriteOp::Delete { key } => {
                let slot = Slot::of_key(key);
                let entry = &mut self.slots[usize::from(slot.0)];
                let Some(map) = entry.as_mut() else { return };
                let removed = map.remove(key.as_ref());
                if map.is_empty() {
                    *entry = None;
                }
                if let Some(old) = removed {
                    self.key_count -= 1;
                    if let Some(at) = old.expire_at {
                        self.expiry.remove(&(at, slot, Box::from(key.as_ref())));
                    }
                }
            }
            crate::WriteOp::Clear => {
                self.slots.fill(None);
                self.expiry.clear();
                self.key_count = 0;
            }
        }
    }

    /// Inserts or replaces one key (applying a put, or loading a snapshot).
    pub fn insert(&mut self, key: &[u8], value: &[u8], expire_at: Option<UnixMillis>) {
        let slot = Slot::of_key(key);
        let map = self.slots[usize::from(slot.0)].get_or_insert_with(Box::default);
        let resident = Resident { value: Box::from(value), expire_at };
        let old_expiry = match map.get_mut(key) {
            Some(existing) => std::mem::replace(existing, resident).expire_at,
            None => {
                map.insert(Box::from(key), resident);
                self.key_count += 1;
                None
            }
        };
        if old_expiry != expire_at {
            if let Some(at) = old_expiry {
                self.expiry.remove(&(at, slot, Box::from(key)));
            }
            if let Some(at) = expire_at {
                self.expiry.insert((at, slot, Box::from(key)));
            }
        }
    }

    /// The mean time to live of keys with an expiry, in milliseconds (0 when none): INFO's `avg_ttl`.
    pub fn average_ttl_millis(&self, now: UnixMillis) -> u64 {
        if self.expiry.is_empty() {
            return 0;
        }
        let total: u128 = self.expiry.iter().map(|(at, _, _)| u128::from(at.0.saturating_sub(now.0))).sum();
        u64::try_from(total / self.expiry.len() as u128).unwrap_or(u64::MAX)
    }

    /// Every key in (slot, key) order, for snapshots: key, value, expiry.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], Option<UnixMillis>)> {
        self.slots
            .iter()
            .flatten()
            .flat_map(|slot| slot.iter())
            .map(|(key, resident)| (&**key, &*resident.value, resident.expire_at))
    }
}

impl StateView for MemoryState {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StateError> {
        Ok(self.slots[usize::from(Slot::of_key(key).0)].as_ref().and_then(|map| map.get(key)).map(Resident::to_stored))
    }

    fn scan(&self, from: &ScanFrom, limit: usize) -> Result<Vec<(Bytes, StoredValue)>, StateError> {
        use std::ops::Bound;
        let mut found = Vec::new();
        let first = usize::from(from.slot.0);
        for (position, slot) in self.slots.iter().enumerate().skip(first) {
            let Some(slot) = slot else { continue };
            if found.len() >= limit {
                break;
            }
            let start = match (&from.after_key, position == first) {
                (Some(after), true) => Bound::Excluded(after.as_ref()),
                _ => Bound::Unbounded,
            };
            let room = limit - found.len();
            found.extend(
                slot.range::<[u8], _>((start, Bound::Unbounded))
                    .take(room)
                    .map(|(key, resident)| (Bytes::copy_from_slice(key), resident.to_stored())),
            );
        }
        Ok(found)
    }

    fn expired_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<Bytes>, StateError> {
        Ok(self
            .expiry
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .take(limit)
            .map(|(_, _, key)| Bytes::copy_from_slice(key))
            .collect())
    }

    fn key_count(&self) -> Result<u64, StateError> {
        Ok(self.key_count)
    }

    fn expiring_key_count(&self) -> Result<u64, StateError> {
        Ok(self.expiry.len() as u64)
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }
}
