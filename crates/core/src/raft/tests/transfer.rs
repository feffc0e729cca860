//! Leadership transfer (dissertation §3.10): stop taking proposals, bring the target up to date,
//! send TimeoutNow; the target campaigns at once, and voters that still hear from the old leader
//! vote for it anyway.

use super::*;

const Q: Durability = Durability::Quorum;

#[test]
fn an_up_to_date_target_is_told_to_campaign_at_once() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    assert_eq!(raft.transfer_leadership(T0, n(2)), Ok(()));
    assert_eq!(take(&mut raft), vec![send(2, Message::TimeoutNow { term: Term(1) })]);
    assert_eq!(raft.propose(T0, write("a")), Err(ProposeError::TransferInProgress { target: n(2) }));
    assert_eq!(raft.transfer_leadership(T0, n(3)), Err(TransferError::InProgress { target: n(2) }));
}

#[test]
fn a_lagging_target_is_caught_up_first() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[3], T0);
    assert_eq!(raft.transfer_leadership(T0, n(2)), Ok(()));
    let effects = take(&mut raft);
    assert_eq!(effects, vec![], "the probe to node 2 is still out: wait for its answer");
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 0));
    assert_eq!(take(&mut raft), vec![], "appended, not durable: not yet");
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 1));
    assert_eq!(take(&mut raft), vec![send(2, Message::TimeoutNow { term: Term(1) })]);
}

#[test]
fn transfers_to_non_voters_or_from_followers_are_refused() {
    let mut follower = fresh(2, &[1, 2, 3], Q);
    assert_eq!(follower.transfer_leadership(T0, n(3)), Err(TransferError::NotLeader { leader_hint: None }));
    let mut raft = elect(1, &[1, 2, 3], Q);
    assert_eq!(raft.transfer_leadership(T0, n(9)), Err(TransferError::NotVoter { target: n(9) }));
    assert_eq!(raft.transfer_leadership(T0, n(1)), Ok(()), "already the leader");
}

#[test]
fn the_target_campaigns_without_pre_vote() {
    let mut target = fresh(2, &[1, 2, 3], Q);
    target.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1)], 0, 0));
    take(&mut target);
    target.handle_message(T0, n(1), Message::TimeoutNow { term: Term(1) });
    let request = Message::RequestVote(vote_request(2, (1, 1), true));
    assert_eq!(
        take(&mut target),
        vec![
            Effect::PersistHardState { term: Term(2), voted_for: Some(n(2)) },
            Effect::RoleChanged { role: Role::Candidate, term: Term(2), leader: None },
            send(1, request.clone()),
            send(3, request),
        ]
    );
}

#[test]
fn voters_that_hear_from_the_leader_still_vote_for_the_transfer_target() {
    // A transfer request bypasses leader stickiness, at followers and at the old leader alike.
    let mut follower = fresh(3, &[1, 2, 3], Q);
    follower.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1)], 0, 0));
    take(&mut follower);
    follower.handle_message(at(10), n(2), Message::RequestVote(vote_request(2, (1, 1), true)));
    assert_eq!(sent(&take(&mut follower)), vec![(2, Message::RequestVoteResponse(vote(2, true)))]);

    let mut leader = elect(1, &[1, 2, 3], Q);
    leader.handle_message(at(10), n(2), Message::RequestVote(vote_request(2, (1, 1), true)));
    let effects = take(&mut leader);
    assert_eq!(leader.role(), Role::Follower);
    assert_eq!(sent(&effects), vec![(2, Message::RequestVoteResponse(vote(2, true)))]);
}

#[test]
fn a_transfer_that_does_not_finish_in_an_election_timeout_is_abandoned() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[3], T0);
    raft.transfer_leadership(T0, n(2)).expect("leader");
    // Node 3 keeps answering, so check-quorum keeps the leader in place.
    for ms in (100..=2000).step_by(100) {
        raft.handle_message(at(ms), n(3), accepted(1, 0, 1, 1));
        raft.tick(at(ms));
    }
    take(&mut raft);
    assert_eq!(raft.role(), Role::Leader);
    assert_eq!(raft.status().transfer_target, None);
    assert_eq!(raft.propose(at(2000), write("a")), Ok(LogIndex(2)));
}

#[test]
fn a_stale_transfer_request_does_not_disrupt_the_leader() {
    // Found by the simulator (seed 12680, quorum, all faults): the leader's `TimeoutNow` to node 3
    // was delayed past the transfer's end; the leader then removed node 3 (which never receives its
    // own removal) and went on. The late `TimeoutNow` made node 3 campaign with the transfer flag,
    // which bypassed leader stickiness: every member took its term and the leader stepped down.
    let mut leader = elect(1, &[1, 2, 3], Q);
    settle(&mut leader, &[2, 3], T0);
    leader.propose_membership_change(T0, MembershipChange::RemoveNode(n(3))).expect("leader");
    settle(&mut leader, &[2], T0);
    // Node 3's log ends at 1/1, the leader's at 2/1.
    leader.handle_message(at(10), n(3), Message::RequestVote(vote_request(2, (1, 1), true)));
    assert_eq!(take(&mut leader), vec![], "ignored, like any vote request while leading");
    assert_eq!((leader.role(), leader.term()), (Role::Leader, Term(1)));
    let mut follower = fresh(2, &[1, 2, 3], Q);
    follower.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1), noop(2, 1)], 0, 0));
    take(&mut follower);
    follower.handle_message(at(10), n(3), Message::RequestVote(vote_request(2, (1, 1), true)));
    assert_eq!(take(&mut follower), vec![]);
    assert_eq!(follower.term(), Term(1));
}

#[test]
fn a_stale_transfer_request_is_ignored_without_a_leader_too() {
    // Found by the simulator (seed 1006098, quorum, all faults): the leader's `TimeoutNow` to node 1
    // was held by a partition and delivered a second later, after node 1 had been removed; by then
    // the leader was cut off and had stepped down, so no member was in a leader lease and the fix for
    // seed 12680 did not apply: every member took the removed node's term. Here it did no harm (the
    // group had no leader), but a member that merely lost contact with a live leader would have
    // taken it too, and its answer to that leader's next append would have deposed the leader. A
    // transfer target has the leader's whole log, so a member whose log is ahead of the candidate's
    // knows the request is stale, and could not grant it anyway.
    let mut follower = fresh(2, &[1, 2, 3], Q);
    follower.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1), noop(2, 1)], 0, 0));
    take(&mut follower);
    // Long past the lease: node 2 no longer counts on node 1.
    let late = at(10 * follower.config().election_timeout_ms_max);
    follower.handle_message(late, n(3), Message::RequestVote(vote_request(2, (1, 1), true)));
    assert_eq!(take(&mut follower), vec![], "stale: not answered, its term not taken");
    assert_eq!(follower.term(), Term(1));
    // The leader of term 1 is heard from again and is followed, not deposed by a higher term.
    follower.handle_message(late, n(1), append(1, (2, 1), vec![], 2, 0));
    assert_eq!(sent(&take(&mut follower)), vec![(1, accepted(1, 0, 2, 0))], "appended, not yet durable");
    assert_eq!(follower.term(), Term(1));
}
