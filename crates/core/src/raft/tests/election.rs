//! Elections: Raft §5.2 (leader election), §5.4.1 (election restriction), dissertation §9.6 (pre-vote)
//! and §4.2.3 (disruptive servers).

use super::*;

const Q: Durability = Durability::Quorum;

/// A follower of `leader` in `term`, having just heard from it at `T0`.
fn follower_of(id: u64, voters: &[u64], term: u64, leader: u64) -> Raft {
    let mut raft = with_log(id, voters, Q, term, Vec::new());
    raft.handle_message(T0, n(leader), append(term, (0, 0), Vec::new(), 0, 0));
    take(&mut raft);
    raft
}

#[test]
fn election_timeout_starts_a_pre_vote_without_changing_term() {
    // §9.6: a pre-candidate asks for votes in term + 1 but stays in its term.
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    assert_eq!(take(&mut raft), vec![], "the first tick only arms the timer");
    raft.tick(at(999));
    assert_eq!(take(&mut raft), vec![], "no timeout before the minimum");
    raft.tick(at(2000));
    // The round is the local time it started at.
    let request = Message::PreVote(VoteRequest { round: at(2000).0, ..vote_request(1, (0, 0), false) });
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::RoleChanged { role: Role::PreCandidate, term: Term(0), leader: None },
            send(2, request.clone()),
            send(3, request),
        ]
    );
    assert_eq!(raft.term(), Term(0));
}

#[test]
fn pre_vote_majority_starts_an_election_with_the_vote_durable_first() {
    // §5.2: increment the term, vote for itself, ask every voter; the vote is persisted before any
    // request leaves.
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    raft.tick(at(2000));
    take(&mut raft);
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(2), answer);
    let request = Message::RequestVote(vote_request(1, (0, 0), false));
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::PersistHardState { term: Term(1), voted_for: Some(n(1)) },
            Effect::RoleChanged { role: Role::Candidate, term: Term(1), leader: None },
            send(2, request.clone()),
            send(3, request),
        ]
    );
}

#[test]
fn candidate_with_a_majority_becomes_leader_and_appends_a_no_op() {
    // §5.2 and §5.4.2: a new leader appends an entry of its term and sends it to everyone at once.
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    raft.tick(at(2000));
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(2), answer);
    take(&mut raft);
    raft.handle_message(at(2000), n(3), Message::RequestVoteResponse(vote(1, true)));
    let probe = append(1, (0, 0), vec![noop(1, 1)], 0, 0);
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::RoleChanged { role: Role::Leader, term: Term(1), leader: Some(n(1)) },
            Effect::AppendLog { entries: vec![noop(1, 1)] },
            send(2, probe.clone()),
            send(3, probe),
        ]
    );
}

#[test]
fn rejected_by_a_majority_the_candidate_steps_down() {
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    raft.tick(at(2000));
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(2), answer);
    take(&mut raft);
    raft.handle_message(at(2000), n(2), Message::RequestVoteResponse(vote(1, false)));
    assert_eq!(take(&mut raft), vec![], "one refusal of three: the election can still be won");
    raft.handle_message(at(2000), n(3), Message::RequestVoteResponse(vote(1, false)));
    assert_eq!(take(&mut raft), vec![Effect::RoleChanged { role: Role::Follower, term: Term(1), leader: None }]);
}

#[test]
fn a_timed_out_candidate_starts_over_with_pre_vote() {
    // A split vote: the next attempt goes through pre-vote again, in the same term.
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    raft.tick(at(2000));
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(2), answer);
    take(&mut raft);
    raft.tick(at(4001));
    let effects = take(&mut raft);
    assert_eq!(effects[0], Effect::RoleChanged { role: Role::PreCandidate, term: Term(1), leader: None });
    assert_eq!(
        sent(&effects),
        vec![
            (2, Message::PreVote(VoteRequest { round: at(4001).0, ..vote_request(2, (0, 0), false) })),
            (3, Message::PreVote(VoteRequest { round: at(4001).0, ..vote_request(2, (0, 0), false) }))
        ]
    );
}

#[test]
fn a_pre_vote_grant_to_an_earlier_round_is_not_counted() {
    // §9.6: a node campaigns only if a majority would vote for it now. Found by the simulator (seed
    // 1058948, quorum, all faults): node 3 granted node 1's pre-vote for term 7 while it was itself
    // out of touch; the grant was held by the network for 500 ms, and reached node 1 in a later round
    // of its pre-vote for term 7, after node 1 had been removed and node 3 had learned of it. Counted,
    // it made the removed node start an election, and a member (the former leader, out of its lease)
    // took its term. Answers echo the round of the request, and only the current round's count.
    let mut voter = fresh(3, &[1, 2, 3], Q);
    voter.handle_message(T0, n(1), Message::PreVote(VoteRequest { round: 7, ..vote_request(1, (0, 0), false) }));
    assert_eq!(take(&mut voter), vec![send(1, Message::PreVoteResponse(VoteResponse { round: 7, ..vote(1, true) }))]);

    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    raft.tick(at(2000));
    let first_round = pre_vote_answer(&raft, 1, true);
    take(&mut raft);
    raft.tick(at(4000));
    assert_eq!(raft.role(), Role::PreCandidate, "a second round, for the same term");
    take(&mut raft);
    raft.handle_message(at(4010), n(3), first_round);
    assert_eq!(take(&mut raft), vec![], "the grant of the first round is not counted");
    assert_eq!((raft.role(), raft.term()), (Role::PreCandidate, Term(0)));
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(4010), n(3), answer);
    assert_eq!(raft.role(), Role::Candidate, "a grant of this round is");
    assert_eq!(raft.term(), Term(1));
}

#[test]
fn a_single_voter_elects_itself_on_the_first_tick() {
    let mut raft = fresh(1, &[1], Q);
    raft.tick(T0);
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::RoleChanged { role: Role::PreCandidate, term: Term(0), leader: None },
            Effect::PersistHardState { term: Term(1), voted_for: Some(n(1)) },
            Effect::RoleChanged { role: Role::Candidate, term: Term(1), leader: None },
            Effect::RoleChanged { role: Role::Leader, term: Term(1), leader: Some(n(1)) },
            Effect::AppendLog { entries: vec![noop(1, 1)] },
        ]
    );
}

#[test]
fn one_vote_per_term() {
    // §5.2: each server votes for at most one candidate in a term, first come first served; a repeat
    // request from the same candidate is granted again without a second write.
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.handle_message(T0, n(2), Message::RequestVote(vote_request(1, (0, 0), false)));
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::PersistHardState { term: Term(1), voted_for: Some(n(2)) },
            Effect::RoleChanged { role: Role::Follower, term: Term(1), leader: None },
            send(2, Message::RequestVoteResponse(vote(1, true))),
        ]
    );
    raft.handle_message(T0, n(3), Message::RequestVote(vote_request(1, (0, 0), false)));
    assert_eq!(take(&mut raft), vec![send(3, Message::RequestVoteResponse(vote(1, false)))]);
    raft.handle_message(T0, n(2), Message::RequestVote(vote_request(1, (0, 0), false)));
    assert_eq!(take(&mut raft), vec![send(2, Message::RequestVoteResponse(vote(1, true)))]);
}

#[test]
fn votes_only_for_a_log_at_least_as_up_to_date() {
    // §5.4.1: compare the last entries' terms, then the lengths.
    let voter = || with_log(1, &[1, 2, 3], Q, 2, entries_with_terms(&[1, 2]));
    let cases = [
        ((5, 1), false, "older last term, longer log"),
        ((1, 2), false, "same term, shorter"),
        ((2, 2), true, "same"),
        ((1, 3), true, "newer term, shorter"),
    ];
    for ((last_index, last_term), granted, why) in cases {
        let mut raft = voter();
        raft.handle_message(T0, n(2), Message::RequestVote(vote_request(3, (last_index, last_term), false)));
        let answers = sent(&take(&mut raft));
        assert_eq!(answers, vec![(2, Message::RequestVoteResponse(vote(3, granted)))], "{why}");
    }
}

#[test]
fn a_stale_vote_request_is_refused_with_the_current_term() {
    // §5.1: a request from an older term is rejected and tells the sender the term.
    let mut raft = with_log(1, &[1, 2, 3], Q, 5, Vec::new());
    raft.handle_message(T0, n(2), Message::RequestVote(vote_request(4, (9, 4), false)));
    assert_eq!(take(&mut raft), vec![send(2, Message::RequestVoteResponse(vote(5, false)))]);
    raft.handle_message(T0, n(2), Message::PreVote(vote_request(5, (9, 4), false)));
    assert_eq!(
        take(&mut raft),
        vec![send(2, Message::PreVoteResponse(vote(5, false)))],
        "a pre-vote for a term already reached"
    );
}

#[test]
fn a_higher_term_makes_a_leader_step_down() {
    // §5.1: a server that sees a higher term adopts it and becomes a follower.
    let mut raft = elect(1, &[1, 2, 3], Q);
    raft.handle_message(T0, n(2), rejected(7, 0, 1, (0, 0)));
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::PersistHardState { term: Term(7), voted_for: None },
            Effect::RoleChanged { role: Role::Follower, term: Term(7), leader: None },
        ]
    );
}

#[test]
fn pre_vote_does_not_disrupt_a_stable_leader() {
    // Dissertation §9.6 and §4.2.3: a follower that heard from its leader within the minimum
    // election timeout refuses pre-votes and ignores vote requests; no term changes anywhere.
    let mut raft = follower_of(1, &[1, 2, 3], 3, 2);
    raft.handle_message(at(500), n(3), Message::PreVote(vote_request(4, (9, 3), false)));
    assert_eq!(take(&mut raft), vec![send(3, Message::PreVoteResponse(vote(3, false)))]);
    raft.handle_message(at(500), n(3), Message::RequestVote(vote_request(4, (9, 3), false)));
    assert_eq!(take(&mut raft), vec![], "a vote request inside the lease is ignored");
    assert_eq!((raft.term(), raft.leader()), (Term(3), Some(n(2))));
    // Once the leader has been silent for the minimum election timeout, the pre-vote is granted,
    // still without changing term.
    raft.handle_message(at(1000), n(3), Message::PreVote(vote_request(4, (9, 3), false)));
    assert_eq!(take(&mut raft), vec![send(3, Message::PreVoteResponse(vote(4, true)))]);
    assert_eq!(raft.term(), Term(3));
}

#[test]
fn a_leader_refuses_pre_votes() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    raft.handle_message(T0, n(2), Message::PreVote(vote_request(2, (5, 1), false)));
    assert_eq!(take(&mut raft), vec![send(2, Message::PreVoteResponse(vote(1, false)))]);
    assert_eq!(raft.role(), Role::Leader);
}

#[test]
fn a_partitioned_node_never_inflates_its_term() {
    // §9.6: without pre-vote a partitioned node would bump its term on every timeout and disrupt the
    // group when it returns; with it, the term stays put.
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    for round in 1..=10 {
        raft.tick(at(round * 2001));
    }
    assert_eq!(raft.term(), Term(0));
    assert!(take(&mut raft).iter().all(|effect| !matches!(effect, Effect::PersistHardState { .. })));
}

#[test]
fn a_candidate_steps_down_for_the_leader_of_its_term() {
    // §5.2: a candidate that receives an append from a leader of its term recognises it.
    let mut raft = fresh(1, &[1, 2, 3], Q);
    raft.tick(T0);
    raft.tick(at(2000));
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(2), answer);
    take(&mut raft);
    raft.handle_message(at(2000), n(3), append(1, (0, 0), vec![noop(1, 1)], 0, 0));
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::RoleChanged { role: Role::Follower, term: Term(1), leader: Some(n(3)) },
            Effect::AppendLog { entries: vec![noop(1, 1)] },
            send(3, accepted(1, 0, 1, 0)),
        ]
    );
}

#[test]
fn learners_never_campaign() {
    let mut raft = Raft::new(
        config(4, Q),
        RestoredState {
            snapshot: SnapshotMeta {
                membership: Membership {
                    voters: [n(1), n(2), n(3)].into(),
                    learners: [n(4)].into(),
                    ..Membership::default()
                },
                ..SnapshotMeta::default()
            },
            ..RestoredState::default()
        },
    );
    raft.tick(T0);
    raft.tick(at(10_000));
    assert_eq!(take(&mut raft), vec![]);
    raft.handle_message(at(10_000), n(1), Message::TimeoutNow { term: Term(0) });
    assert_eq!(take(&mut raft), vec![], "not even when told to");
}

#[test]
fn a_learners_vote_does_not_count() {
    // Only voters of the candidate's configuration count toward its majority.
    let membership =
        Membership { voters: [n(1), n(2), n(3)].into(), learners: [n(4), n(5)].into(), ..Membership::default() };
    let restored =
        RestoredState { snapshot: SnapshotMeta { membership, ..SnapshotMeta::default() }, ..RestoredState::default() };
    let mut raft = Raft::new(config(1, Q), restored);
    raft.tick(T0);
    raft.tick(at(2000));
    let effects = take(&mut raft);
    assert_eq!(sent(&effects).iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![2, 3], "learners are not asked");
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(4), answer);
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(5), answer);
    assert_eq!(raft.role(), Role::PreCandidate, "two learner grants are not a majority");
    let answer = pre_vote_answer(&raft, 1, true);
    raft.handle_message(at(2000), n(2), answer);
    assert_eq!(raft.role(), Role::Candidate);
}

#[test]
fn every_election_has_at_most_one_winner() {
    // §5.2 election safety, by exhaustion over a small case: two candidates in one term split three
    // voters; whichever order the votes arrive in, at most one reaches a majority.
    for order in [[2, 3], [3, 2]] {
        let mut voters: Vec<Raft> = (1..=3).map(|id| fresh(id, &[1, 2, 3], Q)).collect();
        let mut winners = 0;
        for candidate in order {
            let request = Message::RequestVote(vote_request(1, (0, 0), false));
            voters[0].handle_message(T0, n(candidate), request);
            let granted = sent(&take(&mut voters[0])) == vec![(candidate, Message::RequestVoteResponse(vote(1, true)))];
            // Each candidate has its own vote; with voter 1's it has two of three.
            winners += u32::from(granted);
        }
        assert_eq!(winners, 1, "order {order:?}");
    }
}
