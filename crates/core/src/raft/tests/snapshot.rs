//! Snapshots (Raft §7): a follower that needs compacted entries gets the state instead; installing it
//! keeps a matching log suffix or replaces the log. And the failover path of async / semi-sync, where
//! an old leader discards entries it had committed and is repaired by a snapshot.

use super::*;

const Q: Durability = Durability::Quorum;

fn meta(index: u64, term: u64, voters: &[u64]) -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
        membership: Membership::with_voters(voters.iter().copied().map(NodeId)),
    }
}

fn needs_snapshot(term: u64) -> Message {
    Message::AppendEntriesResponse(AppendEntriesResponse {
        term: Term(term),
        read_seq: 0,
        outcome: AppendOutcome::NeedsSnapshot,
    })
}

#[test]
fn a_follower_behind_the_compacted_log_gets_a_snapshot_then_entries() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    raft.propose(T0, write("a")).expect("leader");
    raft.propose(T0, write("b")).expect("leader");
    settle(&mut raft, &[3], T0);
    raft.compact(LogIndex(2));
    raft.tick(at(100));
    assert_eq!(
        take(&mut raft),
        vec![
            Effect::SendSnapshot { to: n(2), leader_term: Term(1), index: LogIndex(2) },
            send(3, append(1, (3, 1), Vec::new(), 3, 0)),
        ]
    );
    raft.tick(at(200));
    let heartbeats = sent(&take(&mut raft));
    assert_eq!(
        heartbeats[0],
        (2, append(1, (2, 1), Vec::new(), 3, 0)),
        "a heartbeat at the snapshot point while streaming"
    );
    // The follower installed the snapshot at 2 and says so.
    raft.handle_message(at(200), n(2), accepted(1, 0, 2, 2));
    assert_eq!(sent(&take(&mut raft)), vec![(2, append(1, (2, 1), vec![write_entry(3, 1, "b")], 3, 0))]);
}

#[test]
fn the_snapshot_metadata_carries_term_and_membership() {
    let mut raft = elect(1, &[1, 2, 3], Q);
    settle(&mut raft, &[2, 3], T0);
    assert_eq!(raft.snapshot_meta(LogIndex(1)), Some(meta(1, 1, &[1, 2, 3])));
    assert_eq!(raft.snapshot_meta(LogIndex(2)), None, "not committed");
}

/// A follower of node 1 in term 1 with `entries`.
fn follower(entries: Vec<LogEntry>) -> Raft {
    let mut raft = with_log(2, &[1, 2, 3], Q, 1, entries);
    raft.handle_message(T0, n(1), append(1, (0, 0), Vec::new(), 0, 0));
    take(&mut raft);
    raft
}

#[test]
fn only_a_newer_snapshot_from_the_current_leader_is_needed() {
    let raft = follower(entries_with_terms(&[1]));
    assert!(raft.snapshot_needed(n(1), Term(1), &meta(5, 1, &[1, 2, 3])));
    assert!(!raft.snapshot_needed(n(3), Term(1), &meta(5, 1, &[1, 2, 3])), "not from the leader");
    assert!(!raft.snapshot_needed(n(1), Term(2), &meta(5, 1, &[1, 2, 3])), "fenced by term");
    assert!(!raft.snapshot_needed(n(1), Term(1), &meta(0, 0, &[1, 2, 3])), "not newer than the commit index");
}

#[test]
fn a_snapshot_beyond_the_log_replaces_it() {
    let mut raft = follower(entries_with_terms(&[1]));
    raft.handle_snapshot_installed(T0, n(1), Term(1), meta(5, 1, &[1, 2, 3]));
    assert_eq!(
        take(&mut raft),
        vec![
            // Entry 1 was never committed here, hence never acknowledged by this node: not listed.
            Effect::TruncateLog { from: LogIndex(1), discarded: vec![], discards_committed: false },
            Effect::Committed { index: LogIndex(5) },
            send(1, accepted(1, 0, 5, 5)),
        ]
    );
    assert_eq!(
        (raft.last_index(), raft.commit_index(), raft.persisted_index()),
        (LogIndex(5), LogIndex(5), LogIndex(5))
    );
}

#[test]
fn a_snapshot_inside_the_log_keeps_the_matching_suffix() {
    // §7: if the log has the snapshot's last entry with its term, the entries after it are kept.
    let mut raft = follower(entries_with_terms(&[1, 1, 1, 1, 1]));
    raft.handle_snapshot_installed(T0, n(1), Term(1), meta(3, 1, &[1, 2, 3]));
    assert_eq!(take(&mut raft), vec![Effect::Committed { index: LogIndex(3) }, send(1, accepted(1, 0, 3, 3))]);
    assert_eq!(raft.last_index(), LogIndex(5));
    assert_eq!(raft.term_at(LogIndex(2)), None, "compacted");
}

#[test]
fn async_failover_discards_committed_entries_and_asks_for_a_snapshot() {
    // The old leader of term 1 acknowledged entries 2 and 3 on its own fsync; the new leader of term 2
    // never had them. When the old leader hears from it, the entries are discarded and reported, and
    // the state (which applied them) waits for a snapshot.
    let mut old = elect(1, &[1, 2, 3], Durability::Async);
    old.propose(T0, write("a")).expect("leader");
    old.propose(T0, write("b")).expect("leader");
    old.handle_persisted(T0, LogIndex(3), Term(1));
    assert_eq!(old.commit_index(), LogIndex(3));
    let acknowledged = old.entries(LogIndex(2), LogIndex(3));
    take(&mut old);
    old.handle_message(at(10), n(2), append(2, (1, 1), vec![noop(2, 2)], 1, 0));
    assert_eq!(
        take(&mut old),
        vec![
            Effect::PersistHardState { term: Term(2), voted_for: None },
            Effect::RoleChanged { role: Role::Follower, term: Term(2), leader: Some(n(2)) },
            Effect::TruncateLog { from: LogIndex(2), discarded: acknowledged, discards_committed: true },
            Effect::StateDiverged { kept: LogIndex(1) },
            send(2, needs_snapshot(2)),
        ]
    );
    assert!(old.status().awaiting_snapshot);
    old.tick(at(100_000));
    assert_eq!(old.role(), Role::Follower, "a node whose state diverged never campaigns");
    take(&mut old);
    old.handle_message(at(100_000), n(2), append(2, (1, 1), vec![noop(2, 2)], 2, 0));
    assert_eq!(take(&mut old), vec![send(2, needs_snapshot(2))], "appends wait for the snapshot");
    // The new leader's state arrives.
    assert!(old.snapshot_needed(n(2), Term(2), &meta(2, 2, &[1, 2, 3])));
    old.handle_snapshot_installed(at(100_000), n(2), Term(2), meta(2, 2, &[1, 2, 3]));
    assert_eq!(
        take(&mut old),
        vec![
            Effect::TruncateLog { from: LogIndex(1), discarded: vec![], discards_committed: false },
            Effect::Committed { index: LogIndex(2) },
            send(2, accepted(2, 0, 2, 2)),
        ]
    );
}

#[test]
fn the_leader_answers_a_diverged_follower_with_one_snapshot() {
    let mut raft = elect(1, &[1, 2, 3], Durability::Async);
    raft.handle_message(T0, n(2), needs_snapshot(1));
    assert_eq!(take(&mut raft), vec![Effect::SendSnapshot { to: n(2), leader_term: Term(1), index: LogIndex(0) }]);
    raft.handle_message(T0, n(2), needs_snapshot(1));
    assert_eq!(take(&mut raft), vec![], "already streaming");
}

#[test]
#[should_panic(expected = "conflict with the leader's log under quorum")]
fn under_quorum_discarding_a_committed_entry_is_a_safety_violation() {
    let mut restored = RestoredState::bootstrap([n(1), n(2), n(3)]);
    restored.hard_state.term = Term(1);
    restored.entries = entries_with_terms(&[1, 1, 1]);
    restored.committed_index = LogIndex(3);
    let mut raft = Raft::new(config(2, Q), restored);
    raft.handle_message(T0, n(3), append(2, (1, 1), vec![noop(2, 2)], 1, 0));
}

#[test]
fn a_failed_or_silent_snapshot_stream_is_asked_for_again() {
    let config = RaftConfig { snapshot_timeout_ms: 5_000, ..config(1, Q) };
    let mut raft = Raft::new(config, RestoredState::bootstrap([n(1), n(2)]));
    campaign(&mut raft, &[1, 2]);
    raft.handle_message(T0, n(2), needs_snapshot(1));
    take(&mut raft);
    // The driver reports the stream failed: the next heartbeat probes, and asks again.
    raft.handle_snapshot_failed(T0, n(2));
    assert_eq!(raft.status().followers[0].state, ReplicationState::Probe);
    raft.handle_message(at(50), n(2), needs_snapshot(1));
    assert_eq!(take(&mut raft), vec![Effect::SendSnapshot { to: n(2), leader_term: Term(1), index: LogIndex(0) }]);
    // No answer at all: after the snapshot timeout, the leader probes again.
    for ms in (100..=5_000).step_by(100) {
        raft.handle_message(at(ms), n(2), rejected(1, 0, 0, (0, 0)));
        raft.tick(at(ms));
    }
    assert_eq!(raft.status().followers[0].state, ReplicationState::Snapshot, "still streaming at 4950 ms");
    raft.tick(at(5_050));
    assert_eq!(raft.status().followers[0].state, ReplicationState::Probe);
}

#[test]
fn a_follower_whose_committed_state_outruns_the_leaders_log_is_told_to_take_a_snapshot() {
    // Async: the follower committed (and compacted) up to 5 under an old leader; the new leader's log
    // ends at 1. No probe can reach the follower's snapshot point, so the leader says so.
    let mut leader = elect(1, &[1, 2, 3], Durability::Async);
    leader.handle_message(T0, n(2), rejected(1, 0, 0, (5, 1)));
    assert_eq!(take(&mut leader), vec![send(2, Message::SnapshotRequired { term: Term(1) })]);
    // Under quorum a follower's committed prefix is always in the leader's log: this cannot happen,
    // and the leader just probes on.
    let mut leader = elect(1, &[1, 2, 3], Q);
    leader.handle_message(T0, n(2), rejected(1, 0, 0, (5, 1)));
    assert!(
        !take(&mut leader)
            .iter()
            .any(|effect| matches!(effect, Effect::Send { message: Message::SnapshotRequired { .. }, .. }))
    );

    let mut restored = RestoredState::bootstrap([n(1), n(2), n(3)]);
    restored.hard_state.term = Term(1);
    restored.snapshot.index = LogIndex(5);
    restored.snapshot.term = Term(1);
    let mut follower = Raft::new(config(2, Durability::Async), restored);
    follower.handle_message(T0, n(3), Message::SnapshotRequired { term: Term(2) });
    assert_eq!(
        take(&mut follower),
        vec![
            Effect::PersistHardState { term: Term(2), voted_for: None },
            Effect::RoleChanged { role: Role::Follower, term: Term(2), leader: Some(n(3)) },
            // Nothing was checked against the new leader's log: the whole state is suspect.
            Effect::TruncateLog { from: LogIndex(1), discarded: vec![], discards_committed: true },
            Effect::StateDiverged { kept: LogIndex(0) },
            send(3, needs_snapshot(2)),
        ]
    );
    assert!(follower.snapshot_needed(n(3), Term(2), &meta(1, 2, &[1, 2, 3])), "any snapshot of the leader's will do");
}

/// Node 2 under async, restored at `term` with `terms` in its log, committed up to `committed`, and its
/// state compacted to `compacted`.
fn async_follower(term: u64, terms: &[u64], committed: u64, compacted: u64) -> Raft {
    let mut restored = RestoredState::bootstrap([n(1), n(2), n(3)]);
    restored.hard_state.term = Term(term);
    restored.entries = entries_with_terms(terms);
    restored.committed_index = LogIndex(committed);
    let mut raft = Raft::new(config(2, Durability::Async), restored);
    raft.compact(LogIndex(compacted));
    raft
}

#[test]
fn a_follower_committed_past_a_conflicting_snapshot_point_takes_the_snapshot() {
    // Async failover (seed 2582 of the simulator, semi-sync:1): the follower committed 1..=4 under
    // the leader of term 2; the new leader of term 3 has its own no-op at 3 and compacted its log to
    // there. Its heartbeats (at the snapshot point) are rejected, and the snapshot it streams is older
    // than the follower's commit index: it used to be refused forever. The follower's log disagrees
    // with the snapshot point, so the snapshot is taken, and the committed entries it replaces are
    // reported.
    let mut follower = async_follower(3, &[1, 1, 2, 2], 4, 0);
    follower.handle_message(T0, n(1), append(3, (3, 3), Vec::new(), 3, 0));
    assert_eq!(
        take(&mut follower),
        vec![
            Effect::RoleChanged { role: Role::Follower, term: Term(3), leader: Some(n(1)) },
            send(1, rejected(3, 0, 3, (3, 2))),
        ]
    );
    assert!(follower.snapshot_needed(n(1), Term(3), &meta(3, 3, &[1, 2, 3])));
    assert!(!follower.snapshot_needed(n(1), Term(3), &meta(2, 1, &[1, 2, 3])), "the log agrees at 2");
    let committed = follower.entries(LogIndex(1), LogIndex(4));
    follower.handle_snapshot_installed(at(10), n(1), Term(3), meta(3, 3, &[1, 2, 3]));
    assert_eq!(
        take(&mut follower),
        vec![
            // Nothing was checked against the leader's log: every committed entry is suspect.
            Effect::TruncateLog { from: LogIndex(1), discarded: committed, discards_committed: true },
            Effect::Committed { index: LogIndex(3) },
            send(1, accepted(3, 0, 3, 3)),
        ]
    );
    assert_eq!(
        (follower.last_index(), follower.commit_index(), follower.term_at(LogIndex(3))),
        (LogIndex(3), LogIndex(3), Some(Term(3)))
    );
    // From there the leader's heartbeats match.
    follower.handle_message(at(20), n(1), append(3, (3, 3), Vec::new(), 3, 0));
    assert_eq!(take(&mut follower), vec![send(1, accepted(3, 0, 3, 3))]);
}

#[test]
#[should_panic(expected = "snapshot goes back in time")]
fn under_quorum_a_snapshot_conflicting_with_committed_entries_is_a_safety_violation() {
    let mut restored = RestoredState::bootstrap([n(1), n(2), n(3)]);
    restored.hard_state.term = Term(3);
    restored.entries = entries_with_terms(&[1, 1, 2, 2]);
    restored.committed_index = LogIndex(4);
    let mut raft = Raft::new(config(2, Q), restored);
    raft.handle_message(T0, n(1), append(3, (3, 3), Vec::new(), 3, 0));
    raft.handle_snapshot_installed(at(10), n(1), Term(3), meta(3, 3, &[1, 2, 3]));
}

#[test]
fn a_follower_compacted_past_the_leaders_log_is_repaired_while_a_snapshot_streams() {
    // Async failover (seed 2096 of the simulator): the follower committed and compacted up to 5 under
    // the leader of term 1; the new leader of term 2 compacted its log to its last index, 3, so it
    // streams a snapshot at 3, which the follower refuses (older than its state, and the point is
    // compacted there: nothing to compare). The follower's rejections of the heartbeats, hint 5, say
    // its state is past the leader's whole log; they used to be dropped as stale while streaming.
    let mut leader = with_log(1, &[1, 2, 3], Durability::Async, 1, entries_with_terms(&[1]));
    campaign(&mut leader, &[1, 2, 3]);
    leader.propose(T0, write("a")).expect("leader");
    settle(&mut leader, &[3], T0);
    assert_eq!((leader.term(), leader.commit_index()), (Term(2), LogIndex(3)));
    leader.compact(LogIndex(3));
    leader.tick(at(100));
    let effects = take(&mut leader);
    assert!(effects.contains(&Effect::SendSnapshot { to: n(2), leader_term: Term(2), index: LogIndex(3) }));

    let mut follower = async_follower(1, &[1, 1, 1, 1, 1], 5, 5);
    follower.handle_message(at(100), n(1), append(2, (3, 2), Vec::new(), 3, 0));
    let answer = sent(&take(&mut follower));
    assert_eq!(answer, vec![(1, rejected(2, 0, 3, (5, 1)))]);
    assert!(!follower.snapshot_needed(n(1), Term(2), &meta(3, 2, &[1, 2, 3])), "compacted: cannot compare");

    // The leader, streaming, still hears it.
    leader.handle_message(at(110), n(2), answer[0].1.clone());
    assert_eq!(take(&mut leader), vec![send(2, Message::SnapshotRequired { term: Term(2) })]);
    follower.handle_message(at(120), n(1), Message::SnapshotRequired { term: Term(2) });
    assert_eq!(
        take(&mut follower),
        vec![
            Effect::TruncateLog { from: LogIndex(1), discarded: vec![], discards_committed: true },
            Effect::StateDiverged { kept: LogIndex(0) },
            send(1, needs_snapshot(2)),
        ]
    );
    leader.handle_message(at(130), n(2), needs_snapshot(2));
    assert_eq!(take(&mut leader), vec![Effect::SendSnapshot { to: n(2), leader_term: Term(2), index: LogIndex(3) }]);
    assert!(follower.snapshot_needed(n(1), Term(2), &meta(3, 2, &[1, 2, 3])));
    follower.handle_snapshot_installed(at(140), n(1), Term(2), meta(3, 2, &[1, 2, 3]));
    let effects = take(&mut follower);
    assert!(effects.contains(&Effect::Committed { index: LogIndex(3) }), "{effects:?}");
    assert_eq!(sent(&effects), vec![(1, accepted(2, 0, 3, 3))]);
    leader.handle_message(at(150), n(2), accepted(2, 0, 3, 3));
    assert_eq!(leader.status().followers[0].state, ReplicationState::Replicate);
}

#[test]
fn a_follower_that_holds_the_streamed_snapshot_already_is_probed_past_it() {
    // Found by the simulator (seed 2310, quorum, all faults): the leader, compacted to 2, asked for a
    // snapshot; its driver streamed its state at 3; the follower installed it, but its
    // acknowledgement was lost. Every later stream (again at 3) was refused as not newer than the
    // follower's state, and every heartbeat rejection (probe below the follower's snapshot point)
    // was dropped as stale while streaming: with two voters, nothing committed again.
    let mut raft = elect(1, &[1, 2, 3], Q);
    raft.propose(T0, write("a")).expect("leader");
    raft.propose(T0, write("b")).expect("leader");
    settle(&mut raft, &[3], T0);
    raft.compact(LogIndex(2));
    raft.tick(at(100));
    take(&mut raft);
    assert_eq!(raft.status().followers[0].state, ReplicationState::Snapshot);
    // The heartbeat at the leader's snapshot point (2) is below the follower's (3): rejected, hint 3/1.
    raft.handle_message(at(200), n(2), rejected(1, 0, 2, (3, 1)));
    assert_eq!(raft.status().followers[0].state, ReplicationState::Probe);
    assert_eq!(sent(&take(&mut raft)), vec![(2, append(1, (3, 1), Vec::new(), 3, 0))]);
    raft.handle_message(at(210), n(2), accepted(1, 0, 3, 3));
    assert_eq!(raft.status().followers[0].match_index, LogIndex(3));
    // A hint that disagrees with the log, or is below the streamed snapshot, is still stale.
    let mut raft = elect(1, &[1, 2, 3], Q);
    raft.propose(T0, write("a")).expect("leader");
    raft.propose(T0, write("b")).expect("leader");
    settle(&mut raft, &[3], T0);
    raft.compact(LogIndex(2));
    raft.tick(at(100));
    take(&mut raft);
    raft.handle_message(at(200), n(2), rejected(1, 0, 2, (3, 7)));
    raft.handle_message(at(200), n(2), rejected(1, 0, 0, (1, 1)));
    assert_eq!(raft.status().followers[0].state, ReplicationState::Snapshot);
}
