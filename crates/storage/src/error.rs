use std::path::PathBuf;

use chorus_core::{LogIndex, StateError};

/// Everything that can go wrong in on-disk storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Bytes on disk that cannot be what we wrote: never skipped, because skipping a record of the
    /// replication log could silently drop an acknowledged write.
    #[error("corrupt data in {} at byte {offset}: {detail}", path.display())]
    Corrupt { path: PathBuf, offset: u64, detail: String },

    /// An earlier fsync failed. After a failed fsync the kernel may have dropped the dirty pages
    /// and cleared the error, so a later successful fsync proves nothing (see "Can Applications
    /// Recover from fsync Failures?", ATC '20): the only safe course is to refuse all further writes
    /// and let the process restart and recover from what is really on disk.
    #[error("storage is poisoned by an earlier failed fsync; restart to recover")]
    Poisoned,

    /// A value that cannot be encoded in the on-disk format.
    #[error("cannot encode: {0}")]
    Encode(String),

    /// The caller asked for log entries that are not in the log (compacted away, or not yet
    /// appended).
    #[error("log entries {from}..={to_inclusive} requested, but the log holds {first}..={last}")]
    OutOfRange { from: LogIndex, to_inclusive: LogIndex, first: LogIndex, last: LogIndex },
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> StorageError {
        StorageError::Io { context: context.into(), source }
    }
}

impl From<StorageError> for StateError {
    fn from(error: StorageError) -> StateError {
        StateError(error.to_string())
    }
}
