//! Snapshots: the whole key-value state at one log index, in one file.
//!
//! The live state is in memory ([`MemoryState`]); a snapshot makes it durable so that the log
//! prefix it covers can be deleted, and (with replication) it is what a new follower is sent. The
//! model is Raft's (state machine + snapshot + log), and Redis's (dataset in memory, RDB + AOF).
//!
//! ```text
//! dir/snapshot-00000000000000001234.snap
//!   "CHSNAP" version(u8)
//!   frame: header  { applied_index, applied_term, key_count, membership }   (version 1: no membership)
//!   frame: records (up to RECORDS_PER_FRAME keys each) ...
//!   frame: trailer { record_count }
//!   frame: multi-leader state (Option<MultiLeaderState>)                    (version 3 on)
//! frame = [payload length u32 LE][crc32 of payload u32 LE][postcard payload]
//! ```
//!
//! A snapshot is written to a temporary file, fsynced, renamed into place and the directory fsynced,
//! so a crash leaves either the old snapshot or the new one, never half of one. Loading checks every
//! frame's checksum and the trailer's count: a damaged snapshot is an error, never a partial state.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chorus_core::raft::Membership;
use chorus_core::state::MemoryState;
use chorus_core::{LogIndex, StateView, Term, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::error::StorageError;

const MAGIC: &[u8; 6] = b"CHSNAP";
const FORMAT_VERSION: u8 = 3;
/// Snapshots written before the multi-leader state was kept in them; still readable.
const FORMAT_VERSION_WITHOUT_MULTILEADER: u8 = 2;
/// Snapshots written before the group configuration was kept in them; still readable.
const FORMAT_VERSION_WITHOUT_MEMBERSHIP: u8 = 1;
const RECORDS_PER_FRAME: usize = 4096;
/// No frame we write comes near this; a larger length is corruption, refused before allocating.
const FRAME_BYTES_MAX: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub applied_index: LogIndex,
    pub applied_term: Term,
    pub key_count: u64,
    /// The replication group's configuration at `applied_index` (`None`: the bootstrap one).
    pub membership: Option<Membership>,
}

/// The header of a version 1 snapshot.
#[derive(Deserialize)]
struct SnapshotMetaWithoutMembership {
    applied_index: LogIndex,
    applied_term: Term,
    key_count: u64,
}

/// One key as written: borrowed from the state, so a snapshot copies nothing but into its buffer.
#[derive(Serialize)]
struct RecordOut<'a> {
    key: RawBytes<'a>,
    value: RawBytes<'a>,
    expire_at: Option<UnixMillis>,
}

/// One key as read back (the same encoding as `RecordOut`).
#[derive(Deserialize)]
struct RecordIn {
    key: Bytes,
    value: Bytes,
    expire_at: Option<UnixMillis>,
}

/// Serializes as a byte string (as `Bytes` does), not as a sequence of numbers.
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    record_count: u64,
}

fn file_name(index: LogIndex) -> String {
    format!("snapshot-{:020}.snap", index.0)
}

fn parse_file_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

fn write_frame<W: Write>(out: &mut W, payload: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("snapshot frame over 4 GiB"))?;
    out.write_all(&length.to_le_bytes())?;
    out.write_all(&crc32fast::hash(payload).to_le_bytes())?;
    out.write_all(payload)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(|error| StorageError::Encode(error.to_string()))
}

/// Writes `state` as the snapshot at its applied index into `dir`, durably, and deletes older
/// snapshots. Returns the snapshot's metadata.
pub fn write_snapshot(dir: &Path, state: &MemoryState) -> Result<SnapshotMeta, StorageError> {
    fs::create_dir_all(dir).map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
    let meta = SnapshotMeta {
        applied_index: state.applied_index(),
        applied_term: state.applied_term(),
        key_count: state.key_count().map_err(|error| StorageError::Encode(error.0))?,
        membership: state.membership().cloned(),
    };
    let final_path = dir.join(file_name(meta.applied_index));
    let temp_path = dir.join(format!("{}.tmp", file_name(meta.applied_index)));
    let io = |what: &str| {
        let context = format!("{what} {}", temp_path.display());
        move |error| StorageError::io(context, error)
    };
    let file = File::create(&temp_path).map_err(io("creating"))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC).map_err(io("writing"))?;
    out.write_all(&[FORMAT_VERSION]).map_err(io("writing"))?;
    write_frame(&mut out, &encode(&meta)?).map_err(io("writing"))?;
    let mut chunk: Vec<RecordOut<'_>> = Vec::with_capacity(RECORDS_PER_FRAME);
    let mut record_count = 0u64;
    for (key, value, expire_at) in state.iter() {
        chunk.push(RecordOut { key: RawBytes(key), value: RawBytes(value), expire_at });
        if chunk.len() == RECORDS_PER_FRAME {
            write_frame(&mut out, &encode(&chunk)?).map_err(io("writing"))?;
            record_count += chunk.len() as u64;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        write_frame(&mut out, &encode(&chunk)?).map_err(io("writing"))?;
        record_count += chunk.len() as u64;
    }
    assert_eq!(record_count, meta.key_count, "the state's key count disagrees with its keys");
    write_frame(&mut out, &encode(&Trailer { record_count })?).map_err(io("writing"))?;
    write_frame(&mut out, &encode(&state.multileader())?).map_err(io("writing"))?;
    let file = out
        .into_inner()
        .map_err(|error| StorageError::io(format!("flushing {}", temp_path.display()), error.into_error()))?;
    file.sync_all().map_err(io("syncing"))?;
    fs::rename(&temp_path, &final_path).map_err(io("renaming"))?;
    sync_dir(dir)?;
    for (index, path) in list_snapshots(dir)? {
        if index < meta.applied_index {
            // An old snapshot that cannot be deleted only costs disk space.
            let _ = fs::remove_file(path);
        }
    }
    Ok(meta)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| StorageError::io(format!("syncing directory {}", dir.display()), error))
}

/// The newest snapshot file in `dir` and the index it stands at (to stream it to a follower).
/// Unlike loading, this leaves temporary files alone: a checkpoint may be writing one.
pub fn latest_snapshot_file(dir: &Path) -> Result<Option<(LogIndex, PathBuf)>, StorageError> {
    Ok(scan_snapshots(dir, false)?.pop())
}

/// Moves a snapshot received from the leader (written and fsynced at `received`, outside the
/// snapshot directory's naming) into `dir` as the snapshot at `index`, durably, and deletes older
/// ones. The caller has verified it with [`load_snapshot`].
pub fn adopt_snapshot_file(dir: &Path, received: &Path, index: LogIndex) -> Result<(), StorageError> {
    fs::create_dir_all(dir).map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
    let final_path = dir.join(file_name(index));
    fs::rename(received, &final_path)
        .map_err(|error| StorageError::io(format!("renaming {} into place", received.display()), error))?;
    sync_dir(dir)?;
    for (older, path) in scan_snapshots(dir, false)? {
        if older < index {
            let _ = fs::remove_file(path);
        }
    }
    Ok(())
}

/// Snapshot files in `dir`, oldest first. Leftover temporary files are removed.
fn list_snapshots(dir: &Path) -> Result<Vec<(LogIndex, PathBuf)>, StorageError> {
    scan_snapshots(dir, true)
}

fn scan_snapshots(dir: &Path, remove_temporary: bool) -> Result<Vec<(LogIndex, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(StorageError::io(format!("listing {}", dir.display()), error)),
    };
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::io(format!("listing {}", dir.display()), error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            if remove_temporary {
                let _ = fs::remove_file(entry.path());
            }
        } else if let Some(index) = parse_file_name(&name) {
            found.push((index, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

struct FrameReader<R> {
    input: R,
    path: PathBuf,
    offset: u64,
}

impl<R: Read> FrameReader<R> {
    fn corrupt(&self, detail: impl Into<String>) -> StorageError {
        StorageError::Corrupt { path: self.path.clone(), offset: self.offset, detail: detail.into() }
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> Result<(), StorageError> {
        self.input.read_exact(buffer).map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => self.corrupt("snapshot ends early"),
            _ => StorageError::io(format!("reading {}", self.path.display()), error),
        })?;
        self.offset += buffer.len() as u64;
        Ok(())
    }

    fn frame<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T, StorageError> {
        let mut header = [0u8; 8];
        self.read_exact(&mut header)?;
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length > FRAME_BYTES_MAX {
            return Err(self.corrupt(format!("frame length {length} is impossible")));
        }
        let mut payload = vec![0u8; length];
        self.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != expected {
            return Err(self.corrupt("frame checksum mismatch"));
        }
        postcard::from_bytes(&payload).map_err(|error| self.corrupt(format!("undecodable frame: {error}")))
    }
}

/// Loads the newest snapshot in `dir`, if any.
pub fn load_latest_snapshot(dir: &Path) -> Result<Option<MemoryState>, StorageError> {
    let Some((_, path)) = list_snapshots(dir)?.pop() else {
        return Ok(None);
    };
    load_snapshot(&path).map(Some)
}

/// Loads and verifies one snapshot file.
pub fn load_snapshot(path: &Path) -> Result<MemoryState, StorageError> {
    let file = File::open(path).map_err(|error| StorageError::io(format!("opening {}", path.display()), error))?;
    let mut reader =
        FrameReader { input: BufReader::with_capacity(1 << 20, file), path: path.to_path_buf(), offset: 0 };
    let mut magic = [0u8; 7];
    reader.read_exact(&mut magic)?;
    if &magic[..6] != MAGIC {
        return Err(reader.corrupt("not a Chorus snapshot (bad magic)"));
    }
    let version = magic[6];
    let meta: SnapshotMeta = match version {
        FORMAT_VERSION | FORMAT_VERSION_WITHOUT_MULTILEADER => reader.frame()?,
        FORMAT_VERSION_WITHOUT_MEMBERSHIP => {
            let old: SnapshotMetaWithoutMembership = reader.frame()?;
            SnapshotMeta {
                applied_index: old.applied_index,
                applied_term: old.applied_term,
                key_count: old.key_count,
                membership: None,
            }
        }
        other => return Err(reader.corrupt(format!("unknown snapshot format version {other}"))),
    };
    let mut state = MemoryState::restored(meta.applied_index, meta.applied_term);
    state.set_membership(meta.membership.clone());
    let mut record_count = 0u64;
    while record_count < meta.key_count {
        let records: Vec<RecordIn> = reader.frame()?;
        if records.is_empty() {
            return Err(reader.corrupt("empty record frame"));
        }
        record_count += records.len() as u64;
        for record in records {
            state.insert(&record.key, &record.value, record.expire_at);
        }
    }
    let trailer: Trailer = reader.frame()?;
    if trailer.record_count != meta.key_count || record_count != meta.key_count {
        return Err(reader.corrupt(format!(
            "snapshot promises {} keys, holds {record_count}, trailer says {}",
            meta.key_count, trailer.record_count
        )));
    }
    if state.key_count().unwrap_or(0) != meta.key_count {
        return Err(reader.corrupt("snapshot holds the same key twice"));
    }
    if version >= FORMAT_VERSION {
        let multileader: Option<chorus_core::multileader::MultiLeaderState> = reader.frame()?;
        state.set_multileader(multileader);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{EntryPayload, LogEntry, WriteOp};

    fn sample_state(keys: u64) -> MemoryState {
        let mut state = MemoryState::new();
        let entries: Vec<LogEntry> = (1..=keys)
            .map(|i| LogEntry {
                index: LogIndex(i),
                term: Term(2),
                payload: EntryPayload::Write(vec![WriteOp::Put {
                    key: Bytes::from(format!("key\0{i}")),
                    value: Bytes::from(vec![i as u8; (i % 300) as usize]),
                    expire_at: (i % 3 == 0).then_some(UnixMillis(1_000 + i)),
                }]),
            })
            .collect();
        state.apply(&entries);
        let membership = Membership::with_voters([chorus_core::NodeId(1), chorus_core::NodeId(2)])
            .with_address(chorus_core::NodeId(2), "127.0.0.1:7102".into());
        state.apply(&[LogEntry {
            index: LogIndex(keys + 1),
            term: Term(2),
            payload: EntryPayload::Membership(membership.clone()),
        }]);
        assert_eq!(state.membership(), Some(&membership));
        state
    }

    fn assert_same(a: &MemoryState, b: &MemoryState) {
        assert_eq!(a.applied_index(), b.applied_index());
        assert_eq!(a.applied_term(), b.applied_term());
        assert_eq!(a.membership(), b.membership());
        assert_eq!(a.key_count().unwrap(), b.key_count().unwrap());
        assert!(a.iter().eq(b.iter()), "same keys and values in the same order");
        assert_eq!(
            a.expired_keys(UnixMillis(u64::MAX), usize::MAX).unwrap(),
            b.expired_keys(UnixMillis(u64::MAX), usize::MAX).unwrap()
        );
    }

    #[test]
    fn a_snapshot_round_trips_and_replaces_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_latest_snapshot(dir.path()).unwrap().is_none());
        let small = sample_state(10);
        write_snapshot(dir.path(), &small).unwrap();
        let large = sample_state(10_000);
        let meta = write_snapshot(dir.path(), &large).unwrap();
        assert_eq!(meta.applied_index, LogIndex(10_001));
        assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1, "the older snapshot is gone");
        assert_same(&load_latest_snapshot(dir.path()).unwrap().unwrap(), &large);
    }

    #[test]
    fn an_empty_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), &MemoryState::new()).unwrap();
        assert_same(&load_latest_snapshot(dir.path()).unwrap().unwrap(), &MemoryState::new());
    }

    #[test]
    fn any_damage_is_an_error_never_a_partial_state() {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), &sample_state(5_000)).unwrap();
        let (_, path) = list_snapshots(dir.path()).unwrap().pop().unwrap();
        let original = fs::read(&path).unwrap();
        // Flip one byte at a spread of positions, and cut the file at a spread of lengths.
        for position in (0..original.len()).step_by(original.len() / 97 + 1) {
            let mut damaged = original.clone();
            damaged[position] ^= 0x40;
            fs::write(&path, &damaged).unwrap();
            assert!(load_snapshot(&path).is_err(), "a flipped byte at {position} went unnoticed");
        }
        for length in (0..original.len()).step_by(original.len() / 89 + 1) {
            fs::write(&path, &original[..length]).unwrap();
            assert!(load_snapshot(&path).is_err(), "a snapshot cut at {length} bytes loaded");
        }
    }

    #[test]
    fn the_multileader_state_round_trips_and_version_2_files_still_load() {
        use chorus_core::leaderless::HlcTimestamp;
        use chorus_core::multileader::{ChangeOp, ConflictPolicy, DcId, MlEntry, MultiLeaderState};
        let mut state = MemoryState::new();
        state.set_multileader(Some(MultiLeaderState::new(DcId(1), ConflictPolicy::LastWriteWins, 100)));
        let timestamp = HlcTimestamp { wall_ms: 5, logical: 0, node: chorus_core::NodeId(1) };
        let ops = vec![
            ChangeOp::Set { key: Bytes::from("k"), value: Bytes::from("v"), expire_at: None },
            ChangeOp::Add { key: Bytes::from("n"), delta: 3 },
        ];
        let payload = EntryPayload::MultiLeader(MlEntry::Local { timestamp, ops });
        state.apply(&[LogEntry { index: LogIndex(1), term: Term(1), payload }]);
        assert_eq!(state.get(b"k").unwrap().unwrap().value, Bytes::from("v"), "the view materializes the set");
        assert_eq!(state.get(b"n").unwrap().unwrap().value, Bytes::from("3"), "and the counter");
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), &state).unwrap();
        let loaded = load_latest_snapshot(dir.path()).unwrap().unwrap();
        assert_same(&loaded, &state);
        assert_eq!(loaded.multileader(), state.multileader());
        assert_eq!(loaded.multileader().unwrap().journal_last(), 1);

        // A version 2 file is a version 3 file without the last frame.
        let (_, path) = list_snapshots(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last_frame = encode(&state.multileader()).unwrap().len() + 8;
        bytes.truncate(bytes.len() - last_frame);
        bytes[6] = FORMAT_VERSION_WITHOUT_MULTILEADER;
        fs::write(&path, &bytes).unwrap();
        let old = load_snapshot(&path).unwrap();
        assert_same(&old, &state);
        assert!(old.multileader().is_none());
    }

    #[test]
    fn leftover_temporary_files_are_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), &sample_state(3)).unwrap();
        fs::write(dir.path().join("snapshot-00000000000000000009.snap.tmp"), b"half written").unwrap();
        assert_eq!(load_latest_snapshot(dir.path()).unwrap().unwrap().applied_index(), LogIndex(4));
        assert!(!dir.path().join("snapshot-00000000000000000009.snap.tmp").exists());
    }
}
