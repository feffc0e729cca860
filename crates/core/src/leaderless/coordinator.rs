//! The request coordinator of leaderless replication, sans-IO: a node takes a client's GET (any
//! node) or SET (a home replica of the key), sends it to the key's replicas, and answers once the
//! quorum says so (Dynamo section 4.5).
//!
//! ```text
//!   driver                                       Coordinator
//!   ------                                       -----------
//!   client SET/DEL ─ put(now, request, ..) ───▶  new dot on the container ─▶ Send(Put) to n targets
//!   client GET ──── get(now, request, ..) ────▶  local read               ─▶ Send(Get) to n targets
//!   peer ───── handle_message(now, from, ..) ─▶  merge / answer / count  ─▶ Reply after w acks or r
//!                                                                             replies; Send(Repair)
//!   failure detector ── set_down(node, bool) ─▶  sloppy quorum: fallbacks take a down node's share
//!   timer ──────────── tick(now, ..) ─────────▶  timeouts; hinted handoff ─▶ Send(Handoff)
//!
//!   effects, drained in order: Send { to, message } · Reply { request, reply }
//! ```
//!
//! The key-value data stays with the driver, behind [`Store`]: the coordinator reads and writes it
//! synchronously, so the driver's store must make a `put` durable before the ack it leads to is
//! sent (the node's wiring, not done yet). Hints a fallback holds for a down home replica are kept
//! here, in memory, until handed off.
//!
//! Rules: a write is coordinated by a home replica that is up, from its own copy of the key (any
//! other node answers `NotAHomeReplica` with where to forward: a version vector entry `node: c`
//! claims every dot of `node` up to `c`, so only the copy that saw all of a node's dots for a key
//! may mint the next one); reads can be coordinated anywhere; replicas exchange whole
//! containers and merge them, so duplicates, reordering and retries are harmless; a read answers
//! after `r` replies and, once every target answered or the request timed out, repairs each target
//! whose container lacks something the others had (read repair); a read that finds every home
//! replica holding the same tombstone collects it (`Purge`, applied only if the container is still
//! that tombstone).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::clock::{Hlc, HlcTimestamp};
use super::counter::Counter;
use super::merkle::{MerkleTree, SlotDigests};
use super::placement::{Quorum, Target, preference_list, targets};
use super::version::{Dot, IncrementError, Payload, TooManySiblings, VersionVector, VersionedValue};
use crate::replica::RequestId;
use crate::slot::{SLOT_COUNT, Slot};
use crate::types::{NodeId, UnixMillis};

/// The local key-value data of leaderless mode, one container per key.
pub trait Store {
    fn get(&self, key: &[u8]) -> Option<VersionedValue>;
    /// Replaces the key's container (the coordinator has merged it already).
    fn put(&mut self, key: Bytes, value: VersionedValue);
    fn remove(&mut self, key: &[u8]);
}

/// A [`Store`] in memory, for unit tests and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    pub keys: BTreeMap<Bytes, VersionedValue>,
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Option<VersionedValue> {
        self.keys.get(key).cloned()
    }

    fn put(&mut self, key: Bytes, value: VersionedValue) {
        self.keys.insert(key, value);
    }

    fn remove(&mut self, key: &[u8]) {
        self.keys.remove(key);
    }
}

/// How a key's concurrent values are presented and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Resolution {
    /// Keep every concurrent value as a sibling; a read returns them all plus a context, and a plain
    /// GET the deterministic choice (latest HLC). Riak's `allow_mult`.
    #[default]
    Siblings,
    /// Keep only the value with the latest HLC (deletes included): concurrent writes are lost by
    /// design, the same way on every replica. Cassandra's model.
    LastWriteWins,
}

/// Tunables of a coordinator. Every node of a cluster must use the same `resolution`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    pub node_id: NodeId,
    /// Used when a request names none.
    pub quorum: Quorum,
    pub resolution: Resolution,
    /// Whether fallbacks stand in for down home replicas (writes stay available; hints hand the
    /// data back later).
    pub sloppy_quorum: bool,
    /// A request not answered by then fails (a write may still have been stored by some replicas).
    pub request_timeout_ms: u64,
    pub siblings_max: usize,
    /// Most requests this node coordinates at once; more are refused.
    pub requests_in_flight_max: usize,
    /// Most keys held as hints for down nodes; a fallback with a full hint store does not ack.
    pub hints_max: usize,
    /// How often hints are offered to their home replicas, and how many per home replica per round.
    pub handoff_interval_ms: u64,
    pub handoff_batch_max: usize,
    /// How often this node starts an anti-entropy exchange with the next peer (round robin).
    pub anti_entropy_interval_ms: u64,
    /// Most differing slots reconciled per exchange (the rest wait for the next round).
    pub anti_entropy_slots_max: usize,
    /// Test only: a bug planted on purpose (see [`PlantedBug`]). `None` in every real use.
    #[doc(hidden)]
    pub planted_bug: Option<PlantedBug>,
    /// Record every change to the hints held, for a driver that persists them
    /// ([`Coordinator::drain_hint_changes`]; then it must drain them after every input).
    pub track_hint_changes: bool,
}

/// A bug planted on purpose, for the simulator (`chorus-sim`, leaderless mode) to prove its
/// checkers catch it. Never set outside tests: [`CoordinatorConfig::new`] leaves it `None`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// A replica merging a container it received (replication, repair, handoff, anti-entropy)
    /// keeps the received context but drops the received siblings it did not have whenever its own
    /// copy has siblings ("local wins"): a concurrent write is forgotten while its dot is
    /// recorded as seen, so it looks superseded though no client saw it.
    MergeDropsIncomingSibling,
    /// Anti-entropy answers and sends as usual but ignores the containers it receives.
    AntiEntropyIgnoresReceivedKeys,
}

impl CoordinatorConfig {
    pub fn new(node_id: NodeId) -> CoordinatorConfig {
        CoordinatorConfig {
            node_id,
            quorum: Quorum::default(),
            resolution: Resolution::Siblings,
            sloppy_quorum: true,
            request_timeout_ms: 1000,
            siblings_max: 100,
            requests_in_flight_max: 10_000,
            hints_max: 100_000,
            handoff_interval_ms: 1000,
            handoff_batch_max: 64,
            anti_entropy_interval_ms: 10_000,
            anti_entropy_slots_max: 64,
            planted_bug: None,
            track_hint_changes: false,
        }
    }
}

/// What coordinators and replicas send each other. Every message carries whole containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Merge `value` into your copy of `key` (or into your hints for `hint_for`), then ack.
    Put {
        op: u64,
        key: Bytes,
        value: VersionedValue,
        hint_for: Option<NodeId>,
    },
    /// `counter`: for a container with a counter, the replica's counter after the merge (the
    /// coordinator of an increment joins them into its answer).
    PutAck {
        op: u64,
        counter: Option<Counter>,
    },
    /// Send your copy of `key` (from your hints for `hint_for`, if set).
    Get {
        op: u64,
        key: Bytes,
        hint_for: Option<NodeId>,
    },
    GetReply {
        op: u64,
        value: Option<VersionedValue>,
    },
    /// Read repair: merge `value` in; no answer.
    Repair {
        key: Bytes,
        value: VersionedValue,
        hint_for: Option<NodeId>,
    },
    /// Drop `key` if your container's digest is still `digest` (a tombstone every home replica has).
    Purge {
        key: Bytes,
        digest: u64,
    },
    /// Hinted handoff: a fallback returns data it held while you were down. Merge, then ack.
    Handoff {
        key: Bytes,
        value: VersionedValue,
    },
    /// The home replica has merged the handed-off container whose digest was `digest`.
    HandoffAck {
        key: Bytes,
        digest: u64,
    },
    /// Anti-entropy, step 1: the sender's Merkle tree over the slots both nodes are home replicas
    /// of, as its root and its level 1 (1024 hashes of 16 slots each).
    AntiEntropyTree {
        root: u64,
        hashes: Vec<u64>,
    },
    /// Step 2: for each level-1 node that differs, the answering node's 16 leaves (slot hashes).
    AntiEntropyLeaves {
        nodes: Vec<(u32, Vec<u64>)>,
    },
    /// Step 3: for each slot that differs, the key digests the sender holds there.
    AntiEntropyDigests {
        slots: Vec<(Slot, Vec<(Bytes, u64)>)>,
    },
    /// Steps 4 and 5: containers of keys that differ (merge them), and the keys the sender wants
    /// the receiver's containers of (none in the last step).
    AntiEntropyKeys {
        values: Vec<(Bytes, VersionedValue)>,
        want: Vec<Bytes>,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("only {reachable} replicas reachable, {needed} needed")]
    Unavailable { reachable: usize, needed: usize },
    #[error("timed out with {answered} of {needed} replicas answering")]
    Timeout { answered: usize, needed: usize },
    #[error(transparent)]
    TooManySiblings(#[from] TooManySiblings),
    #[error(transparent)]
    Increment(#[from] IncrementError),
    #[error("too many requests in flight")]
    Busy,
    /// A request asked for more replicas than the configured `n`: the replicas past the
    /// configured home replicas are outside what anti-entropy compares and default reads ask, so
    /// a write acknowledged there could be lost to the key's home replicas (the simulator found
    /// it, seeds 35, 52, 79, 132 and 135 with `n = 4` on a cluster configured with 3).
    #[error("n={requested} is above the configured n={configured}: a key has only {configured} home replicas")]
    NAboveConfigured { requested: u8, configured: u8 },
    /// Writes are coordinated by a home replica of the key that is up (`forward_to`, if any):
    /// only a node's own copy of a key has seen every dot the node minted for it, which is what
    /// makes a new dot's counter cover exactly the node's earlier writes.
    #[error("not a home replica of the key")]
    NotAHomeReplica { forward_to: Option<NodeId> },
}

/// The answer to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientReply {
    /// The write is on `w` replicas. `dot` names it; `context` covers it (what a client that wants
    /// to overwrite its own write passes next).
    Written {
        dot: Dot,
        context: VersionVector,
    },
    /// The increment is on `w` replicas; `value` is the counter as the coordinator computed it.
    Incremented {
        value: i64,
        dot: Dot,
        context: VersionVector,
    },
    /// The merged view of `r` replicas: live values latest first (empty if absent or deleted), the
    /// deterministic choice for a plain GET, and the context to write back with.
    Read {
        values: Vec<Bytes>,
        chosen: Option<Bytes>,
        context: VersionVector,
    },
    Failed(RequestError),
}

/// A client write (`Payload::Tombstone` for a delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    pub key: Bytes,
    pub payload: Payload,
    /// The context the client read (empty for a blind write): the values it replaces.
    pub context: VersionVector,
    /// The request's own n/w/r, or `None` for the configured default.
    pub quorum: Option<Quorum>,
}

/// Counters of what the replication machinery did on this node, for INFO and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Read repairs: `Repair` messages sent, plus this node's own copy repaired by a read.
    pub read_repairs: u64,
    /// Anti-entropy exchanges this node started.
    pub anti_entropy_rounds: u64,
    /// Containers received in anti-entropy exchanges (merged into the local store).
    pub anti_entropy_keys_received: u64,
    /// Containers sent in anti-entropy exchanges.
    pub anti_entropy_keys_sent: u64,
    /// Keys taken as hints for a down home replica (counted when a key is first held).
    pub hints_stored: u64,
    /// Hints dropped after their home replica acknowledged the handoff.
    pub hints_delivered: u64,
    /// Containers received by hinted handoff (this node being the home replica).
    pub handoffs_received: u64,
    /// Tombstones collected from the local store.
    pub tombstones_purged: u64,
}

/// A change to the hints this node holds (see [`CoordinatorConfig::track_hint_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintChange {
    /// The hint for `home` of `key` is now `value`.
    Held { home: NodeId, key: Bytes, value: VersionedValue },
    /// The hint was handed off and dropped.
    Dropped { home: NodeId, key: Bytes },
}

/// Something the driver must do, in the order drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Send { to: NodeId, message: Message },
    Reply { request: RequestId, reply: ClientReply },
}

#[derive(Debug)]
struct PendingWrite {
    request: RequestId,
    dot: Dot,
    /// For an increment, the value the coordinator computed, and its counter joined with the
    /// counters the acks carried (same base only): what the answer is computed from.
    incremented: Option<(i64, Counter)>,
    /// The nodes the write was sent to: only their acks count.
    targets: Vec<NodeId>,
    context: VersionVector,
    acked: BTreeSet<NodeId>,
    w: usize,
    deadline: UnixMillis,
}

#[derive(Debug)]
struct PendingRead {
    request: RequestId,
    key: Bytes,
    targets: Vec<Target>,
    home_count: usize,
    replies: BTreeMap<NodeId, Option<VersionedValue>>,
    r: usize,
    answered: bool,
    deadline: UnixMillis,
}

/// The coordinator and replica logic of one node in leaderless mode.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    clock: Hlc,
    members: Vec<NodeId>,
    down: BTreeSet<NodeId>,
    next_op: u64,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    /// Containers held for down home replicas, by home replica.
    hints: BTreeMap<NodeId, BTreeMap<Bytes, VersionedValue>>,
    hint_count: usize,
    handoff_due: Option<UnixMillis>,
    /// Every key of the local store (hints excluded) by slot, with its container's digest, and the
    /// Merkle tree of those slots, kept in step with every store write.
    index: BTreeMap<Slot, SlotDigests>,
    tree: MerkleTree,
    /// Per peer, the Merkle tree of only the slots both are home replicas of (what the two
    /// compare), built on first use and then kept in step like `tree`.
    peer_trees: BTreeMap<NodeId, MerkleTree>,
    anti_entropy_due: Option<UnixMillis>,
    /// The last peer an anti-entropy exchange was started with.
    anti_entropy_peer: Option<NodeId>,
    stats: CoordinatorStats,
    hint_changes: Vec<HintChange>,
    effects: Vec<Effect>,
}

impl Coordinator {
    /// # Panics
    /// If `members` does not include this node, or the config has zero limits.
    pub fn new(config: CoordinatorConfig, members: Vec<NodeId>) -> Coordinator {
        assert!(members.contains(&config.node_id), "node {} is not a member", config.node_id);
        assert!(config.request_timeout_ms > 0, "zero request timeout");
        assert!(config.siblings_max > 0, "no sibling allowed");
        assert!(config.requests_in_flight_max > 0, "no request allowed");
        assert!(config.handoff_batch_max > 0, "hints could never be handed off");
        assert!(config.anti_entropy_slots_max > 0, "anti-entropy could never repair a slot");
        Coordinator {
            clock: Hlc::new(config.node_id),
            config,
            members,
            down: BTreeSet::new(),
            next_op: 1,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            hints: BTreeMap::new(),
            hint_count: 0,
            handoff_due: None,
            index: BTreeMap::new(),
            tree: MerkleTree::new(0..SLOT_COUNT),
            peer_trees: BTreeMap::new(),
            anti_entropy_due: None,
            anti_entropy_peer: None,
            stats: CoordinatorStats::default(),
            hint_changes: Vec::new(),
            effects: Vec::new(),
        }
    }

    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// The failure detector's verdict on `node` (never this node).
    pub fn set_down(&mut self, node: NodeId, down: bool) {
        assert_ne!(node, self.config.node_id, "a node cannot mark itself down");
        if down {
            self.down.insert(node);
        } else {
            self.down.remove(&node);
        }
    }

    /// Number of keys held as hints for other nodes.
    pub fn hint_count(&self) -> usize {
        self.hint_count
    }

    /// The hint changes since the last call (only with `track_hint_changes`), in order.
    pub fn drain_hint_changes(&mut self) -> std::vec::Drain<'_, HintChange> {
        self.hint_changes.drain(..)
    }

    /// Tells the coordinator about a hint held before a restart (like [`Coordinator::load`]).
    pub fn load_hint(&mut self, now: UnixMillis, home: NodeId, key: Bytes, value: VersionedValue) {
        if home == self.config.node_id {
            return;
        }
        self.observe(now, &value);
        if self.hints.entry(home).or_default().insert(key, value).is_none() {
            self.hint_count += 1;
        }
    }

    /// What the replication machinery did so far.
    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// The root of the Merkle tree over the slots this node and `peer` are both home replicas of
    /// (what anti-entropy compares): equal on both sides once they agree on those slots.
    pub fn shared_digest(&mut self, peer: NodeId) -> u64 {
        self.shared_tree(peer).root()
    }

    /// Per slot, the digest anti-entropy compares (the Merkle leaf: a hash over the slot's keys and
    /// their containers' digests), for every slot this node holds keys in, in slot order; with
    /// `peer`, only the slots both are home replicas of. Two replicas of a slot agree on it exactly
    /// when both list the same digest for it (or neither lists it).
    pub fn slot_digests(&self, peer: Option<NodeId>) -> Vec<(Slot, u64)> {
        self.index
            .keys()
            .filter(|&&slot| peer.is_none_or(|peer| self.shares_slot(peer, slot)))
            .map(|&slot| (slot, self.tree.level(0)[usize::from(slot.0)]))
            .collect()
    }

    /// The home replicas of `key`.
    pub fn preference_list(&self, key: &[u8], quorum: Option<Quorum>) -> Vec<NodeId> {
        let n = usize::from(quorum.unwrap_or(self.config.quorum).n);
        preference_list(&self.members, Slot::of_key(key), n)
    }

    /// A client write. Answered with `Written` after `w` targets stored it.
    pub fn put(&mut self, now: UnixMillis, request: RequestId, put: Put, store: &mut impl Store) {
        let Put { key, payload, context, quorum } = put;
        let siblings_max = self.config.siblings_max;
        self.coordinate_write(now, request, key, quorum, store, |container, me, hlc| {
            let dot = container.write(me, &context, payload, hlc, siblings_max)?;
            Ok((dot, None))
        });
    }

    /// A client INCRBY (`delta` negative for DECRBY): an update of the key's counter on this home
    /// replica's copy, replicated like a write. Answered with `Incremented` after `w` acks.
    ///
    /// The answer is this copy's counter joined with the counter each acknowledging replica holds
    /// after merging the update (acks carry it). With `w + w' > n`, the acknowledging replicas meet
    /// the write quorum of every earlier acknowledged increment (of quorum `w'`), so the answer counts
    /// every increment acknowledged before this one began, whichever node coordinated it (as long as
    /// no SET or DEL of the key raced with them: a counter on another base is not joined). With
    /// `w = 1` it is this copy's alone. Increments are never lost either way: replicas join them.
    pub fn increment(
        &mut self,
        now: UnixMillis,
        request: RequestId,
        key: Bytes,
        delta: i64,
        quorum: Option<Quorum>,
        store: &mut impl Store,
    ) {
        let siblings_max = self.config.siblings_max;
        self.coordinate_write(now, request, key, quorum, store, |container, me, hlc| {
            let (dot, value) = container.increment(me, delta, hlc, siblings_max)?;
            let counter = container.counter().map(|(_, counter)| counter).unwrap_or_default();
            Ok((dot, Some((value, counter))))
        });
    }

    /// The common path of writes: checks, the update on the local copy (`update` returns the new
    /// dot and, for an increment, the new value), then replication to the other targets.
    fn coordinate_write(
        &mut self,
        now: UnixMillis,
        request: RequestId,
        key: Bytes,
        quorum: Option<Quorum>,
        store: &mut impl Store,
        update: impl FnOnce(
            &mut VersionedValue,
            NodeId,
            HlcTimestamp,
        ) -> Result<(Dot, Option<(i64, Counter)>), RequestError>,
    ) {
        let quorum = match self.request_quorum(quorum) {
            Ok(quorum) => quorum,
            Err(error) => return self.fail(request, error),
        };
        if self.in_flight() >= self.config.requests_in_flight_max {
            return self.fail(request, RequestError::Busy);
        }
        let targets = self.targets_for(&key, quorum);
        let w = usize::from(quorum.w);
        if targets.len() < w {
            return self.fail(request, RequestError::Unavailable { reachable: targets.len(), needed: w });
        }
        let me = self.config.node_id;
        if !targets.contains(&Target { node: me, hint_for: None }) {
            let forward_to = targets.iter().find(|target| target.hint_for.is_none()).map(|target| target.node);
            return self.fail(request, RequestError::NotAHomeReplica { forward_to });
        }
        let mut container = store.get(&key).unwrap_or_default();
        let hlc = self.clock.now(now);
        let (dot, incremented) = match update(&mut container, me, hlc) {
            Ok(done) => done,
            Err(error) => return self.fail(request, error),
        };
        self.settle(&mut container);
        let op = self.next_op(now);
        self.store_put(store, key.clone(), container.clone());
        let acked = BTreeSet::from([me]);
        for target in targets.iter().filter(|target| target.node != me) {
            let message = Message::Put { op, key: key.clone(), value: container.clone(), hint_for: target.hint_for };
            self.effects.push(Effect::Send { to: target.node, message });
        }
        let pending = PendingWrite {
            request,
            dot,
            incremented,
            targets: targets.iter().map(|target| target.node).collect(),
            context: container.context().clone(),
            acked,
            w,
            deadline: UnixMillis(now.0 + self.config.request_timeout_ms),
        };
        if pending.acked.len() >= w {
            self.reply_written(&pending);
        } else {
            self.writes.insert(op, pending);
        }
    }

    /// A client read. Answered with `Read` after `r` targets replied; repairs follow once all
    /// targets replied or the request timed out.
    pub fn get(
        &mut self,
        now: UnixMillis,
        request: RequestId,
        key: Bytes,
        quorum: Option<Quorum>,
        store: &mut impl Store,
    ) {
        let quorum = match self.request_quorum(quorum) {
            Ok(quorum) => quorum,
            Err(error) => return self.fail(request, error),
        };
        if self.in_flight() >= self.config.requests_in_flight_max {
            return self.fail(request, RequestError::Busy);
        }
        let targets = self.targets_for(&key, quorum);
        let r = usize::from(quorum.r);
        if targets.len() < r {
            return self.fail(request, RequestError::Unavailable { reachable: targets.len(), needed: r });
        }
        let me = self.config.node_id;
        let op = self.next_op(now);
        let mut replies = BTreeMap::new();
        for target in &targets {
            if target.node == me {
                replies.insert(me, self.local_copy(&key, target.hint_for, store));
            } else {
                let message = Message::Get { op, key: key.clone(), hint_for: target.hint_for };
                self.effects.push(Effect::Send { to: target.node, message });
            }
        }
        let home_count = preference_list(&self.members, Slot::of_key(&key), usize::from(quorum.n)).len();
        let pending = PendingRead {
            request,
            key,
            targets,
            home_count,
            replies,
            r,
            answered: false,
            deadline: UnixMillis(now.0 + self.config.request_timeout_ms),
        };
        self.reads.insert(op, pending);
        self.progress_read(op, store);
    }

    /// A message from a peer.
    pub fn handle_message(&mut self, now: UnixMillis, from: NodeId, message: Message, store: &mut impl Store) {
        match message {
            Message::Put { op, key, value, hint_for } => {
                self.observe(now, &value);
                if self.merge_into(&key, &value, hint_for, store) {
                    let counter = match value.counter() {
                        Some(_) => self.local_copy(&key, hint_for, store).and_then(|held| held.counter()),
                        None => None,
                    };
                    let counter = counter.map(|(_, counter)| counter);
                    self.effects.push(Effect::Send { to: from, message: Message::PutAck { op, counter } });
                }
            }
            Message::PutAck { op, counter } => {
                if let Some(pending) = self.writes.get_mut(&op)
                    && pending.targets.contains(&from)
                {
                    if let (Some((_, ours)), Some(theirs)) = (&mut pending.incremented, &counter)
                        && ours.base() == theirs.base()
                        && !pending.acked.contains(&from)
                    {
                        ours.merge(theirs);
                    }
                    pending.acked.insert(from);
                    if pending.acked.len() >= pending.w
                        && let Some(pending) = self.writes.remove(&op)
                    {
                        self.reply_written(&pending);
                    }
                }
            }
            Message::Get { op, key, hint_for } => {
                let value = self.local_copy(&key, hint_for, store);
                self.effects.push(Effect::Send { to: from, message: Message::GetReply { op, value } });
            }
            Message::GetReply { op, value } => {
                if let Some(value) = &value {
                    self.observe(now, value);
                }
                let Some(pending) = self.reads.get_mut(&op) else { return };
                if pending.targets.iter().any(|target| target.node == from) {
                    pending.replies.insert(from, value);
                    self.progress_read(op, store);
                }
            }
            Message::Repair { key, value, hint_for } => {
                self.observe(now, &value);
                self.merge_into(&key, &value, hint_for, store);
            }
            Message::Purge { key, digest } => {
                if store.get(&key).is_some_and(|held| held.is_tombstone() && held.digest() == digest) {
                    self.stats.tombstones_purged += 1;
                    self.store_remove(store, &key);
                }
            }
            Message::Handoff { key, value } => {
                self.stats.handoffs_received += 1;
                self.observe(now, &value);
                self.merge_into(&key, &value, None, store);
                let digest = value.digest();
                self.effects.push(Effect::Send { to: from, message: Message::HandoffAck { key, digest } });
            }
            Message::AntiEntropyTree { root, hashes } => self.handle_anti_entropy_tree(from, root, &hashes),
            Message::AntiEntropyLeaves { nodes } => self.handle_anti_entropy_leaves(from, &nodes),
            Message::AntiEntropyDigests { slots } => self.handle_anti_entropy_digests(from, slots, store),
            Message::AntiEntropyKeys { values, want } => {
                let ignore = self.config.planted_bug == Some(PlantedBug::AntiEntropyIgnoresReceivedKeys);
                for (key, value) in values.iter().filter(|_| !ignore) {
                    // Only keys this node is a home replica of: a peer cannot plant others.
                    if self.shares_slot(from, Slot::of_key(key)) {
                        self.stats.anti_entropy_keys_received += 1;
                        self.observe(now, value);
                        self.merge_into(key, value, None, store);
                    }
                }
                let values: Vec<(Bytes, VersionedValue)> = want
                    .into_iter()
                    .filter(|key| self.shares_slot(from, Slot::of_key(key)))
                    .filter_map(|key| store.get(&key).map(|value| (key, value)))
                    .collect();
                if !values.is_empty() {
                    self.stats.anti_entropy_keys_sent += values.len() as u64;
                    let message = Message::AntiEntropyKeys { values, want: Vec::new() };
                    self.effects.push(Effect::Send { to: from, message });
                }
            }
            Message::HandoffAck { key, digest } => {
                // Only drop the hint if it did not change since it was sent.
                if let Some(hints) = self.hints.get_mut(&from)
                    && hints.get(&key).is_some_and(|held| held.digest() == digest)
                {
                    hints.remove(&key);
                    self.hint_count -= 1;
                    self.stats.hints_delivered += 1;
                    if self.config.track_hint_changes {
                        self.hint_changes.push(HintChange::Dropped { home: from, key });
                    }
                    if hints.is_empty() {
                        self.hints.remove(&from);
                    }
                }
            }
        }
    }

    /// Time passes: requests past their deadline fail (reads repair with what they have), and
    /// hints are offered to home replicas that are up again.
    pub fn tick(&mut self, now: UnixMillis, store: &mut impl Store) {
        let expired: Vec<u64> =
            self.writes.iter().filter(|(_, pending)| pending.deadline <= now).map(|(&op, _)| op).collect();
        for op in expired {
            if let Some(pending) = self.writes.remove(&op) {
                let error = RequestError::Timeout { answered: pending.acked.len(), needed: pending.w };
                self.fail(pending.request, error);
            }
        }
        let expired: Vec<u64> =
            self.reads.iter().filter(|(_, pending)| pending.deadline <= now).map(|(&op, _)| op).collect();
        for op in expired {
            self.finish_read(op, store);
        }
        if self.handoff_due.is_none_or(|due| due <= now) {
            self.handoff_due = Some(UnixMillis(now.0 + self.config.handoff_interval_ms));
            self.offer_hints();
        }
        match self.anti_entropy_due {
            None => self.anti_entropy_due = Some(UnixMillis(now.0 + self.config.anti_entropy_interval_ms)),
            Some(due) if due <= now => {
                self.anti_entropy_due = Some(UnixMillis(now.0 + self.config.anti_entropy_interval_ms));
                self.start_anti_entropy();
            }
            Some(_) => {}
        }
    }

    /// Tells the coordinator about a key already in the store when it starts (after a restart), so
    /// that anti-entropy knows it and the clock moves past every write stored.
    pub fn load(&mut self, now: UnixMillis, key: Bytes, value: &VersionedValue) {
        self.observe(now, value);
        self.index_update(key, Some(value.digest()));
    }

    /// The Merkle tree of everything in the local store (hints excluded).
    pub fn merkle_tree(&self) -> &MerkleTree {
        &self.tree
    }

    fn store_put(&mut self, store: &mut impl Store, key: Bytes, value: VersionedValue) {
        self.index_update(key.clone(), Some(value.digest()));
        store.put(key, value);
    }

    fn store_remove(&mut self, store: &mut impl Store, key: &Bytes) {
        self.index_update(key.clone(), None);
        store.remove(key);
    }

    fn index_update(&mut self, key: Bytes, digest: Option<u64>) {
        let slot = Slot::of_key(&key);
        let digests = self.index.entry(slot).or_default();
        let old = match digest {
            Some(digest) => digests.insert(key.clone(), digest),
            None => digests.remove(&key),
        };
        if digests.is_empty() {
            self.index.remove(&slot);
        }
        self.tree.update_key(slot, &key, old, digest);
        if !self.peer_trees.is_empty() {
            let home = preference_list(&self.members, slot, usize::from(self.config.quorum.n));
            if home.contains(&self.config.node_id) {
                for peer in home {
                    if let Some(tree) = self.peer_trees.get_mut(&peer) {
                        tree.update_key(slot, &key, old, digest);
                    }
                }
            }
        }
    }

    /// Whether this node and `peer` are both home replicas of `slot` (by the default `n`).
    fn shares_slot(&self, peer: NodeId, slot: Slot) -> bool {
        shares_slot(&self.members, self.config.quorum, self.config.node_id, peer, slot)
    }

    /// The Merkle tree over the slots this node and `peer` are both home replicas of: the local
    /// tree's leaves with every other slot empty, so the two sides compare like with like.
    pub(crate) fn shared_tree(&mut self, peer: NodeId) -> &MerkleTree {
        if !self.peer_trees.contains_key(&peer) {
            let leaves = self.tree.level(0).iter().enumerate().map(|(at, &leaf)| {
                let slot = Slot(u16::try_from(at).unwrap_or(u16::MAX));
                if leaf != 0 && self.shares_slot(peer, slot) { leaf } else { 0 }
            });
            let tree = MerkleTree::from_leaves(0..SLOT_COUNT, leaves.collect());
            self.peer_trees.insert(peer, tree);
        }
        &self.peer_trees[&peer]
    }

    /// Starts an exchange with the next peer that is up (round robin over the members).
    fn start_anti_entropy(&mut self) {
        let me = self.config.node_id;
        let peers: Vec<NodeId> =
            self.members.iter().copied().filter(|&node| node != me && !self.down.contains(&node)).collect();
        let Some(&first) = peers.first() else { return };
        let peer =
            self.anti_entropy_peer.and_then(|last| peers.iter().copied().find(|&node| node > last)).unwrap_or(first);
        self.anti_entropy_peer = Some(peer);
        self.stats.anti_entropy_rounds += 1;
        let tree = self.shared_tree(peer);
        let message = Message::AntiEntropyTree { root: tree.root(), hashes: tree.level(1).to_vec() };
        self.effects.push(Effect::Send { to: peer, message });
    }

    /// Step 2: answer with our leaves under every level-1 node that differs.
    fn handle_anti_entropy_tree(&mut self, from: NodeId, root: u64, hashes: &[u64]) {
        let slots_max = self.config.anti_entropy_slots_max;
        let tree = self.shared_tree(from);
        if tree.root() == root || hashes.len() != tree.level(1).len() {
            return;
        }
        let nodes: Vec<(u32, Vec<u64>)> = tree
            .level(1)
            .iter()
            .zip(hashes)
            .enumerate()
            .filter(|(_, (ours, theirs))| ours != theirs)
            // Each differing node holds at least one differing slot.
            .take(slots_max)
            .map(|(index, _)| {
                let children = tree.children(1, index);
                (u32::try_from(index).unwrap_or(u32::MAX), tree.level(0)[children].to_vec())
            })
            .collect();
        if !nodes.is_empty() {
            self.effects.push(Effect::Send { to: from, message: Message::AntiEntropyLeaves { nodes } });
        }
    }

    /// Step 3: send our key digests of every slot whose leaf differs.
    fn handle_anti_entropy_leaves(&mut self, from: NodeId, nodes: &[(u32, Vec<u64>)]) {
        self.shared_tree(from);
        let tree = &self.peer_trees[&from];
        let (members, quorum, me) = (&self.members, self.config.quorum, self.config.node_id);
        let mut slots = Vec::new();
        for (index, theirs) in nodes {
            let Ok(index) = usize::try_from(*index) else { continue };
            if index >= tree.level(1).len() {
                continue;
            }
            for (offset, at) in tree.children(1, index).enumerate() {
                let Some(&their_leaf) = theirs.get(offset) else { continue };
                let slot = Slot(u16::try_from(at).unwrap_or(u16::MAX));
                if tree.level(0)[at] == their_leaf || slots.len() >= self.config.anti_entropy_slots_max {
                    continue;
                }
                if shares_slot(members, quorum, me, from, slot) {
                    let digests = self
                        .index
                        .get(&slot)
                        .map(|digests| digests.iter().map(|(key, digest)| (key.clone(), digest)).collect());
                    slots.push((slot, digests.unwrap_or_default()));
                }
            }
        }
        if !slots.is_empty() {
            self.effects.push(Effect::Send { to: from, message: Message::AntiEntropyDigests { slots } });
        }
    }

    /// Step 4: send our containers of the keys that differ, and ask for theirs.
    fn handle_anti_entropy_digests(&mut self, from: NodeId, slots: Vec<(Slot, Vec<(Bytes, u64)>)>, store: &impl Store) {
        let mut values = Vec::new();
        let mut want = Vec::new();
        let empty = SlotDigests::new();
        for (slot, keys) in slots.into_iter().take(self.config.anti_entropy_slots_max) {
            if !self.shares_slot(from, slot) {
                continue;
            }
            let mut theirs = SlotDigests::new();
            for (key, digest) in keys {
                if Slot::of_key(&key) == slot {
                    theirs.insert(key, digest);
                }
            }
            let ours = self.index.get(&slot).unwrap_or(&empty);
            for key in ours.diff(&theirs) {
                if theirs.get(&key).is_some() {
                    want.push(key.clone());
                }
                if let Some(value) = store.get(&key) {
                    values.push((key, value));
                }
            }
        }
        if !values.is_empty() || !want.is_empty() {
            self.stats.anti_entropy_keys_sent += values.len() as u64;
            self.effects.push(Effect::Send { to: from, message: Message::AntiEntropyKeys { values, want } });
        }
    }

    fn offer_hints(&mut self) {
        for (&home, hints) in &self.hints {
            if self.down.contains(&home) {
                continue;
            }
            for (key, value) in hints.iter().take(self.config.handoff_batch_max) {
                let message = Message::Handoff { key: key.clone(), value: value.clone() };
                self.effects.push(Effect::Send { to: home, message });
            }
        }
    }

    /// A request's quorum, or the configured one. A request may ask for fewer replicas than the
    /// configured `n` (a subset of the home replicas; anti-entropy brings the rest along), never for
    /// more (see [`RequestError::NAboveConfigured`]).
    fn request_quorum(&self, quorum: Option<Quorum>) -> Result<Quorum, RequestError> {
        let configured = self.config.quorum.n;
        match quorum {
            None => Ok(self.config.quorum),
            Some(quorum) if quorum.n > configured => {
                Err(RequestError::NAboveConfigured { requested: quorum.n, configured })
            }
            Some(quorum) => Ok(quorum),
        }
    }

    fn targets_for(&self, key: &[u8], quorum: Quorum) -> Vec<Target> {
        let slot = Slot::of_key(key);
        targets(&self.members, slot, usize::from(quorum.n), |node| self.down.contains(&node), self.config.sloppy_quorum)
    }

    /// This node's copy of `key`: its own, or the hint it holds for `hint_for`.
    fn local_copy(&self, key: &[u8], hint_for: Option<NodeId>, store: &impl Store) -> Option<VersionedValue> {
        match hint_for {
            Some(home) if home != self.config.node_id => {
                self.hints.get(&home).and_then(|hints| hints.get(key)).cloned()
            }
            _ => store.get(key),
        }
    }

    /// Merges a container received from a peer into the local store (or the hints for `hint_for`).
    /// Returns whether it is now held (a full hint store refuses).
    fn merge_into(
        &mut self,
        key: &Bytes,
        value: &VersionedValue,
        hint_for: Option<NodeId>,
        store: &mut impl Store,
    ) -> bool {
        match hint_for {
            Some(home) if home != self.config.node_id => {
                let held = self.hints.get(&home).and_then(|hints| hints.get(key)).is_some();
                if !held && self.hint_count >= self.config.hints_max {
                    return false;
                }
                let mut merged = self.hints.get(&home).and_then(|hints| hints.get(key)).cloned().unwrap_or_default();
                merged.merge(value);
                self.settle(&mut merged);
                if self.config.track_hint_changes {
                    let change = HintChange::Held { home, key: key.clone(), value: merged.clone() };
                    self.hint_changes.push(change);
                }
                self.hints.entry(home).or_default().insert(key.clone(), merged);
                if !held {
                    self.hint_count += 1;
                    self.stats.hints_stored += 1;
                }
                true
            }
            _ => {
                let mut merged = store.get(key).unwrap_or_default();
                if !merged.includes(value) {
                    if self.config.planted_bug == Some(PlantedBug::MergeDropsIncomingSibling) {
                        merged = merge_dropping_incoming(&merged, value);
                    } else {
                        merged.merge(value);
                    }
                    self.settle(&mut merged);
                    self.store_put(store, key.clone(), merged);
                }
                true
            }
        }
    }

    /// Answers a read once `r` replies are in; finishes it once every target replied.
    fn progress_read(&mut self, op: u64, store: &mut impl Store) {
        let Some(pending) = self.reads.get_mut(&op) else { return };
        if !pending.answered && pending.replies.len() >= pending.r {
            pending.answered = true;
            let request = pending.request;
            let mut merged = merged_replies(pending.replies.values());
            settle(self.config.resolution, &mut merged);
            let read = merged.read();
            let reply =
                ClientReply::Read { values: read.values, chosen: merged.chosen(), context: read.context.clone() };
            self.effects.push(Effect::Reply { request, reply });
        }
        let complete = self.reads.get(&op).is_some_and(|pending| pending.replies.len() == pending.targets.len());
        if complete {
            self.finish_read(op, store);
        }
    }

    /// Ends a read: fails it if it never reached `r`, repairs every target that replied with less
    /// than the merge of all replies, and collects a tombstone every home replica holds.
    fn finish_read(&mut self, op: u64, store: &mut impl Store) {
        let Some(pending) = self.reads.remove(&op) else { return };
        if !pending.answered {
            let error = RequestError::Timeout { answered: pending.replies.len(), needed: pending.r };
            self.fail(pending.request, error);
        }
        if pending.replies.is_empty() {
            return;
        }
        let mut merged = merged_replies(pending.replies.values());
        self.settle(&mut merged);
        let me = self.config.node_id;
        for target in &pending.targets {
            let Some(reply) = pending.replies.get(&target.node) else { continue };
            let stale = reply.as_ref().is_none_or(|held| !held.includes(&merged)) && !merged.is_empty();
            if !stale {
                continue;
            }
            self.stats.read_repairs += 1;
            if target.node == me {
                self.merge_into(&pending.key, &merged, target.hint_for, store);
            } else {
                let message =
                    Message::Repair { key: pending.key.clone(), value: merged.clone(), hint_for: target.hint_for };
                self.effects.push(Effect::Send { to: target.node, message });
            }
        }
        self.collect_tombstone(&pending, &merged, store);
    }

    /// Tombstone GC: only when every home replica (no fallback) replied with this same tombstone.
    fn collect_tombstone(&mut self, pending: &PendingRead, merged: &VersionedValue, store: &mut impl Store) {
        let all_home = pending.targets.len() == pending.home_count
            && pending.targets.iter().all(|target| target.hint_for.is_none())
            && pending.replies.len() == pending.home_count;
        let digest = merged.digest();
        let all_same = pending.replies.values().all(|reply| reply.as_ref().is_some_and(|held| held.digest() == digest));
        if !(all_home && all_same && merged.is_tombstone()) {
            return;
        }
        let me = self.config.node_id;
        for target in &pending.targets {
            if target.node == me {
                if store.get(&pending.key).is_some_and(|held| held.digest() == digest) {
                    self.stats.tombstones_purged += 1;
                    self.store_remove(store, &pending.key);
                }
            } else {
                let message = Message::Purge { key: pending.key.clone(), digest };
                self.effects.push(Effect::Send { to: target.node, message });
            }
        }
    }

    fn reply_written(&mut self, pending: &PendingWrite) {
        let (dot, context) = (pending.dot, pending.context.clone());
        let reply = match &pending.incremented {
            // Concurrent updates can push the joined value out of range; this copy's is in range.
            Some((value, counter)) => {
                ClientReply::Incremented { value: counter.value_i64().unwrap_or(*value), dot, context }
            }
            None => ClientReply::Written { dot, context },
        };
        self.effects.push(Effect::Reply { request: pending.request, reply });
    }

    fn fail(&mut self, request: RequestId, error: RequestError) {
        self.effects.push(Effect::Reply { request, reply: ClientReply::Failed(error) });
    }

    fn settle(&self, container: &mut VersionedValue) {
        settle(self.config.resolution, container);
    }

    /// Moves the clock past the latest write in a container received from a peer, so that a write
    /// this node coordinates next is later by HLC than what it has seen (a too-far-ahead clock is
    /// ignored: the data is kept, the clock is not dragged along).
    fn observe(&mut self, now: UnixMillis, value: &VersionedValue) {
        if let Some(latest) = value.siblings().iter().map(|sibling| sibling.hlc).max() {
            let _ignored = self.clock.observe(latest, now);
        }
    }

    fn in_flight(&self) -> usize {
        self.writes.len() + self.reads.len()
    }

    /// A request id never used before, by this process or an earlier one on this node: replies
    /// carry only the id, so a reply to a request from before a restart, delivered late, must not
    /// match a new request (the simulator found a read taking another key's container from a
    /// stale `GetReply` and read-repairing it into its own key). Ids start at the physical time
    /// packed like an HLC timestamp (`ms << 16`), so they grow across restarts as long as the
    /// clock does (the same assumption dots make).
    fn next_op(&mut self, now: UnixMillis) -> u64 {
        let op = self.next_op.max(now.0 << HlcTimestamp::LOGICAL_BITS);
        self.next_op = op + 1;
        op
    }
}

/// Whether `me` and `peer` are both home replicas of `slot` (by the default `n`).
fn shares_slot(members: &[NodeId], quorum: Quorum, me: NodeId, peer: NodeId, slot: Slot) -> bool {
    let home = preference_list(members, slot, usize::from(quorum.n));
    home.contains(&me) && home.contains(&peer)
}

fn settle(resolution: Resolution, container: &mut VersionedValue) {
    if resolution == Resolution::LastWriteWins {
        container.keep_lww_only();
    }
}

/// [`PlantedBug::MergeDropsIncomingSibling`]: the correct merge, minus the siblings only `other`
/// had when `held` has any (the contexts still join).
fn merge_dropping_incoming(held: &VersionedValue, other: &VersionedValue) -> VersionedValue {
    let merged = VersionedValue::merged(held, other);
    if held.siblings().is_empty() {
        return merged;
    }
    let kept = merged
        .siblings()
        .iter()
        .filter(|sibling| held.siblings().iter().any(|ours| ours.dot == sibling.dot))
        .cloned()
        .collect();
    VersionedValue::from_parts(merged.context().clone(), kept).unwrap_or(merged)
}

fn merged_replies<'a>(replies: impl Iterator<Item = &'a Option<VersionedValue>>) -> VersionedValue {
    let mut merged = VersionedValue::new();
    for reply in replies.flatten() {
        merged.merge(reply);
    }
    merged
}

#[cfg(test)]
mod tests;
