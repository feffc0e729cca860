//! What travels between DCs: changes, the log entries that carry them, and journal items.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ids::{DcId, OriginVector};
use super::state::MlExport;
use crate::leaderless::HlcTimestamp;
use crate::log::WriteOp;
use crate::state::StoredValue;
use crate::types::UnixMillis;

/// One operation of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    Set {
        key: Bytes,
        value: Bytes,
        expire_at: Option<UnixMillis>,
    },
    Delete {
        key: Bytes,
    },
    /// INCR/DECR/INCRBY/DECRBY: counted per origin DC, so concurrent increments all count.
    Add {
        key: Bytes,
        delta: i64,
    },
}

impl ChangeOp {
    pub fn key(&self) -> &Bytes {
        match self {
            ChangeOp::Set { key, .. } | ChangeOp::Delete { key } | ChangeOp::Add { key, .. } => key,
        }
    }
}

/// One change as it travels between DCs: one client command's resolved write, made at `origin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub origin: DcId,
    /// Dense from 1 per origin.
    pub seq: u64,
    /// What the origin had applied before this change (`deps[origin] = seq - 1`).
    pub deps: OriginVector,
    /// The effective timestamp: above every timestamp in the change's causal past.
    pub timestamp: HlcTimestamp,
    pub ops: Vec<ChangeOp>,
}

impl Change {
    pub fn id(&self) -> (DcId, u64) {
        (self.origin, self.seq)
    }

    /// The order last-write-wins uses: `(timestamp, origin)`.
    pub fn rank(&self) -> (HlcTimestamp, DcId) {
        (self.timestamp, self.origin)
    }
}

/// What a multi-leader log entry carries (wrapped by the node in `EntryPayload::MultiLeader`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MlEntry {
    /// A client write at this DC's leader; seq/deps/effective timestamp are assigned on apply.
    Local { timestamp: HlcTimestamp, ops: Vec<ChangeOp> },
    /// Changes received from upstream DC `from`, which sent them from its journal through position
    /// `through`.
    Remote { from: DcId, through: u64, changes: Vec<Change> },
    /// The whole multi-leader state of upstream DC `from` at its journal position `through`
    /// (when the journal no longer reaches back far enough), merged as a join.
    Bootstrap { from: DcId, through: u64, state: Box<MlExport> },
}

/// A journal item: a change this DC applied, at its journal position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalItem {
    pub position: u64,
    pub change: Change,
}

/// What resolving a change did to one key, for the materialized key-value view (MemoryState).
/// `None` = the key is now absent (deleted, or only a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialize {
    pub key: Bytes,
    pub value: Option<StoredValue>,
}

/// A client write multi-leader mode cannot turn into a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MlRefusal {
    /// FLUSHALL / FLUSHDB: a keyspace-wide delete has no per-key causality to replicate (yet).
    #[error("FLUSHALL and FLUSHDB are not supported in multi-leader mode")]
    Flush,
    /// An increment must resolve to exactly one put of the new value.
    #[error("an increment resolved to {ops} ops, expected a single put")]
    MalformedIncrement { ops: usize },
}

/// See [`MultiLeaderState::change_ops`](super::MultiLeaderState::change_ops).
pub(super) fn change_ops(ops: &[WriteOp], incr_delta: Option<i64>) -> Result<Vec<ChangeOp>, MlRefusal> {
    if let Some(delta) = incr_delta {
        return match ops {
            [WriteOp::Put { key, .. }] => Ok(vec![ChangeOp::Add { key: key.clone(), delta }]),
            _ => Err(MlRefusal::MalformedIncrement { ops: ops.len() }),
        };
    }
    ops.iter()
        .map(|op| match op {
            WriteOp::Put { key, value, expire_at } => {
                Ok(ChangeOp::Set { key: key.clone(), value: value.clone(), expire_at: *expire_at })
            }
            WriteOp::Delete { key } => Ok(ChangeOp::Delete { key: key.clone() }),
            WriteOp::Clear => Err(MlRefusal::Flush),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn puts_and_deletes_become_sets_and_deletes() {
        let ops = [
            WriteOp::Put { key: Bytes::from("a"), value: Bytes::from("1"), expire_at: Some(UnixMillis(9)) },
            WriteOp::Delete { key: Bytes::from("b") },
        ];
        assert_eq!(
            change_ops(&ops, None).unwrap(),
            vec![
                ChangeOp::Set { key: Bytes::from("a"), value: Bytes::from("1"), expire_at: Some(UnixMillis(9)) },
                ChangeOp::Delete { key: Bytes::from("b") },
            ]
        );
    }

    #[test]
    fn an_increment_becomes_an_add_of_its_delta() {
        let ops = [WriteOp::Put { key: Bytes::from("n"), value: Bytes::from("7"), expire_at: None }];
        assert_eq!(change_ops(&ops, Some(-2)).unwrap(), vec![ChangeOp::Add { key: Bytes::from("n"), delta: -2 }]);
        assert_eq!(change_ops(&[], Some(1)), Err(MlRefusal::MalformedIncrement { ops: 0 }));
    }

    #[test]
    fn flush_is_refused() {
        assert_eq!(change_ops(&[WriteOp::Clear], None), Err(MlRefusal::Flush));
    }
}
