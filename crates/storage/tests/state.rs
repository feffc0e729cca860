//! The conformance suite of `StateView`: the node's state (`chorus_core::MemoryState`, per-slot
//! maps with an expiry index) must answer every read exactly as a deliberately naive reference model
//! does, after any sequence of applied entries, after replays, and after a snapshot round trip.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chorus_core::state::MemoryState;
use chorus_core::{
    EntryPayload, LogEntry, LogIndex, SLOT_COUNT, ScanFrom, Slot, StateView, StoredValue, Term, UnixMillis, WriteOp,
};
use chorus_storage::{load_latest_snapshot, write_snapshot};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

/// Keys chosen to collide: shared hash tags (same slot, different keys), NUL bytes, the empty
/// key, prefixes of one another.
const KEY_POOL: &[&[u8]] = &[
    b"a",
    b"b",
    b"ab",
    b"{tag}x",
    b"{tag}y",
    b"{tag}",
    b"tag",
    b"k\0ey",
    b"k",
    b"\0",
    b"",
    b"{}z",
    b"foo",
    b"bar",
    b"\xff\xff",
];

fn key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        5 => prop::sample::select(KEY_POOL).prop_map(Bytes::from_static),
        1 => prop::collection::vec(any::<u8>(), 0..4).prop_map(Bytes::from),
    ]
}

fn op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        6 => (key(), prop::collection::vec(any::<u8>(), 0..6), prop::option::of(0..30u64)).prop_map(
            |(key, value, expire_at)| WriteOp::Put {
                key,
                value: Bytes::from(value),
                expire_at: expire_at.map(UnixMillis),
            }
        ),
        3 => key().prop_map(|key| WriteOp::Delete { key }),
        1 => Just(WriteOp::Clear),
    ]
}

fn payload() -> impl Strategy<Value = EntryPayload> {
    prop_oneof![
        1 => Just(EntryPayload::Noop),
        6 => prop::collection::vec(op(), 0..5).prop_map(EntryPayload::Write),
    ]
}

/// One apply call: the payloads of its new entries, and how many already-applied entries to send
/// again in front of them (a replay after a crash).
fn apply_calls() -> impl Strategy<Value = Vec<(Vec<EntryPayload>, usize)>> {
    prop::collection::vec((prop::collection::vec(payload(), 0..5), 0..4usize), 1..25)
}

/// The obviously-correct model: one ordered map keyed by (slot, key), every query a full pass.
#[derive(Default)]
struct ReferenceState {
    entries: BTreeMap<(Slot, Bytes), StoredValue>,
    applied_index: LogIndex,
}

impl ReferenceState {
    fn apply(&mut self, entries: &[LogEntry]) {
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            assert_eq!(entry.index, self.applied_index.next());
            if let EntryPayload::Write(ops) = &entry.payload {
                for op in ops {
                    match op {
                        WriteOp::Put { key, value, expire_at } => {
                            let stored = StoredValue { value: value.clone(), expire_at: *expire_at };
                            self.entries.insert((Slot::of_key(key), key.clone()), stored);
                        }
                        WriteOp::Delete { key } => {
                            self.entries.remove(&(Slot::of_key(key), key.clone()));
                        }
                        WriteOp::Clear => self.entries.clear(),
                    }
                }
            }
            self.applied_index = entry.index;
        }
    }
}

impl StateView for ReferenceState {
    fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, chorus_core::StateError> {
        Ok(self.entries.get(&(Slot::of_key(key), Bytes::copy_from_slice(key))).cloned())
    }

    fn scan(&self, from: &ScanFrom, limit: usize) -> Result<Vec<(Bytes, StoredValue)>, chorus_core::StateError> {
        Ok(self
            .entries
            .iter()
            .filter(|((slot, key), _)| match &from.after_key {
                Some(after) => (*slot, key) > (from.slot, after),
                None => *slot >= from.slot,
            })
            .take(limit)
            .map(|((_, key), stored)| (key.clone(), stored.clone()))
            .collect())
    }

    fn expired_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<Bytes>, chorus_core::StateError> {
        let mut due: Vec<(UnixMillis, Slot, Bytes)> = self
            .entries
            .iter()
            .filter_map(|((slot, key), stored)| {
                stored.expire_at.filter(|at| *at <= now).map(|at| (at, *slot, key.clone()))
            })
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, _, key)| key).collect())
    }

    fn key_count(&self) -> Result<u64, chorus_core::StateError> {
        Ok(self.entries.len() as u64)
    }

    fn expiring_key_count(&self) -> Result<u64, chorus_core::StateError> {
        Ok(self.entries.values().filter(|stored| stored.expire_at.is_some()).count() as u64)
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }
}

fn assert_same_state(store: &MemoryState, model: &ReferenceState, keys_seen: &BTreeSet<Bytes>, context: &str) {
    assert_eq!(store.applied_index(), model.applied_index(), "{context}: applied_index");
    assert_eq!(store.key_count().unwrap(), model.key_count().unwrap(), "{context}: key_count");
    assert_eq!(store.expiring_key_count().unwrap(), model.expiring_key_count().unwrap(), "{context}: expiring");

    for key in keys_seen.iter().map(|key| key.as_ref()).chain(KEY_POOL.iter().copied()) {
        assert_eq!(store.get(key).unwrap(), model.get(key).unwrap(), "{context}: get {key:?}");
    }

    let everything = model.scan(&ScanFrom::default(), usize::MAX).unwrap();
    assert_eq!(store.scan(&ScanFrom::default(), usize::MAX).unwrap(), everything, "{context}: full scan");
    let mut starts: Vec<ScanFrom> = vec![
        ScanFrom { slot: Slot(SLOT_COUNT - 1), after_key: None },
        ScanFrom { slot: Slot(0), after_key: Some(Bytes::new()) },
    ];
    for (key, _) in &everything {
        let slot = Slot::of_key(key);
        starts.push(ScanFrom { slot, after_key: Some(key.clone()) });
        starts.push(ScanFrom { slot, after_key: None });
        starts.push(ScanFrom { slot: Slot((slot.0 + 1) % SLOT_COUNT), after_key: None });
        // A resume point that is not a stored key.
        let mut absent = key.to_vec();
        absent.push(0);
        starts.push(ScanFrom { slot, after_key: Some(Bytes::from(absent)) });
    }
    for from in &starts {
        for limit in [0, 1, 2, 5, usize::MAX] {
            assert_eq!(
                store.scan(from, limit).unwrap(),
                model.scan(from, limit).unwrap(),
                "{context}: scan from {from:?} limit {limit}"
            );
        }
    }

    for now in [0, 1, 10, 15, 29, 30, u64::MAX].map(UnixMillis) {
        for limit in [0, 1, 3, usize::MAX] {
            assert_eq!(
                store.expired_keys(now, limit).unwrap(),
                model.expired_keys(now, limit).unwrap(),
                "{context}: expired_keys now {now} limit {limit}"
            );
        }
    }
}

fn keys_of(payloads: &[EntryPayload], keys_seen: &mut BTreeSet<Bytes>) {
    for payload in payloads {
        if let EntryPayload::Write(ops) = payload {
            for op in ops {
                match op {
                    WriteOp::Put { key, .. } | WriteOp::Delete { key } => {
                        keys_seen.insert(key.clone());
                    }
                    WriteOp::Clear => {}
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        // Fixed so a failure replays; proptest prints the shrunk failing calls.
        rng_seed: RngSeed::Fixed(0x57a7e),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_state_agrees_with_the_reference_model(calls in apply_calls()) {
        let mut store = MemoryState::new();
        let mut model = ReferenceState::default();
        let mut log: Vec<LogEntry> = Vec::new();
        let mut keys_seen = BTreeSet::new();

        for (call_number, (payloads, replayed)) in calls.iter().enumerate() {
            keys_of(payloads, &mut keys_seen);
            let replay_from = log.len().saturating_sub(*replayed);
            let mut call: Vec<LogEntry> = log[replay_from..].to_vec();
            for payload in payloads {
                let entry = LogEntry {
                    index: LogIndex(log.len() as u64 + 1),
                    term: Term(1),
                    payload: payload.clone(),
                };
                log.push(entry.clone());
                call.push(entry);
            }
            store.apply(&call);
            model.apply(&call);
            assert_same_state(&store, &model, &keys_seen, &format!("after call {call_number}"));
        }

        // Replaying the whole log is a no-op.
        store.apply(&log);
        assert_same_state(&store, &model, &keys_seen, "after replaying everything");

        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), &store).unwrap();
        let restored = load_latest_snapshot(dir.path()).unwrap().unwrap();
        assert_same_state(&restored, &model, &keys_seen, "after a snapshot round trip");
    }
}
