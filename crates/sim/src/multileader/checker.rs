//! The end-of-run checkers (the per-apply checks run as the world applies: see
//! `World::check_applied`). Each returns failure lines; empty means the property held.

use bytes::Bytes;
use chorus_core::multileader::{ChangeOp, ConflictPolicy, DcId};

use super::world::{COUNTER_KEYS, Dc, Outcome, REGISTER_KEYS, World};

/// Every check on a converged world.
pub fn check(world: &World) -> Vec<String> {
    let mut failures = Vec::new();
    failures.extend(identical_states(world));
    failures.extend(materialized_views(world));
    failures.extend(acknowledged_writes_kept(world));
    failures.extend(counters_are_sums(world));
    failures
}

/// After convergence every DC holds the same state (the world's convergence loop checks the same
/// before it stops; this names the first difference).
pub fn identical_states(world: &World) -> Vec<String> {
    let Some(first) = world.dcs.first() else { return Vec::new() };
    let mut failures = Vec::new();
    for dc in &world.dcs[1..] {
        if dc.state.applied() != first.state.applied() {
            failures.push(format!(
                "{} applied {} but {} applied {}",
                first.id,
                first.state.applied(),
                dc.id,
                dc.state.applied()
            ));
        }
        for (key, state) in first.state.keys() {
            if dc.state.keys().get(key) != Some(state) {
                failures.push(format!(
                    "key {key:?} differs: {} has {state:?}, {} has {:?}",
                    first.id,
                    dc.id,
                    dc.state.keys().get(key)
                ));
            }
        }
    }
    failures
}

/// The view built from `apply`'s `Materialize` output matches the state's visible values (what
/// the node's key-value state would hold).
fn materialized_views(world: &World) -> Vec<String> {
    let mut failures = Vec::new();
    for dc in &world.dcs {
        for (key, state) in dc.state.keys() {
            if state.increments_total() != state.increments_sum_recomputed() {
                failures.push(format!(
                    "{}: {key:?} keeps an increments total of {} but they sum to {}",
                    dc.id,
                    state.increments_total(),
                    state.increments_sum_recomputed()
                ));
            }
        }
        for key in dc.state.keys().keys() {
            let visible = dc.state.visible(key);
            if dc.materialized.get(key) != visible.as_ref() {
                failures.push(format!(
                    "{}: materialized {key:?} = {:?}, visible {:?}",
                    dc.id,
                    dc.materialized.get(key),
                    visible
                ));
            }
        }
        for key in dc.materialized.keys() {
            if !dc.state.keys().contains_key(key) {
                failures.push(format!("{}: materialized {key:?} that the state does not hold", dc.id));
            }
        }
    }
    failures
}

/// Every acknowledged `Set`/`Delete` on a register key is still there, or causally superseded by a
/// later write that saw it, or (last-write-wins only) lost to a concurrent write with a larger
/// `(timestamp, origin)`, with conflicts counted. Nothing is silently gone.
fn acknowledged_writes_kept(world: &World) -> Vec<String> {
    let Some(dc) = world.dcs.first() else { return Vec::new() };
    let conflicts: u64 = world.dcs.iter().map(|dc| dc.state.stats().conflicts_resolved).sum();
    let mut failures = Vec::new();
    for write in &world.writes {
        let Outcome::Acknowledged(origin, seq) = write.outcome else { continue };
        for op in &write.ops {
            if let Some(failure) = write_kept(world, dc, conflicts, (origin, seq), op) {
                failures.push(failure);
            }
        }
    }
    failures
}

fn write_kept(world: &World, dc: &Dc, conflicts: u64, (origin, seq): (DcId, u64), op: &ChangeOp) -> Option<String> {
    let key = op.key();
    if !REGISTER_KEYS.iter().any(|register| key.as_ref() == register.as_bytes()) {
        return None;
    }
    let Some(change) = world.registry.get(&(origin, seq)) else {
        return Some(format!("acknowledged write ({origin}, {seq}) missing from the registry"));
    };
    let versions = dc.state.keys().get(key).map(|state| state.versions().to_vec()).unwrap_or_default();
    if versions.iter().any(|version| version.id() == (origin, seq)) {
        return None;
    }
    let superseded = world.registry.values().any(|later| {
        later.deps.covers(origin, seq)
            && later.ops.iter().any(|op| !matches!(op, ChangeOp::Add { .. }) && op.key() == key)
    });
    if superseded {
        return None;
    }
    let lww_loser = world.knobs.policy == ConflictPolicy::LastWriteWins
        && conflicts > 0
        && !versions.is_empty()
        && versions.iter().all(|winner| winner.rank() > change.rank() && !winner_saw(world, winner.id(), origin, seq));
    if lww_loser {
        return None;
    }
    Some(format!(
        "acknowledged write ({origin}, {seq}) {op:?} to {key:?} is gone: final versions {:?}",
        versions.iter().map(|version| (version.id(), version.timestamp.to_string())).collect::<Vec<_>>()
    ))
}

fn winner_saw(world: &World, winner: (DcId, u64), origin: DcId, seq: u64) -> bool {
    world.registry.get(&winner).is_some_and(|change| change.deps.covers(origin, seq))
}

/// A key only ever incremented ends at the sum of every increment committed (acknowledged, or
/// committed without a reply when its DC crashed), on every DC.
fn counters_are_sums(world: &World) -> Vec<String> {
    let mut failures = Vec::new();
    for key in COUNTER_KEYS {
        let key = Bytes::from(key);
        let mut expected: i64 = 0;
        let mut acknowledged = 0;
        for write in &world.writes {
            let (Outcome::Acknowledged(..) | Outcome::CommittedUnacknowledged(..)) = write.outcome else { continue };
            for op in &write.ops {
                if let ChangeOp::Add { key: written, delta } = op
                    && *written == key
                {
                    expected += delta;
                    acknowledged += 1;
                }
            }
        }
        for dc in &world.dcs {
            let value = dc.state.counter_value(&key);
            let expected_value = (acknowledged > 0).then_some(expected);
            if value != expected_value {
                failures.push(format!(
                    "{}: counter {key:?} = {value:?}, the {acknowledged} committed increments sum to {expected}",
                    dc.id
                ));
            }
        }
    }
    failures
}
