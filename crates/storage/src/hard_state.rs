//! The replication engine's hard state (current term and vote), and the rollback file.
//!
//! The hard state must be durable before a node answers a vote or accepts an append in a new term,
//! or a crash could make it vote twice in one term. It is a few bytes, rewritten rarely (on term
//! changes and votes): written to a temporary file, fsynced, renamed over the old one, directory
//! fsynced, so a crash leaves either the old or the new state, whole.
//!
//! The rollback file is where a node writes log entries it had to discard (under `async` and
//! `semi-sync` durability a failover can discard acknowledged writes): append-only, fsynced, one
//! checksummed record per discarded batch, so an operator can see and replay them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chorus_core::{LogEntry, NodeId, Term};
use serde::{Deserialize, Serialize};

use crate::error::StorageError;

const HARD_STATE_FILE: &str = "hard_state";
const ROLLBACK_FILE: &str = "rollback.log";

/// What a node must never forget across a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |error| StorageError::io(context, error)
}

/// Reads the hard state in `dir` (the default, term 0 and no vote, when none was ever written).
pub fn load_hard_state(dir: &Path) -> Result<HardState, StorageError> {
    let path = dir.join(HARD_STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(HardState::default()),
        Err(error) => return Err(StorageError::io(format!("reading {}", path.display()), error)),
    };
    let corrupt = |detail: &str| StorageError::Corrupt { path: path.clone(), offset: 0, detail: detail.to_string() };
    if bytes.len() < 4 {
        return Err(corrupt("hard state shorter than its checksum"));
    }
    let (checksum, payload) = bytes.split_at(4);
    if crc32fast::hash(payload).to_le_bytes() != checksum {
        return Err(corrupt("hard state checksum mismatch"));
    }
    postcard::from_bytes(payload).map_err(|error| corrupt(&format!("undecodable hard state: {error}")))
}

/// Makes `state` the durable hard state in `dir`.
pub fn store_hard_state(dir: &Path, state: &HardState) -> Result<(), StorageError> {
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let payload = postcard::to_allocvec(state).map_err(|error| StorageError::Encode(error.to_string()))?;
    let temp = dir.join(format!("{HARD_STATE_FILE}.tmp"));
    let mut file = File::create(&temp).map_err(io(format!("creating {}", temp.display())))?;
    file.write_all(&crc32fast::hash(&payload).to_le_bytes()).map_err(io(format!("writing {}", temp.display())))?;
    file.write_all(&payload).map_err(io(format!("writing {}", temp.display())))?;
    file.sync_all().map_err(io(format!("syncing {}", temp.display())))?;
    let path = dir.join(HARD_STATE_FILE);
    fs::rename(&temp, &path).map_err(io(format!("renaming to {}", path.display())))?;
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(io(format!("syncing {}", dir.display())))
}

/// One batch of discarded entries, as the rollback file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// When the entries were discarded (milliseconds since the epoch, from the driver's clock).
    pub discarded_at_ms: u64,
    /// The term of the leader whose log replaced them.
    pub replaced_in_term: Term,
    pub entries: Vec<LogEntry>,
}

/// Appends `record` to the rollback file in `dir`, durably. Returns the file's path.
pub fn append_rollback(dir: &Path, record: &RollbackRecord) -> Result<PathBuf, StorageError> {
    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let path = dir.join(ROLLBACK_FILE);
    let payload = postcard::to_allocvec(record).map_err(|error| StorageError::Encode(error.to_string()))?;
    let length = u32::try_from(payload.len()).map_err(|_| StorageError::Encode("rollback record over 4 GiB".into()))?;
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&length.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    let mut file =
        OpenOptions::new().create(true).append(true).open(&path).map_err(io(format!("opening {}", path.display())))?;
    file.write_all(&frame).map_err(io(format!("writing {}", path.display())))?;
    file.sync_all().map_err(io(format!("syncing {}", path.display())))?;
    Ok(path)
}

/// Every whole record in the rollback file in `dir` (a torn last record, from a crash while
/// appending, is ignored; damage elsewhere is an error).
pub fn read_rollback(dir: &Path) -> Result<Vec<RollbackRecord>, StorageError> {
    let path = dir.join(ROLLBACK_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StorageError::io(format!("reading {}", path.display()), error)),
    };
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset + 8 <= bytes.len() {
        let length =
            u32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]]) as usize;
        let expected = u32::from_le_bytes([bytes[offset + 4], bytes[offset + 5], bytes[offset + 6], bytes[offset + 7]]);
        let Some(payload) = bytes.get(offset + 8..offset + 8 + length) else { break };
        let corrupt = |detail: String| StorageError::Corrupt { path: path.clone(), offset: offset as u64, detail };
        if crc32fast::hash(payload) != expected {
            if offset + 8 + length == bytes.len() {
                break; // a torn final append
            }
            return Err(corrupt("rollback record checksum mismatch".into()));
        }
        records.push(postcard::from_bytes(payload).map_err(|error| corrupt(format!("undecodable record: {error}")))?);
        offset += 8 + length;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chorus_core::{EntryPayload, LogIndex, WriteOp};

    #[test]
    fn hard_state_round_trips_and_defaults_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_hard_state(dir.path()).unwrap(), HardState::default());
        let state = HardState { term: Term(7), voted_for: Some(NodeId(3)) };
        store_hard_state(dir.path(), &state).unwrap();
        assert_eq!(load_hard_state(dir.path()).unwrap(), state);
        let newer = HardState { term: Term(8), voted_for: None };
        store_hard_state(dir.path(), &newer).unwrap();
        assert_eq!(load_hard_state(dir.path()).unwrap(), newer);
    }

    #[test]
    fn a_damaged_hard_state_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        store_hard_state(dir.path(), &HardState { term: Term(5), voted_for: Some(NodeId(1)) }).unwrap();
        let path = dir.path().join(HARD_STATE_FILE);
        let original = fs::read(&path).unwrap();
        for position in 0..original.len() {
            let mut damaged = original.clone();
            damaged[position] ^= 0x10;
            fs::write(&path, &damaged).unwrap();
            assert!(load_hard_state(dir.path()).is_err(), "flipped byte {position} went unnoticed");
        }
    }

    #[test]
    fn rollback_records_accumulate_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let record = |index: u64| RollbackRecord {
            discarded_at_ms: 1_000 + index,
            replaced_in_term: Term(4),
            entries: vec![LogEntry {
                index: LogIndex(index),
                term: Term(3),
                payload: EntryPayload::Write(vec![WriteOp::Put {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from(format!("v{index}")),
                    expire_at: None,
                }]),
            }],
        };
        append_rollback(dir.path(), &record(10)).unwrap();
        let path = append_rollback(dir.path(), &record(11)).unwrap();
        assert_eq!(read_rollback(dir.path()).unwrap(), vec![record(10), record(11)]);
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        assert_eq!(read_rollback(dir.path()).unwrap(), vec![record(10)], "the torn last record is dropped");
    }
}
