//! The commit rule: the durability modes (one table in `quorum.rs`, exercised end to end here), Raft
//! §5.4.2 (no commitment of earlier terms by counting), and check-quorum (dissertation §6.2).

use super::*;

/// A leader elected in a fresh group, whose no-op (entry 1) is durable locally.
fn leader(voters: &[u64], durability: Durability) -> Raft {
    let mut raft = elect(1, voters, durability);
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    take(&mut raft);
    raft
}

fn committed(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Committed { index } => Some(index.0),
            _ => None,
        })
        .collect()
}

#[test]
fn quorum_commits_once_a_majority_of_voters_has_the_entry_durably() {
    let mut raft = leader(&[1, 2, 3], Durability::Quorum);
    assert_eq!(raft.commit_index(), LogIndex(0), "the leader alone is not a majority of three");
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 0));
    assert_eq!(committed(&take(&mut raft)), Vec::<u64>::new(), "appended is not durable");
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 1));
    assert_eq!(take(&mut raft), vec![Effect::Committed { index: LogIndex(1) }]);
}

#[test]
fn the_leader_counts_itself_only_for_entries_durable_in_its_own_log() {
    let mut raft = elect(1, &[1, 2, 3], Durability::Quorum);
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 1));
    raft.handle_message(T0, n(3), accepted(1, 0, 1, 1));
    assert_eq!(committed(&take(&mut raft)), Vec::<u64>::new(), "both followers, but not the leader's own disk");
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    assert_eq!(take(&mut raft), vec![Effect::Committed { index: LogIndex(1) }]);
}

#[test]
fn async_commits_on_the_leaders_own_fsync() {
    let mut raft = elect(1, &[1, 2, 3], Durability::Async);
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    assert_eq!(take(&mut raft), vec![Effect::Committed { index: LogIndex(1) }]);
}

#[test]
fn semi_sync_waits_for_k_voter_followers() {
    let mut raft = leader(&[1, 2, 3, 4, 5], Durability::SemiSync(2));
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 1));
    assert_eq!(committed(&take(&mut raft)), Vec::<u64>::new(), "one of two followers");
    raft.handle_message(T0, n(5), accepted(1, 0, 1, 1));
    assert_eq!(committed(&take(&mut raft)), vec![1]);
}

#[test]
fn all_waits_for_every_voter() {
    let mut raft = leader(&[1, 2, 3], Durability::All);
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 1));
    assert_eq!(committed(&take(&mut raft)), Vec::<u64>::new(), "a majority is not everyone");
    raft.handle_message(T0, n(3), accepted(1, 0, 1, 1));
    assert_eq!(committed(&take(&mut raft)), vec![1]);
}

#[test]
fn learners_are_never_counted() {
    let membership =
        Membership { voters: [n(1), n(2), n(3)].into(), learners: [n(4), n(5)].into(), ..Membership::default() };
    let restored =
        RestoredState { snapshot: SnapshotMeta { membership, ..SnapshotMeta::default() }, ..RestoredState::default() };
    let mut raft = Raft::new(config(1, Durability::Quorum), restored);
    campaign(&mut raft, &[1, 2, 3]);
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    raft.handle_message(T0, n(4), accepted(1, 0, 1, 1));
    raft.handle_message(T0, n(5), accepted(1, 0, 1, 1));
    assert_eq!(committed(&take(&mut raft)), Vec::<u64>::new(), "two learners are not a voter");
    raft.handle_message(T0, n(3), accepted(1, 0, 1, 1));
    assert_eq!(committed(&take(&mut raft)), vec![1]);
}

#[test]
fn entries_of_earlier_terms_do_not_commit_by_counting() {
    // §5.4.2, figure 8: a leader may not conclude an entry of an earlier term is committed once a
    // majority stores it; it commits with the first entry of its own term.
    let mut raft = with_log(1, &[1, 2, 3], Durability::Quorum, 2, entries_with_terms(&[1, 2]));
    campaign(&mut raft, &[1, 2, 3]);
    assert_eq!((raft.term(), raft.last_index()), (Term(3), LogIndex(3)), "the no-op of term 3 is entry 3");
    raft.handle_persisted(T0, LogIndex(3), Term(3));
    raft.handle_message(T0, n(2), accepted(3, 0, 2, 2));
    assert_eq!(committed(&take(&mut raft)), Vec::<u64>::new(), "entry 2 (term 2) is on a majority, yet not committed");
    raft.handle_message(T0, n(2), accepted(3, 0, 3, 3));
    assert_eq!(committed(&take(&mut raft)), vec![3], "entry 3 commits, and 1 and 2 with it");
}

#[test]
fn check_quorum_a_leader_that_hears_from_no_majority_steps_down() {
    // Dissertation §6.2: a leader steps down when an election timeout passes without it hearing from
    // a majority of voters, so a partitioned leader stops serving.
    let mut raft = leader(&[1, 2, 3], Durability::Quorum);
    raft.tick(at(500));
    raft.handle_message(at(500), n(2), accepted(1, 0, 1, 1));
    raft.tick(at(999));
    take(&mut raft);
    raft.tick(at(1499));
    assert_eq!(raft.role(), Role::Leader, "node 2 answered 999 ms ago");
    take(&mut raft);
    raft.tick(at(1500));
    assert_eq!(take(&mut raft), vec![Effect::RoleChanged { role: Role::Follower, term: Term(1), leader: None }]);
}

#[test]
fn a_single_voter_never_steps_down_for_lack_of_a_quorum() {
    let mut raft = elect(1, &[1], Durability::Quorum);
    raft.tick(at(100_000));
    assert_eq!(raft.role(), Role::Leader);
}

#[test]
fn proposals_are_refused_off_the_leader_and_beyond_the_uncommitted_limit() {
    let mut follower = fresh(2, &[1, 2, 3], Durability::Quorum);
    follower.handle_message(T0, n(1), append(1, (0, 0), Vec::new(), 0, 0));
    assert_eq!(follower.propose(T0, write("a")), Err(ProposeError::NotLeader { leader_hint: Some(n(1)) }));
    let config = RaftConfig { uncommitted_entries_max: 2, ..config(1, Durability::Quorum) };
    let mut raft = Raft::new(config, RestoredState::bootstrap([n(1), n(2)]));
    campaign(&mut raft, &[1, 2]);
    assert_eq!(raft.propose(T0, write("a")), Ok(LogIndex(2)));
    assert_eq!(raft.propose(T0, write("b")), Err(ProposeError::TooManyUncommitted { uncommitted: 2 }));
    assert_eq!(raft.propose(T0, EntryPayload::Membership(Membership::default())), Err(ProposeError::MembershipPayload));
}
