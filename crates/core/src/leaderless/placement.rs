//! Where a key's replicas live: the preference list of its slot, and the quorum parameters of a
//! request (garage's habit: the replication rule is data, not `if`s spread through the coordinator).
//!
//! Placement is rendezvous hashing (Thaler and Ravishankar, "highest random weight"): every member
//! gets a score `hash(slot, node)` and the slot's preference list is the members by descending
//! score. The first `n` are the slot's home replicas; the ones after are, in order, the fallbacks a
//! sloppy quorum borrows while a home replica is down (Dynamo's "next nodes on the ring"). Adding
//! or removing a member moves only the slots whose top `n` it enters or leaves.

use serde::{Deserialize, Serialize};

use super::hash::StableHasher;
use crate::slot::Slot;
use crate::types::NodeId;

/// The replication parameters of one request (Cassandra-style consistency levels): `n` replicas,
/// a write acknowledged after `w`, a read answered after `r`. `r + w > n` makes every read quorum
/// meet every write quorum; below it, reads can be stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub n: u8,
    pub w: u8,
    pub r: u8,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum { n: 3, w: 2, r: 2 }
    }
}

/// Quorum parameters that make no sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid quorum n={n} w={w} r={r}: need 1 <= w <= n and 1 <= r <= n")]
pub struct InvalidQuorum {
    pub n: u8,
    pub w: u8,
    pub r: u8,
}

impl Quorum {
    pub fn new(n: u8, w: u8, r: u8) -> Result<Quorum, InvalidQuorum> {
        if n == 0 || w == 0 || r == 0 || w > n || r > n {
            return Err(InvalidQuorum { n, w, r });
        }
        Ok(Quorum { n, w, r })
    }

    /// Whether every read quorum intersects every write quorum.
    pub fn overlapping(self) -> bool {
        u16::from(self.r) + u16::from(self.w) > u16::from(self.n)
    }
}

/// The members ranked for `slot`: the first `n` are its home replicas, the rest its fallbacks in
/// order. Deterministic for a given member set (ties, which need a 64-bit collision, go to the
/// smaller node id).
pub fn ranked(members: &[NodeId], slot: Slot) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> =
        members.iter().map(|&node| (StableHasher::new().u64(u64::from(slot.0)).u64(node.0).finish(), node)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.dedup_by_key(|&mut (_, node)| node);
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The home replicas of `slot`: the top `n` members (all of them if there are fewer).
pub fn preference_list(members: &[NodeId], slot: Slot, n: usize) -> Vec<NodeId> {
    let mut list = ranked(members, slot);
    list.truncate(n);
    list
}

/// One replica a request goes to: a home replica, or a fallback standing in for one (`hint_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub node: NodeId,
    /// The home replica this fallback holds the data for, to hand it back once that one is up.
    pub hint_for: Option<NodeId>,
}

/// The replicas a request for `slot` goes to, given which members are down. Every home replica
/// that is up is a target. With `sloppy`, each home replica that is down is replaced by the next
/// fallback that is up, which keeps the data as a hint; without, it is just missing.
pub fn targets(
    members: &[NodeId],
    slot: Slot,
    n: usize,
    is_down: impl Fn(NodeId) -> bool,
    sloppy: bool,
) -> Vec<Target> {
    let ranked = ranked(members, slot);
    let home_count = n.min(ranked.len());
    let (home, fallbacks) = ranked.split_at(home_count);
    let mut fallbacks = fallbacks.iter().copied().filter(|&node| !is_down(node));
    let mut out = Vec::with_capacity(home_count);
    for &node in home {
        if !is_down(node) {
            out.push(Target { node, hint_for: None });
        } else if sloppy && let Some(fallback) = fallbacks.next() {
            out.push(Target { node: fallback, hint_for: Some(node) });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use super::*;

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn quorum_defaults_and_validation() {
        assert_eq!(Quorum::default(), Quorum { n: 3, w: 2, r: 2 });
        assert!(Quorum::default().overlapping());
        assert!(!Quorum::new(3, 1, 1).unwrap().overlapping());
        assert!(Quorum::new(3, 4, 1).is_err());
        assert!(Quorum::new(3, 1, 0).is_err());
        assert!(Quorum::new(0, 0, 0).is_err());
    }

    #[test]
    fn preference_lists_are_distinct_deterministic_and_spread() {
        let members = nodes(&[1, 2, 3, 4, 5]);
        let mut first_counts = [0usize; 6];
        for slot in 0..16384u16 {
            let list = preference_list(&members, Slot(slot), 3);
            assert_eq!(list.len(), 3);
            assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), 3, "distinct replicas");
            // Member order does not matter.
            let mut reversed = members.clone();
            reversed.reverse();
            assert_eq!(preference_list(&reversed, Slot(slot), 3), list);
            first_counts[list[0].0 as usize] += 1;
        }
        for count in &first_counts[1..] {
            assert!((2800..3800).contains(count), "slots lead by each node: {first_counts:?}");
        }
    }

    #[test]
    fn a_new_member_moves_only_slots_it_joins() {
        let before = nodes(&[1, 2, 3, 4]);
        let after = nodes(&[1, 2, 3, 4, 5]);
        let mut moved = 0;
        for slot in 0..16384u16 {
            let old: BTreeSet<_> = preference_list(&before, Slot(slot), 3).into_iter().collect();
            let new: BTreeSet<_> = preference_list(&after, Slot(slot), 3).into_iter().collect();
            if old != new {
                assert!(new.contains(&NodeId(5)), "slot {slot} changed without the new node");
                assert_eq!(old.difference(&new).count(), 1);
                moved += 1;
            }
        }
        // Node 5 joins the top 3 of about 3/5 of the slots.
        assert!((8500..11000).contains(&moved), "{moved} slots moved");
    }

    #[test]
    fn sloppy_targets_replace_a_down_home_replica_with_the_next_fallback() {
        let members = nodes(&[1, 2, 3, 4, 5]);
        let slot = Slot(42);
        let ranked = ranked(&members, slot);
        let down = ranked[1];
        let strict = targets(&members, slot, 3, |node| node == down, false);
        assert_eq!(strict.iter().map(|target| target.node).collect::<Vec<_>>(), [ranked[0], ranked[2]]);
        let sloppy = targets(&members, slot, 3, |node| node == down, true);
        assert_eq!(
            sloppy,
            [
                Target { node: ranked[0], hint_for: None },
                Target { node: ranked[3], hint_for: Some(down) },
                Target { node: ranked[2], hint_for: None },
            ]
        );
        // A fallback that is down is skipped too.
        let both = targets(&members, slot, 3, |node| node == down || node == ranked[3], true);
        assert_eq!(both[1], Target { node: ranked[4], hint_for: Some(down) });
        // Out of fallbacks: fewer targets.
        let all_down = targets(&members, slot, 3, |node| node != ranked[0], true);
        assert_eq!(all_down, [Target { node: ranked[0], hint_for: None }]);
    }

    #[test]
    fn fewer_members_than_n_gives_them_all() {
        assert_eq!(preference_list(&nodes(&[7, 9]), Slot(1), 3).len(), 2);
    }
}
