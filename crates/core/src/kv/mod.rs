//! The key-value state machine: Redis string-command semantics over the applied state plus the
//! writes still on their way to it.
//!
//! A command executes against the *latest* view (the applied state overlaid with entries proposed but
//! not yet applied), so a pipelined `SET k v; GET k` sees its own write and `INCR` twice gives 2. The
//! price is that a reply that saw a pending write must not leave before that write commits; each
//! execution therefore reports a `read_barrier`, the highest pending index it observed, and the
//! replica holds the reply until the commit index reaches it. Commands over the whole keyspace
//! (`DBSIZE`, `KEYS`, `SCAN`) merge the pending writes into what they read from the applied state,
//! so they too see exactly the writes proposed before them.

mod exec;
pub mod glob;
pub mod number;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use bytes::Bytes;

use crate::log::WriteOp;
use crate::slot::Slot;
use crate::state::{StateError, StateView, StoredValue};
use crate::types::LogIndex;

pub use exec::Execution;

/// Redis's limit on a string's size (`proto-max-bulk-len`), enforced on APPEND and SETRANGE.
pub const STRING_BYTES_MAX: usize = 512 * 1024 * 1024;

/// How many SCAN cursors a node remembers; an evicted cursor resumes from the start of its slot,
/// which may repeat keys (SCAN allows that) but never skips one.
const SCAN_CURSORS_MAX: usize = 4096;

/// A fixed-key hasher: the core's behaviour must not depend on a random seed.
type FixedHasher = BuildHasherDefault<std::hash::DefaultHasher>;

/// A write proposed but not yet applied.
#[derive(Debug, Clone)]
struct PendingValue {
    value: Option<StoredValue>,
    index: LogIndex,
}

/// Counters reported by INFO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub expired_keys: u64,
}

/// The key-value state machine's in-memory part.
#[derive(Debug, Default)]
pub struct KvMachine {
    overlay: HashMap<Bytes, PendingValue, FixedHasher>,
    /// Keys written by each pending entry, oldest first, to drop overlay rows once applied.
    overlay_order: VecDeque<(LogIndex, Vec<Bytes>)>,
    /// A pending FLUSHALL: keys absent from the overlay read as missing until it is applied.
    pending_clear: Option<LogIndex>,
    scan_cursors: BTreeMap<u64, (Slot, Bytes)>,
    next_cursor_id: u64,
    pub stats: KvStats,
}

impl KvMachine {
    pub fn new() -> KvMachine {
        KvMachine { next_cursor_id: 1, ..KvMachine::default() }
    }

    /// Records the writes of the entry at `index` so later commands see them before they are applied.
    pub fn record_pending(&mut self, index: LogIndex, ops: &[WriteOp]) {
        if let Some((last, _)) = self.overlay_order.back() {
            assert!(*last < index, "pending entries recorded out of order");
        }
        let mut keys = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                WriteOp::Put { key, value, expire_at } => {
                    let value = Some(StoredValue { value: value.clone(), expire_at: *expire_at });
                    self.overlay.insert(key.clone(), PendingValue { value, index });
                    keys.push(key.clone());
                }
                WriteOp::Delete { key } => {
                    self.overlay.insert(key.clone(), PendingValue { value: None, index });
                    keys.push(key.clone());
                }
                WriteOp::Clear => {
                    // Everything pending before the clear is superseded by it.
                    self.overlay.clear();
                    self.overlay_order.clear();
                    keys.clear();
                    self.pending_clear = Some(index);
                }
            }
        }
        self.overlay_order.push_back((index, keys));
    }

    /// Forgets pending writes up to `index`: the applied state now has them.
    pub fn on_applied(&mut self, index: LogIndex) {
        while let Some((entry_index, _)) = self.overlay_order.front() {
            if *entry_index > index {
                break;
            }
            let Some((entry_index, keys)) = self.overlay_order.pop_front() else {
                break;
            };
            for key in keys {
                if self.overlay.get(&key).is_some_and(|pending| pending.index == entry_index) {
                    self.overlay.remove(&key);
                }
            }
        }
        if self.pending_clear.is_some_and(|clear| clear <= index) {
            self.pending_clear = None;
        }
    }

    /// Drops every pending write: the entries behind them will never be applied (a leader lost its
    /// term before they committed).
    pub fn discard_pending(&mut self) {
        self.overlay.clear();
        self.overlay_order.clear();
        self.pending_clear = None;
    }

    /// Whether `key` has a write proposed but not yet applied (or a FLUSHALL is pending).
    pub fn has_pending(&self, key: &[u8]) -> bool {
        self.pending_clear.is_some() || self.overlay.contains_key(key)
    }

    /// Keys in the latest view (applied state plus pending writes): what DBSIZE answers, for INFO.
    pub fn key_count<S: StateView>(&self, state: &S) -> Result<u64, StateError> {
        self.latest_count(state, state.key_count()?, |stored| stored.is_some())
    }

    /// Keys with an expiry in the latest view (INFO's `expires`).
    pub fn expiring_key_count<S: StateView>(&self, state: &S) -> Result<u64, StateError> {
        self.latest_count(state, state.expiring_key_count()?, |stored| {
            stored.is_some_and(|stored| stored.expire_at.is_some())
        })
    }

    /// Counts the keys for which `counted` holds in the latest view: the applied state's count
    /// (`applied_count`, or none under a pending FLUSHALL) corrected by each pending write.
    fn latest_count<S: StateView>(
        &self,
        state: &S,
        applied_count: u64,
        counted: impl Fn(Option<&StoredValue>) -> bool,
    ) -> Result<u64, StateError> {
        let cleared = self.pending_clear.is_some();
        let mut count = if cleared { 0 } else { i64::try_from(applied_count).unwrap_or(i64::MAX) };
        for (key, pending) in &self.overlay {
            let before = !cleared && counted(state.get(key)?.as_ref());
            count += i64::from(counted(pending.value.as_ref())) - i64::from(before);
        }
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The highest index of any pending write (and of a pending FLUSHALL): a reply computed from the
    /// whole latest view may leave only once it has committed.
    fn pending_barrier(&self) -> LogIndex {
        let overlay = self.overlay.values().map(|pending| pending.index).max().unwrap_or(LogIndex::ZERO);
        overlay.max(self.pending_clear.unwrap_or(LogIndex::ZERO))
    }

    /// Number of keys with a write in flight (INFO).
    pub fn pending_keys(&self) -> usize {
        self.overlay.len()
    }

    fn remember_cursor(&mut self, slot: Slot, last_key: Bytes) -> u64 {
        let id = self.next_cursor_id;
        self.next_cursor_id += 1;
        self.scan_cursors.insert(id, (slot, last_key));
        while self.scan_cursors.len() > SCAN_CURSORS_MAX {
            self.scan_cursors.pop_first();
        }
        (id << 14) | u64::from(slot.0)
    }
}
