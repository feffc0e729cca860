//! `chorus sim`: run the deterministic simulator over many seeds, or replay one with its trace.

use std::fmt;

use anyhow::bail;
use chorus_core::raft::Durability;
use chorus_sim::leaderless::LeaderlessOptions;
use chorus_sim::multileader::{MlSimOptions, TopologyKind};
use chorus_sim::{Faults, SimOptions, leaderless, multileader, run_seed, run_seeds};

/// What `--mode` simulates: a Raft group of that durability, a leaderless cluster, or multi-leader
/// datacenters.
#[derive(Debug, Clone, Copy)]
pub enum SimMode {
    Raft(Durability),
    Leaderless,
    MultiLeader,
}

impl std::str::FromStr for SimMode {
    type Err = String;

    fn from_str(text: &str) -> Result<SimMode, String> {
        match text {
            "leaderless" => return Ok(SimMode::Leaderless),
            "multi-leader" => return Ok(SimMode::MultiLeader),
            _ => {}
        }
        text.parse::<Durability>().map(SimMode::Raft).map_err(|error| format!("{error} (or leaderless, multi-leader)"))
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// How many seeds to run (from --from).
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the replayed seed's event trace (with --seed).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Durability of the simulated group: async | semi-sync:K | quorum | all; or leaderless (a
    /// Dynamo-style cluster of leaderless coordinators); or multi-leader (three datacenters).
    #[arg(long, default_value = "quorum")]
    mode: SimMode,
    /// Multi-leader only: all-to-all | star | ring (default: drawn from each seed).
    #[arg(long)]
    topology: Option<TopologyKind>,
    /// Faults to inject: all | none | a list of network,partition,crash,disk,clock,transfer,membership,replay.
    #[arg(long, default_value = "all")]
    faults: Faults,
    /// Replicas (default: 3 or 5, drawn from the seed).
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulated milliseconds of the fault phase.
    #[arg(long)]
    safety_ms: Option<u64>,
    /// No session clients (follower reads with session tokens): the workload of seeds recorded
    /// before they existed.
    #[arg(long)]
    no_sessions: bool,
    /// Membership changes may wipe a former member before adding it back under the same id (unsafe:
    /// shows why removed ids must not be reused with an empty disk).
    #[arg(long)]
    wipe_rejoiners: bool,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let durability = match args.mode {
        SimMode::Raft(durability) => durability,
        SimMode::Leaderless => return run_leaderless(&args),
        SimMode::MultiLeader => return run_multileader(&args),
    };
    let mut options = SimOptions {
        durability,
        faults: args.faults,
        nodes: args.nodes,
        sessions: !args.no_sessions,
        wipe_rejoiners: args.wipe_rejoiners,
        ..SimOptions::default()
    };
    if let Some(safety_ms) = args.safety_ms {
        options.safety_ms = safety_ms;
    }
    if let Some(seed) = args.seed {
        options.trace = args.trace;
        let report = run_seed(seed, &options);
        if let Some(trace) = &report.trace {
            for line in trace {
                println!("{line}");
            }
        }
        println!(
            "seed {seed}: {} ops checked, {} session reads checked, {} membership changes, {} faults injected, {} undecided keys",
            report.ops_checked,
            report.session_reads_checked,
            report.stats.membership_changes,
            report.faults_injected,
            report.undecided_keys
        );
        if !report.failures.is_empty() {
            for failure in &report.failures {
                eprintln!("{failure}");
            }
            eprintln!("replay: {}", report.replay);
            bail!("seed {seed} failed");
        }
        return Ok(());
    }
    let sweep = run_seeds(args.from, args.seeds, &options);
    println!("{sweep}");
    if !sweep.failed.is_empty() {
        for report in &sweep.failed {
            for failure in &report.failures {
                eprintln!("{failure}");
            }
            eprintln!("replay: {}", report.replay);
        }
        bail!("{} of {} seeds failed", sweep.failed.len(), sweep.seeds);
    }
    Ok(())
}

fn run_leaderless(args: &SimArgs) -> anyhow::Result<()> {
    let mut options = LeaderlessOptions { faults: args.faults, ..LeaderlessOptions::default() };
    if let Some(nodes) = args.nodes {
        options.nodes = nodes;
    }
    if let Some(safety_ms) = args.safety_ms {
        options.safety_ms = safety_ms;
    }
    if let Some(seed) = args.seed {
        options.trace = args.trace;
        let report = leaderless::run_seed(seed, &options);
        return print_replay(seed, report.trace.as_deref(), &report, report.passed());
    }
    let sweep = leaderless::run_seeds(args.from, args.seeds, &options);
    print_sweep(&sweep, &sweep.failed, sweep.seeds)
}

fn run_multileader(args: &SimArgs) -> anyhow::Result<()> {
    let mut options = MlSimOptions { faults: args.faults, topology: args.topology, ..MlSimOptions::default() };
    if let Some(nodes) = args.nodes {
        options.dcs = nodes;
    }
    if let Some(safety_ms) = args.safety_ms {
        options.safety_ms = safety_ms;
    }
    if let Some(seed) = args.seed {
        options.trace = args.trace;
        let report = multileader::run_seed(seed, &options);
        return print_replay(seed, report.trace.as_deref(), &report, report.passed());
    }
    let sweep = multileader::run_seeds(args.from, args.seeds, &options);
    print_sweep(&sweep, &sweep.failed, sweep.seeds)
}

/// Prints a replayed seed's trace and report (leaderless and multi-leader modes); fails if the
/// seed did.
fn print_replay(seed: u64, trace: Option<&[String]>, report: &dyn fmt::Display, passed: bool) -> anyhow::Result<()> {
    for line in trace.into_iter().flatten() {
        println!("{line}");
    }
    println!("{report}");
    if !passed {
        bail!("seed {seed} failed");
    }
    Ok(())
}

/// Prints a sweep's summary, then the report of every failed seed (leaderless and multi-leader
/// modes); fails if any seed did.
fn print_sweep<R: fmt::Display>(summary: &dyn fmt::Display, failed: &[R], seeds: u64) -> anyhow::Result<()> {
    println!("{summary}");
    if !failed.is_empty() {
        for report in failed {
            eprintln!("{report}");
        }
        bail!("{} of {seeds} seeds failed", failed.len());
    }
    Ok(())
}
