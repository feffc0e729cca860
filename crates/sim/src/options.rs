//! What a run is asked to do ([`SimOptions`], chosen by the caller) and the fault settings drawn for
//! it from its seed ([`Knobs`], TigerBeetle's swarm testing: each seed gets its own mix of rates, so
//! a few hundred seeds cover calm runs, lossy ones, crashy ones and everything at once).

use std::fmt;
use std::str::FromStr;

use chorus_core::raft::{Durability, PlantedBug};

use crate::SimRng;

/// Which kinds of fault a run may inject. The liveness phase always heals them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Message loss and duplication on every link, and long-tailed delays (reordering comes with
    /// any delay).
    pub network: bool,
    /// Symmetric and asymmetric partitions that come and heal.
    pub partitions: bool,
    /// Process crashes (whatever the disk had not made durable is lost) and restarts.
    pub crashes: bool,
    /// Slow fsyncs.
    pub disk: bool,
    /// Clock drift and jumps between nodes.
    pub clocks: bool,
    /// Leadership transfers at random moments (the leader hands over to a random voter).
    pub transfers: bool,
    /// Online single-server membership changes at random moments: spare nodes join empty
    /// (`RestoredState::joining()`) as learners or voters and catch up by log or snapshot, learners
    /// are promoted, voters and learners are removed (a leader hands over first), removed nodes come
    /// back (with their old disk, or wiped).
    pub membership: bool,
    /// Stale replays: a peer message is delivered again long after it was sent (hundreds of
    /// milliseconds to seconds), like a retransmission from a stalled connection: a deposed
    /// leader's appends and an old candidate's votes arrive terms later.
    pub replays: bool,
}

impl Faults {
    pub const NONE: Faults = Faults {
        network: false,
        partitions: false,
        crashes: false,
        disk: false,
        clocks: false,
        transfers: false,
        membership: false,
        replays: false,
    };
    pub const ALL: Faults = Faults {
        network: true,
        partitions: true,
        crashes: true,
        disk: true,
        clocks: true,
        transfers: true,
        membership: true,
        replays: true,
    };
    /// Every fault class but membership changes: what `all` meant before they existed, so seeds
    /// recorded then (regressions, planted-bug bounds) replay as they did.
    pub const CLASSIC: Faults = Faults { membership: false, replays: false, ..Faults::ALL };

    /// The mixes the seed sweeps rotate through.
    pub const MIXES: [Faults; 7] = [
        Faults::ALL,
        Faults { network: true, ..Faults::NONE },
        Faults { partitions: true, clocks: true, transfers: true, ..Faults::NONE },
        Faults { crashes: true, disk: true, ..Faults::NONE },
        Faults { network: true, crashes: true, ..Faults::NONE },
        Faults::NONE,
        Faults { membership: true, crashes: true, partitions: true, transfers: true, ..Faults::NONE },
    ];
}

impl Default for Faults {
    fn default() -> Faults {
        Faults::ALL
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.network, "network"),
            (self.partitions, "partition"),
            (self.crashes, "crash"),
            (self.disk, "disk"),
            (self.clocks, "clock"),
            (self.transfers, "transfer"),
            (self.membership, "membership"),
            (self.replays, "replay"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if *self == Faults::ALL {
            f.write_str("all")
        } else if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// A fault list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFaultsError(pub String);

impl fmt::Display for ParseFaultsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown fault {:?} (expected all, none, or a list of network,partition,crash,disk,clock,transfer,membership,replay)",
            self.0
        )
    }
}

impl std::error::Error for ParseFaultsError {}

impl FromStr for Faults {
    type Err = ParseFaultsError;

    /// `all`, `none`, or a comma-separated list of `network`, `partition`, `crash`, `disk`, `clock`,
    /// `transfer`, `membership`, `replay`.
    fn from_str(text: &str) -> Result<Faults, ParseFaultsError> {
        match text {
            "all" => return Ok(Faults::ALL),
            "none" => return Ok(Faults::NONE),
            _ => {}
        }
        let mut faults = Faults::NONE;
        for name in text.split(',').map(str::trim) {
            match name {
                "network" => faults.network = true,
                "partition" | "partitions" => faults.partitions = true,
                "crash" | "crashes" => faults.crashes = true,
                "disk" => faults.disk = true,
                "clock" | "clocks" => faults.clocks = true,
                "transfer" | "transfers" => faults.transfers = true,
                "membership" => faults.membership = true,
                "replay" | "replays" => faults.replays = true,
                _ => return Err(ParseFaultsError(name.to_owned())),
            }
        }
        Ok(faults)
    }
}

/// A bug planted on purpose in the simulator's own driver code (the glue between clients, the
/// engine and the state), to prove the checkers catch what they claim to. Bugs inside the engine are
/// switched through the engine's own test-only option instead (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverBug {
    /// Acknowledges a write as soon as the leader has proposed it, before it commits.
    AckBeforeCommit,
    /// Serves reads from the local state of whichever node believes it leads, without a read-index
    /// round (a leader lease with no clock bound at all).
    ReadWithoutReadIndex,
    /// Applies entries to the state as soon as they are appended to the local log, before they
    /// commit, and serves reads from that state.
    ApplyBeforeCommit,
    /// Serves a session (follower) read from the replica's applied state at once, without waiting
    /// until it has applied the session's token.
    SessionReadWithoutWait,
}

impl DriverBug {
    pub const ALL: [DriverBug; 4] = [
        DriverBug::AckBeforeCommit,
        DriverBug::ReadWithoutReadIndex,
        DriverBug::ApplyBeforeCommit,
        DriverBug::SessionReadWithoutWait,
    ];
}

/// What a run is asked to do. The seed decides everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    pub durability: Durability,
    pub faults: Faults,
    /// Replicas the group starts with (all voters); `None`: 3 or 5, drawn from the seed. With
    /// membership faults, two spare nodes wait outside the group to join.
    pub nodes: Option<usize>,
    /// Session clients: half the reads go to a random replica with the client's session token
    /// (follower reads, checked for read-your-writes, monotonic reads and consistent prefix).
    pub sessions: bool,
    /// Membership changes may wipe a former member's disk before adding it back under the same id.
    /// Unsafe, and off by default: a node catching up through old log entries adopts old
    /// configurations (in force once appended) in which it is a voter, and a wiped former voter,
    /// which has forgotten its log, votes for it (seed 44407: two leaders in one term). Ids of
    /// removed nodes must not be reused with an empty disk.
    pub wipe_rejoiners: bool,
    /// Simulated milliseconds of the safety phase (faults on).
    pub safety_ms: u64,
    /// Once faults heal, a leader must be elected and a write acknowledged within this long.
    pub liveness_ms: u64,
    /// Then, with clients stopped, every replica must have applied the same log within this long.
    pub convergence_ms: u64,
    /// Most search steps the linearizability checker spends on one key before saying "undecided".
    pub check_steps_max: u64,
    /// Record the event trace (costs time; the seed replays it exactly either way).
    pub trace: bool,
    pub driver_bug: Option<DriverBug>,
    /// A bug planted inside the Raft engine (its test-only `RaftConfig::planted_bug`).
    pub engine_bug: Option<PlantedBug>,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            durability: Durability::Quorum,
            faults: Faults::ALL,
            nodes: None,
            sessions: true,
            wipe_rejoiners: false,
            safety_ms: 5_000,
            liveness_ms: 5_000,
            convergence_ms: 5_000,
            check_steps_max: 2_000_000,
            trace: false,
            driver_bug: None,
            engine_bug: None,
        }
    }
}

impl SimOptions {
    /// The command line that replays `seed` with these options.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut command =
            format!("chorus sim --seed {seed} --mode {} --faults {} --trace", self.durability, self.faults);
        if let Some(nodes) = self.nodes {
            command.push_str(&format!(" --nodes {nodes}"));
        }
        if !self.sessions {
            command.push_str(" --no-sessions");
        }
        if self.wipe_rejoiners {
            command.push_str(" --wipe-rejoiners");
        }
        if self.safety_ms != SimOptions::default().safety_ms {
            command.push_str(&format!(" --safety-ms {}", self.safety_ms));
        }
        if let Some(bug) = self.driver_bug {
            command.push_str(&format!(" (with planted driver bug {bug:?})"));
        }
        if let Some(bug) = self.engine_bug {
            command.push_str(&format!(" (with planted engine bug {bug:?})"));
        }
        command
    }
}

/// The rates and shapes of one run, drawn from its seed within what [`Faults`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    pub nodes: usize,
    pub clients: usize,
    pub keys: u64,
    /// Peer and client links: a delay of `latency_ms_min..=latency_ms_max`, and with
    /// `tail_per_mille` a long one up to `tail_ms_max`.
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    pub tail_per_mille: u64,
    pub tail_ms_max: u64,
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// Mean milliseconds between fault events.
    pub fault_interval_ms: u64,
    pub partition_weight: u64,
    pub crash_weight: u64,
    pub clock_jump_weight: u64,
    pub transfer_weight: u64,
    /// Mean milliseconds between membership changes (their own stream of events, beside the other
    /// faults); 0: none.
    pub membership_interval_ms: u64,
    /// Chance that a peer message is delivered once more, `replay_ms_min..=replay_ms_max` later.
    pub replay_per_mille: u64,
    pub replay_ms_max: u64,
    /// Per node, the clock runs fast or slow by up to this many parts per million.
    pub clock_drift_ppm_max: u64,
    pub fsync_ms_max: u64,
    pub slow_fsync_per_mille: u64,
    pub slow_fsync_ms_max: u64,
    /// Chance per tick that a node checkpoints its state and compacts its log.
    pub checkpoint_per_mille: u64,
    pub client_timeout_ms: u64,
    pub think_ms_max: u64,
    pub election_timeout_ms_min: u64,
    pub heartbeat_interval_ms: u64,
    pub entries_per_append_max: usize,
}

impl Knobs {
    /// Draws the knobs of a run; the first draws from the run's generator.
    pub fn draw(rng: &mut SimRng, options: &SimOptions) -> Knobs {
        let faults = options.faults;
        let mut pick = |choices: &[u64]| choices[rng.below(choices.len() as u64) as usize];
        let nodes = options.nodes.unwrap_or(if pick(&[0, 1, 2]) == 2 { 5 } else { 3 });
        let clients = pick(&[2, 3, 4, 6]) as usize;
        let keys = pick(&[1, 2, 3, 5]);
        let latency_ms_min = pick(&[1, 2]);
        let latency_ms_max = latency_ms_min + pick(&[2, 8, 25]);
        let (tail_per_mille, tail_ms_max) =
            if faults.network { (pick(&[0, 10, 50]), pick(&[100, 400])) } else { (0, 0) };
        let loss_per_mille = if faults.network { pick(&[0, 10, 50, 150]) } else { 0 };
        let duplicate_per_mille = if faults.network { pick(&[0, 10, 50]) } else { 0 };
        let fault_interval_ms = pick(&[150, 400, 1000]);
        let partition_weight = if faults.partitions { pick(&[1, 3]) } else { 0 };
        let crash_weight = if faults.crashes { pick(&[1, 3]) } else { 0 };
        let clock_jump_weight = if faults.clocks { 1 } else { 0 };
        let clock_drift_ppm_max = if faults.clocks { pick(&[1_000, 20_000, 100_000]) } else { 0 };
        let fsync_ms_max = pick(&[1, 3, 8]);
        let (slow_fsync_per_mille, slow_fsync_ms_max) =
            if faults.disk { (pick(&[20, 100]), pick(&[50, 300])) } else { (0, 0) };
        let checkpoint_per_mille = pick(&[0, 1, 4]);
        let client_timeout_ms = pick(&[500, 1000, 2000]);
        let think_ms_max = pick(&[1, 10, 40]);
        let election_timeout_ms_min = pick(&[150, 300]);
        let heartbeat_interval_ms = pick(&[20, 50]);
        let entries_per_append_max = pick(&[1, 8, 64]) as usize;
        // Drawn last, so that adding a knob keeps the earlier draws (and recorded seeds) as they were.
        let transfer_weight = if faults.transfers { pick(&[0, 1, 2]) } else { 0 };
        // Drawn only when asked for: runs without membership changes draw exactly what they did.
        let membership_interval_ms = if faults.membership { pick(&[150, 300, 700]) } else { 0 };
        let (replay_per_mille, replay_ms_max) =
            if faults.replays { (pick(&[20, 60, 150]), pick(&[600, 2_000])) } else { (0, 0) };
        Knobs {
            nodes,
            clients,
            keys,
            latency_ms_min,
            latency_ms_max,
            tail_per_mille,
            tail_ms_max,
            loss_per_mille,
            duplicate_per_mille,
            fault_interval_ms,
            partition_weight,
            crash_weight,
            clock_jump_weight,
            transfer_weight,
            membership_interval_ms,
            replay_per_mille,
            replay_ms_max,
            clock_drift_ppm_max,
            fsync_ms_max,
            slow_fsync_per_mille,
            slow_fsync_ms_max,
            checkpoint_per_mille,
            client_timeout_ms,
            think_ms_max,
            election_timeout_ms_min,
            heartbeat_interval_ms,
            entries_per_append_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print() {
        assert_eq!("all".parse::<Faults>(), Ok(Faults::ALL));
        assert_eq!("none".parse::<Faults>(), Ok(Faults::NONE));
        let some: Faults = "network,crash".parse().expect("valid");
        assert_eq!(some, Faults { network: true, crashes: true, ..Faults::NONE });
        assert_eq!(some.to_string(), "network,crash");
        assert_eq!(Faults::ALL.to_string().parse::<Faults>(), Ok(Faults::ALL));
        assert_eq!(Faults::NONE.to_string(), "none");
        assert_eq!(Faults::ALL.to_string(), "all");
        assert_eq!(Faults::CLASSIC.to_string().parse::<Faults>(), Ok(Faults::CLASSIC));
        assert_eq!("membership".parse::<Faults>(), Ok(Faults { membership: true, ..Faults::NONE }));
        assert!("lightning".parse::<Faults>().is_err());
    }

    #[test]
    fn calm_runs_draw_no_fault_rates() {
        let options = SimOptions { faults: Faults::NONE, ..SimOptions::default() };
        for seed in 0..20 {
            let knobs = Knobs::draw(&mut SimRng::new(seed), &options);
            assert_eq!((knobs.loss_per_mille, knobs.partition_weight, knobs.crash_weight), (0, 0, 0));
            assert_eq!((knobs.clock_drift_ppm_max, knobs.slow_fsync_per_mille, knobs.tail_per_mille), (0, 0, 0));
        }
    }
}
