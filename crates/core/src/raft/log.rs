//! The engine's in-memory copy of the log: every entry after the snapshot point. The durable copy is
//! the driver's (it performs `AppendLog` / `TruncateLog`); the two hold the same entries, the durable
//! one possibly lagging behind by what is not yet fsynced.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::membership::Membership;
use crate::log::{EntryPayload, LogEntry};
use crate::types::{LogIndex, Term};

/// Where a snapshot of the state stands: the last entry it includes and the configuration in force
/// there. The state at `index` replaces every entry up to `index`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
    pub membership: Membership,
}

#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    snapshot: SnapshotMeta,
    /// Entry `i` has index `snapshot.index + 1 + i`.
    entries: VecDeque<LogEntry>,
    /// The membership entries among `entries`, ascending by index: the latest is in force.
    memberships: Vec<(LogIndex, Membership)>,
}

impl RaftLog {
    /// # Panics
    /// If `entries` do not follow the snapshot point without a gap, or their terms decrease.
    pub(crate) fn new(snapshot: SnapshotMeta, entries: Vec<LogEntry>) -> RaftLog {
        let mut log = RaftLog { snapshot, entries: VecDeque::new(), memberships: Vec::new() };
        log.append(&entries);
        log
    }

    pub(crate) fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.snapshot.index.next()
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.entries.back().map_or(self.snapshot.index, |entry| entry.index)
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot.term, |entry| entry.term)
    }

    /// The term of the entry at `index`: known for the snapshot point and every entry after it.
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&LogEntry> {
        let offset = index.0.checked_sub(self.first_index().0)?;
        let entry = self.entries.get(usize::try_from(offset).ok()?)?;
        assert_eq!(entry.index, index, "in-memory log out of order");
        Some(entry)
    }

    /// Up to `count_max` entries from `from` on (fewer at the end of the log).
    ///
    /// # Panics
    /// If `from` is compacted away.
    pub(crate) fn entries_from(&self, from: LogIndex, count_max: usize) -> Vec<LogEntry> {
        assert!(from >= self.first_index(), "entries before {} are compacted", self.first_index());
        let offset = usize::try_from(from.0 - self.first_index().0).unwrap_or(usize::MAX);
        self.entries.iter().skip(offset).take(count_max).cloned().collect()
    }

    /// # Panics
    /// If the entries do not continue the log: the next index, terms never decreasing.
    pub(crate) fn append(&mut self, entries: &[LogEntry]) {
        for entry in entries {
            assert_eq!(entry.index, self.last_index().next(), "append leaves a gap or overlaps");
            assert!(entry.term >= self.last_term(), "term decreases in the log at {}", entry.index);
            if let EntryPayload::Membership(membership) = &entry.payload {
                self.memberships.push((entry.index, membership.clone()));
            }
            self.entries.push_back(entry.clone());
        }
    }

    /// Removes every entry from `from` on and returns them.
    ///
    /// # Panics
    /// If `from` is at or before the snapshot point: a snapshot holds committed entries only.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) -> Vec<LogEntry> {
        assert!(from > self.snapshot.index, "truncating into the snapshot at {}", self.snapshot.index);
        let keep = usize::try_from(from.0 - self.first_index().0).unwrap_or(usize::MAX).min(self.entries.len());
        let removed: Vec<LogEntry> = self.entries.drain(keep..).collect();
        self.memberships.retain(|(index, _)| *index < from);
        assert!(self.last_index() < from, "truncation left entries behind");
        removed
    }

    /// Drops the entries up to `index`, which a snapshot now covers.
    ///
    /// # Panics
    /// If `index` is not in the log.
    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        if index <= self.snapshot.index {
            return;
        }
        let Some(meta) = self.meta_at(index) else {
            panic!("compacting to {index}, beyond the last index {}", self.last_index());
        };
        let drop = usize::try_from(index.0 - self.snapshot.index.0).unwrap_or(usize::MAX);
        self.entries.drain(..drop);
        self.memberships.retain(|(at, _)| *at > index);
        self.snapshot = meta;
        assert_eq!(self.first_index(), index.next(), "compaction missed the snapshot point");
    }

    /// Replaces the whole log with a snapshot point; returns the entries dropped.
    pub(crate) fn reset(&mut self, snapshot: SnapshotMeta) -> Vec<LogEntry> {
        let removed: Vec<LogEntry> = self.entries.drain(..).collect();
        self.memberships.clear();
        self.snapshot = snapshot;
        removed
    }

    /// The configuration in force: the latest one in the log, else the snapshot's.
    pub(crate) fn membership(&self) -> &Membership {
        self.memberships.last().map_or(&self.snapshot.membership, |(_, membership)| membership)
    }

    /// The index of the entry that set the configuration in force (the snapshot point if none).
    pub(crate) fn membership_index(&self) -> LogIndex {
        self.memberships.last().map_or(self.snapshot.index, |(index, _)| *index)
    }

    /// The snapshot point a state applied up to `index` would have: `None` outside
    /// `[snapshot index, last index]`.
    pub(crate) fn meta_at(&self, index: LogIndex) -> Option<SnapshotMeta> {
        let term = self.term_at(index)?;
        let membership = self
            .memberships
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or(&self.snapshot.membership, |(_, membership)| membership)
            .clone();
        Some(SnapshotMeta { index, term, membership })
    }

    /// The last index at or before `index` whose term is at most `term`: every entry between it and
    /// `index` has a term above `term`, so cannot match an entry of term `term` or earlier (fast
    /// backtracking). Below the snapshot point when no entry still known qualifies.
    pub(crate) fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut at = index.min(self.last_index());
        while at >= self.snapshot.index {
            if self.term_at(at).is_some_and(|found| found <= term) {
                return at;
            }
            if at == LogIndex::ZERO {
                break;
            }
            at = LogIndex(at.0 - 1);
        }
        assert!(at < self.snapshot.index || at == LogIndex::ZERO, "backtracking stopped inside the log");
        if at < self.snapshot.index { at } else { LogIndex::ZERO }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Noop }
    }

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(at, term)| entry(at as u64 + 1, *term)).collect();
        RaftLog::new(SnapshotMeta::default(), entries)
    }

    #[test]
    fn terms_and_bounds() {
        let log = log_with_terms(&[1, 1, 2]);
        assert_eq!((log.first_index(), log.last_index(), log.last_term()), (LogIndex(1), LogIndex(3), Term(2)));
        assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(4)), None);
    }

    #[test]
    fn truncate_and_compact() {
        let mut log = log_with_terms(&[1, 1, 2, 2, 3]);
        let removed = log.truncate_from(LogIndex(4));
        assert_eq!(removed, vec![entry(4, 2), entry(5, 3)]);
        log.compact_to(LogIndex(2));
        assert_eq!((log.first_index(), log.last_index()), (LogIndex(3), LogIndex(3)));
        assert_eq!(log.term_at(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.term_at(LogIndex(1)), None);
        assert_eq!(log.entries_from(LogIndex(3), 10), vec![entry(3, 2)]);
    }

    #[test]
    fn membership_follows_appends_truncations_and_compaction() {
        let base = Membership::with_voters([NodeId(1)]);
        let grown = Membership::with_voters([NodeId(1), NodeId(2)]);
        let snapshot = SnapshotMeta { index: LogIndex(0), term: Term(0), membership: base.clone() };
        let mut log = RaftLog::new(snapshot, vec![entry(1, 1)]);
        log.append(&[LogEntry { index: LogIndex(2), term: Term(1), payload: EntryPayload::Membership(grown.clone()) }]);
        assert_eq!((log.membership(), log.membership_index()), (&grown, LogIndex(2)));
        assert_eq!(log.meta_at(LogIndex(1)).map(|meta| meta.membership), Some(base.clone()));
        log.truncate_from(LogIndex(2));
        assert_eq!((log.membership(), log.membership_index()), (&base, LogIndex(0)));
        log.append(&[LogEntry { index: LogIndex(2), term: Term(2), payload: EntryPayload::Membership(grown.clone()) }]);
        log.compact_to(LogIndex(2));
        assert_eq!(log.snapshot().membership, grown);
        assert_eq!(log.membership(), &grown);
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        let log = log_with_terms(&[1, 1, 2, 2, 4, 4]);
        assert_eq!(log.find_conflict_by_term(LogIndex(6), Term(3)), LogIndex(4));
        assert_eq!(log.find_conflict_by_term(LogIndex(6), Term(1)), LogIndex(2));
        assert_eq!(log.find_conflict_by_term(LogIndex(6), Term(0)), LogIndex(0));
        assert_eq!(log.find_conflict_by_term(LogIndex(9), Term(4)), LogIndex(6));
    }

    #[test]
    fn find_conflict_by_term_goes_below_a_snapshot_of_a_later_term() {
        let mut log = log_with_terms(&[1, 2, 2, 3]);
        log.compact_to(LogIndex(3));
        assert_eq!(log.find_conflict_by_term(LogIndex(4), Term(2)), LogIndex(3));
        assert_eq!(log.find_conflict_by_term(LogIndex(4), Term(1)), LogIndex(2));
    }

    #[test]
    #[should_panic(expected = "gap")]
    fn append_with_a_gap_panics() {
        let mut log = log_with_terms(&[1]);
        log.append(&[entry(3, 1)]);
    }
}
