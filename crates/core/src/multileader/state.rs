//! The replicated multi-leader state of one DC, and applying log entries to it.
//!
//! Applying is deterministic in log order and reads nothing but its inputs, so every node of the DC
//! computes the same state; seq, deps and the effective timestamp of a local change are assigned
//! here, at apply time, from this state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::change::{Change, ChangeOp, JournalItem, Materialize, MlEntry, MlRefusal};
use super::container::KeyState;
use super::ids::{ConflictPolicy, DcId, OriginVector};
use super::journal::{Journal, JournalTrimmed};
use crate::leaderless::HlcTimestamp;
use crate::log::WriteOp;
use crate::state::StoredValue;
use crate::types::LogIndex;

/// How many resolved conflicts [`MultiLeaderState::recent_conflicts`] keeps.
pub const RECENT_CONFLICTS_MAX: usize = 128;

/// A concurrent write resolved on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub key: Bytes,
    /// `(origin, seq)` of the write that stays visible.
    pub winner: (DcId, u64),
    /// `(origin, seq)` of the write that lost (dropped under LWW, a hidden sibling under Siblings).
    pub loser: (DcId, u64),
    pub policy: ConflictPolicy,
    /// The effective timestamp of the change whose apply resolved it.
    pub at: HlcTimestamp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlStats {
    /// Local changes applied (made at this DC).
    pub changes_local: u64,
    /// Remote changes applied one by one (not counting those merged from a bootstrap).
    pub changes_remote_applied: u64,
    /// Remote changes dropped: already applied or already held back.
    pub duplicates_dropped: u64,
    /// Remote changes held back now, waiting for their deps.
    pub held_back: u64,
    pub conflicts_resolved: u64,
    /// Keys holding more than one sibling now.
    pub siblings_keys: u64,
    pub journal_trimmed_through: u64,
    /// Changes received whose origin is this DC (dropped by the origin check).
    pub own_origin_dropped: u64,
    /// Changes received that break the change format (`seq` 0, or `deps[origin] != seq - 1`).
    pub malformed_dropped: u64,
    pub bootstraps_merged: u64,
}

/// A bug planted on purpose for the simulator to catch (`chorus-sim`, multi-leader mode). Never
/// set outside tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MlPlantedBug {
    /// A change whose origin is this DC is not dropped: it is applied again as if it were remote
    /// (its ops resolved again, journaled again, so forwarded again).
    DropOriginCheck,
    /// A remote change waits only for its own origin's earlier changes, not for its deps on other
    /// origins.
    ApplyOutOfCausalOrder,
}

/// The whole multi-leader state of a DC, as a bootstrap carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlExport {
    pub from: DcId,
    pub keys: BTreeMap<Bytes, KeyState>,
    pub applied: OriginVector,
    pub last_timestamp: HlcTimestamp,
}

/// The replicated multi-leader state of one DC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLeaderState {
    this: DcId,
    policy: ConflictPolicy,
    keys: BTreeMap<Bytes, KeyState>,
    /// Per origin, the last seq applied here (applied changes of an origin are exactly `1..=seq`).
    applied: OriginVector,
    /// Remote changes received before their deps, by id.
    held: BTreeMap<(DcId, u64), Change>,
    journal: Journal,
    /// Per upstream DC, the journal position of that DC applied through here.
    upstream: BTreeMap<DcId, u64>,
    last_timestamp: HlcTimestamp,
    stats: MlStats,
    recent_conflicts: VecDeque<ConflictRecord>,
    applied_index: LogIndex,
    #[serde(skip)]
    planted: Option<MlPlantedBug>,
}

impl MultiLeaderState {
    /// # Panics
    /// If `journal_entries_max` is 0.
    pub fn new(this: DcId, policy: ConflictPolicy, journal_entries_max: usize) -> Self {
        MultiLeaderState {
            this,
            policy,
            keys: BTreeMap::new(),
            applied: OriginVector::new(),
            held: BTreeMap::new(),
            journal: Journal::new(journal_entries_max),
            upstream: BTreeMap::new(),
            last_timestamp: HlcTimestamp::default(),
            stats: MlStats::default(),
            recent_conflicts: VecDeque::new(),
            applied_index: LogIndex::ZERO,
            planted: None,
        }
    }

    pub fn this(&self) -> DcId {
        self.this
    }

    pub fn policy(&self) -> ConflictPolicy {
        self.policy
    }

    /// Applies one entry at log `index` (deterministic). Returns the keys whose visible value
    /// changed. An entry at or below the last index applied is ignored (a replay after a
    /// snapshot); index 0 is never ignored (for callers without a log).
    pub fn apply(&mut self, index: LogIndex, entry: &MlEntry) -> Vec<Materialize> {
        self.apply_observed(index, entry, &mut |_| {})
    }

    /// [`MultiLeaderState::apply`], calling `observe` with every change applied one by one (local
    /// or remote, in apply order; not those merged from a bootstrap).
    pub fn apply_observed(
        &mut self,
        index: LogIndex,
        entry: &MlEntry,
        observe: &mut dyn FnMut(&Change),
    ) -> Vec<Materialize> {
        if index != LogIndex::ZERO {
            if index <= self.applied_index {
                return Vec::new();
            }
            self.applied_index = index;
        }
        let mut touched = Touched::default();
        match entry {
            MlEntry::Local { timestamp, ops } => {
                let seq = self.applied.get(self.this) + 1;
                let change = Change {
                    origin: self.this,
                    seq,
                    deps: self.applied.clone(),
                    timestamp: (*timestamp).max(tick(self.last_timestamp)),
                    ops: ops.clone(),
                };
                assert!(change.timestamp > self.last_timestamp, "a local change's timestamp passes all before it");
                self.apply_change(change, &mut touched, observe);
                self.stats.changes_local += 1;
            }
            MlEntry::Remote { from, through, changes } => {
                for change in changes {
                    self.receive(change, &mut touched, observe);
                }
                self.advance_upstream(*from, *through);
            }
            MlEntry::Bootstrap { from, through, state } => {
                self.merge(state, &mut touched);
                self.release(&mut touched, observe);
                self.advance_upstream(*from, *through);
            }
        }
        self.stats.held_back = self.held.len() as u64;
        self.stats.journal_trimmed_through = self.journal.trimmed_through();
        touched.materialize(&self.keys)
    }

    /// Converts the resolved write of a client command into change ops: `incr_delta` is `Some(d)`
    /// when the command was INCR/DECR/INCRBY/DECRBY (then `ops` is the single Put of the new value).
    pub fn change_ops(ops: &[WriteOp], incr_delta: Option<i64>) -> Result<Vec<ChangeOp>, MlRefusal> {
        super::change::change_ops(ops, incr_delta)
    }

    pub fn applied(&self) -> &OriginVector {
        &self.applied
    }

    pub fn upstream_position(&self, upstream: DcId) -> u64 {
        self.upstream.get(&upstream).copied().unwrap_or(0)
    }

    /// Whether a batch of `from`'s journal sent from position `since` (the sender's cursor)
    /// continues from what this DC applied, so that applying it leaves no gap. A link that resumes
    /// from [`MultiLeaderState::upstream_position`] and is FIFO only ever carries such batches; a
    /// batch from anywhere else (a stale copy from an old connection) must pass this check before
    /// it is proposed, because applying a `Remote` entry moves the upstream position to its
    /// `through` whatever came before it.
    pub fn continues(&self, from: DcId, since: u64) -> bool {
        since <= self.upstream_position(from)
    }

    pub fn journal_last(&self) -> u64 {
        self.journal.last()
    }

    /// Journal items after `position` (at most `max`) that `forward(origin)` accepts; `Err` when
    /// the journal was trimmed past `position` (send `export()` as a Bootstrap instead).
    pub fn journal_since(
        &self,
        position: u64,
        max: usize,
        forward: &dyn Fn(DcId) -> bool,
    ) -> Result<Vec<JournalItem>, JournalTrimmed> {
        self.journal.since(position, max, forward).map(|(items, _)| items)
    }

    /// [`MultiLeaderState::journal_since`] with the position the scan reached, to send as
    /// `through` (it passes items `forward` rejected, which `journal_since` alone cannot say).
    pub fn journal_batch(
        &self,
        position: u64,
        max: usize,
        forward: &dyn Fn(DcId) -> bool,
    ) -> Result<(Vec<JournalItem>, u64), JournalTrimmed> {
        self.journal.since(position, max, forward)
    }

    /// What a link from this DC sends next after its `cursor`: `MlEntry::Remote` with at most
    /// `max` changes that `forward(origin)` accepts (typically `Topology::forwards` for the link's
    /// receiver), or `MlEntry::Bootstrap` with the whole state when the journal was trimmed past
    /// `cursor`; and the cursor to continue from. `None` when the journal has nothing past
    /// `cursor`. (The receiver proposes the entry as is.)
    pub fn outgoing(&self, cursor: u64, max: usize, forward: &dyn Fn(DcId) -> bool) -> Option<(MlEntry, u64)> {
        if cursor >= self.journal.last() {
            return None;
        }
        let from = self.this;
        match self.journal.since(cursor, max, forward) {
            Ok((items, through)) => {
                let changes = items.into_iter().map(|item| item.change).collect();
                Some((MlEntry::Remote { from, through, changes }, through))
            }
            Err(_) => {
                let through = self.journal.last();
                Some((MlEntry::Bootstrap { from, through, state: Box::new(self.export()) }, through))
            }
        }
    }

    pub fn export(&self) -> MlExport {
        MlExport {
            from: self.this,
            keys: self.keys.clone(),
            applied: self.applied.clone(),
            last_timestamp: self.last_timestamp,
        }
    }

    /// The visible value's siblings (Siblings policy) or the single winner, for a CHORUS command:
    /// `(origin, seq, timestamp, value)`, largest `(timestamp, origin)` first, `None` for a
    /// tombstone. On a counter key the first entry shows the counter's value.
    pub fn versions(&self, key: &[u8]) -> Vec<(DcId, u64, HlcTimestamp, Option<Bytes>)> {
        let Some(state) = self.keys.get(key) else { return Vec::new() };
        let mut versions: Vec<_> = state.versions().iter().collect();
        versions.sort_by_key(|version| std::cmp::Reverse(version.rank()));
        let mut out: Vec<_> = versions
            .into_iter()
            .map(|version| {
                (version.origin, version.seq, version.timestamp, version.value.as_ref().map(|(value, _)| value.clone()))
            })
            .collect();
        if let Some(counter) = state.counter() {
            let shown = Some(Bytes::from(counter.to_string()));
            match out.first_mut() {
                Some(first) => first.3 = shown,
                None => out.push((self.this, 0, HlcTimestamp::default(), shown)),
            }
        }
        out
    }

    /// The counter's value when the key has increments (`None` otherwise, or out of `i64` range).
    pub fn counter_value(&self, key: &[u8]) -> Option<i64> {
        self.keys.get(key)?.counter().and_then(|value| i64::try_from(value).ok())
    }

    /// The value a read sees (what the materialized view holds).
    pub fn visible(&self, key: &[u8]) -> Option<StoredValue> {
        self.keys.get(key)?.visible()
    }

    /// Every key's state, for checkers.
    pub fn keys(&self) -> &BTreeMap<Bytes, KeyState> {
        &self.keys
    }

    pub fn stats(&self) -> MlStats {
        self.stats
    }

    /// Newest first, at most [`RECENT_CONFLICTS_MAX`].
    pub fn recent_conflicts(&self) -> impl Iterator<Item = &ConflictRecord> {
        self.recent_conflicts.iter()
    }

    /// The largest timestamp applied, so a new leader's HLC resumes above it.
    pub fn last_timestamp(&self) -> HlcTimestamp {
        self.last_timestamp
    }

    /// Test only: planted bugs for the simulator to catch.
    #[doc(hidden)]
    pub fn plant(&mut self, bug: MlPlantedBug) {
        self.planted = Some(bug);
    }

    fn advance_upstream(&mut self, from: DcId, through: u64) {
        let position = self.upstream.entry(from).or_insert(0);
        *position = (*position).max(through);
    }

    /// A remote change: dropped (own origin, duplicate, malformed), applied, or held back.
    fn receive(&mut self, change: &Change, touched: &mut Touched, observe: &mut dyn FnMut(&Change)) {
        if change.seq == 0 || change.deps.get(change.origin) != change.seq - 1 {
            self.stats.malformed_dropped += 1;
            return;
        }
        if change.origin == self.this {
            if self.planted == Some(MlPlantedBug::DropOriginCheck) {
                self.reapply_own(change.clone(), touched, observe);
            } else {
                self.stats.own_origin_dropped += 1;
            }
            return;
        }
        if self.applied.covers(change.origin, change.seq) || self.held.contains_key(&change.id()) {
            self.stats.duplicates_dropped += 1;
            return;
        }
        self.held.insert(change.id(), change.clone());
        self.release(touched, observe);
    }

    /// Whether a held change can be applied now: it is its origin's next, and (unless the planted
    /// bug says otherwise) every change it depends on is applied.
    fn deliverable(&self, change: &Change) -> bool {
        let next = change.seq == self.applied.get(change.origin) + 1;
        if self.planted == Some(MlPlantedBug::ApplyOutOfCausalOrder) {
            return next;
        }
        next && self.applied.descends(&change.deps)
    }

    /// Applies every held change whose deps are satisfied, until none is (a chain releases whole).
    fn release(&mut self, touched: &mut Touched, observe: &mut dyn FnMut(&Change)) {
        // Changes the applied vector already covers (merged from a bootstrap) are duplicates now.
        let applied = &self.applied;
        let before = self.held.len();
        self.held.retain(|&(origin, seq), _| !applied.covers(origin, seq));
        self.stats.duplicates_dropped += (before - self.held.len()) as u64;
        loop {
            let ready: Vec<(DcId, u64)> =
                self.held.iter().filter(|(_, change)| self.deliverable(change)).map(|(&id, _)| id).collect();
            if ready.is_empty() {
                return;
            }
            // Each ready change is its origin's next one, and applying one only grows the applied
            // vector, so the others stay deliverable.
            for id in ready {
                if let Some(change) = self.held.remove(&id) {
                    self.apply_change(change, touched, observe);
                    self.stats.changes_remote_applied += 1;
                }
            }
        }
    }

    /// Resolves one change into the keys, and records it as applied and journaled.
    fn apply_change(&mut self, change: Change, touched: &mut Touched, observe: &mut dyn FnMut(&Change)) {
        assert_eq!(change.seq, self.applied.get(change.origin) + 1, "seqs of {} applied densely", change.origin);
        if self.planted != Some(MlPlantedBug::ApplyOutOfCausalOrder) {
            assert!(self.applied.descends(&change.deps), "change {:?} applied before its deps", change.id());
        }
        self.resolve(&change, touched);
        self.applied.set(change.origin, change.seq);
        self.finish(change, observe);
    }

    /// The planted [`MlPlantedBug::DropOriginCheck`]: an own change applied a second time.
    fn reapply_own(&mut self, change: Change, touched: &mut Touched, observe: &mut dyn FnMut(&Change)) {
        self.resolve(&change, touched);
        self.stats.changes_remote_applied += 1;
        self.finish(change, observe);
    }

    fn finish(&mut self, change: Change, observe: &mut dyn FnMut(&Change)) {
        self.last_timestamp = self.last_timestamp.max(change.timestamp);
        observe(&change);
        self.journal.append(change);
    }

    fn resolve(&mut self, change: &Change, touched: &mut Touched) {
        for op in &change.ops {
            let key = op.key();
            let state = self.keys.entry(key.clone()).or_default();
            touched.note(key, state);
            let siblings_before = state.versions().len() > 1;
            let resolved = match op {
                ChangeOp::Set { value, expire_at, .. } => {
                    state.write(change, Some((value.clone(), *expire_at)), self.policy)
                }
                ChangeOp::Delete { .. } => state.write(change, None, self.policy),
                ChangeOp::Add { delta, .. } => {
                    state.add(change, *delta);
                    None
                }
            };
            let siblings_after = state.versions().len() > 1;
            match (siblings_before, siblings_after) {
                (false, true) => self.stats.siblings_keys += 1,
                (true, false) => self.stats.siblings_keys -= 1,
                _ => {}
            }
            if let Some(resolved) = resolved {
                self.stats.conflicts_resolved += 1;
                self.recent_conflicts.push_front(ConflictRecord {
                    key: key.clone(),
                    winner: resolved.winner,
                    loser: resolved.loser,
                    policy: self.policy,
                    at: change.timestamp,
                });
                self.recent_conflicts.truncate(RECENT_CONFLICTS_MAX);
            }
        }
    }

    /// Joins another DC's exported state into this one (a bootstrap).
    fn merge(&mut self, export: &MlExport, touched: &mut Touched) {
        let mut theirs = export.applied.clone();
        // Only this DC makes its own changes; an export claiming more of them than were applied
        // here is not to be believed (it would make the next local seq skip).
        theirs.set(self.this, theirs.get(self.this).min(self.applied.get(self.this)));
        if self.applied.descends(&theirs) {
            return;
        }
        let keys: BTreeSet<Bytes> = self.keys.keys().chain(export.keys.keys()).cloned().collect();
        let empty = KeyState::default();
        for key in keys {
            let state = self.keys.entry(key.clone()).or_default();
            touched.note(&key, state);
            let siblings_before = state.versions().len() > 1;
            let other = export.keys.get(&key).unwrap_or(&empty);
            state.merge(other, &self.applied, &theirs, self.policy);
            let siblings_after = state.versions().len() > 1;
            match (siblings_before, siblings_after) {
                (false, true) => self.stats.siblings_keys += 1,
                (true, false) => self.stats.siblings_keys -= 1,
                _ => {}
            }
            if state.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.applied.join(&theirs);
        self.last_timestamp = self.last_timestamp.max(export.last_timestamp);
        // What was merged is not in this journal item by item: a downstream behind this point
        // must bootstrap from here.
        self.journal.skip();
        self.stats.bootstraps_merged += 1;
    }
}

/// One logical tick after `timestamp`.
fn tick(timestamp: HlcTimestamp) -> HlcTimestamp {
    match timestamp.logical.checked_add(1) {
        Some(logical) => HlcTimestamp { logical, ..timestamp },
        None => HlcTimestamp { wall_ms: timestamp.wall_ms + 1, logical: 0, ..timestamp },
    }
}

/// The keys an entry touched, with their visible value before it.
#[derive(Default)]
struct Touched {
    before: BTreeMap<Bytes, Option<StoredValue>>,
}

impl Touched {
    fn note(&mut self, key: &Bytes, state: &KeyState) {
        self.before.entry(key.clone()).or_insert_with(|| state.visible());
    }

    fn materialize(self, keys: &BTreeMap<Bytes, KeyState>) -> Vec<Materialize> {
        self.before
            .into_iter()
            .filter_map(|(key, before)| {
                let after = keys.get(&key).and_then(KeyState::visible);
                (after != before).then_some(Materialize { key, value: after })
            })
            .collect()
    }
}
