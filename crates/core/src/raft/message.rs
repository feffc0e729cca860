//! The messages engines exchange. They cross the network (postcard), so they are plain data; every
//! one carries the sender's term, and a receiver fences on it before anything else.

use serde::{Deserialize, Serialize};

use crate::log::LogEntry;
use crate::types::{LogIndex, Term};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "Would you vote for me in `term`?" (Raft dissertation section 9.6). Nobody changes term on it.
    PreVote(VoteRequest),
    PreVoteResponse(VoteResponse),
    RequestVote(VoteRequest),
    RequestVoteResponse(VoteResponse),
    /// Entries to append (none for a heartbeat); also confirms leadership for read-index rounds.
    AppendEntries(AppendEntries),
    AppendEntriesResponse(AppendEntriesResponse),
    /// Leadership transfer: the leader tells an up-to-date follower to campaign now, without pre-vote.
    TimeoutNow {
        term: Term,
    },
    /// The leader tells a follower that its committed state reaches past the leader's log, so cannot
    /// be the group's (possible only after an `async` / `semi-sync` failover): the follower discards
    /// what it cannot show matches, and answers `NeedsSnapshot`.
    SnapshotRequired {
        term: Term,
    },
}

impl Message {
    /// The term the message was sent in; for a pre-vote, the term the candidate would campaign in.
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote(request) | Message::RequestVote(request) => request.term,
            Message::PreVoteResponse(response) | Message::RequestVoteResponse(response) => response.term,
            Message::AppendEntries(append) => append.term,
            Message::AppendEntriesResponse(response) => response.term,
            Message::TimeoutNow { term } | Message::SnapshotRequired { term } => *term,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    pub term: Term,
    pub last_log_index: LogIndex,
    pub last_log_term: Term,
    /// Sent on the leader's request (`TimeoutNow`): voters skip the "I still hear from a leader" check.
    pub leadership_transfer: bool,
    /// Pre-vote: the pre-candidate's round, echoed in the answer (0 in a vote request).
    pub round: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// The voter's term; for a granted pre-vote, the term that was asked about.
    pub term: Term,
    pub granted: bool,
    /// The round of the request answered (pre-vote; 0 for a vote): a pre-candidate counts only
    /// answers to its current round.
    pub round: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    pub term: Term,
    pub prev_log_index: LogIndex,
    pub prev_log_term: Term,
    /// Consecutive entries from `prev_log_index + 1`; empty for a heartbeat.
    pub entries: Vec<LogEntry>,
    pub leader_commit: LogIndex,
    /// The leader's latest read-index round; echoed in the response.
    pub read_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    pub term: Term,
    /// The read-index round of the append this answers (or the latest seen, for a late durability ack).
    pub read_seq: u64,
    pub outcome: AppendOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to `last_appended` (so replication can continue from
    /// there), and up to `match_index` it is also durable (so it counts toward commits).
    Accepted { last_appended: LogIndex, match_index: LogIndex },
    /// The follower's log does not contain the entry at `prev_log_index` with that term. Its entry at
    /// `hint_index` has term `hint_term`; the leader resumes from the last index of its own log at or
    /// before `hint_index` with a term at most `hint_term` (fast backtracking), or, if `hint_index` is
    /// above `prev_log_index` (the follower's snapshot point), right after `hint_index`.
    Rejected { prev_log_index: LogIndex, hint_index: LogIndex, hint_term: Term },
    /// The follower discarded entries it had committed (a failover under `async` or `semi-sync`), so
    /// its state is no longer a prefix of the leader's: only a snapshot can repair it.
    NeedsSnapshot,
}
