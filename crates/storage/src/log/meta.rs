//! The log's sidecar file: the index and term of the entry just before the first one present.
//!
//! That point moves when the prefix is compacted or the log is reset to a snapshot, and its term
//! must survive a restart (Raft checks `prev_log_term` against it), so it lives in its own small
//! file, replaced atomically (write a temporary file, fsync, rename, fsync the directory).
//!
//! ```text
//! log.meta = "CHLGM" version:u8 prev_index:u64le prev_term:u64le reset_pending:u8 crc32:u32le
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;

use chorus_core::{LogIndex, Term};

use crate::error::StorageError;
use crate::log::segment::sync_dir;

const META_FILE_NAME: &str = "log.meta";
const META_TEMPORARY_FILE_NAME: &str = "log.meta.tmp";
const META_MAGIC: &[u8; 5] = b"CHLGM";
const META_FORMAT_VERSION: u8 = 1;
const META_BYTES: usize = 5 + 1 + 8 + 8 + 1 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LogMeta {
    /// The entry before the first present one: everything up to it was compacted or replaced by a
    /// snapshot. `(0, 0)` for a log that never lost its prefix.
    pub prev_index: LogIndex,
    pub prev_term: Term,
    /// Set while a reset is discarding segments: if the process dies half way, recovery finishes
    /// the job instead of mistaking the old segments for live ones.
    pub reset_pending: bool,
}

impl LogMeta {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut bytes = [0u8; META_BYTES];
        bytes[..5].copy_from_slice(META_MAGIC);
        bytes[5] = META_FORMAT_VERSION;
        bytes[6..14].copy_from_slice(&self.prev_index.0.to_le_bytes());
        bytes[14..22].copy_from_slice(&self.prev_term.0.to_le_bytes());
        bytes[22] = u8::from(self.reset_pending);
        let crc = crc32fast::hash(&bytes[..23]);
        bytes[23..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<LogMeta, String> {
        if bytes.len() != META_BYTES {
            return Err(format!("{} bytes, expected {META_BYTES}", bytes.len()));
        }
        if &bytes[..5] != META_MAGIC {
            return Err("bad magic".to_owned());
        }
        let crc_stored = u32::from_le_bytes([bytes[23], bytes[24], bytes[25], bytes[26]]);
        if crc32fast::hash(&bytes[..23]) != crc_stored {
            return Err("checksum mismatch".to_owned());
        }
        if bytes[5] != META_FORMAT_VERSION {
            return Err(format!("unsupported format version {}", bytes[5]));
        }
        let reset_pending = match bytes[22] {
            0 => false,
            1 => true,
            other => return Err(format!("bad reset flag {other}")),
        };
        let u64_at = |at: usize| {
            let mut array = [0u8; 8];
            array.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(array)
        };
        Ok(LogMeta { prev_index: LogIndex(u64_at(6)), prev_term: Term(u64_at(14)), reset_pending })
    }

    /// The sidecar of the log in `dir`, or `None` if it has none yet.
    pub(crate) fn read(dir: &Path) -> Result<Option<LogMeta>, StorageError> {
        let path = dir.join(META_FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StorageError::io(format!("read {}", path.display()), error)),
        };
        LogMeta::decode(&bytes).map(Some).map_err(|detail| StorageError::Corrupt { path, offset: 0, detail })
    }

    /// Replaces the sidecar durably: after this returns, a crash leaves exactly `self` on disk,
    /// and before it returns a crash leaves either `self` or the previous content.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), StorageError> {
        let temporary = dir.join(META_TEMPORARY_FILE_NAME);
        let io_error = |what: &str, error| StorageError::io(format!("{what} {}", temporary.display()), error);
        let mut file = File::create(&temporary).map_err(|error| io_error("create", error))?;
        file.write_all(&self.encode()).map_err(|error| io_error("write", error))?;
        file.sync_all().map_err(|error| io_error("fsync", error))?;
        drop(file);
        let path = dir.join(META_FILE_NAME);
        std::fs::rename(&temporary, &path).map_err(|error| io_error("rename", error))?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let meta = LogMeta { prev_index: LogIndex(99), prev_term: Term(4), reset_pending: true };
        let bytes = meta.encode();
        assert_eq!(LogMeta::decode(&bytes), Ok(meta));
        for byte in 0..META_BYTES {
            let mut damaged = bytes;
            damaged[byte] ^= 0x01;
            assert!(LogMeta::decode(&damaged).is_err(), "flip in byte {byte} went unnoticed");
        }
        assert!(LogMeta::decode(&bytes[..META_BYTES - 1]).is_err());
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(LogMeta::read(dir.path()).expect("read"), None);
        let meta = LogMeta { prev_index: LogIndex(7), prev_term: Term(2), reset_pending: false };
        meta.write(dir.path()).expect("write");
        assert_eq!(LogMeta::read(dir.path()).expect("read"), Some(meta));
    }
}
