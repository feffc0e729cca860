//! The simulated cluster: N replicas of the real Raft engine (`chorus_core::raft`), each with a
//! simulated disk, clock and state machine, joined by a simulated network, driven by simulated
//! clients, all in one thread and one event queue. Every random choice comes from the run's one
//! [`SimRng`], and events at the same millisecond run in the order they were scheduled, so a seed
//! replays bit for bit.
//!
//! ```text
//!   clients ──Request──▶ node driver ──propose / read_index──▶ Raft ──effects──▶ node driver
//!      ▲                     │  PersistHardState, AppendLog, TruncateLog ──▶ disk queue ──(delay)──▶
//!      │                     │        durable log + hard state ──handle_persisted──▶ Raft
//!      └──────Reply──────────┤  Send, SendSnapshot ──▶ network (delay, loss, duplication, partitions)
//!                            │  Committed ──▶ apply to MemoryState ──▶ acknowledge writes, serve reads
//!                            └  ReadReady ──▶ serve the read once applied that far
//! ```
//!
//! The node driver here plays the part the server will play: it resolves client commands into plain
//! puts against the latest view of the leader's log (the log is logical), proposes them, and
//! acknowledges a write once the entry it proposed is applied at its index with its term. Messages to
//! other nodes wait until every hard state written before them is durable (the engine's contract);
//! everything else is performed at once. A crash loses the disk queue, the state machine and every
//! waiting reply; the node restarts from its durable hard state, log and last checkpoint.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use chorus_core::log::{EntryPayload, LogEntry, WriteOp};
use chorus_core::raft::{
    AppendOutcome, Effect, HardState, Membership, MembershipChange, Message, ProposeError, Raft, RaftConfig,
    RestoredState, Role, SnapshotMeta,
};
use chorus_core::state::{MemoryState, StateView};
use chorus_core::types::{LogIndex, NodeId, Term, UnixMillis};

use crate::SimRng;
use crate::checker::safety::{AppliedLog, ElectionSafety, check_prefixes};
use crate::checker::session::{SessionChecker, SessionEvent};
use crate::history::{Command, History, OpId, Outcome, Output};
use crate::options::{DriverBug, Knobs, SimOptions};

/// Every node's clock reads this plus the simulated time (plus its offset and drift).
const CLOCK_BASE_MS: u64 = 1_700_000_000_000;
/// Nodes tick this often (simulated).
const TICK_MS: u64 = 10;
/// Most failure lines a run keeps.
const FAILURES_MAX: usize = 20;
/// A client that is refused waits this long before asking again.
const RETRY_BACKOFF_MS_MAX: u64 = 30;
/// A replica waits this long (simulated) to have applied a session read's token, then answers
/// with an error (the node's follower-read timeout).
const SESSION_WAIT_MS: u64 = 400;
/// A replayed message arrives at least this long after it was sent.
const REPLAY_MS_MIN: u64 = 150;
/// With membership faults, this many spare nodes start outside the group, ready to join.
const SPARE_NODES: usize = 2;

/// Counters for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    pub sim_ms: u64,
    pub faults_injected: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub clock_jumps: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    /// Peer messages delivered again long after they were sent (stale replays).
    pub messages_replayed: u64,
    pub elections: u64,
    pub max_term: u64,
    pub entries_committed: u64,
    pub snapshots_installed: u64,
    pub checkpoints: u64,
    pub truncations: u64,
    /// `TruncateLog { discards_committed: true }` effects (async / semi-sync failovers).
    pub committed_discards: u64,
    pub writes_acknowledged: u64,
    /// Writes acknowledged to a client whose entry is not in the final log (async / semi-sync).
    pub acknowledged_writes_lost: u64,
    pub reads_served: u64,
    /// Membership changes proposed (accepted by a leader), and refused by one.
    pub membership_changes: u64,
    pub membership_refused: u64,
    /// Nodes whose disk was wiped before they joined again (a fresh `RestoredState::joining()`).
    pub nodes_wiped: u64,
    /// Session (follower) reads served, and given up (by the replica's wait or the client).
    pub session_reads_served: u64,
    pub session_reads_failed: u64,
    /// When the liveness phase first saw a leader, and a write acknowledged, after healing.
    pub leader_after_heal_ms: Option<u64>,
    pub write_after_heal_ms: Option<u64>,
}

/// A node or a client, as a network endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Node(usize),
    Client(usize),
}

/// What a client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientReply {
    /// Done; a write says the index of its entry (the client's next session token).
    Ok(Output, Option<LogIndex>),
    /// A session read served from the replica's state applied up to `index`.
    SessionRead { value: Option<u64>, index: LogIndex },
    /// Certainly not performed (the entry proposed for it lost its place in the log).
    Fail,
    /// Not performed here, nothing proposed: ask `hint` (or anyone).
    Retry(Option<NodeId>),
}

/// A snapshot of a leader's state, streamed whole.
#[derive(Debug, Clone)]
struct SnapshotTransfer {
    leader_term: Term,
    meta: SnapshotMeta,
    /// Shared, never changed: the receiver copies it once into its live state.
    state: Rc<MemoryState>,
    /// The term of every entry the state applied (for the state machine safety checks).
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Payload {
    Peer(Message),
    Snapshot(Box<SnapshotTransfer>),
    Request {
        request: u64,
        key: u64,
        command: Command,
    },
    /// A follower read with the client's session token.
    SessionRead {
        request: u64,
        key: u64,
        token: LogIndex,
    },
    Reply {
        request: u64,
        reply: ClientReply,
    },
}

#[derive(Debug)]
enum Event {
    Deliver { from: Endpoint, to: Endpoint, payload: Payload },
    Tick { node: usize, incarnation: u64 },
    Disk { node: usize, incarnation: u64 },
    Restart { node: usize, incarnation: u64 },
    Client { client: usize, wake: u64 },
    Fault,
    Membership,
    Heal { epoch: u64 },
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    sequence: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

/// What the disk holds: survives crashes.
#[derive(Debug, Clone)]
struct Disk {
    hard_state: HardState,
    /// The last checkpoint of the state (or installed snapshot), and the terms it applied.
    snapshot: SnapshotMeta,
    /// Shared with snapshot transfers (a state is 16384 slot maps: copies are what cost most).
    snapshot_state: Rc<MemoryState>,
    snapshot_terms: Vec<Term>,
    /// The log after the snapshot point, without gaps.
    log: Vec<LogEntry>,
}

impl Disk {
    fn last(&self) -> (LogIndex, Term) {
        self.log.last().map_or((self.snapshot.index, self.snapshot.term), |entry| (entry.index, entry.term))
    }

    /// Makes one queued write durable. Entries the snapshot already covers are skipped.
    fn perform(&mut self, write: DiskWrite) -> Result<(), String> {
        match write {
            DiskWrite::HardState(hard_state) => self.hard_state = hard_state,
            DiskWrite::Append(entries) => {
                for entry in entries {
                    if entry.index <= self.snapshot.index {
                        continue;
                    }
                    let last = self.last().0;
                    if entry.index != last.next() {
                        return Err(format!("disk append of {} after {last} leaves a gap or overlaps", entry.index));
                    }
                    self.log.push(entry);
                }
            }
            DiskWrite::Truncate(from) => self.log.retain(|entry| entry.index < from),
        }
        Ok(())
    }
}

#[derive(Debug)]
enum DiskWrite {
    HardState(HardState),
    Append(Vec<LogEntry>),
    Truncate(LogIndex),
}

#[derive(Debug)]
struct DiskOp {
    done_at: u64,
    sequence: u64,
    write: DiskWrite,
}

#[derive(Debug)]
struct PendingWrite {
    index: LogIndex,
    term: Term,
    client: usize,
    request: u64,
    output: Output,
}

#[derive(Debug)]
struct PendingRead {
    client: usize,
    request: u64,
    key: u64,
    ready_at: Option<LogIndex>,
}

#[derive(Debug)]
struct PendingSessionRead {
    client: usize,
    request: u64,
    key: u64,
    token: LogIndex,
    /// Simulated ms after which the replica gives up waiting.
    deadline: u64,
}

/// One replica: its disk, and while it runs, its engine and volatile state.
#[derive(Debug)]
struct Node {
    id: NodeId,
    raft: Option<Raft>,
    /// Started at least once: a spare node waits outside the group until it is added.
    launched: bool,
    /// Bumped at every crash: events of an earlier life are ignored.
    incarnation: u64,
    restarts: u64,
    disk: Disk,
    clock_offset_ms: i64,
    clock_drift_ppm: i64,
    // Volatile: lost on a crash.
    state: MemoryState,
    /// The term of every entry `state` applied, index 1 first.
    applied_terms: Vec<Term>,
    /// The state applied entries the leader's log does not keep (async / semi-sync); reads stop.
    diverged: bool,
    queue: VecDeque<DiskOp>,
    disk_sequence_issued: u64,
    disk_sequence_done: u64,
    /// Messages wait until the hard state written before them is durable.
    hold_until: u64,
    held: VecDeque<(u64, NodeId, Payload)>,
    pending_writes: Vec<PendingWrite>,
    pending_reads: BTreeMap<u64, PendingRead>,
    pending_session_reads: Vec<PendingSessionRead>,
}

#[derive(Debug)]
struct ClientOp {
    /// `None` for a session read, which is not in the linearizable history.
    id: Option<OpId>,
    /// A session read: the replica asked, and the token sent.
    session: Option<(usize, LogIndex)>,
    key: u64,
    command: Command,
    deadline: u64,
    /// The attempt waiting for an answer, if any (a refused attempt is retried with a new number).
    attempt: Option<u64>,
}

#[derive(Debug)]
struct Client {
    /// The node this client believes leads.
    guess: usize,
    op: Option<ClientOp>,
    /// Only the latest scheduled wake-up counts.
    wake: u64,
    /// The last value this client saw per key (what its compare-and-sets expect).
    seen: BTreeMap<u64, u64>,
    /// The session token: the index of its last acknowledged write or the index its last session
    /// read was served at, whichever is later.
    token: LogIndex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Safety,
    Liveness,
    Quiesce,
}

/// The outcome of [`Cluster::run`]: the history and what went wrong.
#[derive(Debug)]
pub struct ClusterRun {
    pub history: History,
    pub failures: Vec<String>,
    pub stats: RunStats,
    pub trace: Option<Vec<String>>,
    pub knobs: Knobs,
    pub sessions: SessionChecker,
}

pub struct Cluster {
    seed: u64,
    options: SimOptions,
    knobs: Knobs,
    rng: SimRng,
    now: u64,
    sequence: u64,
    events: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    phase: Phase,
    /// Links that drop everything: (from, to).
    cut: BTreeSet<(usize, usize)>,
    partition_epoch: u64,
    loss_per_mille: u64,
    duplicate_per_mille: u64,
    replay_per_mille: u64,
    tail_per_mille: u64,
    slow_fsync_per_mille: u64,
    history: History,
    next_request: u64,
    next_read: u64,
    next_value: u64,
    election_safety: ElectionSafety,
    applied_log: AppliedLog,
    /// Entries whose write was acknowledged to a client: (index, term).
    acknowledged: Vec<(LogIndex, Term)>,
    failures: Vec<String>,
    stats: RunStats,
    trace: Option<Vec<String>>,
    heal_at: u64,
    sessions: SessionChecker,
    /// The latest configuration known committed (applied by some replica), and its index.
    committed_config: (LogIndex, Membership),
    /// The term of the replica that first applied it: no election of an earlier term (whose votes
    /// may have been cast before the change committed) is held against a node it removed.
    committed_config_term: Term,
    /// Per node, the index of the latest configuration proposed that made it a voter.
    voter_proposed_at: BTreeMap<NodeId, LogIndex>,
    /// A voter to remove once it no longer leads (it was asked to hand over).
    removal_after_transfer: Option<NodeId>,
}

impl Cluster {
    pub fn new(seed: u64, options: &SimOptions) -> Cluster {
        let mut rng = SimRng::new(seed);
        let knobs = Knobs::draw(&mut rng, options);
        let voters: Vec<NodeId> = (1..=knobs.nodes as u64).map(NodeId).collect();
        let spares = if options.faults.membership { SPARE_NODES } else { 0 };
        let mut nodes = Vec::new();
        let empty = Rc::new(MemoryState::new());
        for id in (1..=(knobs.nodes + spares) as u64).map(NodeId) {
            // A spare's disk is empty: it starts as `RestoredState::joining()` when it is added.
            let launched = voters.contains(&id);
            let bootstrap =
                if launched { RestoredState::bootstrap(voters.iter().copied()) } else { RestoredState::joining() };
            let drift = if knobs.clock_drift_ppm_max > 0 {
                rng.below(2 * knobs.clock_drift_ppm_max + 1) as i64 - knobs.clock_drift_ppm_max as i64
            } else {
                0
            };
            let offset = if options.faults.clocks { rng.below(2_000) as i64 - 1_000 } else { 0 };
            nodes.push(Node {
                id,
                raft: None,
                launched,
                incarnation: 0,
                restarts: 0,
                disk: Disk {
                    hard_state: bootstrap.hard_state,
                    snapshot: bootstrap.snapshot.clone(),
                    snapshot_state: Rc::clone(&empty),
                    snapshot_terms: Vec::new(),
                    log: Vec::new(),
                },
                clock_offset_ms: offset,
                clock_drift_ppm: drift,
                state: MemoryState::new(),
                applied_terms: Vec::new(),
                diverged: false,
                queue: VecDeque::new(),
                disk_sequence_issued: 0,
                disk_sequence_done: 0,
                hold_until: 0,
                held: VecDeque::new(),
                pending_writes: Vec::new(),
                pending_reads: BTreeMap::new(),
                pending_session_reads: Vec::new(),
            });
        }
        let clients = (0..knobs.clients)
            .map(|_| Client {
                guess: rng.below(knobs.nodes as u64) as usize,
                op: None,
                wake: 0,
                seen: BTreeMap::new(),
                token: LogIndex::ZERO,
            })
            .collect();
        Cluster {
            seed,
            options: options.clone(),
            loss_per_mille: knobs.loss_per_mille,
            duplicate_per_mille: knobs.duplicate_per_mille,
            replay_per_mille: knobs.replay_per_mille,
            tail_per_mille: knobs.tail_per_mille,
            slow_fsync_per_mille: knobs.slow_fsync_per_mille,
            knobs,
            rng,
            now: 0,
            sequence: 0,
            events: BinaryHeap::new(),
            nodes,
            clients,
            phase: Phase::Safety,
            cut: BTreeSet::new(),
            partition_epoch: 0,
            history: History::new(),
            next_request: 0,
            next_read: 0,
            next_value: 0,
            election_safety: ElectionSafety::default(),
            applied_log: AppliedLog::default(),
            acknowledged: Vec::new(),
            failures: Vec::new(),
            stats: RunStats::default(),
            trace: options.trace.then(Vec::new),
            heal_at: 0,
            sessions: SessionChecker::new(),
            committed_config: (LogIndex::ZERO, Membership::with_voters(voters.iter().copied())),
            committed_config_term: Term(0),
            voter_proposed_at: BTreeMap::new(),
            removal_after_transfer: None,
        }
    }

    /// Safety phase with faults, liveness phase with faults healed, then quiescence and the final
    /// checks. Engine assertions that fire panic through this; the caller catches them.
    pub fn run(&mut self) {
        let knobs = self.knobs.clone();
        let seed = self.seed;
        self.trace_line(|| format!("start seed {seed} knobs {knobs:?}"));
        for node in 0..self.nodes.len() {
            if self.nodes[node].launched {
                self.start_node(node);
            }
        }
        for client in 0..self.clients.len() {
            let at = self.rng.below(50);
            self.wake_client(client, at);
        }
        if self.fault_weights() > 0 {
            let at = self.rng.below(self.knobs.fault_interval_ms) + 1;
            self.schedule(at, Event::Fault);
        }
        if self.knobs.membership_interval_ms > 0 {
            let at = self.rng.below(self.knobs.membership_interval_ms) + 1;
            self.schedule(at, Event::Membership);
        }

        let safety_end = self.options.safety_ms;
        self.run_until(safety_end, |_| false);

        self.heal_everything();
        let heal_at = self.now;
        self.heal_at = heal_at;
        let liveness_end = heal_at + self.options.liveness_ms;
        self.run_until(liveness_end, |cluster| cluster.stats.write_after_heal_ms.is_some());
        if self.stats.write_after_heal_ms.is_none() {
            let roles = self.describe_nodes();
            self.fail(format!(
                "liveness: no write acknowledged within {} ms of healing (leader after {:?} ms); nodes: {roles}",
                self.options.liveness_ms, self.stats.leader_after_heal_ms
            ));
        }

        self.phase = Phase::Quiesce;
        let quiesce_end = self.now + self.options.convergence_ms;
        let mut next_check = self.now;
        self.run_until(quiesce_end, |cluster| {
            if cluster.now < next_check {
                return false;
            }
            next_check = cluster.now + 20;
            cluster.converged()
        });
        self.stats.sim_ms = self.now;
        if self.converged() {
            self.final_checks();
        } else {
            let roles = self.describe_nodes();
            self.fail(format!(
                "convergence: replicas did not apply the same log within {} ms of stopping clients; nodes: {roles}",
                self.options.convergence_ms
            ));
        }
    }

    pub fn finish(self) -> ClusterRun {
        let mut history = self.history;
        // Whatever is still in flight may or may not have happened.
        let open: Vec<OpId> =
            self.clients.iter().filter_map(|client| client.op.as_ref().and_then(|op| op.id)).collect();
        for id in open {
            history.complete(id, Outcome::Unknown, self.now);
        }
        ClusterRun {
            history,
            failures: self.failures,
            stats: self.stats,
            trace: self.trace,
            knobs: self.knobs,
            sessions: self.sessions,
        }
    }

    /// The trace so far and the failures, for a run cut short by a panic.
    pub fn salvage(&mut self) -> (Vec<String>, Option<Vec<String>>, RunStats) {
        (std::mem::take(&mut self.failures), self.trace.take(), self.stats.clone())
    }

    // ---------------------------------------------------------------- the event loop

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.events.push(Reverse(Scheduled { at, sequence: self.sequence, event }));
    }

    /// Runs events up to `end` (simulated ms), stopping early once `done` says so.
    fn run_until(&mut self, end: u64, mut done: impl FnMut(&mut Cluster) -> bool) {
        while let Some(Reverse(next)) = self.events.peek() {
            if next.at > end {
                break;
            }
            let Some(Reverse(scheduled)) = self.events.pop() else { break };
            self.now = scheduled.at;
            self.handle(scheduled.event);
            if done(self) {
                return;
            }
        }
        self.now = self.now.max(end);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::Tick { node, incarnation } => self.tick(node, incarnation),
            Event::Disk { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation {
                    self.complete_disk(node, false);
                }
            }
            Event::Restart { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation && self.nodes[node].raft.is_none() {
                    self.start_node(node);
                }
            }
            Event::Client { client, wake } => {
                if self.clients[client].wake == wake {
                    self.client_wake(client);
                }
            }
            Event::Fault => self.fault(),
            Event::Membership => {
                if self.phase == Phase::Safety {
                    self.membership_change();
                    self.stats.faults_injected += 1;
                    let next = self.now + 1 + self.rng.below(2 * self.knobs.membership_interval_ms);
                    self.schedule(next, Event::Membership);
                }
            }
            Event::Heal { epoch } => {
                if epoch == self.partition_epoch && !self.cut.is_empty() {
                    self.cut.clear();
                    self.trace_line(|| "heal partition".to_owned());
                }
            }
        }
    }

    fn local_now(&self, node: usize) -> UnixMillis {
        let node = &self.nodes[node];
        let now = i128::from(self.now);
        let local = i128::from(CLOCK_BASE_MS)
            + now
            + now * i128::from(node.clock_drift_ppm) / 1_000_000
            + i128::from(node.clock_offset_ms);
        UnixMillis(u64::try_from(local).unwrap_or(0))
    }

    fn fail(&mut self, failure: String) {
        self.trace_line(|| format!("FAILURE {failure}"));
        if self.failures.len() < FAILURES_MAX && !self.failures.contains(&failure) {
            self.failures.push(failure);
        }
    }

    fn trace_line(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = self.trace.as_mut() {
            let line = line();
            trace.push(format!("{:>7} {line}", self.now));
        }
    }

    fn strict(&self) -> bool {
        !self.options.durability.can_lose_committed()
    }

    fn describe_nodes(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| match node.raft.as_ref() {
                Some(raft) => format!(
                    "n{} {:?}{} term {} commit {} last {} applied {}",
                    node.id,
                    raft.role(),
                    if raft.membership().is_voter(node.id) {
                        ""
                    } else if raft.membership().is_member(node.id) {
                        " (learner)"
                    } else {
                        " (not a member)"
                    },
                    raft.term(),
                    raft.commit_index(),
                    raft.last_index(),
                    node.state.applied_index()
                ),
                None if !node.launched => format!("n{} spare", node.id),
                None => format!("n{} down", node.id),
            })
            .collect();
        parts.join("; ")
    }

    // ---------------------------------------------------------------- nodes

    fn raft_config(&mut self, node: usize) -> RaftConfig {
        let knobs = &self.knobs;
        RaftConfig {
            durability: self.options.durability,
            election_timeout_ms_min: knobs.election_timeout_ms_min,
            election_timeout_ms_max: knobs.election_timeout_ms_min * 2,
            heartbeat_interval_ms: knobs.heartbeat_interval_ms,
            entries_per_append_max: knobs.entries_per_append_max,
            appends_in_flight_max: 8,
            uncommitted_entries_max: 64,
            snapshot_timeout_ms: 1_000,
            planted_bug: self.options.engine_bug,
            ..RaftConfig::new(self.nodes[node].id, self.rng.next_u64())
        }
    }

    /// Starts (or restarts) a node from what its disk holds.
    fn start_node(&mut self, node: usize) {
        let config = self.raft_config(node);
        let n = &mut self.nodes[node];
        let restored = RestoredState {
            hard_state: n.disk.hard_state,
            snapshot: n.disk.snapshot.clone(),
            entries: n.disk.log.clone(),
            committed_index: n.disk.snapshot.index,
        };
        n.raft = Some(Raft::new(config, restored));
        n.launched = true;
        n.state = MemoryState::clone(&n.disk.snapshot_state);
        n.applied_terms = n.disk.snapshot_terms.clone();
        n.diverged = false;
        n.hold_until = 0;
        n.disk_sequence_done = n.disk_sequence_issued;
        let (incarnation, restarts) = (n.incarnation, n.restarts);
        let hard_state = n.disk.hard_state;
        let last = n.disk.last();
        self.trace_line(|| {
            format!(
                "n{} start (life {restarts}) hard state {hard_state:?} durable log to {}/{}",
                node + 1,
                last.0,
                last.1
            )
        });
        let first_tick = self.now + 1 + self.rng.below(TICK_MS);
        self.schedule(first_tick, Event::Tick { node, incarnation });
    }

    fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        if n.raft.is_none() {
            return;
        }
        n.raft = None;
        n.incarnation += 1;
        n.restarts += 1;
        // Writes not yet reported durable may or may not have reached the disk: half the time a
        // prefix of the queue survives the crash.
        let queued = n.queue.len() as u64;
        let survivors = if queued > 0 && self.rng.chance(1, 2) { self.rng.below(queued + 1) } else { 0 };
        let n = &mut self.nodes[node];
        let mut problems = Vec::new();
        for _ in 0..survivors {
            if let Some(op) = n.queue.pop_front()
                && let Err(problem) = n.disk.perform(op.write)
            {
                problems.push(format!("node {}: {problem}", n.id));
            }
        }
        let lost = n.queue.len();
        n.queue.clear();
        n.held.clear();
        n.pending_writes.clear();
        n.pending_reads.clear();
        n.pending_session_reads.clear();
        let incarnation = n.incarnation;
        self.stats.crashes += 1;
        for problem in problems {
            self.fail(problem);
        }
        self.trace_line(|| format!("n{} CRASH ({survivors} unsynced disk writes survive, {lost} lost)", node + 1));
        let restart_at = self.now + 50 + self.rng.below(1_500);
        self.schedule(restart_at, Event::Restart { node, incarnation });
    }

    fn tick(&mut self, node: usize, incarnation: u64) {
        if self.nodes[node].incarnation != incarnation || self.nodes[node].raft.is_none() {
            return;
        }
        let now = self.local_now(node);
        if let Some(raft) = self.nodes[node].raft.as_mut() {
            raft.tick(now);
        }
        self.drain(node);
        self.expire_session_reads(node);
        if self.knobs.checkpoint_per_mille > 0 && self.rng.chance(self.knobs.checkpoint_per_mille, 1000) {
            self.checkpoint(node);
        }
        if self.phase == Phase::Liveness
            && self.stats.leader_after_heal_ms.is_none()
            && self.nodes[node].raft.as_ref().is_some_and(|raft| raft.role() == Role::Leader)
        {
            self.stats.leader_after_heal_ms = Some(self.now - self.heal_at);
        }
        self.schedule(self.now + TICK_MS, Event::Tick { node, incarnation });
    }

    /// The state becomes the node's durable snapshot, and the log before it is dropped.
    fn checkpoint(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let applied = n.state.applied_index();
        let Some(raft) = n.raft.as_mut() else { return };
        if n.diverged || applied <= n.disk.snapshot.index || raft.status().awaiting_snapshot {
            return;
        }
        let Some(meta) = raft.snapshot_meta(applied) else { return };
        raft.compact(applied);
        n.disk.snapshot = meta;
        n.disk.snapshot_state = Rc::new(n.state.clone());
        n.disk.snapshot_terms = n.applied_terms.clone();
        n.disk.log.retain(|entry| entry.index > applied);
        self.stats.checkpoints += 1;
        self.trace_line(|| format!("n{} checkpoint at {applied}", node + 1));
    }

    /// Performs a node's effects in order, until the engine has none left.
    fn drain(&mut self, node: usize) {
        loop {
            let effects: Vec<Effect> = match self.nodes[node].raft.as_mut() {
                Some(raft) => raft.drain_effects().collect(),
                None => return,
            };
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                self.perform(node, effect);
            }
        }
    }

    fn perform(&mut self, node: usize, effect: Effect) {
        let id = self.nodes[node].id;
        match effect {
            Effect::PersistHardState { term, voted_for } => {
                self.trace_line(|| format!("n{id} persist term {term} vote {voted_for:?}"));
                let sequence = self.disk_write(node, DiskWrite::HardState(HardState { term, voted_for }));
                self.nodes[node].hold_until = sequence;
            }
            Effect::AppendLog { entries } => {
                if self.options.driver_bug == Some(DriverBug::ApplyBeforeCommit) {
                    // The planted bug: whatever continues the state is applied at once.
                    let next = self.nodes[node].state.applied_index().next();
                    if entries.first().is_some_and(|first| first.index <= next) {
                        self.apply_entries(node, &entries);
                    }
                }
                self.disk_write(node, DiskWrite::Append(entries));
            }
            Effect::TruncateLog { from, discarded, discards_committed } => {
                self.stats.truncations += 1;
                self.trace_line(|| {
                    format!(
                        "n{id} truncate from {from} ({} discarded, committed {discards_committed})",
                        discarded.len()
                    )
                });
                if discards_committed {
                    self.stats.committed_discards += 1;
                    if self.strict() {
                        self.fail(format!(
                            "node {id} discarded committed entries from {from} under {}",
                            self.options.durability
                        ));
                    }
                }
                self.disk_write(node, DiskWrite::Truncate(from));
            }
            Effect::StateDiverged { kept } => {
                self.trace_line(|| format!("n{id} state diverged after {kept}"));
                if self.strict() {
                    self.fail(format!("node {id}'s state diverged after {kept} under {}", self.options.durability));
                }
                self.nodes[node].diverged = true;
            }
            Effect::Send { to, message } => self.send_or_hold(node, to, Payload::Peer(message)),
            Effect::SendSnapshot { to, leader_term, index } => {
                let n = &self.nodes[node];
                let applied = n.state.applied_index();
                let meta = n.raft.as_ref().and_then(|raft| raft.snapshot_meta(applied));
                match meta {
                    Some(meta) if applied >= index => {
                        let transfer = SnapshotTransfer {
                            leader_term,
                            meta,
                            state: Rc::new(n.state.clone()),
                            terms: n.applied_terms.clone(),
                        };
                        self.send_or_hold(node, to, Payload::Snapshot(Box::new(transfer)));
                    }
                    _ => self.fail(format!(
                        "node {id} asked to send a snapshot at {index} but has no metadata for its applied index {applied}"
                    )),
                }
            }
            Effect::Committed { index } => self.commit(node, index),
            Effect::ReadReady { read_id, index } => {
                if let Some(read) = self.nodes[node].pending_reads.get_mut(&read_id) {
                    read.ready_at = Some(index);
                }
                self.serve_reads(node);
            }
            Effect::ReadFailed { read_id, leader_hint } => {
                if let Some(read) = self.nodes[node].pending_reads.remove(&read_id) {
                    self.reply(node, read.client, read.request, ClientReply::Retry(leader_hint));
                }
            }
            Effect::RoleChanged { role, term, leader } => {
                self.trace_line(|| format!("n{id} role {role:?} term {term} leader {leader:?}"));
                self.stats.max_term = self.stats.max_term.max(term.0);
                if role == Role::Leader {
                    self.stats.elections += 1;
                    if let Err(failure) = self.election_safety.observe(term, id) {
                        self.fail(failure);
                    }
                }
                if role == Role::Leader && self.strict() && !self.may_campaign(id) && term >= self.committed_config_term
                {
                    let (index, config) = &self.committed_config;
                    self.fail(format!(
                        "membership: node {id}, not a voter of the configuration committed at {index} ({config}), \
                         became leader in term {term}"
                    ));
                }
            }
        }
    }

    fn send_or_hold(&mut self, node: usize, to: NodeId, payload: Payload) {
        let n = &mut self.nodes[node];
        if n.hold_until > n.disk_sequence_done {
            n.held.push_back((n.hold_until, to, payload));
            return;
        }
        let to = usize::try_from(to.0 - 1).unwrap_or(usize::MAX);
        self.send(Endpoint::Node(node), Endpoint::Node(to), payload);
    }

    // ---------------------------------------------------------------- the disk

    fn disk_write(&mut self, node: usize, write: DiskWrite) -> u64 {
        let slow = self.slow_fsync_per_mille > 0 && self.rng.chance(self.slow_fsync_per_mille, 1000);
        let latency = if slow {
            self.knobs.fsync_ms_max + 1 + self.rng.below(self.knobs.slow_fsync_ms_max)
        } else {
            1 + self.rng.below(self.knobs.fsync_ms_max)
        };
        let n = &mut self.nodes[node];
        let done_at = n.queue.back().map_or(0, |op| op.done_at).max(self.now + latency);
        n.disk_sequence_issued += 1;
        let sequence = n.disk_sequence_issued;
        n.queue.push_back(DiskOp { done_at, sequence, write });
        let incarnation = n.incarnation;
        self.schedule(done_at, Event::Disk { node, incarnation });
        sequence
    }

    /// Completes the disk writes that are due (all of them with `everything`), tells the engine how
    /// far the log is durable, and releases the messages that waited for a hard state.
    fn complete_disk(&mut self, node: usize, everything: bool) {
        let now = self.now;
        let mut problems = Vec::new();
        let n = &mut self.nodes[node];
        let mut completed = false;
        while n.queue.front().is_some_and(|op| everything || op.done_at <= now) {
            let Some(op) = n.queue.pop_front() else { break };
            completed = true;
            n.disk_sequence_done = op.sequence;
            if let Err(problem) = n.disk.perform(op.write) {
                problems.push(format!("node {}: {problem}", n.id));
            }
        }
        if !completed {
            return;
        }
        let mut released = Vec::new();
        while n.held.front().is_some_and(|(sequence, _, _)| *sequence <= n.disk_sequence_done) {
            if let Some((_, to, payload)) = n.held.pop_front() {
                released.push((to, payload));
            }
        }
        let (index, term) = n.disk.last();
        for problem in problems {
            self.fail(problem);
        }
        for (to, payload) in released {
            let to = usize::try_from(to.0 - 1).unwrap_or(usize::MAX);
            self.send(Endpoint::Node(node), Endpoint::Node(to), payload);
        }
        let local = self.local_now(node);
        if let Some(raft) = self.nodes[node].raft.as_mut() {
            raft.handle_persisted(local, index, term);
        }
        self.drain(node);
    }

    // ---------------------------------------------------------------- the state machine

    fn commit(&mut self, node: usize, index: LogIndex) {
        let n = &self.nodes[node];
        let Some(raft) = n.raft.as_ref() else { return };
        let applied = n.state.applied_index();
        if index > applied {
            let entries = raft.entries(applied.next(), index);
            if entries.len() as u64 != index.0 - applied.0 {
                let id = n.id;
                self.fail(format!("node {id} committed {index} but its log lacks entries after {applied}"));
                return;
            }
            self.apply_entries(node, &entries);
        }
        self.resolve(node);
    }

    fn apply_entries(&mut self, node: usize, entries: &[LogEntry]) {
        let strict = self.strict();
        let mut problems = Vec::new();
        let n = &mut self.nodes[node];
        let applier_term = n.raft.as_ref().map_or(Term(0), Raft::term);
        for entry in entries {
            if entry.index <= n.state.applied_index() {
                continue;
            }
            if entry.index != n.state.applied_index().next() {
                problems.push(format!("node {} applies {} after {}", n.id, entry.index, n.state.applied_index()));
                break;
            }
            n.state.apply(std::slice::from_ref(entry));
            n.applied_terms.push(entry.term);
            let known = self.applied_log.len();
            if strict && let Err(problem) = self.applied_log.observe(n.id, entry.index, entry.term) {
                problems.push(problem);
            }
            if self.applied_log.len() > known {
                // The first replica to apply this index: the committed log's entry there.
                self.sessions.committed(entry.index, &entry_writes(entry));
            }
            if let EntryPayload::Membership(config) = &entry.payload
                && entry.index > self.committed_config.0
            {
                self.committed_config = (entry.index, config.clone());
                self.committed_config_term = applier_term;
            }
            self.stats.entries_committed = self.stats.entries_committed.max(entry.index.0);
        }
        for problem in problems {
            self.fail(problem);
        }
    }

    /// A vote request from `candidate` moved `node` past `term`. If the candidate was removed by a
    /// committed change (and not added back), `node` is a member that knows it, and the new term is
    /// past every other member's (not a member catching up with a stale request), a removed node
    /// disrupted the group it left (its term would depose the leader).
    fn check_not_disrupted_by(&mut self, candidate: NodeId, node: usize, term: Term) {
        let id = self.nodes[node].id;
        if !self.strict() || self.may_campaign(candidate) || !self.committed_config.1.is_member(id) {
            return;
        }
        // A member whose log does not hold the removal yet (its latest configuration still makes the
        // candidate a voter) is behind the group: to it the request comes from a voter, as it would
        // from a live one, and nothing it holds says otherwise (seed 1137626: node 7, cut off from
        // the leader and fed only its stale appends, lacked the removal of node 2 and granted the
        // transfer vote a `TimeoutNow` held 1.3 s made node 2 ask for, with a log equal to its own).
        // Raft promises a removed node cannot depose a leader that reaches its members (dissertation
        // §4.2.3); one that does not reach them yet is not covered. Members that hold the removal
        // are held to it: the engine has what it needs to refuse (seeds 12680, 1006098, 1058948).
        if self.nodes[node].raft.as_ref().is_some_and(|raft| raft.membership().is_voter(candidate)) {
            return;
        }
        let now_term = self.nodes[node].raft.as_ref().map_or(term, Raft::term);
        let members_term = self
            .nodes
            .iter()
            .filter(|other| other.id != id && other.id != candidate && self.committed_config.1.is_member(other.id))
            .filter_map(|other| other.raft.as_ref().map(Raft::term))
            .max()
            .unwrap_or(Term(0));
        if now_term <= members_term || now_term < self.committed_config_term {
            return;
        }
        let (index, config) = &self.committed_config;
        self.fail(format!(
            "membership: node {candidate}, not a voter of the configuration committed at {index} ({config}), \
             disrupted member {id}: its vote request moved it from term {term} to {now_term}"
        ));
    }

    /// Whether `id` may legitimately campaign: a voter of the configuration known committed, or of
    /// one proposed since (configurations are in force once appended). A node removed by a
    /// committed change, and not added back since, must never become a candidate: it would disrupt
    /// the group it left.
    fn may_campaign(&self, id: NodeId) -> bool {
        let (index, config) = &self.committed_config;
        config.is_voter(id) || self.voter_proposed_at.get(&id).is_some_and(|at| at > index)
    }

    /// Answers the writes whose entries are applied, and the reads that can be served.
    fn resolve(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let applied = n.state.applied_index();
        let mut answers = Vec::new();
        let terms = &n.applied_terms;
        n.pending_writes.retain(|write| {
            if write.index > applied {
                return true;
            }
            let position = usize::try_from(write.index.0 - 1).unwrap_or(usize::MAX);
            let kept = terms.get(position) == Some(&write.term);
            let reply = if kept { ClientReply::Ok(write.output, Some(write.index)) } else { ClientReply::Fail };
            answers.push((write.client, write.request, reply, write.index, write.term));
            false
        });
        for (client, request, reply, index, term) in answers {
            if let ClientReply::Ok(..) = reply {
                self.acknowledged.push((index, term));
                self.stats.writes_acknowledged += 1;
            }
            self.reply(node, client, request, reply);
        }
        self.serve_reads(node);
        self.serve_session_reads(node);
    }

    fn serve_reads(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        if n.diverged {
            return;
        }
        let applied = n.state.applied_index();
        let ready: Vec<u64> = n
            .pending_reads
            .iter()
            .filter(|(_, read)| read.ready_at.is_some_and(|at| at <= applied))
            .map(|(read_id, _)| *read_id)
            .collect();
        for read_id in ready {
            let Some(read) = self.nodes[node].pending_reads.remove(&read_id) else { continue };
            let value = self.read_value(node, read.key);
            self.stats.reads_served += 1;
            self.reply(node, read.client, read.request, ClientReply::Ok(Output::Read(value), None));
        }
    }

    /// A session (follower) read: served from this replica's applied state once it has applied the
    /// session's token, or given up after [`SESSION_WAIT_MS`].
    fn handle_session_read(&mut self, node: usize, client: usize, request: u64, key: u64, token: LogIndex) {
        if self.nodes[node].raft.is_none() {
            return;
        }
        let deadline = self.now + SESSION_WAIT_MS;
        self.nodes[node].pending_session_reads.push(PendingSessionRead { client, request, key, token, deadline });
        self.serve_session_reads(node);
    }

    fn serve_session_reads(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        if n.diverged || n.pending_session_reads.is_empty() {
            return;
        }
        let applied = n.state.applied_index();
        let ignore_token = self.options.driver_bug == Some(DriverBug::SessionReadWithoutWait);
        let (ready, waiting): (Vec<PendingSessionRead>, Vec<PendingSessionRead>) =
            std::mem::take(&mut n.pending_session_reads)
                .into_iter()
                .partition(|read| ignore_token || read.token <= applied);
        n.pending_session_reads = waiting;
        for read in ready {
            let value = self.read_value(node, read.key);
            self.stats.session_reads_served += 1;
            let reply = ClientReply::SessionRead { value, index: applied };
            self.reply(node, read.client, read.request, reply);
        }
    }

    /// Session reads that waited too long for their token are answered with an error.
    fn expire_session_reads(&mut self, node: usize) {
        let now = self.now;
        let n = &mut self.nodes[node];
        if n.pending_session_reads.iter().all(|read| read.deadline > now) {
            return;
        }
        let (expired, waiting): (Vec<PendingSessionRead>, Vec<PendingSessionRead>) =
            std::mem::take(&mut n.pending_session_reads).into_iter().partition(|read| read.deadline <= now);
        n.pending_session_reads = waiting;
        for read in expired {
            self.reply(node, read.client, read.request, ClientReply::Fail);
        }
    }

    fn read_value(&mut self, node: usize, key: u64) -> Option<u64> {
        let stored = self.nodes[node].state.get(&key_bytes(key));
        match stored {
            Ok(Some(stored)) => self.parse_value(&stored.value),
            Ok(None) => None,
            Err(error) => {
                self.fail(format!("node {} could not read its state: {error}", node + 1));
                None
            }
        }
    }

    fn parse_value(&mut self, bytes: &[u8]) -> Option<u64> {
        let parsed = std::str::from_utf8(bytes).ok().and_then(|text| text.parse().ok());
        if parsed.is_none() {
            self.fail(format!("a stored value is not an integer: {bytes:?}"));
        }
        parsed
    }

    /// The key's value once every entry in the leader's log is applied: what a command proposed now
    /// executes against (the log is logical, so read-modify-writes resolve here, on the leader).
    fn latest_value(&mut self, node: usize, key: u64) -> Option<u64> {
        let mut value = self.read_value(node, key);
        let n = &self.nodes[node];
        let Some(raft) = n.raft.as_ref() else { return value };
        let name = key_bytes(key);
        let mut writes = Vec::new();
        for entry in raft.entries(n.state.applied_index().next(), raft.last_index()) {
            if let EntryPayload::Write(ops) = entry.payload {
                for op in ops {
                    match op {
                        WriteOp::Put { key, value, .. } if key == name => writes.push(Some(value)),
                        WriteOp::Delete { key } if key == name => writes.push(None),
                        WriteOp::Clear => writes.push(None),
                        WriteOp::Put { .. } | WriteOp::Delete { .. } => {}
                    }
                }
            }
        }
        for write in writes {
            value = match write {
                Some(bytes) => self.parse_value(&bytes),
                None => None,
            };
        }
        value
    }

    // ---------------------------------------------------------------- client requests at a node

    fn handle_request(&mut self, node: usize, client: usize, request: u64, key: u64, command: Command) {
        let now = self.local_now(node);
        let Some(raft) = self.nodes[node].raft.as_ref() else { return };
        if raft.role() != Role::Leader {
            let hint = raft.leader();
            self.reply(node, client, request, ClientReply::Retry(hint));
            return;
        }
        if command == Command::Read {
            if self.options.driver_bug == Some(DriverBug::ReadWithoutReadIndex) {
                let value = self.read_value(node, key);
                self.reply(node, client, request, ClientReply::Ok(Output::Read(value), None));
                return;
            }
            self.next_read += 1;
            let read_id = self.next_read;
            self.nodes[node].pending_reads.insert(read_id, PendingRead { client, request, key, ready_at: None });
            if let Some(raft) = self.nodes[node].raft.as_mut() {
                raft.read_index(now, read_id);
            }
            self.drain(node);
            return;
        }
        let current = self.latest_value(node, key);
        let name = key_bytes(key);
        let put =
            |value: u64| WriteOp::Put { key: name.clone(), value: Bytes::from(value.to_string()), expire_at: None };
        let (ops, output) = match command {
            Command::Write(value) => (vec![put(value)], Output::Written),
            Command::Cas { expected, new } if current == Some(expected) => (vec![put(new)], Output::Cas(true)),
            // A compare-and-set that does not swap still goes through the log: its answer is a read
            // of the latest view, which only a committed entry proves was current.
            Command::Cas { .. } => (Vec::new(), Output::Cas(false)),
            Command::Incr => {
                let next = current.unwrap_or(0) + 1;
                (vec![put(next)], Output::Incr(next))
            }
            Command::Read => return,
        };
        let Some(raft) = self.nodes[node].raft.as_mut() else { return };
        let term = raft.term();
        match raft.propose(now, EntryPayload::Write(ops)) {
            Ok(index) => {
                self.trace_line(|| format!("n{} propose {index}/{term} for client {client} {command:?}", node + 1));
                if self.options.driver_bug == Some(DriverBug::AckBeforeCommit) {
                    self.acknowledged.push((index, term));
                    self.reply(node, client, request, ClientReply::Ok(output, Some(index)));
                } else {
                    self.nodes[node].pending_writes.push(PendingWrite { index, term, client, request, output });
                }
            }
            Err(ProposeError::NotLeader { leader_hint }) => {
                self.reply(node, client, request, ClientReply::Retry(leader_hint));
            }
            Err(ProposeError::TransferInProgress { target }) => {
                self.reply(node, client, request, ClientReply::Retry(Some(target)));
            }
            Err(_) => {
                let me = self.nodes[node].id;
                self.reply(node, client, request, ClientReply::Retry(Some(me)));
            }
        }
        self.drain(node);
    }

    fn reply(&mut self, node: usize, client: usize, request: u64, reply: ClientReply) {
        self.send(Endpoint::Node(node), Endpoint::Client(client), Payload::Reply { request, reply });
    }

    // ---------------------------------------------------------------- the network

    fn latency(&mut self) -> u64 {
        let knobs = &self.knobs;
        if self.tail_per_mille > 0 && self.rng.chance(self.tail_per_mille, 1000) {
            knobs.latency_ms_max + 1 + self.rng.below(knobs.tail_ms_max.max(1))
        } else {
            knobs.latency_ms_min + self.rng.below(knobs.latency_ms_max - knobs.latency_ms_min + 1)
        }
    }

    fn send(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        self.stats.messages_sent += 1;
        if let (Endpoint::Node(a), Endpoint::Node(b)) = (from, to)
            && self.cut.contains(&(a, b))
        {
            // A partition drops the message, or, with stale replays, holds it (a stalled connection)
            // and delivers it long after, possibly terms later.
            if self.replay_per_mille > 0 && self.rng.chance(self.replay_per_mille, 1000) {
                self.replay(from, to, payload);
            } else {
                self.stats.messages_dropped += 1;
            }
            return;
        }
        if self.loss_per_mille > 0 && self.rng.chance(self.loss_per_mille, 1000) {
            self.stats.messages_dropped += 1;
            if self.trace.is_some() {
                let what = describe(&payload);
                self.trace_line(|| format!("drop {} -> {}: {what}", endpoint(from), endpoint(to)));
            }
            return;
        }
        // Peer links may duplicate (retransmissions); client links are TCP streams that do not.
        let peer = matches!((from, to), (Endpoint::Node(_), Endpoint::Node(_)));
        if peer && self.duplicate_per_mille > 0 && self.rng.chance(self.duplicate_per_mille, 1000) {
            self.stats.messages_duplicated += 1;
            let at = self.now + self.latency();
            self.schedule(at, Event::Deliver { from, to, payload: payload.clone() });
        }
        if peer && self.replay_per_mille > 0 && self.rng.chance(self.replay_per_mille, 1000) {
            self.replay(from, to, payload.clone());
        }
        let at = self.now + self.latency();
        self.schedule(at, Event::Deliver { from, to, payload });
    }

    /// Delivers a peer message long after it was sent (a stale replay).
    fn replay(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        self.stats.messages_replayed += 1;
        let at = self.now + REPLAY_MS_MIN + self.rng.below(self.knobs.replay_ms_max);
        if self.trace.is_some() {
            let what = describe(&payload);
            self.trace_line(|| format!("REPLAY at {at} {} -> {}: {what}", endpoint(from), endpoint(to)));
        }
        self.schedule(at, Event::Deliver { from, to, payload });
    }

    fn deliver(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        if self.trace.is_some() {
            let what = describe(&payload);
            self.trace_line(|| format!("{} -> {}: {what}", endpoint(from), endpoint(to)));
        }
        match (to, payload) {
            (Endpoint::Client(client), Payload::Reply { request, reply }) => self.client_reply(client, request, reply),
            (Endpoint::Node(node), Payload::Request { request, key, command }) => {
                if let Endpoint::Client(client) = from {
                    self.handle_request(node, client, request, key, command);
                }
            }
            (Endpoint::Node(node), Payload::SessionRead { request, key, token }) => {
                if let Endpoint::Client(client) = from {
                    self.handle_session_read(node, client, request, key, token);
                }
            }
            (Endpoint::Node(node), Payload::Peer(message)) => {
                let Endpoint::Node(sender) = from else { return };
                let now = self.local_now(node);
                let from_id = self.nodes[sender].id;
                let vote_request = matches!(message, Message::RequestVote(_));
                let Some(raft) = self.nodes[node].raft.as_mut() else { return };
                let term = raft.term();
                raft.handle_message(now, from_id, message);
                let disrupted = raft.term() > term;
                if vote_request && disrupted {
                    self.check_not_disrupted_by(from_id, node, term);
                }
                self.drain(node);
            }
            (Endpoint::Node(node), Payload::Snapshot(transfer)) => {
                let Endpoint::Node(sender) = from else { return };
                self.install_snapshot(node, sender, *transfer);
            }
            _ => {}
        }
    }

    fn install_snapshot(&mut self, node: usize, sender: usize, transfer: SnapshotTransfer) {
        let from = self.nodes[sender].id;
        let needed = self.nodes[node]
            .raft
            .as_ref()
            .is_some_and(|raft| raft.snapshot_needed(from, transfer.leader_term, &transfer.meta));
        if !needed {
            return;
        }
        // Installing is one durable step ordered after every write queued before it.
        for _ in 0..4 {
            if self.nodes[node].queue.is_empty() {
                break;
            }
            self.complete_disk(node, true);
        }
        let needed = self.nodes[node]
            .raft
            .as_ref()
            .is_some_and(|raft| raft.snapshot_needed(from, transfer.leader_term, &transfer.meta));
        if !needed {
            return;
        }
        let now = self.local_now(node);
        let SnapshotTransfer { leader_term, meta, state, terms } = transfer;
        let n = &mut self.nodes[node];
        let keeps_suffix = n.disk.log.iter().any(|entry| entry.index == meta.index && entry.term == meta.term);
        if keeps_suffix {
            n.disk.log.retain(|entry| entry.index > meta.index);
        } else {
            n.disk.log.clear();
        }
        n.disk.snapshot = meta.clone();
        n.state = MemoryState::clone(&state);
        n.disk.snapshot_state = state;
        n.disk.snapshot_terms = terms.clone();
        n.applied_terms = terms;
        n.diverged = false;
        let index = meta.index;
        if let Some(raft) = n.raft.as_mut() {
            raft.handle_snapshot_installed(now, from, leader_term, meta);
        }
        self.stats.snapshots_installed += 1;
        self.trace_line(|| format!("n{} install snapshot at {index} from n{from}", node + 1));
        self.resolve(node);
        self.drain(node);
    }

    // ---------------------------------------------------------------- faults

    fn fault_weights(&self) -> u64 {
        self.knobs.partition_weight
            + self.knobs.crash_weight
            + self.knobs.clock_jump_weight
            + self.knobs.transfer_weight
    }

    fn fault(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let total = self.fault_weights();
        let mut pick = self.rng.below(total);
        if pick < self.knobs.partition_weight {
            self.partition();
        } else {
            pick -= self.knobs.partition_weight;
            if pick < self.knobs.crash_weight {
                // Half the time the leader: crashing leaders is where the interesting failovers are.
                let leader = self.nodes.iter().position(|n| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader));
                let victim = match leader {
                    Some(leader) if self.rng.chance(1, 2) => leader,
                    _ => self.rng.below(self.nodes.len() as u64) as usize,
                };
                self.crash(victim);
            } else {
                pick -= self.knobs.crash_weight;
                if pick < self.knobs.clock_jump_weight {
                    self.clock_jump();
                } else {
                    self.transfer();
                }
            }
        }
        self.stats.faults_injected += 1;
        let next = self.now + 1 + self.rng.below(2 * self.knobs.fault_interval_ms);
        self.schedule(next, Event::Fault);
    }

    fn partition(&mut self) {
        let nodes = self.nodes.len();
        self.cut.clear();
        self.partition_epoch += 1;
        self.stats.partitions += 1;
        let kind = self.rng.below(4);
        let victim = self.rng.below(nodes as u64) as usize;
        let mut side = vec![false; nodes];
        match kind {
            // Isolate one node.
            0 => side[victim] = true,
            // Split in two (neither side empty).
            1 => {
                for slot in side.iter_mut() {
                    *slot = self.rng.chance(1, 2);
                }
                side[victim] = true;
                let other = (victim + 1 + self.rng.below(nodes as u64 - 1) as usize) % nodes;
                side[other] = false;
            }
            _ => {}
        }
        for a in 0..nodes {
            for b in 0..nodes {
                if a == b {
                    continue;
                }
                let cut = match kind {
                    0 | 1 => side[a] != side[b],
                    // One node hears nobody (it still sends), or nobody hears it.
                    2 => b == victim,
                    3 => a == victim,
                    _ => false,
                };
                if cut {
                    self.cut.insert((a, b));
                }
            }
        }
        let epoch = self.partition_epoch;
        let heal_at = self.now + 100 + self.rng.below(2_000);
        let description = ["isolate", "split", "deafen", "mute"][kind as usize];
        let cut: Vec<String> = self.cut.iter().map(|(a, b)| format!("{}>{}", a + 1, b + 1)).collect();
        self.trace_line(|| format!("PARTITION {description} n{} until {heal_at}: {}", victim + 1, cut.join(" ")));
        self.schedule(heal_at, Event::Heal { epoch });
    }

    /// The leader (if any) hands leadership to a random other voter.
    fn transfer(&mut self) {
        let Some(leader) = self.nodes.iter().position(|n| n.raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
        else {
            return;
        };
        let target_id = if self.options.faults.membership {
            // Among the voters the leader knows (others would be refused).
            let others: Vec<NodeId> = self.nodes[leader]
                .raft
                .as_ref()
                .map(|raft| {
                    raft.membership().voters.iter().copied().filter(|id| *id != self.nodes[leader].id).collect()
                })
                .unwrap_or_default();
            if others.is_empty() {
                return;
            }
            others[self.rng.below(others.len() as u64) as usize]
        } else {
            let target = (leader + 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize) % self.nodes.len();
            self.nodes[target].id
        };
        let now = self.local_now(leader);
        let result = self.nodes[leader].raft.as_mut().map(|raft| raft.transfer_leadership(now, target_id));
        self.trace_line(|| format!("TRANSFER n{} -> n{target_id}: {result:?}", leader + 1));
        self.drain(leader);
    }

    /// One online single-server change, proposed to the leader of the highest term: a node outside
    /// the group joins (as a learner mostly, sometimes straight as a voter), a learner is promoted, a
    /// learner or a voter leaves (a leader to be removed is first asked to hand over). A node that
    /// joins is started if it is not running; a former member may first have its disk wiped (it then
    /// starts as `RestoredState::joining()` and catches up by log or snapshot), but only once no
    /// replica's configuration mentions it any more.
    fn membership_change(&mut self) {
        let Some(leader) = self.leader() else { return };
        let leader_id = self.nodes[leader].id;
        let Some(config) = self.nodes[leader].raft.as_ref().map(|raft| raft.membership().clone()) else { return };
        let change = match self.removal_after_transfer.take() {
            Some(voter) if voter != leader_id && config.is_voter(voter) && config.voters.len() > 2 => {
                MembershipChange::RemoveNode(voter)
            }
            _ => {
                let outsiders: Vec<usize> =
                    (0..self.nodes.len()).filter(|node| !config.is_member(self.nodes[*node].id)).collect();
                let learners: Vec<NodeId> = config.learners.iter().copied().collect();
                let voters: Vec<NodeId> = config.voters.iter().copied().collect();
                // 0: add, 1: promote, 2: remove a learner, 3: remove a voter.
                let mut kinds = Vec::new();
                if !outsiders.is_empty() {
                    kinds.push(0);
                }
                if !learners.is_empty() {
                    kinds.extend([1, 2]);
                }
                if voters.len() > 2 {
                    kinds.push(3);
                }
                if kinds.is_empty() {
                    return;
                }
                match kinds[self.rng.below(kinds.len() as u64) as usize] {
                    0 => {
                        let node = outsiders[self.rng.below(outsiders.len() as u64) as usize];
                        self.prepare_to_join(node);
                        let id = self.nodes[node].id;
                        if self.rng.chance(1, 4) {
                            MembershipChange::AddVoter(id)
                        } else {
                            MembershipChange::AddLearner(id)
                        }
                    }
                    1 => MembershipChange::PromoteLearner(learners[self.rng.below(learners.len() as u64) as usize]),
                    2 => MembershipChange::RemoveNode(learners[self.rng.below(learners.len() as u64) as usize]),
                    _ => {
                        let voter = voters[self.rng.below(voters.len() as u64) as usize];
                        if voter == leader_id {
                            // The leader cannot remove itself: it hands over, and goes at the next
                            // change if it no longer leads.
                            self.removal_after_transfer = Some(voter);
                            self.transfer();
                            return;
                        }
                        MembershipChange::RemoveNode(voter)
                    }
                }
            }
        };
        let now = self.local_now(leader);
        let term = self.nodes[leader].raft.as_ref().map(Raft::term);
        let Some(result) = self.nodes[leader].raft.as_mut().map(|raft| raft.propose_membership_change(now, change))
        else {
            return;
        };
        self.trace_line(|| format!("MEMBERSHIP n{leader_id} term {term:?} proposes {change:?}: {result:?}"));
        match result {
            Ok(index) => {
                self.stats.membership_changes += 1;
                if let MembershipChange::AddVoter(id) | MembershipChange::PromoteLearner(id) = change {
                    self.voter_proposed_at.insert(id, index);
                }
            }
            Err(_) => self.stats.membership_refused += 1,
        }
        self.drain(leader);
    }

    /// Gets a node outside the group ready to be added: started if not running, and with
    /// `wipe_rejoiners` half the time (when no replica's latest configuration names it) wiped first,
    /// as a replacement machine reusing the node's id would be.
    fn prepare_to_join(&mut self, node: usize) {
        let running = self.nodes[node].raft.is_some();
        let wipe = self.options.wipe_rejoiners
            && self.nodes[node].launched
            && self.rng.chance(1, 2)
            && !self.mentioned_by_others(node);
        if wipe {
            let n = &mut self.nodes[node];
            n.raft = None;
            n.incarnation += 1;
            n.queue.clear();
            n.held.clear();
            n.pending_writes.clear();
            n.pending_reads.clear();
            n.pending_session_reads.clear();
            let joining = RestoredState::joining();
            n.disk = Disk {
                hard_state: joining.hard_state,
                snapshot: joining.snapshot,
                snapshot_state: Rc::new(MemoryState::new()),
                snapshot_terms: Vec::new(),
                log: Vec::new(),
            };
            self.stats.nodes_wiped += 1;
            self.trace_line(|| format!("n{} WIPED to join again", node + 1));
        }
        if wipe || !running {
            self.start_node(node);
        }
    }

    /// Whether a configuration other nodes hold (in memory, or on the disk of a node that is down)
    /// still has `node` as a member: its disk may then hold votes and entries the group counts on.
    fn mentioned_by_others(&self, node: usize) -> bool {
        let id = self.nodes[node].id;
        self.nodes.iter().enumerate().filter(|(other, _)| *other != node).any(|(_, other)| match other.raft.as_ref() {
            Some(raft) => raft.membership().is_member(id),
            None => {
                let latest = other.disk.log.iter().rev().find_map(|entry| match &entry.payload {
                    EntryPayload::Membership(config) => Some(config),
                    _ => None,
                });
                latest.unwrap_or(&other.disk.snapshot.membership).is_member(id)
            }
        })
    }

    fn clock_jump(&mut self) {
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        let jump = if self.rng.chance(3, 4) { self.rng.below(2_000) as i64 } else { -(self.rng.below(300) as i64) };
        self.nodes[node].clock_offset_ms += jump;
        self.stats.clock_jumps += 1;
        self.trace_line(|| format!("CLOCK n{} jumps {jump} ms", node + 1));
    }

    /// The liveness phase: the network heals, crashed nodes restart, slow disks recover. Clock drift
    /// stays (it is not a fault), but clocks stop jumping.
    fn heal_everything(&mut self) {
        self.phase = Phase::Liveness;
        self.cut.clear();
        self.partition_epoch += 1;
        self.loss_per_mille = 0;
        self.duplicate_per_mille = 0;
        self.replay_per_mille = 0;
        self.tail_per_mille = 0;
        self.slow_fsync_per_mille = 0;
        self.trace_line(|| "HEAL everything".to_owned());
        for node in 0..self.nodes.len() {
            if self.nodes[node].raft.is_none() && self.nodes[node].launched {
                self.start_node(node);
            }
        }
    }

    // ---------------------------------------------------------------- clients

    fn wake_client(&mut self, client: usize, at: u64) {
        self.clients[client].wake += 1;
        let wake = self.clients[client].wake;
        self.schedule(at, Event::Client { client, wake });
    }

    fn client_wake(&mut self, client: usize) {
        let Some(op) = self.clients[client].op.as_ref() else {
            if self.phase != Phase::Quiesce {
                self.start_op(client);
            }
            return;
        };
        let (id, attempt, deadline) = (op.id, op.attempt, op.deadline);
        if self.now >= deadline {
            match id {
                // Timed out: an attempt still out may yet take effect; refusals alone mean it did not.
                Some(id) => {
                    let outcome = if attempt.is_some() { Outcome::Unknown } else { Outcome::Fail };
                    self.complete_op(client, id, outcome);
                }
                None => self.session_read_failed(client),
            }
            let guess = self.random_launched_node();
            self.clients[client].guess = guess;
            return;
        }
        if attempt.is_none() {
            self.send_attempt(client);
        }
    }

    /// A node that has been started, uniformly (all of them when there are no spares).
    fn random_launched_node(&mut self) -> usize {
        let launched: Vec<usize> = (0..self.nodes.len()).filter(|node| self.nodes[*node].launched).collect();
        launched[self.rng.below(launched.len() as u64) as usize]
    }

    fn start_op(&mut self, client: usize) {
        let key = self.rng.below(self.knobs.keys);
        let command = match self.rng.below(100) {
            0..45 => Command::Read,
            45..75 => {
                self.next_value += 1;
                Command::Write(self.next_value * 1_000_000)
            }
            75..90 => {
                self.next_value += 1;
                let expected = self.clients[client].seen.get(&key).copied().unwrap_or(0);
                Command::Cas { expected, new: self.next_value * 1_000_000 }
            }
            _ => Command::Incr,
        };
        let deadline = self.now + self.knobs.client_timeout_ms;
        if command == Command::Read && self.options.sessions && self.rng.chance(1, 2) {
            // A session read from a random replica, with the session's token.
            let node = self.random_launched_node();
            let token = self.clients[client].token;
            self.trace_line(|| format!("client {client} session read k{key} at n{} token {token}", node + 1));
            self.clients[client].op =
                Some(ClientOp { id: None, session: Some((node, token)), key, command, deadline, attempt: None });
        } else {
            let id = self.history.invoke(client as u64, key, command, self.now);
            self.trace_line(|| format!("client {client} invoke #{} k{key} {command:?}", id.0));
            self.clients[client].op =
                Some(ClientOp { id: Some(id), session: None, key, command, deadline, attempt: None });
        }
        self.send_attempt(client);
        self.wake_client(client, deadline);
    }

    fn send_attempt(&mut self, client: usize) {
        self.next_request += 1;
        let request = self.next_request;
        let c = &mut self.clients[client];
        let Some(op) = c.op.as_mut() else { return };
        op.attempt = Some(request);
        let (key, command, deadline, session) = (op.key, op.command, op.deadline, op.session);
        let guess = c.guess;
        let (to, payload) = match session {
            Some((node, token)) => (node, Payload::SessionRead { request, key, token }),
            None => (guess, Payload::Request { request, key, command }),
        };
        self.send(Endpoint::Client(client), Endpoint::Node(to), payload);
        self.wake_client(client, deadline);
    }

    fn client_reply(&mut self, client: usize, request: u64, reply: ClientReply) {
        let Some(op) = self.clients[client].op.as_mut() else { return };
        if op.attempt != Some(request) {
            return; // An answer to an attempt already given up on.
        }
        let (id, key, command, session) = (op.id, op.key, op.command, op.session);
        let Some(id) = id else {
            match (reply, session) {
                (ClientReply::SessionRead { value, index }, Some((node, token))) => {
                    let event = SessionEvent::Read {
                        client: client as u64,
                        key,
                        token,
                        value,
                        node: self.nodes[node].id,
                        served: index,
                        at_ms: self.now,
                    };
                    self.sessions.record(event);
                    let c = &mut self.clients[client];
                    c.token = c.token.max(index);
                    self.trace_line(|| format!("client {client} session read k{key} -> {value:?} at {index}"));
                    self.finish_op(client);
                }
                _ => self.session_read_failed(client),
            }
            return;
        };
        match reply {
            ClientReply::Ok(output, index) => {
                let seen = match output {
                    Output::Read(value) => value,
                    Output::Incr(value) => Some(value),
                    Output::Cas(true) => match command {
                        Command::Cas { new, .. } => Some(new),
                        _ => None,
                    },
                    Output::Written | Output::Cas(false) => None,
                };
                if let Some(value) = seen {
                    self.clients[client].seen.insert(key, value);
                }
                if let Some(index) = index {
                    self.sessions.record(SessionEvent::Wrote { client: client as u64, index });
                    let c = &mut self.clients[client];
                    c.token = c.token.max(index);
                }
                let is_write = !matches!(command, Command::Read);
                if is_write && self.phase == Phase::Liveness && self.stats.write_after_heal_ms.is_none() {
                    let invoked = self.history.operations()[id.0].invoke_ms;
                    if invoked >= self.heal_at {
                        self.stats.write_after_heal_ms = Some(self.now - self.heal_at);
                    }
                }
                self.complete_op(client, id, Outcome::Ok(output));
            }
            ClientReply::Fail | ClientReply::SessionRead { .. } => self.complete_op(client, id, Outcome::Fail),
            ClientReply::Retry(hint) => {
                if let Some(op) = self.clients[client].op.as_mut() {
                    op.attempt = None;
                }
                let guess = match hint {
                    Some(hint) => usize::try_from(hint.0 - 1).unwrap_or(0),
                    None => self.random_launched_node(),
                };
                self.clients[client].guess = guess;
                let at = self.now + 1 + self.rng.below(RETRY_BACKOFF_MS_MAX);
                self.wake_client(client, at);
            }
        }
    }

    fn complete_op(&mut self, client: usize, id: OpId, outcome: Outcome) {
        self.history.complete(id, outcome, self.now);
        self.trace_line(|| format!("client {client} complete #{} {outcome:?}", id.0));
        self.finish_op(client);
    }

    /// A session read the replica gave up on (or that got no answer): nothing to check.
    fn session_read_failed(&mut self, client: usize) {
        self.stats.session_reads_failed += 1;
        self.trace_line(|| format!("client {client} session read failed"));
        self.finish_op(client);
    }

    fn finish_op(&mut self, client: usize) {
        self.clients[client].op = None;
        let think = self.now + self.rng.below(self.knobs.think_ms_max + 1);
        self.wake_client(client, think);
    }

    // ---------------------------------------------------------------- the end

    /// Clients are idle, and every member of the group (in the one leader's configuration) has
    /// applied the whole log of the leader: the same terms at every index, not only as many entries
    /// (under `async` / `semi-sync` a member may have applied as many entries of a log a failover
    /// lost, which the leader has not yet found: seed 1011391, async, stopped waiting and failed the
    /// final checks while the leader was still streaming it a snapshot). Nodes outside the group are
    /// not waited for.
    fn converged(&self) -> bool {
        if self.clients.iter().any(|client| client.op.is_some()) {
            return false;
        }
        let leaders: Vec<&Raft> = self
            .nodes
            .iter()
            .filter_map(|node| node.raft.as_ref())
            .filter(|raft| raft.role() == Role::Leader)
            .collect();
        let [leader] = leaders.as_slice() else { return false };
        let leader_node = &self.nodes[usize::try_from(leader.node_id().0 - 1).unwrap_or(0)];
        if leader.commit_index() != leader.last_index() || leader_node.state.applied_index() != leader.commit_index() {
            return false;
        }
        let config = leader.membership();
        self.nodes.iter().filter(|node| config.is_member(node.id)).all(|node| {
            node.raft.is_some()
                && !node.diverged
                && node.state.applied_index() == leader.commit_index()
                && node.applied_terms == leader_node.applied_terms
        })
    }

    /// The node that leads in the highest term, if any.
    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|node| self.nodes[*node].raft.as_ref().is_some_and(|raft| raft.role() == Role::Leader))
            .max_by_key(|node| self.nodes[*node].raft.as_ref().map(Raft::term))
    }

    fn final_checks(&mut self) {
        let Some(leader) = self.leader() else { return };
        let leader_id = self.nodes[leader].id;
        let config = self.nodes[leader].raft.as_ref().map(|raft| raft.membership().clone()).unwrap_or_default();
        // Every replica's applied sequence is a prefix of one: members' and, under `quorum` / `all`,
        // former members' too (under `async` / `semi-sync` a node removed after applying entries a
        // failover lost keeps them: nobody repairs a node outside the group).
        let strict = self.strict();
        let sequences: Vec<(NodeId, &[Term])> = self
            .nodes
            .iter()
            .filter(|node| strict || config.is_member(node.id))
            .map(|node| (node.id, node.applied_terms.as_slice()))
            .collect();
        let problems = check_prefixes(&sequences);
        for problem in problems {
            self.fail(problem);
        }
        // Every member holds the leader's key-value state (`converged` found one leader).
        let reference: Vec<(&[u8], &[u8])> =
            self.nodes[leader].state.iter().map(|(key, value, _)| (key, value)).collect();
        let differing: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|node| config.is_member(node.id))
            .filter(|node| !node.state.iter().map(|(key, value, _)| (key, value)).eq(reference.iter().copied()))
            .map(|node| node.id)
            .collect();
        for id in differing {
            self.fail(format!("convergence: node {id}'s key-value state differs from the leader's (node {leader_id})"));
        }
        // Acknowledged writes that did not survive.
        let final_terms = &self.nodes[leader].applied_terms;
        let lost = self
            .acknowledged
            .iter()
            .filter(|(index, term)| {
                let position = usize::try_from(index.0 - 1).unwrap_or(usize::MAX);
                final_terms.get(position) != Some(term)
            })
            .count() as u64;
        self.stats.acknowledged_writes_lost = lost;
        if lost > 0 && self.strict() {
            self.fail(format!("{lost} acknowledged writes are not in the final log under {}", self.options.durability));
        }
    }
}

fn key_bytes(key: u64) -> Bytes {
    Bytes::from(format!("k{key}"))
}

/// What an entry writes, per key of the simulated workload (`k<n>` keys, integer values).
fn entry_writes(entry: &LogEntry) -> Vec<(u64, Option<u64>)> {
    let EntryPayload::Write(ops) = &entry.payload else { return Vec::new() };
    let key_of = |key: &[u8]| std::str::from_utf8(key).ok()?.strip_prefix('k')?.parse::<u64>().ok();
    let mut writes = Vec::new();
    for op in ops {
        match op {
            WriteOp::Put { key, value, .. } => {
                if let Some(key) = key_of(key) {
                    writes.push((key, std::str::from_utf8(value).ok().and_then(|text| text.parse().ok())));
                }
            }
            WriteOp::Delete { key } => {
                if let Some(key) = key_of(key) {
                    writes.push((key, None));
                }
            }
            WriteOp::Clear => {}
        }
    }
    writes
}

fn endpoint(endpoint: Endpoint) -> String {
    match endpoint {
        Endpoint::Node(node) => format!("n{}", node + 1),
        Endpoint::Client(client) => format!("c{client}"),
    }
}

/// A message in a few words, for the trace.
fn describe(payload: &Payload) -> String {
    match payload {
        Payload::Peer(message) => match message {
            Message::PreVote(request) => {
                format!("PreVote t{} last {}/{}", request.term, request.last_log_index, request.last_log_term)
            }
            Message::RequestVote(request) => format!(
                "RequestVote t{} last {}/{}{}",
                request.term,
                request.last_log_index,
                request.last_log_term,
                if request.leadership_transfer { " transfer" } else { "" }
            ),
            Message::PreVoteResponse(response) => format!("PreVoteResponse t{} {}", response.term, response.granted),
            Message::RequestVoteResponse(response) => format!("VoteResponse t{} {}", response.term, response.granted),
            Message::AppendEntries(append) => format!(
                "Append t{} prev {}/{} n{} commit {} seq {}",
                append.term,
                append.prev_log_index,
                append.prev_log_term,
                append.entries.len(),
                append.leader_commit,
                append.read_seq
            ),
            Message::AppendEntriesResponse(response) => match response.outcome {
                AppendOutcome::Accepted { last_appended, match_index } => {
                    format!(
                        "AppendOk t{} appended {last_appended} match {match_index} seq {}",
                        response.term, response.read_seq
                    )
                }
                AppendOutcome::Rejected { prev_log_index, hint_index, hint_term } => {
                    format!("AppendRejected t{} prev {prev_log_index} hint {hint_index}/{hint_term}", response.term)
                }
                AppendOutcome::NeedsSnapshot => format!("NeedsSnapshot t{}", response.term),
            },
            Message::TimeoutNow { term } => format!("TimeoutNow t{term}"),
            Message::SnapshotRequired { term } => format!("SnapshotRequired t{term}"),
        },
        Payload::Snapshot(transfer) => {
            format!("Snapshot t{} at {}/{}", transfer.leader_term, transfer.meta.index, transfer.meta.term)
        }
        Payload::Request { request, key, command } => format!("request {request} k{key} {command:?}"),
        Payload::SessionRead { request, key, token } => format!("session read {request} k{key} token {token}"),
        Payload::Reply { request, reply } => format!("reply {request} {reply:?}"),
    }
}
