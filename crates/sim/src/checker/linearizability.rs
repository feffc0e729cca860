//! A linearizability checker for key-value registers: the Wing–Gong search with Lowe's memoisation,
//! as Porcupine implements it (Lowe, "Testing for linearizability", 2017; Horn and Kroening,
//! "Faster linearizability checking via P-compositionality", 2015).
//!
//! A history is linearizable if every operation can be given a point between its invocation and its
//! completion such that, taken in the order of those points, the operations are a legal sequential
//! run of the register. Registers are independent, so each key is checked on its own
//! (P-compositionality): the search is exponential in the concurrency of one key, not of the run.
//!
//! The search walks a list of call and return events in real-time order. At each step it tries to
//! linearize a call whose operation is not yet placed (moving it out of the list with its return);
//! meeting a return means the operation it ends should have been placed already, so it backtracks.
//! A cache of (set of operations placed, register value) prunes every configuration seen before:
//! the remaining search from it cannot differ.
//!
//! Outcomes follow Knossos and Porcupine: a `Fail` operation never happened and is dropped; an
//! `Unknown` one returns at infinity (it may take effect at any point after its invocation) with an
//! unconstrained output, so it may be placed anywhere later, including after everything (which is
//! the same as never). An `Unknown` read constrains nothing and is dropped.
//!
//! The search is bounded: past `steps_max` steps on one key the verdict is `Undecided`, never a hang.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::history::{Command, History, Operation, Outcome, Output, show};

/// The register of one key: absent, or an integer.
type Value = Option<u64>;

/// How one key's history checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    Linearizable,
    /// No order works. `explanation` says how far the search got.
    Violation {
        explanation: String,
    },
    /// The step budget ran out first.
    Undecided,
}

/// The verdict on a whole history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Operations that took part in the check (`Fail` operations and unanswered reads excluded).
    pub ops_checked: usize,
    pub keys_checked: usize,
    /// Keys whose search ran out of steps.
    pub undecided_keys: Vec<u64>,
    /// One line per key that is not linearizable.
    pub violations: Vec<String>,
    /// Search steps taken, over all keys.
    pub steps: u64,
}

impl Report {
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty() && self.undecided_keys.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops on {} keys: {} violations, {} undecided",
            self.ops_checked,
            self.keys_checked,
            self.violations.len(),
            self.undecided_keys.len()
        )
    }
}

/// Checks every key of `history`, spending at most `steps_max` search steps on each.
pub fn check(history: &History, steps_max: u64) -> Report {
    let mut by_key: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for operation in history.operations() {
        by_key.entry(operation.key).or_default().push(operation);
    }
    let mut report = Report::default();
    for (key, operations) in by_key {
        let search = Search::new(&operations);
        report.ops_checked += search.ops.len();
        report.keys_checked += 1;
        let (verdict, steps) = search.run(steps_max);
        report.steps += steps;
        match verdict {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Violation { explanation } => report.violations.push(format!("key k{key}: {explanation}")),
            KeyVerdict::Undecided => report.undecided_keys.push(key),
        }
    }
    report
}

/// Checks the operations of one key.
pub fn check_key(operations: &[&Operation], steps_max: u64) -> KeyVerdict {
    Search::new(operations).run(steps_max).0
}

/// The register's sequential specification: whether `operation` may run on `value` returning
/// `output` (`None`: unknown, anything goes), and the value after it.
fn step(value: Value, command: Command, output: Option<Output>) -> Option<Value> {
    match (command, output) {
        (Command::Read, Some(Output::Read(seen))) => (seen == value).then_some(value),
        (Command::Read, _) => Some(value),
        (Command::Write(new), _) => Some(Some(new)),
        (Command::Cas { expected, new }, Some(Output::Cas(swapped))) => {
            let matches = value == Some(expected);
            (matches == swapped).then_some(if swapped { Some(new) } else { value })
        }
        (Command::Cas { expected, new }, _) => Some(if value == Some(expected) { Some(new) } else { value }),
        (Command::Incr, Some(Output::Incr(result))) => {
            let next = value.unwrap_or(0).wrapping_add(1);
            (next == result).then_some(Some(next))
        }
        (Command::Incr, _) => Some(Some(value.unwrap_or(0).wrapping_add(1))),
    }
}

const NIL: usize = usize::MAX;

/// One key's operations as Lowe's doubly linked list of call and return events. Slot 0 is the head.
struct Search<'a> {
    ops: Vec<&'a Operation>,
    /// Per list slot: the operation, and for a call the slot of its return (`NIL` for a return).
    op_of: Vec<usize>,
    match_of: Vec<usize>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(operations: &[&'a Operation]) -> Search<'a> {
        let ops: Vec<&Operation> = operations
            .iter()
            .copied()
            .filter(|op| match op.outcome {
                Outcome::Fail => false,
                Outcome::Unknown => op.command != Command::Read,
                Outcome::Ok(_) => true,
            })
            .collect();
        // Events in real-time order; a call before a return at the same time (concurrent, the
        // permissive reading), and returns at infinity for unknown outcomes.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (at, op) in ops.iter().enumerate() {
            let returned = match op.outcome {
                Outcome::Ok(_) => op.complete.unwrap_or(u64::MAX),
                Outcome::Fail | Outcome::Unknown => u64::MAX,
            };
            assert!(returned > op.invoke || returned == u64::MAX, "operation {op} returns before it is invoked");
            events.push((op.invoke, false, at));
            events.push((returned, true, at));
        }
        events.sort_unstable();
        let slots = events.len() + 1;
        let mut search = Search {
            ops,
            op_of: vec![NIL; slots],
            match_of: vec![NIL; slots],
            next: vec![NIL; slots],
            prev: vec![NIL; slots],
        };
        let mut call_slot = vec![NIL; search.ops.len()];
        for (position, (_, is_return, op)) in events.iter().enumerate() {
            let slot = position + 1;
            search.op_of[slot] = *op;
            if *is_return {
                search.match_of[call_slot[*op]] = slot;
            } else {
                call_slot[*op] = slot;
            }
            search.prev[slot] = slot - 1;
            search.next[slot - 1] = slot;
        }
        search
    }

    fn lift(&mut self, call: usize) {
        let (prev, next) = (self.prev[call], self.next[call]);
        self.next[prev] = next;
        self.prev[next] = prev;
        let ret = self.match_of[call];
        let (prev, next) = (self.prev[ret], self.next[ret]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.match_of[call];
        let (prev, next) = (self.prev[ret], self.next[ret]);
        self.next[prev] = ret;
        if next != NIL {
            self.prev[next] = ret;
        }
        let (prev, next) = (self.prev[call], self.next[call]);
        self.next[prev] = call;
        self.prev[next] = call;
    }

    fn known_output(&self, op: usize) -> Option<Output> {
        match self.ops[op].outcome {
            Outcome::Ok(output) => Some(output),
            Outcome::Fail | Outcome::Unknown => None,
        }
    }

    fn run(mut self, steps_max: u64) -> (KeyVerdict, u64) {
        let words = self.ops.len().div_ceil(64);
        // The placed operations: those with a known outcome, and unknown ones, as bitsets.
        let mut placed = vec![0u64; words];
        let mut placed_unknown = vec![0u64; words];
        // Lowe's cache, with dominance for unknown operations: a configuration is (known placed,
        // value) as the key, the unknown placed sets seen with it as the entry. A configuration
        // whose unknown set includes one already seen is pruned too: having placed more unknown
        // operations to reach the same point only takes options away. The key is probed with a
        // reused buffer, so only new configurations allocate.
        let mut cache: HashMap<Vec<u64>, Vec<Vec<u64>>> = HashMap::new();
        let mut probe: Vec<u64> = Vec::with_capacity(words + 2);
        let mut probe_unknown: Vec<u64> = Vec::with_capacity(words);
        // (call slot, value before it, which pass placed it, whether the value had to be consumed)
        let mut stack: Vec<(usize, Value, bool, bool)> = Vec::new();
        // Set after placing an unknown operation: the next one placed must not be a blind write.
        // A linearization in which an unknown operation is followed by a write (or by nothing)
        // stays one without it, so only those where its result is observed need searching.
        let mut must_consume = false;
        let mut value: Value = None;
        // Operations with a known outcome still to place: once none is left, the rest (unknown
        // writes) can all go at the end.
        let mut known_left = self.ops.iter().filter(|op| matches!(op.outcome, Outcome::Ok(_))).count();
        // The deepest point reached, for the explanation: (ops placed, value, op that could not be).
        let mut deepest: Option<(usize, Value, usize)> = None;
        let mut steps = 0u64;
        let mut entry = self.next[0];
        // Each window of candidates (the calls before the first return) is walked twice: first
        // placing only operations with a known outcome, then only unknown ones. Unknown operations
        // are never required, so trying without them first keeps the search small.
        let mut unknown_pass = false;
        while known_left > 0 && self.next[0] != NIL {
            steps += 1;
            if steps > steps_max {
                return (KeyVerdict::Undecided, steps);
            }
            let op = self.op_of[entry];
            if self.match_of[entry] != NIL {
                // A call: try to place its operation here.
                let known = matches!(self.ops[op].outcome, Outcome::Ok(_));
                let blind = matches!(self.ops[op].command, Command::Write(_));
                if known == unknown_pass || (must_consume && blind) {
                    entry = self.next[entry];
                    continue;
                }
                let Some(after) = step(value, self.ops[op].command, self.known_output(op)) else {
                    entry = self.next[entry];
                    continue;
                };
                // An unknown operation that changes nothing here is better left for later: placing
                // it can only remove options (it need never be placed at all).
                if !known && after == value {
                    entry = self.next[entry];
                    continue;
                }
                probe.clear();
                probe.extend_from_slice(&placed);
                probe_unknown.clear();
                probe_unknown.extend_from_slice(&placed_unknown);
                if known {
                    probe[op / 64] |= 1 << (op % 64);
                } else {
                    probe_unknown[op / 64] |= 1 << (op % 64);
                }
                probe.extend_from_slice(&[u64::from(after.is_some()) | u64::from(!known) << 1, after.unwrap_or(0)]);
                let seen = cache.get(probe.as_slice()).is_some_and(|sets| {
                    sets.iter().any(|set| set.iter().zip(&probe_unknown).all(|(old, new)| old & !new == 0))
                });
                if !seen {
                    cache.entry(probe.clone()).or_default().push(probe_unknown.clone());
                    stack.push((entry, value, unknown_pass, must_consume));
                    value = after;
                    must_consume = !known;
                    if known {
                        placed[op / 64] |= 1 << (op % 64);
                    } else {
                        placed_unknown[op / 64] |= 1 << (op % 64);
                    }
                    if known {
                        known_left -= 1;
                    }
                    self.lift(entry);
                    entry = self.next[0];
                    unknown_pass = false;
                } else {
                    entry = self.next[entry];
                }
            } else if !unknown_pass {
                // The end of the window: walk it again for unknown operations.
                unknown_pass = true;
                entry = self.next[0];
            } else {
                // A return whose operation is not placed: undo the last placement.
                if deepest.is_none_or(|(depth, _, _)| stack.len() > depth) {
                    deepest = Some((stack.len(), value, op));
                }
                let Some((call, before, pass, consume)) = stack.pop() else {
                    return (KeyVerdict::Violation { explanation: self.explain(deepest) }, steps);
                };
                let undone = self.op_of[call];
                value = before;
                placed[undone / 64] &= !(1 << (undone % 64));
                placed_unknown[undone / 64] &= !(1 << (undone % 64));
                if matches!(self.ops[undone].outcome, Outcome::Ok(_)) {
                    known_left += 1;
                }
                self.unlift(call);
                entry = self.next[call];
                unknown_pass = pass;
                must_consume = consume;
            }
        }
        (KeyVerdict::Linearizable, steps)
    }

    fn explain(&self, deepest: Option<(usize, Value, usize)>) -> String {
        let Some((depth, value, op)) = deepest else {
            return "no operation can be linearized".to_owned();
        };
        format!(
            "{} operations; at best {depth} linearized (value then {}), after which {} cannot be",
            self.ops.len(),
            show(value),
            self.ops[op]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Output::{Cas, Incr, Read, Written};

    /// An operation on key 0 from `client`, invoked at `invoke` and completed at `complete` (stamps).
    fn op(client: u64, command: Command, invoke: u64, complete: u64, outcome: Outcome) -> Operation {
        let complete = (outcome != Outcome::Unknown).then_some(complete);
        Operation {
            id: 0,
            client,
            key: 0,
            command,
            invoke,
            complete,
            outcome,
            invoke_ms: invoke,
            complete_ms: complete,
        }
    }

    fn ok(output: Output) -> Outcome {
        Outcome::Ok(output)
    }

    fn verdict(operations: Vec<Operation>) -> KeyVerdict {
        let history = History::from_operations(operations);
        let ops: Vec<&Operation> = history.operations().iter().collect();
        check_key(&ops, 1_000_000)
    }

    fn assert_linearizable(operations: Vec<Operation>) {
        assert_eq!(verdict(operations), KeyVerdict::Linearizable);
    }

    fn assert_violation(operations: Vec<Operation>) {
        let verdict = verdict(operations);
        assert!(matches!(verdict, KeyVerdict::Violation { .. }), "expected a violation, got {verdict:?}");
    }

    #[test]
    fn sequential_history_follows_the_register() {
        assert_linearizable(vec![
            op(1, Command::Read, 1, 2, ok(Read(None))),
            op(1, Command::Write(3), 3, 4, ok(Written)),
            op(1, Command::Incr, 5, 6, ok(Incr(4))),
            op(1, Command::Cas { expected: 4, new: 9 }, 7, 8, ok(Cas(true))),
            op(1, Command::Cas { expected: 4, new: 1 }, 9, 10, ok(Cas(false))),
            op(1, Command::Read, 11, 12, ok(Read(Some(9)))),
        ]);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: seeing either value is fine.
        for seen in [None, Some(1)] {
            assert_linearizable(vec![
                op(1, Command::Write(1), 1, 4, ok(Written)),
                op(2, Command::Read, 2, 3, ok(Read(seen))),
            ]);
        }
        // Two overlapping increments: one sees 1, the other 2, whatever the completion order.
        assert_linearizable(vec![op(1, Command::Incr, 1, 4, ok(Incr(2))), op(2, Command::Incr, 2, 3, ok(Incr(1)))]);
    }

    #[test]
    fn stale_read_after_an_acknowledged_write_is_caught() {
        assert_violation(vec![op(1, Command::Write(1), 1, 2, ok(Written)), op(2, Command::Read, 3, 4, ok(Read(None)))]);
    }

    #[test]
    fn lost_write_is_caught() {
        // Two acknowledged writes, then reads that never see the second: it was lost.
        assert_violation(vec![
            op(1, Command::Write(1), 1, 2, ok(Written)),
            op(2, Command::Write(2), 3, 4, ok(Written)),
            op(1, Command::Read, 5, 6, ok(Read(Some(1)))),
        ]);
        // A lost increment: both were acknowledged with 1.
        assert_violation(vec![op(1, Command::Incr, 1, 4, ok(Incr(1))), op(2, Command::Incr, 2, 3, ok(Incr(1)))]);
    }

    #[test]
    fn two_reads_out_of_order_are_caught() {
        // The write is concurrent with both reads, but once a read has seen the new value, a later
        // read may not see the old one.
        assert_violation(vec![
            op(1, Command::Write(1), 1, 10, ok(Written)),
            op(2, Command::Read, 2, 3, ok(Read(Some(1)))),
            op(3, Command::Read, 4, 5, ok(Read(None))),
        ]);
    }

    #[test]
    fn cas_that_swapped_on_a_value_nobody_wrote_is_caught() {
        assert_violation(vec![
            op(1, Command::Write(1), 1, 2, ok(Written)),
            op(2, Command::Cas { expected: 7, new: 8 }, 3, 4, ok(Cas(true))),
        ]);
        // A CAS that reports no swap although the value matched.
        assert_violation(vec![
            op(1, Command::Write(7), 1, 2, ok(Written)),
            op(2, Command::Cas { expected: 7, new: 8 }, 3, 4, ok(Cas(false))),
        ]);
    }

    #[test]
    fn an_unknown_write_may_have_taken_effect() {
        // Timed out, then seen by a later read: it took effect after all.
        assert_linearizable(vec![
            op(1, Command::Write(1), 1, 0, Outcome::Unknown),
            op(2, Command::Read, 5, 6, ok(Read(Some(1)))),
        ]);
        // ... or not.
        assert_linearizable(vec![
            op(1, Command::Write(1), 1, 0, Outcome::Unknown),
            op(2, Command::Read, 5, 6, ok(Read(None))),
        ]);
        // ... possibly long after it timed out: the value appears between two later reads.
        assert_linearizable(vec![
            op(1, Command::Write(1), 1, 0, Outcome::Unknown),
            op(2, Command::Read, 5, 6, ok(Read(None))),
            op(2, Command::Read, 7, 8, ok(Read(Some(1)))),
        ]);
    }

    #[test]
    fn an_unknown_write_cannot_take_effect_before_it_was_invoked() {
        assert_violation(vec![
            op(2, Command::Read, 1, 2, ok(Read(Some(1)))),
            op(1, Command::Write(1), 3, 0, Outcome::Unknown),
        ]);
    }

    #[test]
    fn an_unknown_write_takes_effect_at_most_once() {
        // Seen, then overwritten, then seen again: it would have had to apply twice.
        assert_violation(vec![
            op(1, Command::Write(1), 1, 0, Outcome::Unknown),
            op(2, Command::Read, 2, 3, ok(Read(Some(1)))),
            op(2, Command::Write(2), 4, 5, ok(Written)),
            op(2, Command::Read, 6, 7, ok(Read(Some(1)))),
        ]);
    }

    #[test]
    fn unknown_increments_count_once_or_not_at_all() {
        assert_linearizable(vec![
            op(1, Command::Incr, 1, 0, Outcome::Unknown),
            op(2, Command::Incr, 2, 3, ok(Incr(2))),
        ]);
        assert_linearizable(vec![
            op(1, Command::Incr, 1, 0, Outcome::Unknown),
            op(2, Command::Incr, 2, 3, ok(Incr(1))),
        ]);
        assert_violation(vec![op(1, Command::Incr, 1, 0, Outcome::Unknown), op(2, Command::Incr, 2, 3, ok(Incr(3)))]);
    }

    #[test]
    fn failed_operations_did_not_happen() {
        assert_violation(vec![
            op(1, Command::Write(1), 1, 2, Outcome::Fail),
            op(2, Command::Read, 3, 4, ok(Read(Some(1)))),
        ]);
        assert_linearizable(vec![
            op(1, Command::Write(1), 1, 2, Outcome::Fail),
            op(2, Command::Read, 3, 4, ok(Read(None))),
        ]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut on_key_one = op(2, Command::Read, 3, 4, ok(Read(None)));
        on_key_one.key = 1;
        let history = History::from_operations(vec![op(1, Command::Write(1), 1, 2, ok(Written)), on_key_one]);
        let report = check(&history, 1_000);
        assert!(report.is_linearizable(), "{report:?}");
        assert_eq!((report.keys_checked, report.ops_checked), (2, 2));
    }

    #[test]
    fn a_violation_names_the_key_and_the_operation_that_cannot_be_placed() {
        let history = History::from_operations(vec![
            op(1, Command::Write(1), 1, 2, ok(Written)),
            op(2, Command::Read, 3, 4, ok(Read(None))),
        ]);
        let report = check(&history, 1_000);
        assert_eq!(report.violations.len(), 1, "{report:?}");
        let line = &report.violations[0];
        assert!(line.starts_with("key k0: 2 operations"), "{line}");
        assert!(line.contains("#1 client 2 k0 read -> nil"), "{line}");
    }

    #[test]
    fn the_budget_bounds_the_search() {
        // Many concurrent unknown writes and reads that force trying orders: a tiny budget gives up.
        let mut operations = Vec::new();
        for client in 0..12 {
            operations.push(op(client, Command::Write(client), 1 + client, 0, Outcome::Unknown));
        }
        for client in 0..12 {
            operations.push(op(
                100 + client,
                Command::Read,
                20 + 2 * client,
                21 + 2 * client,
                ok(Read(Some(11 - client))),
            ));
        }
        let history = History::from_operations(operations);
        let ops: Vec<&Operation> = history.operations().iter().collect();
        assert_eq!(check_key(&ops, 10), KeyVerdict::Undecided);
        assert_eq!(check_key(&ops, 10_000_000), KeyVerdict::Linearizable);
    }

    #[test]
    fn memoisation_prunes_orders_already_tried() {
        // Ten concurrent writes, then a read of a value none of them wrote. Refuting it means trying
        // every order of the writes (10! = 3.6 million) without the cache; with it, only every
        // (set written, last value) pair: about 10 * 2^10.
        let mut operations: Vec<Operation> =
            (0..10).map(|client| op(client, Command::Write(client), 1 + client, 100 + client, ok(Written))).collect();
        operations.push(op(99, Command::Read, 200, 201, ok(Read(Some(99)))));
        let history = History::from_operations(operations);
        let report = check(&history, 300_000);
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert!(report.steps < 300_000, "{report:?}");
    }

    #[test]
    fn wide_acknowledged_concurrency_is_cheap() {
        // 200 overlapping increments acknowledged with distinct results: the order is forced.
        let operations: Vec<Operation> = (0..200)
            .map(|client| op(client, Command::Incr, 1 + client, 1000 + client, ok(Incr(200 - client))))
            .collect();
        let history = History::from_operations(operations);
        let report = check(&history, 5_000_000);
        assert!(report.is_linearizable(), "{report:?}");
    }
}
