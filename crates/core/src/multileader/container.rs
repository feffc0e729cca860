//! One key's replicated state and how a change resolves into it.
//!
//! A key holds **register versions** (the values and tombstones that `Set` and `Delete` wrote) and
//! **increments** (`Add`) not yet replaced by a register write. Everything is decided by causality
//! first (a change's `deps` say which earlier writes its origin had applied, hence which it
//! replaces), then by the policy among concurrent writes. Because changes are applied in causal
//! order, the result depends only on *which* changes were applied, not in which order: that is the
//! convergence argument (`docs/multileader.md`, "Conflict resolution").
//!
//! - `Set` / `Delete` by change `c`: removes every version and every increment `c.deps` covers (the
//!   origin had applied them: they are replaced, causally). Then under `Siblings` the new version
//!   joins whatever concurrent versions remain; under `LastWriteWins` only the version with the
//!   largest `(timestamp, origin)` is kept. Timestamps respect causality, so a causally later write
//!   always also wins by rank: the survivor is the global maximum whatever the order.
//! - `Add` by `c`: recorded as an increment of `c.origin`. Increments are never replaced by each
//!   other, so concurrent increments in different DCs all count.
//! - The visible value: the register version with the largest `(timestamp, origin)` (a tombstone
//!   there means absent); if increments remain, the value is that version's integer (0 if absent, a
//!   tombstone, or not an integer) plus the sum of the increments, with that version's expiry.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::change::Change;
use super::ids::{ConflictPolicy, DcId, OriginVector};
use crate::leaderless::HlcTimestamp;
use crate::state::StoredValue;
use crate::types::UnixMillis;

/// A value or tombstone written by one change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub origin: DcId,
    pub seq: u64,
    pub timestamp: HlcTimestamp,
    /// `None`: a tombstone (the write was a delete).
    pub value: Option<(Bytes, Option<UnixMillis>)>,
}

impl Version {
    pub fn id(&self) -> (DcId, u64) {
        (self.origin, self.seq)
    }

    pub fn rank(&self) -> (HlcTimestamp, DcId) {
        (self.timestamp, self.origin)
    }
}

/// One increment of one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Increment {
    pub seq: u64,
    pub delta: i64,
}

/// A concurrent write resolved: `winner` stays visible, `loser` does not (it was dropped under
/// last-write-wins, or became a hidden sibling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub winner: (DcId, u64),
    pub loser: (DcId, u64),
}

/// One key's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Register versions no applied write replaced; at most one under last-write-wins.
    versions: Vec<Version>,
    /// Increments no applied register write replaced, per origin, in seq order.
    increments: BTreeMap<DcId, Vec<Increment>>,
    /// The sum of `increments`, kept so that materializing a hot counter after each INCR costs
    /// O(1), not O(increments).
    increments_total: i128,
}

impl KeyState {
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    pub fn increments(&self) -> &BTreeMap<DcId, Vec<Increment>> {
        &self.increments
    }

    /// Whether the key holds nothing at all (not even a tombstone).
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.increments.is_empty()
    }

    /// Applies a `Set` (`value` is `Some`) or `Delete` (`None`) of `change`, and returns the
    /// concurrent writes it resolved.
    pub fn write(
        &mut self,
        change: &Change,
        value: Option<(Bytes, Option<UnixMillis>)>,
        policy: ConflictPolicy,
    ) -> Option<Resolved> {
        let replaced = |origin: DcId, seq: u64| change.deps.covers(origin, seq) || (origin, seq) == change.id();
        for (&origin, increments) in &mut self.increments {
            // What the deps cover is a prefix (seqs ascend), plus this change's own increments,
            // which can only be the last ones (a change that adds to a key, then sets it).
            let covered = increments.partition_point(|increment| change.deps.covers(origin, increment.seq));
            for increment in increments.drain(..covered) {
                self.increments_total -= i128::from(increment.delta);
            }
            while origin == change.origin
                && let Some(last) = increments.pop_if(|increment| increment.seq == change.seq)
            {
                self.increments_total -= i128::from(last.delta);
            }
            assert!(
                increments.first().is_none_or(|first| !replaced(origin, first.seq)),
                "the increments left are not covered"
            );
        }
        self.increments.retain(|_, increments| !increments.is_empty());
        let incoming = Version { origin: change.origin, seq: change.seq, timestamp: change.timestamp, value };
        let siblings_before = self.versions.len();
        self.versions.retain(|version| !replaced(version.origin, version.seq));
        match policy {
            ConflictPolicy::LastWriteWins => {
                assert!(self.versions.len() <= 1, "last-write-wins keeps one version");
                let Some(current) = self.versions.pop() else {
                    self.versions.push(incoming);
                    return None;
                };
                // `current` is concurrent with `incoming`: incoming's deps do not cover it, and
                // causal delivery means current's deps cannot cover incoming (not applied yet).
                let (winner, loser) =
                    if incoming.rank() > current.rank() { (incoming, current) } else { (current, incoming) };
                let resolved = Resolved { winner: winner.id(), loser: loser.id() };
                self.versions.push(winner);
                Some(resolved)
            }
            ConflictPolicy::Siblings => {
                let concurrent_before = self.versions.len();
                let incoming_id = incoming.id();
                self.versions.push(incoming);
                // Sorted by id, so two DCs holding the same siblings hold equal states.
                self.versions.sort_by_key(Version::id);
                // The key goes from one visible write to several: one conflict. (Writes that
                // replace everything leave one version; a key already in conflict stays counted.)
                if concurrent_before == 1 && siblings_before == 1 {
                    let winner = self.chosen_version().map_or(incoming_id, Version::id);
                    let loser = self.versions.iter().map(Version::id).find(|&id| id != winner).unwrap_or(incoming_id);
                    return Some(Resolved { winner, loser });
                }
                None
            }
        }
    }

    /// Records an increment of `change`.
    pub fn add(&mut self, change: &Change, delta: i64) {
        let increments = self.increments.entry(change.origin).or_default();
        assert!(
            increments.last().is_none_or(|last| last.seq <= change.seq),
            "increments of {} out of seq order",
            change.origin
        );
        increments.push(Increment { seq: change.seq, delta });
        self.increments_total += i128::from(delta);
    }

    /// The register version reads see: the largest `(timestamp, origin)`.
    pub fn chosen_version(&self) -> Option<&Version> {
        self.versions.iter().max_by_key(|version| version.rank())
    }

    /// The counter value when increments remain (wider than `i64`: concurrent increments can
    /// together leave its range).
    pub fn counter(&self) -> Option<i128> {
        if self.increments.is_empty() {
            return None;
        }
        let base = self
            .chosen_version()
            .and_then(|version| version.value.as_ref())
            .and_then(|(value, _)| std::str::from_utf8(value).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        Some(i128::from(base) + self.increments_total)
    }

    /// The value a plain read sees.
    pub fn visible(&self) -> Option<StoredValue> {
        let chosen = self.chosen_version();
        let expire_at = chosen.and_then(|version| version.value.as_ref()).and_then(|(_, expire_at)| *expire_at);
        if let Some(counter) = self.counter() {
            return Some(StoredValue { value: Bytes::from(counter.to_string()), expire_at });
        }
        let (value, expire_at) = chosen?.value.clone()?;
        Some(StoredValue { value, expire_at })
    }

    /// Joins another DC's copy of this key (a bootstrap). `mine` and `theirs` are the two sides'
    /// applied vectors: a version or increment one side lacks although it has applied its change
    /// was replaced there, so it does not come back. Commutative, associative, idempotent.
    pub fn merge(&mut self, other: &KeyState, mine: &OriginVector, theirs: &OriginVector, policy: ConflictPolicy) {
        let mut versions: Vec<Version> = Vec::new();
        for version in &self.versions {
            let they_have = other.versions.iter().any(|theirs| theirs.id() == version.id());
            if they_have || !theirs.covers(version.origin, version.seq) {
                versions.push(version.clone());
            }
        }
        for version in &other.versions {
            let i_have = self.versions.iter().any(|mine| mine.id() == version.id());
            if !i_have && !mine.covers(version.origin, version.seq) {
                versions.push(version.clone());
            }
        }
        versions.sort_by_key(|version| (version.origin, version.seq));
        if policy == ConflictPolicy::LastWriteWins
            && let Some(best) = versions.iter().max_by_key(|version| version.rank()).cloned()
        {
            versions = vec![best];
        }
        self.versions = versions;

        let mut increments: BTreeMap<DcId, Vec<Increment>> = BTreeMap::new();
        let origins: Vec<DcId> = self.increments.keys().chain(other.increments.keys()).copied().collect();
        for origin in origins {
            let empty = Vec::new();
            let own = self.increments.get(&origin).unwrap_or(&empty);
            let their = other.increments.get(&origin).unwrap_or(&empty);
            let mut merged: BTreeMap<u64, i64> = BTreeMap::new();
            for increment in own {
                if their.contains(increment) || !theirs.covers(origin, increment.seq) {
                    merged.insert(increment.seq, increment.delta);
                }
            }
            for increment in their {
                if own.contains(increment) || !mine.covers(origin, increment.seq) {
                    merged.insert(increment.seq, increment.delta);
                }
            }
            if !merged.is_empty() {
                increments.insert(origin, merged.into_iter().map(|(seq, delta)| Increment { seq, delta }).collect());
            }
        }
        self.increments = increments;
        self.increments_total = self.increments.values().flatten().map(|increment| i128::from(increment.delta)).sum();
    }

    /// The increments summed one by one (what `increments_total` must equal).
    pub fn increments_sum_recomputed(&self) -> i128 {
        self.increments.values().flatten().map(|increment| i128::from(increment.delta)).sum()
    }

    pub fn increments_total(&self) -> i128 {
        self.increments_total
    }
}
