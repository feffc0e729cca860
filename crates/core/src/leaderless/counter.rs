//! A PN-counter CRDT (Shapiro, Preguiça, Baquero, Zawirski, "Conflict-free Replicated Data Types",
//! 2011) for INCR/DECR on leaderless keys: concurrent increments on different replicas are never
//! lost, whatever order replicas merge in.
//!
//! Each node counts its own increments (`P`) and decrements (`N`) separately, only ever upwards;
//! the value is `sum(P) - sum(N)`; a merge takes the pointwise maximum. Merge laws (each is a
//! property test below): commutative `a ⊔ b = b ⊔ a`, associative `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`,
//! idempotent `a ⊔ a = a`; and an update on one replica survives every merge.
//!
//! A Redis key is not only a counter: `SET k 10` then `INCR k` gives 11, and `DEL` resets it. A
//! [`Counter`] is therefore a PN-counter on top of a **base**: the value some write set (ranked by
//! that write's HLC time and dot), and only the increments made since. Two counters with the same
//! base join their increments; with different bases the later base wins with its increments (a
//! lexicographic join, still commutative, associative and idempotent). Increments made on top of
//! the same base concurrently are never lost; a SET ordered after them by HLC starts over, as it
//! would in Redis.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clock::HlcTimestamp;
use super::hash::StableHasher;
use super::version::Dot;
use crate::types::NodeId;

/// The counter's per-node totals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PnCounter {
    increments: BTreeMap<NodeId, u64>,
    decrements: BTreeMap<NodeId, u64>,
}

/// An update refused because the value would leave the signed 64-bit range (Redis answers "ERR
/// increment or decrement would overflow"), or a node's own total would pass `u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("increment or decrement would overflow")]
pub struct CounterOverflow;

impl PnCounter {
    pub fn new() -> PnCounter {
        PnCounter::default()
    }

    /// The counter's value. Wider than `i64`: concurrent updates that each kept the value in
    /// range can together leave it (two replicas each adding `i64::MAX / 2 + 1`); the caller
    /// decides how to show that (see [`PnCounter::value_i64`]).
    pub fn value(&self) -> i128 {
        let up: i128 = self.increments.values().map(|&count| i128::from(count)).sum();
        let down: i128 = self.decrements.values().map(|&count| i128::from(count)).sum();
        up - down
    }

    /// The value as Redis shows integers, or `None` if concurrent updates pushed it out of range.
    pub fn value_i64(&self) -> Option<i64> {
        i64::try_from(self.value()).ok()
    }

    /// Adds `delta` (negative to decrement) as `node`'s update, and returns the new value. Refused,
    /// with nothing changed, if the value seen here would leave the `i64` range.
    pub fn add(&mut self, node: NodeId, delta: i64) -> Result<i64, CounterOverflow> {
        let value = i64::try_from(self.value() + i128::from(delta)).map_err(|_| CounterOverflow)?;
        let totals = if delta >= 0 { &mut self.increments } else { &mut self.decrements };
        let total = totals.entry(node).or_insert(0);
        *total = total.checked_add(delta.unsigned_abs()).ok_or(CounterOverflow)?;
        Ok(value)
    }

    /// Takes in another replica's counter: the pointwise maximum of each node's totals.
    pub fn merge(&mut self, other: &PnCounter) {
        for (totals, theirs) in [(&mut self.increments, &other.increments), (&mut self.decrements, &other.decrements)] {
            for (&node, &count) in theirs {
                let total = totals.entry(node).or_insert(0);
                *total = (*total).max(count);
            }
        }
    }

    pub fn merged(a: &PnCounter, b: &PnCounter) -> PnCounter {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    /// Whether merging `other` would change nothing (this replica has seen all its updates).
    pub fn includes(&self, other: &PnCounter) -> bool {
        let covers = |mine: &BTreeMap<NodeId, u64>, theirs: &BTreeMap<NodeId, u64>| {
            theirs.iter().all(|(node, &count)| mine.get(node).copied().unwrap_or(0) >= count)
        };
        covers(&self.increments, &other.increments) && covers(&self.decrements, &other.decrements)
    }

    /// A stable digest for anti-entropy.
    pub fn digest(&self) -> u64 {
        let mut hasher = StableHasher::new();
        for totals in [&self.increments, &self.decrements] {
            hasher.u64(totals.len() as u64);
            for (node, &count) in totals {
                hasher.u64(node.0).u64(count);
            }
        }
        hasher.finish()
    }
}

/// The write a [`Counter`] counts from: its rank (HLC time, dot) and the value it set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CounterBase {
    pub hlc: HlcTimestamp,
    pub dot: Dot,
    pub value: i64,
}

impl CounterBase {
    fn rank(&self) -> (HlcTimestamp, Dot) {
        (self.hlc, self.dot)
    }
}

/// An integer key under INCR/DECR: a base value (none: 0) plus a PN-counter of the updates made on
/// top of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Counter {
    base: Option<CounterBase>,
    updates: PnCounter,
}

impl Counter {
    /// A counter starting at `base` (a SET's integer, or 0 after a delete), or at 0 if `None`.
    pub fn starting_at(base: Option<CounterBase>) -> Counter {
        Counter { base, updates: PnCounter::new() }
    }

    pub fn base(&self) -> Option<CounterBase> {
        self.base
    }

    pub fn value(&self) -> i128 {
        i128::from(self.base.map_or(0, |base| base.value)) + self.updates.value()
    }

    /// The value as Redis shows integers, or `None` if concurrent updates pushed it out of range.
    pub fn value_i64(&self) -> Option<i64> {
        i64::try_from(self.value()).ok()
    }

    /// Adds `delta` as `node`'s update and returns the new value; refused, with nothing changed,
    /// if the value would leave the `i64` range.
    pub fn add(&mut self, node: NodeId, delta: i64) -> Result<i64, CounterOverflow> {
        let value = i64::try_from(self.value() + i128::from(delta)).map_err(|_| CounterOverflow)?;
        let mut updates = self.updates.clone();
        updates.add(node, delta).map_err(|_| CounterOverflow)?;
        self.updates = updates;
        Ok(value)
    }

    /// The join: the later base wins with its updates; on the same base, the updates merge.
    pub fn merge(&mut self, other: &Counter) {
        let ours = self.base.map(|base| base.rank());
        let theirs = other.base.map(|base| base.rank());
        match ours.cmp(&theirs) {
            std::cmp::Ordering::Less => *self = other.clone(),
            std::cmp::Ordering::Equal => self.updates.merge(&other.updates),
            std::cmp::Ordering::Greater => {}
        }
    }

    pub fn merged(a: &Counter, b: &Counter) -> Counter {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    pub fn digest(&self) -> u64 {
        let mut hasher = StableHasher::new();
        match self.base {
            None => hasher.u64(0),
            Some(base) => hasher
                .u64(1)
                .u64(base.hlc.wall_ms)
                .u64(u64::from(base.hlc.logical))
                .u64(base.hlc.node.0)
                .u64(base.dot.node.0)
                .u64(base.dot.counter)
                .u64(base.value as u64),
        };
        hasher.u64(self.updates.digest()).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn counts_increments_and_decrements() {
        let mut counter = PnCounter::new();
        assert_eq!(counter.add(NodeId(1), 5).unwrap(), 5);
        assert_eq!(counter.add(NodeId(2), -7).unwrap(), -2);
        assert_eq!(counter.add(NodeId(1), 0).unwrap(), -2);
        assert_eq!(counter.value_i64(), Some(-2));
    }

    #[test]
    fn concurrent_increments_are_never_lost() {
        // Two replicas start from the same counter and both INCR: the merge has both.
        let mut a = PnCounter::new();
        a.add(NodeId(1), 10).unwrap();
        let mut b = a.clone();
        a.add(NodeId(1), 1).unwrap();
        b.add(NodeId(2), 1).unwrap();
        assert_eq!(PnCounter::merged(&a, &b).value(), 12);
        // A stale copy merged back changes nothing.
        let mut merged = PnCounter::merged(&a, &b);
        merged.merge(&PnCounter::new());
        assert_eq!(merged.value(), 12);
    }

    #[test]
    fn refuses_to_leave_the_i64_range() {
        let mut counter = PnCounter::new();
        counter.add(NodeId(1), i64::MAX).unwrap();
        assert_eq!(counter.add(NodeId(1), 1), Err(CounterOverflow));
        assert_eq!(counter.value_i64(), Some(i64::MAX), "a refused update changes nothing");
        assert_eq!(counter.add(NodeId(1), i64::MIN).unwrap(), -1);
        let mut down = PnCounter::new();
        down.add(NodeId(1), i64::MIN).unwrap();
        assert_eq!(down.add(NodeId(2), -1), Err(CounterOverflow));
    }

    #[test]
    fn concurrent_updates_may_together_leave_the_range() {
        let mut a = PnCounter::new();
        let mut b = PnCounter::new();
        a.add(NodeId(1), i64::MAX).unwrap();
        b.add(NodeId(2), i64::MAX).unwrap();
        let merged = PnCounter::merged(&a, &b);
        assert_eq!(merged.value(), 2 * i128::from(i64::MAX));
        assert_eq!(merged.value_i64(), None);
    }

    #[test]
    fn digests_follow_the_state() {
        let mut a = PnCounter::new();
        a.add(NodeId(1), 3).unwrap();
        let mut b = PnCounter::new();
        b.add(NodeId(1), -3).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), PnCounter::merged(&a, &a).digest());
    }

    fn base(wall_ms: u64, value: i64) -> CounterBase {
        let node = NodeId(wall_ms % 3 + 1);
        CounterBase { hlc: HlcTimestamp { wall_ms, logical: 0, node }, dot: Dot { node, counter: wall_ms }, value }
    }

    #[test]
    fn a_counter_counts_from_its_base() {
        let mut counter = Counter::starting_at(Some(base(10, 10)));
        assert_eq!(counter.add(NodeId(1), 1).unwrap(), 11);
        assert_eq!(Counter::starting_at(None).value(), 0);
        let mut near_max = Counter::starting_at(Some(base(1, i64::MAX - 1)));
        assert_eq!(near_max.add(NodeId(1), 1).unwrap(), i64::MAX);
        assert_eq!(near_max.add(NodeId(1), 1), Err(CounterOverflow));
        assert_eq!(near_max.value_i64(), Some(i64::MAX));
    }

    #[test]
    fn increments_on_the_same_base_join_and_a_later_base_wins() {
        let start = Counter::starting_at(Some(base(10, 100)));
        let mut a = start.clone();
        let mut b = start.clone();
        a.add(NodeId(1), 1).unwrap();
        b.add(NodeId(2), 5).unwrap();
        assert_eq!(Counter::merged(&a, &b).value(), 106, "concurrent INCRs on one base are both kept");
        // A later SET (higher rank) starts over: the increments before it no longer count.
        let mut reset = Counter::starting_at(Some(base(20, 7)));
        reset.add(NodeId(3), 1).unwrap();
        assert_eq!(Counter::merged(&a, &reset).value(), 8);
        assert_eq!(Counter::merged(&reset, &b).value(), 8);
    }

    fn arb_full_counter() -> impl Strategy<Value = Counter> {
        (prop::option::of((0u64..3).prop_map(|at| base(at, at as i64 * 100))), arb_counter())
            .prop_map(|(base, updates)| Counter { base, updates })
    }

    /// A counter reached by updates on a few nodes (any reachable state: merges are joins of these).
    fn arb_counter() -> impl Strategy<Value = PnCounter> {
        prop::collection::vec((1u64..5, -1000i64..1000), 0..20).prop_map(|updates| {
            let mut counter = PnCounter::new();
            for (node, delta) in updates {
                counter.add(NodeId(node), delta).unwrap();
            }
            counter
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn merge_is_commutative(a in arb_counter(), b in arb_counter()) {
            prop_assert_eq!(PnCounter::merged(&a, &b), PnCounter::merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_counter(), b in arb_counter(), c in arb_counter()) {
            let left = PnCounter::merged(&PnCounter::merged(&a, &b), &c);
            let right = PnCounter::merged(&a, &PnCounter::merged(&b, &c));
            prop_assert_eq!(left, right);
        }

        #[test]
        fn counter_with_base_merge_laws(a in arb_full_counter(), b in arb_full_counter(), c in arb_full_counter()) {
            prop_assert_eq!(Counter::merged(&a, &b), Counter::merged(&b, &a));
            prop_assert_eq!(
                Counter::merged(&Counter::merged(&a, &b), &c),
                Counter::merged(&a, &Counter::merged(&b, &c))
            );
            prop_assert_eq!(&Counter::merged(&a, &a), &a);
            let ab = Counter::merged(&a, &b);
            prop_assert_eq!(&Counter::merged(&ab, &b), &ab);
        }

        #[test]
        fn merge_is_idempotent(a in arb_counter(), b in arb_counter()) {
            prop_assert_eq!(&PnCounter::merged(&a, &a), &a);
            let merged = PnCounter::merged(&a, &b);
            prop_assert_eq!(&PnCounter::merged(&merged, &b), &merged);
            prop_assert!(merged.includes(&a) && merged.includes(&b));
        }

        /// Replicas that each apply their own updates and then exchange state in any order end
        /// with the sum of every update.
        #[test]
        fn converges_to_the_sum_of_all_updates(
            updates in prop::collection::vec((0usize..3, -1000i64..1000), 0..40),
            order in Just(()).prop_perturb(|_, mut rng| {
                let mut order = vec![(0usize, 1usize), (1, 2), (2, 0), (0, 2), (2, 1), (1, 0)];
                for at in (1..order.len()).rev() {
                    order.swap(at, (rng.next_u32() as usize) % (at + 1));
                }
                order
            }),
        ) {
            let mut replicas = vec![PnCounter::new(); 3];
            let mut total = 0i128;
            for (replica, delta) in updates {
                replicas[replica].add(NodeId(replica as u64 + 1), delta).unwrap();
                total += i128::from(delta);
            }
            for _ in 0..2 {
                for &(from, to) in &order {
                    let source = replicas[from].clone();
                    replicas[to].merge(&source);
                }
            }
            for replica in &replicas {
                prop_assert_eq!(replica.value(), total);
            }
        }
    }
}
