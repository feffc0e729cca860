//! A PN-counter CRDT (Shapiro, Preguiça, Baquero, Zawirski, "Conflict-free Replicated Data Types",
//! 2011) for INCR/DECR on leaderless keys: concurrent increments on different replicas are never
//! lost, whatever order replicas merge in.
//!
//! Each node counts its own increments (`P`) and decrements (`N`) separately, only ever upwards;
//! the value is `sum(P) - sum(N)`; a merge takes the pointwise maximum. Merge laws (each is a
//! property test below): commutative `a ⊔ b = b ⊔ a`, associative `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`,
//! idempotent `a ⊔ a = a`; and an update on one replica survives every merge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hash::StableHasher;
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
