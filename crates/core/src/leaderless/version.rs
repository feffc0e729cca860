//! Causality for one key: dots, version vectors, and the dotted causal container that holds a key's
//! concurrent values (siblings) on a replica.
//!
//! The model is the "DVV set" / dotted causal container of Almeida, Baquero, Gonçalves, Preguiça
//! and Fonte ("Scalable and Accurate Causality Tracking for Eventually Consistent Stores", 2014), as
//! Riak uses it. A key's state on a replica is
//!
//! - a set of **siblings**, each a value (or a tombstone) tagged with the **dot** `(node, counter)`
//!   that names the one write that created it, and
//! - a **causal context**: a version vector covering every dot this replica knows of for the key,
//!   whether the dot's value is still a sibling or was superseded.
//!
//! A dot covered by the context but absent from the siblings was overwritten by a write that saw it.
//! So when two replicas merge, a sibling survives unless the other replica has seen its dot and
//! dropped it: that keeps concurrent writes (both survive) and drops superseded ones, with no false
//! conflicts, however many clients write through however few coordinators (plain per-node vector
//! clocks either grow with the clients or invent false conflicts; see `docs/leaderless.md`).
//!
//! Soundness needs two rules: replicas exchange whole containers (`merge`), never loose siblings,
//! so a context entry `node: c` always stands for dots the sender really saw; and a node mints
//! dots for a key only on its own copy of it (see [`VersionedValue::write`]).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::clock::HlcTimestamp;
use super::counter::{Counter, CounterBase, CounterOverflow};
use super::hash::StableHasher;
use crate::types::NodeId;

/// The name of one write: the coordinating node and its counter for the key. Unique per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub node: NodeId,
    pub counter: u64,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{})", self.node, self.counter)
    }
}

/// How two version vectors (or the histories they summarize) relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left side happened before the right: the right has seen everything the left has.
    Before,
    /// The left side happened after the right.
    After,
    /// Each has seen something the other has not.
    Concurrent,
}

/// A version vector: for each node, the highest counter of its dots seen (every dot of that node
/// at or below it is covered). Nodes with nothing seen are absent, never stored as zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<(NodeId, u64)>", into = "Vec<(NodeId, u64)>")]
pub struct VersionVector {
    entries: BTreeMap<NodeId, u64>,
}

/// Most entries a version vector may carry when decoded from outside (a client's context, a peer's
/// message): more nodes than any cluster has ever coordinated writes to one key.
pub const VERSION_VECTOR_ENTRIES_MAX: usize = 1024;

/// A causal context that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    #[error("causal context of {0} bytes is not a whole number of entries")]
    Length(usize),
    #[error("causal context has {0} entries (at most {VERSION_VECTOR_ENTRIES_MAX})")]
    TooManyEntries(usize),
    #[error("causal context entries are not in strictly increasing node order")]
    Unordered,
    #[error("causal context has a zero counter")]
    ZeroCounter,
}

const CONTEXT_ENTRY_BYTES: usize = 16;

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The highest counter of `node` covered (0: none).
    pub fn get(&self, node: NodeId) -> u64 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    /// Whether the dot is covered: this history includes that write.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.node)
    }

    /// Covers `dot` (and so every earlier dot of its node).
    pub fn add(&mut self, dot: Dot) {
        assert!(dot.counter > 0, "dot counters start at 1");
        let entry = self.entries.entry(dot.node).or_insert(0);
        *entry = (*entry).max(dot.counter);
    }

    /// The pointwise maximum: the union of both histories.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&node, &counter) in &other.entries {
            self.add(Dot { node, counter });
        }
    }

    /// Whether this history includes all of `other` (pointwise at least as large).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|(&node, &counter)| self.get(node) >= counter)
    }

    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Dot> + '_ {
        self.entries.iter().map(|(&node, &counter)| Dot { node, counter })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The opaque causal context handed to clients: 16 bytes per entry (node, counter; little
    /// endian), in node order. Clients give it back unchanged with their next write.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.entries.len() * CONTEXT_ENTRY_BYTES);
        for (node, counter) in &self.entries {
            out.extend_from_slice(&node.0.to_le_bytes());
            out.extend_from_slice(&counter.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Reads back what [`VersionVector::encode`] wrote; anything else is refused (it came from a
    /// client, so it is untrusted input).
    pub fn decode(bytes: &[u8]) -> Result<VersionVector, ContextError> {
        if !bytes.len().is_multiple_of(CONTEXT_ENTRY_BYTES) {
            return Err(ContextError::Length(bytes.len()));
        }
        let pairs = bytes.chunks_exact(CONTEXT_ENTRY_BYTES).map(|chunk| {
            let (node, counter) = chunk.split_at(8);
            let node = u64::from_le_bytes(node.try_into().unwrap_or_default());
            let counter = u64::from_le_bytes(counter.try_into().unwrap_or_default());
            (NodeId(node), counter)
        });
        VersionVector::try_from(pairs.collect::<Vec<_>>())
    }
}

impl TryFrom<Vec<(NodeId, u64)>> for VersionVector {
    type Error = ContextError;

    fn try_from(pairs: Vec<(NodeId, u64)>) -> Result<VersionVector, ContextError> {
        if pairs.len() > VERSION_VECTOR_ENTRIES_MAX {
            return Err(ContextError::TooManyEntries(pairs.len()));
        }
        if pairs.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(ContextError::Unordered);
        }
        if pairs.iter().any(|&(_, counter)| counter == 0) {
            return Err(ContextError::ZeroCounter);
        }
        Ok(VersionVector { entries: pairs.into_iter().collect() })
    }
}

impl From<VersionVector> for Vec<(NodeId, u64)> {
    fn from(vector: VersionVector) -> Vec<(NodeId, u64)> {
        vector.entries.into_iter().collect()
    }
}

impl FromIterator<Dot> for VersionVector {
    fn from_iter<I: IntoIterator<Item = Dot>>(dots: I) -> VersionVector {
        let mut vector = VersionVector::new();
        for dot in dots {
            vector.add(dot);
        }
        vector
    }
}

/// What one write stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Payload {
    Value(Bytes),
    /// The state of an INCR/DECR counter after the write. Concurrent counter siblings are joined
    /// when read (so no concurrent increment is lost) and by the next increment.
    Counter(Counter),
    /// A delete: kept as a sibling so that it supersedes what it saw on replicas that have not
    /// heard of it yet, until every replica has it (then it can be collected).
    Tombstone,
}

impl Payload {
    /// The bytes of a plain value (not of a counter: see [`VersionedValue::read`]).
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            Payload::Value(value) => Some(value),
            Payload::Counter(_) | Payload::Tombstone => None,
        }
    }
}

/// An INCR/DECR refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IncrementError {
    /// Redis's "ERR value is not an integer or out of range".
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error(transparent)]
    Overflow(#[from] CounterOverflow),
    #[error(transparent)]
    TooManySiblings(#[from] TooManySiblings),
}

/// A Redis integer: optional minus sign and decimal digits, no spaces or plus sign, no leading
/// zeros except "0" itself, within `i64` (what `INCR` accepts).
fn parse_redis_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    if bytes == b"-0" {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// One concurrent version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sibling {
    pub dot: Dot,
    /// When the coordinator took the write: orders siblings for last-write-wins.
    pub hlc: HlcTimestamp,
    pub payload: Payload,
}

impl Sibling {
    fn is_tombstone(&self) -> bool {
        self.payload == Payload::Tombstone
    }

    fn counter(&self) -> Option<&Counter> {
        match &self.payload {
            Payload::Counter(counter) => Some(counter),
            Payload::Value(_) | Payload::Tombstone => None,
        }
    }

    /// The deterministic order used to pick among siblings: later HLC first, then larger dot.
    fn rank(&self) -> (HlcTimestamp, Dot) {
        (self.hlc, self.dot)
    }
}

/// What the fate of one acknowledged write is on a replica (for the no-lost-write checker: every
/// acknowledged write must end up `Present` or `Superseded` on every replica once they converge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The write's value is one of the siblings.
    Present,
    /// A later write that saw this one replaced it (its dot is in the causal context).
    Superseded,
    /// The replica has not heard of the write.
    Unseen,
}

/// A write refused because the key would hold too many concurrent values: the client must read
/// and write back with the context it read (resolving the siblings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key would have {count} siblings (at most {siblings_max}): read it and write back with its context")]
pub struct TooManySiblings {
    pub count: usize,
    pub siblings_max: usize,
}

/// A container that breaks the invariants (decoded from a corrupt or hostile source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    #[error("siblings are not in strictly increasing dot order")]
    Unordered,
    #[error("sibling {0} is not covered by the causal context")]
    Uncovered(Dot),
}

/// The state of one key on one replica: concurrent siblings and the causal context.
///
/// Invariants: siblings are sorted by dot with no two alike, and every sibling's dot is covered by
/// the context.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "ContainerParts", into = "ContainerParts")]
pub struct VersionedValue {
    context: VersionVector,
    siblings: Vec<Sibling>,
}

#[derive(Serialize, Deserialize)]
struct ContainerParts {
    context: VersionVector,
    siblings: Vec<Sibling>,
}

impl TryFrom<ContainerParts> for VersionedValue {
    type Error = ContainerError;

    fn try_from(parts: ContainerParts) -> Result<VersionedValue, ContainerError> {
        VersionedValue::from_parts(parts.context, parts.siblings)
    }
}

impl From<VersionedValue> for ContainerParts {
    fn from(value: VersionedValue) -> ContainerParts {
        ContainerParts { context: value.context, siblings: value.siblings }
    }
}

/// A read of one key: the live values, latest first (tombstones left out, counter siblings joined
/// into one decimal value), and the context to write back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult<'a> {
    pub values: Vec<Bytes>,
    pub context: &'a VersionVector,
}

impl VersionedValue {
    /// A key nobody has written.
    pub fn new() -> VersionedValue {
        VersionedValue::default()
    }

    /// A container from stored parts, checking its invariants.
    pub fn from_parts(context: VersionVector, siblings: Vec<Sibling>) -> Result<VersionedValue, ContainerError> {
        if siblings.windows(2).any(|pair| pair[0].dot >= pair[1].dot) {
            return Err(ContainerError::Unordered);
        }
        if let Some(sibling) = siblings.iter().find(|sibling| !context.contains(sibling.dot)) {
            return Err(ContainerError::Uncovered(sibling.dot));
        }
        Ok(VersionedValue { context, siblings })
    }

    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// Every sibling, tombstones included, in dot order.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Nothing stored and nothing seen.
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.context.is_empty()
    }

    /// Whether the key is deleted here: it has siblings and all are tombstones. Such a container
    /// can be collected once every replica holds an equal one (see [`VersionedValue::digest`]).
    pub fn is_tombstone(&self) -> bool {
        !self.siblings.is_empty() && self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// A write coordinated by `node`: the new sibling replaces every sibling whose dot the client's
    /// `context` covers (the values the client read), and stays concurrent with the others. Returns
    /// the new write's dot.
    ///
    /// Must be called on `node`'s own copy of the key: the version vector entry `node: c` claims
    /// every dot of `node` up to `c`, so the copy minting the next dot must have seen all of them
    /// (a fallback or a non-replica minting on an empty container would make replicas drop the
    /// node's earlier live writes).
    ///
    /// The dot's counter is above every counter of `node` this container or the client has seen,
    /// and at least the HLC timestamp packed into a number: so a node never reuses a dot for a key
    /// even after the key's tombstone was collected and the container forgotten (as long as its
    /// clock does not go back across a restart further than the HLC tolerates).
    ///
    /// # Errors
    /// If more than `siblings_max` siblings would remain; nothing changes then.
    pub fn write(
        &mut self,
        node: NodeId,
        context: &VersionVector,
        payload: Payload,
        hlc: HlcTimestamp,
        siblings_max: usize,
    ) -> Result<Dot, TooManySiblings> {
        let remaining = self.siblings.iter().filter(|sibling| !context.contains(sibling.dot)).count();
        if remaining + 1 > siblings_max {
            return Err(TooManySiblings { count: remaining + 1, siblings_max });
        }
        let counter = (self.context.get(node).max(context.get(node)) + 1).max(hlc.packed());
        let dot = Dot { node, counter };
        self.siblings.retain(|sibling| !context.contains(sibling.dot));
        // What the client saw is superseded here and, through the context, on every replica this
        // container reaches, even those that have not received the superseded values yet.
        self.context.merge(context);
        self.context.add(dot);
        let at = self.siblings.partition_point(|sibling| sibling.dot < dot);
        assert!(self.siblings.get(at).is_none_or(|sibling| sibling.dot != dot), "dot {dot} reused");
        self.siblings.insert(at, Sibling { dot, hlc, payload });
        self.check_invariants();
        Ok(dot)
    }

    /// Takes in another replica's container for the same key (replication, read repair,
    /// anti-entropy, hinted handoff). A sibling survives unless the other side has seen its dot
    /// and no longer has it; the contexts join. Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &VersionedValue) {
        let mut merged = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        for sibling in &self.siblings {
            match other.sibling(sibling.dot) {
                Some(theirs) => {
                    // One dot names one write: both copies are the same value. If a bug ever made
                    // them differ, keep the larger so that replicas still converge.
                    debug_assert_eq!(sibling, theirs, "one dot, two values");
                    merged.push(if theirs.rank() > sibling.rank() { theirs.clone() } else { sibling.clone() });
                }
                None if !other.context.contains(sibling.dot) => merged.push(sibling.clone()),
                None => {}
            }
        }
        for sibling in &other.siblings {
            if !self.context.contains(sibling.dot) {
                merged.push(sibling.clone());
            }
        }
        merged.sort_by_key(|sibling| sibling.dot);
        self.siblings = merged;
        self.context.merge(&other.context);
        self.check_invariants();
    }

    /// `a` merged with `b`, leaving both alone.
    pub fn merged(a: &VersionedValue, b: &VersionedValue) -> VersionedValue {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    /// Whether merging `other` into this container would change nothing: this replica already has
    /// everything `other` knows. A replica whose container does not include the merged result of a
    /// read is stale and gets read repair.
    pub fn includes(&self, other: &VersionedValue) -> bool {
        self.context.descends(&other.context)
            && other
                .siblings
                .iter()
                .all(|sibling| self.sibling(sibling.dot).is_some() || self.context.contains(sibling.dot))
            && self
                .siblings
                .iter()
                .all(|sibling| other.sibling(sibling.dot).is_some() || !other.context.contains(sibling.dot))
    }

    /// The live values and the context to write back with.
    pub fn read(&self) -> ReadResult<'_> {
        ReadResult { values: self.live().into_iter().map(|(_, value)| value).collect(), context: &self.context }
    }

    /// The deterministic answer to a plain GET when siblings are kept: the live value with the
    /// latest HLC (the larger dot on a tie, which cannot happen between distinct nodes); counter
    /// siblings count as one value, their join, ranked by the newest of them. Every replica with
    /// the same container picks the same one. `None` if the key is absent or deleted.
    pub fn chosen(&self) -> Option<Bytes> {
        self.live().into_iter().next().map(|(_, value)| value)
    }

    /// The join of every counter sibling, ranked by the newest of them; `None` if there is none.
    pub fn counter(&self) -> Option<((HlcTimestamp, Dot), Counter)> {
        let mut joined: Option<((HlcTimestamp, Dot), Counter)> = None;
        for sibling in &self.siblings {
            if let Some(counter) = sibling.counter() {
                joined = Some(match joined {
                    None => (sibling.rank(), counter.clone()),
                    Some((rank, mut join)) => {
                        join.merge(counter);
                        (rank.max(sibling.rank()), join)
                    }
                });
            }
        }
        joined
    }

    /// The live values, latest first, each with its rank: plain values, and the counters' join.
    fn live(&self) -> Vec<((HlcTimestamp, Dot), Bytes)> {
        let mut live: Vec<((HlcTimestamp, Dot), Bytes)> = self
            .siblings
            .iter()
            .filter_map(|sibling| sibling.payload.value().map(|value| (sibling.rank(), value.clone())))
            .collect();
        if let Some((rank, counter)) = self.counter() {
            live.push((rank, Bytes::from(counter.value().to_string())));
        }
        live.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        live
    }

    /// INCRBY on `node`'s own copy of the key (as [`VersionedValue::write`]): starts from the joined
    /// counter siblings, or, if a plain value or a delete is newer than all of them, from that
    /// value (0 after a delete); adds `delta`; and writes the result as one counter sibling that
    /// supersedes everything this copy has seen. Returns the new dot and value.
    ///
    /// # Errors
    /// If the value to start from is not an integer, or the result leaves the `i64` range; nothing
    /// changes then.
    pub fn increment(
        &mut self,
        node: NodeId,
        delta: i64,
        hlc: HlcTimestamp,
        siblings_max: usize,
    ) -> Result<(Dot, i64), IncrementError> {
        let counter = self.counter();
        let newest_other =
            self.siblings.iter().filter(|sibling| sibling.counter().is_none()).max_by_key(|sibling| sibling.rank());
        let restart = match (&counter, newest_other) {
            (Some((rank, _)), Some(other)) => other.rank() > *rank,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let mut start = match (counter, newest_other) {
            (_, Some(other)) if restart => {
                let value = match &other.payload {
                    Payload::Value(bytes) => parse_redis_integer(bytes).ok_or(IncrementError::NotAnInteger)?,
                    Payload::Tombstone => 0,
                    Payload::Counter(_) => unreachable!("counters are not among the others"),
                };
                Counter::starting_at(Some(CounterBase { hlc: other.hlc, dot: other.dot, value }))
            }
            (Some((_, counter)), _) => counter,
            (None, _) => Counter::starting_at(None),
        };
        let value = start.add(node, delta)?;
        let context = self.context.clone();
        let dot = self.write(node, &context, Payload::Counter(start), hlc, siblings_max)?;
        Ok((dot, value))
    }

    /// Last-write-wins: the sibling with the latest HLC, tombstones included (a delete after a
    /// write deletes). `None` for a key never written.
    pub fn resolve_lww(&self) -> Option<&Sibling> {
        self.siblings.iter().max_by_key(|sibling| sibling.rank())
    }

    /// Keeps only the last-write-wins sibling (configured LWW mode: concurrent writes are
    /// discarded, deliberately and deterministically, on every replica that merges). The context
    /// is kept, so the discarded dots stay superseded everywhere.
    ///
    /// Counters stay CRDTs even then: every counter sibling newer than the newest plain value or
    /// delete is kept (they are joined when read), so concurrent increments are not lost; a plain
    /// value or delete newer than them all replaces them.
    pub fn keep_lww_only(&mut self) {
        let newest_other =
            self.siblings.iter().filter(|sibling| sibling.counter().is_none()).map(|sibling| sibling.rank()).max();
        let counter_after = self
            .siblings
            .iter()
            .any(|sibling| sibling.counter().is_some() && newest_other.is_none_or(|rank| sibling.rank() > rank));
        self.siblings.retain(|sibling| match sibling.counter() {
            Some(_) => newest_other.is_none_or(|rank| sibling.rank() > rank),
            None => !counter_after && Some(sibling.rank()) == newest_other,
        });
        self.check_invariants();
    }

    /// What became of the write named `dot` on this replica.
    pub fn fate(&self, dot: Dot) -> Fate {
        if self.sibling(dot).is_some() {
            Fate::Present
        } else if self.context.contains(dot) {
            Fate::Superseded
        } else {
            Fate::Unseen
        }
    }

    /// A stable digest of the whole container (context and siblings). Two replicas with equal
    /// digests hold the same container; Merkle leaves are built from these.
    pub fn digest(&self) -> u64 {
        let mut hasher = StableHasher::new();
        hasher.u64(self.context.len() as u64);
        for dot in self.context.iter() {
            hasher.u64(dot.node.0).u64(dot.counter);
        }
        hasher.u64(self.siblings.len() as u64);
        for sibling in &self.siblings {
            hasher.u64(sibling.dot.node.0).u64(sibling.dot.counter);
            hasher.u64(sibling.hlc.wall_ms).u64(u64::from(sibling.hlc.logical)).u64(sibling.hlc.node.0);
            match &sibling.payload {
                Payload::Value(value) => hasher.u64(1).bytes(value),
                Payload::Counter(counter) => hasher.u64(2).u64(counter.digest()),
                Payload::Tombstone => hasher.u64(0),
            };
        }
        hasher.finish()
    }

    fn sibling(&self, dot: Dot) -> Option<&Sibling> {
        self.siblings.binary_search_by_key(&dot, |sibling| sibling.dot).ok().map(|at| &self.siblings[at])
    }

    fn check_invariants(&self) {
        for pair in self.siblings.windows(2) {
            assert!(pair[0].dot < pair[1].dot, "siblings out of order: {} then {}", pair[0].dot, pair[1].dot);
        }
        for sibling in &self.siblings {
            assert!(self.context.contains(sibling.dot), "sibling {} outside the context", sibling.dot);
        }
    }
}

#[cfg(test)]
mod tests;
