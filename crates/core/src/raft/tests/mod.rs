//! The engine fed by hand (one event in, the exact effects out, citing the rule each test checks), and a
//! deterministic cluster simulation over many seeds (`cluster`).

mod cluster;
mod commit;
mod election;
mod membership;
mod read_index;
mod replication;
mod restart;
mod snapshot;
mod transfer;

use bytes::Bytes;

use super::*;
use crate::log::WriteOp;

pub(super) const T0: UnixMillis = UnixMillis(1_000_000);

/// `T0` plus `ms`.
pub(super) fn at(ms: u64) -> UnixMillis {
    UnixMillis(T0.0 + ms)
}

pub(super) fn n(id: u64) -> NodeId {
    NodeId(id)
}

pub(super) fn config(id: u64, durability: Durability) -> RaftConfig {
    RaftConfig { durability, ..RaftConfig::new(NodeId(id), 42) }
}

/// A fresh member of a group of `voters`.
pub(super) fn fresh(id: u64, voters: &[u64], durability: Durability) -> Raft {
    Raft::new(config(id, durability), RestoredState::bootstrap(voters.iter().copied().map(NodeId)))
}

/// A node restored with `entries` in its log, at `term`, with nothing committed.
pub(super) fn with_log(id: u64, voters: &[u64], durability: Durability, term: u64, entries: Vec<LogEntry>) -> Raft {
    let mut restored = RestoredState::bootstrap(voters.iter().copied().map(NodeId));
    restored.hard_state.term = Term(term);
    restored.entries = entries;
    Raft::new(config(id, durability), restored)
}

pub(super) fn noop(index: u64, term: u64) -> LogEntry {
    LogEntry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Noop }
}

pub(super) fn write(key: &str) -> EntryPayload {
    EntryPayload::Write(vec![WriteOp::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        expire_at: None,
    }])
}

pub(super) fn write_entry(index: u64, term: u64, key: &str) -> LogEntry {
    LogEntry { index: LogIndex(index), term: Term(term), payload: write(key) }
}

/// Entries `1..` with the given terms (no-ops).
pub(super) fn entries_with_terms(terms: &[u64]) -> Vec<LogEntry> {
    terms.iter().enumerate().map(|(at, term)| noop(at as u64 + 1, *term)).collect()
}

pub(super) fn take(raft: &mut Raft) -> Vec<Effect> {
    raft.drain_effects().collect()
}

pub(super) fn send(to: u64, message: Message) -> Effect {
    Effect::Send { to: NodeId(to), message }
}

pub(super) fn append(
    term: u64,
    prev: (u64, u64),
    entries: Vec<LogEntry>,
    leader_commit: u64,
    read_seq: u64,
) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(term),
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries,
        leader_commit: LogIndex(leader_commit),
        read_seq,
    })
}

pub(super) fn accepted(term: u64, read_seq: u64, last_appended: u64, match_index: u64) -> Message {
    Message::AppendEntriesResponse(AppendEntriesResponse {
        term: Term(term),
        read_seq,
        outcome: AppendOutcome::Accepted { last_appended: LogIndex(last_appended), match_index: LogIndex(match_index) },
    })
}

pub(super) fn rejected(term: u64, read_seq: u64, prev: u64, hint: (u64, u64)) -> Message {
    Message::AppendEntriesResponse(AppendEntriesResponse {
        term: Term(term),
        read_seq,
        outcome: AppendOutcome::Rejected {
            prev_log_index: LogIndex(prev),
            hint_index: LogIndex(hint.0),
            hint_term: Term(hint.1),
        },
    })
}

pub(super) fn vote_request(term: u64, last: (u64, u64), transfer: bool) -> VoteRequest {
    VoteRequest {
        term: Term(term),
        last_log_index: LogIndex(last.0),
        last_log_term: Term(last.1),
        leadership_transfer: transfer,
        round: 0,
    }
}

/// An answer to a vote request, or to a pre-vote of round 0 (as `vote_request` makes).
pub(super) fn vote(term: u64, granted: bool) -> VoteResponse {
    VoteResponse { term: Term(term), granted, round: 0 }
}

/// An answer to the current pre-vote round of `raft`.
pub(super) fn pre_vote_answer(raft: &Raft, term: u64, granted: bool) -> Message {
    Message::PreVoteResponse(VoteResponse { term: Term(term), granted, round: raft.pre_vote_round })
}

/// Makes node `id` of a fresh group of `voters` the leader of term 1, answering its (pre-)vote
/// requests by hand, with every effect drained. Its no-op is entry 1, not yet durable.
pub(super) fn elect(id: u64, voters: &[u64], durability: Durability) -> Raft {
    let mut raft = fresh(id, voters, durability);
    campaign(&mut raft, voters);
    raft
}

/// Times `raft` out and answers its pre-votes and votes with grants from every other voter.
pub(super) fn campaign(raft: &mut Raft, voters: &[u64]) {
    let me = raft.node_id().0;
    raft.tick(T0);
    raft.tick(at(raft.config().election_timeout_ms_max));
    let next_term = raft.term().0 + 1;
    for voter in voters.iter().copied().filter(|voter| *voter != me) {
        let answer = pre_vote_answer(raft, next_term, true);
        raft.handle_message(T0, n(voter), answer);
    }
    for voter in voters.iter().copied().filter(|voter| *voter != me) {
        raft.handle_message(T0, n(voter), Message::RequestVoteResponse(vote(next_term, true)));
    }
    assert_eq!(raft.role(), Role::Leader, "campaign did not win");
    take(raft);
}

/// Makes a leader's followers acknowledge everything durably and the leader persist its log.
pub(super) fn settle(raft: &mut Raft, followers: &[u64], now: UnixMillis) {
    let last = raft.last_index();
    let term = raft.term();
    raft.handle_persisted(now, last, raft.term_at(last).expect("last entry"));
    for follower in followers {
        raft.handle_message(now, n(*follower), accepted(term.0, 0, last.0, last.0));
    }
    take(raft);
}

/// The messages among `effects`, by destination.
pub(super) fn sent(effects: &[Effect]) -> Vec<(u64, Message)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, message } => Some((to.0, message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_and_snapshot_metadata_cross_the_network() {
    // Everything sent between nodes is plain serde data (the transport encodes it with postcard).
    fn wire<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    wire::<Message>();
    wire::<SnapshotMeta>();
    wire::<Membership>();
    wire::<MembershipChange>();
    wire::<Durability>();
}

#[test]
fn status_shows_each_followers_progress() {
    let mut raft = elect(1, &[1, 2, 3], Durability::Quorum);
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    raft.handle_message(at(30), n(2), accepted(1, 0, 1, 1));
    let status = raft.status();
    assert_eq!(
        (status.role, status.term, status.leader, status.commit_index),
        (Role::Leader, Term(1), Some(n(1)), LogIndex(1))
    );
    let followers: Vec<(NodeId, LogIndex, LogIndex, ReplicationState, Option<UnixMillis>)> = status
        .followers
        .iter()
        .map(|follower| {
            (follower.node_id, follower.match_index, follower.next_index, follower.state, follower.last_contact)
        })
        .collect();
    assert_eq!(
        followers,
        vec![
            (n(2), LogIndex(1), LogIndex(2), ReplicationState::Replicate, Some(at(30))),
            (n(3), LogIndex(0), LogIndex(1), ReplicationState::Probe, None),
        ]
    );
}
