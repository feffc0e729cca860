//! The checkers of a leaderless run, on the converged cluster and the client history.
//!
//! 1. **No acknowledged write lost**: on the converged container of each key, an acknowledged
//!    write is `Present`, unless some client wrote with a context that covers its dot (it read it,
//!    or was told it) and the write was not refused: then it must be gone (`Superseded`, or
//!    `Unseen` once the key's tombstone was collected). A write `Superseded` that no client saw is
//!    a lost update; a replaced write `Present` again is a resurrection.
//! 2. **Convergence** is checked by the cluster itself (bounded rounds).
//! 3. **Counters**: a counter key's value is at least the sum of the acknowledged increments and at
//!    most the sum of those not refused; in this model it must equal the latter, since an increment
//!    not refused is stored on its coordinator before the call returns and stores survive crashes.
//! 4. **Overlapping quorums**: a read with `r + w > n` (the same `n`) invoked after a write was
//!    acknowledged, with no topology change from the write's invoke to the read's answer, in an
//!    epoch with every node up, connected and believed up, has the write's dot in its context.
//! 5. Reads return only values some client wrote to that key.
//! 6. **Increment answers**: an increment answers at least its own delta plus every increment
//!    acknowledged before it was invoked whose write quorum meets its own (`w + w' > n`, the same
//!    `n`), under the same conditions as 4 (the acknowledging replicas send their counters back;
//!    counter keys only ever get positive increments here, so the bound is a sum).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chorus_core::leaderless::{Dot, Fate, VersionVector};

use super::cluster::{COUNTER_KEYS, LeaderlessCluster, OpKind, OpRecord, Outcome, REGISTER_KEYS};

/// What the checkers found.
#[derive(Debug, Default)]
pub struct Findings {
    /// One line per violation.
    pub failures: Vec<String>,
    /// Replaced writes that are siblings again (reported apart: a known gap of the core).
    pub resurrections: Vec<String>,
    /// (read, acknowledged write) pairs the overlapping-quorum check compared.
    pub overlapping_pairs: u64,
}

/// Runs every checker on the converged cluster.
pub fn check(cluster: &LeaderlessCluster) -> Findings {
    let mut findings = Findings::default();
    let mut by_key: BTreeMap<Bytes, Vec<&OpRecord>> = BTreeMap::new();
    for record in &cluster.history {
        by_key.entry(record.key.clone()).or_default().push(record);
    }
    for key in REGISTER_KEYS {
        let ops = by_key.get(key.as_bytes()).cloned().unwrap_or_default();
        check_register(cluster, key, &ops, &mut findings);
    }
    for key in COUNTER_KEYS {
        let ops = by_key.get(key.as_bytes()).cloned().unwrap_or_default();
        check_counter(cluster, key, &ops, &mut findings);
    }
    findings
}

/// The union of the contexts of every write to the key that was not refused: what clients
/// knowingly replaced.
fn replaced(ops: &[&OpRecord]) -> VersionVector {
    let mut replaced = VersionVector::new();
    for op in ops.iter().filter(|op| op.attempted()) {
        match &op.kind {
            OpKind::Put { context, .. } | OpKind::Delete { context } => replaced.merge(context),
            OpKind::Get | OpKind::Increment { .. } => {}
        }
    }
    replaced
}

fn check_register(cluster: &LeaderlessCluster, key: &str, ops: &[&OpRecord], findings: &mut Findings) {
    let home = cluster.home(key.as_bytes());
    let converged = cluster.stored(home[0], key.as_bytes());
    let replaced = replaced(ops);
    let mut written_values: BTreeSet<Bytes> = BTreeSet::new();
    for op in ops {
        if let OpKind::Put { value, .. } = &op.kind {
            written_values.insert(value.clone());
        }
    }
    for op in ops {
        let Outcome::Written { dot, .. } = &op.outcome else { continue };
        let dot = *dot;
        let fate = converged.as_ref().map_or(Fate::Unseen, |container| container.fate(dot));
        let delete = matches!(op.kind, OpKind::Delete { .. });
        let what = if delete { "delete" } else { "write" };
        if replaced.contains(dot) {
            if fate == Fate::Present && !delete {
                let by = ops.iter().find(|other| {
                    other.attempted()
                        && matches!(&other.kind, OpKind::Put { context, .. } | OpKind::Delete { context } if context.contains(dot))
                });
                let by = by.map(|other| {
                    format!("client {} at {} via {}: {:?}", other.client, other.invoked_ms, other.node, other.outcome)
                });
                findings.resurrections.push(format!(
                    "{key}: acknowledged write {dot} (client {}, at {}) was replaced ({}) yet is a sibling again",
                    op.client,
                    op.invoked_ms,
                    by.unwrap_or_default()
                ));
            }
        } else {
            let ok = match fate {
                Fate::Present => true,
                // A delete's tombstone may have been collected, and the key written afresh by its
                // coordinator with a larger counter, which covers the tombstone on replicas that
                // had not collected it yet. (What a delete must do, remove what its client saw, is
                // checked on the writes it replaced.)
                Fate::Unseen | Fate::Superseded => delete,
            };
            if !ok {
                findings.failures.push(format!(
                    "{key}: acknowledged {what} {dot} (client {}, invoked at {}, via {}, {:?}) lost: {fate:?} on the converged replicas, and no client saw it",
                    op.client, op.invoked_ms, op.node, op.quorum
                ));
            }
        }
    }
    for op in ops {
        if let Outcome::Read { values, .. } = &op.outcome {
            for value in values.iter().filter(|value| !written_values.contains(*value)) {
                findings.failures.push(format!("{key}: a read returned {value:?}, which no client wrote"));
            }
        }
    }
    check_overlapping_reads(cluster, key, ops, &replaced, findings);
}

fn check_counter(cluster: &LeaderlessCluster, key: &str, ops: &[&OpRecord], findings: &mut Findings) {
    let home = cluster.home(key.as_bytes());
    let converged = cluster.stored(home[0], key.as_bytes());
    let mut acked: i128 = 0;
    let mut attempted: i128 = 0;
    for op in ops {
        if let OpKind::Increment { delta } = op.kind
            && op.attempted()
        {
            attempted += i128::from(delta);
            if matches!(op.outcome, Outcome::Incremented { .. }) {
                acked += i128::from(delta);
            }
        }
    }
    let value = converged.as_ref().and_then(|container| container.counter()).map_or(0, |(_, counter)| counter.value());
    if value < acked || value > attempted {
        findings
            .failures
            .push(format!("{key}: counter is {value}, outside [acknowledged {acked}, attempted {attempted}]"));
    } else if value != attempted {
        findings.failures.push(format!(
            "{key}: counter is {value}, not the {attempted} of every increment not refused (acknowledged: {acked})"
        ));
    }
    check_overlapping_reads(cluster, key, ops, &VersionVector::new(), findings);
    check_increment_answers(cluster, key, ops, findings);
}

fn check_increment_answers(cluster: &LeaderlessCluster, key: &str, ops: &[&OpRecord], findings: &mut Findings) {
    let acked: Vec<(&OpRecord, i64)> = ops
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::Increment { delta }, Outcome::Incremented { .. }) => Some((*op, *delta)),
            _ => None,
        })
        .collect();
    for (increment, delta) in &acked {
        let Outcome::Incremented { value, .. } = increment.outcome else { continue };
        let epoch = increment.invoked_epoch;
        if increment.completed_epoch != epoch || !cluster.clean_epochs.contains(&epoch) {
            continue;
        }
        let mut floor = i128::from(*delta);
        for (earlier, earlier_delta) in &acked {
            let same_epoch = earlier.invoked_epoch == epoch && earlier.completed_epoch == epoch;
            let before = earlier.completed_ms.is_some_and(|at| at < increment.invoked_ms);
            let overlapping = earlier.quorum.n == increment.quorum.n
                && usize::from(earlier.quorum.w) + usize::from(increment.quorum.w) > usize::from(increment.quorum.n);
            if same_epoch && before && overlapping {
                floor += i128::from(*earlier_delta);
            }
        }
        if i128::from(value) < floor {
            findings.failures.push(format!(
                "{key}: increment by client {} (invoked at {}, via {}, {:?}) answered {value}, below the {floor} of itself and the increments acknowledged before it",
                increment.client, increment.invoked_ms, increment.node, increment.quorum
            ));
        }
    }
}

fn check_overlapping_reads(
    cluster: &LeaderlessCluster,
    key: &str,
    ops: &[&OpRecord],
    replaced: &VersionVector,
    findings: &mut Findings,
) {
    let acked: Vec<(&OpRecord, Dot)> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Written { dot, .. } | Outcome::Incremented { dot, .. } => Some((*op, *dot)),
            _ => None,
        })
        .collect();
    for read in ops {
        let Outcome::Read { context, .. } = &read.outcome else { continue };
        let epoch = read.invoked_epoch;
        if read.completed_epoch != epoch || !cluster.clean_epochs.contains(&epoch) {
            continue;
        }
        for (write, dot) in &acked {
            let same_epoch = write.invoked_epoch == epoch && write.completed_epoch == epoch;
            let before = write.completed_ms.is_some_and(|at| at < read.invoked_ms);
            let overlapping = write.quorum.n == read.quorum.n
                && usize::from(write.quorum.w) + usize::from(read.quorum.r) > usize::from(read.quorum.n);
            if !(same_epoch && before && overlapping) {
                continue;
            }
            // A delete (or a replaced write) may have been collected with its tombstone.
            if matches!(write.kind, OpKind::Delete { .. }) || replaced.contains(*dot) {
                continue;
            }
            findings.overlapping_pairs += 1;
            if !context.contains(*dot) {
                findings.failures.push(format!(
                    "{key}: read by client {} (invoked at {}, via {}, {:?}) missed write {dot} acknowledged at {:?} ({:?}), no fault in between",
                    read.client, read.invoked_ms, read.node, read.quorum, write.completed_ms, write.quorum
                ));
            }
        }
    }
}
