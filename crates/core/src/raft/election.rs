//! Elections: timeouts, pre-vote, votes, and the role transitions (Raft §5.2, dissertation §9.6).

use std::collections::BTreeMap;

use super::message::{Message, VoteRequest, VoteResponse};
use super::progress::Progress;
use super::quorum::majority;
use super::{Effect, LeaderState, PlantedBug, Raft, Role};
use crate::log::EntryPayload;
use crate::types::{NodeId, Term, UnixMillis};

impl Raft {
    pub(super) fn tick_election(&mut self, now: UnixMillis) {
        let deadline = match self.election_deadline {
            Some(deadline) => deadline,
            // The first tick: a group of one campaigns at once (nobody to disrupt), others wait.
            None if self.is_sole_voter() => now,
            None => {
                self.reset_election_deadline(now);
                return;
            }
        };
        if now < deadline {
            return;
        }
        if self.is_voter() && !self.awaiting_snapshot {
            self.start_pre_vote(now);
        } else {
            // Learners, nodes not (yet) in the group, and nodes whose state waits for a snapshot
            // never campaign.
            self.reset_election_deadline(now);
        }
    }

    fn is_sole_voter(&self) -> bool {
        let voters = &self.log.membership().voters;
        voters.len() == 1 && voters.contains(&self.config.node_id)
    }

    pub(super) fn reset_election_deadline(&mut self, now: UnixMillis) {
        let spread = self.config.election_timeout_ms_max - self.config.election_timeout_ms_min + 1;
        let timeout = self.config.election_timeout_ms_min + self.rng.below(spread);
        self.election_deadline = Some(UnixMillis(now.0 + timeout));
    }

    /// Whether a leader is known to be alive: this node leads, or heard from the leader less than the
    /// minimum election timeout ago (dissertation §4.2.3, "leader stickiness").
    pub(super) fn in_leader_lease(&self, now: UnixMillis) -> bool {
        if self.role == Role::Leader {
            return true;
        }
        self.leader.is_some()
            && self.last_leader_contact.is_some_and(|at| now.0 < at.0 + self.config.election_timeout_ms_min)
    }

    /// Dissertation §9.6: ask whether a majority would vote for this node in the next term, without
    /// changing term, so a node that cannot win (partitioned, or behind) never disrupts the group.
    fn start_pre_vote(&mut self, now: UnixMillis) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = BTreeMap::from([(self.config.node_id, true)]);
        self.pre_vote_round = (self.pre_vote_round + 1).max(now.0);
        self.reset_election_deadline(now);
        self.report_role();
        let request = VoteRequest {
            term: Term(self.term.0 + 1),
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer: false,
            round: self.pre_vote_round,
        };
        self.send_to_voters(&Message::PreVote(request));
        self.tally_votes(now);
    }

    /// §5.2: a new term, a vote for itself, and a request to every voter.
    pub(super) fn start_election(&mut self, now: UnixMillis, leadership_transfer: bool) {
        self.set_hard_state(Term(self.term.0 + 1), Some(self.config.node_id));
        self.role = Role::Candidate;
        self.leader = None;
        self.follower = Default::default();
        self.votes = BTreeMap::from([(self.config.node_id, true)]);
        self.reset_election_deadline(now);
        self.report_role();
        let request = VoteRequest {
            term: self.term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer,
            round: 0,
        };
        self.send_to_voters(&Message::RequestVote(request));
        self.tally_votes(now);
    }

    fn send_to_voters(&mut self, message: &Message) {
        let voters: Vec<NodeId> =
            self.log.membership().voters.iter().copied().filter(|voter| *voter != self.config.node_id).collect();
        for to in voters {
            self.effects.push(Effect::Send { to, message: message.clone() });
        }
    }

    /// Counts the answers of the current round among the voters of the configuration in force.
    fn tally_votes(&mut self, now: UnixMillis) {
        let voters = &self.log.membership().voters;
        let needed = majority(voters.len());
        let granted = voters.iter().filter(|voter| self.votes.get(voter) == Some(&true)).count();
        let refused = voters.iter().filter(|voter| self.votes.get(voter) == Some(&false)).count();
        if granted >= needed {
            match self.role {
                Role::PreCandidate => self.start_election(now, false),
                Role::Candidate => self.become_leader(now),
                Role::Follower | Role::Leader => unreachable!("tallying votes as {:?}", self.role),
            }
        } else if voters.len() - refused < needed {
            // This round cannot be won: wait for the next timeout as a follower.
            self.become_follower(now, self.term, None);
        }
    }

    pub(super) fn handle_vote_request(&mut self, now: UnixMillis, from: NodeId, request: VoteRequest, pre_vote: bool) {
        // §5.4.1: only for a log at least as up to date as this one.
        let up_to_date =
            (request.last_log_term, request.last_log_index) >= (self.log.last_term(), self.log.last_index());
        let granted = if pre_vote {
            // The pre-candidate asks about its next term; a node that still hears from a leader says no.
            request.term > self.term && up_to_date && !self.in_leader_lease(now)
        } else {
            assert_eq!(request.term, self.term, "vote request not fenced by term");
            let mut free = self.voted_for == Some(from) || (self.voted_for.is_none() && self.leader.is_none());
            if self.config.planted_bug == Some(PlantedBug::DoubleVote) {
                // The planted bug: any vote but a candidate's own for itself is given again.
                free = self.voted_for != Some(self.config.node_id);
            }
            free && up_to_date
        };
        let message = if pre_vote {
            let term = if granted { request.term } else { self.term };
            Message::PreVoteResponse(VoteResponse { term, granted, round: request.round })
        } else {
            if granted {
                if self.voted_for != Some(from) {
                    self.set_hard_state(self.term, Some(from));
                }
                self.reset_election_deadline(now);
            }
            Message::RequestVoteResponse(VoteResponse { term: self.term, granted, round: request.round })
        };
        self.effects.push(Effect::Send { to: from, message });
    }

    pub(super) fn handle_pre_vote_response(&mut self, now: UnixMillis, from: NodeId, response: VoteResponse) {
        if self.role != Role::PreCandidate {
            return;
        }
        if response.granted && response.term != Term(self.term.0 + 1) {
            return; // An answer to a pre-vote from an earlier term.
        }
        if response.round != self.pre_vote_round {
            // An answer to an earlier round of this term, delayed: it says what the voter thought
            // then (seed 1058948: a grant 500 ms old, from a voter that had since learned of this
            // node's removal, made the removed node start an election and members take its term).
            return;
        }
        self.votes.insert(from, response.granted);
        self.tally_votes(now);
    }

    pub(super) fn handle_vote_response(&mut self, now: UnixMillis, from: NodeId, response: VoteResponse) {
        if self.role != Role::Candidate {
            return;
        }
        assert_eq!(response.term, self.term, "vote response not fenced by term");
        self.votes.insert(from, response.granted);
        self.tally_votes(now);
    }

    /// The leader asks this node to campaign now, skipping pre-vote (dissertation §3.10).
    pub(super) fn handle_timeout_now(&mut self, now: UnixMillis, from: NodeId) {
        if self.role == Role::Leader || !self.is_voter() || self.awaiting_snapshot {
            return;
        }
        if self.leader.is_some_and(|leader| leader != from) {
            return;
        }
        self.start_election(now, true);
    }

    /// Steps down (or stays down) in `term`, following `leader` if known.
    pub(super) fn become_follower(&mut self, now: UnixMillis, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.set_hard_state(term, None);
        }
        assert_eq!(term, self.term, "following in a term other than the current one");
        if let Some(lead) = self.lead.take() {
            for read in lead.pending_reads {
                self.effects.push(Effect::ReadFailed { read_id: read.read_id, leader_hint: leader });
            }
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.follower = Default::default();
        self.votes.clear();
        self.reset_election_deadline(now);
        self.report_role();
    }

    /// §5.2 and §5.4.2: won the election; append a no-op of this term so earlier entries can commit.
    fn become_leader(&mut self, now: UnixMillis) {
        assert_eq!(self.role, Role::Candidate, "becoming leader without an election");
        assert_eq!(self.voted_for, Some(self.config.node_id), "leader did not vote for itself");
        let next = self.log.last_index().next();
        self.role = Role::Leader;
        self.leader = Some(self.config.node_id);
        self.votes.clear();
        self.lead = Some(LeaderState {
            progress: BTreeMap::new(),
            term_start_index: next,
            heartbeat_due: now,
            read_seq: 0,
            pending_reads: Default::default(),
            transfer: None,
        });
        self.sync_progress_with_membership(now, false);
        self.report_role();
        let index = self.append_as_leader(EntryPayload::Noop);
        assert_eq!(index, next, "the no-op does not open the term");
        self.broadcast_heartbeat(now);
        self.leader_maybe_commit();
    }

    /// Gives every member other than this node a progress entry, and drops those of former members.
    /// `mid_term`: a node added during the term may be one removed earlier in it, whose answers to
    /// the appends of its earlier life may still be in flight (and wrong: it may have been wiped);
    /// the read-index round moves on, and answers from earlier rounds are ignored for it.
    pub(super) fn sync_progress_with_membership(&mut self, now: UnixMillis, mid_term: bool) {
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let membership = self.log.membership();
        let me = self.config.node_id;
        lead.progress.retain(|node, _| membership.is_member(*node));
        let next = self.log.last_index().next();
        for node in membership.members().filter(|node| *node != me) {
            if !lead.progress.contains_key(&node) {
                if mid_term {
                    lead.read_seq += 1;
                }
                lead.progress.insert(node, Progress::new(next, now, lead.read_seq));
            }
        }
        if lead.transfer.is_some_and(|transfer| !membership.is_voter(transfer.target)) {
            lead.transfer = None;
        }
    }
}
