//! The deterministic simulator for multi-leader mode (issue 6).
//!
//! Three datacenters, each one `chorus_core::multileader::MultiLeaderState` driven through
//! `apply_observed` with the `MlEntry` entries the node proposes, on simulated links and clocks,
//! every choice drawn from one seeded [`SimRng`](crate::SimRng) so that a seed replays bit for bit.
//! One run ([`run_seed`]):
//!
//! 1. draws the run's shape from the seed ([`MlKnobs`]): the topology (all-to-all, star with a
//!    random hub, ring in a random order) and conflict policy unless forced, a small journal in
//!    some seeds (so that downstream DCs need bootstraps), link latencies, long delays, partitions,
//!    DC crashes and leader changes, clock offsets, and "echo" senders that do not filter what
//!    they forward;
//! 2. runs a **fault phase** of `safety_ms` simulated milliseconds while clients at every DC set,
//!    delete and increment the same few keys ([`world`]);
//! 3. heals (partitions gone, every DC up), stops the clients, and runs rounds until every DC holds
//!    the same state, failing past `converge_rounds_max`;
//! 4. checks ([`checker`]), on top of what is checked at each apply (each change applied exactly
//!    once per DC, never back at its origin, only after its deps): identical states, the
//!    materialized views, no acknowledged write silently gone, counters equal to their sums.
//!
//! A DC's Raft group is taken as linearizable and durable; see [`world`] for what a crash loses.

pub mod checker;
pub mod world;

use std::fmt;
use std::time::Instant;

use chorus_core::multileader::{ConflictPolicy, DcId, MlPlantedBug, Topology};

use crate::{Faults, SimRng};

/// Simulated milliseconds per convergence round.
pub const CONVERGE_ROUND_MS: u64 = 50;

/// Which topology a run uses (the hub and ring order are drawn from the seed).
pub use chorus_core::multileader::TopologyKind;

/// What a multi-leader run is asked to do.
#[derive(Debug, Clone)]
pub struct MlSimOptions {
    pub dcs: usize,
    pub faults: Faults,
    /// Simulated milliseconds of the fault phase.
    pub safety_ms: u64,
    /// `None`: drawn from the seed.
    pub topology: Option<TopologyKind>,
    /// `None`: drawn from the seed.
    pub policy: Option<ConflictPolicy>,
    /// Rounds of [`CONVERGE_ROUND_MS`] the healed DCs have to converge.
    pub converge_rounds_max: u32,
    pub planted_bug: Option<MlPlantedBug>,
    /// Deliver stale batch copies without the contiguity check
    /// ([`MultiLeaderState::continues`](chorus_core::multileader::MultiLeaderState::continues)),
    /// to show why the node's link needs it.
    pub stale_batch_check_off: bool,
    pub trace: bool,
}

impl Default for MlSimOptions {
    fn default() -> MlSimOptions {
        MlSimOptions {
            dcs: 3,
            faults: Faults::ALL,
            safety_ms: 1500,
            topology: None,
            policy: None,
            converge_rounds_max: 100,
            planted_bug: None,
            stale_batch_check_off: false,
            trace: false,
        }
    }
}

impl MlSimOptions {
    /// The command that replays `seed` with its trace.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut command = format!("chorus sim --mode multi-leader --seed {seed} --faults {} --trace", self.faults);
        if let Some(topology) = self.topology {
            command.push_str(&format!(" --topology {topology}"));
        }
        if self.safety_ms != MlSimOptions::default().safety_ms {
            command.push_str(&format!(" --safety-ms {}", self.safety_ms));
        }
        if let Some(policy) = self.policy {
            command.push_str(&format!(" (with policy {policy:?})"));
        }
        if let Some(bug) = self.planted_bug {
            command.push_str(&format!(" (with planted bug {bug:?})"));
        }
        command
    }
}

/// The shape of one run, drawn from its seed.
#[derive(Debug, Clone)]
pub struct MlKnobs {
    pub topology: Topology,
    pub policy: ConflictPolicy,
    pub journal_entries_max: usize,
    /// Base one-way latency per link (indexed by the sum of the two ids, modulo the length).
    pub latency_ms: Vec<u64>,
    pub long_delay_per_mille: u64,
    pub long_delay_ms_max: u64,
    /// Chance per simulated ms (per million) of a new partition, and of a DC crash.
    pub partition_per_million: u64,
    pub crash_per_million: u64,
    /// Chance per simulated ms (per million) that a DC's failure detector wrongly suspects a live,
    /// reachable DC for a while (routing goes around it meanwhile).
    pub suspicion_per_million: u64,
    /// Per mille of batches an "echo" sender ships unfiltered.
    pub echo_per_mille: u64,
    /// Per mille of messages that reach the receiver again 0.1 to 1.1 s later (a stale copy from
    /// an old connection, or a leader's queue).
    pub stale_replay_per_mille: u64,
    pub clock_offsets_ms: Vec<i64>,
    /// Per DC per ms, per mille: a client write.
    pub write_per_mille: u64,
    /// Raft's propose-to-apply latency bound within a DC.
    pub raft_ms_max: u64,
    pub batch_max: usize,
    /// Messages in flight per link.
    pub window: usize,
}

impl MlKnobs {
    pub fn draw(rng: &mut SimRng, options: &MlSimOptions) -> MlKnobs {
        let faults = options.faults;
        let ids: Vec<DcId> = (1..=u16::try_from(options.dcs).unwrap_or(3)).map(DcId).collect();
        let kind = options.topology.unwrap_or(match rng.below(3) {
            0 => TopologyKind::AllToAll,
            1 => TopologyKind::Star,
            _ => TopologyKind::Ring,
        });
        let topology = match kind {
            TopologyKind::AllToAll => Topology::AllToAll,
            TopologyKind::Star => Topology::Star { hub: ids[rng.below(ids.len() as u64) as usize] },
            TopologyKind::Ring => {
                let mut order = ids.clone();
                for i in (1..order.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    order.swap(i, j);
                }
                Topology::Ring { order }
            }
        };
        let policy = options.policy.unwrap_or(if rng.chance(1, 2) {
            ConflictPolicy::LastWriteWins
        } else {
            ConflictPolicy::Siblings
        });
        let journal_entries_max = if rng.chance(1, 3) { 1 + rng.below(12) as usize } else { 10_000 };
        let latency_ms = (0..3).map(|_| 2 + rng.below(40)).collect();
        let clock_offsets_ms = ids
            .iter()
            .map(|_| if faults.clocks { i64::try_from(rng.below(400)).unwrap_or(0) - 200 } else { 0 })
            .collect();
        MlKnobs {
            topology,
            policy,
            journal_entries_max,
            latency_ms,
            long_delay_per_mille: if faults.network { rng.below(200) } else { 0 },
            long_delay_ms_max: 20 + rng.below(300),
            partition_per_million: if faults.partitions { 500 + rng.below(4000) } else { 0 },
            crash_per_million: if faults.crashes { 500 + rng.below(3000) } else { 0 },
            suspicion_per_million: if faults.partitions || faults.crashes { rng.below(3000) } else { 0 },
            echo_per_mille: if faults.network && rng.chance(1, 3) { 1 + rng.below(200) } else { 0 },
            stale_replay_per_mille: if faults.replays { rng.below(50) } else { 0 },
            clock_offsets_ms,
            write_per_mille: 20 + rng.below(80),
            raft_ms_max: 1 + rng.below(5),
            batch_max: 4 + rng.below(29) as usize,
            window: 2 + rng.below(7) as usize,
        }
    }
}

/// Counts of one run.
#[derive(Debug, Clone, Default)]
pub struct MlStats {
    pub writes_invoked: u64,
    pub writes_acknowledged: u64,
    /// Changes applied one by one, over all DCs (each checked for exactly-once and causal order).
    pub changes_applied: u64,
    pub bootstraps_applied: u64,
    pub messages_sent: u64,
    pub messages_lost: u64,
    pub stale_replays: u64,
    /// Links opened that the healthy topology does not have (a dead hub or ring neighbour routed
    /// around).
    pub route_around_links: u64,
    pub faults_injected: u64,
    pub crashes: u64,
    pub conflicts_resolved: u64,
    pub converge_rounds: u32,
}

/// What one seed's run found.
#[derive(Debug, Clone)]
pub struct MlReport {
    pub seed: u64,
    /// Empty when every check passed; each line names the seed.
    pub failures: Vec<String>,
    pub stats: MlStats,
    pub knobs: MlKnobs,
    pub trace: Option<Vec<String>>,
    pub replay: String,
}

impl MlReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for MlReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = &self.stats;
        write!(
            f,
            "seed {} ({:?}, {:?}, journal {}): {} writes acknowledged of {}, {} changes applied, {} bootstraps, {} conflicts, {} faults, converged in {} rounds, {} failures",
            self.seed,
            self.knobs.topology,
            self.knobs.policy,
            self.knobs.journal_entries_max,
            stats.writes_acknowledged,
            stats.writes_invoked,
            stats.changes_applied,
            stats.bootstraps_applied,
            stats.conflicts_resolved,
            stats.faults_injected,
            stats.converge_rounds,
            self.failures.len()
        )?;
        for failure in self.failures.iter().take(20) {
            write!(f, "\n  {failure}")?;
        }
        if !self.failures.is_empty() {
            write!(f, "\n  replay: {}", self.replay)?;
        }
        Ok(())
    }
}

/// Runs one seed. Never panics on what it finds: a panic inside the core becomes a failure line.
pub fn run_seed(seed: u64, options: &MlSimOptions) -> MlReport {
    let replay = options.replay_command(seed);
    let mut world = world::World::new(seed, options);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    let mut failures = Vec::new();
    match outcome {
        Err(panic) => {
            let message = crate::panic_message(panic.as_ref());
            failures.push(format!("panic at {} ms: {message}", world.now_ms));
            failures.extend(world.failures.iter().cloned());
        }
        Ok(()) => {
            failures.extend(world.failures.iter().cloned());
            if failures.is_empty() {
                failures.extend(checker::check(&world));
            } else {
                // Name what differs, when the DCs did not converge.
                failures.extend(checker::identical_states(&world).into_iter().take(3));
            }
        }
    }
    world.stats.conflicts_resolved = world.dcs.iter().map(|dc| dc.state.stats().conflicts_resolved).sum();
    MlReport {
        seed,
        failures: failures.into_iter().map(|failure| format!("seed {seed}: {failure}")).collect(),
        stats: world.stats.clone(),
        knobs: world.knobs.clone(),
        trace: world.trace.take(),
        replay,
    }
}

/// Totals over a sweep of seeds.
#[derive(Debug, Clone, Default)]
pub struct MlSweep {
    pub seeds: u64,
    pub writes_acknowledged: u64,
    pub changes_applied: u64,
    pub bootstraps_applied: u64,
    pub route_around_links: u64,
    pub faults_injected: u64,
    pub converge_rounds_max: u32,
    pub failed: Vec<MlReport>,
    pub wall_seconds: f64,
}

impl MlSweep {
    /// Changes applied (and checked) per wall-clock second.
    pub fn changes_per_second(&self) -> f64 {
        if self.wall_seconds > 0.0 { self.changes_applied as f64 / self.wall_seconds } else { 0.0 }
    }
}

impl fmt::Display for MlSweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds (multi-leader), {} writes acknowledged, {} changes applied and checked, {} bootstraps, {} route-around links, {} faults injected, {} failed, slowest convergence {} rounds, {:.1} s ({:.0} changes/s)",
            self.seeds,
            self.writes_acknowledged,
            self.changes_applied,
            self.bootstraps_applied,
            self.route_around_links,
            self.faults_injected,
            self.failed.len(),
            self.converge_rounds_max,
            self.wall_seconds,
            self.changes_per_second()
        )
    }
}

/// Runs `count` seeds from `first`.
pub fn run_seeds(first: u64, count: u64, options: &MlSimOptions) -> MlSweep {
    let started = Instant::now();
    let mut sweep = MlSweep::default();
    for seed in first..first.saturating_add(count) {
        let report = run_seed(seed, options);
        sweep.seeds += 1;
        sweep.writes_acknowledged += report.stats.writes_acknowledged;
        sweep.changes_applied += report.stats.changes_applied;
        sweep.bootstraps_applied += report.stats.bootstraps_applied;
        sweep.route_around_links += report.stats.route_around_links;
        sweep.faults_injected += report.stats.faults_injected;
        sweep.converge_rounds_max = sweep.converge_rounds_max.max(report.stats.converge_rounds);
        if !report.passed() {
            sweep.failed.push(report);
        }
    }
    sweep.wall_seconds = started.elapsed().as_secs_f64();
    sweep
}

#[cfg(test)]
mod tests;
