//! Identities: datacenters, the conflict policy, and the per-origin vector of sequence numbers that
//! serves both as "what this DC has applied" and as a change's causal dependencies.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A datacenter: one single-leader Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DcId(pub u16);

impl fmt::Display for DcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dc{}", self.0)
    }
}

/// How concurrent writes to one key are resolved (see `docs/multileader.md` for the exact rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ConflictPolicy {
    /// Keep the write with the largest `(timestamp, origin)`.
    #[default]
    LastWriteWins,
    /// Keep every write no later write causally covers; reads pick the largest `(timestamp, origin)`.
    Siblings,
}

/// Per-origin sequence numbers. Seqs are dense from 1 per origin and changes are applied in causal
/// order, so one number per origin says exactly which of its changes are covered: `1..=get(dc)`.
/// Absent entries are 0 (kept absent, so two equal vectors compare equal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginVector(BTreeMap<DcId, u64>);

impl OriginVector {
    pub fn new() -> OriginVector {
        OriginVector::default()
    }

    pub fn get(&self, dc: DcId) -> u64 {
        self.0.get(&dc).copied().unwrap_or(0)
    }

    /// Whether change `(origin, seq)` is covered (applied, or in the causal past).
    pub fn covers(&self, origin: DcId, seq: u64) -> bool {
        seq <= self.get(origin)
    }

    pub fn iter(&self) -> impl Iterator<Item = (DcId, u64)> + '_ {
        self.0.iter().map(|(&dc, &seq)| (dc, seq))
    }

    /// Sets `dc`'s entry (0 removes it).
    pub fn set(&mut self, dc: DcId, seq: u64) {
        if seq == 0 {
            self.0.remove(&dc);
        } else {
            self.0.insert(dc, seq);
        }
    }

    /// Whether every entry of `other` is covered here.
    pub fn descends(&self, other: &OriginVector) -> bool {
        other.iter().all(|(dc, seq)| self.covers(dc, seq))
    }

    /// The pointwise maximum.
    pub fn join(&mut self, other: &OriginVector) {
        for (dc, seq) in other.iter() {
            if seq > self.get(dc) {
                self.0.insert(dc, seq);
            }
        }
    }
}

impl FromIterator<(DcId, u64)> for OriginVector {
    fn from_iter<I: IntoIterator<Item = (DcId, u64)>>(iter: I) -> OriginVector {
        let mut vector = OriginVector::new();
        for (dc, seq) in iter {
            vector.set(dc, seq);
        }
        vector
    }
}

impl fmt::Display for OriginVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, (dc, seq)) in self.iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{dc}:{seq}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_entries_are_zero_and_covers_is_a_prefix() {
        let vector: OriginVector = [(DcId(1), 3), (DcId(2), 0)].into_iter().collect();
        assert_eq!(vector.get(DcId(2)), 0);
        assert_eq!(vector, [(DcId(1), 3)].into_iter().collect(), "a zero entry is not stored");
        assert!(vector.covers(DcId(1), 3));
        assert!(!vector.covers(DcId(1), 4));
        assert!(!vector.covers(DcId(2), 1));
    }

    #[test]
    fn join_is_the_pointwise_maximum() {
        let mut a: OriginVector = [(DcId(1), 3), (DcId(2), 1)].into_iter().collect();
        let b: OriginVector = [(DcId(2), 5), (DcId(3), 2)].into_iter().collect();
        a.join(&b);
        assert_eq!(a, [(DcId(1), 3), (DcId(2), 5), (DcId(3), 2)].into_iter().collect());
        assert!(a.descends(&b));
        assert!(!b.descends(&a));
    }
}
