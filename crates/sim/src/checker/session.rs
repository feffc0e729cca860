//! Session guarantees of follower reads (Terry et al., "Session guarantees for weakly consistent
//! replicated data", 1994), as the node serves them: a client carries a *session token*, a log index
//! (the index of its last acknowledged write, or the index its last read was served at); a replica
//! serves a read from its applied state only once it has applied the token, and answers with the
//! index it served at, the client's next token.
//!
//! The checker does not trust the index a replica claims. It knows the committed log (every
//! committed entry's writes, recorded the first time any replica applies it; state machine safety
//! makes that unique under `quorum` / `all`), and for each session read looks for the earliest
//! prefix of that log, at or after the session's floor, in which the key holds the value read:
//!
//! - **read your writes**: after a write acknowledged at index `i`, a read sees a prefix of at least
//!   `i` entries;
//! - **monotonic reads**: after a read that saw a prefix of at least `j` entries, a later read of the
//!   same session (any key) sees at least `j`;
//! - **consistent prefix**: the value read is the key's value in *some* committed prefix (no
//!   uncommitted, lost or made-up values).
//!
//! The floor moves to the write's index, or to the earliest prefix a read could have seen.

use std::collections::BTreeMap;
use std::fmt;

use chorus_core::types::{LogIndex, NodeId};

use crate::history::show;

/// What a session did, in the order it learned the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A write acknowledged by the leader, committed at `index`.
    Wrote { client: u64, index: LogIndex },
    /// A follower read of `key` sent with `token`, served by `node` claiming its applied index `served`.
    Read { client: u64, key: u64, token: LogIndex, value: Option<u64>, node: NodeId, served: LogIndex, at_ms: u64 },
}

/// The committed log's writes, and what the sessions did.
#[derive(Debug, Clone, Default)]
pub struct SessionChecker {
    /// Per key, the committed writes to it: index → value written (`None`: deleted).
    writes: BTreeMap<u64, BTreeMap<LogIndex, Option<u64>>>,
    /// The committed log is known up to here.
    committed: LogIndex,
    events: Vec<SessionEvent>,
}

/// A session guarantee broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionViolation {
    pub guarantee: &'static str,
    pub detail: String,
}

impl fmt::Display for SessionViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session guarantee {}: {}", self.guarantee, self.detail)
    }
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionReport {
    pub reads_checked: u64,
    pub violations: Vec<SessionViolation>,
}

impl SessionChecker {
    pub fn new() -> SessionChecker {
        SessionChecker::default()
    }

    /// The committed entry at `index` (the next one: the log is recorded in order) wrote `writes`.
    pub fn committed(&mut self, index: LogIndex, writes: &[(u64, Option<u64>)]) {
        for (key, value) in writes {
            self.writes.entry(*key).or_default().insert(index, *value);
        }
        self.committed = self.committed.max(index);
    }

    pub fn record(&mut self, event: SessionEvent) {
        self.events.push(event);
    }

    pub fn reads(&self) -> usize {
        self.events.iter().filter(|event| matches!(event, SessionEvent::Read { .. })).count()
    }

    /// The key's value once the first `index` entries of the committed log are applied.
    fn value_at(&self, key: u64, index: LogIndex) -> Option<u64> {
        self.writes.get(&key).and_then(|writes| writes.range(..=index).next_back()).and_then(|(_, value)| *value)
    }

    /// The earliest prefix of at least `floor` entries in which `key` holds `value`.
    fn earliest(&self, key: u64, floor: LogIndex, value: Option<u64>) -> Option<LogIndex> {
        if floor > self.committed {
            return None;
        }
        if self.value_at(key, floor) == value {
            return Some(floor);
        }
        if floor == self.committed {
            return None;
        }
        let writes = self.writes.get(&key)?;
        writes.range(floor.next()..=self.committed).find(|(_, written)| **written == value).map(|(index, _)| *index)
    }

    /// Checks every session's reads against the committed log.
    pub fn check(&self) -> SessionReport {
        let mut report = SessionReport::default();
        // Per client: the floor, and what set it.
        let mut floors: BTreeMap<u64, (LogIndex, String)> = BTreeMap::new();
        for event in &self.events {
            match event {
                SessionEvent::Wrote { client, index } => {
                    let floor = floors.entry(*client).or_insert((LogIndex::ZERO, String::new()));
                    if *index > floor.0 {
                        *floor = (*index, format!("its write acknowledged at {index}"));
                    }
                }
                SessionEvent::Read { client, key, token, value, node, served, at_ms } => {
                    report.reads_checked += 1;
                    let (floor, why) = floors.get(client).cloned().unwrap_or((LogIndex::ZERO, String::new()));
                    match self.earliest(*key, floor, *value) {
                        Some(seen) => {
                            if seen > floor {
                                floors.insert(*client, (seen, format!("its read of k{key} at {at_ms} ms")));
                            }
                        }
                        None => {
                            let ever = self.earliest(*key, LogIndex::ZERO, *value);
                            let guarantee = match ever {
                                None => "consistent prefix",
                                Some(_) if why.starts_with("its write") => "read your writes",
                                Some(_) => "monotonic reads",
                            };
                            let detail = format!(
                                "client {client} read k{key} = {} from node {node} at {at_ms} ms (token {token}, served \
                                 at {served}), but from index {floor} on ({why}) the committed log holds {} there{}",
                                show(*value),
                                show(self.value_at(*key, floor)),
                                match ever {
                                    Some(index) =>
                                        format!("; the prefix {index}, before the floor, holds {}", show(*value)),
                                    None => format!(
                                        "; no committed prefix (up to {}) holds {}",
                                        self.committed,
                                        show(*value)
                                    ),
                                }
                            );
                            report.violations.push(SessionViolation { guarantee, detail });
                        }
                    }
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(client: u64, key: u64, value: Option<u64>) -> SessionEvent {
        SessionEvent::Read { client, key, token: LogIndex::ZERO, value, node: NodeId(2), served: LogIndex(0), at_ms: 0 }
    }

    fn log() -> SessionChecker {
        let mut checker = SessionChecker::new();
        checker.committed(LogIndex(1), &[]);
        checker.committed(LogIndex(2), &[(0, Some(10))]);
        checker.committed(LogIndex(3), &[(1, Some(5))]);
        checker.committed(LogIndex(4), &[(0, Some(20))]);
        checker
    }

    #[test]
    fn reads_of_committed_prefixes_pass() {
        let mut checker = log();
        checker.record(read(1, 0, None));
        checker.record(read(1, 0, Some(10)));
        checker.record(SessionEvent::Wrote { client: 1, index: LogIndex(4) });
        checker.record(read(1, 0, Some(20)));
        checker.record(read(1, 1, Some(5)));
        checker.record(read(2, 1, None));
        let report = checker.check();
        assert_eq!((report.reads_checked, report.violations.len()), (5, 0), "{report:?}");
    }

    #[test]
    fn a_read_before_the_sessions_write_breaks_read_your_writes() {
        let mut checker = log();
        checker.record(SessionEvent::Wrote { client: 1, index: LogIndex(4) });
        checker.record(read(1, 0, Some(10)));
        let report = checker.check();
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].guarantee, "read your writes", "{report:?}");
    }

    #[test]
    fn going_back_breaks_monotonic_reads_even_across_keys() {
        let mut checker = log();
        checker.record(read(1, 0, Some(20)));
        // Key 1 is 5 from index 3 on: a read of nil after seeing prefix 4 went back.
        checker.record(read(1, 1, None));
        let report = checker.check();
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].guarantee, "monotonic reads", "{report:?}");
    }

    #[test]
    fn a_value_no_prefix_holds_breaks_consistent_prefix() {
        let mut checker = log();
        checker.record(read(1, 0, Some(99)));
        let report = checker.check();
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].guarantee, "consistent prefix", "{report:?}");
    }
}
