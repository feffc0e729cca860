//! Merkle trees for anti-entropy (Dynamo section 4.7): two replicas of a slot range compare a few
//! hashes top-down instead of every key, find the slots that differ, then compare those slots' keys
//! and stream only the keys that differ.
//!
//! ```text
//!   root                       1 hash
//!   level 3                    4 hashes          each the hash of up to 16 children
//!   level 2                   64 hashes
//!   level 1                 1024 hashes
//!   leaves (level 0)       16384 hashes          one per slot of the range (fewer for a smaller range)
//!   slot leaf = Σ entry_hash(key, container digest) over the slot's keys (wrapping sum)
//! ```
//!
//! A leaf is a wrapping *sum* of its keys' entry hashes, so a write updates it in O(1) (subtract
//! the old entry, add the new) without rereading the slot, and the order keys arrive in does not
//! matter; the path to the root is then rehashed, four small hashes for the full range. A slot
//! with no keys has leaf 0. Keys whose tombstone has been collected are no longer entries.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;

use super::hash::StableHasher;
use crate::slot::{SLOT_COUNT, Slot};

/// Children per inner node.
pub const FANOUT: usize = 16;

/// The hash one key contributes to its slot's leaf: its name and its container's digest.
pub fn entry_hash(key: &[u8], digest: u64) -> u64 {
    StableHasher::new().bytes(key).u64(digest).finish()
}

/// What one replica holds in one slot: each key's container digest. Compared key by key once the
/// trees have pointed at the slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotDigests {
    keys: BTreeMap<Bytes, u64>,
}

impl SlotDigests {
    pub fn new() -> SlotDigests {
        SlotDigests::default()
    }

    /// Records `key`'s digest, returning the previous one.
    pub fn insert(&mut self, key: Bytes, digest: u64) -> Option<u64> {
        self.keys.insert(key, digest)
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<u64> {
        self.keys.remove(key)
    }

    pub fn get(&self, key: &[u8]) -> Option<u64> {
        self.keys.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, u64)> + '_ {
        self.keys.iter().map(|(key, &digest)| (key, digest))
    }

    /// The slot's leaf hash, as the tree holds it.
    pub fn leaf_hash(&self) -> u64 {
        self.keys.iter().fold(0u64, |sum, (key, &digest)| sum.wrapping_add(entry_hash(key, digest)))
    }

    /// The keys to exchange: present on one side only, or with different digests. In key order.
    pub fn diff(&self, other: &SlotDigests) -> Vec<Bytes> {
        let mut differing: Vec<Bytes> = Vec::new();
        for (key, digest) in &self.keys {
            if other.keys.get(key) != Some(digest) {
                differing.push(key.clone());
            }
        }
        for key in other.keys.keys() {
            if !self.keys.contains_key(key) {
                differing.push(key.clone());
            }
        }
        differing.sort();
        differing
    }
}

/// Two trees that do not cover the same slots cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trees cover slots {ours:?} and {theirs:?}")]
pub struct RangeMismatch {
    pub ours: Range<u16>,
    pub theirs: Range<u16>,
}

/// A Merkle tree over the slots `range` of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    range: Range<u16>,
    /// `levels[0]` holds one leaf per slot of the range; each next level one hash per `FANOUT`
    /// nodes of the level below; the last level is the root alone.
    levels: Vec<Vec<u64>>,
}

impl MerkleTree {
    /// A tree of empty slots over `range`.
    ///
    /// # Panics
    /// If the range is empty or reaches past the last slot.
    pub fn new(range: Range<u16>) -> MerkleTree {
        assert!(range.start < range.end, "empty slot range {range:?}");
        assert!(range.end <= SLOT_COUNT, "slot range {range:?} past the last slot");
        let mut levels = vec![vec![0u64; usize::from(range.end - range.start)]];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().map(Vec::len).unwrap_or(1);
            levels.push(vec![0; below.div_ceil(FANOUT)]);
        }
        let mut tree = MerkleTree { range, levels };
        // Every node but the last of a level has a full set of children that are, by induction,
        // all alike; so two hashes per level build the empty tree.
        for level in 1..tree.levels.len() {
            let first = tree.inner_hash(level, 0);
            tree.levels[level].fill(first);
            let last = tree.levels[level].len() - 1;
            tree.levels[level][last] = tree.inner_hash(level, last);
        }
        tree
    }

    /// A tree over `range` with the given leaves, one per slot in order, hashed bottom-up once.
    ///
    /// # Panics
    /// If the number of leaves is not the number of slots in the range.
    pub fn from_leaves(range: Range<u16>, leaves: Vec<u64>) -> MerkleTree {
        let mut tree = MerkleTree::new(range);
        assert_eq!(leaves.len(), tree.levels[0].len(), "one leaf per slot");
        tree.levels[0] = leaves;
        for level in 1..tree.levels.len() {
            for index in 0..tree.levels[level].len() {
                tree.levels[level][index] = tree.inner_hash(level, index);
            }
        }
        tree
    }

    /// A tree over `range` from each slot's digests (slots not given are empty).
    pub fn from_slots<'a>(range: Range<u16>, slots: impl IntoIterator<Item = (Slot, &'a SlotDigests)>) -> MerkleTree {
        let mut tree = MerkleTree::new(range);
        for (slot, digests) in slots {
            tree.set_leaf(slot, digests.leaf_hash());
        }
        tree
    }

    pub fn range(&self) -> Range<u16> {
        self.range.clone()
    }

    pub fn root(&self) -> u64 {
        self.levels.last().and_then(|root| root.first()).copied().unwrap_or(0)
    }

    /// Number of levels, leaves and root included.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// The hashes of one level (0: the leaves), for exchanging a tree level by level.
    pub fn level(&self, level: usize) -> &[u64] {
        &self.levels[level]
    }

    /// The leaf of `slot`.
    ///
    /// # Panics
    /// If `slot` is outside the tree's range.
    pub fn leaf(&self, slot: Slot) -> u64 {
        self.levels[0][self.leaf_index(slot)]
    }

    /// Sets the leaf of `slot` (to its [`SlotDigests::leaf_hash`]) and rehashes the path up.
    pub fn set_leaf(&mut self, slot: Slot, hash: u64) {
        let index = self.leaf_index(slot);
        self.levels[0][index] = hash;
        self.rehash_path(index);
    }

    /// A key's container digest changed on this replica (`None`: the key was absent / is gone).
    pub fn update_key(&mut self, slot: Slot, key: &[u8], old: Option<u64>, new: Option<u64>) {
        let index = self.leaf_index(slot);
        let mut leaf = self.levels[0][index];
        if let Some(old) = old {
            leaf = leaf.wrapping_sub(entry_hash(key, old));
        }
        if let Some(new) = new {
            leaf = leaf.wrapping_add(entry_hash(key, new));
        }
        self.levels[0][index] = leaf;
        self.rehash_path(index);
    }

    /// The slots whose leaves differ, in slot order, descending only into subtrees whose hashes
    /// differ (what a level-by-level exchange between two replicas would visit).
    pub fn diff(&self, other: &MerkleTree) -> Result<Vec<Slot>, RangeMismatch> {
        if self.range != other.range {
            return Err(RangeMismatch { ours: self.range.clone(), theirs: other.range.clone() });
        }
        let top = self.levels.len() - 1;
        let mut frontier: Vec<usize> = if self.root() == other.root() { Vec::new() } else { vec![0] };
        for level in (0..top).rev() {
            let mut next = Vec::new();
            for parent in frontier {
                for child in self.children(level + 1, parent) {
                    if self.levels[level][child] != other.levels[level][child] {
                        next.push(child);
                    }
                }
            }
            frontier = next;
        }
        Ok(frontier.into_iter().map(|index| self.slot_at(index)).collect())
    }

    /// Indexes at `level - 1` of the children of node `index` at `level`.
    pub fn children(&self, level: usize, index: usize) -> Range<usize> {
        assert!(level > 0, "leaves have no children");
        let below = self.levels[level - 1].len();
        (index * FANOUT).min(below)..((index + 1) * FANOUT).min(below)
    }

    fn leaf_index(&self, slot: Slot) -> usize {
        assert!(self.range.contains(&slot.0), "slot {} outside the tree's range {:?}", slot.0, self.range);
        usize::from(slot.0 - self.range.start)
    }

    fn slot_at(&self, index: usize) -> Slot {
        let offset = u16::try_from(index).unwrap_or(u16::MAX);
        assert!(offset < self.range.end - self.range.start, "leaf index {index} past the range");
        Slot(self.range.start + offset)
    }

    fn inner_hash(&self, level: usize, index: usize) -> u64 {
        let mut hasher = StableHasher::new();
        for child in self.children(level, index) {
            hasher.u64(self.levels[level - 1][child]);
        }
        hasher.finish()
    }

    fn rehash_path(&mut self, leaf: usize) {
        let mut index = leaf;
        for level in 1..self.levels.len() {
            index /= FANOUT;
            self.levels[level][index] = self.inner_hash(level, index);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn key(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn the_full_range_has_five_levels() {
        let tree = MerkleTree::new(0..SLOT_COUNT);
        assert_eq!(tree.depth(), 5);
        let sizes: Vec<usize> = (0..tree.depth()).map(|level| tree.level(level).len()).collect();
        assert_eq!(sizes, [16384, 1024, 64, 4, 1]);
        let small = MerkleTree::new(100..117);
        let sizes: Vec<usize> = (0..small.depth()).map(|level| small.level(level).len()).collect();
        assert_eq!(sizes, [17, 2, 1]);
        assert_eq!(MerkleTree::new(5..6).depth(), 1);
    }

    #[test]
    fn identical_trees_have_no_diff() {
        let mut a = MerkleTree::new(0..SLOT_COUNT);
        a.update_key(Slot(7), b"k", None, Some(1));
        let b = a.clone();
        assert_eq!(a.diff(&b).unwrap(), Vec::<Slot>::new());
        assert_eq!(MerkleTree::new(0..10).diff(&MerkleTree::new(0..10)).unwrap(), Vec::<Slot>::new());
    }

    #[test]
    fn finds_the_one_slot_that_differs() {
        let mut a = MerkleTree::new(0..SLOT_COUNT);
        let mut b = MerkleTree::new(0..SLOT_COUNT);
        a.update_key(Slot(12182), b"foo", None, Some(42));
        b.update_key(Slot(12182), b"foo", None, Some(43));
        assert_ne!(a.root(), b.root());
        assert_eq!(a.diff(&b).unwrap(), [Slot(12182)]);
        assert_eq!(b.diff(&a).unwrap(), [Slot(12182)]);
    }

    #[test]
    fn a_key_present_on_one_side_only_differs() {
        let mut a = MerkleTree::new(16000..SLOT_COUNT);
        let b = a.clone();
        a.update_key(Slot(SLOT_COUNT - 1), b"last", None, Some(1));
        assert_eq!(a.diff(&b).unwrap(), [Slot(SLOT_COUNT - 1)]);
    }

    #[test]
    fn removing_a_key_restores_the_leaf() {
        let mut tree = MerkleTree::new(0..64);
        let empty = tree.clone();
        tree.update_key(Slot(3), b"a", None, Some(1));
        tree.update_key(Slot(3), b"a", Some(1), Some(2));
        tree.update_key(Slot(3), b"a", Some(2), None);
        assert_eq!(tree, empty);
    }

    #[test]
    fn the_empty_tree_is_hashed_like_any_other() {
        for range in [0..SLOT_COUNT, 0..17, 3..4, 100..400, 0..256, 0..257] {
            let count = usize::from(range.end - range.start);
            assert_eq!(MerkleTree::new(range.clone()), MerkleTree::from_leaves(range, vec![0; count]));
        }
    }

    #[test]
    fn from_leaves_matches_setting_each_leaf() {
        let leaves: Vec<u64> = (0..300u64).map(|at| if at % 7 == 0 { at * 31 } else { 0 }).collect();
        let mut one_by_one = MerkleTree::new(100..400);
        for (at, leaf) in leaves.iter().enumerate() {
            one_by_one.set_leaf(Slot(100 + u16::try_from(at).unwrap()), *leaf);
        }
        assert_eq!(MerkleTree::from_leaves(100..400, leaves), one_by_one);
    }

    #[test]
    fn trees_over_different_ranges_do_not_compare() {
        let error = MerkleTree::new(0..10).diff(&MerkleTree::new(0..11)).unwrap_err();
        assert_eq!(error, RangeMismatch { ours: 0..10, theirs: 0..11 });
    }

    #[test]
    #[should_panic(expected = "outside the tree's range")]
    fn a_slot_outside_the_range_is_a_bug() {
        MerkleTree::new(10..20).set_leaf(Slot(20), 1);
    }

    #[test]
    fn slot_digests_diff_lists_only_differing_keys() {
        let mut a = SlotDigests::new();
        let mut b = SlotDigests::new();
        for (name, digest) in [("same", 1), ("changed", 2), ("only-a", 3)] {
            a.insert(key(name), digest);
        }
        for (name, digest) in [("same", 1), ("changed", 9), ("only-b", 4)] {
            b.insert(key(name), digest);
        }
        assert_eq!(a.diff(&b), [key("changed"), key("only-a"), key("only-b")]);
        assert_eq!(b.diff(&a), a.diff(&b));
        assert!(a.diff(&a.clone()).is_empty());
    }

    #[test]
    fn the_leaf_does_not_depend_on_insertion_order() {
        let mut forward = SlotDigests::new();
        let mut backward = SlotDigests::new();
        for at in 0..20u64 {
            forward.insert(key(&format!("k{at}")), at);
        }
        for at in (0..20u64).rev() {
            backward.insert(key(&format!("k{at}")), at);
        }
        assert_eq!(forward.leaf_hash(), backward.leaf_hash());
    }

    /// A replica's contents: slot -> key -> digest, over a small range so slots collide often.
    type Contents = BTreeMap<u16, BTreeMap<String, u64>>;

    fn arb_contents(range: Range<u16>) -> impl Strategy<Value = Contents> {
        prop::collection::vec((range, "[a-d]{1,2}", 0u64..4), 0..60).prop_map(|entries| {
            let mut contents = Contents::new();
            for (slot, name, digest) in entries {
                contents.entry(slot).or_default().insert(name, digest);
            }
            contents
        })
    }

    fn digests(contents: &Contents) -> BTreeMap<Slot, SlotDigests> {
        contents
            .iter()
            .map(|(&slot, keys)| {
                let mut digests = SlotDigests::new();
                for (name, &digest) in keys {
                    digests.insert(key(name), digest);
                }
                (Slot(slot), digests)
            })
            .collect()
    }

    fn tree(range: Range<u16>, contents: &Contents) -> MerkleTree {
        let slots = digests(contents);
        MerkleTree::from_slots(range, slots.iter().map(|(&slot, digests)| (slot, digests)))
    }

    #[derive(Debug, Clone)]
    enum Divergence {
        Change { pick: usize, digest: u64 },
        Add { slot: u16, name: String, digest: u64 },
        Remove { pick: usize },
    }

    fn arb_divergence(range: Range<u16>) -> impl Strategy<Value = Divergence> {
        prop_oneof![
            (any::<usize>(), 4u64..8).prop_map(|(pick, digest)| Divergence::Change { pick, digest }),
            (range, "[e-f]{1,2}", 0u64..8).prop_map(|(slot, name, digest)| Divergence::Add { slot, name, digest }),
            any::<usize>().prop_map(|pick| Divergence::Remove { pick }),
        ]
    }

    /// Applies the divergences to a copy, returning it and the slots truly changed.
    fn diverge(contents: &Contents, divergences: &[Divergence]) -> (Contents, BTreeSet<Slot>) {
        let mut changed = contents.clone();
        for divergence in divergences {
            let entries: Vec<(u16, String)> =
                changed.iter().flat_map(|(&slot, keys)| keys.keys().map(move |name| (slot, name.clone()))).collect();
            match divergence {
                Divergence::Change { pick, digest } if !entries.is_empty() => {
                    let (slot, name) = &entries[pick % entries.len()];
                    changed.entry(*slot).or_default().insert(name.clone(), *digest);
                }
                Divergence::Add { slot, name, digest } => {
                    changed.entry(*slot).or_default().insert(name.clone(), *digest);
                }
                Divergence::Remove { pick } if !entries.is_empty() => {
                    let (slot, name) = &entries[pick % entries.len()];
                    changed.entry(*slot).or_default().remove(name);
                }
                _ => {}
            }
        }
        changed.retain(|_, keys| !keys.is_empty());
        let slots: BTreeSet<u16> = contents.keys().chain(changed.keys()).copied().collect();
        let differing = slots.into_iter().filter(|slot| contents.get(slot) != changed.get(slot)).map(Slot).collect();
        (changed, differing)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every slot that really differs is reported, and nothing else.
        #[test]
        fn diff_finds_exactly_the_divergent_slots(
            contents in arb_contents(0..300),
            divergences in prop::collection::vec(arb_divergence(0..300), 0..8),
        ) {
            let (changed, expected) = diverge(&contents, &divergences);
            let ours = tree(0..300, &contents);
            let theirs = tree(0..300, &changed);
            let found: BTreeSet<Slot> = ours.diff(&theirs).unwrap().into_iter().collect();
            prop_assert_eq!(&found, &expected);
            prop_assert_eq!(ours.root() == theirs.root(), expected.is_empty());
            // Within each differing slot, the key-level diff names exactly the differing keys.
            let (ours_slots, theirs_slots) = (digests(&contents), digests(&changed));
            let empty = SlotDigests::new();
            for slot in found {
                let keys = ours_slots.get(&slot).unwrap_or(&empty).diff(theirs_slots.get(&slot).unwrap_or(&empty));
                let before = contents.get(&slot.0).cloned().unwrap_or_default();
                let after = changed.get(&slot.0).cloned().unwrap_or_default();
                let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
                let expected_keys: Vec<Bytes> =
                    names.into_iter().filter(|name| before.get(*name) != after.get(*name)).map(|name| key(name)).collect();
                prop_assert_eq!(keys, expected_keys);
            }
        }

        /// Updating keys one by one gives the same tree as building it from the final contents.
        #[test]
        fn incremental_updates_match_a_rebuild(
            contents in arb_contents(9000..9100),
            divergences in prop::collection::vec(arb_divergence(9000..9100), 0..12),
        ) {
            let (changed, _) = diverge(&contents, &divergences);
            let mut incremental = tree(9000..9100, &contents);
            let slots: BTreeSet<u16> = contents.keys().chain(changed.keys()).copied().collect();
            for slot in slots {
                let before = contents.get(&slot).cloned().unwrap_or_default();
                let after = changed.get(&slot).cloned().unwrap_or_default();
                let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
                for name in names {
                    incremental.update_key(Slot(slot), name.as_bytes(), before.get(name).copied(), after.get(name).copied());
                }
            }
            prop_assert_eq!(incremental, tree(9000..9100, &changed));
        }
    }

    #[test]
    fn random_divergences_over_the_full_range_are_all_found() {
        // Pseudo-random keys over all 16384 slots (a fixed seed), then 40 distinct keys changed.
        let mut state = 0x5EED_u64;
        let mut next = || {
            state = crate::leaderless::hash::mix64(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
            state
        };
        let mut ours = MerkleTree::new(0..SLOT_COUNT);
        let mut keys = Vec::new();
        for at in 0..5000 {
            let name = format!("key:{at}");
            let slot = Slot::of_key(name.as_bytes());
            let digest = next();
            ours.update_key(slot, name.as_bytes(), None, Some(digest));
            keys.push((name, slot, digest));
        }
        let mut theirs = ours.clone();
        let mut chosen = BTreeSet::new();
        while chosen.len() < 40 {
            chosen.insert(usize::try_from(next() % 5000).unwrap());
        }
        let mut expected = BTreeSet::new();
        for &at in &chosen {
            let (name, slot, digest) = &keys[at];
            theirs.update_key(*slot, name.as_bytes(), Some(*digest), Some(digest.wrapping_add(1)));
            expected.insert(*slot);
        }
        let found: BTreeSet<Slot> = ours.diff(&theirs).unwrap().into_iter().collect();
        assert_eq!(found, expected);
    }
}
