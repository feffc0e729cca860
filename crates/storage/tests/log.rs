//! The segmented replication log: round trips, recovery from torn writes, corruption detection,
//! suffix truncation, prefix compaction and reset, each across reopen.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chorus_core::{EntryPayload, LogEntry, LogIndex, Term, UnixMillis, WriteOp};
use chorus_storage::{LogOptions, SegmentedLog, StorageError};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

fn entry(index: u64, term: u64) -> LogEntry {
    let payload = if index.is_multiple_of(5) {
        EntryPayload::Noop
    } else {
        EntryPayload::Write(vec![WriteOp::Put {
            key: Bytes::from(format!("key-{index}")),
            value: Bytes::from(vec![index as u8; (index % 37) as usize]),
            expire_at: index.is_multiple_of(3).then_some(UnixMillis(index * 1000)),
        }])
    };
    LogEntry { index: LogIndex(index), term: Term(term), payload }
}

fn entries(from: u64, to_inclusive: u64, term: u64) -> Vec<LogEntry> {
    (from..=to_inclusive).map(|index| entry(index, term)).collect()
}

/// `5 + 1 + 8` bytes of magic, version and base, and a checksum.
const SEGMENT_HEADER_BYTES: u64 = 18;

/// Small segments whose files hold exactly their records (the byte-level recovery tests cut and
/// flip bytes at offsets computed from file lengths).
fn small_segments() -> LogOptions {
    LogOptions { segment_bytes_max: 512, preallocate: false }
}

fn open(dir: &Path, options: LogOptions) -> SegmentedLog {
    SegmentedLog::open(dir, options).unwrap()
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    paths.sort();
    paths
}

fn read_all(log: &SegmentedLog) -> Vec<LogEntry> {
    log.read(log.first_index(), log.last_index()).unwrap()
}

#[test]
fn a_fresh_log_is_empty_at_index_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogOptions::default());
    assert_eq!(log.first_index(), LogIndex(1));
    assert_eq!(log.last_index(), LogIndex(0));
    assert_eq!(log.last_term(), Term(0));
    assert_eq!(log.term_at(LogIndex(0)).unwrap(), Some(Term(0)), "Raft's index 0 has term 0");
    assert_eq!(log.term_at(LogIndex(1)).unwrap(), None);
    assert_eq!(log.read(LogIndex(1), LogIndex(0)).unwrap(), vec![], "an empty range is fine");
    assert!(matches!(log.read(LogIndex(1), LogIndex(1)), Err(StorageError::OutOfRange { .. })));
}

#[test]
fn appended_entries_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogOptions::default());
    log.append(&entries(1, 10, 1)).unwrap();
    log.append(&entries(11, 20, 2)).unwrap();
    log.sync().unwrap();
    assert_eq!(log.last_index(), LogIndex(20));
    assert_eq!(log.last_term(), Term(2));
    assert_eq!(log.term_at(LogIndex(10)).unwrap(), Some(Term(1)));
    assert_eq!(log.term_at(LogIndex(11)).unwrap(), Some(Term(2)));
    assert_eq!(log.read(LogIndex(5), LogIndex(12)).unwrap(), [entries(5, 10, 1), entries(11, 12, 2)].concat());
    let size_bytes = log.size_bytes();
    drop(log);

    let log = open(dir.path(), LogOptions::default());
    assert_eq!(log.first_index(), LogIndex(1));
    assert_eq!(log.last_index(), LogIndex(20));
    assert_eq!(log.last_term(), Term(2));
    assert_eq!(log.size_bytes(), size_bytes);
    assert_eq!(read_all(&log), [entries(1, 10, 1), entries(11, 20, 2)].concat());
}

#[test]
#[should_panic(expected = "append does not continue the log")]
fn appending_with_a_gap_is_a_caller_bug() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogOptions::default());
    log.append(&entries(2, 3, 1)).unwrap();
}

#[test]
fn rotation_spreads_entries_over_many_segments_readable_across_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for batch_start in (1..=400).step_by(7) {
        let batch_end = (batch_start + 6).min(400);
        log.append(&entries(batch_start, batch_end, 1 + batch_start / 100)).unwrap();
    }
    log.sync().unwrap();
    let expected: Vec<LogEntry> = (1..=400).map(|index| entry(index, 1 + ((index - 1) / 7 * 7 + 1) / 100)).collect();
    assert_eq!(read_all(&log), expected);
    drop(log);

    let segments = segment_paths(dir.path());
    assert!(segments.len() > 20, "expected many segments, got {}", segments.len());
    for path in &segments[..segments.len() - 1] {
        let bytes = std::fs::metadata(path).unwrap().len();
        assert!(bytes < 512 + 7 * 200, "{} holds {bytes} bytes", path.display());
    }

    let log = open(dir.path(), small_segments());
    assert_eq!(read_all(&log), expected);
    for (from, to) in [(1, 1), (63, 64), (100, 250), (399, 400), (7, 8)] {
        assert_eq!(log.read(LogIndex(from), LogIndex(to)).unwrap(), expected[from as usize - 1..to as usize]);
    }
}

/// Writes `count` entries, one append each, into small segments and returns the last segment and
/// its byte length before and after the final record.
fn log_with_last_record_bounds(dir: &Path, count: u64) -> (PathBuf, u64, u64) {
    let mut log = open(dir, small_segments());
    for index in 1..count {
        log.append(&entries(index, index, 1)).unwrap();
    }
    log.sync().unwrap();
    let sizes_before: Vec<(PathBuf, u64)> = segment_paths(dir)
        .into_iter()
        .map(|path| {
            let len = std::fs::metadata(&path).unwrap().len();
            (path, len)
        })
        .collect();
    log.append(&entries(count, count, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let last_path = segment_paths(dir).pop().unwrap();
    assert!(segment_paths(dir).len() > 1, "the test wants several segments");
    let before_last =
        sizes_before.iter().find(|(path, _)| *path == last_path).map_or(SEGMENT_HEADER_BYTES, |(_, len)| *len);
    let after_last = std::fs::metadata(&last_path).unwrap().len();
    (last_path, before_last, after_last)
}

#[test]
fn a_torn_last_record_is_truncated_at_every_cut_point() {
    let dir = tempfile::tempdir().unwrap();
    let count = 30;
    let (last_path, before_last, after_last) = log_with_last_record_bounds(dir.path(), count);
    let full = std::fs::read(&last_path).unwrap();
    for cut in before_last..after_last {
        std::fs::write(&last_path, &full[..cut as usize]).unwrap();
        let mut log = open(dir.path(), small_segments());
        assert_eq!(log.last_index(), LogIndex(count - 1), "cut at byte {cut}");
        assert_eq!(read_all(&log), entries(1, count - 1, 1), "cut at byte {cut}");
        assert_eq!(std::fs::metadata(&last_path).unwrap().len(), before_last, "cut at byte {cut}: truncated");
        // The log takes appends again where the torn record was.
        log.append(&entries(count, count, 1)).unwrap();
        log.sync().unwrap();
        drop(log);
        assert_eq!(std::fs::read(&last_path).unwrap(), full, "cut at byte {cut}: rewritten identically");
    }
}

#[test]
fn garbage_after_the_last_record_is_truncated_and_zeros_are_kept_as_reserved_space() {
    let dir = tempfile::tempdir().unwrap();
    let (last_path, _, after_last) = log_with_last_record_bounds(dir.path(), 30);
    let full = std::fs::read(&last_path).unwrap();
    let seed = 0x5eed_u64;
    let mut state = seed;
    let garbage: Vec<u8> = (0..300)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    for tail in [garbage, vec![0xff; 3], [vec![0u8; 100], vec![7u8]].concat()] {
        std::fs::write(&last_path, [full.as_slice(), &tail].concat()).unwrap();
        let log = open(dir.path(), small_segments());
        assert_eq!(log.last_index(), LogIndex(30), "tail of {} bytes (seed {seed:#x})", tail.len());
        assert_eq!(std::fs::metadata(&last_path).unwrap().len(), after_last);
    }
    // Zeros after the last record are what reserved space reads as: the end, left in place, and
    // the next append goes right after the last record.
    std::fs::write(&last_path, [full.as_slice(), &[0u8; 4096]].concat()).unwrap();
    let mut log = open(dir.path(), small_segments());
    assert_eq!(log.last_index(), LogIndex(30));
    assert_eq!(std::fs::metadata(&last_path).unwrap().len(), after_last + 4096);
    log.append(&entries(31, 31, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(read_all(&log), entries(1, 31, 1));
}

#[test]
fn a_flipped_byte_in_the_last_record_counts_as_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let (last_path, before_last, after_last) = log_with_last_record_bounds(dir.path(), 30);
    let full = std::fs::read(&last_path).unwrap();
    for byte in before_last..after_last {
        let mut damaged = full.clone();
        damaged[byte as usize] ^= 0x40;
        std::fs::write(&last_path, &damaged).unwrap();
        let log = open(dir.path(), small_segments());
        assert_eq!(log.last_index(), LogIndex(29), "flip at byte {byte}");
    }
}

#[test]
fn a_flipped_byte_in_a_middle_record_of_the_last_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let exact = LogOptions { preallocate: false, ..LogOptions::default() };
    let mut log = open(dir.path(), exact);
    log.append(&entries(1, 10, 1)).unwrap();
    log.sync().unwrap();
    let path = segment_paths(dir.path()).pop().unwrap();
    let record_11_start = std::fs::metadata(&path).unwrap().len();
    drop(log);
    let full_before = std::fs::read(&path).unwrap();
    let mut log = open(dir.path(), exact);
    log.append(&entries(11, 11, 1)).unwrap();
    let record_11_end = log.size_bytes();
    log.append(&entries(12, 15, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let full = std::fs::read(&path).unwrap();
    assert_eq!(&full[..full_before.len()], full_before.as_slice());

    // Every byte of record 11, a record with valid ones after it.
    for byte in record_11_start..record_11_end {
        let mut damaged = full.clone();
        damaged[byte as usize] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();
        match SegmentedLog::open(dir.path(), exact) {
            Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, record_11_start, "flip at {byte}"),
            other => panic!("flip at byte {byte}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), damaged, "recovery must not touch a corrupt log");
    }
}

#[test]
fn any_flipped_byte_in_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for index in 1..=60 {
        log.append(&entries(index, index, 1)).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let segments = segment_paths(dir.path());
    assert!(segments.len() >= 3);
    let sealed = &segments[1];
    let full = std::fs::read(sealed).unwrap();
    for byte in 0..full.len() {
        let mut damaged = full.clone();
        damaged[byte] ^= 0x80;
        std::fs::write(sealed, &damaged).unwrap();
        let result = SegmentedLog::open(dir.path(), small_segments());
        assert!(matches!(result, Err(StorageError::Corrupt { .. })), "flip at byte {byte}: {result:?}");
    }
    // A sealed segment cut short (its tail torn) is corruption too: it was synced when sealed.
    std::fs::write(sealed, &full[..full.len() - 1]).unwrap();
    let result = SegmentedLog::open(dir.path(), small_segments());
    assert!(matches!(result, Err(StorageError::Corrupt { .. })), "{result:?}");
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for index in 1..=60 {
        log.append(&entries(index, index, 1)).unwrap();
    }
    drop(log);
    let segments = segment_paths(dir.path());
    std::fs::remove_file(&segments[1]).unwrap();
    let result = SegmentedLog::open(dir.path(), small_segments());
    assert!(matches!(result, Err(StorageError::Corrupt { .. })), "{result:?}");
}

#[test]
fn a_torn_header_of_a_new_last_segment_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for index in 1..=60 {
        log.append(&entries(index, index, 1)).unwrap();
    }
    log.sync().unwrap();
    let next = log.last_index().next();
    drop(log);
    for header_bytes in [0usize, 1, 9, 17, 18, 40] {
        let path = dir.path().join(format!("{:020}.log", next.0));
        std::fs::write(&path, vec![0u8; header_bytes]).unwrap();
        let mut log = open(dir.path(), small_segments());
        assert_eq!(log.last_index(), LogIndex(60), "{header_bytes}-byte header");
        log.append(&entries(61, 61, 1)).unwrap();
        drop(log);
        let log = open(dir.path(), small_segments());
        assert_eq!(read_all(&log), entries(1, 61, 1));
        drop(log);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn truncate_suffix_across_segments_returns_the_removed_entries_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for index in 1..=100 {
        log.append(&entries(index, index, 1)).unwrap();
    }
    log.sync().unwrap();
    let segments_before = segment_paths(dir.path()).len();

    let removed = log.truncate_suffix(LogIndex(41)).unwrap();
    assert_eq!(removed, entries(41, 100, 1));
    assert_eq!(log.last_index(), LogIndex(40));
    assert_eq!(log.last_term(), Term(1));
    assert_eq!(log.term_at(LogIndex(41)).unwrap(), None);
    assert!(segment_paths(dir.path()).len() < segments_before, "later segments are deleted");
    assert_eq!(log.truncate_suffix(LogIndex(41)).unwrap(), vec![], "nothing left to remove");

    // A new leader's entries take the place of the removed ones.
    log.append(&entries(41, 50, 2)).unwrap();
    log.sync().unwrap();
    drop(log);

    let mut log = open(dir.path(), small_segments());
    assert_eq!(read_all(&log), [entries(1, 40, 1), entries(41, 50, 2)].concat());
    assert_eq!(log.last_term(), Term(2));

    // Truncating to exactly a segment boundary, and then everything.
    let second_segment_base = {
        let name = segment_paths(dir.path())[1].file_stem().unwrap().to_str().unwrap().to_owned();
        LogIndex(name.parse().unwrap())
    };
    log.truncate_suffix(second_segment_base).unwrap();
    assert_eq!(log.last_index().next(), second_segment_base);
    log.truncate_suffix(LogIndex(1)).unwrap();
    assert_eq!(log.last_index(), LogIndex(0));
    assert_eq!(log.last_term(), Term(0));
    drop(log);
    let mut log = open(dir.path(), small_segments());
    assert_eq!(log.last_index(), LogIndex(0));
    log.append(&entries(1, 3, 3)).unwrap();
    assert_eq!(read_all(&log), entries(1, 3, 3));
}

#[test]
fn compact_prefix_drops_whole_sealed_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for index in 1..=100 {
        log.append(&entries(index, index, 1 + index / 50)).unwrap();
    }
    log.sync().unwrap();
    let segments_before = segment_paths(dir.path()).len();

    log.compact_prefix(LogIndex(60)).unwrap();
    let first = log.first_index();
    assert!(first > LogIndex(1) && first <= LogIndex(61), "first index {first}");
    assert!(segment_paths(dir.path()).len() < segments_before);
    let prev = LogIndex(first.0 - 1);
    assert_eq!(log.term_at(prev).unwrap(), Some(Term(1 + prev.0 / 50)), "the compaction point keeps its term");
    assert_eq!(log.term_at(LogIndex(prev.0 - 1)).unwrap(), None);
    assert!(matches!(log.read(LogIndex(1), LogIndex(5)), Err(StorageError::OutOfRange { .. })));
    let kept: Vec<LogEntry> = (first.0..=100).map(|index| entry(index, 1 + index / 50)).collect();
    assert_eq!(read_all(&log), kept);
    drop(log);

    let mut log = open(dir.path(), small_segments());
    assert_eq!(log.first_index(), first);
    assert_eq!(log.term_at(prev).unwrap(), Some(Term(1 + prev.0 / 50)));
    assert_eq!(read_all(&log), kept);

    // Compacting past the end never deletes the active segment.
    log.compact_prefix(LogIndex(1000)).unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 1);
    assert_eq!(log.last_index(), LogIndex(100));
    let first = log.first_index();
    assert_eq!(read_all(&log).first().map(|entry| entry.index), Some(first));
    log.append(&entries(101, 101, 9)).unwrap();
    drop(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.last_index(), LogIndex(101));
}

#[test]
fn reset_starts_an_empty_log_after_the_snapshot_point_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for index in 1..=50 {
        log.append(&entries(index, index, 1)).unwrap();
    }
    log.reset(LogIndex(1000), Term(7)).unwrap();
    assert_eq!(log.first_index(), LogIndex(1001));
    assert_eq!(log.last_index(), LogIndex(1000));
    assert_eq!(log.last_term(), Term(7));
    assert_eq!(log.term_at(LogIndex(1000)).unwrap(), Some(Term(7)));
    assert_eq!(log.term_at(LogIndex(10)).unwrap(), None);
    assert_eq!(segment_paths(dir.path()).len(), 1);
    drop(log);

    let mut log = open(dir.path(), small_segments());
    assert_eq!(log.last_index(), LogIndex(1000));
    assert_eq!(log.last_term(), Term(7));
    log.append(&entries(1001, 1040, 8)).unwrap();
    log.sync().unwrap();
    drop(log);

    let mut log = open(dir.path(), small_segments());
    assert_eq!(read_all(&log), entries(1001, 1040, 8));
    assert_eq!(log.term_at(LogIndex(1000)).unwrap(), Some(Term(7)));

    // Resetting backwards (a snapshot older than the log) is allowed too: everything goes.
    log.reset(LogIndex(3), Term(2)).unwrap();
    drop(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.last_index(), LogIndex(3));
    assert_eq!(log.first_index(), LogIndex(4));
}

#[test]
fn recovery_never_panics_on_arbitrary_segment_content() {
    let seed = 0xc0ffee_u64;
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Small reserved segments: the damage lands in records and in reserved space alike.
    let options = LogOptions { segment_bytes_max: 4096, preallocate: true };
    for round in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), options);
        log.append(&entries(1, 5, 1)).unwrap();
        drop(log);
        let path = segment_paths(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let damage_count = 1 + next() % 8;
        for _ in 0..damage_count {
            match next() % 3 {
                0 => {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
                1 => bytes.truncate((next() as usize) % (bytes.len() + 1)),
                _ => bytes.extend((0..next() % 64).map(|_| next() as u8)),
            }
            if bytes.is_empty() {
                bytes.push(0);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        // Either a clean recovery or a typed error; the assertion is that we get here at all.
        if let Ok(log) = SegmentedLog::open(dir.path(), options) {
            let all = log.read(log.first_index(), log.last_index());
            assert!(all.is_ok(), "round {round} (seed {seed:#x}): recovered log unreadable: {all:?}");
        }
    }
}

/// Segments of 64 KiB with their space reserved up front (the node's default, scaled down).
fn reserved_segments() -> LogOptions {
    LogOptions { segment_bytes_max: 64 * 1024, preallocate: true }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn a_reserved_segment_keeps_its_size_through_appends_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), reserved_segments());
    let path = segment_paths(dir.path()).pop().unwrap();
    assert_eq!(file_len(&path), 64 * 1024, "the new segment's space is reserved");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap()) * 512;
    assert!(allocated >= 64 * 1024, "the reserved space is written (zeros), not a hole: {allocated} bytes allocated");
    for index in 1..=40 {
        log.append(&entries(index, index, 1)).unwrap();
        log.sync().unwrap();
    }
    assert_eq!(file_len(&path), 64 * 1024, "appends into reserved space do not grow the file");
    drop(log);
    let mut log = open(dir.path(), reserved_segments());
    assert_eq!(log.last_index(), LogIndex(40));
    assert_eq!(file_len(&path), 64 * 1024, "recovery keeps the reserved space");
    log.append(&entries(41, 45, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), reserved_segments());
    let expected = [entries(1, 40, 1), entries(41, 45, 2)].concat();
    assert_eq!(read_all(&log), expected);
}

#[test]
fn space_is_reserved_a_chunk_at_a_time_ahead_of_the_appends() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions { segment_bytes_max: 64 * 1024 * 1024, preallocate: true };
    let chunk = chorus_storage::RESERVE_CHUNK_BYTES;
    let mut log = open(dir.path(), options);
    let path = segment_paths(dir.path()).pop().unwrap();
    assert_eq!(file_len(&path), chunk, "a new segment reserves one chunk, not the whole segment");
    let big = |index: u64| LogEntry {
        index: LogIndex(index),
        term: Term(1),
        payload: EntryPayload::Write(vec![WriteOp::Put {
            key: Bytes::from(format!("key-{index}")),
            value: Bytes::from(vec![index as u8; 256 * 1024]),
            expire_at: None,
        }]),
    };
    let mut written = Vec::new();
    for index in 1..=20 {
        written.push(big(index));
        log.append(&written[written.len() - 1..]).unwrap();
        log.sync().unwrap();
        let expected = log.size_bytes().div_ceil(chunk) * chunk;
        assert_eq!(file_len(&path), expected, "after {index} appends of 256 KiB");
    }
    assert!(file_len(&path) > chunk, "the appends crossed into a second chunk");
    drop(log);
    let log = open(dir.path(), options);
    assert_eq!(read_all(&log), written);
}

#[test]
fn a_torn_record_in_reserved_space_is_cut_and_the_space_reserved_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), reserved_segments());
    log.append(&entries(1, 20, 1)).unwrap();
    log.sync().unwrap();
    let end_of_records = log.size_bytes();
    log.append(&entries(21, 21, 1)).unwrap();
    log.sync().unwrap();
    let end_of_21 = log.size_bytes();
    drop(log);
    let path = segment_paths(dir.path()).pop().unwrap();
    let full = std::fs::read(&path).unwrap();
    for cut in end_of_records + 1..end_of_21 {
        // The crash: record 21 reached the disk only up to `cut`; zeros follow, as reserved.
        let mut torn = full.clone();
        torn[cut as usize..end_of_21 as usize].fill(0);
        std::fs::write(&path, &torn).unwrap();
        let mut log = open(dir.path(), reserved_segments());
        assert_eq!(log.last_index(), LogIndex(20), "record 21 cut at byte {cut}");
        assert_eq!(file_len(&path), 64 * 1024, "cut at byte {cut}: space reserved again");
        log.append(&entries(21, 21, 1)).unwrap();
        log.sync().unwrap();
        drop(log);
        assert_eq!(std::fs::read(&path).unwrap(), full, "cut at byte {cut}: rewritten identically");
    }
}

#[test]
fn a_suffix_truncated_in_a_reserved_segment_leaves_no_stale_records_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), reserved_segments());
    log.append(&entries(1, 30, 1)).unwrap();
    log.sync().unwrap();
    let removed = log.truncate_suffix(LogIndex(11)).unwrap();
    assert_eq!(removed, entries(11, 30, 1));
    let path = segment_paths(dir.path()).pop().unwrap();
    assert_eq!(file_len(&path), 64 * 1024, "the cut reserves the space again");
    // A shorter replacement: stale records 13..30 must not come back after it on reopen.
    log.append(&entries(11, 12, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), reserved_segments());
    assert_eq!(read_all(&log), [entries(1, 10, 1), entries(11, 12, 2)].concat());
}

#[test]
fn a_sealed_segment_with_unused_reserved_space_is_not_damage() {
    // Segments reserved at one size and sealed at a smaller one (the setting was lowered between
    // runs) keep zeros after their last record.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), reserved_segments());
    log.append(&entries(1, 10, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let smaller = LogOptions { segment_bytes_max: 256, preallocate: true };
    let mut log = open(dir.path(), smaller);
    for index in 11..=40 {
        log.append(&entries(index, index, 1)).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let segments = segment_paths(dir.path());
    assert!(segments.len() >= 2, "the smaller size sealed the first segment");
    assert_eq!(file_len(&segments[0]), 64 * 1024, "sealed with its reserved tail");
    let log = open(dir.path(), smaller);
    assert_eq!(read_all(&log), entries(1, 40, 1));
}

#[test]
fn a_flipped_byte_in_a_middle_record_of_a_reserved_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), reserved_segments());
    log.append(&entries(1, 10, 1)).unwrap();
    let record_11_start = log.size_bytes();
    log.append(&entries(11, 15, 1)).unwrap();
    log.sync().unwrap();
    drop(log);
    let path = segment_paths(dir.path()).pop().unwrap();
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[record_11_start as usize + 9] ^= 0x01;
    std::fs::write(&path, &damaged).unwrap();
    match SegmentedLog::open(dir.path(), reserved_segments()) {
        Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, record_11_start),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A step of the model-based test below.
#[derive(Debug, Clone)]
enum Step {
    Append { count: u64, term_bump: bool },
    Sync,
    TruncateSuffix { back: u64 },
    CompactPrefix { fraction_percent: u64 },
    Reset { ahead: u64 },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1..12u64, any::<bool>()).prop_map(|(count, term_bump)| Step::Append { count, term_bump }),
        2 => Just(Step::Sync),
        2 => (0..15u64).prop_map(|back| Step::TruncateSuffix { back }),
        1 => (0..=100u64).prop_map(|fraction_percent| Step::CompactPrefix { fraction_percent }),
        1 => (0..5u64).prop_map(|ahead| Step::Reset { ahead }),
        2 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Fixed so a failure replays; proptest prints the shrunk failing steps.
        rng_seed: RngSeed::Fixed(0x010c_5eed),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every operation against a plain vector of entries: the log must always read back exactly
    /// the model's entries from its first index on, and agree on first/last index and terms.
    #[test]
    fn the_log_behaves_like_a_vector(steps in prop::collection::vec(step(), 1..40), preallocate in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions { segment_bytes_max: 300, preallocate };
        let mut log = open(dir.path(), options);
        // The model: entries after `prev`, and the term of `prev`.
        let mut model: Vec<LogEntry> = Vec::new();
        let mut prev = (LogIndex(0), Term(0));
        let mut term = 1;
        for step in steps {
            match step {
                Step::Append { count, term_bump } => {
                    term += u64::from(term_bump);
                    let from = prev.0.0 + model.len() as u64 + 1;
                    let batch = entries(from, from + count - 1, term);
                    log.append(&batch).unwrap();
                    model.extend(batch);
                }
                Step::Sync => log.sync().unwrap(),
                Step::TruncateSuffix { back } => {
                    let back = back.min(model.len() as u64);
                    let from = LogIndex(prev.0.0 + model.len() as u64 + 1 - back);
                    let removed = log.truncate_suffix(from).unwrap();
                    let expected = model.split_off(model.len() - back as usize);
                    prop_assert_eq!(removed, expected);
                }
                Step::CompactPrefix { fraction_percent } => {
                    let up_to = LogIndex(prev.0.0 + model.len() as u64 * fraction_percent / 100);
                    log.compact_prefix(up_to).unwrap();
                    let dropped = (log.first_index().0 - prev.0.0 - 1) as usize;
                    prop_assert!(log.first_index() <= up_to.next() || dropped == 0);
                    if dropped > 0 {
                        prev = (model[dropped - 1].index, model[dropped - 1].term);
                        model.drain(..dropped);
                    }
                }
                Step::Reset { ahead } => {
                    let after = LogIndex(prev.0.0 + model.len() as u64 + ahead);
                    term += 1;
                    log.reset(after, Term(term)).unwrap();
                    model.clear();
                    prev = (after, Term(term));
                }
                Step::Reopen => {
                    drop(log);
                    log = open(dir.path(), options);
                }
            }
            prop_assert_eq!(log.first_index(), prev.0.next());
            prop_assert_eq!(log.last_index(), model.last().map_or(prev.0, |entry| entry.index));
            prop_assert_eq!(log.last_term(), model.last().map_or(prev.1, |entry| entry.term));
            prop_assert_eq!(log.term_at(prev.0).unwrap(), Some(prev.1));
            prop_assert_eq!(&log.read(log.first_index(), log.last_index()).unwrap(), &model);
        }
    }
}
