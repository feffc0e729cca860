//! The replica: the state machine a node runs for its replication group.
//!
//! Today it implements the standalone mode (one voter, which commits an entry as soon as its own log
//! has it durably). The single-leader, leaderless and multi-leader modes replace only the commit
//! rule and add peer messages; the contract with the driver stays the same:
//!
//! - inputs: [`Replica::submit`] (a client command), [`Replica::handle_persisted`] (the log is durable
//!   up to an index), [`Replica::handle_applied`] (the state has applied up to an index),
//!   [`Replica::tick`] (time passes);
//! - outputs: [`Effect`]s, drained with [`Replica::drain_effects`]. The driver performs them in order:
//!   `Persist` before the `Apply` of the same entries, `Apply` in log order.

use std::collections::VecDeque;

use chorus_resp::Reply;

use crate::command::KvCommand;
use crate::kv::{KvMachine, KvStats};
use crate::log::{EntryPayload, LogEntry, WriteOp};
use crate::state::StateView;
use crate::types::{LogIndex, NodeId, Term, UnixMillis};

/// Identifies a client request so its reply finds its way back: the connection and the request's
/// position on it. Opaque to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    pub connection: u64,
    pub sequence: u64,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Append these entries to the log, then report with `handle_persisted` once they are as durable
    /// as the fsync policy promises.
    Persist(Vec<LogEntry>),
    /// Apply these committed entries to the key-value state, in order, then report with
    /// `handle_applied`.
    Apply(Vec<LogEntry>),
    /// Send this reply to the client that made the request.
    Reply { request: RequestId, reply: Reply },
    /// (Replication group) make the term and vote durable before performing any later effect.
    PersistHardState { term: Term, voted_for: Option<NodeId> },
    /// (Replication group) delete log entries from `from` on, durably, before later appends; write
    /// `discarded` to the rollback file; `discards_committed` means acknowledged writes were lost
    /// (possible only under async / semi-sync durability): count it and warn.
    TruncateLog { from: LogIndex, discarded: Vec<LogEntry>, discards_committed: bool },
    /// (Replication group) the applied state holds entries the leader's log lacks (async /
    /// semi-sync failover); it must be replaced by a snapshot.
    StateDiverged { kept: LogIndex },
    /// (Replication group) send `message` to peer `to` (best effort).
    Send { to: NodeId, message: crate::raft::Message },
    /// (Replication group) peer `to` needs a snapshot of the state at `index` or later (see
    /// `raft::Effect::SendSnapshot`), stamped with `leader_term`.
    SnapshotNeeded { to: NodeId, leader_term: Term, index: LogIndex },
    /// (Replication group) the configuration in force changed (a membership entry was appended or
    /// truncated, or a snapshot installed): the driver updates whom it dials.
    MembershipChanged(crate::raft::Membership),
    /// (Replication group) replace the applied state with the snapshot the driver received and
    /// made durable at `index` (after applying what it was sent before), then report with
    /// `handle_state_replaced`; drop log entries up to `index` and start the log after it.
    ReplaceState { index: LogIndex, term: Term },
}

/// Why follower reads wait while a received snapshot replaces the state.
const STATE_BEING_REPLACED: &str = "this replica is installing a snapshot from the leader";

/// How long a follower read waits for the replica to reach its session's position.
const REPLICA_READ_WAIT_MS_MAX: u64 = 1_000;

/// A read on a follower (READONLY), waiting for the state to reach `min_index`.
#[derive(Debug)]
struct ReplicaRead {
    min_index: LogIndex,
    deadline: UnixMillis,
    request: RequestId,
    command: KvCommand,
}

/// A WAIT: `replicas` followers must have `index` durable before `deadline` (None: no deadline).
#[derive(Debug)]
struct Wait {
    index: LogIndex,
    replicas: u64,
    deadline: Option<UnixMillis>,
    request: RequestId,
}

/// A reply waiting for an index to commit.
#[derive(Debug)]
struct HeldReply {
    index: LogIndex,
    /// For a write: the term it was proposed in (it counts only if its entry commits in that term).
    term: Option<Term>,
    request: RequestId,
    reply: Reply,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    /// Most keys active expiry deletes per tick, so one tick never stalls the node.
    pub expire_keys_per_tick_max: usize,
    /// Bounded staleness for follower reads: a follower that has not heard from a leader for longer
    /// than this refuses them (`None`: no bound, a partitioned follower serves what it has).
    pub replica_read_staleness_max_ms: Option<u64>,
    /// Multi-leader mode: a client write on the leader is proposed as a multi-leader change
    /// (`EntryPayload::MultiLeader(MlEntry::Local)`) stamped by a hybrid logical clock, INCR and
    /// friends as increments; FLUSHALL / FLUSHDB are refused.
    pub multi_leader: bool,
}

impl ReplicaConfig {
    pub fn new(node_id: NodeId) -> ReplicaConfig {
        ReplicaConfig {
            node_id,
            expire_keys_per_tick_max: 200,
            replica_read_staleness_max_ms: None,
            multi_leader: false,
        }
    }
}

/// Where the durable log and state stood when the node started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    pub last_index: LogIndex,
    pub last_term: Term,
    /// The state has applied every entry up to here (the driver replays the log before starting).
    pub applied_index: LogIndex,
}

/// Counters and positions reported by INFO and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaStatus {
    pub term: Term,
    pub last_index: LogIndex,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub held_replies: usize,
    pub pending_keys: usize,
    pub kv: KvStats,
    /// `None` when standalone.
    pub role: Option<crate::raft::Role>,
    pub leader: Option<NodeId>,
    /// A leader that has applied its term's no-op and serves commands (else it answers TRYAGAIN).
    pub leader_ready: bool,
    /// Log entries discarded (written to the rollback file) since start.
    pub discarded_entries: u64,
    /// Failovers that discarded acknowledged writes (async / semi-sync only).
    pub discarded_committed_events: u64,
}

#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    term: Term,
    kv: KvMachine,
    last_index: LogIndex,
    commit_index: LogIndex,
    applied_index: LogIndex,
    /// Entries proposed and not yet handed to the driver for applying, in index order.
    unapplied: VecDeque<LogEntry>,
    /// Replies waiting for an index to commit, in non-decreasing index order (a reply that read a
    /// pending write waits for the last index proposed before it, which keeps this a queue).
    held_replies: VecDeque<HeldReply>,
    effects: Vec<Effect>,
    /// The replication group this replica belongs to; `None` when it runs standalone.
    group: Option<group::Group>,
    /// Set once storage has failed; see [`Replica::fail`].
    failure: Option<String>,
    /// Follower reads waiting until the state reaches their session's position.
    replica_reads: VecDeque<ReplicaRead>,
    /// WAIT commands waiting for followers to acknowledge an index.
    waits: Vec<Wait>,
    /// Why follower reads cannot be served from the applied state right now: it holds entries the
    /// leader's log lacks (async failover), or a snapshot is replacing it.
    state_unusable: Option<&'static str>,
    /// Multi-leader mode: the clock that stamps local changes (see `ReplicaConfig::multi_leader`).
    ml_clock: Option<crate::leaderless::Hlc>,
}

impl Replica {
    pub fn new(config: ReplicaConfig, recovered: Recovered) -> Replica {
        assert!(recovered.applied_index <= recovered.last_index, "state is ahead of the log");
        // Standalone: whatever survived in the log was durable, hence committed.
        let ml_clock = config.multi_leader.then(|| crate::leaderless::Hlc::new(config.node_id));
        Replica {
            ml_clock,
            config,
            term: recovered.last_term.max(Term(1)),
            kv: KvMachine::new(),
            last_index: recovered.last_index,
            commit_index: recovered.last_index,
            applied_index: recovered.applied_index,
            unapplied: VecDeque::new(),
            held_replies: VecDeque::new(),
            effects: Vec::new(),
            failure: None,
            group: None,
            replica_reads: VecDeque::new(),
            waits: Vec::new(),
            state_unusable: None,
        }
    }

    /// A replica in a replication group run by `raft`, whose state has applied up to
    /// `applied_index` (its snapshot point: the log after it is re-applied as it commits).
    pub fn in_group(config: ReplicaConfig, raft: crate::raft::Raft, applied_index: LogIndex) -> Replica {
        let last_index = raft.last_index();
        let term = raft.term();
        let mut replica = Replica::new(
            config,
            Recovered { last_index: last_index.max(applied_index), last_term: term, applied_index },
        );
        replica.commit_index = applied_index;
        replica.term = term;
        replica.group = Some(group::Group::new(raft, applied_index));
        replica
    }

    /// Why the replica refuses commands, if storage has failed.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Keys, and keys with an expiry, in the latest view: counting writes proposed but not yet
    /// applied (INFO keyspace).
    pub fn keyspace_counts<S: StateView>(&self, state: &S) -> (u64, u64) {
        (self.kv.key_count(state).unwrap_or(0), self.kv.expiring_key_count(state).unwrap_or(0))
    }

    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            term: self.term,
            last_index: self.last_index,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            held_replies: self.held_replies.len(),
            pending_keys: self.kv.pending_keys(),
            kv: self.kv.stats,
            role: self.group.as_ref().map(group::Group::role),
            leader: self.group.as_ref().and_then(group::Group::leader),
            leader_ready: self.group.as_ref().is_some_and(group::Group::leader_ready),
            discarded_entries: self.group.as_ref().map_or(0, |group| group.discarded_entries),
            discarded_committed_events: self.group.as_ref().map_or(0, |group| group.discarded_committed_events),
        }
    }

    /// Takes the effects produced so far, in the order they must be performed.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// A client command. Its reply comes out as an `Effect::Reply`, at once or once what it depends
    /// on has committed.
    pub fn submit<S: StateView>(&mut self, now: UnixMillis, request: RequestId, command: KvCommand, state: &S) {
        if let Some(reason) = &self.failure {
            let reply =
                Reply::Error(format!("MISCONF the node cannot write to its disk and refuses commands: {reason}"));
            self.effects.push(Effect::Reply { request, reply });
            return;
        }
        if let KvCommand::Wait { replicas, timeout_ms } = command {
            let deadline = (timeout_ms > 0).then(|| UnixMillis(now.0.saturating_add(timeout_ms)));
            self.waits.push(Wait { index: self.last_index, replicas, deadline, request });
            self.answer_waits(now);
            return;
        }
        if self.group.is_some() {
            self.submit_to_group(now, request, command, state);
            return;
        }
        let execution = self.kv.execute(now, &command, state);
        let wait_for = if execution.ops.is_empty() { execution.read_barrier } else { self.propose(execution.ops) };
        self.reply_after(wait_for, request, execution.reply);
    }

    /// A command on a connection in READONLY mode (Redis Cluster's replica reads), with the
    /// connection's session position `min_index` (from `CHORUS.SESSION`). On a follower a read is
    /// served from the applied state, possibly stale but never older than `min_index`: it waits
    /// (at most a second) until the state has applied that far. That gives read-your-writes and
    /// monotonic reads across replicas to clients that carry their token. A write is refused with
    /// Redis's `-READONLY`. On the leader, or standalone, it is an ordinary command.
    pub fn submit_replica_read<S: StateView>(
        &mut self,
        now: UnixMillis,
        request: RequestId,
        command: KvCommand,
        state: &S,
        min_index: LogIndex,
    ) {
        let follower = self.group.as_ref().is_some_and(|group| group.role() != crate::raft::Role::Leader);
        if !follower || self.failure.is_some() || matches!(command, KvCommand::Wait { .. }) {
            self.submit(now, request, command, state);
            return;
        }
        if command.is_write() {
            let reply = Reply::Error("READONLY You can't write against a read only replica.".into());
            self.effects.push(Effect::Reply { request, reply });
            return;
        }
        if let Some(reason) = self.replica_read_refusal(now) {
            self.effects.push(Effect::Reply { request, reply: Reply::Error(format!("TRYAGAIN {reason}")) });
            return;
        }
        let read = ReplicaRead { min_index, deadline: UnixMillis(now.0 + REPLICA_READ_WAIT_MS_MAX), request, command };
        if self.applied_index >= min_index && self.replica_reads.is_empty() && self.state_unusable.is_none() {
            self.serve_replica_read(now, read, state);
        } else {
            self.replica_reads.push_back(read);
        }
    }

    fn serve_replica_read<S: StateView>(&mut self, now: UnixMillis, read: ReplicaRead, state: &S) {
        let execution = self.kv.execute(now, &read.command, state);
        self.effects.push(Effect::Reply { request: read.request, reply: execution.reply });
    }

    /// Serves the follower reads whose position the state has reached; refuses those that waited too
    /// long (in order: a connection's replies must not overtake each other).
    fn serve_waiting_replica_reads<S: StateView>(&mut self, now: UnixMillis, state: &S) {
        while let Some(read) = self.replica_reads.pop_front() {
            if self.applied_index >= read.min_index && self.state_unusable.is_none() {
                self.serve_replica_read(now, read, state);
            } else if now >= read.deadline {
                let reply = Reply::Error(format!(
                    "TRYAGAIN this replica has applied up to {} but the session needs {}",
                    self.applied_index, read.min_index
                ));
                self.effects.push(Effect::Reply { request: read.request, reply });
            } else {
                self.replica_reads.push_front(read);
                break;
            }
        }
    }

    /// Followers (voters and learners) that have `index` durable: what WAIT counts. Standalone: none.
    fn replicas_at(&self, index: LogIndex) -> u64 {
        self.group_status()
            .map_or(0, |status| status.followers.iter().filter(|follower| follower.match_index >= index).count() as u64)
    }

    /// Answers the WAITs that are satisfied or past their deadline (Redis: the count reached so far).
    fn answer_waits(&mut self, now: UnixMillis) {
        if self.waits.is_empty() {
            return;
        }
        let waits = std::mem::take(&mut self.waits);
        for wait in waits {
            let acknowledged = self.replicas_at(wait.index);
            let expired = wait.deadline.is_some_and(|deadline| now >= deadline);
            // A standalone node or a follower has no replicas to wait for: answer at once.
            let nothing_to_wait_for = self.group_status().is_none_or(|status| status.followers.is_empty());
            if acknowledged >= wait.replicas || expired || nothing_to_wait_for {
                let reply = Reply::Integer(i64::try_from(acknowledged).unwrap_or(i64::MAX));
                self.effects.push(Effect::Reply { request: wait.request, reply });
            } else {
                self.waits.push(wait);
            }
        }
    }

    /// The replication engine's picture (INFO, ROLE, WAIT), when in a group.
    pub fn group_status(&self) -> Option<crate::raft::RaftStatus> {
        self.group.as_ref().map(|group| group.raft.status())
    }

    /// Where a peer serves clients, if it has said.
    pub fn peer_client_addr(&self, peer: NodeId) -> Option<String> {
        self.group.as_ref().and_then(|group| group.client_addr(peer))
    }

    /// The position a session token should carry: on the leader the last index proposed (every
    /// write this connection sent before asking is at or below it, even one still in flight), on a
    /// follower the applied index (what its reads reflected).
    pub fn session_position(&self) -> LogIndex {
        match self.group.as_ref() {
            Some(group) if group.role() != crate::raft::Role::Leader => self.applied_index,
            _ => self.last_index,
        }
    }

    /// The log is durable up to `index`, whose entry has `term` (per the fsync policy).
    pub fn handle_persisted(&mut self, now: UnixMillis, index: LogIndex, term: Term) {
        if self.failure.is_some() {
            return;
        }
        if self.group.is_some() {
            self.persisted_in_group(now, index, term);
            return;
        }
        assert!(index <= self.last_index, "persisted an index never proposed");
        if index <= self.commit_index {
            return;
        }
        self.commit_index = index;
        while self.held_replies.front().is_some_and(|held| held.index <= self.commit_index) {
            if let Some(held) = self.held_replies.pop_front() {
                self.effects.push(Effect::Reply { request: held.request, reply: held.reply });
            }
        }
        let mut committed = Vec::new();
        while self.unapplied.front().is_some_and(|entry| entry.index <= self.commit_index) {
            if let Some(entry) = self.unapplied.pop_front() {
                committed.push(entry);
            }
        }
        if !committed.is_empty() {
            self.effects.push(Effect::Apply(committed));
        }
    }

    /// Storage failed (the log or the state can no longer be written): every entry not yet durable
    /// is abandoned and every reply still waiting becomes an error carrying `reason` (a writer cannot
    /// know whether its write survived, and is told so rather than left waiting). From then on every
    /// command is refused: the pending view is gone, so reads could miss committed writes not yet
    /// applied. Only a restart (which recovers from the log) brings the replica back.
    pub fn fail(&mut self, reason: &str) {
        if self.failure.is_some() {
            return;
        }
        self.failure = Some(reason.to_string());
        for held in std::mem::take(&mut self.held_replies) {
            self.effects.push(Effect::Reply { request: held.request, reply: Reply::err(reason) });
        }
        self.unapplied.retain(|entry| entry.index <= self.commit_index);
        self.last_index = self.commit_index;
        self.kv.discard_pending();
    }

    /// The key-value state has applied every entry up to `index`.
    pub fn handle_applied(&mut self, index: LogIndex) {
        if self.failure.is_some() {
            return;
        }
        if self.state_unusable == Some(STATE_BEING_REPLACED) {
            // Applies sent before a snapshot install, to the state being replaced.
            return;
        }
        assert!(index <= self.commit_index, "applied an entry that is not committed");
        if index <= self.applied_index {
            return;
        }
        self.applied_index = index;
        self.kv.on_applied(index);
        self.applied_in_group();
    }

    /// Time passes: deletes keys whose expiry has come (through the log, so every replica deletes
    /// the same keys at the same point in the log).
    pub fn tick<S: StateView>(&mut self, now: UnixMillis, state: &S) {
        if self.failure.is_some() {
            return;
        }
        self.tick_group(now);
        self.serve_waiting_replica_reads(now, state);
        self.answer_waits(now);
        if !self.may_propose() {
            return;
        }
        let candidates = match state.expired_keys(now, self.config.expire_keys_per_tick_max) {
            Ok(keys) => keys,
            // A read error here is retried next tick; the node reports storage errors elsewhere.
            Err(_) => return,
        };
        let mut deletes = Vec::new();
        for key in candidates {
            // A key with a write in flight is left alone: that write either replaced or removed it,
            // and the next tick re-checks once it is applied.
            if self.kv.has_pending(&key) {
                continue;
            }
            if let Ok(Some(stored)) = state.get(&key)
                && stored.is_expired(now)
            {
                deletes.push(WriteOp::Delete { key });
            }
        }
        if !deletes.is_empty() {
            self.kv.stats.expired_keys += deletes.len() as u64;
            if self.group.is_some() {
                self.propose_to_group(now, deletes);
            } else {
                self.propose(deletes);
            }
        }
    }

    fn propose(&mut self, ops: Vec<WriteOp>) -> LogIndex {
        let index = self.last_index.next();
        self.kv.record_pending(index, &ops);
        let entry = LogEntry { index, term: self.term, payload: EntryPayload::Write(ops) };
        self.unapplied.push_back(entry.clone());
        self.effects.push(Effect::Persist(vec![entry]));
        self.last_index = index;
        index
    }

    fn reply_after(&mut self, index: LogIndex, request: RequestId, reply: Reply) {
        if index <= self.commit_index {
            self.effects.push(Effect::Reply { request, reply });
        } else {
            // Waiting for the last proposed index (not just `index`) keeps the queue ordered; it
            // is at most one group commit later.
            let wait_for = self.last_index.max(index);
            assert!(self.held_replies.back().is_none_or(|held| held.index <= wait_for), "held replies out of order");
            self.held_replies.push_back(HeldReply { index: wait_for, term: None, request, reply });
        }
    }

    /// Holds a write's reply until its entry commits in the term it was proposed in.
    fn hold_write(&mut self, index: LogIndex, term: Term, request: RequestId, reply: Reply) {
        assert!(self.held_replies.back().is_none_or(|held| held.index <= index), "held replies out of order");
        self.held_replies.push_back(HeldReply { index, term: Some(term), request, reply });
    }
}

mod group;
#[cfg(test)]
mod tests;
