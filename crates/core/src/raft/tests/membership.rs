//! Single-server membership changes (dissertation §4.1): one at a time, in force once appended, rolled
//! back with a truncated entry; learners (§4.2.1) replicate without voting or counting.

use super::*;

const Q: Durability = Durability::Quorum;

fn voters(ids: &[u64]) -> std::collections::BTreeSet<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

#[test]
fn one_change_at_a_time() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    assert_eq!(raft.propose_membership_change(T0, MembershipChange::AddLearner(n(4))), Ok(LogIndex(2)));
    assert_eq!(
        raft.propose_membership_change(T0, MembershipChange::AddLearner(n(5))),
        Err(ProposeError::MembershipChangePending)
    );
    settle(&mut raft, &[2, 3], T0);
    assert_eq!(raft.propose_membership_change(T0, MembershipChange::PromoteLearner(n(4))), Ok(LogIndex(3)));
}

#[test]
fn no_change_before_an_entry_of_the_leaders_term_commits() {
    // The dissertation's erratum: otherwise a change of an earlier, uncommitted configuration could
    // still be in play.
    let mut raft = elect(1, &[1, 2, 3], Q);
    assert_eq!(
        raft.propose_membership_change(T0, MembershipChange::AddLearner(n(4))),
        Err(ProposeError::MembershipChangePending)
    );
}

#[test]
fn a_change_is_in_force_as_soon_as_it_is_appended() {
    // §4.1: the new configuration counts for commitment immediately, including for its own entry.
    let mut raft = elect(1, &[1], Q);
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    take(&mut raft);
    assert_eq!(raft.propose_membership_change(T0, MembershipChange::AddVoter(n(2))), Ok(LogIndex(2)));
    let effects = take(&mut raft);
    let config = EntryPayload::Membership(Membership::with_voters([n(1), n(2)]));
    let entry = LogEntry { index: LogIndex(2), term: Term(1), payload: config };
    assert_eq!(
        effects,
        // The new voter is probed right after the leader's last entry, in a new read-index round
        // (answers from before it was added are ignored).
        vec![Effect::AppendLog { entries: vec![entry] }, send(2, append(1, (2, 1), Vec::new(), 1, 1))]
    );
    assert_eq!(raft.membership().voters, voters(&[1, 2]));
    raft.handle_persisted(T0, LogIndex(2), Term(1));
    assert_eq!(take(&mut raft), vec![], "two voters now: the leader alone cannot commit the change");
    raft.handle_message(T0, n(2), accepted(1, 1, 2, 2));
    assert_eq!(take(&mut raft), vec![Effect::Committed { index: LogIndex(2) }]);
}

#[test]
fn a_truncated_change_is_rolled_back() {
    let mut follower = fresh(2, &[1, 2, 3], Q);
    let grown = Membership::with_voters([n(1), n(2), n(3), n(4)]);
    let change = LogEntry { index: LogIndex(2), term: Term(1), payload: EntryPayload::Membership(grown) };
    follower.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1), change], 0, 0));
    assert_eq!(follower.membership().voters, voters(&[1, 2, 3, 4]), "in force once appended, before it commits");
    follower.handle_message(T0, n(3), append(2, (1, 1), vec![noop(2, 2)], 0, 0));
    assert_eq!(follower.membership().voters, voters(&[1, 2, 3]), "the truncation took the change with it");
}

#[test]
fn the_leader_cannot_remove_itself() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    assert_eq!(
        raft.propose_membership_change(T0, MembershipChange::RemoveNode(n(1))),
        Err(ProposeError::Membership(MembershipError::RemovingLeader(n(1))))
    );
    assert_eq!(
        raft.propose_membership_change(T0, MembershipChange::PromoteLearner(n(2))),
        Err(ProposeError::Membership(MembershipError::NotLearner(n(2))))
    );
}

#[test]
fn a_learner_receives_entries_without_voting_or_counting() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    raft.propose_membership_change(T0, MembershipChange::AddLearner(n(4))).expect("leader");
    let effects = take(&mut raft);
    assert!(sent(&effects).iter().any(|(to, _)| *to == 4), "the learner gets the log: {effects:?}");
    let status = raft.status();
    let learner = status.followers.iter().find(|follower| follower.node_id == n(4)).expect("tracked");
    assert!(!learner.voter);
    raft.handle_persisted(T0, LogIndex(2), Term(1));
    raft.handle_message(T0, n(4), accepted(1, 0, 2, 2));
    assert_eq!(take(&mut raft).iter().filter(|effect| matches!(effect, Effect::Committed { .. })).count(), 0);
}

#[test]
fn a_removed_follower_is_no_longer_replicated_to() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    raft.propose_membership_change(T0, MembershipChange::RemoveNode(n(3))).expect("leader");
    let effects = take(&mut raft);
    assert_eq!(sent(&effects).iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![2]);
    assert_eq!(raft.status().followers.len(), 1);
    // With two voters, both are needed.
    raft.handle_persisted(T0, LogIndex(2), Term(1));
    assert_eq!(take(&mut raft), vec![]);
    raft.handle_message(T0, n(2), accepted(1, 0, 2, 2));
    assert_eq!(take(&mut raft), vec![Effect::Committed { index: LogIndex(2) }]);
}

#[test]
fn answers_to_an_earlier_life_of_a_node_added_back_are_ignored() {
    // Found by the simulator (seed 672, async, membership faults): a node was removed, wiped and added
    // back in the same term; an acknowledgement its earlier life sent reached the leader after the
    // new progress existed, so the leader took the empty node to hold entries it did not have:
    // it probed only above that match forever (a voter never caught up), and counted it toward
    // commits.
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    raft.propose_membership_change(T0, MembershipChange::RemoveNode(n(3))).expect("leader");
    settle(&mut raft, &[2], T0);
    raft.propose_membership_change(T0, MembershipChange::AddLearner(n(3))).expect("leader");
    let effects = take(&mut raft);
    let probes: Vec<Message> = sent(&effects).into_iter().filter(|(to, _)| *to == 3).map(|(_, m)| m).collect();
    let [Message::AppendEntries(probe)] = probes.as_slice() else { panic!("one probe to node 3: {effects:?}") };
    assert!(probe.read_seq > 0, "the node added back is probed in a new read-index round");
    // The earlier life's answer (read-index round 0), delayed in the network.
    raft.handle_message(T0, n(3), accepted(1, 0, 2, 2));
    let learner = |raft: &Raft| raft.status().followers.into_iter().find(|f| f.node_id == n(3)).expect("tracked");
    assert_eq!(learner(&raft).match_index, LogIndex::ZERO, "a stale answer moved the match index");
    assert_eq!(learner(&raft).last_contact, None);
    // The new life (empty, `RestoredState::joining()`) rejects the probe and is sent the log from 1.
    raft.handle_message(T0, n(3), rejected(1, probe.read_seq, probe.prev_log_index.0, (0, 0)));
    let effects = take(&mut raft);
    let resent: Vec<(u64, Message)> = sent(&effects).into_iter().filter(|(to, _)| *to == 3).collect();
    assert!(
        matches!(resent.as_slice(), [(_, Message::AppendEntries(append))] if append.prev_log_index == LogIndex::ZERO),
        "{effects:?}"
    );
    raft.handle_message(T0, n(3), accepted(1, probe.read_seq, 3, 3));
    assert_eq!(learner(&raft).match_index, LogIndex(3));
}

#[test]
fn under_async_a_change_waits_until_the_previous_one_is_on_a_majority() {
    // Found by the simulator (seed 1693, async, all faults; two leaders in term 5): under `async` an
    // entry commits once the leader has it, so a second change could be made on top of one no
    // follower had. A failover lost both on the nodes that had neither: node 1 kept voters {1, 2, 3}
    // while node 3 was at {2, 3, 4}, and each won term 5 with its own majority ({1, 2} and {3, 4}).
    let mut raft = elect(1, &[1, 2, 3], Durability::Async);
    settle(&mut raft, &[2, 3], T0);
    assert_eq!(raft.propose_membership_change(T0, MembershipChange::AddLearner(n(4))), Ok(LogIndex(2)));
    raft.handle_persisted(T0, LogIndex(2), Term(1));
    assert_eq!(raft.commit_index(), LogIndex(2), "committed by the leader alone under async");
    take(&mut raft);
    assert_eq!(
        raft.propose_membership_change(T0, MembershipChange::PromoteLearner(n(4))),
        Err(ProposeError::MembershipChangePending),
        "the first change is on no follower yet"
    );
    // Node 2 holds it (read-index round 1: the round node 4 was added in).
    raft.handle_message(T0, n(2), accepted(1, 1, 2, 2));
    assert_eq!(raft.propose_membership_change(T0, MembershipChange::PromoteLearner(n(4))), Ok(LogIndex(3)));
}
