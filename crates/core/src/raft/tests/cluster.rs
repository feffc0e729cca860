//! A deterministic cluster: N engines, a network that delays, drops, duplicates and reorders, disks
//! that lose what was not fsynced when a node crashes, partitions, compaction and snapshots, all
//! decided by one seed. A safety phase runs the chaos; a liveness phase heals everything and expects
//! the group to converge. Every assertion message carries the seed, so a failure replays exactly:
//!
//! ```text
//! RAFT_SEED=2004 RAFT_DURABILITY=async [RAFT_MEMBERSHIP=1] [RAFT_TRACE=<node id>] cargo test -p chorus-core one_seed
//! RAFT_SEED_COUNT=5000 cargo test -p chorus-core raft::tests::cluster     # a longer soak
//! ```

use std::collections::{BTreeMap, BTreeSet};

use super::super::rng::SplitMix64;
use super::*;

const STEP_MS: u64 = 5;

#[derive(Debug, Clone)]
struct Options {
    nodes: u64,
    /// Voters at the start; the other nodes start empty and can be added by membership changes.
    initial_voters: u64,
    durability: Durability,
    entries_per_append_max: usize,
    appends_in_flight_max: usize,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    latency_ms_max: u64,
    crash_per_mille: u64,
    partition_per_mille: u64,
    propose_per_mille: u64,
    read_per_mille: u64,
    membership_per_mille: u64,
    transfer_per_mille: u64,
    compact_per_mille: u64,
    chaos_ms: u64,
    liveness_ms: u64,
}

impl Options {
    /// A swarm of fault settings drawn from the seed (TigerBeetle's VOPR habit).
    fn from_seed(rng: &mut SplitMix64, durability: Durability, membership_changes: bool) -> Options {
        let nodes = if membership_changes { 5 } else { [3, 3, 5][rng.below(3) as usize] };
        Options {
            nodes,
            initial_voters: if membership_changes { 3 } else { nodes },
            durability,
            entries_per_append_max: [1, 4, 64][rng.below(3) as usize],
            appends_in_flight_max: [1, 3][rng.below(2) as usize],
            drop_per_mille: [0, 20, 100][rng.below(3) as usize],
            duplicate_per_mille: [0, 20][rng.below(2) as usize],
            latency_ms_max: [2, 10, 40, 120][rng.below(4) as usize],
            crash_per_mille: [0, 1, 3, 8][rng.below(4) as usize],
            partition_per_mille: [0, 2, 5][rng.below(3) as usize],
            propose_per_mille: [50, 200][rng.below(2) as usize],
            read_per_mille: [0, 30, 300][rng.below(3) as usize],
            membership_per_mille: if membership_changes { 20 } else { 0 },
            transfer_per_mille: [0, 2][rng.below(2) as usize],
            compact_per_mille: [0, 5, 30][rng.below(3) as usize],
            chaos_ms: 6_000,
            liveness_ms: 8_000,
        }
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Message(Message),
    /// A snapshot stream: the sender's state (the term of every applied entry) and its metadata.
    Snapshot {
        leader_term: Term,
        meta: SnapshotMeta,
        state: Vec<Term>,
    },
}

#[derive(Debug, Clone)]
struct InFlight {
    deliver_at: u64,
    /// Ties broken by send order, so delivery is deterministic.
    sequence: u64,
    from: NodeId,
    to: NodeId,
    payload: Payload,
}

/// One simulated node: what its disk holds, and the engine while it runs.
#[derive(Debug)]
struct Node {
    id: NodeId,
    raft: Option<Raft>,
    restarts: u64,
    restart_at: u64,
    // Durable.
    hard_state: HardState,
    snapshot: SnapshotMeta,
    synced_log: Vec<LogEntry>,
    /// The state machine: the term of each applied entry, index `i` at position `i - 1`. Stored
    /// atomically with its applied index, as the real state is.
    state: Vec<Term>,
    // Lost on a crash.
    written_log: Vec<LogEntry>,
    /// Entries this node reported as discarded after committing them.
    reported_lost: BTreeSet<(LogIndex, Term)>,
    /// Entries a snapshot rewound the state past, unreported: they must be applied again, the same.
    reapply: BTreeMap<LogIndex, Term>,
}

struct Sim {
    seed: u64,
    options: Options,
    rng: SplitMix64,
    now: u64,
    nodes: Vec<Node>,
    network: Vec<InFlight>,
    sequence: u64,
    /// Node pairs that cannot talk (both directions).
    cut: BTreeSet<(NodeId, NodeId)>,
    heal_at: u64,
    /// Election safety: the leader seen for each term.
    leaders: BTreeMap<Term, NodeId>,
    /// State machine safety: the term of every entry any node committed (quorum / all).
    committed: BTreeMap<LogIndex, Term>,
    /// The highest index any node committed: a read must see at least this much.
    commit_high: LogIndex,
    /// Reads in flight: read id -> (node, commit high when asked).
    reads: BTreeMap<u64, (NodeId, LogIndex)>,
    next_read: u64,
    next_key: u64,
    /// The state a snapshot is replacing, while its install's effects are performed.
    installing: Option<Vec<Term>>,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    elections: u64,
    committed_max: u64,
    reads_ready: u64,
    snapshots_installed: u64,
    truncations: u64,
    committed_discards: u64,
    crashes: u64,
}

impl Sim {
    fn new(seed: u64, durability: Durability, membership_changes: bool) -> Sim {
        let mut rng = SplitMix64::new(seed);
        let options = Options::from_seed(&mut rng, durability, membership_changes);
        let voters: Vec<NodeId> = (1..=options.initial_voters).map(NodeId).collect();
        let nodes = (1..=options.nodes)
            .map(|id| {
                let restored = if id <= options.initial_voters {
                    RestoredState::bootstrap(voters.iter().copied())
                } else {
                    RestoredState::joining()
                };
                let mut node = Node {
                    id: NodeId(id),
                    raft: None,
                    restarts: 0,
                    restart_at: 0,
                    hard_state: restored.hard_state,
                    snapshot: restored.snapshot.clone(),
                    synced_log: Vec::new(),
                    state: Vec::new(),
                    written_log: Vec::new(),
                    reported_lost: BTreeSet::new(),
                    reapply: BTreeMap::new(),
                };
                node.raft = Some(Raft::new(Self::config(seed, &options, node.id, 0), restored));
                node
            })
            .collect();
        Sim {
            seed,
            options,
            rng,
            now: T0.0,
            nodes,
            network: Vec::new(),
            sequence: 0,
            cut: BTreeSet::new(),
            heal_at: 0,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            commit_high: LogIndex::ZERO,
            reads: BTreeMap::new(),
            next_read: 0,
            next_key: 0,
            installing: None,
            stats: Stats::default(),
        }
    }

    fn config(seed: u64, options: &Options, id: NodeId, restarts: u64) -> RaftConfig {
        RaftConfig {
            durability: options.durability,
            election_timeout_ms_min: 150,
            election_timeout_ms_max: 300,
            heartbeat_interval_ms: 30,
            entries_per_append_max: options.entries_per_append_max,
            appends_in_flight_max: options.appends_in_flight_max,
            uncommitted_entries_max: 200,
            snapshot_timeout_ms: 500,
            seed: seed.wrapping_mul(31).wrapping_add(restarts),
            ..RaftConfig::new(id, 0)
        }
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.rng.below(1000) < per_mille
    }

    fn index_of(&self, id: NodeId) -> usize {
        usize::try_from(id.0 - 1).expect("small ids")
    }

    fn run(&mut self) {
        let chaos_end = self.now + self.options.chaos_ms;
        while self.now < chaos_end {
            self.step(true);
        }
        // Liveness: heal the network, restart every node, stop the faults.
        self.cut.clear();
        for at in 0..self.nodes.len() {
            if self.nodes[at].raft.is_none() {
                self.restart(at);
            }
        }
        let liveness_end = self.now + self.options.liveness_ms;
        let mut probe: Option<(NodeId, LogIndex, Term)> = None;
        let mut probe_at = 0;
        while self.now < liveness_end {
            self.step(false);
            // A probe whose leader lost leadership before committing it is lost: propose another.
            if (probe.is_none() || self.now > probe_at + 2_000)
                && let Some(proposed) = self.propose_probe()
            {
                probe = Some(proposed);
                probe_at = self.now;
            }
            if let Some((_, index, term)) = probe
                && self.converged(index, term)
            {
                self.check_final_agreement();
                return;
            }
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("applied {} {:?}", node.state.len(), node.raft.as_ref().map(Raft::status)))
            .collect();
        panic!("seed {}: no convergence after healing; probe {probe:?}; nodes:\n{}", self.seed, nodes.join("\n"));
    }

    /// Proposes an entry at a settled leader once there is one.
    fn propose_probe(&mut self) -> Option<(NodeId, LogIndex, Term)> {
        let now = UnixMillis(self.now);
        let leader =
            self.nodes.iter_mut().find_map(|node| node.raft.as_mut().filter(|raft| raft.role() == Role::Leader))?;
        let index = leader.propose(now, write("probe")).ok()?;
        let found = (leader.node_id(), index, leader.term());
        let at = self.index_of(found.0);
        self.drain(at);
        Some(found)
    }

    /// Every member has applied the probe entry.
    fn converged(&self, index: LogIndex, term: Term) -> bool {
        let Some(membership) = self
            .nodes
            .iter()
            .filter_map(|node| node.raft.as_ref())
            .find(|raft| raft.role() == Role::Leader)
            .map(|raft| raft.membership().clone())
        else {
            return false;
        };
        membership.members().all(|member| {
            let node = &self.nodes[self.index_of(member)];
            node.state.len() as u64 >= index.0 && node.state[index.0 as usize - 1] == term
        })
    }

    fn check_final_agreement(&self) {
        let members: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|node| node.raft.as_ref().is_some_and(|raft| raft.membership().is_member(node.id)))
            .collect();
        let shortest = members.iter().map(|node| node.state.len()).min().unwrap_or(0);
        for node in &members {
            assert_eq!(
                node.state[..shortest],
                members[0].state[..shortest],
                "seed {}: nodes {} and {} applied different entries",
                self.seed,
                node.id,
                members[0].id
            );
        }
    }

    fn step(&mut self, chaos: bool) {
        self.now += STEP_MS;
        let now = UnixMillis(self.now);
        if chaos {
            self.faults();
        }
        // Deliver what is due, in (time, send order).
        let mut due: Vec<InFlight> = Vec::new();
        let mut later = Vec::new();
        for flight in std::mem::take(&mut self.network) {
            if flight.deliver_at <= self.now { due.push(flight) } else { later.push(flight) }
        }
        self.network = later;
        due.sort_by_key(|flight| (flight.deliver_at, flight.sequence));
        for flight in due {
            self.deliver(flight);
        }
        for at in 0..self.nodes.len() {
            if self.nodes[at].raft.is_none() {
                if !chaos || self.now >= self.nodes[at].restart_at {
                    self.restart(at);
                }
                continue;
            }
            if self.rng.below(2) == 0 {
                self.fsync(at);
            }
            if let Some(raft) = self.nodes[at].raft.as_mut() {
                raft.tick(now);
            }
            self.drain(at);
        }
        self.client_load(chaos);
        self.check_leaders();
    }

    fn faults(&mut self) {
        if self.now >= self.heal_at && !self.cut.is_empty() {
            self.cut.clear();
        }
        if self.chance(self.options.partition_per_mille) {
            // Isolate one node, or split the group in two.
            let victim = NodeId(1 + self.rng.below(self.options.nodes));
            let split = self.rng.below(2) == 0;
            self.cut.clear();
            for a in 1..=self.options.nodes {
                for b in 1..=self.options.nodes {
                    let (a, b) = (NodeId(a), NodeId(b));
                    let cut = if split { (a.0 % 2 == 0) != (b.0 % 2 == 0) } else { (a == victim) != (b == victim) };
                    if cut {
                        self.cut.insert((a, b));
                    }
                }
            }
            self.heal_at = self.now + 200 + self.rng.below(1500);
        }
        if self.chance(self.options.crash_per_mille) {
            let at = self.rng.below(self.options.nodes) as usize;
            if self.nodes[at].raft.is_some() {
                self.crash(at);
            }
        }
    }

    fn crash(&mut self, at: usize) {
        let restart_at = self.now + 50 + self.rng.below(1000);
        let node = &mut self.nodes[at];
        node.raft = None;
        node.written_log = node.synced_log.clone();
        node.restart_at = restart_at;
        self.stats.crashes += 1;
    }

    fn restart(&mut self, at: usize) {
        let node = &mut self.nodes[at];
        node.restarts += 1;
        let restored = RestoredState {
            hard_state: node.hard_state,
            snapshot: node.snapshot.clone(),
            entries: node.synced_log.clone(),
            committed_index: LogIndex(node.state.len() as u64),
        };
        node.written_log = node.synced_log.clone();
        let config = Self::config(self.seed, &self.options, node.id, node.restarts);
        node.raft = Some(Raft::new(config, restored));
    }

    /// The disk makes everything written durable, and the engine hears of it.
    fn fsync(&mut self, at: usize) {
        let node = &mut self.nodes[at];
        node.synced_log = node.written_log.clone();
        let last = node
            .written_log
            .last()
            .map_or((node.snapshot.index, node.snapshot.term), |entry| (entry.index, entry.term));
        if let Some(raft) = node.raft.as_mut() {
            raft.handle_persisted(UnixMillis(self.now), last.0, last.1);
        }
        self.drain(at);
    }

    fn client_load(&mut self, chaos: bool) {
        let now = UnixMillis(self.now);
        // Writes stop while the group heals, so it can catch up whatever the throughput.
        if chaos && self.chance(self.options.propose_per_mille) {
            let at = self.rng.below(self.options.nodes) as usize;
            self.next_key += 1;
            let key = format!("k{}", self.next_key);
            if let Some(raft) = self.nodes[at].raft.as_mut() {
                let _ = raft.propose(now, write(&key));
            }
            self.drain(at);
        }
        if self.chance(self.options.read_per_mille) {
            let at = self.rng.below(self.options.nodes) as usize;
            self.next_read += 1;
            let read_id = self.next_read;
            let id = self.nodes[at].id;
            if let Some(raft) = self.nodes[at].raft.as_mut() {
                self.reads.insert(read_id, (id, self.commit_high));
                raft.read_index(now, read_id);
            }
            self.drain(at);
        }
        if chaos && self.chance(self.options.membership_per_mille) {
            let target = NodeId(1 + self.rng.below(self.options.nodes));
            let kind = self.rng.below(4);
            for at in 0..self.nodes.len() {
                let Some(raft) = self.nodes[at].raft.as_mut() else { continue };
                if raft.role() != Role::Leader {
                    continue;
                }
                let membership = raft.membership();
                let change = match kind {
                    0 if !membership.is_member(target) => MembershipChange::AddLearner(target),
                    1 if membership.learners.contains(&target) => MembershipChange::PromoteLearner(target),
                    2 if membership.voters.len() > 2 || membership.learners.contains(&target) => {
                        MembershipChange::RemoveNode(target)
                    }
                    3 if !membership.is_member(target) => MembershipChange::AddVoter(target),
                    _ => continue,
                };
                let _ = raft.propose_membership_change(now, change);
                self.drain(at);
            }
        }
        if chaos && self.chance(self.options.transfer_per_mille) {
            let target = NodeId(1 + self.rng.below(self.options.nodes));
            for at in 0..self.nodes.len() {
                if let Some(raft) = self.nodes[at].raft.as_mut()
                    && raft.role() == Role::Leader
                {
                    let _ = raft.transfer_leadership(now, target);
                }
                self.drain(at);
            }
        }
        if self.chance(self.options.compact_per_mille) {
            let at = self.rng.below(self.options.nodes) as usize;
            let node = &mut self.nodes[at];
            let applied = LogIndex(node.state.len() as u64);
            if let Some(raft) = node.raft.as_mut()
                && applied > node.snapshot.index
                && !raft.status().awaiting_snapshot
            {
                // The state is durable at `applied`: it becomes the snapshot, and the log before it goes.
                let meta = raft.snapshot_meta(applied).expect("applied entries are committed and in memory");
                raft.compact(applied);
                node.synced_log.retain(|entry| entry.index > applied);
                node.written_log.retain(|entry| entry.index > applied);
                node.snapshot = meta;
            }
        }
    }

    fn deliver(&mut self, flight: InFlight) {
        let at = self.index_of(flight.to);
        let now = UnixMillis(self.now);
        if self.nodes[at].raft.is_none() {
            return;
        }
        match flight.payload {
            Payload::Message(message) => {
                if let Some(raft) = self.nodes[at].raft.as_mut() {
                    raft.handle_message(now, flight.from, message);
                }
            }
            Payload::Snapshot { leader_term, meta, state } => self.install(at, flight.from, leader_term, meta, state),
        }
        self.drain(at);
    }

    fn install(&mut self, at: usize, from: NodeId, leader_term: Term, meta: SnapshotMeta, state: Vec<Term>) {
        let seed = self.seed;
        if std::env::var("RAFT_TRACE").is_ok_and(|node| node == self.nodes[at].id.to_string()) {
            eprintln!("{} node {} install {meta:?} state {}", self.now, self.nodes[at].id, state.len());
        }
        let node = &mut self.nodes[at];
        let Some(raft) = node.raft.as_mut() else { return };
        if !raft.snapshot_needed(from, leader_term, &meta) {
            return;
        }
        assert_eq!(state.len() as u64, meta.index.0, "seed {seed}: snapshot state and metadata disagree");
        let old_state = std::mem::replace(&mut node.state, state);
        node.snapshot = meta.clone();
        node.synced_log.retain(|entry| entry.index > meta.index);
        node.written_log.retain(|entry| entry.index > meta.index);
        raft.handle_snapshot_installed(UnixMillis(self.now), from, leader_term, meta);
        self.stats.snapshots_installed += 1;
        self.installing = Some(old_state);
        self.drain(at);
        let old_state = self.installing.take().expect("set above");
        // Nothing this node applied may vanish without having been reported as discarded: what the
        // snapshot covers is checked now, what lies beyond it when applied again.
        let node = &mut self.nodes[at];
        for (offset, term) in old_state.iter().enumerate() {
            let index = LogIndex(offset as u64 + 1);
            if node.reported_lost.contains(&(index, *term)) {
                continue;
            }
            match node.state.get(offset) {
                Some(now) => assert_eq!(
                    now, term,
                    "seed {seed}: node {} lost applied entry {index} (term {term}) to a snapshot without reporting it",
                    node.id
                ),
                None => {
                    node.reapply.insert(index, *term);
                }
            }
        }
    }

    /// Performs a node's effects in order.
    fn drain(&mut self, at: usize) {
        let seed = self.seed;
        let now = self.now;
        loop {
            let effects: Vec<Effect> = match self.nodes[at].raft.as_mut() {
                Some(raft) => raft.drain_effects().collect(),
                None => return,
            };
            if effects.is_empty() {
                // The driver's contract, checked: what is durable matches the engine's term and vote.
                let node = &self.nodes[at];
                if let Some(raft) = node.raft.as_ref() {
                    let status = raft.status();
                    let durable = (node.hard_state.term, node.hard_state.voted_for);
                    assert_eq!(
                        durable,
                        (status.term, status.voted_for),
                        "seed {seed}: node {} hard state not persisted",
                        node.id
                    );
                }
                return;
            }
            for effect in effects {
                self.perform(at, effect, seed, now);
            }
        }
    }

    fn perform(&mut self, at: usize, effect: Effect, seed: u64, now: u64) {
        let id = self.nodes[at].id;
        if std::env::var("RAFT_TRACE").is_ok_and(|node| node == id.to_string())
            && !matches!(effect, Effect::Send { .. })
        {
            eprintln!("{now} node {id} state {} {effect:?}", self.nodes[at].state.len());
        }
        match effect {
            Effect::PersistHardState { term, voted_for } => {
                let node = &mut self.nodes[at];
                assert!(term >= node.hard_state.term, "seed {seed}: node {id} term went back");
                if term == node.hard_state.term && node.hard_state.voted_for.is_some() {
                    assert_eq!(
                        node.hard_state.voted_for, voted_for,
                        "seed {seed}: node {id} voted twice in term {term}"
                    );
                }
                node.hard_state = HardState { term, voted_for };
            }
            Effect::AppendLog { entries } => {
                let node = &mut self.nodes[at];
                for entry in entries {
                    let expected = node.written_log.last().map_or(node.snapshot.index, |last| last.index).next();
                    assert_eq!(entry.index, expected, "seed {seed}: node {id} appended out of order");
                    node.written_log.push(entry);
                }
            }
            Effect::TruncateLog { from, discarded, discards_committed } => {
                self.stats.truncations += 1;
                let node = &mut self.nodes[at];
                if discards_committed {
                    assert!(
                        self.options.durability.can_lose_committed(),
                        "seed {seed}: node {id} discarded committed entries under {}",
                        self.options.durability
                    );
                    self.stats.committed_discards += 1;
                }
                // While a snapshot installs, the state is the snapshot's already: check the one it replaced.
                let state = self.installing.as_ref().unwrap_or(&node.state);
                for entry in &discarded {
                    let applied = state.get(entry.index.0 as usize - 1) == Some(&entry.term);
                    assert!(
                        !applied || discards_committed,
                        "seed {seed}: node {id} discarded applied entry {} without saying it was committed",
                        entry.index
                    );
                }
                if discards_committed {
                    // Every state entry from `from` on is reported as (possibly) lost.
                    let lost: Vec<(LogIndex, Term)> = state
                        .iter()
                        .enumerate()
                        .skip(usize::try_from(from.0 - 1).expect("small"))
                        .map(|(offset, term)| (LogIndex(offset as u64 + 1), *term))
                        .collect();
                    node.reported_lost.extend(lost);
                }
                node.written_log.retain(|entry| entry.index < from);
            }
            Effect::StateDiverged { kept } => {
                assert!(
                    self.options.durability.can_lose_committed(),
                    "seed {seed}: node {id}'s state diverged under {}",
                    self.options.durability
                );
                // The driver stops trusting its state; this one rolls back to the kept prefix (a real
                // one waits for the leader's snapshot, which replaces it anyway).
                let node = &mut self.nodes[at];
                let kept = usize::try_from(kept.0).expect("small").min(node.state.len());
                for (offset, term) in node.state.iter().enumerate().skip(kept) {
                    assert!(
                        node.reported_lost.contains(&(LogIndex(offset as u64 + 1), *term)),
                        "seed {seed}: node {id}'s state diverged at {} without a TruncateLog reporting it",
                        offset + 1
                    );
                }
                node.state.truncate(kept);
            }
            Effect::Send { to, message } => {
                if self.cut.contains(&(id, to)) || self.chance(self.options.drop_per_mille) {
                    return;
                }
                let copies = if self.chance(self.options.duplicate_per_mille) { 2 } else { 1 };
                for _ in 0..copies {
                    self.enqueue(id, to, Payload::Message(message.clone()));
                }
            }
            Effect::Committed { index } => self.apply(at, index),
            Effect::ReadReady { read_id, index } => {
                self.stats.reads_ready += 1;
                let (node, required) = self.reads.remove(&read_id).expect("a read asked for");
                assert_eq!(node, id, "seed {seed}: read answered by another node");
                if !self.options.durability.can_lose_committed() {
                    assert!(
                        index >= required,
                        "seed {seed}: node {id} served read {read_id} at {index}, below the commit index {required} seen before it was asked (stale read)"
                    );
                }
            }
            Effect::ReadFailed { read_id, .. } => {
                self.reads.remove(&read_id).expect("a read asked for");
            }
            Effect::RoleChanged { role, term, .. } => {
                if role == Role::Leader {
                    self.stats.elections += 1;
                    let leader = *self.leaders.entry(term).or_insert(id);
                    assert_eq!(leader, id, "seed {seed}: two leaders in term {term}: {leader} and {id} (at {now})");
                }
            }
            Effect::SendSnapshot { to, leader_term, .. } => {
                let node = &self.nodes[at];
                let applied = LogIndex(node.state.len() as u64);
                let raft = node.raft.as_ref().expect("running");
                let meta = raft.snapshot_meta(applied).unwrap_or_else(|| {
                    panic!(
                        "seed {seed}: node {id} has no metadata for its applied index {applied}: {:?}",
                        raft.status()
                    )
                });
                let state = node.state.clone();
                if !self.cut.contains(&(id, to)) && !self.chance(self.options.drop_per_mille) {
                    self.enqueue(id, to, Payload::Snapshot { leader_term, meta, state });
                }
            }
        }
    }

    fn enqueue(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        let latency = 1 + self.rng.below(self.options.latency_ms_max);
        self.sequence += 1;
        self.network.push(InFlight { deliver_at: self.now + latency, sequence: self.sequence, from, to, payload });
    }

    /// Applies committed entries in order, checking them against what every other node committed.
    fn apply(&mut self, at: usize, index: LogIndex) {
        let seed = self.seed;
        let strict = !self.options.durability.can_lose_committed();
        let node = &mut self.nodes[at];
        let raft = node.raft.as_ref().expect("running");
        assert_eq!(index, raft.commit_index(), "seed {seed}: Committed is not the commit index");
        while (node.state.len() as u64) < index.0 {
            let next = LogIndex(node.state.len() as u64 + 1);
            let entry = raft.entries(next, next).pop().unwrap_or_else(|| {
                panic!("seed {seed}: node {} committed {next} but no longer has it: {:?}", node.id, raft.status())
            });
            node.state.push(entry.term);
            if let Some(before) = node.reapply.remove(&next) {
                assert!(
                    before == entry.term || node.reported_lost.contains(&(next, before)),
                    "seed {seed}: node {} lost applied entry {next} (term {before}) without reporting it",
                    node.id
                );
            }
            if strict {
                let agreed = *self.committed.entry(next).or_insert(entry.term);
                assert_eq!(
                    agreed, entry.term,
                    "seed {seed}: node {} committed entry {next} with term {}, another node with term {agreed}",
                    node.id, entry.term
                );
            }
            self.commit_high = self.commit_high.max(next);
            self.stats.committed_max = self.stats.committed_max.max(next.0);
        }
    }

    fn check_leaders(&self) {
        for node in &self.nodes {
            if let Some(raft) = node.raft.as_ref()
                && raft.role() == Role::Leader
            {
                let leader = self.leaders.get(&raft.term()).copied();
                assert_eq!(leader, Some(node.id), "seed {}: two leaders in term {}", self.seed, raft.term());
            }
        }
    }
}

/// Runs `count` seeds from `first` (`RAFT_SEED_COUNT` overrides the count, for long soaks).
fn run_seeds(first: u64, count: u64, durability: Durability, membership_changes: bool) -> Stats {
    let count = std::env::var("RAFT_SEED_COUNT").map_or(count, |text| text.parse().expect("a count"));
    let mut total = Stats::default();
    for seed in first..first + count {
        // The engine's own assertions do not know the seed: name it when one fires.
        let run = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed, durability, membership_changes);
            sim.run();
            sim
        });
        let sim = match run {
            Ok(sim) => sim,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                    .unwrap_or_default();
                panic!("seed {seed} ({durability}, membership changes {membership_changes}): {message}");
            }
        };
        total.elections += sim.stats.elections;
        total.committed_max = total.committed_max.max(sim.stats.committed_max);
        total.reads_ready += sim.stats.reads_ready;
        total.snapshots_installed += sim.stats.snapshots_installed;
        total.truncations += sim.stats.truncations;
        total.committed_discards += sim.stats.committed_discards;
        total.crashes += sim.stats.crashes;
    }
    total
}

#[test]
fn randomized_quorum_schedules_are_safe_and_converge() {
    let stats = run_seeds(0, 300, Durability::Quorum, false);
    // The schedules must actually exercise the paths they claim to.
    assert!(stats.snapshots_installed > 0 && stats.truncations > 0 && stats.reads_ready > 0, "{stats:?}");
}

#[test]
fn randomized_all_schedules_are_safe_and_converge() {
    run_seeds(1_000_000, 100, Durability::All, false);
}

#[test]
fn randomized_async_schedules_never_lose_committed_entries_silently() {
    let stats = run_seeds(2_000_000, 150, Durability::Async, false);
    assert!(stats.committed_discards > 0, "no async failover discarded anything: {stats:?}");
}

#[test]
fn randomized_semi_sync_schedules_never_lose_committed_entries_silently() {
    run_seeds(3_000_000, 100, Durability::SemiSync(1), false);
}

#[test]
fn randomized_membership_changes_are_safe_and_converge() {
    run_seeds(4_000_000, 150, Durability::Quorum, true);
}

#[test]
fn one_seed() {
    let Ok(seed) = std::env::var("RAFT_SEED") else { return };
    let durability =
        std::env::var("RAFT_DURABILITY").map_or(Durability::Quorum, |text| text.parse().expect("durability"));
    let membership = std::env::var("RAFT_MEMBERSHIP").is_ok();
    Sim::new(seed.parse().expect("seed"), durability, membership).run();
}
