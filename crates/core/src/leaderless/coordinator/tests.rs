//! The coordinator fed by hand: one input, the exact effects out; and a small cluster of
//! coordinators whose messages are delivered (or dropped) by the test, for repair, sloppy quorum
//! and handoff.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use super::*;
use crate::leaderless::placement::ranked;
use crate::leaderless::version::{Fate, IncrementError};

const T0: UnixMillis = UnixMillis(1_000_000);

fn at(ms: u64) -> UnixMillis {
    UnixMillis(T0.0 + ms)
}

fn request(sequence: u64) -> RequestId {
    RequestId { connection: 1, sequence }
}

fn members() -> Vec<NodeId> {
    (1..=5).map(NodeId).collect()
}

fn key() -> Bytes {
    Bytes::from_static(b"user:42")
}

fn put(payload: Payload, context: &VersionVector, quorum: Option<Quorum>) -> Put {
    Put { key: key(), payload, context: context.clone(), quorum }
}

fn value(text: &str) -> Payload {
    Payload::Value(Bytes::copy_from_slice(text.as_bytes()))
}

/// The key's members by rank: the first three are its home replicas.
fn ranks() -> Vec<NodeId> {
    ranked(&members(), Slot::of_key(&key()))
}

fn coordinator(node: NodeId, configure: impl Fn(&mut CoordinatorConfig)) -> Coordinator {
    let mut config = CoordinatorConfig::new(node);
    configure(&mut config);
    Coordinator::new(config, members())
}

fn take(coordinator: &mut Coordinator) -> Vec<Effect> {
    coordinator.drain_effects().collect()
}

fn replies(effects: &[Effect]) -> Vec<(RequestId, ClientReply)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Reply { request, reply } => Some((*request, reply.clone())),
            Effect::Send { .. } => None,
        })
        .collect()
}

fn sends(effects: &[Effect]) -> Vec<(NodeId, Message)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, message } => Some((*to, message.clone())),
            Effect::Reply { .. } => None,
        })
        .collect()
}

// ---- one coordinator, fed by hand ------------------------------------------------------------

#[test]
fn a_write_goes_to_all_n_and_is_acknowledged_after_w() {
    // Dynamo 4.5: the coordinator stores the write locally and sends it to the other n-1 home
    // replicas; it answers once w (including itself) have it.
    let [home0, home1, home2] = [ranks()[0], ranks()[1], ranks()[2]];
    let mut node = coordinator(home0, |_| {});
    let mut store = MemoryStore::default();
    node.put(at(0), request(1), put(value("v1"), &VersionVector::new(), None), &mut store);
    let effects = take(&mut node);
    let stored = store.get(&key()).unwrap();
    let op = T0.0 << 16;
    assert_eq!(
        effects,
        [
            Effect::Send { to: home1, message: Message::Put { op, key: key(), value: stored.clone(), hint_for: None } },
            Effect::Send { to: home2, message: Message::Put { op, key: key(), value: stored.clone(), hint_for: None } },
        ],
        "no reply before a second replica acknowledges"
    );
    node.handle_message(at(1), home2, Message::PutAck { op, counter: None }, &mut store);
    let dot = stored.siblings()[0].dot;
    assert_eq!(
        take(&mut node),
        [Effect::Reply { request: request(1), reply: ClientReply::Written { dot, context: stored.context().clone() } }]
    );
    // A late ack changes nothing.
    node.handle_message(at(2), home1, Message::PutAck { op, counter: None }, &mut store);
    assert!(take(&mut node).is_empty());
}

#[test]
fn w_one_answers_at_once_and_quorum_is_settable_per_request() {
    let mut node = coordinator(ranks()[0], |_| {});
    let mut store = MemoryStore::default();
    let quorum = Quorum::new(3, 1, 1).unwrap();
    node.put(at(0), request(1), put(value("v"), &VersionVector::new(), Some(quorum)), &mut store);
    let effects = take(&mut node);
    assert_eq!(sends(&effects).len(), 2, "still sent to every replica");
    assert!(matches!(replies(&effects)[..], [(_, ClientReply::Written { .. })]));
    // n=1: only the first home replica is involved.
    let mut node = coordinator(ranks()[0], |_| {});
    let single = Some(Quorum::new(1, 1, 1).unwrap());
    node.put(at(0), request(2), put(value("v"), &VersionVector::new(), single), &mut store);
    let effects = take(&mut node);
    assert!(sends(&effects).is_empty());
    assert_eq!(replies(&effects).len(), 1);
}

#[test]
fn a_request_asking_for_more_replicas_than_configured_is_refused() {
    // The rank-4 node is outside every default preference list of the key: a write acknowledged
    // there alone (n = 4, w = 1) would never reach the home replicas, which anti-entropy and
    // default reads cover. Refused before anything is stored or sent, for reads too.
    let wide = Some(Quorum::new(4, 1, 1).unwrap());
    let refusal = RequestError::NAboveConfigured { requested: 4, configured: 3 };
    for node_id in [ranks()[0], ranks()[3]] {
        let mut node = coordinator(node_id, |_| {});
        let mut store = MemoryStore::default();
        node.put(at(0), request(1), put(value("v"), &VersionVector::new(), wide), &mut store);
        node.increment(at(0), request(2), key(), 1, wide, &mut store);
        node.get(at(0), request(3), key(), wide, &mut store);
        assert_eq!(
            take(&mut node),
            [1, 2, 3].map(|sequence| Effect::Reply {
                request: request(sequence),
                reply: ClientReply::Failed(refusal.clone())
            })
        );
        assert!(store.keys.is_empty(), "a refused write is stored nowhere");
    }
    assert_eq!(refusal.to_string(), "n=4 is above the configured n=3: a key has only 3 home replicas");
    // Up to the configured n is fine.
    let mut node = coordinator(ranks()[0], |_| {});
    let mut store = MemoryStore::default();
    node.put(
        at(0),
        request(1),
        put(value("v"), &VersionVector::new(), Some(Quorum::new(3, 1, 1).unwrap())),
        &mut store,
    );
    assert!(matches!(replies(&take(&mut node))[..], [(_, ClientReply::Written { .. })]));
}

#[test]
fn a_write_sent_to_a_node_outside_the_preference_list_is_forwarded() {
    let mut node = coordinator(ranks()[4], |_| {});
    let mut store = MemoryStore::default();
    node.put(at(0), request(1), put(value("v"), &VersionVector::new(), None), &mut store);
    let forward = RequestError::NotAHomeReplica { forward_to: Some(ranks()[0]) };
    assert_eq!(take(&mut node), [Effect::Reply { request: request(1), reply: ClientReply::Failed(forward) }]);
    assert!(store.keys.is_empty());
    // The first home replica that is up is named.
    node.set_down(ranks()[0], true);
    node.put(at(0), request(2), put(value("v"), &VersionVector::new(), None), &mut store);
    let forward = RequestError::NotAHomeReplica { forward_to: Some(ranks()[1]) };
    assert_eq!(take(&mut node), [Effect::Reply { request: request(2), reply: ClientReply::Failed(forward) }]);
}

#[test]
fn a_write_without_enough_replicas_fails_at_once_without_sloppy_quorum() {
    let mut node = coordinator(ranks()[0], |config| config.sloppy_quorum = false);
    node.set_down(ranks()[1], true);
    node.set_down(ranks()[2], true);
    let mut store = MemoryStore::default();
    node.put(at(0), request(1), put(value("v"), &VersionVector::new(), None), &mut store);
    assert_eq!(
        take(&mut node),
        [Effect::Reply {
            request: request(1),
            reply: ClientReply::Failed(RequestError::Unavailable { reachable: 1, needed: 2 })
        }]
    );
    assert!(store.keys.is_empty(), "a refused write is stored nowhere");
}

#[test]
fn unanswered_requests_time_out() {
    let mut node = coordinator(ranks()[0], |config| config.request_timeout_ms = 500);
    let mut store = MemoryStore::default();
    node.put(at(0), request(1), put(value("v"), &VersionVector::new(), None), &mut store);
    node.get(at(0), request(2), key(), None, &mut store);
    take(&mut node);
    node.tick(at(499), &mut store);
    assert!(replies(&take(&mut node)).is_empty());
    node.tick(at(500), &mut store);
    let effects = take(&mut node);
    assert_eq!(
        replies(&effects),
        [
            (request(1), ClientReply::Failed(RequestError::Timeout { answered: 1, needed: 2 })),
            (request(2), ClientReply::Failed(RequestError::Timeout { answered: 1, needed: 2 }))
        ]
    );
}

#[test]
fn too_many_requests_in_flight_are_refused() {
    let mut node = coordinator(ranks()[0], |config| config.requests_in_flight_max = 1);
    let mut store = MemoryStore::default();
    node.get(at(0), request(1), key(), None, &mut store);
    node.get(at(0), request(2), key(), None, &mut store);
    let effects = take(&mut node);
    assert_eq!(replies(&effects), [(request(2), ClientReply::Failed(RequestError::Busy))]);
}

#[test]
fn a_replica_merges_a_put_and_acks_and_answers_gets_from_its_store() {
    let mut replica = coordinator(ranks()[1], |_| {});
    let mut store = MemoryStore::default();
    let mut container = VersionedValue::new();
    let hlc = crate::leaderless::clock::HlcTimestamp { wall_ms: T0.0, logical: 0, node: ranks()[0] };
    container.write(ranks()[0], &VersionVector::new(), value("v"), hlc, 100).unwrap();
    let put = Message::Put { op: 7, key: key(), value: container.clone(), hint_for: None };
    replica.handle_message(at(0), ranks()[0], put.clone(), &mut store);
    assert_eq!(
        take(&mut replica),
        [Effect::Send { to: ranks()[0], message: Message::PutAck { op: 7, counter: None } }]
    );
    // A duplicate is harmless: same state, acked again.
    replica.handle_message(at(0), ranks()[0], put, &mut store);
    assert_eq!(take(&mut replica).len(), 1);
    assert_eq!(store.get(&key()), Some(container.clone()));
    replica.handle_message(at(0), ranks()[3], Message::Get { op: 3, key: key(), hint_for: None }, &mut store);
    assert_eq!(
        take(&mut replica),
        [Effect::Send { to: ranks()[3], message: Message::GetReply { op: 3, value: Some(container) } }]
    );
}

// ---- a cluster with hand-delivered messages --------------------------------------------------

struct Cluster {
    nodes: BTreeMap<NodeId, (Coordinator, MemoryStore)>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    replies: Vec<(NodeId, RequestId, ClientReply)>,
    now: UnixMillis,
    sequence: u64,
}

impl Cluster {
    fn new(configure: impl Fn(&mut CoordinatorConfig)) -> Cluster {
        let nodes =
            members().into_iter().map(|id| (id, (coordinator(id, &configure), MemoryStore::default()))).collect();
        Cluster { nodes, queue: VecDeque::new(), replies: Vec::new(), now: T0, sequence: 0 }
    }

    fn collect(&mut self, id: NodeId) {
        let (node, _) = self.nodes.get_mut(&id).unwrap();
        for effect in node.drain_effects() {
            match effect {
                Effect::Send { to, message } => self.queue.push_back((id, to, message)),
                Effect::Reply { request, reply } => self.replies.push((id, request, reply)),
            }
        }
    }

    fn next_request(&mut self) -> RequestId {
        self.sequence += 1;
        self.now = UnixMillis(self.now.0 + 1);
        request(self.sequence)
    }

    /// A client write through `via`, forwarded to a home replica as the driver would if `via` is
    /// not one.
    fn put(&mut self, via: NodeId, payload: Payload, context: &VersionVector) -> RequestId {
        let request = self.next_request();
        let now = self.now;
        let (node, store) = self.nodes.get_mut(&via).unwrap();
        node.put(now, request, put(payload.clone(), context, None), store);
        self.collect(via);
        let forward = self.replies.iter().position(|(_, id, reply)| {
            *id == request
                && matches!(reply, ClientReply::Failed(RequestError::NotAHomeReplica { forward_to: Some(_) }))
        });
        if let Some(at) = forward {
            let (_, _, reply) = self.replies.remove(at);
            let ClientReply::Failed(RequestError::NotAHomeReplica { forward_to: Some(home) }) = reply else {
                unreachable!()
            };
            let (node, store) = self.nodes.get_mut(&home).unwrap();
            node.put(now, request, put(payload, context, None), store);
            self.collect(home);
        }
        request
    }

    fn get(&mut self, via: NodeId, quorum: Option<Quorum>) -> RequestId {
        let request = self.next_request();
        let now = self.now;
        let (node, store) = self.nodes.get_mut(&via).unwrap();
        node.get(now, request, key(), quorum, store);
        self.collect(via);
        request
    }

    /// Delivers queued messages (and those they cause) until none is left, dropping any for which
    /// `drop` says so.
    fn deliver(&mut self, drop: impl Fn(NodeId, NodeId, &Message) -> bool) {
        while let Some((from, to, message)) = self.queue.pop_front() {
            if drop(from, to, &message) {
                continue;
            }
            let now = self.now;
            let (node, store) = self.nodes.get_mut(&to).unwrap();
            node.handle_message(now, from, message, store);
            self.collect(to);
        }
    }

    fn deliver_all(&mut self) {
        self.deliver(|_, _, _| false);
    }

    fn tick(&mut self, id: NodeId, ms: u64) {
        self.now = UnixMillis(self.now.0 + ms);
        let now = self.now;
        let (node, store) = self.nodes.get_mut(&id).unwrap();
        node.tick(now, store);
        self.collect(id);
    }

    fn reply(&self, request: RequestId) -> ClientReply {
        self.replies.iter().find(|(_, id, _)| *id == request).map(|(_, _, reply)| reply.clone()).unwrap()
    }

    fn read(&self, request: RequestId) -> (Vec<Bytes>, Option<Bytes>, VersionVector) {
        match self.reply(request) {
            ClientReply::Read { values, chosen, context } => (values, chosen, context),
            other => panic!("not a read reply: {other:?}"),
        }
    }

    fn written(&self, request: RequestId) -> Dot {
        match self.reply(request) {
            ClientReply::Written { dot, .. } => dot,
            other => panic!("not a write reply: {other:?}"),
        }
    }

    fn stored(&self, id: NodeId) -> Option<VersionedValue> {
        self.nodes[&id].1.get(&key())
    }

    fn set_down(&mut self, id: NodeId, down: bool) {
        for (&other, (node, _)) in &mut self.nodes {
            if other != id {
                node.set_down(id, down);
            }
        }
    }
}

fn values(texts: &[&str]) -> Vec<Bytes> {
    texts.iter().map(|text| Bytes::copy_from_slice(text.as_bytes())).collect()
}

#[test]
fn concurrent_writes_become_siblings_and_a_write_with_the_context_resolves_them() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    let a = cluster.put(ranks[0], value("a"), &VersionVector::new());
    let b = cluster.put(ranks[1], value("b"), &VersionVector::new());
    cluster.deliver_all();
    let (a, b) = (cluster.written(a), cluster.written(b));
    let read = cluster.get(ranks[2], None);
    cluster.deliver_all();
    let (found, chosen, context) = cluster.read(read);
    assert_eq!(found, values(&["b", "a"]), "latest first");
    assert_eq!(chosen, Some(Bytes::from_static(b"b")));
    let resolve = cluster.put(ranks[4], value("a+b"), &context);
    cluster.deliver_all();
    let resolved = cluster.written(resolve);
    for home in &ranks[..3] {
        let stored = cluster.stored(*home).unwrap();
        assert_eq!(stored.fate(a), Fate::Superseded);
        assert_eq!(stored.fate(b), Fate::Superseded);
        assert_eq!(stored.fate(resolved), Fate::Present);
    }
    let read = cluster.get(ranks[3], None);
    cluster.deliver_all();
    assert_eq!(cluster.read(read).0, values(&["a+b"]));
}

#[test]
fn read_repair_brings_a_stale_replica_up_to_date() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    let stale = ranks[2];
    let first = cluster.put(ranks[0], value("old"), &VersionVector::new());
    cluster.deliver_all();
    let old_context = match cluster.reply(first) {
        ClientReply::Written { context, .. } => context,
        other => panic!("{other:?}"),
    };
    // The overwrite never reaches the third replica.
    cluster.put(ranks[0], value("new"), &old_context);
    cluster.deliver(|_, to, message| to == stale && matches!(message, Message::Put { .. }));
    assert_eq!(cluster.read_values_at(stale), values(&["old"]));
    // A read through the stale replica with r=2 sees both; the stale one gets repaired.
    let read = cluster.get(stale, None);
    cluster.deliver_all();
    assert_eq!(cluster.read(read).0, values(&["new"]));
    assert_eq!(cluster.read_values_at(stale), values(&["new"]));
    assert_eq!(cluster.stored(stale), cluster.stored(ranks[0]));
}

impl Cluster {
    fn read_values_at(&self, id: NodeId) -> Vec<Bytes> {
        let stored = self.stored(id).unwrap_or_default();
        stored.read().values
    }
}

#[test]
fn read_repair_sends_only_to_replicas_that_lack_something() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    cluster.put(ranks[0], value("v"), &VersionVector::new());
    cluster.deliver(|_, to, message| to == ranks[1] && matches!(message, Message::Put { .. }));
    let read = cluster.get(ranks[3], None);
    let mut repairs = Vec::new();
    while let Some((from, to, message)) = cluster.queue.pop_front() {
        if let Message::Repair { .. } = message {
            repairs.push(to);
        }
        let now = cluster.now;
        let (node, store) = cluster.nodes.get_mut(&to).unwrap();
        node.handle_message(now, from, message, store);
        cluster.collect(to);
    }
    assert_eq!(repairs, [ranks[1]]);
    assert_eq!(cluster.read(read).0, values(&["v"]));
}

#[test]
fn sloppy_quorum_keeps_writes_available_and_hints_are_handed_off() {
    // Dynamo 4.6: a home replica is down; the next node takes the write with a hint and returns it
    // once the home replica is back.
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    let (down, fallback) = (ranks[1], ranks[3]);
    cluster.set_down(down, true);
    let write = cluster.put(ranks[0], value("v"), &VersionVector::new());
    cluster.deliver(|_, to, _| to == down);
    let dot = cluster.written(write);
    assert_eq!(cluster.stored(fallback), None, "a hint is not part of the fallback's own data");
    assert_eq!(cluster.nodes[&fallback].0.hint_count(), 1);
    // Reads while it is down also go to the fallback, which answers from its hints.
    let read = cluster.get(ranks[2], Some(Quorum::new(3, 2, 3).unwrap()));
    cluster.deliver(|_, to, _| to == down);
    assert_eq!(cluster.read(read).0, values(&["v"]));
    // Still down: nothing is handed off.
    cluster.tick(fallback, 1000);
    assert!(cluster.queue.is_empty());
    cluster.set_down(down, false);
    cluster.tick(fallback, 1000);
    cluster.deliver_all();
    assert_eq!(cluster.stored(down).unwrap().fate(dot), Fate::Present);
    assert_eq!(cluster.nodes[&fallback].0.hint_count(), 0, "acknowledged hints are dropped");
}

#[test]
fn tracked_hint_changes_rebuild_the_hints_after_a_restart() {
    let mut cluster = Cluster::new(|config| config.track_hint_changes = true);
    let ranks = ranks();
    let (down, fallback) = (ranks[1], ranks[3]);
    cluster.set_down(down, true);
    cluster.put(ranks[0], value("v"), &VersionVector::new());
    cluster.deliver(|_, to, _| to == down);
    let changes: Vec<HintChange> = cluster.nodes.get_mut(&fallback).unwrap().0.drain_hint_changes().collect();
    let [HintChange::Held { home, key: held_key, value: held }] = &changes[..] else {
        panic!("one hint held: {changes:?}")
    };
    assert_eq!((*home, held_key), (down, &key()));
    // A restarted fallback that replays its hints hands them off like before.
    let mut restarted = coordinator(fallback, |config| config.track_hint_changes = true);
    restarted.load_hint(T0, *home, held_key.clone(), held.clone());
    assert_eq!(restarted.hint_count(), 1);
    cluster.nodes.get_mut(&fallback).unwrap().0 = restarted;
    cluster.set_down(down, false);
    cluster.tick(fallback, 1000);
    cluster.deliver_all();
    assert!(cluster.stored(down).is_some());
    let fallback_node = &mut cluster.nodes.get_mut(&fallback).unwrap().0;
    assert_eq!(fallback_node.hint_count(), 0);
    let changes: Vec<HintChange> = fallback_node.drain_hint_changes().collect();
    assert_eq!(changes, vec![HintChange::Dropped { home: down, key: key() }]);
}

#[test]
fn a_hint_that_changed_during_handoff_is_kept() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    let (down, fallback) = (ranks[1], ranks[3]);
    cluster.set_down(down, true);
    cluster.put(ranks[0], value("a"), &VersionVector::new());
    cluster.deliver(|_, to, _| to == down);
    cluster.set_down(down, false);
    cluster.tick(fallback, 1000);
    let handoff = cluster.queue.pop_front().unwrap();
    assert!(matches!(handoff.2, Message::Handoff { .. }));
    // Before the ack arrives, another write lands in the hint.
    cluster.set_down(down, true);
    cluster.put(ranks[0], value("b"), &VersionVector::new());
    cluster.deliver(|_, to, _| to == down);
    cluster.queue.push_back(handoff);
    cluster.deliver_all();
    assert_eq!(cluster.nodes[&fallback].0.hint_count(), 1, "the newer hint still has to be handed off");
}

#[test]
fn last_write_wins_keeps_one_value() {
    let mut cluster = Cluster::new(|config| config.resolution = Resolution::LastWriteWins);
    let ranks = ranks();
    cluster.put(ranks[0], value("a"), &VersionVector::new());
    cluster.put(ranks[1], value("b"), &VersionVector::new());
    cluster.deliver_all();
    let read = cluster.get(ranks[2], None);
    cluster.deliver_all();
    assert_eq!(cluster.read(read).0, values(&["b"]), "b was taken later by HLC");
    for home in &ranks[..3] {
        assert_eq!(cluster.stored(*home).unwrap().siblings().len(), 1);
    }
}

#[test]
fn a_tombstone_every_home_replica_holds_is_collected_on_read() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    let write = cluster.put(ranks[0], value("v"), &VersionVector::new());
    cluster.deliver_all();
    let context = match cluster.reply(write) {
        ClientReply::Written { context, .. } => context,
        other => panic!("{other:?}"),
    };
    cluster.put(ranks[0], Payload::Tombstone, &context);
    cluster.deliver_all();
    for home in &ranks[..3] {
        assert!(cluster.stored(*home).unwrap().is_tombstone());
    }
    let read = cluster.get(ranks[0], Some(Quorum::new(3, 2, 2).unwrap()));
    cluster.deliver_all();
    assert_eq!(cluster.read(read).0, Vec::<Bytes>::new());
    for home in &ranks[..3] {
        assert_eq!(cluster.stored(*home), None, "collected everywhere");
    }
}

#[test]
fn a_tombstone_is_not_collected_while_a_home_replica_is_down() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    cluster.put(ranks[0], Payload::Tombstone, &VersionVector::new());
    cluster.deliver_all();
    cluster.set_down(ranks[2], true);
    cluster.get(ranks[0], None);
    cluster.deliver(|_, to, _| to == ranks[2]);
    assert!(cluster.stored(ranks[0]).unwrap().is_tombstone(), "a fallback answered: no purge");
}

#[test]
fn a_fallback_coordinates_reads_from_its_hints_but_forwards_writes() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    let (down, fallback) = (ranks[0], ranks[3]);
    cluster.set_down(down, true);
    let write = cluster.put(fallback, value("v"), &VersionVector::new());
    cluster.deliver(|_, to, _| to == down);
    let dot = cluster.written(write);
    assert_eq!(cluster.stored(fallback), None, "the fallback holds it as a hint only");
    assert_eq!(cluster.nodes[&fallback].0.hint_count(), 1);
    let read = cluster.get(fallback, Some(Quorum::new(3, 2, 3).unwrap()));
    cluster.deliver(|_, to, _| to == down);
    assert_eq!(cluster.read(read).0, values(&["v"]));
    cluster.set_down(down, false);
    cluster.tick(fallback, 1000);
    cluster.deliver_all();
    assert_eq!(cluster.stored(down).unwrap().fate(dot), Fate::Present);
    assert_eq!(cluster.nodes[&fallback].0.hint_count(), 0);
}

// ---- randomized runs: lossy network, failures, then healing --------------------------------

/// A seeded generator for the randomized runs (SplitMix64 steps).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        crate::leaderless::hash::mix64(self.0)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One seed: clients write (blind, or with a context read earlier) and read through random nodes
/// while the network drops, duplicates and reorders messages and nodes go down and up; then the
/// cluster heals (everyone up, hints handed off, every node reads with r = n). Afterwards every
/// home replica holds the same container, every acknowledged write is in it unless a client
/// replaced it knowingly, and nothing a client replaced has come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heal {
    /// Every node reads the key from all home replicas (read repair).
    ReadRepair,
    /// Only anti-entropy rounds (Merkle exchange between every pair of nodes).
    AntiEntropy,
}

fn randomized_run(seed: u64, resolution: Resolution, heal: Heal) {
    let mut rng = Rng(seed);
    let mut cluster = Cluster::new(|config| {
        config.resolution = resolution;
        config.request_timeout_ms = 50;
        config.anti_entropy_interval_ms = if heal == Heal::AntiEntropy { 10_000 } else { 1 << 40 };
    });
    let ranks = ranks();
    let mut acknowledged: Vec<(RequestId, Option<Dot>)> = Vec::new();
    let mut contexts: Vec<VersionVector> = vec![VersionVector::new()];
    let mut writes: Vec<(RequestId, VersionVector)> = Vec::new();
    let mut deletes: Vec<RequestId> = Vec::new();
    let mut reads = Vec::new();
    for step in 0..120 {
        let via = ranks[usize::try_from(rng.below(5)).unwrap()];
        match rng.below(10) {
            0..=4 => {
                let context = contexts[usize::try_from(rng.below(contexts.len() as u64)).unwrap()].clone();
                let payload = if rng.chance(10) { Payload::Tombstone } else { value(&format!("w{step}")) };
                let delete = payload == Payload::Tombstone;
                let request = cluster.put(via, payload, &context);
                if delete {
                    deletes.push(request);
                }
                acknowledged.push((request, None));
                writes.push((request, context));
            }
            5..=6 => reads.push(cluster.get(via, None)),
            7 => {
                let node = ranks[usize::try_from(rng.below(5)).unwrap()];
                let down = rng.chance(60);
                cluster.set_down(node, down);
            }
            _ => {
                let node = ranks[usize::try_from(rng.below(5)).unwrap()];
                cluster.tick(node, rng.below(40));
            }
        }
        // Deliver a random part of the queue, dropping, duplicating and reordering.
        let rounds = rng.below(cluster.queue.len() as u64 + 1);
        for _ in 0..rounds {
            let Some((from, to, message)) = cluster.queue.pop_front() else { break };
            match rng.below(10) {
                0 => {}
                1 => cluster.queue.push_back((from, to, message)),
                2 => {
                    cluster.queue.push_back((from, to, message.clone()));
                    cluster.queue.push_back((from, to, message));
                }
                _ => {
                    let now = cluster.now;
                    let (node, store) = cluster.nodes.get_mut(&to).unwrap();
                    node.handle_message(now, from, message, store);
                    cluster.collect(to);
                }
            }
        }
        // Clients remember the contexts of the reads that were answered, to write with later.
        for (_, request, reply) in &cluster.replies {
            if let ClientReply::Read { context, .. } = reply
                && reads.contains(request)
            {
                contexts.push(context.clone());
            }
        }
        reads.retain(|request| !cluster.replies.iter().any(|(_, id, _)| id == request));
    }
    // Heal: everyone up, every message delivered, time passes so hints are handed off and requests
    // time out, then read repair or anti-entropy.
    for node in &ranks {
        cluster.set_down(*node, false);
    }
    for _ in 0..3 {
        cluster.deliver_all();
        for node in ranks.clone() {
            cluster.tick(node, 1000);
        }
        cluster.deliver_all();
    }
    match heal {
        Heal::ReadRepair => {
            for node in ranks.clone() {
                cluster.get(node, Some(Quorum::new(3, 3, 3).unwrap()));
                cluster.deliver_all();
            }
        }
        Heal::AntiEntropy => {
            // Each node talks to its four peers in turn, one every 10 s.
            for _ in 0..5 {
                for node in ranks.clone() {
                    cluster.tick(node, 10_000);
                }
                cluster.deliver_all();
            }
        }
    }
    for (request, dot) in &mut acknowledged {
        if let Some((_, _, ClientReply::Written { dot: written, .. })) =
            cluster.replies.iter().find(|(_, id, _)| id == request)
        {
            *dot = Some(*written);
        }
    }
    // What clients replaced: the contexts of every write that reached a store (all but those
    // refused up front; a timed-out write may well be stored).
    let mut replaced = VersionVector::new();
    for (request, context) in &writes {
        let refused = cluster.replies.iter().any(|(_, id, reply)| {
            id == request
                && matches!(
                    reply,
                    ClientReply::Failed(
                        RequestError::Unavailable { .. }
                            | RequestError::NotAHomeReplica { .. }
                            | RequestError::Busy
                            | RequestError::TooManySiblings(_)
                    )
                )
        });
        if !refused {
            replaced.merge(context);
        }
    }
    let homes: Vec<Option<VersionedValue>> = ranks[..3].iter().map(|node| cluster.stored(*node)).collect();
    assert!(homes.windows(2).all(|pair| pair[0] == pair[1]), "seed {seed}: home replicas differ: {homes:#?}");
    let written: Vec<(Dot, bool)> =
        acknowledged.iter().filter_map(|(request, dot)| dot.map(|dot| (dot, deletes.contains(request)))).collect();
    let Some(converged) = homes[0].clone() else {
        // Collected as a tombstone: every acknowledged write was replaced, or was a delete (under
        // LWW, a later delete may also have discarded concurrent writes, by design).
        for (dot, delete) in written.iter().filter(|_| resolution == Resolution::Siblings) {
            assert!(*delete || replaced.contains(*dot), "seed {seed}: write {dot} lost with a collected tombstone");
        }
        return;
    };
    for dot in acknowledged.iter().filter_map(|(_, dot)| *dot) {
        let fate = converged.fate(dot);
        match resolution {
            Resolution::Siblings => {
                let expected = if replaced.contains(dot) { Fate::Superseded } else { Fate::Present };
                assert_eq!(fate, expected, "seed {seed}: acknowledged write {dot}");
            }
            // LWW discards concurrent writes on purpose; what is never allowed is forgetting one.
            Resolution::LastWriteWins => assert_ne!(fate, Fate::Unseen, "seed {seed}: write {dot} forgotten"),
        }
    }
}

#[test]
fn randomized_runs_converge_without_losing_acknowledged_writes() {
    for seed in 0..200 {
        randomized_run(seed, Resolution::Siblings, Heal::ReadRepair);
    }
}

#[test]
fn randomized_runs_converge_under_last_write_wins() {
    for seed in 1000..1100 {
        randomized_run(seed, Resolution::LastWriteWins, Heal::ReadRepair);
    }
}

#[test]
fn randomized_runs_converge_by_anti_entropy_alone() {
    for seed in 2000..2060 {
        randomized_run(seed, Resolution::Siblings, Heal::AntiEntropy);
    }
}

// ---- anti-entropy ----------------------------------------------------------------------------

/// Two of five members, and `count` keys whose home replicas include both.
fn shared_keys(a: NodeId, b: NodeId, count: usize) -> Vec<Bytes> {
    (0..)
        .map(|at| Bytes::from(format!("key:{at}")))
        .filter(|key| {
            let home = preference_list(&members(), Slot::of_key(key), 3);
            home.contains(&a) && home.contains(&b)
        })
        .take(count)
        .collect()
}

/// Runs messages between `a` and `b` until none is left (others are dropped); returns how many
/// containers anti-entropy streamed and the kinds of message sent.
fn exchange(
    nodes: &mut BTreeMap<NodeId, (Coordinator, MemoryStore)>,
    first: Vec<(NodeId, NodeId, Message)>,
) -> (usize, Vec<&'static str>) {
    let mut queue: VecDeque<(NodeId, NodeId, Message)> = first.into();
    let mut streamed = 0;
    let mut kinds = Vec::new();
    while let Some((from, to, message)) = queue.pop_front() {
        let Some((node, store)) = nodes.get_mut(&to) else { continue };
        kinds.push(match &message {
            Message::AntiEntropyTree { .. } => "tree",
            Message::AntiEntropyLeaves { .. } => "leaves",
            Message::AntiEntropyDigests { .. } => "digests",
            Message::AntiEntropyKeys { values, .. } => {
                streamed += values.len();
                "keys"
            }
            _ => "other",
        });
        node.handle_message(T0, from, message, store);
        for effect in node.drain_effects() {
            if let Effect::Send { to: next, message } = effect {
                queue.push_back((to, next, message));
            }
        }
    }
    (streamed, kinds)
}

#[test]
fn anti_entropy_streams_only_the_keys_that_differ() {
    let (a, b) = (NodeId(1), NodeId(2));
    let mut nodes: BTreeMap<NodeId, (Coordinator, MemoryStore)> =
        [a, b].into_iter().map(|id| (id, (coordinator(id, |_| {}), MemoryStore::default()))).collect();
    let keys = shared_keys(a, b, 300);
    let hlc = |at: u64, node: NodeId| crate::leaderless::clock::HlcTimestamp { wall_ms: T0.0 + at, logical: 0, node };
    // Both hold the same 300 keys, except: 3 keys only on a, 1 key only on b, 2 keys with a newer
    // write on a than on b.
    let mut store_on = |node: NodeId, key: &Bytes, container: &VersionedValue| {
        let (coordinator, store) = nodes.get_mut(&node).unwrap();
        let put = Message::Put { op: 1, key: key.clone(), value: container.clone(), hint_for: None };
        coordinator.handle_message(T0, NodeId(3), put, store);
        coordinator.drain_effects().for_each(drop);
    };
    for (at, key) in keys.iter().enumerate() {
        let mut container = VersionedValue::new();
        container.write(a, &VersionVector::new(), value("v"), hlc(at as u64, a), 100).unwrap();
        if !(5..8).contains(&at) {
            store_on(b, key, &container);
        }
        if at == 10 || at == 20 {
            let context = container.context().clone();
            container.write(a, &context, value("v2"), hlc(1000 + at as u64, a), 100).unwrap();
        }
        if at != 299 {
            store_on(a, key, &container);
        }
    }
    // a starts a round with its first peer, b.
    let (node_a, store_a) = nodes.get_mut(&a).unwrap();
    node_a.tick(T0, store_a);
    node_a.tick(at(10_000), store_a);
    let first: Vec<(NodeId, NodeId, Message)> = node_a
        .drain_effects()
        .filter_map(|effect| match effect {
            Effect::Send { to, message } => Some((a, to, message)),
            _ => None,
        })
        .collect();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, b);
    let (streamed, kinds) = exchange(&mut nodes, first);
    assert_eq!(kinds, ["tree", "leaves", "digests", "keys", "keys"]);
    // 3 + 1 + 2 keys differ; b sends its 1 + 2, a sends its 3 + 2.
    assert_eq!(streamed, 8);
    for key in &keys {
        assert_eq!(nodes[&a].1.get(key), nodes[&b].1.get(key), "{key:?}");
    }
    assert_eq!(nodes[&a].1.keys.len(), 300);
    // A second round finds nothing to do: one message, the tree.
    let (node_a, store_a) = nodes.get_mut(&a).unwrap();
    node_a.tick(at(20_000), store_a);
    let again: Vec<(NodeId, NodeId, Message)> = node_a
        .drain_effects()
        .filter_map(|effect| match effect {
            Effect::Send { to, message } => Some((a, to, message)),
            _ => None,
        })
        .collect();
    // Round robin: this round goes to the next peer (node 3, not simulated); ask b directly.
    assert_eq!(again[0].1, NodeId(3));
    let tree = nodes.get_mut(&a).unwrap().0.shared_tree(b).clone();
    let message = Message::AntiEntropyTree { root: tree.root(), hashes: tree.level(1).to_vec() };
    let (streamed, kinds) = exchange(&mut nodes, vec![(a, b, message)]);
    assert_eq!((streamed, kinds), (0, vec!["tree"]));
}

#[test]
fn per_slot_digests_list_the_slots_held_and_differ_exactly_where_the_data_does() {
    let (a, b) = (NodeId(1), NodeId(2));
    let keys = shared_keys(a, b, 3);
    let mut node_a = coordinator(a, |_| {});
    let mut node_b = coordinator(b, |_| {});
    let (mut store_a, mut store_b) = (MemoryStore::default(), MemoryStore::default());
    assert!(node_a.slot_digests(None).is_empty());
    for (index, key) in keys.iter().enumerate() {
        let mut value = VersionedValue::new();
        let hlc = Hlc::new(a).now(at(0));
        value.write(a, &VersionVector::new(), value_payload(index), hlc, 10).unwrap();
        for (node, store) in [(&mut node_a, &mut store_a), (&mut node_b, &mut store_b)] {
            node.store_put(store, key.clone(), value.clone());
        }
    }
    let digests_a = node_a.slot_digests(Some(b));
    assert_eq!(digests_a, node_b.slot_digests(Some(a)), "same data, same digests");
    let mut slots: Vec<Slot> = keys.iter().map(|key| Slot::of_key(key)).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(digests_a.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(), slots, "every slot held, in order");
    assert!(digests_a.iter().all(|(slot, digest)| *digest == node_a.merkle_tree().level(0)[usize::from(slot.0)]));
    // One key changes on b: exactly its slot's digest differs.
    let changed = keys[1].clone();
    let mut value = store_b.get(&changed).unwrap();
    value.write(b, &value.context().clone(), value_payload(99), Hlc::new(b).now(at(1)), 10).unwrap();
    node_b.store_put(&mut store_b, changed.clone(), value);
    let digests_b = node_b.slot_digests(Some(a));
    let differing: Vec<Slot> =
        digests_a.iter().zip(&digests_b).filter(|(ours, theirs)| ours != theirs).map(|(ours, _)| ours.0).collect();
    assert_eq!(differing, [Slot::of_key(&changed)]);
}

fn value_payload(index: usize) -> Payload {
    Payload::Value(Bytes::from(format!("v{index}")))
}

#[test]
fn the_merkle_index_follows_every_store_write() {
    // After writes, merges, repairs and a purge, the coordinator's tree equals one rebuilt from
    // its store.
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    // Build every per-peer tree up front, so that they too must follow the writes.
    for (id, (node, _)) in &mut cluster.nodes {
        for peer in members().into_iter().filter(|peer| peer != id) {
            node.shared_tree(peer);
        }
    }
    let write = cluster.put(ranks[0], value("a"), &VersionVector::new());
    cluster.deliver_all();
    cluster.put(ranks[1], value("b"), &VersionVector::new());
    cluster.deliver(|_, to, _| to == ranks[2]);
    cluster.get(ranks[2], None);
    cluster.deliver_all();
    let check = |cluster: &Cluster| {
        for (node, store) in cluster.nodes.values() {
            let mut rebuilt = MerkleTree::new(0..SLOT_COUNT);
            for (key, value) in &store.keys {
                rebuilt.update_key(Slot::of_key(key), key, None, Some(value.digest()));
            }
            assert_eq!(node.merkle_tree(), &rebuilt);
            for (peer, tree) in &node.peer_trees {
                let mut shared = MerkleTree::new(0..SLOT_COUNT);
                for (key, value) in &store.keys {
                    if node.shares_slot(*peer, Slot::of_key(key)) {
                        shared.update_key(Slot::of_key(key), key, None, Some(value.digest()));
                    }
                }
                assert_eq!(tree, &shared, "tree shared with {peer}");
            }
        }
    };
    check(&cluster);
    let context = match cluster.reply(write) {
        ClientReply::Written { context, .. } => context,
        other => panic!("{other:?}"),
    };
    drop(context);
    let read = cluster.get(ranks[0], None);
    cluster.deliver_all();
    let (_, _, context) = cluster.read(read);
    cluster.put(ranks[0], Payload::Tombstone, &context);
    cluster.deliver_all();
    cluster.get(ranks[0], None);
    cluster.deliver_all();
    assert!(cluster.nodes.values().all(|(_, store)| store.keys.is_empty()), "the tombstone was collected");
    check(&cluster);
}

// ---- counters ----------------------------------------------------------------------------------

impl Cluster {
    /// A client INCRBY through `via`, forwarded to a home replica as the driver would.
    fn increment(&mut self, via: NodeId, delta: i64) -> RequestId {
        let request = self.next_request();
        let now = self.now;
        let (node, store) = self.nodes.get_mut(&via).unwrap();
        node.increment(now, request, key(), delta, None, store);
        self.collect(via);
        let forward = self.replies.iter().position(|(_, id, reply)| {
            *id == request
                && matches!(reply, ClientReply::Failed(RequestError::NotAHomeReplica { forward_to: Some(_) }))
        });
        if let Some(at) = forward {
            let (_, _, reply) = self.replies.remove(at);
            let ClientReply::Failed(RequestError::NotAHomeReplica { forward_to: Some(home) }) = reply else {
                unreachable!()
            };
            let (node, store) = self.nodes.get_mut(&home).unwrap();
            node.increment(now, request, key(), delta, None, store);
            self.collect(home);
        }
        request
    }
}

#[test]
fn concurrent_increments_through_two_home_replicas_are_both_counted() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    let first = cluster.increment(ranks[0], 5);
    cluster.deliver_all();
    assert!(matches!(cluster.reply(first), ClientReply::Incremented { value: 5, .. }));
    // Two increments start before either has reached the other's coordinator. Each answer joins
    // the counters of the replicas that acknowledged it, which had the other one by then: both
    // answer 16 (concurrent increments may or may not be in each other's answers; both are in the
    // counter).
    let a = cluster.increment(ranks[0], 1);
    let b = cluster.increment(ranks[1], 10);
    cluster.deliver_all();
    assert!(matches!(cluster.reply(a), ClientReply::Incremented { value: 16, .. }));
    assert!(matches!(cluster.reply(b), ClientReply::Incremented { value: 16, .. }));
    let read = cluster.get(ranks[2], None);
    cluster.deliver_all();
    assert_eq!(cluster.read(read).1, Some(Bytes::from_static(b"16")));
    let next = cluster.increment(ranks[2], 1);
    cluster.deliver_all();
    assert!(matches!(cluster.reply(next), ClientReply::Incremented { value: 17, .. }));
}

/// The gap the acks close: an increment coordinated by a home replica that missed earlier
/// increments (acknowledged by the other two) still answers with them, because the replica that
/// acknowledges it sends back its counter, and with w = 2 of n = 3 that replica holds every earlier
/// acknowledged increment. With w = 1 nothing is joined, and the answer is the coordinator's copy.
#[test]
fn an_increment_answers_every_increment_acknowledged_before_it_through_other_nodes() {
    let ranks = ranks();
    let behind = ranks[2];
    for (quorum, expected) in [(None, 111), (Some(Quorum::new(3, 1, 2).unwrap()), 101)] {
        let mut cluster = Cluster::new(|_| {});
        for (via, delta) in [(ranks[0], 5), (ranks[1], 5)] {
            let earlier = cluster.increment(via, delta);
            // Node `behind` misses both earlier increments; the other two have them.
            cluster.deliver(|_, to, message| to == behind && matches!(message, Message::Put { .. }));
            assert!(matches!(cluster.reply(earlier), ClientReply::Incremented { .. }), "acknowledged with w = 2");
        }
        let request = cluster.next_request();
        let now = cluster.now;
        let (node, store) = cluster.nodes.get_mut(&behind).unwrap();
        node.increment(now, request, key(), 101, quorum, store);
        cluster.collect(behind);
        cluster.deliver_all();
        let ClientReply::Incremented { value, .. } = cluster.reply(request) else {
            panic!("{:?}", cluster.reply(request))
        };
        assert_eq!(value, expected, "{quorum:?}");
    }
}

#[test]
fn incr_on_a_non_integer_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    cluster.put(ranks[0], value("hello"), &VersionVector::new());
    cluster.deliver_all();
    let before = cluster.stored(ranks[0]);
    let incr = cluster.increment(ranks[0], 1);
    assert_eq!(cluster.reply(incr), ClientReply::Failed(RequestError::Increment(IncrementError::NotAnInteger)));
    assert!(cluster.queue.is_empty());
    assert_eq!(cluster.stored(ranks[0]), before);
}

/// Increments through random nodes over a lossy, failing network; after healing, every home
/// replica's counter is the sum of every increment that was not refused up front (a timed-out
/// increment is stored on its coordinator, so it counts too).
fn randomized_counter_run(seed: u64, resolution: Resolution) {
    let mut rng = Rng(seed);
    let mut cluster = Cluster::new(|config| {
        config.resolution = resolution;
        config.request_timeout_ms = 50;
        config.anti_entropy_interval_ms = 1 << 40;
    });
    let ranks = ranks();
    let mut increments = Vec::new();
    for _ in 0..80 {
        let via = ranks[usize::try_from(rng.below(5)).unwrap()];
        match rng.below(10) {
            0..=5 => {
                let delta = i64::try_from(rng.below(21)).unwrap() - 10;
                increments.push((cluster.increment(via, delta), delta));
            }
            6 => {
                cluster.get(via, None);
            }
            7 => {
                let node = ranks[usize::try_from(rng.below(5)).unwrap()];
                let down = rng.chance(60);
                cluster.set_down(node, down);
            }
            _ => cluster.tick(via, rng.below(40)),
        }
        let rounds = rng.below(cluster.queue.len() as u64 + 1);
        for _ in 0..rounds {
            let Some((from, to, message)) = cluster.queue.pop_front() else { break };
            match rng.below(10) {
                0 => {}
                1 => cluster.queue.push_back((from, to, message)),
                _ => {
                    let now = cluster.now;
                    let (node, store) = cluster.nodes.get_mut(&to).unwrap();
                    node.handle_message(now, from, message, store);
                    cluster.collect(to);
                }
            }
        }
    }
    for node in &ranks {
        cluster.set_down(*node, false);
    }
    for _ in 0..3 {
        cluster.deliver_all();
        for node in ranks.clone() {
            cluster.tick(node, 1000);
        }
        cluster.deliver_all();
    }
    for node in ranks.clone() {
        cluster.get(node, Some(Quorum::new(3, 3, 3).unwrap()));
        cluster.deliver_all();
    }
    let applied: i128 = increments
        .iter()
        .filter(|(request, _)| {
            !cluster.replies.iter().any(|(_, id, reply)| {
                id == request
                    && matches!(
                        reply,
                        ClientReply::Failed(
                            RequestError::Unavailable { .. }
                                | RequestError::Busy
                                | RequestError::NotAHomeReplica { .. }
                        )
                    )
            })
        })
        .map(|(_, delta)| i128::from(*delta))
        .sum();
    for home in &ranks[..3] {
        let value = cluster.stored(*home).and_then(|stored| stored.counter()).map_or(0, |(_, counter)| counter.value());
        assert_eq!(value, applied, "seed {seed}: counter on {home}");
    }
}

#[test]
fn randomized_increments_are_never_lost() {
    for seed in 3000..3100 {
        randomized_counter_run(seed, Resolution::Siblings);
    }
    for seed in 4000..4050 {
        randomized_counter_run(seed, Resolution::LastWriteWins);
    }
}

#[test]
fn overlapping_quorums_read_an_acknowledged_write_and_smaller_ones_may_not() {
    // r + w > n: every read quorum meets the write quorum, so a read sees the write whichever
    // replica's reply is missing. With r = 1 (r + w = n) a read can be answered by the stale one.
    let ranks = ranks();
    let stale = ranks[2];
    for missing in &ranks[..3] {
        let mut cluster = Cluster::new(|_| {});
        let write = cluster.put(ranks[0], value("v"), &VersionVector::new());
        cluster.deliver(|_, to, message| to == stale && matches!(message, Message::Put { .. }));
        assert!(matches!(cluster.reply(write), ClientReply::Written { .. }), "acknowledged by w = 2");
        let read = cluster.get(ranks[3], None);
        cluster.deliver(|from, _, message| from == *missing && matches!(message, Message::GetReply { .. }));
        assert_eq!(cluster.read(read).0, values(&["v"]), "reply of {missing} missing");
    }
    let mut cluster = Cluster::new(|_| {});
    cluster.put(ranks[0], value("v"), &VersionVector::new());
    cluster.deliver(|_, to, message| to == stale && matches!(message, Message::Put { .. }));
    let read = cluster.get(ranks[3], Some(Quorum::new(3, 2, 1).unwrap()));
    cluster.deliver(|from, _, message| from != stale && matches!(message, Message::GetReply { .. }));
    assert_eq!(cluster.read(read).0, Vec::<Bytes>::new(), "r + w = n: a stale read");
}

#[test]
fn acks_from_nodes_the_write_was_not_sent_to_do_not_count() {
    let mut node = coordinator(ranks()[0], |_| {});
    let mut store = MemoryStore::default();
    node.put(at(0), request(1), put(value("v"), &VersionVector::new(), None), &mut store);
    take(&mut node);
    let op = T0.0 << 16;
    node.handle_message(at(1), ranks()[4], Message::PutAck { op, counter: None }, &mut store);
    assert!(take(&mut node).is_empty());
    node.handle_message(at(1), ranks()[1], Message::PutAck { op, counter: None }, &mut store);
    assert_eq!(replies(&take(&mut node)).len(), 1);
}

#[test]
fn a_restarted_node_reloads_its_index_and_clock_from_the_store() {
    let mut cluster = Cluster::new(|_| {});
    let ranks = ranks();
    cluster.put(ranks[0], value("v"), &VersionVector::new());
    cluster.deliver_all();
    let (before, store) = cluster.nodes.remove(&ranks[0]).unwrap();
    let mut restarted = coordinator(ranks[0], |_| {});
    for (key, value) in &store.keys {
        restarted.load(T0, key.clone(), value);
    }
    assert_eq!(restarted.merkle_tree(), before.merkle_tree());
    let stored = store.get(&key()).unwrap();
    assert!(restarted.clock.last().packed() > stored.siblings()[0].hlc.packed(), "the clock is past the stored write");
}

/// Found by the leaderless simulator (seed 78): request ids restarted at 1 after a restart, so a
/// `GetReply` to a read from before the crash, delivered late, answered a new read of another key
/// with the same id, whose read repair then wrote the other key's values into this one.
#[test]
fn a_reply_to_a_request_from_before_a_restart_does_not_answer_a_new_one() {
    let [home0, home1] = [ranks()[0], ranks()[1]];
    let mut store = MemoryStore::default();
    let mut node = coordinator(home0, |_| {});
    node.get(at(0), request(1), key(), None, &mut store);
    let old_op = sends(&take(&mut node))
        .into_iter()
        .find_map(|(_, message)| if let Message::Get { op, .. } = message { Some(op) } else { None })
        .unwrap();
    // Another key's container, as a replica would answer the old read.
    let mut other = VersionedValue::new();
    let hlc = crate::leaderless::clock::HlcTimestamp { wall_ms: T0.0, logical: 0, node: home1 };
    other.write(home1, &VersionVector::new(), value("other key"), hlc, 100).unwrap();
    // Restart: a fresh coordinator on the same store, a new read, then the stale reply.
    let mut node = coordinator(home0, |_| {});
    node.get(at(500), request(2), key(), None, &mut store);
    let new_op = sends(&take(&mut node))
        .into_iter()
        .find_map(|(_, message)| if let Message::Get { op, .. } = message { Some(op) } else { None })
        .unwrap();
    assert_ne!(old_op, new_op, "a request id reused across a restart");
    node.handle_message(at(501), home1, Message::GetReply { op: old_op, value: Some(other) }, &mut store);
    assert!(take(&mut node).is_empty(), "a stale reply answered a new read");
}
