//! Unit and property tests of the multi-leader core, driven through `apply` as the node does.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;

use super::*;
use crate::leaderless::HlcTimestamp;
use crate::types::{LogIndex, NodeId};

const A: DcId = DcId(1);
const B: DcId = DcId(2);
const C: DcId = DcId(3);

fn ts(wall_ms: u64) -> HlcTimestamp {
    HlcTimestamp { wall_ms, logical: 0, node: NodeId(0) }
}

fn set(key: &str, value: &str) -> ChangeOp {
    ChangeOp::Set { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()), expire_at: None }
}

fn del(key: &str) -> ChangeOp {
    ChangeOp::Delete { key: Bytes::from(key.to_owned()) }
}

fn add(key: &str, delta: i64) -> ChangeOp {
    ChangeOp::Add { key: Bytes::from(key.to_owned()), delta }
}

fn dc(this: DcId, policy: ConflictPolicy) -> MultiLeaderState {
    MultiLeaderState::new(this, policy, 1000)
}

/// Applies a local write and returns the change it became (the journal's last item).
fn local(state: &mut MultiLeaderState, wall_ms: u64, ops: Vec<ChangeOp>) -> Change {
    state.apply(LogIndex::ZERO, &MlEntry::Local { timestamp: ts(wall_ms), ops });
    last_change(state)
}

fn last_change(state: &MultiLeaderState) -> Change {
    let last = state.journal_last();
    state.journal_since(last - 1, 1, &|_| true).unwrap().pop().unwrap().change
}

fn remote(state: &mut MultiLeaderState, from: DcId, changes: Vec<Change>) -> Vec<Materialize> {
    let through = state.upstream_position(from) + changes.len() as u64;
    state.apply(LogIndex::ZERO, &MlEntry::Remote { from, through, changes })
}

fn visible(state: &MultiLeaderState, key: &str) -> Option<Bytes> {
    state.visible(key.as_bytes()).map(|stored| stored.value)
}

#[test]
fn a_local_change_gets_the_next_seq_the_applied_vector_as_deps_and_a_causal_timestamp() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let first = local(&mut a, 100, vec![set("k", "1")]);
    assert_eq!((first.origin, first.seq), (A, 1));
    assert_eq!(first.deps, OriginVector::new());
    // The proposed timestamp is behind the last applied one: the change still gets a later one.
    let second = local(&mut a, 50, vec![set("k", "2")]);
    assert_eq!(second.seq, 2);
    assert_eq!(second.deps.get(A), 1);
    assert!(second.timestamp > first.timestamp, "{} not after {}", second.timestamp, first.timestamp);
    assert_eq!(visible(&a, "k"), Some(Bytes::from("2")));
}

#[test]
fn lww_keeps_the_largest_timestamp_and_breaks_ties_by_origin() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    // Same proposed timestamp at both DCs: the larger origin (B) wins everywhere.
    let from_a = local(&mut a, 100, vec![set("k", "a")]);
    let from_b = local(&mut b, 100, vec![set("k", "b")]);
    assert_eq!(from_a.timestamp, from_b.timestamp);
    remote(&mut a, B, vec![from_b.clone()]);
    remote(&mut b, A, vec![from_a.clone()]);
    assert_eq!(visible(&a, "k"), Some(Bytes::from("b")));
    assert_eq!(visible(&b, "k"), Some(Bytes::from("b")));
    assert_eq!(a.stats().conflicts_resolved, 1);
    assert_eq!(b.stats().conflicts_resolved, 1);
    let record = a.recent_conflicts().next().unwrap();
    assert_eq!((record.winner, record.loser), ((B, 1), (A, 1)));
    assert_eq!(a.keys(), b.keys(), "both DCs hold the same state");
}

#[test]
fn a_causally_later_write_replaces_without_a_conflict() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let first = local(&mut a, 100, vec![set("k", "a")]);
    remote(&mut b, A, vec![first]);
    // B's clock is behind, but B saw A's write, so its overwrite is later anyway.
    let second = local(&mut b, 10, vec![set("k", "b")]);
    remote(&mut a, B, vec![second]);
    assert_eq!(visible(&a, "k"), Some(Bytes::from("b")));
    assert_eq!(a.stats().conflicts_resolved, 0);
    assert_eq!(b.stats().conflicts_resolved, 0);
}

#[test]
fn siblings_are_kept_for_concurrent_writes_and_a_local_write_supersedes_them() {
    let mut a = dc(A, ConflictPolicy::Siblings);
    let mut b = dc(B, ConflictPolicy::Siblings);
    let from_a = local(&mut a, 100, vec![set("k", "a")]);
    let from_b = local(&mut b, 200, vec![set("k", "b")]);
    remote(&mut a, B, vec![from_b.clone()]);
    remote(&mut b, A, vec![from_a]);
    for state in [&a, &b] {
        let versions = state.versions(b"k");
        assert_eq!(versions.len(), 2, "{versions:?}");
        assert_eq!(versions[0].3, Some(Bytes::from("b")), "reads see the largest timestamp first");
        assert_eq!(state.stats().conflicts_resolved, 1);
        assert_eq!(state.stats().siblings_keys, 1);
    }
    assert_eq!(a.keys(), b.keys());
    let resolved = local(&mut a, 300, vec![set("k", "merged")]);
    assert_eq!(a.versions(b"k").len(), 1);
    assert_eq!(a.stats().siblings_keys, 0);
    remote(&mut b, A, vec![resolved]);
    assert_eq!(b.versions(b"k").len(), 1, "the write that saw both siblings replaces both at B too");
    assert_eq!(visible(&b, "k"), Some(Bytes::from("merged")));
}

#[test]
fn a_delete_is_a_tombstone_that_concurrent_writes_meet() {
    let mut a = dc(A, ConflictPolicy::Siblings);
    let mut b = dc(B, ConflictPolicy::Siblings);
    let base = local(&mut a, 100, vec![set("k", "v")]);
    remote(&mut b, A, vec![base]);
    let deleted = local(&mut a, 200, vec![del("k")]);
    let rewritten = local(&mut b, 150, vec![set("k", "w")]);
    let changed = remote(&mut a, B, vec![rewritten]);
    remote(&mut b, A, vec![deleted]);
    // The delete has the larger timestamp: the key reads as absent, the write stays a sibling.
    assert_eq!(visible(&a, "k"), None);
    assert_eq!(a.versions(b"k").len(), 2);
    assert!(changed.is_empty(), "the hidden sibling changed nothing visible: {changed:?}");
    assert_eq!(a.keys(), b.keys());
}

#[test]
fn increments_in_different_dcs_all_count() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let base = local(&mut a, 100, vec![set("n", "10")]);
    remote(&mut b, A, vec![base]);
    let up = local(&mut a, 200, vec![add("n", 5)]);
    let down = local(&mut b, 200, vec![add("n", -3)]);
    assert_eq!(a.counter_value(b"n"), Some(15));
    let changed = remote(&mut a, B, vec![down]);
    remote(&mut b, A, vec![up]);
    assert_eq!(a.counter_value(b"n"), Some(12));
    assert_eq!(b.counter_value(b"n"), Some(12));
    assert_eq!(changed, vec![Materialize { key: Bytes::from("n"), value: a.visible(b"n") }]);
    assert_eq!(visible(&a, "n"), Some(Bytes::from("12")));
    // A set that saw every increment replaces the counter.
    let reset = local(&mut b, 300, vec![set("n", "1")]);
    remote(&mut a, B, vec![reset]);
    assert_eq!(a.counter_value(b"n"), None);
    assert_eq!(visible(&a, "n"), Some(Bytes::from("1")));
}

#[test]
fn an_increment_concurrent_with_a_set_applies_on_top_of_it() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let incr = local(&mut a, 100, vec![add("n", 2)]);
    let set_b = local(&mut b, 200, vec![set("n", "40")]);
    remote(&mut a, B, vec![set_b]);
    remote(&mut b, A, vec![incr]);
    assert_eq!(a.counter_value(b"n"), Some(42));
    assert_eq!(a.keys(), b.keys());
}

#[test]
fn a_change_is_held_back_until_its_deps_arrive_then_a_chain_releases() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let mut c = dc(C, ConflictPolicy::LastWriteWins);
    let a1 = local(&mut a, 100, vec![set("x", "1")]);
    let a2 = local(&mut a, 110, vec![set("x", "2")]);
    remote(&mut b, A, vec![a1.clone(), a2.clone()]);
    let b1 = local(&mut b, 120, vec![set("y", "after x=2")]);
    // C hears from B first: b1 depends on a1 and a2.
    remote(&mut c, B, vec![b1]);
    assert_eq!(c.stats().held_back, 1);
    assert_eq!(visible(&c, "y"), None, "held back: not applied");
    remote(&mut c, A, vec![a1]);
    assert_eq!(c.stats().held_back, 1, "still missing a2");
    let changed = remote(&mut c, A, vec![a2]);
    assert_eq!(c.stats().held_back, 0);
    assert_eq!(changed.len(), 2, "x and y both became visible: {changed:?}");
    assert_eq!(visible(&c, "y"), Some(Bytes::from("after x=2")));
    let order: Vec<(DcId, u64)> =
        c.journal_since(0, 10, &|_| true).unwrap().iter().map(|item| item.change.id()).collect();
    assert_eq!(order, vec![(A, 1), (A, 2), (B, 1)], "applied in causal order");
}

#[test]
fn duplicates_and_own_changes_are_dropped() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let a1 = local(&mut a, 100, vec![add("n", 1)]);
    remote(&mut b, A, vec![a1.clone(), a1.clone()]);
    remote(&mut b, A, vec![a1.clone()]);
    assert_eq!(b.counter_value(b"n"), Some(1));
    assert_eq!(b.stats().duplicates_dropped, 2);
    remote(&mut a, B, vec![a1]);
    assert_eq!(a.counter_value(b"n"), Some(1), "an own change coming back is not applied again");
    assert_eq!(a.stats().own_origin_dropped, 1);
    assert_eq!(a.journal_last(), 1);
}

#[test]
fn upstream_position_records_what_was_applied_through() {
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    b.apply(LogIndex::ZERO, &MlEntry::Remote { from: A, through: 7, changes: Vec::new() });
    assert_eq!(b.upstream_position(A), 7);
    b.apply(LogIndex::ZERO, &MlEntry::Remote { from: A, through: 3, changes: Vec::new() });
    assert_eq!(b.upstream_position(A), 7, "a stale batch does not move the position back");
    assert_eq!(b.upstream_position(C), 0);
}

#[test]
fn an_entry_at_an_index_already_applied_is_ignored() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let entry = MlEntry::Local { timestamp: ts(1), ops: vec![add("n", 1)] };
    a.apply(LogIndex(5), &entry);
    a.apply(LogIndex(5), &entry);
    a.apply(LogIndex(4), &entry);
    assert_eq!(a.counter_value(b"n"), Some(1));
    a.apply(LogIndex(6), &entry);
    assert_eq!(a.counter_value(b"n"), Some(2));
}
