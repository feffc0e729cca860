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

#[test]
fn the_journal_is_trimmed_to_its_bound_and_reports_trimmed_positions() {
    let mut a = MultiLeaderState::new(A, ConflictPolicy::LastWriteWins, 3);
    for wall_ms in 1..=5 {
        local(&mut a, wall_ms, vec![add("n", 1)]);
    }
    assert_eq!(a.journal_last(), 5);
    assert_eq!(a.stats().journal_trimmed_through, 2);
    let error = a.journal_since(1, 10, &|_| true).unwrap_err();
    assert_eq!(error, JournalTrimmed { asked: 1, trimmed_through: 2 });
    let items = a.journal_since(2, 10, &|_| true).unwrap();
    assert_eq!(items.iter().map(|item| item.position).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(items.iter().map(|item| item.change.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
}

#[test]
fn journal_since_filters_by_origin_and_stops_at_max() {
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let a1 = local(&mut a, 1, vec![set("x", "1")]);
    local(&mut b, 2, vec![set("y", "1")]);
    remote(&mut b, A, vec![a1]);
    local(&mut b, 3, vec![set("y", "2")]);
    // B's journal: (B,1), (A,1), (B,2). A link to A carries only B's own changes.
    let own = |origin: DcId| origin == B;
    let items = b.journal_since(0, 10, &own).unwrap();
    assert_eq!(
        items.iter().map(|item| (item.position, item.change.id())).collect::<Vec<_>>(),
        vec![(1, (B, 1)), (3, (B, 2))]
    );
    let (first, through) = b.journal_batch(0, 1, &own).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(through, 1, "one item sent: the batch covers position 1 only");
    let (rest, through) = b.journal_batch(1, 1, &own).unwrap();
    assert_eq!(rest.iter().map(|item| item.position).collect::<Vec<_>>(), vec![3]);
    assert_eq!(through, 3, "the filtered position 2 is covered too");
    let (none, through) = b.journal_batch(3, 5, &own).unwrap();
    assert!(none.is_empty());
    assert_eq!(through, 3);
}

#[test]
fn a_bootstrap_brings_a_dc_up_to_date_and_forces_its_downstreams_to_bootstrap() {
    let mut a = MultiLeaderState::new(A, ConflictPolicy::Siblings, 2);
    let mut b = dc(B, ConflictPolicy::Siblings);
    for wall_ms in 1..=4 {
        local(&mut a, wall_ms, vec![add("n", 2), set("k", &wall_ms.to_string())]);
    }
    local(&mut b, 10, vec![set("mine", "b")]);
    assert!(a.journal_since(0, 10, &|_| true).is_err(), "B needs trimmed positions");
    let through = a.journal_last();
    let changed = b.apply(LogIndex::ZERO, &MlEntry::Bootstrap { from: A, through, state: Box::new(a.export()) });
    assert_eq!(b.applied().get(A), 4);
    assert_eq!(b.upstream_position(A), through);
    assert_eq!(b.counter_value(b"n"), Some(8));
    assert_eq!(visible(&b, "k"), Some(Bytes::from("4")));
    assert_eq!(visible(&b, "mine"), Some(Bytes::from("b")), "the join keeps what only B had");
    assert_eq!(changed.len(), 2, "n and k became visible: {changed:?}");
    assert_eq!(b.stats().bootstraps_merged, 1);
    // B did not apply A's changes one by one: a downstream of B behind this point bootstraps.
    assert!(b.journal_since(0, 10, &|_| true).is_err());
    assert!(b.journal_since(b.journal_last(), 10, &|_| true).unwrap().is_empty());
    // Delivered again, the same bootstrap changes nothing.
    let again = b.clone();
    b.apply(LogIndex::ZERO, &MlEntry::Bootstrap { from: A, through, state: Box::new(a.export()) });
    assert_eq!(b, again, "merging what was merged is a no-op");
}

#[test]
fn a_bootstrap_releases_held_back_changes_and_drops_covered_ones() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let mut c = dc(C, ConflictPolicy::LastWriteWins);
    let a1 = local(&mut a, 1, vec![add("n", 1)]);
    let a2 = local(&mut a, 2, vec![add("n", 1)]);
    remote(&mut b, A, vec![a1.clone()]);
    let b1 = local(&mut b, 3, vec![add("n", 10)]);
    // C holds a2 (missing a1) and b1 (missing a1).
    remote(&mut c, A, vec![a2]);
    remote(&mut c, B, vec![b1]);
    assert_eq!(c.stats().held_back, 2);
    // A bootstrap from B (which has a1 and b1) covers b1 and releases a2.
    c.apply(LogIndex::ZERO, &MlEntry::Bootstrap { from: B, through: b.journal_last(), state: Box::new(b.export()) });
    assert_eq!(c.stats().held_back, 0);
    assert_eq!(c.applied().get(A), 2);
    assert_eq!(c.counter_value(b"n"), Some(12));
}

/// Three DCs with concurrent history, for the join laws.
fn three_diverged(policy: ConflictPolicy) -> (MultiLeaderState, MultiLeaderState, MultiLeaderState) {
    let mut a = dc(A, policy);
    let mut b = dc(B, policy);
    let mut c = dc(C, policy);
    let a1 = local(&mut a, 5, vec![set("k", "a"), add("n", 1)]);
    let b1 = local(&mut b, 6, vec![set("k", "b"), add("n", 2)]);
    remote(&mut c, A, vec![a1.clone()]);
    let c1 = local(&mut c, 7, vec![del("k"), add("n", 4)]);
    remote(&mut b, C, vec![a1.clone(), c1.clone()]);
    remote(&mut a, B, vec![b1]);
    local(&mut a, 8, vec![set("j", "a")]);
    (a, b, c)
}

fn bootstrap_from(target: &mut MultiLeaderState, source: &MultiLeaderState) {
    let entry =
        MlEntry::Bootstrap { from: source.this(), through: source.journal_last(), state: Box::new(source.export()) };
    target.apply(LogIndex::ZERO, &entry);
}

#[test]
fn bootstrap_merge_is_a_commutative_idempotent_join() {
    for policy in [ConflictPolicy::LastWriteWins, ConflictPolicy::Siblings] {
        let (a, b, c) = three_diverged(policy);
        // a ⊔ b and b ⊔ a hold the same keys and applied vector.
        let mut ab = a.clone();
        bootstrap_from(&mut ab, &b);
        let mut ba = b.clone();
        bootstrap_from(&mut ba, &a);
        assert_eq!(ab.keys(), ba.keys(), "{policy:?}");
        assert_eq!(ab.applied(), ba.applied());
        // (a ⊔ b) ⊔ c = a ⊔ (b ⊔ c) on keys.
        let mut ab_c = ab.clone();
        bootstrap_from(&mut ab_c, &c);
        let mut bc = b.clone();
        bootstrap_from(&mut bc, &c);
        let mut a_bc = a.clone();
        bootstrap_from(&mut a_bc, &bc);
        assert_eq!(ab_c.keys(), a_bc.keys(), "{policy:?}");
        // Idempotent.
        let mut twice = ab_c.clone();
        bootstrap_from(&mut twice, &ab_c);
        assert_eq!(twice.keys(), ab_c.keys());
        assert_eq!(ab_c.counter_value(b"n"), Some(7), "every increment counted once");
    }
}

#[test]
fn recent_conflicts_are_newest_first_and_bounded() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let total = RECENT_CONFLICTS_MAX as u64 + 10;
    for i in 0..total {
        // B never hears from A: each of its writes is concurrent with A's latest one.
        local(&mut a, 1000 + 2 * i, vec![set("k", "a")]);
        let from_b = local(&mut b, 1001 + 2 * i, vec![set("k", "b")]);
        remote(&mut a, B, vec![from_b]);
    }
    assert_eq!(a.stats().conflicts_resolved, total);
    let recent: Vec<&ConflictRecord> = a.recent_conflicts().collect();
    assert_eq!(recent.len(), RECENT_CONFLICTS_MAX);
    assert!(recent[0].at > recent[1].at, "newest first");
    assert_eq!(recent[0].winner, (B, total), "B's later timestamp wins");
    assert_eq!(recent[0].loser.0, A);
}

mod convergence {
    //! Property: whatever the interleaving of writes and deliveries (any order, duplicates, through
    //! any topology), once every DC has received what its topology sends it, all DCs hold the same
    //! state and the same visible values, and a counter equals the sum of its increments.

    use proptest::prelude::*;

    use super::*;

    const DCS: [DcId; 3] = [A, B, C];

    #[derive(Debug, Clone)]
    enum Action {
        Write {
            dc: usize,
            op: u8,
            key: u8,
            delta: i8,
            wall_ms: u16,
        },
        /// Deliver the `item`-th (modulo) entry of `from`'s journal to `to`, if the topology sends
        /// it on that link: any order, duplicates allowed.
        Deliver {
            from: usize,
            to: usize,
            item: usize,
        },
    }

    fn arb_action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (0..3usize, 0..4u8, 0..3u8, -5..6i8, 0..200u16).prop_map(|(dc, op, key, delta, wall_ms)| Action::Write {
                dc,
                op,
                key,
                delta,
                wall_ms
            }),
            (0..3usize, 0..3usize, 0..64usize).prop_map(|(from, to, item)| Action::Deliver { from, to, item }),
        ]
    }

    fn arb_topology() -> impl Strategy<Value = Topology> {
        prop_oneof![
            Just(Topology::AllToAll),
            (0..3usize).prop_map(|hub| Topology::Star { hub: DCS[hub] }),
            Just(Topology::Ring { order: vec![A, B, C] }),
            Just(Topology::Ring { order: vec![C, B, A] }),
        ]
    }

    fn op_of(op: u8, key: u8, delta: i8) -> ChangeOp {
        let register = ["x", "y", "m"][usize::from(key)];
        match op {
            0 => set(register, &format!("{register}{delta}")),
            1 => del(register),
            // "n" only ever gets increments; "m" gets everything.
            2 => add("n", i64::from(delta)),
            _ => add("m", i64::from(delta)),
        }
    }

    fn deliver(states: &mut [MultiLeaderState], topology: &Topology, from: usize, to: usize, items: &[usize]) {
        if from == to {
            return;
        }
        let everyone = |_: DcId| true;
        let (source, target) = (DCS[from], DCS[to]);
        // What the journal still holds (a DC that merged a bootstrap trimmed what came before).
        let start = states[from].stats().journal_trimmed_through;
        let journal = states[from].journal_since(start, usize::MAX, &|_| true).unwrap();
        let changes: Vec<Change> = items
            .iter()
            .filter_map(|&item| journal.get(item % journal.len().max(1)))
            .filter(|item| topology.forwards(source, item.change.origin, target, &DCS, &everyone))
            .map(|item| item.change.clone())
            .collect();
        if !changes.is_empty() {
            states[to].apply(LogIndex::ZERO, &MlEntry::Remote { from: source, through: 0, changes });
        }
    }

    fn run(policy: ConflictPolicy, topology: &Topology, actions: &[Action]) -> (Vec<MultiLeaderState>, i64) {
        let mut states: Vec<MultiLeaderState> = DCS.iter().map(|&id| dc(id, policy)).collect();
        let mut counter_sum = 0;
        for action in actions {
            match *action {
                Action::Write { dc, op, key, delta, wall_ms } => {
                    let op = op_of(op, key, delta);
                    if let ChangeOp::Add { key, delta } = &op
                        && key.as_ref() == b"n"
                    {
                        counter_sum += delta;
                    }
                    states[dc]
                        .apply(LogIndex::ZERO, &MlEntry::Local { timestamp: ts(u64::from(wall_ms)), ops: vec![op] });
                }
                Action::Deliver { from, to, item } => deliver(&mut states, topology, from, to, &[item]),
            }
        }
        // Flush: every link sends its whole journal, newest first (the worst order), until quiet.
        for _ in 0..4 {
            for from in 0..3 {
                for to in 0..3 {
                    let len = states[from].journal_last() as usize;
                    let newest_first: Vec<usize> = (0..len).rev().collect();
                    deliver(&mut states, topology, from, to, &newest_first);
                }
            }
        }
        (states, counter_sum)
    }

    proptest! {
        #[test]
        fn every_dc_converges_to_the_same_state(
            siblings in any::<bool>(),
            topology in arb_topology(),
            actions in prop::collection::vec(arb_action(), 1..80),
        ) {
            let policy = if siblings { ConflictPolicy::Siblings } else { ConflictPolicy::LastWriteWins };
            let (states, counter_sum) = run(policy, &topology, &actions);
            for state in &states {
                prop_assert_eq!(state.stats().held_back, 0, "{} holds changes back", state.this());
                prop_assert_eq!(state.applied(), states[0].applied());
                prop_assert_eq!(state.keys(), states[0].keys());
                for key in ["x", "y", "m", "n"] {
                    prop_assert_eq!(state.visible(key.as_bytes()), states[0].visible(key.as_bytes()));
                }
                let counter = state.counter_value(b"n");
                let wrote_n = states[0].keys().contains_key(&Bytes::from("n"));
                prop_assert_eq!(counter, wrote_n.then_some(counter_sum));
                if policy == ConflictPolicy::LastWriteWins {
                    prop_assert!(state.keys().values().all(|key| key.versions().len() <= 1));
                }
                for key in state.keys().values() {
                    prop_assert_eq!(key.increments_total(), key.increments_sum_recomputed());
                }
            }
        }

        /// Bootstraps at random points instead of some deliveries: still one state everywhere.
        #[test]
        fn bootstraps_at_any_point_converge_too(
            siblings in any::<bool>(),
            actions in prop::collection::vec(arb_action(), 1..60),
            bootstraps in prop::collection::vec((0..3usize, 0..3usize, 0..60usize), 0..6),
        ) {
            let policy = if siblings { ConflictPolicy::Siblings } else { ConflictPolicy::LastWriteWins };
            let topology = Topology::AllToAll;
            let mut states: Vec<MultiLeaderState> = DCS.iter().map(|&id| dc(id, policy)).collect();
            for (step, action) in actions.iter().enumerate() {
                for &(from, to, at) in &bootstraps {
                    if at == step && from != to {
                        let source = states[from].clone();
                        bootstrap_from(&mut states[to], &source);
                    }
                }
                match *action {
                    Action::Write { dc, op, key, delta, wall_ms } => {
                        let op = op_of(op, key, delta);
                        states[dc].apply(LogIndex::ZERO, &MlEntry::Local { timestamp: ts(u64::from(wall_ms)), ops: vec![op] });
                    }
                    Action::Deliver { from, to, item } => deliver(&mut states, &topology, from, to, &[item]),
                }
            }
            // Bootstrapped DCs may have skipped journal positions, so the flush is by bootstrap.
            for _ in 0..2 {
                for from in 0..3 {
                    for to in 0..3 {
                        if from != to {
                            let source = states[from].clone();
                            bootstrap_from(&mut states[to], &source);
                        }
                    }
                }
            }
            for state in &states {
                prop_assert_eq!(state.stats().held_back, 0);
                prop_assert_eq!(state.applied(), states[0].applied());
                prop_assert_eq!(state.keys(), states[0].keys());
            }
        }
    }
}

#[test]
fn the_state_survives_a_postcard_round_trip_as_snapshots_store_it() {
    let (mut a, b, _) = three_diverged(ConflictPolicy::Siblings);
    // Something held back, something in the journal, an upstream position, conflicts.
    let mut c = dc(C, ConflictPolicy::Siblings);
    let c1 = local(&mut c, 50, vec![set("k", "c")]);
    let c2 = local(&mut c, 51, vec![add("n", 3)]);
    remote(&mut a, C, vec![c2]);
    assert_eq!(a.stats().held_back, 1);
    bootstrap_from(&mut a, &b);
    let bytes = postcard::to_allocvec(&a).unwrap();
    let restored: MultiLeaderState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(restored, a);
    // The restored state goes on exactly as the original.
    let mut original = a;
    let mut restored = restored;
    for state in [&mut original, &mut restored] {
        remote(state, C, vec![c1.clone()]);
    }
    assert_eq!(restored, original);
    assert_eq!(restored.stats().held_back, 0);
    let export = postcard::to_allocvec(&restored.export()).unwrap();
    assert_eq!(postcard::from_bytes::<MlExport>(&export).unwrap(), restored.export());
}

#[test]
fn a_set_replaces_only_the_increments_its_origin_had_seen() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    let first = local(&mut a, 1, vec![add("n", 1)]);
    let second = local(&mut a, 2, vec![add("n", 10)]);
    remote(&mut b, A, vec![first]);
    // B saw only A's first increment when it set the key: the second one applies on top.
    let reset = local(&mut b, 3, vec![set("n", "100")]);
    assert_eq!(b.counter_value(b"n"), None, "at B the set replaced every increment it had");
    remote(&mut a, B, vec![reset]);
    remote(&mut b, A, vec![second]);
    assert_eq!(a.counter_value(b"n"), Some(110));
    assert_eq!(b.counter_value(b"n"), Some(110));
    let state = &a.keys()[&Bytes::from("n")];
    assert_eq!(state.increments()[&A], vec![Increment { seq: 2, delta: 10 }]);
    assert_eq!(state.increments_total(), state.increments_sum_recomputed());
    assert_eq!(a.keys(), b.keys());
}

#[test]
fn a_change_that_adds_then_sets_the_same_key_keeps_only_the_set() {
    let mut a = dc(A, ConflictPolicy::Siblings);
    local(&mut a, 1, vec![add("n", 5), add("n", 5), set("n", "7")]);
    assert_eq!(a.counter_value(b"n"), None);
    assert_eq!(visible(&a, "n"), Some(Bytes::from("7")));
    local(&mut a, 2, vec![set("n", "1"), add("n", 5)]);
    assert_eq!(a.counter_value(b"n"), Some(6), "an add after the set in one change counts");
}

#[test]
fn outgoing_sends_a_filtered_batch_or_a_bootstrap_once_trimmed() {
    let mut a = MultiLeaderState::new(A, ConflictPolicy::LastWriteWins, 2);
    assert_eq!(a.outgoing(0, 10, &|_| true), None, "nothing to send yet");
    local(&mut a, 1, vec![add("n", 1)]);
    local(&mut a, 2, vec![add("n", 2)]);
    let Some((MlEntry::Remote { from, through, changes }, next)) = a.outgoing(0, 1, &|_| true) else {
        panic!("expected a batch");
    };
    assert_eq!((from, through, next), (A, 1, 1));
    assert_eq!(changes.iter().map(Change::id).collect::<Vec<_>>(), vec![(A, 1)]);
    assert_eq!(a.outgoing(2, 10, &|_| true), None, "caught up");
    local(&mut a, 3, vec![add("n", 3)]);
    // Position 1 is trimmed now: a downstream still there gets the whole state.
    let Some((MlEntry::Bootstrap { through, state, .. }, next)) = a.outgoing(0, 10, &|_| true) else {
        panic!("expected a bootstrap");
    };
    assert_eq!((through, next), (3, 3));
    assert_eq!(*state, a.export());
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    b.apply(LogIndex::ZERO, &MlEntry::Bootstrap { from: A, through, state });
    assert_eq!(b.counter_value(b"n"), Some(6));
}

#[test]
fn continues_tells_a_batch_that_would_skip_a_gap() {
    let mut a = dc(A, ConflictPolicy::LastWriteWins);
    let mut b = dc(B, ConflictPolicy::LastWriteWins);
    for wall_ms in 1..=4 {
        local(&mut a, wall_ms, vec![add("n", 1)]);
    }
    let Some((first, after_first)) = a.outgoing(0, 2, &|_| true) else { panic!("a batch") };
    let Some((second, _)) = a.outgoing(after_first, 2, &|_| true) else { panic!("a batch") };
    // The first batch was lost with its connection; the second reaches B anyway (stale copy).
    assert!(!b.continues(A, after_first), "the second batch starts after a gap");
    // Applied regardless, it would move B's position past changes B never applied.
    let mut careless = b.clone();
    careless.apply(LogIndex::ZERO, &second);
    assert_eq!(careless.upstream_position(A), 4);
    assert_eq!(careless.applied().get(A), 0, "held back: A's first changes are missing");
    // In order, everything is applied.
    assert!(b.continues(A, 0));
    b.apply(LogIndex::ZERO, &first);
    assert!(b.continues(A, after_first));
    b.apply(LogIndex::ZERO, &second);
    assert_eq!((b.upstream_position(A), b.applied().get(A)), (4, 4));
}
