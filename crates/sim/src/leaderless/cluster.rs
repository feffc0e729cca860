//! The simulated leaderless world: nodes (a `Coordinator` and its durable `MemoryStore`), the
//! network, the failure detector, clocks, clients and their history.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chorus_core::RequestId;
use chorus_core::leaderless::coordinator::Effect;
use chorus_core::leaderless::{
    ClientReply, Coordinator, CoordinatorConfig, Dot, MemoryStore, Message, Payload, Put, Quorum, RequestError,
    VersionVector, VersionedValue, preference_list,
};
use chorus_core::slot::Slot;
use chorus_core::types::{NodeId, UnixMillis};

use super::{Heal, LeaderlessKnobs, LeaderlessOptions, LeaderlessStats};
use crate::SimRng;

/// Keys written with puts and deletes (and read).
pub const REGISTER_KEYS: [&str; 3] = ["r0", "r1", "r2"];
/// Keys only incremented (and read).
pub const COUNTER_KEYS: [&str; 2] = ["c0", "c1"];
/// The default quorum, and so the home replicas whose convergence is checked.
pub const DEFAULT_QUORUM: Quorum = Quorum { n: 3, w: 2, r: 2 };
/// True time starts here (so that clock offsets never go below zero).
const EPOCH_MS: u64 = 1_000_000;
const TICK_EVERY_MS: u64 = 10;
const DETECTOR_EVERY_MS: u64 = 20;
const ANTI_ENTROPY_INTERVAL_MS: u64 = 300;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Put { value: Bytes, context: VersionVector },
    Delete { context: VersionVector },
    Get,
    Increment { delta: i64 },
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No answer: the coordinator crashed with the request in flight (it may have been stored).
    Unknown,
    /// Refused before anything was stored (unavailable, not a home replica, busy, too many
    /// siblings, not an integer).
    Refused(RequestError),
    /// Timed out: stored on the coordinator at least.
    TimedOut,
    Written {
        dot: Dot,
        context: VersionVector,
    },
    Incremented {
        dot: Dot,
        value: i64,
    },
    Read {
        values: Vec<Bytes>,
        context: VersionVector,
    },
}

/// One client operation.
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub client: usize,
    pub key: Bytes,
    pub kind: OpKind,
    pub node: NodeId,
    pub quorum: Quorum,
    pub invoked_ms: u64,
    pub completed_ms: Option<u64>,
    /// The fault epoch at invoke and at completion (see [`LeaderlessCluster::epoch`]).
    pub invoked_epoch: u64,
    pub completed_epoch: u64,
    pub outcome: Outcome,
}

impl OpRecord {
    /// Whether the operation may have changed a store (everything but refusals; reads never do
    /// for the checkers' purposes).
    pub fn attempted(&self) -> bool {
        !matches!(self.outcome, Outcome::Refused(_)) && !matches!(self.kind, OpKind::Get)
    }
}

struct Node {
    id: NodeId,
    /// `None` while crashed.
    coordinator: Option<Coordinator>,
    /// Durable: survives crashes.
    store: MemoryStore,
    /// What this node's failure detector currently says is down.
    down: BTreeSet<NodeId>,
}

struct Client {
    /// The op in flight, if any.
    busy: Option<usize>,
    next_at: u64,
    /// The context last read (or written) per key.
    contexts: BTreeMap<Bytes, VersionVector>,
}

/// The world of one run.
pub struct LeaderlessCluster {
    pub seed: u64,
    pub options: LeaderlessOptions,
    pub knobs: LeaderlessKnobs,
    rng: SimRng,
    /// True simulated time.
    pub now: u64,
    members: Vec<NodeId>,
    nodes: Vec<Node>,
    /// In flight: (delivery time, sequence) -> (from, to, message).
    network: BTreeMap<(u64, u64), (NodeId, NodeId, Message)>,
    sequence: u64,
    /// Directed links cut by a partition.
    cut: BTreeSet<(NodeId, NodeId)>,
    partition_heals_at: Option<u64>,
    /// Crashed nodes and when they restart.
    restarts: BTreeMap<usize, u64>,
    clients: Vec<Client>,
    pub history: Vec<OpRecord>,
    /// Bumped by every change of topology (partition, heal, crash, restart, failure-detector
    /// verdict). `clean_epochs` are those with everyone up, connected and believed up.
    pub epoch: u64,
    pub clean_epochs: BTreeSet<u64>,
    faults_on: bool,
    clients_on: bool,
    pub stats: LeaderlessStats,
    pub failures: Vec<String>,
    pub trace: Option<Vec<String>>,
}

impl LeaderlessCluster {
    pub fn new(seed: u64, options: &LeaderlessOptions) -> LeaderlessCluster {
        let mut rng = SimRng::new(seed);
        let knobs = LeaderlessKnobs::draw(&mut rng, options);
        let members: Vec<NodeId> = (1..=options.nodes as u64).map(NodeId).collect();
        let mut cluster = LeaderlessCluster {
            seed,
            options: options.clone(),
            knobs,
            rng,
            now: EPOCH_MS,
            members: members.clone(),
            nodes: Vec::new(),
            network: BTreeMap::new(),
            sequence: 0,
            cut: BTreeSet::new(),
            partition_heals_at: None,
            restarts: BTreeMap::new(),
            clients: (0..options.clients)
                .map(|_| Client { busy: None, next_at: EPOCH_MS, contexts: BTreeMap::new() })
                .collect(),
            history: Vec::new(),
            epoch: 0,
            clean_epochs: BTreeSet::from([0]),
            faults_on: true,
            clients_on: true,
            stats: LeaderlessStats::default(),
            failures: Vec::new(),
            trace: options.trace.then(Vec::new),
        };
        for &id in &members {
            let node = Node { id, coordinator: None, store: MemoryStore::default(), down: BTreeSet::new() };
            cluster.nodes.push(node);
        }
        for index in 0..cluster.nodes.len() {
            cluster.start(index);
        }
        cluster
    }

    fn config(&self, id: NodeId) -> CoordinatorConfig {
        let mut config = CoordinatorConfig::new(id);
        config.quorum = DEFAULT_QUORUM;
        config.request_timeout_ms = 100;
        config.handoff_interval_ms = 100;
        config.anti_entropy_interval_ms =
            if self.knobs.heal == Heal::ReadRepair { 1 << 40 } else { ANTI_ENTROPY_INTERVAL_MS };
        config.planted_bug = self.options.planted_bug;
        config
    }

    fn physical(&self, index: usize) -> UnixMillis {
        let offset = self.knobs.clock_offsets.get(index).copied().unwrap_or(0);
        UnixMillis(self.now.saturating_add_signed(offset))
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>6} {}", self.now - EPOCH_MS, line()));
        }
    }

    /// Starts (or restarts) a node: a fresh coordinator fed the durable store.
    fn start(&mut self, index: usize) {
        let id = self.nodes[index].id;
        let now = self.physical(index);
        let mut coordinator = Coordinator::new(self.config(id), self.members.clone());
        for (key, value) in &self.nodes[index].store.keys {
            coordinator.load(now, key.clone(), value);
        }
        for &peer in &self.nodes[index].down {
            coordinator.set_down(peer, true);
        }
        self.nodes[index].coordinator = Some(coordinator);
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.members.iter().position(|&member| member == id).expect("a member")
    }

    fn alive(&self, index: usize) -> bool {
        self.nodes[index].coordinator.is_some()
    }

    fn new_epoch(&mut self) {
        self.epoch += 1;
        let clean =
            self.cut.is_empty() && self.nodes.iter().all(|node| node.coordinator.is_some() && node.down.is_empty());
        if clean {
            self.clean_epochs.insert(self.epoch);
        }
    }

    /// The whole run: faults and clients, then healing and convergence.
    pub fn run(&mut self) {
        let end = EPOCH_MS + self.options.safety_ms;
        while self.now < end {
            self.step();
        }
        self.heal();
        // Let clients' requests finish and hints flow with everything healed.
        let settle = self.now + 500;
        while self.now < settle || self.clients.iter().any(|client| client.busy.is_some()) {
            self.step();
            if self.now > settle + 5000 {
                self.failures.push("client requests still in flight 5 s after healing".to_owned());
                return;
            }
        }
        self.converge();
    }

    fn heal(&mut self) {
        self.log(|| "heal: faults and clients stop".to_owned());
        self.faults_on = false;
        self.clients_on = false;
        self.cut.clear();
        self.partition_heals_at = None;
        let crashed: Vec<usize> = self.restarts.keys().copied().collect();
        for index in crashed {
            self.restart(index);
        }
        self.detect();
        self.new_epoch();
    }

    /// Rounds of one anti-entropy interval, with reads of every key (`r = n`) at the start of each
    /// round when read repair is part of the healing, until the home replicas agree.
    fn converge(&mut self) {
        let heal = self.knobs.heal;
        for round in 0..=self.options.converge_rounds_max {
            if self.diverging_keys().is_empty() {
                self.stats.converge_rounds = round;
                return;
            }
            if heal != Heal::AntiEntropy {
                self.read_every_key(round);
            }
            let end = self.now + ANTI_ENTROPY_INTERVAL_MS;
            while self.now < end || !self.network.is_empty() {
                self.step();
            }
        }
        let keys: Vec<String> =
            self.diverging_keys().iter().map(|key| String::from_utf8_lossy(key).into_owned()).collect();
        self.failures.push(format!(
            "no convergence after {} rounds ({heal:?}): home replicas differ on {keys:?}",
            self.options.converge_rounds_max
        ));
    }

    /// A read of every key with `r = n`, through the nodes in turn: read repair, no writes.
    fn read_every_key(&mut self, round: u32) {
        let keys = self.all_keys();
        for (at, key) in keys.into_iter().enumerate() {
            let index = (at + round as usize) % self.nodes.len();
            let now = self.physical(index);
            let request = RequestId { connection: u64::MAX, sequence: u64::from(round) };
            let node = &mut self.nodes[index];
            let coordinator = node.coordinator.as_mut().expect("healed");
            coordinator.get(now, request, key, Some(Quorum { n: 3, w: 3, r: 3 }), &mut node.store);
            self.collect(index);
        }
    }

    /// Every key some store or client knows of.
    pub fn all_keys(&self) -> BTreeSet<Bytes> {
        let mut keys: BTreeSet<Bytes> =
            REGISTER_KEYS.iter().chain(COUNTER_KEYS.iter()).map(|key| Bytes::from_static(key.as_bytes())).collect();
        for node in &self.nodes {
            keys.extend(node.store.keys.keys().cloned());
        }
        keys
    }

    /// The home replicas of `key` under the default quorum.
    pub fn home(&self, key: &[u8]) -> Vec<NodeId> {
        preference_list(&self.members, Slot::of_key(key), usize::from(DEFAULT_QUORUM.n))
    }

    /// `key`'s container on `node`'s store.
    pub fn stored(&self, node: NodeId, key: &[u8]) -> Option<VersionedValue> {
        self.nodes[self.index_of(node)].store.keys.get(key).cloned()
    }

    /// Keys whose home replicas hold different containers.
    pub fn diverging_keys(&self) -> Vec<Bytes> {
        self.all_keys()
            .into_iter()
            .filter(|key| {
                let copies: Vec<Option<VersionedValue>> =
                    self.home(key).into_iter().map(|node| self.stored(node, key)).collect();
                copies.windows(2).any(|pair| pair[0] != pair[1])
            })
            .collect()
    }

    /// One simulated millisecond.
    fn step(&mut self) {
        self.now += 1;
        if self.faults_on {
            self.inject_faults();
        }
        if let Some(at) = self.partition_heals_at
            && at <= self.now
        {
            self.partition_heals_at = None;
            self.cut.clear();
            self.log(|| "partition healed".to_owned());
            self.new_epoch();
        }
        let due: Vec<usize> =
            self.restarts.iter().filter(|(_, at)| **at <= self.now).map(|(&index, _)| index).collect();
        for index in due {
            self.restart(index);
            self.new_epoch();
        }
        if self.now.is_multiple_of(DETECTOR_EVERY_MS) {
            self.detect();
        }
        self.deliver();
        if self.now.is_multiple_of(TICK_EVERY_MS) {
            for index in 0..self.nodes.len() {
                let now = self.physical(index);
                let node = &mut self.nodes[index];
                if let Some(coordinator) = &mut node.coordinator {
                    coordinator.tick(now, &mut node.store);
                    self.collect(index);
                }
            }
        }
        if self.clients_on {
            for client in 0..self.clients.len() {
                if self.clients[client].busy.is_none() && self.clients[client].next_at <= self.now {
                    self.invoke(client);
                }
            }
        }
    }

    fn inject_faults(&mut self) {
        let count = self.nodes.len() as u64;
        if self.cut.is_empty() && self.rng.chance(self.knobs.partition_per_million, 1_000_000) {
            let one_way = self.rng.chance(1, 4);
            let mut side = BTreeSet::new();
            let size = 1 + self.rng.below(count / 2);
            while (side.len() as u64) < size {
                side.insert(self.members[self.rng.below(count) as usize]);
            }
            for &a in &self.members {
                for &b in &self.members {
                    if side.contains(&a) && !side.contains(&b) {
                        self.cut.insert((a, b));
                        if !one_way {
                            self.cut.insert((b, a));
                        }
                    }
                }
            }
            let heals_in = 50 + self.rng.below(600);
            self.partition_heals_at = Some(self.now + heals_in);
            self.stats.faults_injected += 1;
            self.log(|| format!("partition {side:?} (one way: {one_way}) for {heals_in} ms"));
            self.new_epoch();
        }
        if self.restarts.len() < 2 && self.rng.chance(self.knobs.crash_per_million, 1_000_000) {
            let index = self.rng.below(count) as usize;
            if self.alive(index) {
                self.crash(index);
                let down_for = 10 + self.rng.below(500);
                self.restarts.insert(index, self.now + down_for);
                self.new_epoch();
            }
        }
    }

    fn crash(&mut self, index: usize) {
        let id = self.nodes[index].id;
        self.nodes[index].coordinator = None;
        self.stats.faults_injected += 1;
        self.stats.crashes += 1;
        // Requests in flight on it are never answered.
        for client in &mut self.clients {
            if let Some(op) = client.busy
                && self.history[op].node == id
            {
                client.busy = None;
                self.history[op].completed_epoch = self.epoch;
            }
        }
        self.log(|| format!("crash {id}"));
    }

    fn restart(&mut self, index: usize) {
        self.restarts.remove(&index);
        self.start(index);
        let id = self.nodes[index].id;
        self.log(|| format!("restart {id}"));
    }

    /// The failure detector of every live node: down = crashed or cut off either way, wrong with
    /// a small probability while faults are on.
    fn detect(&mut self) {
        let mut changed = false;
        for index in 0..self.nodes.len() {
            if !self.alive(index) {
                continue;
            }
            let me = self.nodes[index].id;
            for peer_index in 0..self.nodes.len() {
                let peer = self.nodes[peer_index].id;
                if peer == me {
                    continue;
                }
                let mut down =
                    !self.alive(peer_index) || self.cut.contains(&(me, peer)) || self.cut.contains(&(peer, me));
                if self.faults_on && self.rng.chance(self.knobs.detector_error_per_mille, 1000) {
                    down = !down;
                }
                if self.nodes[index].down.contains(&peer) != down {
                    changed = true;
                    let node = &mut self.nodes[index];
                    if down {
                        node.down.insert(peer);
                    } else {
                        node.down.remove(&peer);
                    }
                    node.coordinator.as_mut().expect("alive").set_down(peer, down);
                }
            }
        }
        if changed {
            self.new_epoch();
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (from, to, message) = entry.remove();
            let index = self.index_of(to);
            if self.cut.contains(&(from, to)) || !self.alive(index) {
                continue;
            }
            let now = self.physical(index);
            let node = &mut self.nodes[index];
            node.coordinator.as_mut().expect("alive").handle_message(now, from, message, &mut node.store);
            self.collect(index);
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        self.stats.messages_sent += 1;
        let copies = if self.faults_on && self.rng.chance(self.knobs.duplicate_per_mille, 1000) { 2 } else { 1 };
        for _ in 0..copies {
            if self.faults_on && self.rng.chance(self.knobs.drop_per_mille, 1000) {
                continue;
            }
            let delay = if self.faults_on && self.rng.chance(self.knobs.long_delay_per_mille, 1000) {
                1 + self.rng.below(self.knobs.long_delay_ms_max)
            } else {
                1 + self.rng.below(5)
            };
            self.sequence += 1;
            self.network.insert((self.now + delay, self.sequence), (from, to, message.clone()));
        }
    }

    /// Drains a node's effects: messages onto the network, replies to clients.
    fn collect(&mut self, index: usize) {
        let id = self.nodes[index].id;
        let effects: Vec<Effect> = match &mut self.nodes[index].coordinator {
            Some(coordinator) => coordinator.drain_effects().collect(),
            None => return,
        };
        for effect in effects {
            match effect {
                Effect::Send { to, message } => self.send(id, to, message),
                Effect::Reply { request, reply } => self.reply(request, reply),
            }
        }
    }

    fn invoke(&mut self, client: usize) {
        let counter = self.rng.chance(1, 3);
        let key = if counter {
            COUNTER_KEYS[self.rng.below(COUNTER_KEYS.len() as u64) as usize]
        } else {
            REGISTER_KEYS[self.rng.below(REGISTER_KEYS.len() as u64) as usize]
        };
        let key = Bytes::from_static(key.as_bytes());
        let op = self.history.len();
        let kind = match (counter, self.rng.below(10)) {
            (_, 0..=2) => OpKind::Get,
            (true, _) => OpKind::Increment { delta: 1 + i64::try_from(self.rng.below(3)).unwrap_or(0) },
            (false, choice) => {
                let known = self.clients[client].contexts.get(&key).cloned().unwrap_or_default();
                let context = if self.rng.chance(7, 10) { known } else { VersionVector::new() };
                if choice == 3 {
                    OpKind::Delete { context }
                } else {
                    OpKind::Put { value: Bytes::from(format!("v{op}")), context }
                }
            }
        };
        let quorum = if self.rng.chance(self.knobs.random_quorum_percent, 100) {
            let n = 2 + self.rng.below(u64::from(self.options.request_n_max) - 1) as u8;
            Quorum { n, w: 1 + self.rng.below(u64::from(n)) as u8, r: 1 + self.rng.below(u64::from(n)) as u8 }
        } else {
            DEFAULT_QUORUM
        };
        // Writes mostly go to a home replica (under the request's n); the rest anywhere, and a
        // refusal with a forward is followed once.
        let node = if !matches!(kind, OpKind::Get) && self.rng.chance(4, 5) {
            let home = preference_list(&self.members, Slot::of_key(&key), usize::from(quorum.n));
            home[self.rng.below(home.len() as u64) as usize]
        } else {
            self.members[self.rng.below(self.members.len() as u64) as usize]
        };
        self.issue(client, key, kind, quorum, node);
    }

    fn issue(&mut self, client: usize, key: Bytes, kind: OpKind, quorum: Quorum, node: NodeId) {
        let op = self.history.len();
        self.stats.ops_invoked += 1;
        let index = self.index_of(node);
        self.history.push(OpRecord {
            client,
            key: key.clone(),
            kind: kind.clone(),
            node,
            quorum,
            invoked_ms: self.now,
            completed_ms: None,
            invoked_epoch: self.epoch,
            completed_epoch: self.epoch,
            outcome: Outcome::Unknown,
        });
        self.log(|| format!("client {client} op {op}: {kind:?} {key:?} via {node} {quorum:?}"));
        if !self.alive(index) {
            // Connection refused: nothing happened.
            self.complete(op, Outcome::Refused(RequestError::Unavailable { reachable: 0, needed: 1 }));
            return;
        }
        self.clients[client].busy = Some(op);
        let request = RequestId { connection: client as u64, sequence: op as u64 };
        let now = self.physical(index);
        let quorum = (quorum != DEFAULT_QUORUM).then_some(quorum);
        let node = &mut self.nodes[index];
        let coordinator = node.coordinator.as_mut().expect("alive");
        match kind {
            OpKind::Put { value, context } => {
                let put = Put { key, payload: Payload::Value(value), context, quorum };
                coordinator.put(now, request, put, &mut node.store);
            }
            OpKind::Delete { context } => {
                let put = Put { key, payload: Payload::Tombstone, context, quorum };
                coordinator.put(now, request, put, &mut node.store);
            }
            OpKind::Get => coordinator.get(now, request, key, quorum, &mut node.store),
            OpKind::Increment { delta } => coordinator.increment(now, request, key, delta, quorum, &mut node.store),
        }
        self.collect(index);
    }

    fn complete(&mut self, op: usize, outcome: Outcome) {
        let record = &mut self.history[op];
        record.completed_ms = Some(self.now);
        record.completed_epoch = self.epoch;
        record.outcome = outcome;
        let client = record.client;
        self.clients[client].busy = None;
        self.clients[client].next_at = self.now + self.rng.below(20);
    }

    fn reply(&mut self, request: RequestId, reply: ClientReply) {
        if request.connection == u64::MAX {
            return; // the healing reads
        }
        let op = request.sequence as usize;
        let client = request.connection as usize;
        if self.clients[client].busy != Some(op) {
            self.failures.push(format!("op {op}: a reply to a request not in flight: {reply:?}"));
            return;
        }
        let key = self.history[op].key.clone();
        self.log(|| format!("client {client} op {op}: {reply:?}"));
        let outcome = match reply {
            ClientReply::Written { dot, context } => {
                self.stats.writes_acknowledged += 1;
                if self.rng.chance(1, 2) {
                    self.clients[client].contexts.insert(key, context.clone());
                }
                Outcome::Written { dot, context }
            }
            ClientReply::Incremented { value, dot, .. } => {
                self.stats.increments_acknowledged += 1;
                Outcome::Incremented { dot, value }
            }
            ClientReply::Read { values, context, .. } => {
                self.stats.reads_answered += 1;
                self.clients[client].contexts.insert(key, context.clone());
                Outcome::Read { values, context }
            }
            ClientReply::Failed(RequestError::Timeout { .. }) => Outcome::TimedOut,
            ClientReply::Failed(RequestError::NotAHomeReplica { forward_to: Some(to) }) => {
                let record = self.history[op].clone();
                self.complete(op, Outcome::Refused(RequestError::NotAHomeReplica { forward_to: Some(to) }));
                self.issue(client, record.key, record.kind, record.quorum, to);
                return;
            }
            ClientReply::Failed(error) => {
                if matches!(error, RequestError::NAboveConfigured { .. }) {
                    self.stats.refused_n_above_configured += 1;
                }
                Outcome::Refused(error)
            }
        };
        self.complete(op, outcome);
    }
}
