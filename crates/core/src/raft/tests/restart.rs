//! Restarting from `RestoredState`: a node resumes exactly where its disk says it was (Raft figure 2:
//! currentTerm, votedFor and the log are persistent state).

use super::*;

const Q: Durability = Durability::Quorum;

fn restored(term: u64, voted_for: Option<u64>, terms: &[u64], committed: u64) -> RestoredState {
    let mut restored = RestoredState::bootstrap([n(1), n(2), n(3)]);
    restored.hard_state = HardState { term: Term(term), voted_for: voted_for.map(NodeId) };
    restored.entries = entries_with_terms(terms);
    restored.committed_index = LogIndex(committed);
    restored
}

#[test]
fn a_restarted_node_keeps_its_vote() {
    // §5.2: the vote is durable, so a crash cannot make a node vote twice in one term.
    let mut raft = Raft::new(config(1, Q), restored(5, Some(2), &[], 0));
    raft.handle_message(T0, n(3), Message::RequestVote(vote_request(5, (9, 5), false)));
    assert_eq!(take(&mut raft), vec![send(3, Message::RequestVoteResponse(vote(5, false)))]);
    raft.handle_message(T0, n(2), Message::RequestVote(vote_request(5, (9, 5), false)));
    assert_eq!(
        take(&mut raft),
        vec![send(2, Message::RequestVoteResponse(vote(5, true)))],
        "the same vote, no new write"
    );
}

#[test]
fn a_restarted_node_resumes_its_log_and_commit_index() {
    let mut raft = Raft::new(config(2, Q), restored(2, None, &[1, 1, 2], 2));
    let status = raft.status();
    assert_eq!(
        (status.role, status.term, status.leader, status.commit_index, status.persisted_index, status.last_index),
        (Role::Follower, Term(2), None, LogIndex(2), LogIndex(3), LogIndex(3))
    );
    assert_eq!(take(&mut raft), vec![], "starting emits nothing");
    raft.handle_message(T0, n(1), append(2, (3, 2), Vec::new(), 3, 0));
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::RoleChanged { role: Role::Follower, term: Term(2), leader: Some(n(1)) },
            Effect::Committed { index: LogIndex(3) },
            send(1, accepted(2, 0, 3, 3)),
        ]
    );
}

#[test]
fn a_restarted_leader_comes_back_as_a_follower_and_waits_an_election_timeout() {
    let mut raft = Raft::new(config(1, Q), restored(3, Some(1), &[1, 3], 2));
    assert_eq!((raft.role(), raft.leader()), (Role::Follower, None));
    raft.tick(T0);
    assert_eq!(take(&mut raft), vec![]);
    raft.tick(at(2000));
    assert_eq!(raft.role(), Role::PreCandidate);
    assert_eq!(raft.last_index(), LogIndex(2), "its log is intact");
}

#[test]
fn a_restarted_node_resumes_after_its_snapshot() {
    let mut restored = restored(2, None, &[], 0);
    restored.snapshot.index = LogIndex(10);
    restored.snapshot.term = Term(2);
    restored.entries = vec![noop(11, 2)];
    let raft = Raft::new(config(2, Q), restored);
    assert_eq!(
        (raft.commit_index(), raft.last_index(), raft.term_at(LogIndex(10))),
        (LogIndex(10), LogIndex(11), Some(Term(2)))
    );
}

#[test]
#[should_panic(expected = "beyond the log")]
fn a_state_ahead_of_the_log_is_refused() {
    Raft::new(config(1, Q), restored(1, None, &[1, 1, 1], 5));
}

#[test]
#[should_panic(expected = "behind the log")]
fn a_term_behind_the_log_is_refused() {
    Raft::new(config(1, Q), restored(1, None, &[1, 2], 0));
}
