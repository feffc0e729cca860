//! The replica in a replication group: the Raft engine decides what commits, the replica keeps the
//! key-value layer (pending overlay, held replies) and turns engine effects into driver effects.
//!
//! Linearizability on the leader rests on three rules:
//! - a new leader serves nothing until it has applied every entry up to the no-op of its own term
//!   (then every committed entry of earlier terms is in its state, and everything newer goes
//!   through its overlay);
//! - a write's reply leaves when its entry commits *with the term it was proposed in* (an entry
//!   replaced by a later leader's is reported as not applied);
//! - a read's reply leaves once a read-index round has confirmed that the node was still the leader
//!   after the read arrived, and once the pending writes it observed have committed.

use std::collections::BTreeMap;

use chorus_resp::Reply;

use super::{Effect, Replica, RequestId};
use crate::command::KvCommand;
use crate::leaderless::Hlc;
use crate::log::{EntryPayload, WriteOp};
use crate::multileader::{MlEntry, MultiLeaderState};
use crate::raft::{self, Membership, MembershipChange, ProposeError, Raft, Role, SnapshotMeta};
use crate::slot::Slot;
use crate::state::StateView;
use crate::types::{LogIndex, NodeId, Term, UnixMillis};

/// Why follower reads are refused after an async failover left this state ahead of the leader's log.
const STATE_DIVERGED: &str =
    "this replica's state holds writes the new leader discarded; it waits for the leader's snapshot";

/// A read executed, waiting for its leadership confirmation.
#[derive(Debug)]
struct WaitingRead {
    read_barrier: LogIndex,
    request: RequestId,
    reply: Reply,
}

/// The replication-group part of a replica.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) raft: Raft,
    role: Role,
    leader: Option<NodeId>,
    /// The leader's no-op of its term: nothing is served before it is applied.
    leader_noop_index: Option<LogIndex>,
    leader_ready: bool,
    /// Read-index rounds in flight, each confirming a batch of reads.
    reads: BTreeMap<u64, Vec<WaitingRead>>,
    next_read_id: u64,
    /// Reads that arrived while a round was in flight: they need a round that starts after them,
    /// so they wait for the current one to end and share the next (one heartbeat per batch).
    next_read_batch: Vec<WaitingRead>,
    /// The latest time an input brought (for starting a read round from an engine effect).
    last_now: UnixMillis,
    /// Committed entries handed to the driver for applying, up to here.
    apply_requested: LogIndex,
    /// Where peers serve clients, learnt from their hellos: redirects name the leader's.
    client_addrs: BTreeMap<NodeId, String>,
    pub(super) discarded_entries: u64,
    pub(super) discarded_committed_events: u64,
    /// The configuration last reported to the driver (`MembershipChanged`).
    reported_membership: Membership,
    /// When a message from the leader this node follows last arrived (bounded staleness).
    last_leader_contact: Option<UnixMillis>,
}

/// How far behind the leader's log a learner may be when promoted: within one heartbeat's worth of
/// writes, so the group does not wait on a voter that is still catching up.
const PROMOTE_LAG_ENTRIES_MAX: u64 = 1_000;

impl Group {
    pub(super) fn new(raft: Raft, applied_index: LogIndex) -> Group {
        Group {
            role: raft.role(),
            leader: raft.leader(),
            raft,
            leader_noop_index: None,
            leader_ready: false,
            reads: BTreeMap::new(),
            next_read_id: 1,
            next_read_batch: Vec::new(),
            last_now: UnixMillis(0),
            apply_requested: applied_index,
            client_addrs: BTreeMap::new(),
            discarded_entries: 0,
            discarded_committed_events: 0,
            reported_membership: Membership::default(),
            last_leader_contact: None,
        }
    }

    pub(super) fn role(&self) -> Role {
        self.role
    }

    pub(super) fn leader_ready(&self) -> bool {
        self.role == Role::Leader && self.leader_ready
    }

    pub(super) fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub(super) fn client_addr(&self, peer: NodeId) -> Option<String> {
        self.client_addrs.get(&peer).cloned()
    }

    /// Starts a read-index round confirming `batch` (the engine answers `ReadReady` / `ReadFailed`).
    fn start_read_round(&mut self, batch: Vec<WaitingRead>) {
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        self.reads.insert(read_id, batch);
        self.raft.read_index(self.last_now, read_id);
    }

    /// After a round ends: the reads that waited for it get the next one.
    fn start_next_read_round(&mut self) {
        if self.reads.is_empty() && !self.next_read_batch.is_empty() {
            let batch = std::mem::take(&mut self.next_read_batch);
            self.start_read_round(batch);
        }
    }

    /// The error a node that cannot serve a command answers with: Redis Cluster's `MOVED` naming the
    /// leader's client address when it is known, so cluster-aware clients follow it by themselves.
    fn redirect(&self, command: Option<&KvCommand>) -> Reply {
        let slot = command.and_then(KvCommand::first_key).map_or(Slot(0), |key| Slot::of_key(key));
        match self.leader.and_then(|leader| self.client_addrs.get(&leader)) {
            Some(addr) if self.role != Role::Leader => Reply::Error(format!("MOVED {} {addr}", slot.0)),
            _ if self.role == Role::Leader => Reply::Error("TRYAGAIN the new leader is catching up".into()),
            _ => Reply::Error("TRYAGAIN no leader is known yet".into()),
        }
    }
}

/// Multi-leader mode: the log payload of a client write on the leader, a local change stamped by
/// `clock` (which first resumes above the largest timestamp the state has applied, so a new leader
/// never stamps below its predecessor). INCR/DECR/INCRBY/DECRBY become increments; FLUSHALL and
/// FLUSHDB are refused with an error reply.
fn multileader_payload<S: StateView>(
    clock: &mut Hlc,
    now: UnixMillis,
    command: &KvCommand,
    ops: &[WriteOp],
    state: &S,
) -> Result<EntryPayload, Reply> {
    let incr_delta = match command {
        KvCommand::IncrBy { delta, .. } => Some(*delta),
        _ => None,
    };
    let ops = MultiLeaderState::change_ops(ops, incr_delta).map_err(|refusal| Reply::err(refusal.to_string()))?;
    if let Some(applied) = state.ml_last_timestamp()
        && applied.packed() >= clock.last().packed()
    {
        *clock = Hlc::resumed(clock.node(), crate::leaderless::clock::DRIFT_MS_MAX_DEFAULT, applied);
    }
    // The physical clock is the driver's reading; beyond the year 10889 it is not a clock.
    let physical = UnixMillis(now.0.min((1 << 48) - 1));
    Ok(EntryPayload::MultiLeader(MlEntry::Local { timestamp: clock.now(physical), ops }))
}

impl Replica {
    pub(super) fn submit_to_group<S: StateView>(
        &mut self,
        now: UnixMillis,
        request: RequestId,
        command: KvCommand,
        state: &S,
    ) {
        let Some(group) = self.group.as_mut() else { return };
        if group.role != Role::Leader || !group.leader_ready {
            let reply = group.redirect(Some(&command));
            self.effects.push(Effect::Reply { request, reply });
            return;
        }
        let execution = self.kv.execute(now, &command, state);
        if execution.ops.is_empty() {
            group.last_now = now;
            let read = WaitingRead { read_barrier: execution.read_barrier, request, reply: execution.reply };
            if group.reads.is_empty() {
                group.start_read_round(vec![read]);
            } else {
                group.next_read_batch.push(read);
            }
        } else {
            let payload = match self.ml_clock.as_mut() {
                None => EntryPayload::Write(execution.ops.clone()),
                Some(clock) => match multileader_payload(clock, now, &command, &execution.ops, state) {
                    Ok(payload) => payload,
                    Err(reply) => {
                        self.effects.push(Effect::Reply { request, reply });
                        return;
                    }
                },
            };
            match group.raft.propose(now, payload) {
                Ok(index) => {
                    let term = group.raft.term();
                    self.kv.record_pending(index, &execution.ops);
                    self.hold_write(index, term, request, execution.reply);
                }
                Err(error) => {
                    let reply = match error {
                        ProposeError::NotLeader { .. } | ProposeError::TransferInProgress { .. } => {
                            group.redirect(Some(&command))
                        }
                        other => Reply::Error(format!("TRYAGAIN {other}")),
                    };
                    self.effects.push(Effect::Reply { request, reply });
                }
            }
        }
        self.pump_group();
    }

    /// Multi-leader mode: proposes changes received from another datacenter (`MlEntry::Remote` or
    /// `MlEntry::Bootstrap`) on this datacenter's leader. Returns the entry's index; refused when
    /// this node is not a ready leader (the sender looks the leader up again).
    pub fn propose_multileader(&mut self, now: UnixMillis, entry: MlEntry) -> Result<LogIndex, String> {
        let Some(group) = self.group.as_mut() else {
            return Err("this node runs standalone".into());
        };
        if group.role != Role::Leader || !group.leader_ready {
            return Err("not the ready leader of its datacenter".into());
        }
        let result = group.raft.propose(now, EntryPayload::MultiLeader(entry)).map_err(|error| error.to_string());
        self.pump_group();
        result
    }

    /// A message from a peer.
    pub fn handle_peer_message(&mut self, now: UnixMillis, from: NodeId, message: raft::Message) {
        if let Some(group) = self.group.as_mut() {
            group.last_now = now;
            group.raft.handle_message(now, from, message);
            if group.raft.role() == Role::Follower && group.raft.leader() == Some(from) {
                group.last_leader_contact = Some(now);
            }
            self.pump_group();
        }
    }

    /// A single-server membership change (`CHORUS.MEMBER`), on the leader: the reply (`+OK`) leaves
    /// once the change has committed in this term. `address` is where an added node listens for
    /// peers. A learner is promoted only once it has caught up.
    pub fn change_membership(
        &mut self,
        now: UnixMillis,
        request: RequestId,
        change: MembershipChange,
        address: Option<String>,
    ) {
        let Some(group) = self.group.as_mut() else {
            let reply = Reply::err("this node runs standalone: start it with --initial-cluster to form a group");
            self.effects.push(Effect::Reply { request, reply });
            return;
        };
        if group.role != Role::Leader {
            let reply = group.redirect(None);
            self.effects.push(Effect::Reply { request, reply });
            return;
        }
        if let MembershipChange::PromoteLearner(node) = change {
            let last = group.raft.last_index();
            let status = group.raft.status();
            let matched = status.followers.iter().find(|follower| follower.node_id == node).map(|f| f.match_index);
            if let Some(matched) = matched
                && matched.0 + PROMOTE_LAG_ENTRIES_MAX < last.0
            {
                let behind = last.0 - matched.0;
                let reply = Reply::Error(format!(
                    "TRYAGAIN node {node} is {behind} entries behind; promote it once it has caught up"
                ));
                self.effects.push(Effect::Reply { request, reply });
                return;
            }
        }
        match group.raft.propose_membership_change_with_address(now, change, address) {
            Ok(index) => {
                let term = group.raft.term();
                self.hold_write(index, term, request, Reply::OK);
            }
            Err(ProposeError::NotLeader { .. } | ProposeError::TransferInProgress { .. }) => {
                let reply = group.redirect(None);
                self.effects.push(Effect::Reply { request, reply });
            }
            Err(error @ ProposeError::MembershipChangePending) => {
                self.effects.push(Effect::Reply { request, reply: Reply::Error(format!("TRYAGAIN {error}")) });
            }
            Err(error) => self.effects.push(Effect::Reply { request, reply: Reply::err(error.to_string()) }),
        }
        self.pump_group();
    }

    /// The configuration in force, when in a group.
    pub fn membership(&self) -> Option<&Membership> {
        self.group.as_ref().map(|group| group.raft.membership())
    }

    /// Whether a snapshot at `meta` streamed by `from` (leader of `leader_term`) should be installed
    /// (see `Raft::snapshot_needed`). The driver asks before making it durable, and again through
    /// [`Replica::install_snapshot`].
    pub fn snapshot_needed(&self, from: NodeId, leader_term: Term, meta: &SnapshotMeta) -> bool {
        self.group.as_ref().is_some_and(|group| group.raft.snapshot_needed(from, leader_term, meta))
    }

    /// The driver holds a durable snapshot at `meta` from `from`, leader of `leader_term`. If it is
    /// still needed, the engine adopts it and `ReplaceState` tells the driver to swap the state and
    /// restart the log after it; returns whether it was taken. Follower reads wait until the driver
    /// reports the swap (`handle_state_replaced`).
    pub fn install_snapshot(&mut self, now: UnixMillis, from: NodeId, leader_term: Term, meta: SnapshotMeta) -> bool {
        let Some(group) = self.group.as_mut() else { return false };
        if !group.raft.snapshot_needed(from, leader_term, &meta) {
            return false;
        }
        let (index, term) = (meta.index, meta.term);
        group.raft.handle_snapshot_installed(now, from, leader_term, meta);
        // The state is replaced wholesale: anything asked of the applier before is moot, and applying
        // resumes after the snapshot.
        group.apply_requested = index;
        self.commit_index = index;
        self.state_unusable = Some(super::STATE_BEING_REPLACED);
        self.kv.discard_pending();
        // The engine's truncation (if any) comes first, then the swap, then any commits after it.
        let effects: Vec<raft::Effect> = group.raft.drain_effects().collect();
        let (before, after): (Vec<_>, Vec<_>) =
            effects.into_iter().partition(|effect| matches!(effect, raft::Effect::TruncateLog { .. }));
        self.translate(before);
        self.effects.push(Effect::ReplaceState { index, term });
        if let Some(group) = self.group.as_ref() {
            self.last_index = group.raft.last_index();
        }
        self.translate(after);
        self.report_membership();
        true
    }

    /// The metadata of a snapshot of the state applied up to `index`, for streaming it to a
    /// follower (`None` if `index` is not committed or no longer in the engine's log).
    pub fn snapshot_meta(&self, index: LogIndex) -> Option<SnapshotMeta> {
        self.group.as_ref()?.raft.snapshot_meta(index)
    }

    /// Streaming a snapshot to `to` failed: the leader asks again at its next heartbeat.
    pub fn snapshot_failed(&mut self, now: UnixMillis, to: NodeId) {
        if let Some(group) = self.group.as_mut() {
            group.raft.handle_snapshot_failed(now, to);
            self.pump_group();
        }
    }

    /// The driver swapped in the snapshot at `index` (after `ReplaceState`): follower reads resume.
    pub fn handle_state_replaced(&mut self, index: LogIndex) {
        if self.failure.is_some() {
            return;
        }
        self.state_unusable = None;
        self.applied_index = index;
        self.kv.on_applied(index);
    }

    /// The state is durable in a snapshot at `index`: the engine drops its in-memory log up to there
    /// (followers that need older entries are sent a snapshot).
    pub fn compact_group_log(&mut self, index: LogIndex) {
        if let Some(group) = self.group.as_mut() {
            let index = index.min(group.raft.commit_index()).min(self.applied_index);
            group.raft.compact(index);
        }
    }

    /// Why a follower read must be refused now (bounded staleness, or a state that cannot be used).
    pub(super) fn replica_read_refusal(&self, now: UnixMillis) -> Option<String> {
        if let Some(reason) = self.state_unusable
            && reason != super::STATE_BEING_REPLACED
        {
            return Some(reason.to_string());
        }
        let bound = self.config.replica_read_staleness_max_ms?;
        let group = self.group.as_ref()?;
        match group.last_leader_contact {
            Some(contact) if now.0.saturating_sub(contact.0) <= bound => None,
            Some(contact) => Some(format!(
                "this replica last heard from the leader {} ms ago, more than the staleness bound of {bound} ms",
                now.0.saturating_sub(contact.0)
            )),
            None => Some("this replica has not heard from a leader yet (staleness bound)".into()),
        }
    }

    /// Hands leadership to `target`, or to the most caught-up voter: the leader stops taking writes,
    /// brings the target up to date and tells it to campaign at once (for rolling restarts).
    pub fn transfer_leadership(&mut self, now: UnixMillis, target: Option<NodeId>) -> Result<NodeId, String> {
        let Some(group) = self.group.as_mut() else {
            return Err("this node runs standalone: there is no leadership to transfer".into());
        };
        let status = group.raft.status();
        if status.role != Role::Leader {
            return Err(format!("not the leader (leader: {:?})", status.leader.map(|leader| leader.0)));
        }
        let target = match target {
            Some(target) => target,
            None => status
                .followers
                .iter()
                .filter(|follower| follower.voter)
                .max_by_key(|follower| follower.match_index)
                .map(|follower| follower.node_id)
                .ok_or_else(|| "there is no other voter".to_string())?,
        };
        group.raft.transfer_leadership(now, target).map_err(|error| error.to_string())?;
        self.pump_group();
        Ok(target)
    }

    /// A peer told us where it serves clients.
    pub fn set_peer_client_addr(&mut self, peer: NodeId, addr: String) {
        if let Some(group) = self.group.as_mut() {
            group.client_addrs.insert(peer, addr);
        }
    }

    pub(super) fn tick_group(&mut self, now: UnixMillis) {
        if let Some(group) = self.group.as_mut() {
            group.last_now = now;
            group.raft.tick(now);
            self.pump_group();
        }
    }

    pub(super) fn persisted_in_group(&mut self, now: UnixMillis, index: LogIndex, term: Term) {
        if let Some(group) = self.group.as_mut() {
            group.raft.handle_persisted(now, index, term);
            self.pump_group();
        }
    }

    pub(super) fn applied_in_group(&mut self) {
        let applied = self.applied_index;
        if let Some(group) = self.group.as_mut()
            && group.role == Role::Leader
            && !group.leader_ready
            && group.leader_noop_index.is_some_and(|noop| applied >= noop)
        {
            group.leader_ready = true;
        }
    }

    /// Whether this replica may propose on its own (active expiry): a ready leader, or standalone.
    pub(super) fn may_propose(&self) -> bool {
        self.group.as_ref().is_none_or(|group| group.role == Role::Leader && group.leader_ready)
    }

    pub(super) fn propose_to_group(&mut self, now: UnixMillis, ops: Vec<WriteOp>) {
        let Some(group) = self.group.as_mut() else { return };
        if let Ok(index) = group.raft.propose(now, EntryPayload::Write(ops.clone())) {
            self.kv.record_pending(index, &ops);
        }
        self.pump_group();
    }

    /// Turns the engine's effects into the driver's, in order.
    fn pump_group(&mut self) {
        // Handling effects can start a read round, whose own effects are handled in turn.
        loop {
            let Some(group) = self.group.as_mut() else { return };
            let effects: Vec<raft::Effect> = group.raft.drain_effects().collect();
            if effects.is_empty() {
                break;
            }
            self.translate(effects);
        }
        self.report_membership();
    }

    /// Tells the driver when the configuration in force has changed since it was last told.
    fn report_membership(&mut self) {
        let Some(group) = self.group.as_mut() else { return };
        if group.raft.membership() != &group.reported_membership {
            group.reported_membership = group.raft.membership().clone();
            self.effects.push(Effect::MembershipChanged(group.reported_membership.clone()));
        }
    }

    fn translate(&mut self, effects: Vec<raft::Effect>) {
        for effect in effects {
            match effect {
                raft::Effect::PersistHardState { term, voted_for } => {
                    self.effects.push(Effect::PersistHardState { term, voted_for });
                }
                raft::Effect::AppendLog { entries } => {
                    if let Some(last) = entries.last() {
                        self.last_index = last.index;
                    }
                    self.effects.push(Effect::Persist(entries));
                }
                raft::Effect::TruncateLog { from, discarded, discards_committed } => {
                    let Some(group) = self.group.as_mut() else { return };
                    group.discarded_entries += discarded.len() as u64;
                    group.discarded_committed_events += u64::from(discards_committed);
                    self.fail_held_writes_from(from, "the write was replaced by a new leader's log and not applied");
                    self.kv.discard_pending();
                    self.last_index = from.0.checked_sub(1).map_or(LogIndex::ZERO, LogIndex);
                    self.effects.push(Effect::TruncateLog { from, discarded, discards_committed });
                }
                raft::Effect::StateDiverged { kept } => {
                    // Only under async / semi-sync: the applied state holds entries the new leader
                    // lacks. Follower reads stop until the snapshot the leader sends replaces it.
                    self.state_unusable = Some(STATE_DIVERGED);
                    self.effects.push(Effect::StateDiverged { kept });
                }
                raft::Effect::Send { to, message } => self.effects.push(Effect::Send { to, message }),
                raft::Effect::Committed { index } => self.committed_in_group(index),
                raft::Effect::ReadReady { read_id, .. } => {
                    let Some(group) = self.group.as_mut() else { return };
                    let batch = group.reads.remove(&read_id).unwrap_or_default();
                    for read in batch {
                        self.reply_after(read.read_barrier, read.request, read.reply);
                    }
                    self.start_next_read_round();
                }
                raft::Effect::ReadFailed { read_id, leader_hint } => {
                    let Some(group) = self.group.as_mut() else { return };
                    group.leader = leader_hint.or(group.leader);
                    let batch = group.reads.remove(&read_id).unwrap_or_default();
                    for read in batch {
                        let reply = group.redirect(None);
                        self.effects.push(Effect::Reply { request: read.request, reply });
                    }
                    self.start_next_read_round();
                }
                raft::Effect::RoleChanged { role, term, leader } => self.role_changed(role, term, leader),
                raft::Effect::SendSnapshot { to, leader_term, index } => {
                    self.effects.push(Effect::SnapshotNeeded { to, leader_term, index });
                }
            }
        }
    }

    /// Starts the next read round if one is due; its engine effects are handled by the next pump
    /// (a round that completes at once is answered before this input returns: see `pump_group`).
    fn start_next_read_round(&mut self) {
        if let Some(group) = self.group.as_mut() {
            group.start_next_read_round();
        }
    }

    fn committed_in_group(&mut self, index: LogIndex) {
        // Followers' acknowledgements move the commit index: a good moment to answer WAITs.
        self.answer_waits_after_commit();
        let Some(group) = self.group.as_mut() else { return };
        self.commit_index = self.commit_index.max(index);
        if index > group.apply_requested {
            let entries = group.raft.entries(group.apply_requested.next(), index);
            group.apply_requested = index;
            if !entries.is_empty() {
                self.effects.push(Effect::Apply(entries));
            }
        }
        while self.held_replies.front().is_some_and(|held| held.index <= self.commit_index) {
            let Some(held) = self.held_replies.pop_front() else { break };
            let replaced =
                held.term.is_some_and(|term| group.raft.term_at(held.index).is_some_and(|kept| kept != term));
            let reply = if replaced {
                Reply::err("the write was replaced by a new leader's log and not applied")
            } else {
                held.reply
            };
            self.effects.push(Effect::Reply { request: held.request, reply });
        }
    }

    fn role_changed(&mut self, role: Role, term: Term, leader: Option<NodeId>) {
        let Some(group) = self.group.as_mut() else { return };
        let was_leader = group.role == Role::Leader;
        group.role = role;
        group.leader = leader;
        self.term = term;
        if role == Role::Leader {
            // The no-op of the new term is the last entry of the log now.
            group.leader_noop_index = Some(group.raft.last_index());
            group.leader_ready = false;
        } else if was_leader {
            group.leader_ready = false;
            group.leader_noop_index = None;
            // Pending writes may still commit under the next leader (their replies wait for that),
            // but this node no longer answers from its overlay.
            self.kv.discard_pending();
            let reads = std::mem::take(&mut group.reads);
            let waiting = std::mem::take(&mut group.next_read_batch);
            for read in reads.into_values().flatten().chain(waiting) {
                let reply = group.redirect(None);
                self.effects.push(Effect::Reply { request: read.request, reply });
            }
        }
    }

    fn answer_waits_after_commit(&mut self) {
        if !self.waits.is_empty() {
            // Deadlines are checked on ticks; here only satisfied WAITs are answered.
            let now = UnixMillis(0);
            self.answer_waits(now);
        }
    }

    fn fail_held_writes_from(&mut self, from: LogIndex, reason: &str) {
        let mut kept = std::collections::VecDeque::new();
        for held in std::mem::take(&mut self.held_replies) {
            if held.index >= from && held.term.is_some() {
                self.effects.push(Effect::Reply { request: held.request, reply: Reply::err(reason) });
            } else {
                kept.push_back(held);
            }
        }
        self.held_replies = kept;
    }
}
