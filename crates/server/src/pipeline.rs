//! The two storage threads behind the replica.
//!
//! - The **log writer** owns the replication log. It takes every entry proposed since its last
//!   round, writes them with one `write` and (per the fsync policy) one `fdatasync`, then tells the
//!   replica how far the log is durable. Entries proposed while an fsync is in flight wait for the
//!   next round, so a busy node does one fsync per round, not per write: group commit.
//! - The **applier** applies committed entries to the in-memory key-value state in order, and every
//!   `checkpoint_entries` writes a snapshot and lets the writer drop the log prefix it covers.
//!
//! Both are plain threads: they do blocking disk IO, which does not belong on the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use chorus_core::StateView;
use chorus_core::state::MemoryState;
use chorus_core::{LogEntry, LogIndex};
use chorus_storage::SegmentedLog;

use crate::config::FsyncPolicy;
use crate::core_handle::{ApplyCommand, CoreHandle, LogCommand};
use crate::metrics_names as names;
use crate::shared_state::SharedState;

pub fn run_log_writer(
    mut log: SegmentedLog,
    commands: Receiver<LogCommand>,
    fsync: FsyncPolicy,
    rollback_dir: PathBuf,
    core: CoreHandle,
) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let fsync_seconds = metrics::histogram!(names::FSYNC_SECONDS);
    let fsyncs_total = metrics::counter!(names::FSYNCS_TOTAL);
    let group_commit_entries = metrics::histogram!(names::GROUP_COMMIT_ENTRIES);
    let mut last_round_entries = 0usize;
    loop {
        let first = match fsync {
            FsyncPolicy::Periodic(interval) if unsynced => {
                let wait = interval.saturating_sub(last_sync.elapsed());
                match commands.recv_timeout(wait) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            _ => match commands.recv() {
                Ok(command) => Some(command),
                Err(_) => return,
            },
        };
        let mut round = Round::default();
        if let Some(command) = first {
            round.take(command);
        }
        while let Ok(command) = commands.try_recv() {
            round.take(command);
        }
        // Adaptive group commit: when this round is much smaller than the last one, the writers
        // behind the last round are most likely still on their way (their replies just left), so
        // wait a few microseconds for them rather than pay a whole fsync for a handful of entries.
        if fsync == FsyncPolicy::Always {
            let gathering_since = Instant::now();
            while round.entries < last_round_entries / 2 && gathering_since.elapsed() < GATHER_WAIT_MAX {
                std::thread::yield_now();
                while let Ok(command) = commands.try_recv() {
                    round.take(command);
                }
            }
        }
        let Round { steps, entries, compact_to, stop } = round;
        let result = (|| -> Result<(), chorus_storage::StorageError> {
            for step in steps {
                match step {
                    Step::Append(batch) => {
                        log.append(&batch)?;
                        unsynced = true;
                    }
                    Step::Truncate { from, discarded, discards_committed } => {
                        // Durable on return (the log fsyncs a truncation), before any later append.
                        log.truncate_suffix(from)?;
                        record_discarded(&rollback_dir, from, discarded, discards_committed)?;
                    }
                    Step::Restart { after, term } => {
                        // A snapshot (already durable) now covers the log up to `after`. A log that
                        // agrees there keeps its suffix; any other starts over after the snapshot.
                        if log.term_at(after)? == Some(term) {
                            log.compact_prefix(after)?;
                        } else {
                            log.reset(after, term)?;
                        }
                    }
                }
            }
            let sync_due = match fsync {
                FsyncPolicy::Always => entries > 0,
                _ if stop => unsynced,
                FsyncPolicy::Periodic(interval) => unsynced && last_sync.elapsed() >= interval,
                FsyncPolicy::Never => false,
            };
            if sync_due {
                let started = Instant::now();
                log.sync()?;
                fsync_seconds.record(started.elapsed().as_secs_f64());
                fsyncs_total.increment(1);
                last_sync = Instant::now();
                unsynced = false;
            }
            if let Some(index) = compact_to {
                log.compact_prefix(index)?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            tracing::error!(%error, "the replication log cannot be written; refusing writes from now on");
            // Never retry a failed fsync (the fsync-gate lesson): the pages it failed to write may
            // already be dropped, so a retry could report success for data that is gone.
            core.with_remote(|inner| inner.replica.fail(&format!("the replication log cannot be written: {error}")));
            return;
        }
        if entries > 0 {
            last_round_entries = entries;
            group_commit_entries.record(entries as f64);
            let (durable, term) = (log.last_index(), log.last_term());
            core.with_remote(|inner| inner.replica.handle_persisted(crate::context::now_millis(), durable, term));
        }
        if stop {
            return;
        }
    }
}

pub fn run_applier(
    state: Arc<SharedState>,
    commands: Receiver<ApplyCommand>,
    snapshot_dir: PathBuf,
    checkpoint_entries: u64,
    core: CoreHandle,
) {
    let mut snapshotted = state.applied_index();
    let mut stop = false;
    while !stop {
        let mut batch = Vec::new();
        let command = match commands.recv() {
            Ok(command) => command,
            Err(_) => return,
        };
        let mut next = Some(command);
        // Take applies in one batch, up to a state replacement (which must not be reordered).
        while let Some(command) = next.take() {
            match command {
                ApplyCommand::Apply(entries) => batch.extend(entries),
                ApplyCommand::Stop => stop = true,
                ApplyCommand::Replace(replacement) => {
                    apply_batch(&state, &mut batch, &core);
                    let index = replacement.applied_index();
                    state.replace(*replacement);
                    snapshotted = index;
                    core.with_remote(|inner| inner.replica.handle_state_replaced(index));
                    tracing::info!(%index, "state replaced by the leader's snapshot");
                }
            }
            if !stop {
                next = commands.try_recv().ok();
            }
        }
        let Some(last) = apply_batch(&state, &mut batch, &core) else { continue };
        if last.0.saturating_sub(snapshotted.0) >= checkpoint_entries {
            match checkpoint(&state, &snapshot_dir) {
                Ok(index) => {
                    snapshotted = index;
                    core.compact_log(index);
                    core.with_remote(|inner| inner.replica.compact_group_log(index));
                }
                Err(error) => tracing::warn!(%error, "snapshot failed; the log keeps its prefix"),
            }
        }
    }
}

/// Applies `batch` (emptying it) and reports how far the state got.
fn apply_batch(state: &SharedState, batch: &mut Vec<LogEntry>, core: &CoreHandle) -> Option<LogIndex> {
    let last = batch.last().map(|entry| entry.index)?;
    state.apply(batch);
    batch.clear();
    core.with_remote(|inner| inner.replica.handle_applied(last));
    Some(last)
}

/// Writes a snapshot of the applied state (readers go on meanwhile; applying waits) and returns the
/// index it covers, up to which the log may be compacted.
pub fn checkpoint(state: &SharedState, snapshot_dir: &Path) -> Result<LogIndex, chorus_storage::StorageError> {
    let started = Instant::now();
    let _exclusive = state.checkpoint_guard();
    let guard = state.read();
    let meta = chorus_storage::write_snapshot(snapshot_dir, &guard)?;
    drop(guard);
    tracing::info!(index = %meta.applied_index, keys = meta.key_count, took_ms = started.elapsed().as_millis() as u64, "snapshot written");
    Ok(meta.applied_index)
}

/// Replays the log entries the state has not applied yet (after a crash or restart).
pub fn replay_log(log: &SegmentedLog, state: &mut MemoryState) -> Result<LogIndex, chorus_storage::StorageError> {
    const CHUNK: u64 = 4096;
    let mut next = state.applied_index().next().max(log.first_index());
    let last = log.last_index();
    while next <= last {
        let to = LogIndex((next.0 + CHUNK - 1).min(last.0));
        let entries = log.read(next, to)?;
        state.apply(&entries);
        next = to.next();
    }
    Ok(state.applied_index())
}

/// Longest a log round waits for more entries before its fsync (see `run_log_writer`): well under
/// one fsync, so a lone writer's latency barely moves.
const GATHER_WAIT_MAX: Duration = Duration::from_micros(100);

/// What one round of the log writer does, in order.
#[derive(Default)]
struct Round {
    steps: Vec<Step>,
    entries: usize,
    compact_to: Option<LogIndex>,
    stop: bool,
}

enum Step {
    Append(Vec<LogEntry>),
    Truncate { from: LogIndex, discarded: Vec<LogEntry>, discards_committed: bool },
    Restart { after: LogIndex, term: chorus_core::Term },
}

impl Round {
    fn take(&mut self, command: LogCommand) {
        match command {
            LogCommand::Append(entries) => {
                self.entries += entries.len();
                match self.steps.last_mut() {
                    Some(Step::Append(batch)) => batch.extend(entries),
                    _ => self.steps.push(Step::Append(entries)),
                }
            }
            LogCommand::Truncate { from, discarded, discards_committed } => {
                self.steps.push(Step::Truncate { from, discarded, discards_committed });
            }
            LogCommand::Restart { after, term } => self.steps.push(Step::Restart { after, term }),
            LogCommand::Compact(index) => self.compact_to = Some(index),
            LogCommand::Stop => self.stop = true,
        }
    }
}

/// Discarded entries are never silent: they go to the rollback file, and losing acknowledged
/// writes (possible only under async / semi-sync durability) is logged as a warning.
fn record_discarded(
    dir: &Path,
    from: LogIndex,
    discarded: Vec<LogEntry>,
    discards_committed: bool,
) -> Result<(), chorus_storage::StorageError> {
    if discards_committed {
        tracing::warn!(%from, entries = discarded.len(), "a failover discarded acknowledged writes (async / semi-sync durability); see rollback.log");
    }
    if discarded.is_empty() {
        return Ok(());
    }
    let replaced_in_term = discarded.last().map(|entry| entry.term).unwrap_or_default();
    let record = chorus_storage::RollbackRecord {
        discarded_at_ms: crate::context::now_millis().0,
        replaced_in_term,
        entries: discarded,
    };
    let path = chorus_storage::append_rollback(dir, &record)?;
    tracing::warn!(%from, entries = record.entries.len(), path = %path.display(), "discarded log entries written to the rollback file");
    Ok(())
}

/// How long the tick loop sleeps between active-expiry rounds.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
