//! Leaderless simulator runs: clean sweeps, determinism, and the planted bugs being caught.

use chorus_core::leaderless::PlantedBug;

use super::{Heal, LeaderlessOptions, run_seed, run_seeds};
use crate::Faults;

fn assert_sweep_passes(first: u64, count: u64, options: &LeaderlessOptions) {
    let sweep = run_seeds(first, count, options);
    let failures: Vec<String> = sweep.failed.iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "{sweep}\n{}", failures.join("\n"));
}

#[test]
fn leaderless_runs_with_all_faults_lose_nothing_and_converge() {
    assert_sweep_passes(0, 200, &LeaderlessOptions::default());
}

/// Seeds that once failed, replayed forever. 78: request ids restarted at 1 after a crash, so a
/// late `GetReply` from before it answered a new read of another key (fixed in the coordinator).
/// 17, 24: an increment answered from its coordinator's copy alone, missing increments acknowledged
/// through other nodes before it (fixed: acks carry the replicas' counters, the answer joins them).
const REGRESSIONS: [u64; 3] = [78, 17, 24];

#[test]
fn leaderless_regression_seeds_pass() {
    for seed in REGRESSIONS {
        let report = run_seed(seed, &LeaderlessOptions::default());
        assert!(report.passed(), "{report}");
    }
}

/// Once a gap, now refused: a request asking for a larger `n` than the configured one made the
/// extra replica (the rank-4 node for `n = 4`) coordinate writes on its own copy, which neither
/// anti-entropy nor default reads ever look at, so a `w = 1` write acknowledged there alone never
/// reached the home replicas (seeds 35, 52, 79, 132, 135 of the first 300 with `n` up to 4). The
/// core now refuses such requests: the same seeds pass, and each refused some.
#[test]
fn requests_with_a_larger_n_than_configured_are_refused_and_lose_nothing() {
    let options = LeaderlessOptions { request_n_max: 4, ..LeaderlessOptions::default() };
    for seed in [35, 52, 79, 132, 135] {
        let report = run_seed(seed, &options);
        assert!(report.passed(), "{report}");
        assert!(report.stats.refused_n_above_configured > 0, "seed {seed}: no request with n = 4 was refused");
    }
    // By default requests draw n only up to the configured n: nothing to refuse.
    let report = run_seed(35, &LeaderlessOptions::default());
    assert_eq!(report.stats.refused_n_above_configured, 0, "{report}");
}

#[test]
fn leaderless_runs_without_faults_pass() {
    assert_sweep_passes(0, 5, &LeaderlessOptions { faults: Faults::NONE, ..LeaderlessOptions::default() });
}

#[test]
fn a_seed_replays_identically() {
    let options = LeaderlessOptions { trace: true, ..LeaderlessOptions::default() };
    let first = run_seed(7, &options);
    let second = run_seed(7, &options);
    assert_eq!(first.trace, second.trace);
    assert!(first.trace.as_ref().is_some_and(|trace| trace.len() > 100));
}

/// The first seed in `first..first + count` whose run fails.
fn first_catching_seed(first: u64, count: u64, options: &LeaderlessOptions) -> Option<u64> {
    (first..first + count).find(|&seed| !run_seed(seed, options).passed())
}

#[test]
fn a_merge_that_drops_incoming_siblings_is_caught() {
    let options =
        LeaderlessOptions { planted_bug: Some(PlantedBug::MergeDropsIncomingSibling), ..LeaderlessOptions::default() };
    let seed = first_catching_seed(0, 20, &options);
    assert!(seed.is_some(), "MergeDropsIncomingSibling not caught in 20 seeds");
}

#[test]
fn anti_entropy_ignoring_received_keys_is_caught() {
    let options = LeaderlessOptions {
        planted_bug: Some(PlantedBug::AntiEntropyIgnoresReceivedKeys),
        heal: Some(Heal::AntiEntropy),
        ..LeaderlessOptions::default()
    };
    let seed = first_catching_seed(0, 20, &options);
    assert!(seed.is_some(), "AntiEntropyIgnoresReceivedKeys not caught in 20 seeds");
}

/// A sweep for exploring, not for CI: `SIM_LL_SEEDS=1000 SIM_LL_FROM=0 [SIM_LL_BUG=merge|ae]
/// cargo test --release -p chorus-sim leaderless_sweep -- --ignored --nocapture`.
#[test]
#[ignore = "exploration: long"]
fn leaderless_sweep() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default);
    let mut options = LeaderlessOptions {
        request_n_max: u8::try_from(env("SIM_LL_N_MAX", 3)).unwrap_or(3),
        resurrections_fail: env("SIM_LL_ZOMBIES_FAIL", 0) == 1,
        ..LeaderlessOptions::default()
    };
    match std::env::var("SIM_LL_BUG").as_deref() {
        Ok("merge") => options.planted_bug = Some(PlantedBug::MergeDropsIncomingSibling),
        Ok("ae") => {
            options.planted_bug = Some(PlantedBug::AntiEntropyIgnoresReceivedKeys);
            options.heal = Some(Heal::AntiEntropy);
        }
        _ => {}
    }
    let sweep = run_seeds(env("SIM_LL_FROM", 0), env("SIM_LL_SEEDS", 100), &options);
    for report in sweep.failed.iter().take(10) {
        println!("{report}");
    }
    let first = run_seed(env("SIM_LL_FROM", 0), &options);
    println!("{first}\n{:?}\n{:?}", first.stats, first.knobs);
    println!("{sweep}");
}

/// Prints one seed's trace: `SIM_LL_SEED=78 cargo test -p chorus-sim leaderless_replay -- --ignored --nocapture`.
#[test]
#[ignore = "exploration: replay"]
fn leaderless_replay() {
    let seed = std::env::var("SIM_LL_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(0);
    let options = LeaderlessOptions { trace: true, ..LeaderlessOptions::default() };
    let report = run_seed(seed, &options);
    for line in report.trace.iter().flatten() {
        println!("{line}");
    }
    println!("{report}");
}
