//! Log replication: Raft §5.3 (log matching, conflict truncation, backtracking), §5.1 (term fencing
//! of appends), and the engine's flow control (probe, pipelining, in-flight limit).

use super::*;

const Q: Durability = Durability::Quorum;

#[test]
fn a_follower_appends_and_acknowledges_only_what_is_durable() {
    let mut follower = fresh(2, &[1, 2, 3], Q);
    let entries = vec![noop(1, 1), write_entry(2, 1, "a")];
    follower.handle_message(T0, n(1), append(1, (0, 0), entries.clone(), 0, 0));
    assert_eq!(
        take(&mut follower),
        vec![
            Effect::PersistHardState { term: Term(1), voted_for: None },
            Effect::RoleChanged { role: Role::Follower, term: Term(1), leader: Some(n(1)) },
            Effect::AppendLog { entries },
            // Appended up to 2, durable up to nothing yet.
            send(1, accepted(1, 0, 2, 0)),
        ]
    );
    follower.handle_persisted(T0, LogIndex(2), Term(1));
    assert_eq!(take(&mut follower), vec![send(1, accepted(1, 0, 2, 2))], "the durable acknowledgement");
    follower.handle_message(T0, n(1), append(1, (2, 1), Vec::new(), 2, 0));
    assert_eq!(take(&mut follower), vec![Effect::Committed { index: LogIndex(2) }, send(1, accepted(1, 0, 2, 2))]);
}

#[test]
fn a_stale_persisted_report_is_ignored() {
    // The driver reports durability by (index, term): a report about an entry since replaced must
    // not acknowledge its replacement.
    let mut follower = with_log(2, &[1, 2, 3], Q, 1, Vec::new());
    follower.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1), noop(2, 1)], 0, 0));
    follower.handle_message(T0, n(3), append(2, (1, 1), vec![noop(2, 2)], 0, 0));
    take(&mut follower);
    follower.handle_persisted(T0, LogIndex(2), Term(1));
    assert_eq!(take(&mut follower), vec![]);
    assert_eq!(follower.persisted_index(), LogIndex(0));
    follower.handle_persisted(T0, LogIndex(2), Term(2));
    assert_eq!(take(&mut follower), vec![send(3, accepted(2, 0, 2, 2))]);
}

#[test]
fn a_missing_previous_entry_is_rejected_with_the_last_index_as_hint() {
    // §5.3: the consistency check fails if the log has no entry at prevLogIndex.
    let mut follower = with_log(2, &[1, 2, 3], Q, 1, entries_with_terms(&[1]));
    follower.handle_message(T0, n(1), append(1, (5, 1), vec![noop(6, 1)], 0, 0));
    assert_eq!(
        take(&mut follower),
        vec![
            Effect::RoleChanged { role: Role::Follower, term: Term(1), leader: Some(n(1)) },
            send(1, rejected(1, 0, 5, (1, 1))),
        ]
    );
}

#[test]
fn a_term_mismatch_is_rejected_with_a_hint_that_skips_the_whole_term() {
    // §5.3 (the optimisation at the end): the follower points at the last entry whose term is at most
    // the leader's term at prevLogIndex, so the leader skips every entry of the conflicting term.
    let mut follower = with_log(2, &[1, 2, 3], Q, 3, entries_with_terms(&[1, 1, 2, 2, 2]));
    follower.handle_message(T0, n(1), append(3, (5, 1), Vec::new(), 0, 0));
    let answers = sent(&take(&mut follower));
    assert_eq!(answers, vec![(1, rejected(3, 0, 5, (2, 1)))]);
}

#[test]
fn a_conflicting_suffix_is_truncated_and_reported_before_the_new_entries() {
    // §5.3: delete the existing entry and all that follow it; the driver hears TruncateLog first, with
    // the discarded entries for the rollback file.
    let old = vec![noop(1, 1), write_entry(2, 1, "a"), write_entry(3, 1, "b")];
    let mut follower = with_log(2, &[1, 2, 3], Q, 1, old.clone());
    follower.handle_message(T0, n(3), append(2, (1, 1), vec![noop(2, 2)], 1, 0));
    assert_eq!(
        take(&mut follower),
        vec![
            Effect::PersistHardState { term: Term(2), voted_for: None },
            Effect::RoleChanged { role: Role::Follower, term: Term(2), leader: Some(n(3)) },
            Effect::TruncateLog { from: LogIndex(2), discarded: old[1..].to_vec(), discards_committed: false },
            Effect::AppendLog { entries: vec![noop(2, 2)] },
            Effect::Committed { index: LogIndex(1) },
            // Entry 2 matches the leader's but is not durable yet (the truncation lowered durability).
            send(3, accepted(2, 0, 2, 1)),
        ]
    );
}

#[test]
fn a_stale_append_never_truncates_matching_entries() {
    // §5.3: only a conflict truncates; an old, shorter append that the log already contains does not.
    let mut follower = with_log(2, &[1, 2, 3], Q, 1, entries_with_terms(&[1, 1, 1]));
    follower.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1)], 0, 0));
    assert_eq!(
        take(&mut follower),
        vec![
            Effect::RoleChanged { role: Role::Follower, term: Term(1), leader: Some(n(1)) },
            send(1, accepted(1, 0, 1, 1)),
        ]
    );
    assert_eq!(follower.last_index(), LogIndex(3));
}

#[test]
fn a_stale_term_append_is_rejected_with_the_current_term() {
    // §5.1: a request with a stale term is rejected; the answer tells the deposed leader the term.
    let mut follower = with_log(2, &[1, 2, 3], Q, 3, entries_with_terms(&[1, 3]));
    follower.handle_message(T0, n(1), append(2, (2, 2), vec![noop(3, 2)], 2, 7));
    assert_eq!(take(&mut follower), vec![send(1, rejected(3, 7, 2, (2, 3)))]);
    assert_eq!((follower.term(), follower.leader(), follower.last_index()), (Term(3), None, LogIndex(2)));
}

#[test]
fn a_follower_commits_only_entries_that_match_the_leader_and_are_durable() {
    // leader_commit may run ahead of what this follower has from the leader.
    let mut follower = with_log(2, &[1, 2, 3], Q, 1, entries_with_terms(&[1, 1, 1]));
    follower.handle_message(T0, n(1), append(1, (0, 0), vec![noop(1, 1)], 3, 0));
    let effects = take(&mut follower);
    assert!(effects.contains(&Effect::Committed { index: LogIndex(1) }), "only entry 1 is known to match: {effects:?}");
    assert_eq!(follower.commit_index(), LogIndex(1));
}

/// Drives a leader and one follower to agreement, delivering every message and making both logs
/// durable after each exchange; returns the follower's effects.
fn replicate_until_quiet(leader: &mut Raft, follower: &mut Raft) -> Vec<Effect> {
    let mut follower_effects = Vec::new();
    let mut to_follower: Vec<Message> =
        sent(&take(leader)).into_iter().filter(|(to, _)| *to == 2).map(|(_, message)| message).collect();
    for _ in 0..50 {
        if to_follower.is_empty() {
            return follower_effects;
        }
        for message in std::mem::take(&mut to_follower) {
            follower.handle_message(T0, n(1), message);
        }
        let last = follower.last_index();
        follower.handle_persisted(T0, last, follower.term_at(last).expect("last"));
        let effects = take(follower);
        let replies: Vec<Message> = sent(&effects).into_iter().map(|(_, message)| message).collect();
        follower_effects.extend(effects);
        for reply in replies {
            leader.handle_message(T0, n(2), reply);
        }
        let last = leader.last_index();
        leader.handle_persisted(T0, last, leader.term_at(last).expect("last"));
        to_follower = sent(&take(leader)).into_iter().filter(|(to, _)| *to == 2).map(|(_, message)| message).collect();
    }
    panic!("no agreement after 50 rounds");
}

#[test]
fn figure_7_every_follower_converges_to_the_leaders_log() {
    // §5.3, figure 7: whatever the follower's log — missing entries, extra uncommitted entries, or
    // both — the leader's consistency check and backtracking bring it to the leader's log.
    let leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let cases: [(&str, &[u64], bool); 6] = [
        ("a", &[1, 1, 1, 4, 4, 5, 5, 6, 6], false),
        ("b", &[1, 1, 1, 4], false),
        ("c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], true),
        ("d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], true),
        ("e", &[1, 1, 1, 4, 4, 4, 4], true),
        ("f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], true),
    ];
    for (name, follower_terms, truncates) in cases {
        let mut leader = with_log(1, &[1, 2], Q, 7, entries_with_terms(&leader_terms));
        campaign(&mut leader, &[1, 2]);
        // campaign drained the no-op's first probe: ask again with a heartbeat.
        leader.tick(at(100));
        let mut follower = with_log(2, &[1, 2], Q, 7, entries_with_terms(follower_terms));
        let effects = replicate_until_quiet(&mut leader, &mut follower);
        let truncated = effects.iter().any(|effect| matches!(effect, Effect::TruncateLog { .. }));
        assert_eq!(truncated, truncates, "case {name}");
        assert_eq!(
            follower.entries(LogIndex(1), LogIndex(11)),
            leader.entries(LogIndex(1), LogIndex(11)),
            "case {name}"
        );
        assert_eq!(leader.commit_index(), LogIndex(11), "case {name}: the leader's no-op commits");
    }
}

/// A leader of {1, 2} with small appends, whose follower 2 has acknowledged the no-op.
fn pipelining_leader() -> Raft {
    let config = RaftConfig { entries_per_append_max: 1, appends_in_flight_max: 2, ..config(1, Q) };
    let mut leader = Raft::new(config, RestoredState::bootstrap([n(1), n(2)]));
    campaign(&mut leader, &[1, 2]);
    leader.handle_message(T0, n(2), accepted(1, 0, 1, 1));
    take(&mut leader);
    leader
}

#[test]
fn the_leader_pipelines_up_to_the_in_flight_limit() {
    let mut leader = pipelining_leader();
    leader.propose(T0, write("a")).expect("leader");
    assert_eq!(sent(&take(&mut leader)), vec![(2, append(1, (1, 1), vec![write_entry(2, 1, "a")], 0, 0))]);
    leader.propose(T0, write("b")).expect("leader");
    assert_eq!(sent(&take(&mut leader)), vec![(2, append(1, (2, 1), vec![write_entry(3, 1, "b")], 0, 0))]);
    leader.propose(T0, write("c")).expect("leader");
    assert_eq!(sent(&take(&mut leader)), vec![], "two appends in flight: the third waits");
    // The answer to the first frees a slot.
    leader.handle_message(T0, n(2), accepted(1, 0, 2, 2));
    assert_eq!(sent(&take(&mut leader)), vec![(2, append(1, (3, 1), vec![write_entry(4, 1, "c")], 0, 0))]);
}

#[test]
fn a_rejection_while_pipelining_falls_back_to_probing() {
    let mut leader = pipelining_leader();
    leader.propose(T0, write("a")).expect("leader");
    leader.propose(T0, write("b")).expect("leader");
    take(&mut leader);
    // The follower lost entry 2 (say, the message was dropped) and rejects the append at 2.
    leader.handle_message(T0, n(2), rejected(1, 0, 2, (1, 1)));
    assert_eq!(sent(&take(&mut leader)), vec![(2, append(1, (1, 1), vec![write_entry(2, 1, "a")], 0, 0))]);
    assert_eq!(leader.status().followers[0].state, ReplicationState::Probe);
    // A second, stale rejection (of the append at 1) changes nothing.
    leader.handle_message(T0, n(2), rejected(1, 0, 1, (0, 0)));
    assert_eq!(take(&mut leader), vec![]);
    assert_eq!(leader.status().followers[0].next_index, LogIndex(2));
}

#[test]
fn heartbeats_carry_the_commit_index_and_the_read_round() {
    let mut leader = pipelining_leader();
    leader.handle_persisted(T0, LogIndex(1), Term(1));
    assert_eq!(take(&mut leader), vec![Effect::Committed { index: LogIndex(1) }]);
    leader.tick(at(99));
    assert_eq!(take(&mut leader), vec![], "not yet due");
    leader.tick(at(100));
    assert_eq!(take(&mut leader), vec![send(2, append(1, (1, 1), Vec::new(), 1, 0))]);
}

#[test]
fn a_probe_is_resent_at_the_next_heartbeat_only() {
    // A probe waits for its answer; if it was lost, the heartbeat sends it again.
    let mut leader = elect(1, &[1, 2], Q);
    leader.propose(T0, write("a")).expect("leader");
    let effects = take(&mut leader);
    assert_eq!(sent(&effects), vec![], "the no-op probe is still unanswered");
    leader.tick(at(100));
    assert_eq!(sent(&take(&mut leader)), vec![(2, append(1, (0, 0), vec![noop(1, 1), write_entry(2, 1, "a")], 0, 0))]);
}
