//! Linearizable reads by read index (dissertation §6.4): record the commit index, confirm leadership
//! with a heartbeat round acknowledged by a majority, and wait for an entry of the leader's term to
//! have committed.

use super::*;

const Q: Durability = Durability::Quorum;

#[test]
fn a_non_leader_fails_the_read_with_a_hint() {
    let mut follower = fresh(2, &[1, 2, 3], Q);
    follower.handle_message(T0, n(1), append(1, (0, 0), Vec::new(), 0, 0));
    take(&mut follower);
    follower.read_index(T0, 7);
    assert_eq!(take(&mut follower), vec![Effect::ReadFailed { read_id: 7, leader_hint: Some(n(1)) }]);
}

#[test]
fn a_new_leader_answers_once_its_no_op_commits_and_a_majority_confirms() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    raft.read_index(T0, 7);
    // The no-op's probe is unanswered, so the heartbeat carries it again, with the read round.
    let probe = append(1, (0, 0), vec![noop(1, 1)], 0, 1);
    assert_eq!(take(&mut raft), vec![send(2, probe.clone()), send(3, probe)]);
    raft.handle_message(T0, n(2), accepted(1, 1, 1, 1));
    assert_eq!(take(&mut raft), vec![], "leadership confirmed, but nothing of this term committed yet");
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    assert_eq!(
        take(&mut raft),
        vec![Effect::Committed { index: LogIndex(1) }, Effect::ReadReady { read_id: 7, index: LogIndex(1) }]
    );
}

#[test]
fn only_answers_to_the_reads_own_round_confirm_it() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    raft.read_index(T0, 8);
    let heartbeat = append(1, (1, 1), Vec::new(), 1, 1);
    assert_eq!(take(&mut raft), vec![send(2, heartbeat.clone()), send(3, heartbeat)]);
    raft.handle_message(T0, n(2), accepted(1, 0, 1, 1));
    assert_eq!(take(&mut raft), vec![], "an answer to an older append says nothing about now");
    raft.handle_message(T0, n(3), rejected(1, 1, 1, (0, 0)));
    assert_eq!(
        take(&mut raft),
        vec![Effect::ReadReady { read_id: 8, index: LogIndex(1) }],
        "any answer in this term to this round confirms leadership, even a rejection"
    );
}

#[test]
fn the_read_index_is_the_commit_index_when_asked() {
    // Entries committed after the read was asked do not delay it.
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    raft.read_index(T0, 9);
    raft.propose(T0, write("a")).expect("leader");
    raft.handle_persisted(T0, LogIndex(2), Term(1));
    raft.handle_message(T0, n(2), accepted(1, 1, 2, 2));
    let effects = take(&mut raft);
    assert!(effects.contains(&Effect::ReadReady { read_id: 9, index: LogIndex(1) }), "{effects:?}");
}

#[test]
fn a_single_voter_answers_at_once() {
    let mut raft = elect(1, &[1], Q);
    raft.handle_persisted(T0, LogIndex(1), Term(1));
    take(&mut raft);
    raft.read_index(T0, 3);
    assert_eq!(take(&mut raft), vec![Effect::ReadReady { read_id: 3, index: LogIndex(1) }]);
}

#[test]
fn pending_reads_fail_when_leadership_is_lost() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    raft.read_index(T0, 4);
    take(&mut raft);
    raft.handle_message(T0, n(2), append(2, (0, 0), Vec::new(), 0, 0));
    let effects = take(&mut raft);
    assert!(effects.contains(&Effect::ReadFailed { read_id: 4, leader_hint: Some(n(2)) }), "{effects:?}");
}
