//! The simulated world: three DCs, the links between them, clients, faults, and the driver that
//! feeds each DC's `MultiLeaderState` with `MlEntry` entries exactly as the node does.
//!
//! A DC's Raft group is modelled as linearizable and durable: an entry is "proposed" by the DC's
//! leader and applied a few milliseconds later, in proposal order; the applied state survives a
//! crash. A crash loses only what is volatile: the links' cursors and the messages in flight to or
//! from the DC, and the proposals not yet applied (each either lost, or committed without its
//! client hearing back).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use chorus_core::leaderless::Hlc;
use chorus_core::multileader::{Change, ChangeOp, DcId, MlEntry, MultiLeaderState, OriginVector, Topology};
use chorus_core::state::StoredValue;
use chorus_core::types::{LogIndex, NodeId, UnixMillis};

use super::{MlKnobs, MlSimOptions, MlStats};
use crate::SimRng;

/// Keys only `Set`/`Delete` write: the lost-write checker looks at these.
pub const REGISTER_KEYS: [&str; 3] = ["r0", "r1", "r2"];
/// Keys only `Add` writes: their value must equal the sum of the increments.
pub const COUNTER_KEYS: [&str; 2] = ["c0", "c1"];
/// A key every kind of op writes (checked by convergence and the materialized view).
pub const MIXED_KEY: &str = "m";

/// What happened to a client's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    /// Applied at its DC and acknowledged, as change `(origin, seq)`.
    Acknowledged(DcId, u64),
    /// Committed but the client never heard (its DC crashed between commit and reply).
    CommittedUnacknowledged(DcId, u64),
    /// Lost with its DC's leader before commit (never acknowledged).
    Lost,
}

#[derive(Debug, Clone)]
pub struct ClientWrite {
    pub dc: DcId,
    /// One op, or two for an MSET.
    pub ops: Vec<ChangeOp>,
    pub invoked_ms: u64,
    pub outcome: Outcome,
}

struct Proposal {
    apply_ms: u64,
    entry: MlEntry,
    /// Index into `writes` for a client write.
    write: Option<usize>,
}

pub struct Dc {
    pub id: DcId,
    pub state: MultiLeaderState,
    pub up: bool,
    down_until_ms: u64,
    hlc: Hlc,
    clock_offset_ms: i64,
    log_index: u64,
    proposals: VecDeque<Proposal>,
    /// The key-value view built from `apply`'s `Materialize` output, as the node's MemoryState is.
    pub materialized: BTreeMap<Bytes, StoredValue>,
    /// The checker's own record of which changes this DC applied (from the observed applies and
    /// the bootstraps delivered), to check exactly-once and causal order from the outside.
    pub seen: OriginVector,
}

struct Link {
    /// The next journal position to send after (volatile: rebuilt from the receiver's
    /// `upstream_position` when the link comes up).
    cursor: u64,
    in_flight: VecDeque<(u64, MlEntry)>,
    last_arrival_ms: u64,
}

pub struct World {
    pub options: MlSimOptions,
    pub knobs: MlKnobs,
    rng: SimRng,
    pub now_ms: u64,
    pub topology: Topology,
    pub dcs: Vec<Dc>,
    links: BTreeMap<(DcId, DcId), Link>,
    /// Symmetric partitions (smaller id first) and when each heals.
    partitions: BTreeMap<(DcId, DcId), u64>,
    /// Wrong failure-detector verdicts: `(from, to)` = `from` takes the live `to` for dead, until.
    suspicions: BTreeMap<(DcId, DcId), u64>,
    pub writes: Vec<ClientWrite>,
    /// Every change applied at its origin, by id (local applies only: what the clients caused).
    pub registry: BTreeMap<(DcId, u64), Change>,
    pub stats: MlStats,
    pub failures: Vec<String>,
    pub trace: Option<Vec<String>>,
    /// Copies of sent messages that reach the receiving leader again much later, whatever became
    /// of the link meanwhile: `(when, receiver, position the batch continues from, entry)`.
    stale: Vec<(u64, DcId, u64, MlEntry)>,
    clients_on: bool,
    faults_on: bool,
}

impl World {
    pub fn new(seed: u64, options: &MlSimOptions) -> World {
        let mut rng = SimRng::new(seed);
        let knobs = MlKnobs::draw(&mut rng, options);
        let ids: Vec<DcId> = (1..=u16::try_from(options.dcs).unwrap_or(3)).map(DcId).collect();
        let topology = knobs.topology.clone();
        let dcs = ids
            .iter()
            .zip(&knobs.clock_offsets_ms)
            .map(|(&id, &clock_offset_ms)| {
                let mut state = MultiLeaderState::new(id, knobs.policy, knobs.journal_entries_max);
                if let Some(bug) = options.planted_bug {
                    state.plant(bug);
                }
                Dc {
                    id,
                    state,
                    up: true,
                    down_until_ms: 0,
                    hlc: Hlc::new(NodeId(u64::from(id.0))),
                    clock_offset_ms,
                    log_index: 0,
                    proposals: VecDeque::new(),
                    materialized: BTreeMap::new(),
                    seen: OriginVector::new(),
                }
            })
            .collect();
        World {
            options: options.clone(),
            knobs,
            rng,
            now_ms: 0,
            topology,
            dcs,
            links: BTreeMap::new(),
            partitions: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            writes: Vec::new(),
            registry: BTreeMap::new(),
            stats: MlStats::default(),
            failures: Vec::new(),
            trace: options.trace.then(Vec::new),
            stale: Vec::new(),
            clients_on: true,
            faults_on: true,
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>6} {}", self.now_ms, line()));
        }
    }

    pub fn ids(&self) -> Vec<DcId> {
        self.dcs.iter().map(|dc| dc.id).collect()
    }

    fn index(&self, id: DcId) -> usize {
        self.dcs.iter().position(|dc| dc.id == id).unwrap_or(0)
    }

    fn partitioned(&self, a: DcId, b: DcId) -> bool {
        self.partitions.contains_key(&(a.min(b), a.max(b)))
    }

    /// Whether `to` can be reached from `from` now (up and not cut off).
    fn reachable(&self, from: DcId, to: DcId) -> bool {
        self.dcs[self.index(to)].up && !self.partitioned(from, to)
    }

    /// Whether `from`'s failure detector takes `to` for alive: reachable, unless wrongly suspected.
    fn seems_alive(&self, from: DcId, to: DcId) -> bool {
        to == from || (self.reachable(from, to) && !self.suspicions.contains_key(&(from, to)))
    }

    /// The whole run: the fault phase, healing, then convergence rounds.
    pub fn run(&mut self) {
        while self.now_ms < self.options.safety_ms {
            self.step();
        }
        self.heal();
        self.clients_on = false;
        self.faults_on = false;
        let rounds_max = self.options.converge_rounds_max;
        for round in 0..=rounds_max {
            if self.converged() {
                self.stats.converge_rounds = round;
                return;
            }
            for _ in 0..super::CONVERGE_ROUND_MS {
                self.step();
            }
        }
        let applied: Vec<String> = self.dcs.iter().map(|dc| format!("{}: {}", dc.id, dc.state.applied())).collect();
        self.failures.push(format!(
            "DCs did not converge within {rounds_max} rounds of {} ms after healing (applied: {})",
            super::CONVERGE_ROUND_MS,
            applied.join(", ")
        ));
    }

    /// Every DC up, nothing pending, the same applied vector and identical key states.
    pub fn converged(&self) -> bool {
        let Some(first) = self.dcs.first() else { return true };
        self.dcs.iter().all(|dc| {
            dc.up
                && dc.proposals.is_empty()
                && dc.state.applied() == first.state.applied()
                && dc.state.keys() == first.state.keys()
                && dc.state.stats().held_back == 0
        })
    }

    fn heal(&mut self) {
        self.partitions.clear();
        self.suspicions.clear();
        for i in 0..self.dcs.len() {
            if !self.dcs[i].up {
                self.restart(i);
            }
        }
        self.log(|| "healed: partitions gone, every DC up".to_owned());
    }

    fn step(&mut self) {
        self.now_ms += 1;
        if self.faults_on {
            self.inject_faults();
        }
        for i in 0..self.dcs.len() {
            if !self.dcs[i].up && self.now_ms >= self.dcs[i].down_until_ms {
                self.restart(i);
            }
        }
        if self.clients_on {
            self.clients();
        }
        self.deliver();
        for i in 0..self.dcs.len() {
            self.apply_due(i);
        }
        self.update_links();
        self.pump();
    }

    fn inject_faults(&mut self) {
        let now = self.now_ms;
        let healed: Vec<(DcId, DcId)> =
            self.partitions.iter().filter(|&(_, &until)| until <= now).map(|(&pair, _)| pair).collect();
        for pair in healed {
            self.partitions.remove(&pair);
            self.log(|| format!("partition {}-{} healed", pair.0, pair.1));
        }
        if self.rng.chance(self.knobs.partition_per_million, 1_000_000) {
            let ids = self.ids();
            let a = ids[self.rng.below(ids.len() as u64) as usize];
            let b = ids[self.rng.below(ids.len() as u64) as usize];
            if a != b {
                let until = now + 20 + self.rng.below(600);
                self.partitions.insert((a.min(b), a.max(b)), until);
                self.stats.faults_injected += 1;
                self.log(|| format!("partition {a}-{b} until {until}"));
            }
        }
        self.suspicions.retain(|_, until| *until > now);
        if self.rng.chance(self.knobs.suspicion_per_million, 1_000_000) {
            let ids = self.ids();
            let from = ids[self.rng.below(ids.len() as u64) as usize];
            let to = ids[self.rng.below(ids.len() as u64) as usize];
            if from != to {
                let until = now + 50 + self.rng.below(450);
                self.suspicions.insert((from, to), until);
                self.stats.faults_injected += 1;
                self.log(|| format!("{from} wrongly suspects {to} until {until}"));
            }
        }
        if self.rng.chance(self.knobs.crash_per_million, 1_000_000) {
            let i = self.rng.below(self.dcs.len() as u64) as usize;
            if self.dcs[i].up {
                let down_ms = if self.rng.chance(1, 3) { 0 } else { 10 + self.rng.below(400) };
                self.crash(i, down_ms);
            }
        }
    }

    /// The DC's leader fails: links to and from it close, unapplied proposals are lost or commit
    /// without a reply. `down_ms` 0 is a leader change (a new leader takes over at once).
    fn crash(&mut self, i: usize, down_ms: u64) {
        let id = self.dcs[i].id;
        self.stats.faults_injected += 1;
        self.stats.crashes += 1;
        self.log(|| format!("{id} crash, down for {down_ms} ms"));
        // A prefix of the unapplied proposals had committed: the next leader applies them, and
        // their clients never hear back. The rest are lost. (Only a prefix: a later Remote entry
        // committed without an earlier one would move the upstream position past changes never
        // applied.)
        let proposals: Vec<Proposal> = self.dcs[i].proposals.drain(..).collect();
        let committed = self.rng.below(proposals.len() as u64 + 1) as usize;
        for (n, proposal) in proposals.into_iter().enumerate() {
            if n < committed {
                self.apply_entry(i, proposal.entry, proposal.write, false);
            } else if let Some(write) = proposal.write {
                self.writes[write].outcome = Outcome::Lost;
            }
        }
        self.links.retain(|&(from, to), _| from != id && to != id);
        self.dcs[i].up = false;
        self.dcs[i].down_until_ms = self.now_ms + down_ms;
        if down_ms == 0 {
            self.restart(i);
        }
    }

    fn restart(&mut self, i: usize) {
        let dc = &mut self.dcs[i];
        dc.up = true;
        // The new leader's clock resumes above every timestamp the DC applied.
        dc.hlc = Hlc::resumed(NodeId(u64::from(dc.id.0)), u64::MAX / 4, dc.state.last_timestamp());
        let id = dc.id;
        self.log(|| format!("{id} up"));
    }

    fn physical_ms(&self, i: usize) -> UnixMillis {
        let offset = self.dcs[i].clock_offset_ms;
        UnixMillis(1_000_000u64.saturating_add_signed(offset) + self.now_ms)
    }

    fn clients(&mut self) {
        for i in 0..self.dcs.len() {
            if !self.dcs[i].up || !self.rng.chance(self.knobs.write_per_mille, 1000) {
                continue;
            }
            let mut ops = vec![self.draw_op()];
            if self.rng.chance(1, 8) {
                // An MSET: two register writes in one change, sometimes to the same key.
                ops = vec![self.draw_set(), self.draw_set()];
            }
            let physical = self.physical_ms(i);
            let timestamp = self.dcs[i].hlc.now(physical);
            let dc = self.dcs[i].id;
            self.log(|| format!("{dc} client {ops:?}"));
            self.writes.push(ClientWrite { dc, ops: ops.clone(), invoked_ms: self.now_ms, outcome: Outcome::Pending });
            self.stats.writes_invoked += 1;
            let write = Some(self.writes.len() - 1);
            self.propose(i, MlEntry::Local { timestamp, ops }, write);
        }
    }

    fn draw_set(&mut self) -> ChangeOp {
        let key = Bytes::from(REGISTER_KEYS[self.rng.below(REGISTER_KEYS.len() as u64) as usize]);
        ChangeOp::Set {
            key,
            value: Bytes::from(format!("v{}.{}", self.writes.len(), self.rng.below(10))),
            expire_at: None,
        }
    }

    fn draw_op(&mut self) -> ChangeOp {
        let value = Bytes::from(format!("v{}", self.writes.len()));
        match self.rng.below(10) {
            0..=3 => {
                let key = Bytes::from(REGISTER_KEYS[self.rng.below(REGISTER_KEYS.len() as u64) as usize]);
                if self.rng.chance(1, 5) {
                    ChangeOp::Delete { key }
                } else {
                    ChangeOp::Set { key, value, expire_at: None }
                }
            }
            4..=7 => {
                let key = Bytes::from(COUNTER_KEYS[self.rng.below(COUNTER_KEYS.len() as u64) as usize]);
                ChangeOp::Add { key, delta: i64::try_from(self.rng.below(21)).unwrap_or(0) - 10 }
            }
            _ => {
                let key = Bytes::from(MIXED_KEY);
                match self.rng.below(3) {
                    0 => ChangeOp::Set { key, value: Bytes::from(self.rng.below(100).to_string()), expire_at: None },
                    1 => ChangeOp::Delete { key },
                    _ => ChangeOp::Add { key, delta: 1 },
                }
            }
        }
    }

    fn propose(&mut self, i: usize, entry: MlEntry, write: Option<usize>) {
        let apply_ms = self.now_ms + 1 + self.rng.below(self.knobs.raft_ms_max);
        // Entries apply in proposal order.
        let apply_ms = self.dcs[i].proposals.back().map_or(apply_ms, |last| apply_ms.max(last.apply_ms));
        self.dcs[i].proposals.push_back(Proposal { apply_ms, entry, write });
    }

    fn apply_due(&mut self, i: usize) {
        while self.dcs[i].up && self.dcs[i].proposals.front().is_some_and(|proposal| proposal.apply_ms <= self.now_ms) {
            if let Some(proposal) = self.dcs[i].proposals.pop_front() {
                self.apply_entry(i, proposal.entry, proposal.write, true);
            }
        }
    }

    /// Applies one committed entry at DC `i` through `apply_observed`, checking every change it
    /// applies from the outside.
    fn apply_entry(&mut self, i: usize, entry: MlEntry, write: Option<usize>, reply: bool) {
        let id = self.dcs[i].id;
        self.dcs[i].log_index += 1;
        let index = LogIndex(self.dcs[i].log_index);
        let mut applied: Vec<Change> = Vec::new();
        let materialized = self.dcs[i].state.apply_observed(index, &entry, &mut |change| applied.push(change.clone()));
        let is_local = matches!(entry, MlEntry::Local { .. });
        // A bootstrap merges first, then releases held-back changes: the merged changes count as
        // applied before the released ones are checked.
        if let MlEntry::Bootstrap { state, from, through } = &entry {
            self.stats.bootstraps_applied += 1;
            let merged = state.applied.clone();
            self.dcs[i].seen.join(&merged);
            let own = self.dcs[i].state.applied().get(id);
            if self.dcs[i].seen.get(id) > own {
                self.dcs[i].seen.set(id, own);
            }
            self.log(|| format!("{id} bootstrap from {from} through {through}: {merged}"));
        }
        for change in &applied {
            self.check_applied(i, change, is_local);
        }
        for item in materialized {
            match item.value {
                Some(value) => self.dcs[i].materialized.insert(item.key, value),
                None => self.dcs[i].materialized.remove(&item.key),
            };
        }
        if is_local {
            let change = applied.first().cloned();
            if let (Some(change), Some(write)) = (change, write) {
                self.registry.insert(change.id(), change.clone());
                self.writes[write].outcome = if reply {
                    self.stats.writes_acknowledged += 1;
                    Outcome::Acknowledged(change.origin, change.seq)
                } else {
                    Outcome::CommittedUnacknowledged(change.origin, change.seq)
                };
            }
        }
    }

    /// The outside view of one applied change: exactly once per DC, never back at its origin, and
    /// only after everything it depends on.
    fn check_applied(&mut self, i: usize, change: &Change, is_local: bool) {
        let id = self.dcs[i].id;
        self.stats.changes_applied += 1;
        let seen = &self.dcs[i].seen;
        let mut found = Vec::new();
        if change.origin == id && !is_local {
            found.push(format!("{id} applied its own change {:?} again (it looped back)", change.id()));
        }
        if seen.covers(change.origin, change.seq) {
            found.push(format!("{id} applied change {:?} a second time", change.id()));
        }
        if !seen.descends(&change.deps) {
            found.push(format!(
                "{id} applied change {:?} with deps {} before them (applied: {})",
                change.id(),
                change.deps,
                seen
            ));
        }
        let seq = seen.get(change.origin).max(change.seq);
        self.dcs[i].seen.set(change.origin, seq);
        let at = self.now_ms;
        self.log(|| format!("{id} applied {:?} deps {} ts {}", change.id(), change.deps, change.timestamp));
        for failure in found {
            self.failures.push(format!("at {at} ms: {failure}"));
        }
    }

    /// Messages whose time has come reach the receiving DC's leader, which proposes them.
    fn deliver(&mut self) {
        let now = self.now_ms;
        let mut arrived = Vec::new();
        for (&(from, to), link) in &mut self.links {
            while link.in_flight.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, entry)) = link.in_flight.pop_front() {
                    arrived.push((from, to, entry));
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.stale).into_iter().partition(|(at, ..)| *at <= now);
        self.stale = later;
        for (_, to, since, entry) in due {
            let receiver = &self.dcs[self.index(to)];
            // The contiguity check the node's link must make: a batch is proposed only if it
            // continues from what the receiver applied (a stale batch from an old connection may
            // follow a gap; applying it would move `upstream_position` past changes never applied).
            let continues = match &entry {
                MlEntry::Remote { from, .. } => {
                    self.options.stale_batch_check_off || receiver.state.continues(*from, since)
                }
                _ => true,
            };
            if receiver.up && continues {
                self.stats.stale_replays += 1;
                arrived.push((to, to, entry));
            }
        }
        for (from, to, entry) in arrived {
            let i = self.index(to);
            self.log(|| format!("{to} receives from {from}: {}", describe(&entry)));
            self.propose(i, entry, None);
        }
    }

    /// Opens the links the topology wants (resuming from the receiver's upstream position) and
    /// closes the others (their messages in flight are lost, as with a closed TCP connection).
    fn update_links(&mut self) {
        let ids = self.ids();
        let mut wanted = BTreeSet::new();
        for &from in &ids {
            if !self.dcs[self.index(from)].up {
                continue;
            }
            let alive = |dc: DcId| self.seems_alive(from, dc);
            for to in self.topology.routes(from, &ids, &alive).send_to {
                if self.reachable(from, to) {
                    wanted.insert((from, to));
                }
            }
        }
        let closing: Vec<(DcId, DcId)> = self.links.keys().filter(|pair| !wanted.contains(pair)).copied().collect();
        for pair in closing {
            if let Some(link) = self.links.remove(&pair) {
                self.stats.messages_lost += link.in_flight.len() as u64;
                self.log(|| format!("link {}->{} closed, {} in flight lost", pair.0, pair.1, link.in_flight.len()));
            }
        }
        for (from, to) in wanted {
            if !self.links.contains_key(&(from, to)) {
                // The handshake: the receiver says where it applied through.
                let cursor = self.dcs[self.index(to)].state.upstream_position(from);
                if !self.topology.routes(from, &ids, &|_| true).send_to.contains(&to) {
                    // Not a link of the healthy topology: routing around a dead forwarder.
                    self.stats.route_around_links += 1;
                }
                self.links.insert((from, to), Link { cursor, in_flight: VecDeque::new(), last_arrival_ms: 0 });
                self.log(|| format!("link {from}->{to} up, resuming after position {cursor}"));
            }
        }
    }

    /// Each link sends what its sender's journal has past its cursor, a batch at a time.
    fn pump(&mut self) {
        let ids = self.ids();
        let pairs: Vec<(DcId, DcId)> = self.links.keys().copied().collect();
        for (from, to) in pairs {
            let sender = self.index(from);
            let Some(link) = self.links.get(&(from, to)) else { continue };
            if link.in_flight.len() >= self.knobs.window || link.cursor >= self.dcs[sender].state.journal_last() {
                continue;
            }
            let cursor = link.cursor;
            // An "echo" sender ships everything (as a misconfigured or older peer would): the
            // receiver must not trust its peers' filtering.
            let echo = self.rng.chance(self.knobs.echo_per_mille, 1000);
            let alive = |dc: DcId| self.seems_alive(from, dc);
            let topology = &self.topology;
            let forward = |origin: DcId| echo || topology.forwards(from, origin, to, &ids, &alive);
            let Some((entry, next)) = self.dcs[sender].state.outgoing(cursor, self.knobs.batch_max, &forward) else {
                continue;
            };
            let delay = self.delay(from, to);
            let Some(link) = self.links.get_mut(&(from, to)) else { continue };
            let arrival = (self.now_ms + delay).max(link.last_arrival_ms);
            link.last_arrival_ms = arrival;
            link.cursor = next;
            if self.faults_on && self.rng.chance(self.knobs.stale_replay_per_mille, 1000) {
                let at = self.now_ms + 100 + self.rng.below(1000);
                self.stale.push((at, to, cursor, entry.clone()));
            }
            link.in_flight.push_back((arrival, entry));
            self.stats.messages_sent += 1;
        }
    }

    fn delay(&mut self, from: DcId, to: DcId) -> u64 {
        let base = self.knobs.latency_ms[(usize::from(from.0) + usize::from(to.0)) % self.knobs.latency_ms.len()];
        if self.rng.chance(self.knobs.long_delay_per_mille, 1000) {
            base + self.rng.below(self.knobs.long_delay_ms_max)
        } else {
            base + self.rng.below(5)
        }
    }
}

fn describe(entry: &MlEntry) -> String {
    match entry {
        MlEntry::Local { ops, .. } => format!("local {ops:?}"),
        MlEntry::Remote { through, changes, .. } => {
            let ids: Vec<(DcId, u64)> = changes.iter().map(Change::id).collect();
            format!("remote through {through}: {ids:?}")
        }
        MlEntry::Bootstrap { through, state, .. } => format!("bootstrap through {through} ({})", state.applied),
    }
}
