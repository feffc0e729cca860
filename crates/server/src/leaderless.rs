//! Leaderless mode (`mode = "leaderless"`): the node runs a [`Coordinator`] instead of the Raft
//! replica for key-value commands.
//!
//! ```text
//!   connection ── GET/SET/DEL/INCR.. ─▶ LeaderlessNode::submit ─┐
//!   peer ──── PeerMessage::Leaderless ─▶ LeaderlessNode::receive ├─▶ under the mutex: Coordinator
//!   timer (TICK_INTERVAL) ─────────────▶ LeaderlessNode::tick ───┘    + DurableStore (records)
//!                                                                       │
//!            records appended to the store log (still under the mutex, in order)
//!            fdatasync (group commit, outside the mutex) ─▶ then the effects: peer messages
//!            (acks included) and client replies
//! ```
//!
//! A write counts as stored on a replica only once its record is on disk there: every effect
//! (including `PutAck`, and the coordinator's own reply, which counts its local copy) leaves only
//! after the records written by the same input are synced.
//!
//! Writes must be coordinated by a home replica of the key; the coordinator answers
//! `NotAHomeReplica { forward_to }` elsewhere, and the node forwards the request there itself
//! (once: a forwarded request is never forwarded again) and relays the outcome.
//!
//! A simple failure detector: every node sends `Hello` to every peer each `failure_timeout_ms / 5`;
//! a peer not heard from (any message counts) for `failure_timeout_ms` is marked down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_core::command::{CommandKind, CommandSpec};
use chorus_core::leaderless::coordinator::Effect;
use chorus_core::leaderless::{
    ClientReply, Coordinator, CoordinatorConfig, CoordinatorStats, HintChange, Message, Payload, Put, Quorum,
    RequestError, Store, VersionVector, VersionedValue,
};
use chorus_core::{NodeId, RequestId, UnixMillis};
use chorus_resp::Reply;
use chorus_transport::PeerNetwork;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::config::{FsyncPolicy, LeaderlessConfig, NodeConfig};
use crate::connection::ConnectionState;
use crate::context::{NodeContext, now_millis};
use crate::core_handle::CoreHandle;
use crate::node_commands::Dispatch;
use crate::peer::PeerMessage;

/// How often the coordinator is ticked (timeouts, handoff, anti-entropy, the failure detector).
pub const TICK_INTERVAL: Duration = Duration::from_millis(20);
/// Peer messages handled as one input (one store-log sync) at most.
const RECEIVE_BATCH_MAX: usize = 256;
/// The store log's file name in the data directory.
const STORE_LOG: &str = "leaderless.log";
/// A record longer than this is taken as corruption (a torn or garbled length).
const RECORD_BYTES_MAX: usize = 1 << 30;

/// What leaderless nodes say to each other (inside [`PeerMessage::Leaderless`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderlessMessage {
    Core(Message),
    /// A write this node cannot coordinate (not a home replica of the key): run it and answer with
    /// `ForwardReply { id }`.
    Forward {
        id: u64,
        op: Op,
        quorum: Option<Quorum>,
    },
    ForwardReply {
        id: u64,
        outcome: Outcome,
    },
}

/// One key-value operation for the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    Get {
        key: Bytes,
    },
    /// `overwrite`: supersede whatever the coordinating replica's copy has seen (plain SET and DEL),
    /// on top of `context`; without it only what `context` covers is superseded (CHORUS.PUT).
    Put {
        key: Bytes,
        payload: Payload,
        context: VersionVector,
        overwrite: bool,
    },
    Increment {
        key: Bytes,
        delta: i64,
    },
}

/// How an operation ended (travels back with a forwarded request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// `existed`: the coordinator's copy had a live value before (what DEL counts).
    Written {
        existed: bool,
    },
    Incremented {
        value: i64,
    },
    Read {
        values: Vec<Bytes>,
        chosen: Option<Bytes>,
        context: Bytes,
    },
    Failed(String),
}

/// A client request parsed by [`dispatch`].
#[derive(Debug, Clone)]
pub enum Request {
    Get(Bytes),
    GetAll(Bytes),
    Set(Bytes, Bytes),
    /// CHORUS.PUT: a write superseding what `context` saw.
    Put {
        key: Bytes,
        value: Bytes,
        context: VersionVector,
    },
    Del(Vec<Bytes>),
    Increment(Bytes, i64),
}

/// How to turn an outcome into the client's reply.
#[derive(Debug, Clone, Copy)]
enum Render {
    Value,
    All,
    Ok,
    Integer,
}

/// Where an operation's outcome goes.
#[derive(Debug, Clone, Copy)]
enum Continuation {
    Client {
        connection: u64,
        sequence: u64,
        render: Render,
    },
    /// One key of a multi-key DEL.
    DelPart {
        aggregate: u64,
    },
    /// A request forwarded by `from`, who waits for `ForwardReply { id }`.
    Remote {
        from: NodeId,
        id: u64,
    },
}

struct PendingOp {
    continuation: Continuation,
    op: Op,
    quorum: Option<Quorum>,
    /// Whether the request was forwarded to this node already (it is never forwarded again).
    forwarded: bool,
    existed: bool,
}

struct ForwardedOp {
    continuation: Continuation,
    deadline: UnixMillis,
}

struct DelAggregate {
    connection: u64,
    sequence: u64,
    remaining: usize,
    deleted: i64,
    error: Option<String>,
}

/// Something to do once the records of the input that produced it are durable.
enum Output {
    Send(NodeId, LeaderlessMessage),
    Reply { connection: u64, sequence: u64, reply: Reply },
}

/// Counters of the node's own (on top of the coordinator's).
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeStats {
    pub forwarded: u64,
    pub forwards_received: u64,
    pub forward_timeouts: u64,
    pub peers_down: u64,
    pub store_records: u64,
}

/// Store log records.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Put {
        key: Bytes,
        value: VersionedValue,
    },
    Remove {
        key: Bytes,
    },
    /// The hint this node holds for `home` (a down home replica) of `key`.
    Hint {
        home: u64,
        key: Bytes,
        value: VersionedValue,
    },
    /// The hint was handed off.
    HintDropped {
        home: u64,
        key: Bytes,
    },
}

/// Hints held for other nodes, by (home replica, key).
type Hints = BTreeMap<(u64, Bytes), VersionedValue>;

/// What the store log holds.
#[derive(Default)]
struct Loaded {
    keys: HashMap<Bytes, VersionedValue>,
    hints: Hints,
}

/// The local key-value data: the containers in memory, every change also encoded as a record for
/// the store log (appended by the node after each input, before its effects leave).
#[derive(Default)]
pub struct DurableStore {
    keys: HashMap<Bytes, VersionedValue>,
    records: Vec<u8>,
    record_count: u64,
    encode_error: Option<String>,
}

impl DurableStore {
    fn record(&mut self, record: &Record) {
        match encode_record(record) {
            Ok(frame) => {
                self.records.extend_from_slice(&frame);
                self.record_count += 1;
            }
            Err(error) => self.encode_error = Some(error),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// (keys with more than one live sibling, the most live siblings of any key).
    fn sibling_counts(&self) -> (u64, usize) {
        let mut with_siblings = 0;
        let mut most = 0;
        for value in self.keys.values() {
            let live = value.read().values.len();
            if live > 1 {
                with_siblings += 1;
            }
            most = most.max(live);
        }
        (with_siblings, most)
    }
}

impl Store for DurableStore {
    fn get(&self, key: &[u8]) -> Option<VersionedValue> {
        self.keys.get(key).cloned()
    }

    fn put(&mut self, key: Bytes, value: VersionedValue) {
        self.record(&Record::Put { key: key.clone(), value: value.clone() });
        self.keys.insert(key, value);
    }

    fn remove(&mut self, key: &[u8]) {
        if self.keys.remove(key).is_some() {
            self.record(&Record::Remove { key: Bytes::copy_from_slice(key) });
        }
    }
}

fn encode_record(record: &Record) -> Result<Vec<u8>, String> {
    let payload = postcard::to_allocvec(record).map_err(|error| error.to_string())?;
    let length = u32::try_from(payload.len()).map_err(|_| "record too large".to_string())?;
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&length.to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreLogError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreLogError {
    let context = context.into();
    move |source| StoreLogError::Io { context, source }
}

/// Reads the store log: every whole, intact record in order; stops at the first torn or corrupt
/// one (a crash mid-append). Returns the keys and how many records were read.
fn replay(path: &Path) -> Result<(Loaded, u64, bool), StoreLogError> {
    let mut loaded = Loaded::default();
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut data).map_err(io_error(format!("cannot read {}", path.display())))?;
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((loaded, 0, false)),
        Err(error) => {
            return Err(StoreLogError::Io { context: format!("cannot open {}", path.display()), source: error });
        }
    }
    let mut offset = 0usize;
    let mut count = 0u64;
    let mut torn = false;
    while offset < data.len() {
        let Some(header) = data.get(offset..offset + 8) else {
            torn = true;
            break;
        };
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = data.get(offset + 8..offset + 8 + length).filter(|_| length <= RECORD_BYTES_MAX) else {
            torn = true;
            break;
        };
        if crc32fast::hash(payload) != crc {
            torn = true;
            break;
        }
        match postcard::from_bytes::<Record>(payload) {
            Ok(Record::Put { key, value }) => {
                loaded.keys.insert(key, value);
            }
            Ok(Record::Remove { key }) => {
                loaded.keys.remove(&key);
            }
            Ok(Record::Hint { home, key, value }) => {
                loaded.hints.insert((home, key), value);
            }
            Ok(Record::HintDropped { home, key }) => {
                loaded.hints.remove(&(home, key));
            }
            Err(_) => {
                torn = true;
                break;
            }
        }
        offset += 8 + length;
        count += 1;
    }
    Ok((loaded, count, torn))
}

/// The append-only store log, with group commit.
struct StoreLog {
    file: File,
    fsync: FsyncPolicy,
    written: AtomicU64,
    /// The highest `written` value known durable, and when the last sync ran.
    synced: Mutex<(u64, Instant)>,
    failed: AtomicBool,
}

impl StoreLog {
    /// Replays the log at `dir`, then rewrites it compacted (one record per key), durably.
    fn open(dir: &Path, fsync: FsyncPolicy) -> Result<(StoreLog, Loaded), StoreLogError> {
        let path = dir.join(STORE_LOG);
        let (loaded, records, torn) = replay(&path)?;
        if torn {
            tracing::warn!(path = %path.display(), records, "the store log ends with a torn or corrupt record (a crash mid-write); it is dropped");
        }
        let temporary = dir.join(format!("{STORE_LOG}.compacting"));
        let mut compacted = Vec::new();
        let puts = loaded.keys.iter().map(|(key, value)| Record::Put { key: key.clone(), value: value.clone() });
        let hints = loaded.hints.iter().map(|((home, key), value)| Record::Hint {
            home: *home,
            key: key.clone(),
            value: value.clone(),
        });
        for record in puts.chain(hints) {
            let frame = encode_record(&record).map_err(|error| StoreLogError::Io {
                context: "cannot encode a record".into(),
                source: std::io::Error::other(error),
            })?;
            compacted.extend_from_slice(&frame);
        }
        let mut file = File::create(&temporary).map_err(io_error(format!("cannot create {}", temporary.display())))?;
        file.write_all(&compacted).map_err(io_error(format!("cannot write {}", temporary.display())))?;
        file.sync_all().map_err(io_error(format!("cannot sync {}", temporary.display())))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(io_error(format!("cannot rename to {}", path.display())))?;
        File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_error(format!("cannot sync {}", dir.display())))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(format!("cannot open {}", path.display())))?;
        tracing::info!(
            keys = loaded.keys.len(),
            hints = loaded.hints.len(),
            replayed = records,
            "leaderless store loaded"
        );
        let log = StoreLog {
            file,
            fsync,
            written: AtomicU64::new(0),
            synced: Mutex::new((0, Instant::now())),
            failed: AtomicBool::new(false),
        };
        Ok((log, loaded))
    }

    /// Appends `frames` (called in order, under the node's mutex). Returns the position to sync to.
    fn append(&self, frames: &[u8]) -> Result<u64, std::io::Error> {
        (&self.file).write_all(frames)?;
        Ok(self.written.fetch_add(frames.len() as u64, Ordering::AcqRel) + frames.len() as u64)
    }

    /// Makes everything appended up to `position` durable (per the fsync policy); concurrent
    /// callers share one fdatasync.
    fn sync_to(&self, position: u64) -> Result<(), std::io::Error> {
        let mut synced = self.synced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if synced.0 >= position {
            return Ok(());
        }
        let due = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Periodic(interval) => synced.1.elapsed() >= interval,
            FsyncPolicy::Never => false,
        };
        if !due {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        self.file.sync_data()?;
        *synced = (target, Instant::now());
        Ok(())
    }
}

struct Inner {
    me: NodeId,
    coordinator: Coordinator,
    store: DurableStore,
    pending: HashMap<u64, PendingOp>,
    forwards: HashMap<u64, ForwardedOp>,
    deletes: HashMap<u64, DelAggregate>,
    next_id: u64,
    last_heard: BTreeMap<NodeId, Instant>,
    /// Peers not heard from since this process started (the failure detector gives them
    /// `failure_timeout_ms` before marking them down, so "not down" alone does not mean reached).
    unheard: BTreeSet<NodeId>,
    down: BTreeMap<NodeId, bool>,
    stats: NodeStats,
    outputs: Vec<Output>,
}

/// The leaderless half of a node.
pub struct LeaderlessNode {
    inner: Mutex<Inner>,
    log: StoreLog,
    network: PeerNetwork<PeerMessage>,
    core: CoreHandle,
    isolated: Arc<AtomicBool>,
    config: LeaderlessConfig,
    request_timeout_ms: u64,
    node_id: NodeId,
}

/// INFO's view of a leaderless node.
#[derive(Debug, Clone)]
pub struct Status {
    pub coordinator: CoordinatorStats,
    pub node: NodeStats,
    pub keys: usize,
    pub hints: usize,
    pub keys_with_siblings: u64,
    pub siblings_max: usize,
    pub peers_down: Vec<NodeId>,
    /// Peers not heard from since this node started.
    pub peers_unheard: Vec<NodeId>,
    pub quorum: Quorum,
    pub in_flight: usize,
}

impl LeaderlessNode {
    /// Loads the store from `data_dir` and builds the coordinator.
    pub fn open(
        node_config: &NodeConfig,
        members: &BTreeMap<u64, SocketAddr>,
        network: PeerNetwork<PeerMessage>,
        core: CoreHandle,
        isolated: Arc<AtomicBool>,
    ) -> Result<LeaderlessNode, StoreLogError> {
        let config = node_config.leaderless;
        let (log, Loaded { keys, hints }) = StoreLog::open(&node_config.data_dir, node_config.fsync)?;
        let me = NodeId(node_config.id);
        let mut coordinator_config = CoordinatorConfig::new(me);
        coordinator_config.quorum = Quorum { n: config.n, w: config.w, r: config.r };
        coordinator_config.request_timeout_ms = config.request_timeout_ms;
        coordinator_config.anti_entropy_interval_ms = config.anti_entropy_interval_ms;
        coordinator_config.handoff_interval_ms = config.handoff_interval_ms;
        coordinator_config.track_hint_changes = true;
        let mut member_ids: Vec<NodeId> = members.keys().map(|&id| NodeId(id)).collect();
        if !member_ids.contains(&me) {
            member_ids.push(me);
        }
        let mut coordinator = Coordinator::new(coordinator_config, member_ids.clone());
        let now = now_millis();
        for (key, value) in &keys {
            coordinator.load(now, key.clone(), value);
        }
        for ((home, key), value) in hints {
            coordinator.load_hint(now, NodeId(home), key, value);
        }
        let started = Instant::now();
        let peers: Vec<NodeId> = member_ids.into_iter().filter(|&node| node != me).collect();
        let inner = Inner {
            me,
            coordinator,
            store: DurableStore { keys, ..DurableStore::default() },
            pending: HashMap::new(),
            forwards: HashMap::new(),
            deletes: HashMap::new(),
            // Ids travel to peers (`Forward { id }`) and come back: a reply to a request from
            // before a restart, delivered late, must not match a new one. Start past every id an
            // earlier process could have used (the time, packed like the coordinator's op ids).
            next_id: now.0 << 16,
            last_heard: peers.iter().map(|&peer| (peer, started)).collect(),
            unheard: peers.iter().copied().collect(),
            down: peers.iter().map(|&peer| (peer, false)).collect(),
            stats: NodeStats::default(),
            outputs: Vec::new(),
        };
        Ok(LeaderlessNode {
            inner: Mutex::new(inner),
            log,
            network,
            core,
            isolated,
            request_timeout_ms: config.request_timeout_ms,
            config,
            node_id: me,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `input` under the mutex, appends the records it produced, makes them durable, then
    /// performs its outputs.
    fn run<T>(&self, input: impl FnOnce(&mut Inner, UnixMillis) -> T) -> T {
        let (result, outputs, position) = {
            let mut inner = self.lock();
            let now = now_millis();
            let result = input(&mut inner, now);
            inner.process_effects(now, self.request_timeout_ms);
            inner.record_hint_changes();
            let outputs = std::mem::take(&mut inner.outputs);
            let frames = std::mem::take(&mut inner.store.records);
            if let Some(error) = inner.store.encode_error.take() {
                tracing::error!(%error, "cannot encode a store record; refusing requests from now on");
                self.log.failed.store(true, Ordering::Release);
            }
            inner.stats.store_records = inner.store.record_count;
            let position = if frames.is_empty() || self.log.failed.load(Ordering::Acquire) {
                Ok(0)
            } else {
                self.log.append(&frames)
            };
            (result, outputs, position)
        };
        let durable = position.and_then(|position| {
            if self.log.fsync == FsyncPolicy::Never {
                return Ok(());
            }
            // An fdatasync blocks: let the runtime move this worker's other tasks elsewhere meanwhile.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(|| self.log.sync_to(position))
                }
                _ => self.log.sync_to(position),
            }
        });
        if let Err(error) = &durable
            && !self.log.failed.swap(true, Ordering::AcqRel)
        {
            // Never retry a failed fsync: its pages may be gone while a retry reports success.
            tracing::error!(%error, "the leaderless store log cannot be written; refusing requests from now on");
        }
        let failed = self.log.failed.load(Ordering::Acquire);
        for output in outputs {
            match output {
                Output::Send(to, message) => {
                    if !failed && !self.isolated.load(Ordering::Relaxed) {
                        self.network.send(to.0, &PeerMessage::Leaderless(message));
                    }
                }
                Output::Reply { connection, sequence, reply } => {
                    let reply = if failed { Reply::err("the node's store cannot be written") } else { reply };
                    self.core.deliver(connection, sequence, reply);
                }
            }
        }
        result
    }

    /// A client request; the reply goes to the connection's channel under `sequence`.
    pub fn submit(&self, connection: u64, sequence: u64, request: Request, quorum: Option<Quorum>) {
        if self.log.failed.load(Ordering::Acquire) {
            self.core.deliver(connection, sequence, Reply::err("the node's store cannot be written"));
            return;
        }
        self.run(|inner, now| {
            let client = |render| Continuation::Client { connection, sequence, render };
            match request {
                Request::Get(key) => inner.submit(now, Op::Get { key }, quorum, client(Render::Value), false),
                Request::GetAll(key) => inner.submit(now, Op::Get { key }, quorum, client(Render::All), false),
                Request::Set(key, value) => {
                    let op =
                        Op::Put { key, payload: Payload::Value(value), context: VersionVector::new(), overwrite: true };
                    inner.submit(now, op, quorum, client(Render::Ok), false);
                }
                Request::Put { key, value, context } => {
                    let op = Op::Put { key, payload: Payload::Value(value), context, overwrite: false };
                    inner.submit(now, op, quorum, client(Render::Ok), false);
                }
                Request::Increment(key, delta) => {
                    inner.submit(now, Op::Increment { key, delta }, quorum, client(Render::Integer), false);
                }
                Request::Del(keys) => {
                    let aggregate = inner.next_id();
                    let remaining = keys.len();
                    inner
                        .deletes
                        .insert(aggregate, DelAggregate { connection, sequence, remaining, deleted: 0, error: None });
                    for key in keys {
                        let op = Op::Put {
                            key,
                            payload: Payload::Tombstone,
                            context: VersionVector::new(),
                            overwrite: true,
                        };
                        inner.submit(now, op, quorum, Continuation::DelPart { aggregate }, false);
                    }
                }
            }
        });
    }

    /// Messages from peers, handled as one input: their records share one append and one sync
    /// (group commit for replicas: a replica taking `Put`s from busy coordinators would otherwise
    /// sync once per message, one after the other, and every quorum with `w >= 2` would wait
    /// behind that queue).
    pub fn receive_batch(&self, messages: Vec<(u64, LeaderlessMessage)>) {
        self.run(|inner, now| {
            for (from, message) in messages {
                inner.receive(now, NodeId(from), message);
            }
        });
    }

    /// A peer is alive (its hello, or any message).
    pub fn heard(&self, from: u64) {
        self.lock().heard(NodeId(from));
    }

    /// Time passes: the coordinator's timers, forwarded requests past their deadline, and the
    /// failure detector.
    pub fn tick(&self) {
        let failure_timeout = Duration::from_millis(self.config.failure_timeout_ms);
        self.run(|inner, now| {
            let Inner { coordinator, store, .. } = inner;
            coordinator.tick(now, store);
            let expired: Vec<u64> =
                inner.forwards.iter().filter(|(_, forwarded)| forwarded.deadline <= now).map(|(&id, _)| id).collect();
            for id in expired {
                if let Some(forwarded) = inner.forwards.remove(&id) {
                    inner.stats.forward_timeouts += 1;
                    inner.complete(forwarded.continuation, Outcome::Failed("forwarded request timed out".into()));
                }
            }
            let verdicts: Vec<(NodeId, bool)> =
                inner.last_heard.iter().map(|(&peer, at)| (peer, at.elapsed() > failure_timeout)).collect();
            for (peer, down) in verdicts {
                if inner.down.get(&peer) != Some(&down) {
                    if down {
                        inner.stats.peers_down += 1;
                        tracing::warn!(%peer, "peer not heard from: marked down (fallbacks stand in)");
                    } else {
                        tracing::info!(%peer, "peer is back: marked up");
                    }
                    inner.down.insert(peer, down);
                    inner.coordinator.set_down(peer, down);
                }
            }
        });
    }

    /// `CHORUS.DIGEST [peer]`: the Merkle root of the whole local store, or of the slots shared
    /// with `peer`.
    pub fn digest(&self, peer: Option<u64>) -> Result<u64, String> {
        let mut inner = self.lock();
        match peer {
            None => Ok(inner.coordinator.merkle_tree().root()),
            Some(peer) if peer == self.node_id.0 => Err("a node shares every slot with itself; omit the peer".into()),
            Some(peer) if !inner.last_heard.contains_key(&NodeId(peer)) => Err(format!("node {peer} is not a member")),
            Some(peer) => Ok(inner.coordinator.shared_digest(NodeId(peer))),
        }
    }

    /// `CHORUS.DIGEST SLOTS [peer]`: per slot, the digest anti-entropy compares.
    pub fn slot_digests(&self, peer: Option<u64>) -> Result<Vec<(chorus_core::Slot, u64)>, String> {
        let inner = self.lock();
        match peer {
            None => Ok(inner.coordinator.slot_digests(None)),
            Some(peer) if peer == self.node_id.0 => Err("a node shares every slot with itself; omit the peer".into()),
            Some(peer) if !inner.last_heard.contains_key(&NodeId(peer)) => Err(format!("node {peer} is not a member")),
            Some(peer) => Ok(inner.coordinator.slot_digests(Some(NodeId(peer)))),
        }
    }

    /// Keys in the local store (tombstones not yet collected included).
    pub fn key_count(&self) -> usize {
        self.lock().store.len()
    }

    pub fn default_quorum(&self) -> Quorum {
        Quorum { n: self.config.n, w: self.config.w, r: self.config.r }
    }

    pub fn status(&self) -> Status {
        let inner = self.lock();
        let (keys_with_siblings, siblings_max) = inner.store.sibling_counts();
        Status {
            coordinator: inner.coordinator.stats(),
            node: inner.stats,
            keys: inner.store.len(),
            hints: inner.coordinator.hint_count(),
            keys_with_siblings,
            siblings_max,
            peers_down: inner.down.iter().filter(|(_, down)| **down).map(|(&peer, _)| peer).collect(),
            peers_unheard: inner.unheard.iter().copied().collect(),
            quorum: self.default_quorum(),
            in_flight: inner.pending.len() + inner.forwards.len(),
        }
    }

    /// Starts the tasks: peer messages in, hellos out, the ticker.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        mut inbound: tokio::sync::mpsc::Receiver<(u64, PeerMessage)>,
        client_addr: SocketAddr,
    ) -> Vec<JoinHandle<()>> {
        let node = Arc::clone(self);
        let receiver = tokio::spawn(async move {
            while let Some(first) = inbound.recv().await {
                // Whatever else has arrived goes with it, as one input (one sync for all).
                let mut batch = Vec::new();
                let mut next = Some(first);
                while let Some((from, message)) = next {
                    if !node.isolated.load(Ordering::Relaxed) {
                        match message {
                            PeerMessage::Leaderless(message) => batch.push((from, message)),
                            PeerMessage::Hello { .. } => node.heard(from),
                            PeerMessage::Raft(_) | PeerMessage::SnapshotChunk(_) | PeerMessage::Ml(_) => {
                                tracing::debug!(
                                    from,
                                    "a single-leader or multi-leader message in leaderless mode; ignored"
                                );
                            }
                        }
                    }
                    next = if batch.len() < RECEIVE_BATCH_MAX { inbound.try_recv().ok() } else { None };
                }
                if !batch.is_empty() {
                    node.receive_batch(batch);
                }
            }
        });
        let node = Arc::clone(self);
        let hello_every = Duration::from_millis((self.config.failure_timeout_ms / 5).max(1));
        // Leaderless mode has no datacenters (yet): every node says the default one.
        let datacenter = crate::config::DEFAULT_DATACENTER.to_string();
        let hello = tokio::spawn(async move {
            let mut interval = tokio::time::interval(hello_every);
            loop {
                interval.tick().await;
                if node.isolated.load(Ordering::Relaxed) {
                    continue;
                }
                for peer in node.network.peers().into_keys() {
                    node.network.send(
                        peer,
                        &PeerMessage::Hello { client_addr: client_addr.to_string(), datacenter: datacenter.clone() },
                    );
                }
            }
        });
        let node = Arc::clone(self);
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK_INTERVAL);
            loop {
                interval.tick().await;
                node.tick();
            }
        });
        vec![receiver, hello, ticker]
    }
}

impl Inner {
    fn receive(&mut self, now: UnixMillis, from: NodeId, message: LeaderlessMessage) {
        self.heard(from);
        match message {
            LeaderlessMessage::Core(message) => {
                let Inner { coordinator, store, .. } = self;
                coordinator.handle_message(now, from, message, store);
            }
            LeaderlessMessage::Forward { id, op, quorum } => {
                self.stats.forwards_received += 1;
                // A peer's quorum did not go through `Quorum::new`: check it as such.
                if let Some(quorum) = quorum
                    && let Err(error) = Quorum::new(quorum.n, quorum.w, quorum.r)
                {
                    self.complete(Continuation::Remote { from, id }, Outcome::Failed(error.to_string()));
                    return;
                }
                self.submit(now, op, quorum, Continuation::Remote { from, id }, true);
            }
            LeaderlessMessage::ForwardReply { id, outcome } => {
                if let Some(forwarded) = self.forwards.remove(&id) {
                    self.complete(forwarded.continuation, outcome);
                }
            }
        }
    }

    /// Hints held or dropped by the last input go to the store log with its other records.
    fn record_hint_changes(&mut self) {
        let changes: Vec<HintChange> = self.coordinator.drain_hint_changes().collect();
        for change in changes {
            let record = match change {
                HintChange::Held { home, key, value } => Record::Hint { home: home.0, key, value },
                HintChange::Dropped { home, key } => Record::HintDropped { home: home.0, key },
            };
            self.store.record(&record);
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn heard(&mut self, from: NodeId) {
        if let Some(at) = self.last_heard.get_mut(&from) {
            *at = Instant::now();
            self.unheard.remove(&from);
        }
    }

    /// Hands `op` to the coordinator under a fresh request id.
    fn submit(&mut self, now: UnixMillis, op: Op, quorum: Option<Quorum>, continuation: Continuation, forwarded: bool) {
        let id = self.next_id();
        let request = RequestId { connection: 0, sequence: id };
        let existed = match &op {
            Op::Put { key, .. } => self.store.get(key).is_some_and(|value| !value.read().values.is_empty()),
            _ => false,
        };
        self.pending.insert(id, PendingOp { continuation, op: op.clone(), quorum, forwarded, existed });
        let Inner { coordinator, store, .. } = self;
        match op {
            Op::Get { key } => coordinator.get(now, request, key, quorum, store),
            Op::Put { key, payload, mut context, overwrite } => {
                if overwrite && let Some(held) = store.get(&key) {
                    context.merge(held.context());
                }
                coordinator.put(now, request, Put { key, payload, context, quorum }, store);
            }
            Op::Increment { key, delta } => coordinator.increment(now, request, key, delta, quorum, store),
        }
    }

    /// Turns the coordinator's effects into outputs: peer messages, and replies (forwarding a
    /// write this node may not coordinate).
    fn process_effects(&mut self, now: UnixMillis, timeout_ms: u64) {
        let effects: Vec<Effect> = self.coordinator.drain_effects().collect();
        for effect in effects {
            match effect {
                Effect::Send { to, message } => self.outputs.push(Output::Send(to, LeaderlessMessage::Core(message))),
                Effect::Reply { request, reply } => {
                    let Some(pending) = self.pending.remove(&request.sequence) else { continue };
                    if let ClientReply::Failed(RequestError::NotAHomeReplica { forward_to: Some(node) }) = &reply
                        && !pending.forwarded
                        && *node != self.me
                    {
                        let id = self.next_id();
                        self.stats.forwarded += 1;
                        // The home replica answers within its own request timeout; allow for the hop.
                        let deadline = UnixMillis(now.0 + 2 * timeout_ms);
                        self.forwards.insert(id, ForwardedOp { continuation: pending.continuation, deadline });
                        let message = LeaderlessMessage::Forward { id, op: pending.op, quorum: pending.quorum };
                        self.outputs.push(Output::Send(*node, message));
                        continue;
                    }
                    let outcome = outcome_of(reply, pending.existed);
                    self.complete(pending.continuation, outcome);
                }
            }
        }
    }

    fn complete(&mut self, continuation: Continuation, outcome: Outcome) {
        match continuation {
            Continuation::Client { connection, sequence, render } => {
                let reply = render_outcome(render, outcome);
                self.outputs.push(Output::Reply { connection, sequence, reply });
            }
            Continuation::Remote { from, id } => {
                self.outputs.push(Output::Send(from, LeaderlessMessage::ForwardReply { id, outcome }));
            }
            Continuation::DelPart { aggregate } => {
                let Some(del) = self.deletes.get_mut(&aggregate) else { return };
                match outcome {
                    Outcome::Written { existed } => del.deleted += i64::from(existed),
                    Outcome::Failed(error) => del.error = Some(error),
                    other => del.error = Some(format!("internal error: unexpected outcome {other:?}")),
                }
                del.remaining = del.remaining.saturating_sub(1);
                if del.remaining == 0
                    && let Some(del) = self.deletes.remove(&aggregate)
                {
                    let reply = match del.error {
                        Some(error) => Reply::err(error),
                        None => Reply::Integer(del.deleted),
                    };
                    self.outputs.push(Output::Reply { connection: del.connection, sequence: del.sequence, reply });
                }
            }
        }
    }
}

fn outcome_of(reply: ClientReply, existed: bool) -> Outcome {
    match reply {
        ClientReply::Written { .. } => Outcome::Written { existed },
        ClientReply::Incremented { value, .. } => Outcome::Incremented { value },
        ClientReply::Read { values, chosen, context } => Outcome::Read { values, chosen, context: context.encode() },
        ClientReply::Failed(RequestError::NotAHomeReplica { .. }) => {
            Outcome::Failed("not a home replica of the key and no home replica is reachable; try again".into())
        }
        ClientReply::Failed(error) => Outcome::Failed(error.to_string()),
    }
}

fn render_outcome(render: Render, outcome: Outcome) -> Reply {
    match (render, outcome) {
        (_, Outcome::Failed(error)) => Reply::err(error),
        (Render::Value, Outcome::Read { chosen, .. }) => chosen.map_or(Reply::Null, Reply::Bulk),
        (Render::All, Outcome::Read { values, context, .. }) => Reply::Array(vec![
            Reply::Array(values.into_iter().map(Reply::Bulk).collect()),
            Reply::Bulk(Bytes::from(hex(&context))),
        ]),
        (Render::Ok, Outcome::Written { .. }) => Reply::OK,
        (Render::Integer, Outcome::Incremented { value }) => Reply::Integer(value),
        (render, outcome) => Reply::err(format!("internal error: {outcome:?} for a {render:?} request")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// The commands leaderless mode answers (besides the node's own, like PING and INFO).
pub const SUPPORTED: &[&str] = &["get", "set", "del", "incr", "decr", "incrby", "decrby"];

/// Parses a request in leaderless mode. `None`: not a leaderless matter (a node command).
pub fn dispatch(
    context: &NodeContext,
    connection: &mut ConnectionState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Option<Dispatch> {
    let node = context.leaderless.as_ref()?;
    let request = match spec.name {
        "get" => Request::Get(args[1].clone()),
        "set" if args.len() == 3 => Request::Set(args[1].clone(), args[2].clone()),
        "set" => return Some(Dispatch::Reply(Reply::err("SET options are not supported in leaderless mode"))),
        "del" => Request::Del(args[1..].to_vec()),
        "incr" => Request::Increment(args[1].clone(), 1),
        "decr" => Request::Increment(args[1].clone(), -1),
        "incrby" | "decrby" => {
            let Some(delta) = chorus_core::kv::number::parse_i64(&args[2]) else {
                return Some(Dispatch::Reply(Reply::err("value is not an integer or out of range")));
            };
            let delta = if spec.name == "decrby" { delta.checked_neg() } else { Some(delta) };
            let Some(delta) = delta else {
                return Some(Dispatch::Reply(Reply::err("decrement would overflow")));
            };
            Request::Increment(args[1].clone(), delta)
        }
        "chorus.getall" => Request::GetAll(args[1].clone()),
        "chorus.put" => {
            let Some(encoded) = unhex(&args[3]) else {
                return Some(Dispatch::Reply(Reply::err(
                    "invalid context: expected the hex text CHORUS.GETALL returned",
                )));
            };
            let Ok(context) = VersionVector::decode(&encoded) else {
                return Some(Dispatch::Reply(Reply::err(
                    "invalid context: expected the hex text CHORUS.GETALL returned",
                )));
            };
            Request::Put { key: args[1].clone(), value: args[2].clone(), context }
        }
        "chorus.quorum" => return Some(Dispatch::Reply(quorum_command(node.default_quorum(), connection, args))),
        "chorus.digest" => return Some(Dispatch::Reply(digest_command(node, args))),
        _ if spec.kind == CommandKind::Kv => {
            return Some(Dispatch::Reply(Reply::err(format!(
                "'{}' is not supported in leaderless mode (supported: GET SET DEL INCR DECR INCRBY DECRBY, CHORUS.GETALL CHORUS.PUT CHORUS.QUORUM CHORUS.DIGEST)",
                spec.name.to_ascii_uppercase()
            ))));
        }
        _ => return None,
    };
    Some(Dispatch::Leaderless(request))
}

/// `CHORUS.DIGEST [peer]`: a Merkle root as hex text; `CHORUS.DIGEST SLOTS [peer]`: per slot,
/// `[slot, digest]` for every slot this node holds keys in (with `peer`: of the slots both are
/// home replicas of), in slot order.
fn digest_command(node: &LeaderlessNode, args: &[Bytes]) -> Reply {
    const SYNTAX: &str = "syntax: CHORUS.DIGEST [SLOTS] [peer]";
    let (slots, peer) = match args {
        [_] => (false, None),
        [_, word] if word.eq_ignore_ascii_case(b"slots") => (true, None),
        [_, peer] => (false, Some(peer)),
        [_, word, peer] if word.eq_ignore_ascii_case(b"slots") => (true, Some(peer)),
        _ => return Reply::err(SYNTAX),
    };
    let peer = match peer {
        None => None,
        Some(peer) => match std::str::from_utf8(peer).ok().and_then(|peer| peer.parse::<u64>().ok()) {
            Some(peer) => Some(peer),
            None => return Reply::err("invalid node id"),
        },
    };
    let hex = |digest: u64| Reply::Bulk(Bytes::from(format!("{digest:016x}")));
    if slots {
        return match node.slot_digests(peer) {
            Ok(digests) => Reply::Array(
                digests
                    .into_iter()
                    .map(|(slot, digest)| Reply::Array(vec![Reply::Integer(i64::from(slot.0)), hex(digest)]))
                    .collect(),
            ),
            Err(error) => Reply::err(error),
        };
    }
    match node.digest(peer) {
        Ok(digest) => hex(digest),
        Err(error) => Reply::err(error),
    }
}

/// `CHORUS.QUORUM n w r | ONE | QUORUM | ALL | DEFAULT`: this connection's n/w/r from now on.
fn quorum_command(default: Quorum, connection: &mut ConnectionState, args: &[Bytes]) -> Reply {
    let n = default.n;
    let majority = n / 2 + 1;
    let chosen = match args {
        [_] => {
            let quorum = connection.quorum.unwrap_or(default);
            return Reply::Array(vec![
                Reply::Integer(i64::from(quorum.n)),
                Reply::Integer(i64::from(quorum.w)),
                Reply::Integer(i64::from(quorum.r)),
            ]);
        }
        [_, level] => match level.to_ascii_uppercase().as_slice() {
            b"ONE" => Quorum::new(n, 1, 1).map(Some),
            b"QUORUM" => Quorum::new(n, majority, majority).map(Some),
            b"ALL" => Quorum::new(n, n, n).map(Some),
            b"DEFAULT" => Ok(None),
            _ => return Reply::err("expected n w r, ONE, QUORUM, ALL or DEFAULT"),
        },
        [_, n, w, r] => {
            let parse = |arg: &Bytes| std::str::from_utf8(arg).ok().and_then(|text| text.parse::<u8>().ok());
            match (parse(n), parse(w), parse(r)) {
                (Some(n), Some(w), Some(r)) => Quorum::new(n, w, r).map(Some),
                _ => return Reply::err("n, w and r must be small positive integers"),
            }
        }
        _ => return Reply::err("expected n w r, ONE, QUORUM, ALL or DEFAULT"),
    };
    match chosen {
        // The coordinator would refuse every request with it (`RequestError::NAboveConfigured`):
        // say so now rather than on each request.
        Ok(Some(quorum)) if quorum.n > n => {
            Reply::err(RequestError::NAboveConfigured { requested: quorum.n, configured: n }.to_string())
        }
        Ok(quorum) => {
            connection.quorum = quorum;
            Reply::OK
        }
        Err(error) => Reply::err(error.to_string()),
    }
}

/// Paths a leaderless node keeps (for docs and tests).
pub fn store_log_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_LOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_log_replays_what_was_written_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DurableStore::default();
        let mut value = VersionedValue::new();
        let hlc = chorus_core::leaderless::Hlc::new(NodeId(1)).now(UnixMillis(1000));
        value.write(NodeId(1), &VersionVector::new(), Payload::Value(Bytes::from_static(b"v")), hlc, 10).unwrap();
        store.put(Bytes::from_static(b"a"), value.clone());
        store.put(Bytes::from_static(b"b"), value.clone());
        store.remove(b"b");
        let mut frames = std::mem::take(&mut store.records);
        // A torn record at the end.
        frames.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        std::fs::write(store_log_path(dir.path()), &frames).unwrap();
        let (_log, loaded) = StoreLog::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(loaded.keys.len(), 1);
        assert_eq!(loaded.keys.get(&Bytes::from_static(b"a")), Some(&value));
        // Compacted: reopening gives the same.
        let (log, loaded) = StoreLog::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(loaded.keys.len(), 1);
        for record in [
            Record::Hint { home: 2, key: Bytes::from_static(b"h"), value: value.clone() },
            Record::Hint { home: 3, key: Bytes::from_static(b"h"), value: value.clone() },
            Record::HintDropped { home: 2, key: Bytes::from_static(b"h") },
        ] {
            log.append(&encode_record(&record).unwrap()).unwrap();
        }
        let position = log.append(&encode_record(&Record::Remove { key: Bytes::from_static(b"a") }).unwrap()).unwrap();
        log.sync_to(position).unwrap();
        drop(log);
        let (_log, loaded) = StoreLog::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert!(loaded.keys.is_empty());
        assert_eq!(loaded.hints.keys().collect::<Vec<_>>(), vec![&(3, Bytes::from_static(b"h"))]);
        // Compaction keeps the hints.
        let (_log, loaded) = StoreLog::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(loaded.hints.len(), 1);
    }

    #[test]
    fn garbage_in_the_store_log_is_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(store_log_path(dir.path()), [0xffu8; 64]).unwrap();
        let (_log, loaded) = StoreLog::open(dir.path(), FsyncPolicy::Never).unwrap();
        assert!(loaded.keys.is_empty());
    }

    #[test]
    fn contexts_round_trip_through_hex() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(hex(&bytes).as_bytes()).unwrap(), bytes);
        assert!(unhex(b"abc").is_none());
        assert!(unhex(b"zz").is_none());
    }
}
