//! Version vectors and the dotted causal container: happens-before versus concurrent, sibling
//! pruning by context, merges between replicas, and (property tests) the merge laws and the
//! no-lost-write rule over random histories of writes and syncs.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::leaderless::clock::Hlc;
use crate::leaderless::counter::CounterOverflow;
use crate::types::UnixMillis;

fn n(id: u64) -> NodeId {
    NodeId(id)
}

fn dot(node: u64, counter: u64) -> Dot {
    Dot { node: n(node), counter }
}

fn vv(entries: &[(u64, u64)]) -> VersionVector {
    entries.iter().map(|&(node, counter)| dot(node, counter)).collect()
}

fn value(text: &str) -> Payload {
    Payload::Value(Bytes::copy_from_slice(text.as_bytes()))
}

fn hlc(wall_ms: u64, node: u64) -> HlcTimestamp {
    HlcTimestamp { wall_ms, logical: 0, node: n(node) }
}

const MAX: usize = 100;

/// The live values of a container, in the read's order (latest first).
fn values(container: &VersionedValue) -> Vec<String> {
    container.read().values.iter().map(|value| String::from_utf8(value.to_vec()).unwrap()).collect()
}

// ---- version vectors -------------------------------------------------------------------------

#[test]
fn happens_before_is_pointwise_dominance() {
    let a = vv(&[(1, 2), (2, 1)]);
    let b = vv(&[(1, 3), (2, 1)]);
    assert_eq!(a.compare(&b), Causality::Before);
    assert_eq!(b.compare(&a), Causality::After);
    assert_eq!(a.compare(&a.clone()), Causality::Equal);
    // A node absent counts as zero.
    assert_eq!(vv(&[]).compare(&a), Causality::Before);
    assert_eq!(vv(&[(1, 2)]).compare(&a), Causality::Before);
}

#[test]
fn neither_dominating_is_concurrent() {
    let a = vv(&[(1, 2), (2, 1)]);
    let b = vv(&[(1, 1), (2, 2)]);
    assert_eq!(a.compare(&b), Causality::Concurrent);
    assert_eq!(b.compare(&a), Causality::Concurrent);
    assert_eq!(vv(&[(1, 1)]).compare(&vv(&[(2, 1)])), Causality::Concurrent);
}

#[test]
fn merge_is_the_pointwise_maximum_and_covers_both() {
    let mut a = vv(&[(1, 2), (2, 1)]);
    let b = vv(&[(1, 1), (2, 5), (3, 1)]);
    a.merge(&b);
    assert_eq!(a, vv(&[(1, 2), (2, 5), (3, 1)]));
    assert!(a.contains(dot(2, 4)));
    assert!(!a.contains(dot(2, 6)));
    assert!(!a.contains(dot(4, 1)));
}

#[test]
fn context_encoding_round_trips_and_refuses_garbage() {
    let context = vv(&[(1, 7), (9, 3), (u64::MAX, u64::MAX)]);
    assert_eq!(VersionVector::decode(&context.encode()).unwrap(), context);
    assert_eq!(VersionVector::decode(&[]).unwrap(), VersionVector::new());
    assert_eq!(VersionVector::decode(&[0; 15]), Err(ContextError::Length(15)));
    let mut zero = Vec::new();
    zero.extend_from_slice(&1u64.to_le_bytes());
    zero.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(VersionVector::decode(&zero), Err(ContextError::ZeroCounter));
    let mut unordered = vv(&[(2, 1)]).encode().to_vec();
    unordered.extend_from_slice(&vv(&[(1, 1)]).encode());
    assert_eq!(VersionVector::decode(&unordered), Err(ContextError::Unordered));
    let huge = vec![0u8; (VERSION_VECTOR_ENTRIES_MAX + 1) * 16];
    assert_eq!(VersionVector::decode(&huge), Err(ContextError::TooManyEntries(VERSION_VECTOR_ENTRIES_MAX + 1)));
}

// ---- writes on a coordinator -----------------------------------------------------------------

#[test]
fn blind_writes_through_one_coordinator_are_siblings() {
    // Two clients write without reading first: neither saw the other, so both values are kept
    // (plain per-node vector clocks would wrongly let the second overwrite the first).
    let mut key = VersionedValue::new();
    let first = key.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    let second = key.write(n(1), &VersionVector::new(), value("b"), hlc(11, 1), MAX).unwrap();
    assert!(second.counter > first.counter);
    assert_eq!(values(&key), ["b", "a"]);
    assert_eq!(key.chosen().unwrap().as_ref(), b"b", "the latest HLC is the deterministic choice");
}

#[test]
fn a_write_with_the_read_context_supersedes_every_sibling_it_saw() {
    let mut key = VersionedValue::new();
    key.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    key.write(n(2), &VersionVector::new(), value("b"), hlc(11, 2), MAX).unwrap();
    let context = key.read().context.clone();
    let merged = key.write(n(1), &context, value("a+b"), hlc(12, 1), MAX).unwrap();
    assert_eq!(values(&key), ["a+b"]);
    assert_eq!(key.siblings().len(), 1);
    assert_eq!(key.fate(merged), Fate::Present);
}

#[test]
fn a_write_supersedes_only_what_its_context_covers() {
    let mut key = VersionedValue::new();
    key.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    let seen_a = key.read().context.clone();
    let b = key.write(n(2), &VersionVector::new(), value("b"), hlc(11, 2), MAX).unwrap();
    key.write(n(1), &seen_a, value("a2"), hlc(12, 1), MAX).unwrap();
    assert_eq!(values(&key), ["a2", "b"], "b was not seen by the writer of a2: still a sibling");
    assert_eq!(key.fate(b), Fate::Present);
}

#[test]
fn a_context_read_elsewhere_prunes_values_that_arrive_later() {
    // Replica 2 took write x; a client read it there and wrote y through replica 1, which has not
    // received x yet. When x reaches replica 1, it must not come back as a sibling of y.
    let mut replica1 = VersionedValue::new();
    let mut replica2 = VersionedValue::new();
    let x = replica2.write(n(2), &VersionVector::new(), value("x"), hlc(10, 2), MAX).unwrap();
    let context = replica2.read().context.clone();
    replica1.write(n(1), &context, value("y"), hlc(11, 1), MAX).unwrap();
    replica1.merge(&replica2);
    assert_eq!(values(&replica1), ["y"]);
    assert_eq!(replica1.fate(x), Fate::Superseded);
    replica2.merge(&replica1);
    assert_eq!(replica2, replica1);
}

#[test]
fn concurrent_writes_on_two_replicas_both_survive_the_merge() {
    let mut replica1 = VersionedValue::new();
    let mut replica2 = VersionedValue::new();
    replica1.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    replica2.write(n(2), &VersionVector::new(), value("b"), hlc(10, 2), MAX).unwrap();
    assert_eq!(replica1.context().compare(replica2.context()), Causality::Concurrent);
    let merged = VersionedValue::merged(&replica1, &replica2);
    assert_eq!(values(&merged), ["b", "a"], "equal wall times: node 2 wins the tie");
    assert!(merged.includes(&replica1) && merged.includes(&replica2));
    assert!(!replica1.includes(&merged), "replica 1 is stale: read repair sends it the merge");
}

#[test]
fn a_causally_later_version_replaces_the_older_one_on_merge() {
    let mut replica1 = VersionedValue::new();
    let old = replica1.write(n(1), &VersionVector::new(), value("old"), hlc(10, 1), MAX).unwrap();
    let stale = replica1.clone();
    let context = replica1.read().context.clone();
    replica1.write(n(1), &context, value("new"), hlc(11, 1), MAX).unwrap();
    assert_eq!(stale.context().compare(replica1.context()), Causality::Before);
    let mut repaired = stale.clone();
    repaired.merge(&replica1);
    assert_eq!(values(&repaired), ["new"]);
    assert_eq!(repaired.fate(old), Fate::Superseded);
    assert!(replica1.includes(&stale), "the newer replica needs no repair from the older one");
}

#[test]
fn deletes_are_tombstones_that_supersede_what_they_saw() {
    let mut key = VersionedValue::new();
    key.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    let before_delete = key.clone();
    let context = key.read().context.clone();
    key.write(n(1), &context, Payload::Tombstone, hlc(11, 1), MAX).unwrap();
    assert!(key.is_tombstone());
    assert!(key.read().values.is_empty());
    assert_eq!(key.chosen(), None);
    // A replica that missed the delete learns it; the value does not come back.
    let mut lagging = before_delete;
    lagging.merge(&key);
    assert!(lagging.is_tombstone());
    assert_eq!(lagging, key);
}

#[test]
fn a_delete_concurrent_with_a_write_keeps_the_write_unless_lww() {
    let mut replica1 = VersionedValue::new();
    replica1.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    let mut replica2 = replica1.clone();
    let context = replica1.read().context.clone();
    replica1.write(n(1), &context, Payload::Tombstone, hlc(20, 1), MAX).unwrap();
    replica2.write(n(2), &context, value("b"), hlc(15, 2), MAX).unwrap();
    let mut merged = VersionedValue::merged(&replica1, &replica2);
    assert!(!merged.is_tombstone());
    assert_eq!(values(&merged), ["b"], "with siblings, a concurrent write survives a delete");
    assert_eq!(merged.chosen().unwrap().as_ref(), b"b");
    // Last-write-wins: the delete came later by HLC, so it wins.
    assert_eq!(merged.resolve_lww().unwrap().payload, Payload::Tombstone);
    merged.keep_lww_only();
    assert!(merged.is_tombstone());
    // The discarded write stays superseded when merged with a replica that still has it.
    let mut again = replica2.clone();
    again.merge(&merged);
    assert!(again.is_tombstone());
}

#[test]
fn too_many_siblings_refuses_a_blind_write_but_not_a_resolving_one() {
    let mut key = VersionedValue::new();
    for at in 0..3 {
        key.write(n(1), &VersionVector::new(), value("v"), hlc(at, 1), 3).unwrap();
    }
    let before = key.clone();
    let error = key.write(n(1), &VersionVector::new(), value("v"), hlc(9, 1), 3).unwrap_err();
    assert_eq!(error, TooManySiblings { count: 4, siblings_max: 3 });
    assert_eq!(key, before, "a refused write changes nothing");
    let context = key.read().context.clone();
    key.write(n(1), &context, value("resolved"), hlc(10, 1), 3).unwrap();
    assert_eq!(values(&key), ["resolved"]);
}

#[test]
fn dots_stay_unique_after_the_container_is_forgotten() {
    // A tombstone collected everywhere, then a new write through the same node: its dot must not
    // be one a replica still holding the old context would take as already seen.
    let mut key = VersionedValue::new();
    key.write(n(1), &VersionVector::new(), value("a"), hlc(1_000, 1), MAX).unwrap();
    let context = key.read().context.clone();
    key.write(n(1), &context, Payload::Tombstone, hlc(1_001, 1), MAX).unwrap();
    let old_context = key.context().clone();
    let mut fresh = VersionedValue::new();
    let new = fresh.write(n(1), &VersionVector::new(), value("b"), hlc(1_002, 1), MAX).unwrap();
    assert!(!old_context.contains(new));
    key.merge(&fresh);
    assert_eq!(values(&key), ["b"]);
}

#[test]
fn fate_tells_present_superseded_and_unseen_apart() {
    let mut key = VersionedValue::new();
    let a = key.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    assert_eq!(key.fate(a), Fate::Present);
    let context = key.read().context.clone();
    let b = key.write(n(1), &context, value("b"), hlc(11, 1), MAX).unwrap();
    assert_eq!(key.fate(a), Fate::Superseded);
    assert_eq!(key.fate(b), Fate::Present);
    assert_eq!(key.fate(dot(7, 1)), Fate::Unseen);
}

#[test]
fn from_parts_checks_the_invariants() {
    let sibling = |node, counter| Sibling { dot: dot(node, counter), hlc: hlc(1, node), payload: value("v") };
    assert!(VersionedValue::from_parts(vv(&[(1, 2)]), vec![sibling(1, 1), sibling(1, 2)]).is_ok());
    assert_eq!(
        VersionedValue::from_parts(vv(&[(1, 2)]), vec![sibling(1, 2), sibling(1, 1)]),
        Err(ContainerError::Unordered)
    );
    assert_eq!(
        VersionedValue::from_parts(vv(&[(1, 2)]), vec![sibling(1, 3)]),
        Err(ContainerError::Uncovered(dot(1, 3)))
    );
}

#[test]
fn digests_tell_containers_apart() {
    let mut a = VersionedValue::new();
    a.write(n(1), &VersionVector::new(), value("a"), hlc(10, 1), MAX).unwrap();
    let mut b = VersionedValue::new();
    b.write(n(1), &VersionVector::new(), value("b"), hlc(10, 1), MAX).unwrap();
    assert_eq!(a.digest(), a.clone().digest());
    assert_ne!(a.digest(), b.digest(), "same dot and time, different value");
    let mut tombstone = VersionedValue::new();
    tombstone.write(n(1), &VersionVector::new(), Payload::Tombstone, hlc(10, 1), MAX).unwrap();
    let mut empty_value = VersionedValue::new();
    empty_value.write(n(1), &VersionVector::new(), value(""), hlc(10, 1), MAX).unwrap();
    assert_ne!(tombstone.digest(), empty_value.digest());
    assert_ne!(VersionedValue::new().digest(), tombstone.digest());
}

// ---- property tests over random histories ----------------------------------------------------

const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// A client writes through `replica`, passing the context it read from `read_from` (a blind
    /// write if `None`).
    Write { replica: usize, read_from: Option<usize>, delete: bool },
    /// `to` merges `from`'s container (replication, repair, anti-entropy).
    Sync { from: usize, to: usize },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..REPLICAS, prop::option::of(0..REPLICAS), prop::bool::weighted(0.15))
            .prop_map(|(replica, read_from, delete)| Step::Write { replica, read_from, delete }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// What a history did: each replica's container, every acknowledged write's dot, and the union of
/// the contexts clients wrote with (what they had seen and meant to replace).
struct History {
    replicas: Vec<VersionedValue>,
    writes: Vec<Dot>,
    replaced: VersionVector,
}

fn run(steps: &[Step]) -> History {
    let mut replicas = vec![VersionedValue::new(); REPLICAS];
    let mut clocks: Vec<Hlc> = (0..REPLICAS).map(|at| Hlc::new(n(at as u64 + 1))).collect();
    let mut writes = Vec::new();
    let mut replaced = VersionVector::new();
    for (time, step) in steps.iter().enumerate() {
        match *step {
            Step::Write { replica, read_from, delete } => {
                let context = read_from.map(|from| replicas[from].context().clone()).unwrap_or_default();
                let payload = if delete { Payload::Tombstone } else { value(&format!("w{time}")) };
                let stamp = clocks[replica].now(UnixMillis(time as u64 / 2));
                let dot = replicas[replica].write(n(replica as u64 + 1), &context, payload, stamp, usize::MAX).unwrap();
                writes.push(dot);
                replaced.merge(&context);
            }
            Step::Sync { from, to } => {
                let source = replicas[from].clone();
                replicas[to].merge(&source);
            }
        }
    }
    History { replicas, writes, replaced }
}

/// Every replica merges every other (twice round, so everything reaches everyone).
fn converge(replicas: &mut [VersionedValue]) {
    for _ in 0..2 {
        for from in 0..replicas.len() {
            for to in 0..replicas.len() {
                let source = replicas[from].clone();
                replicas[to].merge(&source);
            }
        }
    }
}

fn arb_history() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(arb_step(), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn merge_is_commutative(steps in arb_history(), a in 0..REPLICAS, b in 0..REPLICAS) {
        let history = run(&steps);
        let (a, b) = (&history.replicas[a], &history.replicas[b]);
        prop_assert_eq!(VersionedValue::merged(a, b), VersionedValue::merged(b, a));
    }

    #[test]
    fn merge_is_associative(steps in arb_history()) {
        let history = run(&steps);
        let [a, b, c] = [&history.replicas[0], &history.replicas[1], &history.replicas[2]];
        let left = VersionedValue::merged(&VersionedValue::merged(a, b), c);
        let right = VersionedValue::merged(a, &VersionedValue::merged(b, c));
        prop_assert_eq!(left, right);
    }

    #[test]
    fn merge_is_idempotent_and_includes_both(steps in arb_history(), a in 0..REPLICAS, b in 0..REPLICAS) {
        let history = run(&steps);
        let (a, b) = (&history.replicas[a], &history.replicas[b]);
        prop_assert_eq!(&VersionedValue::merged(a, a), a);
        let merged = VersionedValue::merged(a, b);
        prop_assert_eq!(&VersionedValue::merged(&merged, b), &merged);
        prop_assert!(merged.includes(a) && merged.includes(b));
        prop_assert_eq!(a.includes(b), &merged == a, "includes means merging changes nothing");
    }

    /// After every replica has merged every other, they hold the same container, and it holds
    /// exactly the acknowledged writes no client replaced: nothing acknowledged is lost, nothing
    /// replaced comes back, and writes that did not see each other are all siblings.
    #[test]
    fn converged_replicas_keep_exactly_the_unreplaced_writes(steps in arb_history()) {
        let mut history = run(&steps);
        converge(&mut history.replicas);
        for replica in &history.replicas[1..] {
            prop_assert_eq!(replica, &history.replicas[0]);
        }
        let converged = &history.replicas[0];
        for &dot in &history.writes {
            let expected = if history.replaced.contains(dot) { Fate::Superseded } else { Fate::Present };
            prop_assert_eq!(converged.fate(dot), expected, "write {}", dot);
        }
        prop_assert_eq!(converged.siblings().len(), history.writes.iter().filter(|&&dot| !history.replaced.contains(dot)).count());
    }

    /// On any replica at any time, every write it has heard of is present or replaced by a client
    /// that saw it: merging never drops a sibling that nobody superseded.
    #[test]
    fn no_replica_drops_an_unreplaced_write(steps in arb_history()) {
        let history = run(&steps);
        for replica in &history.replicas {
            for &dot in &history.writes {
                if replica.fate(dot) == Fate::Superseded {
                    prop_assert!(history.replaced.contains(dot), "write {} dropped without being replaced", dot);
                }
            }
        }
    }

    #[test]
    fn the_deterministic_choice_is_the_same_on_converged_replicas(steps in arb_history()) {
        let mut history = run(&steps);
        converge(&mut history.replicas);
        let choices: Vec<_> = history.replicas.iter().map(|replica| replica.chosen()).collect();
        prop_assert!(choices.windows(2).all(|pair| pair[0] == pair[1]));
        let lww: Vec<_> = history.replicas.iter().map(|replica| replica.resolve_lww().cloned()).collect();
        prop_assert!(lww.windows(2).all(|pair| pair[0] == pair[1]));
    }
}

// ---- counters (INCR) -------------------------------------------------------------------------

fn incr(key: &mut VersionedValue, node: u64, delta: i64, wall_ms: u64) -> i64 {
    key.increment(n(node), delta, hlc(wall_ms, node), MAX).unwrap().1
}

#[test]
fn concurrent_increments_on_two_replicas_are_both_kept() {
    let mut replica1 = VersionedValue::new();
    incr(&mut replica1, 1, 5, 10);
    let mut replica2 = replica1.clone();
    assert_eq!(incr(&mut replica1, 1, 1, 20), 6);
    assert_eq!(incr(&mut replica2, 2, 10, 21), 15);
    let merged = VersionedValue::merged(&replica1, &replica2);
    assert_eq!(merged.siblings().len(), 2, "two concurrent counter siblings");
    assert_eq!(values(&merged), ["16"], "read as one joined value");
    assert_eq!(merged.chosen().unwrap().as_ref(), b"16");
    // The next increment joins them into one sibling.
    let mut next = merged.clone();
    assert_eq!(incr(&mut next, 3, 1, 30), 17);
    assert_eq!(next.siblings().len(), 1);
}

#[test]
fn incr_starts_from_a_set_integer_and_refuses_other_values() {
    let mut key = VersionedValue::new();
    key.write(n(1), &VersionVector::new(), value("10"), hlc(10, 1), MAX).unwrap();
    assert_eq!(incr(&mut key, 1, 1, 11), 11);
    assert_eq!(incr(&mut key, 1, -20, 12), -9);
    let mut text = VersionedValue::new();
    text.write(n(1), &VersionVector::new(), value("abc"), hlc(10, 1), MAX).unwrap();
    let before = text.clone();
    assert_eq!(text.increment(n(1), 1, hlc(11, 1), MAX), Err(IncrementError::NotAnInteger));
    assert_eq!(text, before);
    let mut big = VersionedValue::new();
    big.write(n(1), &VersionVector::new(), value(&i64::MAX.to_string()), hlc(10, 1), MAX).unwrap();
    assert_eq!(big.increment(n(1), 1, hlc(11, 1), MAX), Err(IncrementError::Overflow(CounterOverflow)));
}

#[test]
fn a_delete_resets_the_counter_and_a_later_set_replaces_it() {
    let mut key = VersionedValue::new();
    incr(&mut key, 1, 7, 10);
    let context = key.context().clone();
    key.write(n(1), &context, Payload::Tombstone, hlc(11, 1), MAX).unwrap();
    assert_eq!(key.chosen(), None);
    assert_eq!(incr(&mut key, 1, 1, 12), 1, "INCR after DEL starts from 0");
    // A SET concurrent with the counter but later by HLC wins a plain GET, and INCR starts from it.
    let mut other = VersionedValue::new();
    other.write(n(2), &VersionVector::new(), value("100"), hlc(50, 2), MAX).unwrap();
    key.merge(&other);
    assert_eq!(key.chosen().unwrap().as_ref(), b"100");
    assert_eq!(values(&key), ["100", "1"]);
    assert_eq!(incr(&mut key, 1, 1, 51), 101);
}

#[test]
fn last_write_wins_keeps_concurrent_counters_but_not_older_values() {
    let mut replica1 = VersionedValue::new();
    replica1.write(n(1), &VersionVector::new(), value("3"), hlc(5, 1), MAX).unwrap();
    let mut replica2 = replica1.clone();
    incr(&mut replica1, 1, 1, 10);
    incr(&mut replica2, 2, 1, 11);
    let mut merged = VersionedValue::merged(&replica1, &replica2);
    merged.keep_lww_only();
    assert_eq!(values(&merged), ["5"], "both increments on the base 3");
    let mut newer = VersionedValue::new();
    newer.write(n(3), &VersionVector::new(), value("x"), hlc(20, 3), MAX).unwrap();
    merged.merge(&newer);
    merged.keep_lww_only();
    assert_eq!(values(&merged), ["x"]);
}

#[test]
fn redis_integers_parse_like_redis() {
    for (text, expected) in [
        ("0", Some(0)),
        ("-5", Some(-5)),
        ("9223372036854775807", Some(i64::MAX)),
        ("-9223372036854775808", Some(i64::MIN)),
        ("9223372036854775808", None),
        ("+1", None),
        (" 1", None),
        ("01", None),
        ("-0", None),
        ("", None),
        ("-", None),
        ("1.0", None),
    ] {
        assert_eq!(parse_redis_integer(text.as_bytes()), expected, "{text:?}");
    }
}

#[derive(Debug, Clone)]
enum CounterStep {
    Increment { replica: usize, delta: i64 },
    Sync { from: usize, to: usize },
}

fn arb_counter_step() -> impl Strategy<Value = CounterStep> {
    prop_oneof![
        (0..REPLICAS, -100i64..100).prop_map(|(replica, delta)| CounterStep::Increment { replica, delta }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| CounterStep::Sync { from, to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// However increments interleave with syncs between replicas, once they converge the counter is
    /// the sum of every increment: none is lost (with siblings kept, and under LWW).
    #[test]
    fn converged_counters_are_the_sum_of_all_increments(
        steps in prop::collection::vec(arb_counter_step(), 0..40),
        lww in any::<bool>(),
    ) {
        let mut replicas = vec![VersionedValue::new(); REPLICAS];
        let mut clocks: Vec<Hlc> = (0..REPLICAS).map(|at| Hlc::new(n(at as u64 + 1))).collect();
        let mut total = 0i128;
        for (time, step) in steps.iter().enumerate() {
            match *step {
                CounterStep::Increment { replica, delta } => {
                    let stamp = clocks[replica].now(UnixMillis(time as u64));
                    replicas[replica].increment(n(replica as u64 + 1), delta, stamp, MAX).unwrap();
                    total += i128::from(delta);
                }
                CounterStep::Sync { from, to } => {
                    let source = replicas[from].clone();
                    replicas[to].merge(&source);
                }
            }
            if lww {
                replicas.iter_mut().for_each(VersionedValue::keep_lww_only);
            }
        }
        converge(&mut replicas);
        if lww {
            replicas.iter_mut().for_each(VersionedValue::keep_lww_only);
        }
        for replica in &replicas {
            let value = replica.counter().map_or(0, |(_, counter)| counter.value());
            prop_assert_eq!(value, total);
        }
    }
}
