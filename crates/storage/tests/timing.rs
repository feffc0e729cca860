//! Rough throughput numbers, not assertions. Run with
//! `cargo test --release -p chorus-storage --test timing -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use bytes::Bytes;
use chorus_core::state::MemoryState;
use chorus_core::{EntryPayload, LogEntry, LogIndex, StateView, Term, UnixMillis, WriteOp};
use chorus_storage::{LogOptions, SegmentedLog, load_latest_snapshot, write_snapshot};

const ENTRIES: u64 = 100_000;

/// A 16-byte key and a 100-byte value, like DEPENDENCIES.md's storage measurements.
fn put_entry(index: u64) -> LogEntry {
    let key = format!("key-{:012}", index.wrapping_mul(0x9e37_79b9_7f4a_7c15) % ENTRIES);
    LogEntry {
        index: LogIndex(index),
        term: Term(1),
        payload: EntryPayload::Write(vec![WriteOp::Put {
            key: Bytes::from(key),
            value: Bytes::from(vec![b'v'; 100]),
            expire_at: index.is_multiple_of(10).then_some(UnixMillis(index)),
        }]),
    }
}

fn report(what: &str, count: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!("{what}: {count} in {:.3}s = {:.0}/s", seconds, count as f64 / seconds);
}

#[test]
#[ignore = "timing, run by hand"]
fn log_timing() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<LogEntry> = (1..=ENTRIES).map(put_entry).collect();

    let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
    let started = Instant::now();
    for entry in &entries {
        log.append(std::slice::from_ref(entry)).unwrap();
    }
    log.sync().unwrap();
    report("log: one append call per entry, one sync at the end", ENTRIES, started);
    println!("log: {} bytes on disk", log.size_bytes());
    drop(log);

    let started = Instant::now();
    let log = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
    report("log: open (recovery scan)", ENTRIES, started);
    let started = Instant::now();
    for from in (1..=ENTRIES).step_by(100) {
        let read = log.read(LogIndex(from), LogIndex(from + 99)).unwrap();
        assert_eq!(read.len(), 100);
    }
    report("log: read in ranges of 100", ENTRIES, started);
    drop(log);

    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
    let started = Instant::now();
    for batch in entries.chunks(100) {
        log.append(batch).unwrap();
        log.sync().unwrap();
    }
    report("log: group commit, append 100 + fdatasync", ENTRIES, started);

    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), LogOptions::default()).unwrap();
    let count = 2_000;
    let started = Instant::now();
    for entry in &entries[..count] {
        log.append(std::slice::from_ref(entry)).unwrap();
        log.sync().unwrap();
    }
    report("log: append 1 + fdatasync", count as u64, started);
}

#[test]
#[ignore = "timing, run by hand"]
fn state_timing() {
    let entries: Vec<LogEntry> = (1..=ENTRIES).map(put_entry).collect();

    let mut store = MemoryState::new();
    let started = Instant::now();
    for entry in &entries {
        store.apply(std::slice::from_ref(entry));
    }
    report("state: one apply call per entry", ENTRIES, started);

    let started = Instant::now();
    for index in 0..ENTRIES {
        let key = format!("key-{:012}", index);
        std::hint::black_box(store.get(key.as_bytes()).unwrap());
    }
    report("state: get", ENTRIES, started);
    let started = Instant::now();
    let due = store.expired_keys(UnixMillis(u64::MAX), usize::MAX).unwrap();
    report("state: expired_keys (all)", due.len() as u64, started);

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    write_snapshot(dir.path(), &store).unwrap();
    report("state: snapshot write (fsynced)", ENTRIES, started);
    let started = Instant::now();
    let loaded = load_latest_snapshot(dir.path()).unwrap().unwrap();
    report("state: snapshot load", loaded.key_count().unwrap(), started);
}
