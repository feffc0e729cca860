//! The conformance suite of `StateView`: the on-disk `StateStore` must answer every read exactly as
//! the in-memory reference `chorus_core::MemoryState` does, after any sequence of applied entries,
//! after replays, and after a reopen.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use chorus_core::state::MemoryState;
use chorus_core::{
    EntryPayload, LogEntry, LogIndex, SLOT_COUNT, ScanFrom, Slot, StateView, StoredValue, Term, UnixMillis, WriteOp,
};
use chorus_storage::{KEY_BYTES_MAX, StateStore, StorageError};
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

fn assert_same_state(store: &StateStore, model: &MemoryState, keys_seen: &BTreeSet<Bytes>, context: &str) {
    assert_eq!(store.applied_index(), model.applied_index(), "{context}: applied_index");
    assert_eq!(store.key_count().unwrap(), model.key_count().unwrap(), "{context}: key_count");

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
        // The store orders keys due at the same instant by (slot, key), its storage order; the
        // model by key alone. Both are "earliest first"; the store's tie order is the contract.
        let mut due: Vec<(UnixMillis, Slot, Bytes)> = model
            .expired_keys(now, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|key| {
                let expire_at = model.get(&key).unwrap().and_then(|stored| stored.expire_at).unwrap();
                (expire_at, Slot::of_key(&key), key)
            })
            .collect();
        due.sort();
        for limit in [0, 1, 3, usize::MAX] {
            let expected: Vec<Bytes> = due.iter().take(limit).map(|(_, _, key)| key.clone()).collect();
            assert_eq!(
                store.expired_keys(now, limit).unwrap(),
                expected,
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
    fn state_store_agrees_with_memory_state(calls in apply_calls()) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut model = MemoryState::new();
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
            store.apply(&call).unwrap();
            model.apply(&call);
            assert_same_state(&store, &model, &keys_seen, &format!("after call {call_number}"));
        }

        // Replaying the whole log is a no-op.
        store.apply(&log).unwrap();
        assert_same_state(&store, &model, &keys_seen, "after replaying everything");

        store.persist().unwrap();
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_same_state(&store, &model, &keys_seen, "after reopen");
    }
}

fn put(key: &str, value: &str, expire_at: Option<u64>) -> WriteOp {
    WriteOp::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        expire_at: expire_at.map(UnixMillis),
    }
}

fn write(index: u64, ops: Vec<WriteOp>) -> LogEntry {
    LogEntry { index: LogIndex(index), term: Term(1), payload: EntryPayload::Write(ops) }
}

#[test]
fn persisted_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .apply(&[
            write(1, vec![put("a", "1", None), put("b", "2", Some(50))]),
            LogEntry { index: LogIndex(2), term: Term(1), payload: EntryPayload::Noop },
            write(3, vec![put("c", "3", Some(10)), WriteOp::Delete { key: Bytes::from_static(b"a") }]),
        ])
        .unwrap();
    store.persist().unwrap();
    assert!(store.approximate_disk_bytes().unwrap() > 0);
    drop(store);

    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.applied_index(), LogIndex(3));
    assert_eq!(store.key_count().unwrap(), 2);
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(
        store.get(b"b").unwrap(),
        Some(StoredValue { value: Bytes::from_static(b"2"), expire_at: Some(UnixMillis(50)) })
    );
    assert_eq!(
        store.expired_keys(UnixMillis(100), 10).unwrap(),
        vec![Bytes::from_static(b"c"), Bytes::from_static(b"b")]
    );
    // Entries already applied are skipped; the next one applies.
    assert_eq!(store.applied_term(), Term(1));
    let entry_4 = LogEntry { term: Term(2), ..write(4, vec![put("d", "4", None)]) };
    store.apply(&[write(3, vec![WriteOp::Clear]), entry_4]).unwrap();
    assert_eq!(store.key_count().unwrap(), 3, "entry 3 was not applied twice");
    assert_eq!(store.applied_index(), LogIndex(4));
    assert_eq!(store.applied_term(), Term(2));
}

#[test]
#[should_panic(expected = "log applied with a gap")]
fn applying_with_a_gap_is_a_caller_bug() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.apply(&[write(2, vec![])]).unwrap();
}

#[test]
fn an_entry_that_cannot_be_stored_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.apply(&[write(1, vec![put("a", "1", None)])]).unwrap();
    let too_long =
        WriteOp::Put { key: Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]), value: Bytes::new(), expire_at: None };
    let result = store.apply(&[write(2, vec![put("b", "2", None)]), write(3, vec![too_long])]);
    assert!(matches!(result, Err(StorageError::Encode(_))), "{result:?}");
    assert_eq!(store.applied_index(), LogIndex(1));
    assert_eq!(store.get(b"b").unwrap(), None, "the whole call is one batch");

    let longest = WriteOp::Put {
        key: Bytes::from(vec![b'k'; KEY_BYTES_MAX]),
        value: Bytes::new(),
        expire_at: Some(UnixMillis(1)),
    };
    store.apply(&[write(2, vec![longest])]).unwrap();
    assert_eq!(store.expired_keys(UnixMillis(1), 1).unwrap()[0].len(), KEY_BYTES_MAX);
}

/// A reader must never see half of an apply call: here every call sets all keys to the same value,
/// so any scan that sees two different values saw a partial batch. A reader that sees applied
/// index N must also see the data of entry N.
#[test]
fn readers_see_each_apply_call_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let keys: Vec<String> = (0..50).map(|n| format!("key-{n}")).collect();
    let done = AtomicBool::new(false);
    let rounds = 300u64;
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut scans = 0u64;
                while !done.load(Ordering::Acquire) || scans == 0 {
                    let applied = store.applied_index();
                    let all = store.scan(&ScanFrom::default(), usize::MAX).unwrap();
                    let values: BTreeSet<Bytes> = all.iter().map(|(_, stored)| stored.value.clone()).collect();
                    assert!(values.len() <= 1, "a scan saw a partial batch: {values:?}");
                    if applied.0 > 0 {
                        assert_eq!(all.len(), keys.len(), "applied {applied} but keys missing");
                        let value = values.first().unwrap();
                        let seen: u64 = std::str::from_utf8(value).unwrap().parse().unwrap();
                        assert!(seen >= applied.0, "applied index {applied} published before its data ({seen})");
                    }
                    scans += 1;
                }
            });
        }
        for index in 1..=rounds {
            let ops = keys.iter().map(|key| put(key, &index.to_string(), Some(index))).collect();
            store.apply(&[write(index, ops)]).unwrap();
        }
        done.store(true, Ordering::Release);
    });
    assert_eq!(store.key_count().unwrap(), keys.len() as u64);
    assert_eq!(
        store.expired_keys(UnixMillis(u64::MAX), usize::MAX).unwrap().len(),
        keys.len(),
        "old expiry rows removed"
    );
}
