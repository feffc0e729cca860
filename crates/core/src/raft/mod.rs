//! Single-leader replication: a Raft-style engine (terms, pre-vote, majority elections among voters,
//! log matching, learners, single-server membership changes, leadership transfer, read index,
//! snapshots) whose commit rule is the group's [`Durability`].
//!
//! The engine is sans-IO, like the rest of the core: inputs are method calls that carry the time,
//! outputs are [`Effect`]s the driver drains and performs in order.
//!
//! ```text
//!   driver                                   Raft
//!   ------                                   ----
//!   timer ──────────── tick(now) ─────────▶  election timeout, heartbeats, check-quorum
//!   peer ────── handle_message(now, from) ─▶  votes, appends, responses (fenced by term)
//!   client write ────── propose(now) ──────▶  leader appends   ─▶ AppendLog, Send(AppendEntries)
//!   log writer ── handle_persisted(now, i) ─▶  durable to i     ─▶ Send(ack) / Committed { index }
//!   client read ───── read_index(now) ─────▶  heartbeat round  ─▶ ReadReady / ReadFailed
//!   snapshot stream ─ handle_snapshot_installed ▶ log reset    ─▶ Committed, Send(ack)
//!   state snapshot ─────── compact(i) ─────▶  drop the in-memory prefix
//!
//!   effects, in order: PersistHardState (durable before anything after it) · AppendLog ·
//!   TruncateLog (with the discarded entries, for the rollback file) · Send · Committed ·
//!   ReadReady/ReadFailed · RoleChanged · SendSnapshot · StateDiverged (async / semi-sync only)
//! ```
//!
//! Rules followed, by section of the Raft paper (Ongaro & Ousterhout, 2014) and dissertation (Ongaro,
//! 2014): terms fence every message (§5.1); one vote per term, only for candidates whose log is at
//! least as up to date (§5.2, §5.4.1); log matching with conflict truncation (§5.3); a leader only
//! commits entries of its own term by counting, and appends a no-op at the start of its term
//! (§5.4.2, dissertation §6.4); pre-vote and leader stickiness (dissertation §9.6, §4.2.3);
//! check-quorum (§6.2); single-server membership changes in force once appended (§4.1); leadership
//! transfer (§3.10); read index (§6.4); snapshots (§5).
//!
//! Departures from plain Raft: an entry commits when the *durability mode* says so (`async`,
//! `semi-sync:K`, `quorum`, `all`), never before the leader has it durably, and a node only reports
//! commits its own log holds durably, so the state never gets ahead of the local log. Under `async`
//! and `semi-sync` a new leader may lack entries the old one committed; when the old leader rejoins
//! it discards them with `TruncateLog { discards_committed: true }` and takes a snapshot of the new
//! leader's state, since its own state applied them.

mod election;
mod log;
mod membership;
mod message;
mod progress;
mod quorum;
mod replication;
mod rng;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

pub use self::log::SnapshotMeta;
pub use self::membership::{Membership, MembershipChange, MembershipError};
pub use self::message::{AppendEntries, AppendEntriesResponse, AppendOutcome, Message, VoteRequest, VoteResponse};
pub use self::progress::ReplicationState;
pub use self::quorum::{Durability, ParseDurabilityError, majority};

use self::log::RaftLog;
use self::progress::Progress;
use self::rng::SplitMix64;
use crate::log::{EntryPayload, LogEntry};
use crate::types::{LogIndex, NodeId, Term, UnixMillis};

/// A bug planted on purpose, for the simulator (`chorus-sim`) to prove its checkers catch it. Never
/// set outside tests: [`RaftConfig::new`] leaves it `None`. Where an engine assertion guards exactly
/// the property a bug breaks, the bug bypasses that assertion, so that the checkers (not the engine's
/// own asserts) must catch it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The leader takes its own durable index as the commit point (as if `Durability::Async`),
    /// whatever the durability mode. Bypasses the assertion that no committed entry is ever discarded
    /// under `quorum` / `all`: such a discard is handled (and reported) as under `async`.
    CommitWithoutQuorum,
    /// A node grants a vote even when it already voted for another candidate in this term (the "one
    /// vote per term" check is skipped; a candidate still keeps its vote for itself). Bypasses the
    /// "second vote" and "two leaders in one term" assertions: an append from a second leader of the
    /// term makes a leader step down and a follower follow it.
    DoubleVote,
    /// `read_index` answers `ReadReady` at once, with the current commit index, when the leader heard
    /// from a majority of voters within the last minimum election timeout *by its own clock* (a lease,
    /// read from the check-quorum contact times), without any clock-drift bound, without a heartbeat
    /// round, and without waiting for an entry of its term to commit. (The engine has no lease path
    /// otherwise: correct reads always take the read-index round.)
    ReadLeaseWithoutClockBound,
    /// Followers commit up to `leader_commit.min(last matching appended)`, ignoring their durable
    /// index, and the leader counts its own log as durable up to its last index: entries may be
    /// applied and then lost in a crash. Bypasses the "commit beyond the durable log" assertion and
    /// the one that no committed entry is ever discarded under `quorum` / `all`.
    ApplyBeforeCommit,
    /// An `AppendEntries` of an older term is handled as if of the current term (not answered as
    /// stale) by a non-leader, which follows its sender: a deposed leader's appends are accepted and
    /// may truncate entries. Bypasses the "two leaders in one term" and "committed entries discarded
    /// under quorum" assertions.
    SkipTermCheckOnAppend,
}

/// Tunables of one engine. Every limit is a limit on something that could otherwise grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    pub node_id: NodeId,
    /// The commit rule. Every node of a group must use the same one.
    pub durability: Durability,
    /// A follower that hears from no leader for a random time in `[min, max]` starts an election.
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// How often a leader sends appends (empty ones if nothing is new) to every follower.
    pub heartbeat_interval_ms: u64,
    /// Most entries in one `AppendEntries`.
    pub entries_per_append_max: usize,
    /// Most `AppendEntries` with entries in flight to one follower while pipelining.
    pub appends_in_flight_max: usize,
    /// Most entries the leader holds uncommitted; `propose` refuses beyond.
    pub uncommitted_entries_max: u64,
    /// A snapshot stream that has not been acknowledged by then is given up and asked for again.
    pub snapshot_timeout_ms: u64,
    /// Seeds the election-timeout generator (mixed with the node id, so nodes given the same seed
    /// still draw different timeouts).
    pub seed: u64,
    /// Test only: a bug planted on purpose (see [`PlantedBug`]). `None` in every real use.
    #[doc(hidden)]
    pub planted_bug: Option<PlantedBug>,
}

impl RaftConfig {
    pub fn new(node_id: NodeId, seed: u64) -> RaftConfig {
        RaftConfig {
            node_id,
            durability: Durability::Quorum,
            election_timeout_ms_min: 1000,
            election_timeout_ms_max: 2000,
            heartbeat_interval_ms: 100,
            entries_per_append_max: 256,
            appends_in_flight_max: 32,
            uncommitted_entries_max: 65_536,
            snapshot_timeout_ms: 60_000,
            seed,
            planted_bug: None,
        }
    }

    fn validate(&self) {
        assert!(self.election_timeout_ms_min > 0, "zero election timeout");
        assert!(self.election_timeout_ms_min <= self.election_timeout_ms_max, "election timeout range is empty");
        assert!(self.heartbeat_interval_ms > 0, "zero heartbeat interval");
        assert!(self.heartbeat_interval_ms < self.election_timeout_ms_min, "heartbeats slower than elections");
        assert!(self.entries_per_append_max > 0, "appends cannot carry entries");
        assert!(self.appends_in_flight_max > 0, "no append may be in flight");
        assert!(self.uncommitted_entries_max > 0, "no entry may be proposed");
    }
}

/// What must survive a crash besides the log: the term and the vote in it (Raft figure 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// Where a node stood when it stopped, read back from disk by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoredState {
    pub hard_state: HardState,
    /// The snapshot point of the state (index 0 and the initial membership for a new group).
    pub snapshot: SnapshotMeta,
    /// The durable log after the snapshot point, without gaps.
    pub entries: Vec<LogEntry>,
    /// An index known to be committed, typically the state's applied index (at least the snapshot
    /// point). Entries up to here count as committed again, so a failover that discards them is seen.
    pub committed_index: LogIndex,
}

impl RestoredState {
    /// The first start of a member of a new group whose voters are `voters`.
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> RestoredState {
        let membership = Membership::with_voters(voters);
        RestoredState { snapshot: SnapshotMeta { membership, ..SnapshotMeta::default() }, ..RestoredState::default() }
    }

    /// The first start of a node that will join an existing group (added by a membership change): it
    /// knows no configuration, never campaigns, and learns everything from the leader.
    pub fn joining() -> RestoredState {
        RestoredState::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Asking for pre-votes: has not changed term yet.
    PreCandidate,
    Candidate,
    Leader,
}

/// Something the driver must do, in the order drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make the term and vote durable. Must be durable before any later effect is performed (a vote
    /// or an append sent before its term is on disk could be contradicted after a crash).
    PersistHardState {
        term: Term,
        voted_for: Option<NodeId>,
    },
    /// Append to the log (after any earlier `TruncateLog`), then report with `handle_persisted`.
    AppendLog {
        entries: Vec<LogEntry>,
    },
    /// Delete every log entry at `from` and after (those before the log's start are gone already).
    /// `discarded` lists the removed entries the group is known not to keep, or, for committed
    /// ones, not known to keep: the driver writes them to the rollback file. `discards_committed`
    /// (only under `async` / `semi-sync`, after a failover) says entries this node had committed,
    /// from `from` on, are lost or could not be checked against the leader's log: acknowledged
    /// writes, to count in a metric. Those already compacted into the state are not listed.
    TruncateLog {
        from: LogIndex,
        discarded: Vec<LogEntry>,
        discards_committed: bool,
    },
    /// The state applied committed entries after `kept` that the leader's log does not have (only
    /// under `async` / `semi-sync`). The driver stops serving reads from its state; the leader sends a
    /// snapshot (`SendSnapshot` on its side), and `handle_snapshot_installed` ends this. `kept` is
    /// `0` when the divergence reaches into the state's own snapshot.
    StateDiverged {
        kept: LogIndex,
    },
    Send {
        to: NodeId,
        message: Message,
    },
    /// Every entry up to `index` is committed and durable locally: apply them in order.
    Committed {
        index: LogIndex,
    },
    /// The read `read_id` may be served once the state has applied `index`.
    ReadReady {
        read_id: u64,
        index: LogIndex,
    },
    /// This node cannot serve the read linearizably; `leader_hint` may.
    ReadFailed {
        read_id: u64,
        leader_hint: Option<NodeId>,
    },
    RoleChanged {
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    },
    /// Stream a snapshot of the state to `to`: any committed state at or after `index` (the leader's
    /// snapshot point), with its metadata from [`Raft::snapshot_meta`], stamped with `leader_term`.
    /// The receiving driver checks [`Raft::snapshot_needed`], installs it, and calls
    /// [`Raft::handle_snapshot_installed`].
    SendSnapshot {
        to: NodeId,
        leader_term: Term,
        index: LogIndex,
    },
}

/// Why a proposal was refused. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("not the leader")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("leadership is moving to node {target}")]
    TransferInProgress { target: NodeId },
    #[error("{uncommitted} entries are uncommitted")]
    TooManyUncommitted { uncommitted: u64 },
    #[error("membership entries go through propose_membership_change")]
    MembershipPayload,
    #[error("a membership change is uncommitted, or the leader has not committed an entry of its term yet")]
    MembershipChangePending,
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("not the leader")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("node {target} is not a voter")]
    NotVoter { target: NodeId },
    #[error("leadership is already moving to node {target}")]
    InProgress { target: NodeId },
}

/// One follower as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    pub node_id: NodeId,
    pub voter: bool,
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: ReplicationState,
    /// When it last answered in this term: the driver shows the lag in milliseconds from it.
    pub last_contact: Option<UnixMillis>,
}

/// A picture of the engine for INFO, ROLE, `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node_id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub voted_for: Option<NodeId>,
    pub commit_index: LogIndex,
    pub persisted_index: LogIndex,
    pub last_index: LogIndex,
    pub last_term: Term,
    pub snapshot_index: LogIndex,
    pub membership: Membership,
    /// Empty unless leader.
    pub followers: Vec<FollowerStatus>,
    pub transfer_target: Option<NodeId>,
    pub awaiting_snapshot: bool,
}

/// A read-index request waiting for its heartbeat round (and for the leader's first commit).
#[derive(Debug, Clone, Copy)]
struct PendingRead {
    read_id: u64,
    seq: u64,
    /// The commit index when the leader knew it was current; `None` until an entry of its term commits.
    index: Option<LogIndex>,
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    target: NodeId,
    deadline: UnixMillis,
    timeout_now_sent: bool,
}

/// State a leader keeps for its term only.
#[derive(Debug)]
struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    /// The index of the no-op that opened the term: once it commits, so has everything before.
    term_start_index: LogIndex,
    heartbeat_due: UnixMillis,
    read_seq: u64,
    pending_reads: VecDeque<PendingRead>,
    transfer: Option<Transfer>,
}

/// State a follower keeps about the current leader; reset when the term or leader changes.
#[derive(Debug, Default, Clone, Copy)]
struct FollowerState {
    /// The log matches the leader's up to here (not necessarily durably).
    leader_match_index: LogIndex,
    /// The highest commit index the leader has sent.
    leader_commit: LogIndex,
    /// The highest durable index acknowledged to the leader.
    acked_index: LogIndex,
    /// The highest read-index round seen from the leader.
    read_seq: u64,
}

/// The replication engine of one node for one group.
#[derive(Debug)]
pub struct Raft {
    config: RaftConfig,
    rng: SplitMix64,
    term: Term,
    voted_for: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    commit_index: LogIndex,
    /// The local log is durable up to here.
    persisted_index: LogIndex,
    /// `None` until the first input with a time.
    election_deadline: Option<UnixMillis>,
    last_leader_contact: Option<UnixMillis>,
    /// Pre-vote or vote answers of the current round.
    votes: BTreeMap<NodeId, bool>,
    /// The current (or last) pre-vote round: the local time it started, or one past the previous
    /// round if the clock went back, so rounds of this life increase, and those of a restarted node
    /// follow its earlier life's unless its clock went back across the restart.
    pre_vote_round: u64,
    follower: FollowerState,
    /// Set after discarding committed entries: appends are refused until a snapshot is installed.
    awaiting_snapshot: bool,
    lead: Option<LeaderState>,
    effects: Vec<Effect>,
    /// The (role, term, leader) last reported with `RoleChanged`.
    reported: (Role, Term, Option<NodeId>),
}

impl Raft {
    /// An engine resuming from what the driver read back from disk.
    ///
    /// # Panics
    /// If the restored state is inconsistent: a log with gaps, a hard-state term behind the log, or a
    /// committed index beyond the log.
    pub fn new(config: RaftConfig, restored: RestoredState) -> Raft {
        config.validate();
        let log = RaftLog::new(restored.snapshot, restored.entries);
        let hard_state = restored.hard_state;
        assert!(hard_state.term >= log.last_term(), "hard state term {} behind the log", hard_state.term);
        let commit_index = restored.committed_index.max(log.snapshot().index);
        assert!(commit_index <= log.last_index(), "committed index {commit_index} beyond the log");
        let rng = SplitMix64::new(config.seed ^ config.node_id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Raft {
            rng,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            role: Role::Follower,
            leader: None,
            commit_index,
            persisted_index: log.last_index(),
            log,
            election_deadline: None,
            last_leader_contact: None,
            votes: BTreeMap::new(),
            pre_vote_round: 0,
            follower: FollowerState::default(),
            awaiting_snapshot: false,
            lead: None,
            effects: Vec::new(),
            reported: (Role::Follower, hard_state.term, None),
            config,
        }
    }

    /// Takes the effects produced so far, in the order they must be performed.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// Time passes: elections, heartbeats, check-quorum, transfer and snapshot timeouts.
    pub fn tick(&mut self, now: UnixMillis) {
        if self.role == Role::Leader {
            self.tick_leader(now);
        } else {
            self.tick_election(now);
        }
    }

    /// A message from a peer.
    pub fn handle_message(&mut self, now: UnixMillis, from: NodeId, message: Message) {
        assert_ne!(from, self.config.node_id, "a message from itself");
        let term = message.term();
        if term > self.term {
            match &message {
                // A pre-vote is about a term nobody has entered; a granted answer echoes it.
                Message::PreVote(_) => {}
                Message::PreVoteResponse(response) if response.granted => {}
                // Dissertation §4.2.3: while a leader is heard from, a vote request does not disrupt
                // it, unless the leader itself asked for the election.
                Message::RequestVote(request) if !request.leadership_transfer && self.in_leader_lease(now) => {
                    return;
                }
                // A transfer target has the leader's whole log (no entry is appended while a
                // transfer runs), so one whose log is behind this node's was told to campaign long
                // ago: a `TimeoutNow` delayed past the transfer's end, possibly to a node removed
                // since (it never gets its removal). It skipped pre-vote, and this node could not
                // grant it anyway: its term is not taken, leader heard from or not (seed 12680 with
                // a leader; seed 1006098 without: a member that took the term would depose a leader
                // it had merely lost contact with, by answering its next append).
                Message::RequestVote(request)
                    if request.leadership_transfer
                        && (request.last_log_term, request.last_log_index)
                            < (self.log.last_term(), self.log.last_index()) =>
                {
                    return;
                }
                Message::AppendEntries(_) | Message::TimeoutNow { .. } | Message::SnapshotRequired { .. } => {
                    self.become_follower(now, term, Some(from));
                }
                _ => self.become_follower(now, term, None),
            }
        } else if term < self.term {
            let planted = self.planted(PlantedBug::SkipTermCheckOnAppend) && self.role != Role::Leader;
            if !(planted && matches!(message, Message::AppendEntries(_))) {
                self.answer_stale(from, &message);
                return;
            }
        }
        match message {
            Message::PreVote(request) => self.handle_vote_request(now, from, request, true),
            Message::RequestVote(request) => self.handle_vote_request(now, from, request, false),
            Message::PreVoteResponse(response) => self.handle_pre_vote_response(now, from, response),
            Message::RequestVoteResponse(response) => self.handle_vote_response(now, from, response),
            Message::AppendEntries(append) => self.handle_append_entries(now, from, append),
            Message::AppendEntriesResponse(response) => self.handle_append_response(now, from, response),
            Message::TimeoutNow { .. } => self.handle_timeout_now(now, from),
            Message::SnapshotRequired { .. } => self.handle_snapshot_required(now, from),
        }
    }

    /// Appends `payload` as a new entry of the leader's term; returns its index. The entry may still
    /// be lost if this node loses leadership before it commits, so the driver remembers the term too
    /// and acknowledges the write once a `Committed` covers the index while [`Raft::term_at`] still
    /// gives that term there; a different term (or a `TruncateLog` listing it) means it was lost.
    pub fn propose(&mut self, now: UnixMillis, payload: EntryPayload) -> Result<LogIndex, ProposeError> {
        if matches!(payload, EntryPayload::Membership(_)) {
            return Err(ProposeError::MembershipPayload);
        }
        self.check_can_propose()?;
        let index = self.append_as_leader(payload);
        self.broadcast_append(now);
        self.leader_maybe_commit();
        Ok(index)
    }

    /// Proposes a single-server membership change. It takes effect on each node as soon as the node
    /// appends it (so at once on the leader); a second change is refused until this one commits.
    pub fn propose_membership_change(
        &mut self,
        now: UnixMillis,
        change: MembershipChange,
    ) -> Result<LogIndex, ProposeError> {
        self.propose_membership_change_with_address(now, change, None)
    }

    /// [`Raft::propose_membership_change`], recording where an added node listens for peers in the
    /// configuration (so every member, and every later leader, can reach it).
    pub fn propose_membership_change_with_address(
        &mut self,
        now: UnixMillis,
        change: MembershipChange,
        address: Option<String>,
    ) -> Result<LogIndex, ProposeError> {
        self.check_can_propose()?;
        let lead = self.lead.as_ref().ok_or(ProposeError::NotLeader { leader_hint: self.leader })?;
        // Dissertation §4.1 (and its 2015 erratum): one change at a time, and only once an entry of
        // this term has committed, so no uncommitted change of an earlier leader is still in play.
        // Both must also be held by a majority of voters, whatever the durability mode: under
        // `async` / `semi-sync` a committed change may be lost in a failover, and a change made on
        // top of it would leave nodes two configurations apart, whose majorities need not overlap
        // (two leaders in one term).
        let settled = self.commit_index.min(self.majority_durable_index());
        if self.log.membership_index() > settled || settled < lead.term_start_index {
            return Err(ProposeError::MembershipChangePending);
        }
        if change == MembershipChange::RemoveNode(self.config.node_id) {
            return Err(MembershipError::RemovingLeader(self.config.node_id).into());
        }
        let mut next = self.log.membership().apply(change)?;
        if let (MembershipChange::AddVoter(node) | MembershipChange::AddLearner(node), Some(address)) =
            (change, address)
        {
            next = next.with_address(node, address);
        }
        let index = self.append_as_leader(EntryPayload::Membership(next));
        self.sync_progress_with_membership(now, true);
        self.broadcast_append(now);
        self.leader_maybe_commit();
        Ok(index)
    }

    /// The local log is durable up to `index`, whose entry has term `term`. A report about an entry
    /// since replaced (another term at that index) is ignored.
    pub fn handle_persisted(&mut self, _now: UnixMillis, index: LogIndex, term: Term) {
        if index <= self.persisted_index || self.log.term_at(index) != Some(term) {
            return;
        }
        self.persisted_index = index;
        match self.role {
            Role::Leader => self.leader_maybe_commit(),
            Role::Follower => self.follower_persisted(),
            Role::PreCandidate | Role::Candidate => {}
        }
    }

    /// A linearizable read: answered with `ReadReady` once this node has confirmed it is still the
    /// leader (a heartbeat round acknowledged by a majority of voters) and has committed an entry of
    /// its term; `ReadFailed` on a non-leader or if leadership is lost first.
    pub fn read_index(&mut self, now: UnixMillis, read_id: u64) {
        if self.planted(PlantedBug::ReadLeaseWithoutClockBound) && self.quorum_active(now) {
            // The planted bug: a lease by this node's own clock, with no drift bound and no wait for
            // an entry of its term.
            self.effects.push(Effect::ReadReady { read_id, index: self.commit_index });
            return;
        }
        let Some(lead) = self.lead.as_mut() else {
            self.effects.push(Effect::ReadFailed { read_id, leader_hint: self.leader });
            return;
        };
        lead.read_seq += 1;
        let seq = lead.read_seq;
        let index = (self.commit_index >= lead.term_start_index).then_some(self.commit_index);
        lead.pending_reads.push_back(PendingRead { read_id, seq, index });
        self.process_reads();
        if self.lead.as_ref().is_some_and(|lead| !lead.pending_reads.is_empty()) {
            self.broadcast_heartbeat(now);
        }
    }

    /// Hands leadership to `target` (dissertation §3.10): proposals are refused meanwhile; once the
    /// target's log is durable up to the leader's last entry it is told to campaign at once. Gives up
    /// after an election timeout.
    pub fn transfer_leadership(&mut self, now: UnixMillis, target: NodeId) -> Result<(), TransferError> {
        let leader_hint = self.leader;
        let Some(lead) = self.lead.as_mut() else {
            return Err(TransferError::NotLeader { leader_hint });
        };
        if target == self.config.node_id {
            return Ok(());
        }
        if !self.log.membership().is_voter(target) {
            return Err(TransferError::NotVoter { target });
        }
        if let Some(transfer) = lead.transfer {
            return Err(TransferError::InProgress { target: transfer.target });
        }
        let deadline = UnixMillis(now.0 + self.config.election_timeout_ms_max);
        lead.transfer = Some(Transfer { target, deadline, timeout_now_sent: false });
        self.maybe_send_timeout_now(target);
        self.send_append(now, target, false);
        Ok(())
    }

    /// The driver has replaced the state with a snapshot at `meta`, streamed from the leader `from` of
    /// `leader_term` after a `SendSnapshot`, made it durable, and its log now starts after `meta.index`.
    /// Install only snapshots [`Raft::snapshot_needed`] accepts.
    ///
    /// # Panics
    /// If the snapshot was not needed: the state would have gone back in time.
    pub fn handle_snapshot_installed(&mut self, now: UnixMillis, from: NodeId, leader_term: Term, meta: SnapshotMeta) {
        assert!(
            self.snapshot_needed(from, leader_term, &meta),
            "snapshot at {} from {from} (term {leader_term}) installed at commit index {}, term {}",
            meta.index,
            self.commit_index,
            self.term
        );
        self.install_snapshot(now, meta);
    }

    /// Whether a snapshot at `meta` from `from`, leader of `leader_term`, would move this node forward:
    /// it comes from the leader this node follows in its term (fenced like a message), and it is newer
    /// than anything committed here, or this node discarded committed entries and waits for one, or
    /// this node's log holds another entry at the snapshot point. The last happens only under `async`
    /// / `semi-sync`, after a failover: the leader's log (whose committed prefix the snapshot is)
    /// disagrees with entries committed here, which installing the snapshot discards and reports.
    /// A snapshot point this node compacted already cannot be compared; it is refused, and the leader
    /// learns from the rejected appends that this state reaches past its log (`SnapshotRequired`).
    pub fn snapshot_needed(&self, from: NodeId, leader_term: Term, meta: &SnapshotMeta) -> bool {
        let from_leader = self.role == Role::Follower && leader_term == self.term && self.leader == Some(from);
        let conflicts = self.log.term_at(meta.index).is_some_and(|term| term != meta.term);
        from_leader && (self.awaiting_snapshot || meta.index > self.commit_index || conflicts)
    }

    /// The driver could not stream the snapshot to `to`; the leader asks again at the next heartbeat.
    pub fn handle_snapshot_failed(&mut self, _now: UnixMillis, to: NodeId) {
        let Some(progress) = self.lead.as_mut().and_then(|lead| lead.progress.get_mut(&to)) else {
            return;
        };
        if progress.state == ReplicationState::Snapshot {
            progress.become_probe(progress.match_index.next());
            progress.probe_sent = true;
        }
    }

    /// The state has a durable snapshot at `index`: drop the in-memory entries up to it. Followers
    /// that still need them get a snapshot instead.
    ///
    /// # Panics
    /// If `index` is not committed.
    pub fn compact(&mut self, index: LogIndex) {
        assert!(index <= self.commit_index, "compacting to {index}, past the commit index {}", self.commit_index);
        self.log.compact_to(index);
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    pub fn persisted_index(&self) -> LogIndex {
        self.persisted_index
    }

    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    pub fn membership(&self) -> &Membership {
        self.log.membership()
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    /// The term of the entry at `index`, if the in-memory log (or its snapshot point) has it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// Entries `from..=to` still in memory (fewer if some are compacted or beyond the log): the driver
    /// applies committed entries from here rather than reading its log back.
    pub fn entries(&self, from: LogIndex, to: LogIndex) -> Vec<LogEntry> {
        let from = from.max(self.log.first_index());
        if from > to {
            return Vec::new();
        }
        let count = usize::try_from(to.0 - from.0 + 1).unwrap_or(usize::MAX);
        self.log.entries_from(from, count)
    }

    /// The metadata of a snapshot of the state applied up to `index` (for `SendSnapshot`, and for the
    /// driver's own snapshots before `compact`). `None` if `index` is not committed or not in memory.
    pub fn snapshot_meta(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index > self.commit_index {
            return None;
        }
        self.log.meta_at(index)
    }

    pub fn status(&self) -> RaftStatus {
        let membership = self.log.membership().clone();
        let followers = self
            .lead
            .iter()
            .flat_map(|lead| lead.progress.iter())
            .map(|(node_id, progress)| FollowerStatus {
                node_id: *node_id,
                voter: membership.is_voter(*node_id),
                match_index: progress.match_index,
                next_index: progress.next_index,
                state: progress.state,
                last_contact: progress.last_contact,
            })
            .collect();
        RaftStatus {
            node_id: self.config.node_id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            voted_for: self.voted_for,
            commit_index: self.commit_index,
            persisted_index: self.persisted_index,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            snapshot_index: self.log.snapshot().index,
            membership,
            followers,
            transfer_target: self.lead.as_ref().and_then(|lead| lead.transfer.map(|transfer| transfer.target)),
            awaiting_snapshot: self.awaiting_snapshot,
        }
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        let Some(lead) = self.lead.as_ref() else {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        };
        if let Some(transfer) = lead.transfer {
            return Err(ProposeError::TransferInProgress { target: transfer.target });
        }
        let uncommitted = self.log.last_index().0 - self.commit_index.0;
        if uncommitted >= self.config.uncommitted_entries_max {
            return Err(ProposeError::TooManyUncommitted { uncommitted });
        }
        Ok(())
    }

    fn planted(&self, bug: PlantedBug) -> bool {
        self.config.planted_bug == Some(bug)
    }

    /// Whether a planted bug breaks the commit rule, so that entries committed here may be missing
    /// from a later leader's log even under `quorum` / `all`: the assertions that guard exactly that
    /// are bypassed, and the engine discards them as it would under `async`.
    fn commit_rule_planted(&self) -> bool {
        matches!(
            self.config.planted_bug,
            Some(PlantedBug::CommitWithoutQuorum | PlantedBug::ApplyBeforeCommit | PlantedBug::SkipTermCheckOnAppend)
        )
    }

    fn is_voter(&self) -> bool {
        self.log.membership().is_voter(self.config.node_id)
    }

    /// Records a new term (and the vote in it) and asks the driver to make them durable.
    fn set_hard_state(&mut self, term: Term, voted_for: Option<NodeId>) {
        assert!(term >= self.term, "term goes back from {} to {term}", self.term);
        if term == self.term && !self.planted(PlantedBug::DoubleVote) {
            // §5.2: at most one vote per term.
            assert!(
                self.voted_for.is_none() || self.voted_for == voted_for,
                "second vote in term {term}: {:?} then {voted_for:?}",
                self.voted_for
            );
        }
        self.term = term;
        self.voted_for = voted_for;
        // A hard state not yet followed by anything that depends on it (role reports do not) is
        // replaced rather than written twice.
        let pending = self.effects.iter().rposition(|effect| !matches!(effect, Effect::RoleChanged { .. }));
        if let Some(at) = pending
            && let Effect::PersistHardState { .. } = self.effects[at]
        {
            self.effects[at] = Effect::PersistHardState { term, voted_for };
            return;
        }
        self.effects.push(Effect::PersistHardState { term, voted_for });
    }

    fn set_commit_index(&mut self, index: LogIndex) {
        assert!(index > self.commit_index, "commit index goes back from {} to {index}", self.commit_index);
        assert!(
            index <= self.persisted_index || self.planted(PlantedBug::ApplyBeforeCommit),
            "committing {index}, not durable here (durable to {})",
            self.persisted_index
        );
        assert!(index <= self.log.last_index(), "committing {index}, beyond the log");
        self.commit_index = index;
        self.effects.push(Effect::Committed { index });
    }

    /// Emits `RoleChanged` if the role, term or known leader changed since last reported.
    fn report_role(&mut self) {
        let now = (self.role, self.term, self.leader);
        if now != self.reported {
            self.reported = now;
            self.effects.push(Effect::RoleChanged { role: self.role, term: self.term, leader: self.leader });
        }
    }

    /// Answers a message from an older term, so a deposed leader or stale candidate learns the term.
    fn answer_stale(&mut self, from: NodeId, message: &Message) {
        let term = self.term;
        let reply = match message {
            Message::AppendEntries(append) => Message::AppendEntriesResponse(AppendEntriesResponse {
                term,
                read_seq: append.read_seq,
                outcome: AppendOutcome::Rejected {
                    prev_log_index: append.prev_log_index,
                    hint_index: self.log.last_index(),
                    hint_term: self.log.last_term(),
                },
            }),
            Message::PreVote(request) => {
                Message::PreVoteResponse(VoteResponse { term, granted: false, round: request.round })
            }
            Message::RequestVote(request) => {
                Message::RequestVoteResponse(VoteResponse { term, granted: false, round: request.round })
            }
            Message::PreVoteResponse(_)
            | Message::RequestVoteResponse(_)
            | Message::AppendEntriesResponse(_)
            | Message::TimeoutNow { .. }
            | Message::SnapshotRequired { .. } => return,
        };
        self.effects.push(Effect::Send { to: from, message: reply });
    }
}
