//! Log replication: the leader's appends and heartbeats, the follower's log matching (Raft §5.3),
//! the commit rule (§5.4.2 and the durability mode), read index, and snapshots.

use super::log::SnapshotMeta;
use super::message::{AppendEntries, AppendEntriesResponse, AppendOutcome, Message};
use super::progress::ReplicationState;
use super::quorum::{commit_point, majority};
use super::{Effect, PlantedBug, Raft, Role};
use crate::log::{EntryPayload, LogEntry};
use crate::types::{LogIndex, NodeId, Term, UnixMillis};

impl Raft {
    pub(super) fn tick_leader(&mut self, now: UnixMillis) {
        // Dissertation §6.2 (check-quorum): a leader that has not heard from a majority of voters for
        // an election timeout steps down, so a partitioned leader stops taking writes and reads.
        if !self.quorum_active(now) {
            self.become_follower(now, self.term, None);
            return;
        }
        let snapshot_timeout_ms = self.config.snapshot_timeout_ms;
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        if lead.transfer.is_some_and(|transfer| now >= transfer.deadline) {
            lead.transfer = None;
        }
        for progress in lead.progress.values_mut() {
            let expired = now.0 >= progress.snapshot_sent_at.0 + snapshot_timeout_ms;
            if progress.state == ReplicationState::Snapshot && expired {
                progress.become_probe(progress.match_index.next());
            }
        }
        if now >= lead.heartbeat_due {
            self.broadcast_heartbeat(now);
        }
    }

    pub(super) fn quorum_active(&self, now: UnixMillis) -> bool {
        let Some(lead) = self.lead.as_ref() else {
            return false;
        };
        let voters = &self.log.membership().voters;
        let window_ms = self.config.election_timeout_ms_min;
        let active = voters
            .iter()
            .filter(|voter| {
                **voter == self.config.node_id
                    || lead.progress.get(voter).is_some_and(|progress| {
                        let heard = progress.last_contact.unwrap_or(progress.added_at);
                        now.0 < heard.0 + window_ms
                    })
            })
            .count();
        active >= majority(voters.len())
    }

    /// Appends a new entry of this term to the leader's log.
    pub(super) fn append_as_leader(&mut self, payload: EntryPayload) -> LogIndex {
        assert_eq!(self.role, Role::Leader, "appending as {:?}", self.role);
        let entry = LogEntry { index: self.log.last_index().next(), term: self.term, payload };
        let index = entry.index;
        self.log.append(std::slice::from_ref(&entry));
        self.effects.push(Effect::AppendLog { entries: vec![entry] });
        index
    }

    fn peers(&self) -> Vec<NodeId> {
        self.lead.as_ref().map(|lead| lead.progress.keys().copied().collect()).unwrap_or_default()
    }

    /// Sends whatever each follower can take now.
    pub(super) fn broadcast_append(&mut self, now: UnixMillis) {
        for to in self.peers() {
            self.send_append(now, to, false);
        }
    }

    /// Sends every follower an append, empty if there is nothing new for it (a heartbeat).
    pub(super) fn broadcast_heartbeat(&mut self, now: UnixMillis) {
        let interval_ms = self.config.heartbeat_interval_ms;
        if let Some(lead) = self.lead.as_mut() {
            lead.heartbeat_due = UnixMillis(now.0 + interval_ms);
        }
        for to in self.peers() {
            self.send_append(now, to, true);
        }
    }

    /// Sends `to` what its replication state allows; with `heartbeat`, at least one message.
    pub(super) fn send_append(&mut self, now: UnixMillis, to: NodeId, heartbeat: bool) {
        let last_index = self.log.last_index();
        let (term, leader_commit) = (self.term, self.commit_index);
        let (entries_max, inflight_max) = (self.config.entries_per_append_max, self.config.appends_in_flight_max);
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let read_seq = lead.read_seq;
        let Some(progress) = lead.progress.get_mut(&to) else {
            return;
        };
        let append = |prev_log_index: LogIndex, prev_log_term: Term, entries: Vec<LogEntry>| Effect::Send {
            to,
            message: Message::AppendEntries(AppendEntries {
                term,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_seq,
            }),
        };
        let snapshot = self.log.snapshot();
        let mut needs_snapshot = false;
        match progress.state {
            ReplicationState::Snapshot => {
                if heartbeat {
                    self.effects.push(append(snapshot.index, snapshot.term, Vec::new()));
                }
            }
            ReplicationState::Probe => {
                if progress.probe_sent && !heartbeat {
                    return;
                }
                let prev = LogIndex(progress.next_index.0 - 1);
                match self.log.term_at(prev) {
                    None => needs_snapshot = true,
                    Some(prev_term) => {
                        let entries = if progress.next_index <= last_index {
                            self.log.entries_from(progress.next_index, entries_max)
                        } else {
                            Vec::new()
                        };
                        self.effects.push(append(prev, prev_term, entries));
                        progress.probe_sent = true;
                    }
                }
            }
            ReplicationState::Replicate => {
                let mut sent = false;
                while progress.next_index <= last_index && progress.inflight.len() < inflight_max {
                    let prev = LogIndex(progress.next_index.0 - 1);
                    let Some(prev_term) = self.log.term_at(prev) else {
                        needs_snapshot = true;
                        break;
                    };
                    let entries = self.log.entries_from(progress.next_index, entries_max);
                    let Some(last) = entries.last().map(|entry| entry.index) else {
                        break;
                    };
                    self.effects.push(append(prev, prev_term, entries));
                    progress.sent(last, inflight_max);
                    sent = true;
                }
                if !sent && !needs_snapshot && heartbeat {
                    let prev = LogIndex(progress.next_index.0 - 1);
                    match self.log.term_at(prev) {
                        Some(prev_term) => self.effects.push(append(prev, prev_term, Vec::new())),
                        None => needs_snapshot = true,
                    }
                }
            }
        }
        if needs_snapshot {
            progress.become_snapshot(snapshot.index, now);
            self.effects.push(Effect::SendSnapshot { to, leader_term: term, index: snapshot.index });
        }
    }

    pub(super) fn handle_append_entries(&mut self, now: UnixMillis, from: NodeId, append: AppendEntries) {
        // §5.2 election safety: one leader per term, so an append in this term comes from the leader.
        // (Planted bugs that break it follow the other leader instead, for the checkers to see.)
        let second_leader_planted =
            self.planted(PlantedBug::DoubleVote) || self.planted(PlantedBug::SkipTermCheckOnAppend);
        assert!(
            self.role != Role::Leader || second_leader_planted,
            "two leaders in term {}: {} and {from}",
            self.term,
            self.config.node_id
        );
        if self.role != Role::Follower {
            self.become_follower(now, self.term, Some(from));
        }
        if self.leader != Some(from) {
            assert!(
                self.leader.is_none() || second_leader_planted,
                "two leaders in term {}: {:?} and {from}",
                self.term,
                self.leader
            );
            self.leader = Some(from);
            self.follower = Default::default();
            self.report_role();
        }
        self.last_leader_contact = Some(now);
        self.reset_election_deadline(now);
        self.follower.read_seq = self.follower.read_seq.max(append.read_seq);
        let read_seq = append.read_seq;
        let outcome = if self.awaiting_snapshot { AppendOutcome::NeedsSnapshot } else { self.follower_append(append) };
        let message = Message::AppendEntriesResponse(AppendEntriesResponse { term: self.term, read_seq, outcome });
        self.effects.push(Effect::Send { to: from, message });
    }

    /// §5.3: appends the leader's entries if the logs agree at `prev_log_index`, truncating a
    /// conflicting suffix first.
    fn follower_append(&mut self, append: AppendEntries) -> AppendOutcome {
        let AppendEntries { prev_log_index: asked_prev, prev_log_term, mut entries, leader_commit, .. } = append;
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index.0, asked_prev.0 + 1 + offset as u64, "append entries are not consecutive");
        }
        let append_end = LogIndex(asked_prev.0 + entries.len() as u64);
        let append_end_term = entries.last().map_or(prev_log_term, |entry| entry.term);
        let (snapshot_index, snapshot_term) = (self.log.snapshot().index, self.log.snapshot().term);
        let reject = |hint_index: LogIndex, hint_term: Term| AppendOutcome::Rejected {
            prev_log_index: asked_prev,
            hint_index,
            hint_term,
        };

        // Entries up to the snapshot point are in the state already; only the snapshot point's term
        // can still be compared.
        let (mut prev, mut prev_term) = (asked_prev, prev_log_term);
        if prev < snapshot_index {
            let Some(at) = entries.iter().position(|entry| entry.index == snapshot_index) else {
                return reject(snapshot_index, snapshot_term);
            };
            prev_term = entries[at].term;
            prev = snapshot_index;
            entries.drain(..=at);
        }
        if prev > self.log.last_index() {
            return reject(self.log.last_index(), self.log.last_term());
        }
        if self.log.term_at(prev) != Some(prev_term) {
            if prev == snapshot_index {
                // The leader's log disagrees with the state itself: committed entries were lost in a
                // failover (async / semi-sync), some of them possibly compacted already.
                return self.discard_committed(snapshot_index.next(), LogIndex::ZERO);
            }
            let hint_index = self.log.find_conflict_by_term(prev, prev_term);
            let Some(hint_term) = self.log.term_at(hint_index) else {
                // Even the snapshot point has a later term than the leader's entry at `prev`: the
                // leader's log disagrees with the state.
                return self.discard_committed(snapshot_index.next(), LogIndex::ZERO);
            };
            return reject(hint_index, hint_term);
        }

        let mut first_new = entries.len();
        for (offset, entry) in entries.iter().enumerate() {
            match self.log.term_at(entry.index) {
                Some(term) if term == entry.term => {}
                Some(_) => {
                    assert!(
                        entry.index > self.follower.leader_match_index,
                        "the leader's log changed at {} after matching up to {}",
                        entry.index,
                        self.follower.leader_match_index
                    );
                    if entry.index <= self.commit_index {
                        return self.discard_committed(entry.index, LogIndex(entry.index.0 - 1));
                    }
                    self.truncate_uncommitted(entry.index);
                    first_new = offset;
                    break;
                }
                None => {
                    first_new = offset;
                    break;
                }
            }
        }
        if first_new < entries.len() {
            let new = entries.split_off(first_new);
            self.log.append(&new);
            self.effects.push(Effect::AppendLog { entries: new });
        }
        // Log matching: this log now holds the leader's entry at the end of the append.
        assert_eq!(self.log.term_at(append_end), Some(append_end_term), "log matching violated at {append_end}");

        self.follower.leader_match_index = self.follower.leader_match_index.max(append_end);
        self.follower.leader_commit = self.follower.leader_commit.max(leader_commit);
        self.follower_advance_commit();
        let match_index = self.follower.leader_match_index.min(self.persisted_index);
        self.follower.acked_index = self.follower.acked_index.max(match_index);
        AppendOutcome::Accepted { last_appended: append_end, match_index }
    }

    /// Removes a conflicting, uncommitted suffix.
    fn truncate_uncommitted(&mut self, from: LogIndex) {
        assert_ne!(self.role, Role::Leader, "a leader never truncates its own log");
        assert!(from > self.commit_index, "truncating committed entries from {from}");
        let discarded = self.log.truncate_from(from);
        self.persisted_index = self.persisted_index.min(LogIndex(from.0 - 1));
        self.effects.push(Effect::TruncateLog { from, discarded, discards_committed: false });
    }

    /// The leader's log disagrees with entries committed here: from `from` on in the log, and in the
    /// state after `state_kept`. Possible only under a durability mode that acknowledges before a
    /// majority has an entry. The entries are discarded (and reported, for the rollback file), and the
    /// node waits for a snapshot of the leader's state, since its own state applied them.
    fn discard_committed(&mut self, from: LogIndex, state_kept: LogIndex) -> AppendOutcome {
        assert!(
            self.config.durability.can_lose_committed() || self.commit_rule_planted(),
            "node {}: committed entries from {from} (commit index {}) conflict with the leader's log under {}",
            self.config.node_id,
            self.commit_index,
            self.config.durability
        );
        assert_ne!(self.role, Role::Leader, "a leader never truncates its own log");
        assert!(from <= self.commit_index.next(), "nothing committed is discarded from {from}");
        assert!(state_kept < from, "the state keeps entries the log discards");
        let discarded = self.log.truncate_from(from);
        let kept = LogIndex(from.0 - 1);
        self.persisted_index = self.persisted_index.min(kept);
        // The one place the commit index goes back: what it covered past `kept` is gone.
        self.commit_index = kept;
        self.follower.leader_match_index = self.follower.leader_match_index.min(kept);
        self.awaiting_snapshot = true;
        self.effects.push(Effect::TruncateLog { from: state_kept.next(), discarded, discards_committed: true });
        self.effects.push(Effect::StateDiverged { kept: state_kept });
        AppendOutcome::NeedsSnapshot
    }

    /// The leader says this node's committed state reaches past its log: everything not verified
    /// against the leader's log is discarded, and a snapshot awaited.
    pub(super) fn handle_snapshot_required(&mut self, _now: UnixMillis, from: NodeId) {
        if self.role != Role::Follower || self.leader != Some(from) {
            return;
        }
        let verified = self.follower.leader_match_index;
        if !self.awaiting_snapshot && self.commit_index > verified {
            let from_log = verified.max(self.log.snapshot().index).next();
            let _ = self.discard_committed(from_log, verified);
        }
        let message = Message::AppendEntriesResponse(AppendEntriesResponse {
            term: self.term,
            read_seq: self.follower.read_seq,
            outcome: AppendOutcome::NeedsSnapshot,
        });
        self.effects.push(Effect::Send { to: from, message });
    }

    /// A follower commits what the leader committed, as far as its own log matches the leader's and
    /// is durable.
    fn follower_advance_commit(&mut self) {
        if self.awaiting_snapshot {
            return;
        }
        let mut point = self.follower.leader_commit.min(self.follower.leader_match_index);
        if !self.planted(PlantedBug::ApplyBeforeCommit) {
            point = point.min(self.persisted_index);
        }
        if point > self.commit_index {
            self.set_commit_index(point);
        }
    }

    /// The follower's log became more durable: commit, and acknowledge to the leader.
    pub(super) fn follower_persisted(&mut self) {
        let Some(leader) = self.leader else {
            return;
        };
        if self.awaiting_snapshot {
            return;
        }
        self.follower_advance_commit();
        self.send_durable_ack(leader);
    }

    fn send_durable_ack(&mut self, leader: NodeId) {
        let match_index = self.follower.leader_match_index.min(self.persisted_index);
        if match_index <= self.follower.acked_index {
            return;
        }
        self.follower.acked_index = match_index;
        let outcome = AppendOutcome::Accepted { last_appended: self.follower.leader_match_index, match_index };
        let response = AppendEntriesResponse { term: self.term, read_seq: self.follower.read_seq, outcome };
        self.effects.push(Effect::Send { to: leader, message: Message::AppendEntriesResponse(response) });
    }

    pub(super) fn handle_append_response(&mut self, now: UnixMillis, from: NodeId, response: AppendEntriesResponse) {
        if self.role != Role::Leader {
            return; // Stepped down in this term (check-quorum): answers to the old appends are moot.
        }
        let last_index = self.log.last_index();
        let snapshot_index = self.log.snapshot().index;
        let can_lose_committed = self.config.durability.can_lose_committed();
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let Some(progress) = lead.progress.get_mut(&from) else {
            return; // No longer a member.
        };
        if response.read_seq < progress.first_read_seq {
            // An answer to an append sent to an earlier life of this node, before it was removed and
            // added back: what it says about the log (a match index) may no longer hold.
            return;
        }
        progress.last_contact = Some(now);
        progress.read_seq_acked = progress.read_seq_acked.max(response.read_seq);
        let mut send_more = false;
        match response.outcome {
            AppendOutcome::Accepted { last_appended, match_index } => {
                assert!(last_appended <= last_index, "node {from} appended {last_appended}, past the leader's log");
                progress.match_index = progress.match_index.max(match_index);
                let appended = last_appended.max(match_index);
                match progress.state {
                    ReplicationState::Probe => progress.become_replicate(appended),
                    ReplicationState::Replicate => {
                        progress.next_index = progress.next_index.max(appended.next());
                        progress.free_inflight_to(appended);
                    }
                    ReplicationState::Snapshot => {
                        if appended >= progress.snapshot_index {
                            progress.become_replicate(appended);
                        }
                    }
                }
                send_more = true;
            }
            AppendOutcome::Rejected { prev_log_index: rejected, hint_index, hint_term } => {
                let past_log = hint_index > last_index && can_lose_committed;
                // The follower's snapshot point (hinted when the probe is below it) is at or past the
                // one being streamed, and agrees with this log: its state already holds what the
                // snapshot would bring (an acknowledgement of an earlier install may have been lost).
                let snapshot_held = hint_index > rejected
                    && hint_index >= progress.snapshot_index
                    && self.log.term_at(hint_index) == Some(hint_term);
                let stale = match progress.state {
                    ReplicationState::Probe => rejected.next() != progress.next_index,
                    ReplicationState::Replicate => rejected <= progress.match_index,
                    // While a snapshot streams, rejections answer earlier appends, except one saying the
                    // follower's committed state is past this whole log (the follower refuses the
                    // snapshot, older than its own state, until told to discard what it cannot show),
                    // or that it holds the snapshot already (it refuses one not newer than its state).
                    ReplicationState::Snapshot => !past_log && !snapshot_held,
                };
                if !stale && past_log {
                    // The follower's snapshot point, committed there, is past this whole log: its state
                    // holds entries this leader never had. Only a snapshot can repair it.
                    progress.become_probe(progress.match_index.next());
                    progress.probe_sent = true;
                    let message = Message::SnapshotRequired { term: self.term };
                    self.effects.push(Effect::Send { to: from, message });
                } else if !stale {
                    let next = if hint_index > rejected {
                        // The follower's snapshot point is past the probe: resume right after it (the
                        // follower compares terms there), or after the whole log if it is shorter.
                        hint_index.min(last_index).next()
                    } else {
                        self.log.find_conflict_by_term(hint_index, hint_term).next()
                    };
                    let next = next.max(progress.match_index.next());
                    let unchanged = next == progress.next_index;
                    progress.become_probe(next);
                    // The same probe again would get the same answer: wait for the next heartbeat.
                    progress.probe_sent = unchanged;
                    send_more = !unchanged;
                }
            }
            AppendOutcome::NeedsSnapshot => {
                if progress.state != ReplicationState::Snapshot {
                    progress.become_snapshot(snapshot_index, now);
                    self.effects.push(Effect::SendSnapshot { to: from, leader_term: self.term, index: snapshot_index });
                }
            }
        }
        self.leader_maybe_commit();
        self.process_reads();
        self.maybe_send_timeout_now(from);
        if send_more {
            self.send_append(now, from, false);
        }
    }

    /// Advances the commit index to what the durability mode allows (§5.4.2: only by counting an
    /// entry of this term).
    pub(super) fn leader_maybe_commit(&mut self) {
        let Some(lead) = self.lead.as_ref() else {
            return;
        };
        let me = self.config.node_id;
        let voters = &self.log.membership().voters;
        assert!(voters.contains(&me), "leader {me} is not a voter");
        let followers = voters
            .iter()
            .filter(|voter| **voter != me)
            .map(|voter| lead.progress.get(voter).map_or(LogIndex::ZERO, |progress| progress.match_index))
            .collect();
        let point = match self.config.planted_bug {
            Some(PlantedBug::CommitWithoutQuorum) => self.persisted_index,
            Some(PlantedBug::ApplyBeforeCommit) => {
                commit_point(self.config.durability, self.log.last_index(), followers)
            }
            _ => commit_point(self.config.durability, self.persisted_index, followers),
        };
        if point > self.commit_index && self.log.term_at(point) == Some(self.term) {
            self.set_commit_index(point);
            self.process_reads();
        }
    }

    /// The highest index a majority of voters (the leader included) hold durably and matching the
    /// leader's log: what `quorum` would commit, whatever the durability mode.
    pub(super) fn majority_durable_index(&self) -> LogIndex {
        let Some(lead) = self.lead.as_ref() else {
            return LogIndex::ZERO;
        };
        let me = self.config.node_id;
        let followers = self
            .log
            .membership()
            .voters
            .iter()
            .filter(|voter| **voter != me)
            .map(|voter| lead.progress.get(voter).map_or(LogIndex::ZERO, |progress| progress.match_index))
            .collect();
        commit_point(super::Durability::Quorum, self.persisted_index, followers)
    }

    /// Answers the read-index requests whose round a majority of voters acknowledged, once the leader
    /// has committed an entry of its term (dissertation §6.4).
    pub(super) fn process_reads(&mut self) {
        let commit_index = self.commit_index;
        let me = self.config.node_id;
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        if commit_index >= lead.term_start_index {
            for read in lead.pending_reads.iter_mut().filter(|read| read.index.is_none()) {
                read.index = Some(commit_index);
            }
        }
        let voters = &self.log.membership().voters;
        let needed = majority(voters.len());
        while let Some(read) = lead.pending_reads.front().copied() {
            let Some(index) = read.index else {
                break;
            };
            let acknowledged = voters
                .iter()
                .filter(|voter| {
                    **voter == me
                        || lead.progress.get(voter).is_some_and(|progress| progress.read_seq_acked >= read.seq)
                })
                .count();
            if acknowledged < needed {
                break;
            }
            lead.pending_reads.pop_front();
            self.effects.push(Effect::ReadReady { read_id: read.read_id, index });
        }
    }

    /// Tells the transfer target to campaign once its log is durably as long as the leader's.
    pub(super) fn maybe_send_timeout_now(&mut self, target: NodeId) {
        let (last_index, term) = (self.log.last_index(), self.term);
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let Some(transfer) = lead.transfer.as_mut() else {
            return;
        };
        if transfer.target != target || transfer.timeout_now_sent {
            return;
        }
        if lead.progress.get(&target).is_some_and(|progress| progress.match_index == last_index) {
            transfer.timeout_now_sent = true;
            self.effects.push(Effect::Send { to: target, message: Message::TimeoutNow { term } });
        }
    }

    /// The state now stands at `meta`: keep the log after it if it agrees there, else start over.
    pub(super) fn install_snapshot(&mut self, _now: UnixMillis, meta: SnapshotMeta) {
        assert_eq!(self.role, Role::Follower, "only a follower installs a snapshot");
        let keep_suffix = !self.awaiting_snapshot && self.log.term_at(meta.index) == Some(meta.term);
        let discards_committed = if keep_suffix {
            self.log.compact_to(meta.index);
            assert_eq!(self.log.snapshot().membership, meta.membership, "snapshot membership differs from the log's");
            self.persisted_index = self.persisted_index.max(meta.index);
            false
        } else {
            // The log is replaced wholesale. Entries never committed here were never acknowledged by
            // this node, and any the group kept are in the snapshot: they go unreported. Committed
            // ones are in the snapshot too under quorum / all (every later leader has them); under
            // async / semi-sync only those checked against the leader's log are known to be, so the
            // others are reported as possibly discarded.
            let checked = if self.awaiting_snapshot || !self.config.durability.can_lose_committed() {
                self.commit_index
            } else {
                self.follower.leader_match_index
            };
            let commit_index = self.commit_index;
            let discards_committed = commit_index > checked;
            let from = if discards_committed { checked.next() } else { self.log.first_index() };
            let removed = self.log.reset(meta.clone());
            if !removed.is_empty() || discards_committed {
                let discarded: Vec<LogEntry> =
                    removed.into_iter().filter(|entry| entry.index > checked && entry.index <= commit_index).collect();
                self.effects.push(Effect::TruncateLog { from, discarded, discards_committed });
            }
            self.persisted_index = meta.index;
            // A snapshot at or before the commit index that disagrees with the log there (see
            // `snapshot_needed`) replaces a state that applied entries the leader's log lacks: the
            // truncation above reports them. No `StateDiverged`: the state was replaced in this step.
            discards_committed
        };
        if meta.index > self.commit_index {
            self.set_commit_index(meta.index);
        } else {
            // Only after discarding committed entries (earlier, or just now) can the state go back to
            // an earlier point.
            assert!(
                self.awaiting_snapshot
                    || discards_committed
                    || meta.index == self.commit_index
                    || self.commit_rule_planted(),
                "snapshot goes back in time"
            );
            self.commit_index = meta.index;
            self.effects.push(Effect::Committed { index: meta.index });
        }
        self.awaiting_snapshot = false;
        if let Some(leader) = self.leader {
            self.follower.leader_match_index = self.follower.leader_match_index.max(meta.index);
            self.follower_advance_commit();
            self.follower.acked_index = LogIndex::ZERO;
            self.send_durable_ack(leader);
        }
    }
}
