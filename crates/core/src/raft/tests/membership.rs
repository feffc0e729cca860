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
        // The new voter is probed right after the leader's last entry.
        vec![Effect::AppendLog { entries: vec![entry] }, send(2, append(1, (2, 1), Vec::new(), 1, 0))]
    );
    assert_eq!(raft.membership().voters, voters(&[1, 2]));
    raft.handle_persisted(T0, LogIndex(2), Term(1));
    assert_eq!(take(&mut raft), vec![], "two voters now: the leader alone cannot commit the change");
    raft.handle_message(T0, n(2), accepted(1, 0, 2, 2));
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
