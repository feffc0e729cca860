//! The deterministic simulator for leaderless (Dynamo-style) mode (issue 5).
//!
//! A cluster of `nodes` members, each running the real `chorus_core::leaderless::Coordinator` over
//! a [`MemoryStore`](chorus_core::leaderless::MemoryStore), on a simulated network and clock,
//! every choice drawn from one seeded [`SimRng`](crate::SimRng) so that a seed replays bit for bit.
//! One run ([`run_seed`]):
//!
//! 1. draws its fault mix from the seed ([`LeaderlessKnobs`]): message loss, duplication and
//!    long-tailed delays (reordering), symmetric and one-way partitions that heal, crashes and
//!    restarts, clock skew between nodes (some beyond the HLC drift bound), a failure detector that
//!    sometimes errs;
//! 2. runs a **fault phase** of `safety_ms` simulated milliseconds while clients put (blind, or
//!    with a context read earlier), delete, get and increment a few keys, through random nodes and
//!    with random `n/w/r`, recording what they were told ([`cluster::OpRecord`]);
//! 3. heals everything (partitions, crashed nodes, the failure detector) and stops the clients;
//! 4. **converges** by read repair and/or anti-entropy alone (drawn from the seed, or forced by
//!    [`LeaderlessOptions::heal`]): rounds with no client write, until every key's home replicas
//!    hold identical containers, within `converge_rounds_max` rounds;
//! 5. checks ([`checker`]): every acknowledged write is present, or superseded by a write whose
//!    client saw it; nothing a client replaced came back; counters equal the sum of the increments
//!    that were not refused; an `r + w > n` read after an acknowledged write with no fault in
//!    between sees it; reads only return values some client wrote.
//!
//! A crash keeps the store (the coordinator's `put`s are durable when the call returns, which is
//! before any acknowledgement it leads to is sent) and loses everything in memory: requests in
//! flight, hints, Merkle trees, the clock. The restarted node is a fresh `Coordinator` fed its
//! store through `load`.

pub mod checker;
pub mod cluster;

use std::fmt;
use std::time::Instant;

use chorus_core::leaderless::PlantedBug;

use crate::{Faults, SimRng};

/// How the cluster converges once healed: no client writes, only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heal {
    /// Merkle anti-entropy exchanges (and hinted handoff) only.
    AntiEntropy,
    /// Reads with `r = n` of every key (and hinted handoff); anti-entropy is off for the whole run.
    ReadRepair,
    /// Both.
    Both,
}

/// What a leaderless run is asked to do.
#[derive(Debug, Clone)]
pub struct LeaderlessOptions {
    pub nodes: usize,
    pub faults: Faults,
    /// Simulated milliseconds of the fault phase.
    pub safety_ms: u64,
    pub clients: usize,
    /// The largest `n` a request picks (from 2): by default the configured `n`
    /// ([`cluster::DEFAULT_QUORUM`]). Above it the core refuses the request
    /// (`RequestError::NAboveConfigured`; counted in [`LeaderlessStats::refused_n_above_configured`]):
    /// the extra replica would be outside what anti-entropy and default reads cover.
    pub request_n_max: u8,
    /// Whether a replaced write coming back (a "zombie") fails the run. Off by default: the core
    /// has a documented gap there (a stale container delivered after a tombstone was collected;
    /// `docs/leaderless.md`), and the runs count them in [`LeaderlessStats::resurrections`].
    pub resurrections_fail: bool,
    /// `None`: drawn from the seed.
    pub heal: Option<Heal>,
    /// Rounds (of one anti-entropy interval each) the healed cluster has to converge.
    pub converge_rounds_max: u32,
    /// A bug planted in the core (`CoordinatorConfig::planted_bug`).
    pub planted_bug: Option<PlantedBug>,
    pub trace: bool,
}

impl Default for LeaderlessOptions {
    fn default() -> LeaderlessOptions {
        LeaderlessOptions {
            nodes: 5,
            faults: Faults::ALL,
            safety_ms: 2000,
            clients: 4,
            request_n_max: cluster::DEFAULT_QUORUM.n,
            resurrections_fail: false,
            heal: None,
            converge_rounds_max: 40,
            planted_bug: None,
            trace: false,
        }
    }
}

impl LeaderlessOptions {
    /// The command that replays `seed` with its trace.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut command = format!("chorus sim --mode leaderless --seed {seed} --faults {} --trace", self.faults);
        if self.nodes != LeaderlessOptions::default().nodes {
            command.push_str(&format!(" --nodes {}", self.nodes));
        }
        if self.safety_ms != LeaderlessOptions::default().safety_ms {
            command.push_str(&format!(" --safety-ms {}", self.safety_ms));
        }
        if let Some(heal) = self.heal {
            command.push_str(&format!(" (with heal {heal:?})"));
        }
        if let Some(bug) = self.planted_bug {
            command.push_str(&format!(" (with planted bug {bug:?})"));
        }
        command
    }
}

/// The fault mix and rates of one run, drawn from its seed.
#[derive(Debug, Clone)]
pub struct LeaderlessKnobs {
    /// Per mille of messages dropped, and duplicated.
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// Per mille of messages delayed by up to `long_delay_ms_max` rather than a few ms.
    pub long_delay_per_mille: u64,
    pub long_delay_ms_max: u64,
    /// Chance per simulated ms (per million) of a new partition, and of a crash.
    pub partition_per_million: u64,
    pub crash_per_million: u64,
    /// Per mille of failure-detector verdicts that are wrong.
    pub detector_error_per_mille: u64,
    /// Each node's clock offset from true time (ms; may pass the HLC's 500 ms drift bound).
    pub clock_offsets: Vec<i64>,
    pub heal: Heal,
    /// Per cent of requests with their own random `n/w/r` (the rest use 3/2/2).
    pub random_quorum_percent: u64,
}

impl LeaderlessKnobs {
    pub fn draw(rng: &mut SimRng, options: &LeaderlessOptions) -> LeaderlessKnobs {
        let faults = options.faults;
        let network = faults.network;
        let heal = match rng.below(3) {
            0 => Heal::AntiEntropy,
            1 => Heal::ReadRepair,
            _ => Heal::Both,
        };
        let mut clock_offsets = Vec::with_capacity(options.nodes);
        for _ in 0..options.nodes {
            let offset = if !faults.clocks {
                0
            } else if rng.chance(1, 10) {
                i64::try_from(rng.below(3000)).unwrap_or(0) - 1500
            } else {
                i64::try_from(rng.below(500)).unwrap_or(0) - 250
            };
            clock_offsets.push(offset);
        }
        LeaderlessKnobs {
            drop_per_mille: if network { rng.below(150) } else { 0 },
            duplicate_per_mille: if network { rng.below(100) } else { 0 },
            long_delay_per_mille: if network { rng.below(150) } else { 0 },
            long_delay_ms_max: 20 + rng.below(400),
            partition_per_million: if faults.partitions { 500 + rng.below(3000) } else { 0 },
            crash_per_million: if faults.crashes { 500 + rng.below(3000) } else { 0 },
            detector_error_per_mille: if faults.partitions || faults.crashes { rng.below(30) } else { 0 },
            clock_offsets,
            heal: options.heal.unwrap_or(heal),
            random_quorum_percent: rng.below(80),
        }
    }
}

/// Counts of one run.
#[derive(Debug, Clone, Default)]
pub struct LeaderlessStats {
    pub ops_invoked: u64,
    pub writes_acknowledged: u64,
    pub increments_acknowledged: u64,
    pub reads_answered: u64,
    pub faults_injected: u64,
    pub crashes: u64,
    pub messages_sent: u64,
    /// Rounds the healed cluster took to converge (0 if it already had).
    pub converge_rounds: u32,
    /// `r + w > n` reads checked against an acknowledged write.
    pub overlapping_reads_checked: u64,
    /// Acknowledged writes a client replaced that are siblings again after convergence (failures
    /// only with [`LeaderlessOptions::resurrections_fail`]).
    pub resurrections: u64,
    /// Requests refused for asking more replicas than the configured `n`.
    pub refused_n_above_configured: u64,
}

/// What one seed's run found.
#[derive(Debug, Clone)]
pub struct LeaderlessReport {
    pub seed: u64,
    /// Empty when every check passed; each line names the seed.
    pub failures: Vec<String>,
    pub stats: LeaderlessStats,
    pub knobs: LeaderlessKnobs,
    pub trace: Option<Vec<String>>,
    pub replay: String,
}

impl LeaderlessReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for LeaderlessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = &self.stats;
        write!(
            f,
            "seed {}: {} ops, {} writes and {} increments acknowledged, {} faults, converged in {} rounds, {} failures",
            self.seed,
            stats.ops_invoked,
            stats.writes_acknowledged,
            stats.increments_acknowledged,
            stats.faults_injected,
            stats.converge_rounds,
            self.failures.len()
        )?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        if !self.failures.is_empty() {
            write!(f, "\n  replay: {}", self.replay)?;
        }
        Ok(())
    }
}

/// Runs one seed. Never panics on what it finds: a panic inside the core becomes a failure line.
pub fn run_seed(seed: u64, options: &LeaderlessOptions) -> LeaderlessReport {
    let replay = options.replay_command(seed);
    let mut cluster = cluster::LeaderlessCluster::new(seed, options);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.run()));
    let knobs = cluster.knobs.clone();
    let mut failures = Vec::new();
    if let Err(panic) = outcome {
        let message = crate::panic_message(panic.as_ref());
        failures.push(format!("panic: {message}"));
    } else {
        failures.extend(cluster.failures.iter().cloned());
        if failures.is_empty() {
            let found = checker::check(&cluster);
            failures.extend(found.failures);
            cluster.stats.overlapping_reads_checked = found.overlapping_pairs;
            cluster.stats.resurrections = found.resurrections.len() as u64;
            if options.resurrections_fail {
                failures.extend(found.resurrections);
            }
        }
    }
    LeaderlessReport {
        seed,
        failures: failures.into_iter().map(|failure| format!("seed {seed}: {failure}")).collect(),
        stats: cluster.stats.clone(),
        knobs,
        trace: cluster.trace.take(),
        replay,
    }
}

/// Totals over a sweep of seeds.
#[derive(Debug, Clone, Default)]
pub struct LeaderlessSweep {
    pub seeds: u64,
    pub ops_invoked: u64,
    pub writes_acknowledged: u64,
    pub faults_injected: u64,
    pub converge_rounds_max: u32,
    pub resurrections: u64,
    /// Seeds with a resurrection (when those do not fail the run).
    pub resurrection_seeds: Vec<u64>,
    pub failed: Vec<LeaderlessReport>,
    pub wall_seconds: f64,
}

impl fmt::Display for LeaderlessSweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds (leaderless), {} ops, {} writes acknowledged, {} faults injected, {} failed, slowest convergence {} rounds, {} replaced writes resurrected (seeds {:?}), {:.1} s",
            self.seeds,
            self.ops_invoked,
            self.writes_acknowledged,
            self.faults_injected,
            self.failed.len(),
            self.converge_rounds_max,
            self.resurrections,
            self.resurrection_seeds,
            self.wall_seconds
        )
    }
}

/// Runs `count` seeds from `first`.
pub fn run_seeds(first: u64, count: u64, options: &LeaderlessOptions) -> LeaderlessSweep {
    let started = Instant::now();
    let mut sweep = LeaderlessSweep::default();
    for seed in first..first.saturating_add(count) {
        let report = run_seed(seed, options);
        sweep.seeds += 1;
        sweep.ops_invoked += report.stats.ops_invoked;
        sweep.writes_acknowledged += report.stats.writes_acknowledged;
        sweep.faults_injected += report.stats.faults_injected;
        sweep.converge_rounds_max = sweep.converge_rounds_max.max(report.stats.converge_rounds);
        sweep.resurrections += report.stats.resurrections;
        if report.stats.resurrections > 0 {
            sweep.resurrection_seeds.push(seed);
        }
        if !report.passed() {
            sweep.failed.push(report);
        }
    }
    sweep.wall_seconds = started.elapsed().as_secs_f64();
    sweep
}

#[cfg(test)]
mod tests;
