//! A hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014): timestamps
//! that stay close to wall-clock time yet never go backwards on a node and always move past every
//! timestamp the node has observed, so "later by HLC" respects causality where wall clocks drift.
//!
//! The clock never reads time itself: the driver passes the physical time into every call.
//! Timestamps order by (wall time, logical counter, node id); the node id breaks ties between
//! nodes, so two distinct writes never compare equal and last-write-wins is deterministic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, UnixMillis};

/// One hybrid-logical-clock reading. The derived order is the field order: wall time, then the
/// logical counter, then the node id (the tie-break).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct HlcTimestamp {
    /// Milliseconds since the Unix epoch: the largest physical time the clock has seen.
    pub wall_ms: u64,
    /// Events within the same `wall_ms`.
    pub logical: u16,
    /// The node that issued the timestamp.
    pub node: NodeId,
}

impl HlcTimestamp {
    /// Bits of [`HlcTimestamp::packed`] that hold the logical counter.
    pub const LOGICAL_BITS: u32 = 16;

    /// The wall time and counter as one number that grows with the clock: `wall_ms << 16 | logical`.
    /// Wall times up to 2^48 ms (the year 10889) fit.
    pub fn packed(self) -> u64 {
        (self.wall_ms << Self::LOGICAL_BITS) | u64::from(self.logical)
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.logical, self.node)
    }
}

/// A remote timestamp is further ahead of the local physical clock than the configured bound; the
/// clock did not move to it (a node with a runaway clock must not drag every other node along).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("remote timestamp {remote} is {ahead_ms} ms ahead of the local clock (at most {drift_ms_max} allowed)")]
pub struct ClockDriftError {
    pub remote: HlcTimestamp,
    pub ahead_ms: u64,
    pub drift_ms_max: u64,
}

/// The hybrid logical clock of one node.
#[derive(Debug, Clone)]
pub struct Hlc {
    node: NodeId,
    /// The last timestamp issued or observed (its node field is always `node`).
    last: HlcTimestamp,
    /// How far ahead of the local physical time a remote timestamp may be and still be adopted.
    drift_ms_max: u64,
}

/// The default bound on how far ahead a remote clock may be: CockroachDB's default maximum offset.
pub const DRIFT_MS_MAX_DEFAULT: u64 = 500;

/// Wall times beyond this do not fit [`HlcTimestamp::packed`]; a driver passing one is broken.
const WALL_MS_MAX: u64 = (1 << 48) - 1;

impl Hlc {
    pub fn new(node: NodeId) -> Hlc {
        Hlc::with_drift_bound(node, DRIFT_MS_MAX_DEFAULT)
    }

    pub fn with_drift_bound(node: NodeId, drift_ms_max: u64) -> Hlc {
        Hlc { node, last: HlcTimestamp { wall_ms: 0, logical: 0, node }, drift_ms_max }
    }

    /// A clock resuming after a restart from the largest timestamp it had persisted (or a bound on
    /// it), so that it never issues a timestamp at or below one it issued before the crash.
    pub fn resumed(node: NodeId, drift_ms_max: u64, persisted: HlcTimestamp) -> Hlc {
        Hlc { node, last: HlcTimestamp { node, ..persisted }, drift_ms_max }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// A timestamp for a local event (a write this node coordinates), strictly greater than every
    /// timestamp issued or observed before.
    ///
    /// # Panics
    /// If `physical` is beyond the year 10889 (not a real clock reading).
    pub fn now(&mut self, physical: UnixMillis) -> HlcTimestamp {
        assert!(physical.0 <= WALL_MS_MAX, "physical time {physical} out of range");
        if physical.0 > self.last.wall_ms {
            self.last.wall_ms = physical.0;
            self.last.logical = 0;
        } else {
            self.tick_logical();
        }
        self.issued()
    }

    /// Takes a timestamp received from another node into account (a replicated write, a read
    /// reply), and returns a timestamp for the receive event, strictly greater than both `remote`
    /// and everything this clock issued before. A remote timestamp more than the drift bound ahead
    /// of `physical` is refused and the clock is left as it was.
    ///
    /// # Panics
    /// If `physical` is beyond the year 10889 (not a real clock reading).
    pub fn observe(&mut self, remote: HlcTimestamp, physical: UnixMillis) -> Result<HlcTimestamp, ClockDriftError> {
        assert!(physical.0 <= WALL_MS_MAX, "physical time {physical} out of range");
        let ahead_ms = remote.wall_ms.saturating_sub(physical.0);
        if ahead_ms > self.drift_ms_max {
            return Err(ClockDriftError { remote, ahead_ms, drift_ms_max: self.drift_ms_max });
        }
        let wall_ms = self.last.wall_ms.max(remote.wall_ms).max(physical.0);
        let local_same = wall_ms == self.last.wall_ms;
        let remote_same = wall_ms == remote.wall_ms;
        match (local_same, remote_same) {
            (true, true) => {
                self.last.logical = self.last.logical.max(remote.logical);
                self.tick_logical();
            }
            (true, false) => self.tick_logical(),
            (false, true) => {
                self.last.wall_ms = wall_ms;
                self.last.logical = remote.logical;
                self.tick_logical();
            }
            (false, false) => {
                self.last.wall_ms = wall_ms;
                self.last.logical = 0;
            }
        }
        let issued = self.issued();
        assert!(issued.packed() > remote.packed(), "receive event {issued} not after {remote}");
        Ok(issued)
    }

    /// One more event within the current wall time. When the counter is full the clock moves one
    /// millisecond ahead of the wall time instead (65536 events in one millisecond on one node).
    fn tick_logical(&mut self) {
        match self.last.logical.checked_add(1) {
            Some(logical) => self.last.logical = logical,
            None => {
                self.last.wall_ms += 1;
                self.last.logical = 0;
            }
        }
    }

    fn issued(&self) -> HlcTimestamp {
        assert_eq!(self.last.node, self.node);
        self.last
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn ts(wall_ms: u64, logical: u16, node: u64) -> HlcTimestamp {
        HlcTimestamp { wall_ms, logical, node: NodeId(node) }
    }

    #[test]
    fn follows_the_physical_clock_when_it_moves_forward() {
        let mut clock = Hlc::new(NodeId(1));
        assert_eq!(clock.now(UnixMillis(100)), ts(100, 0, 1));
        assert_eq!(clock.now(UnixMillis(150)), ts(150, 0, 1));
    }

    #[test]
    fn counts_logically_when_the_physical_clock_stalls_or_goes_back() {
        let mut clock = Hlc::new(NodeId(1));
        clock.now(UnixMillis(100));
        assert_eq!(clock.now(UnixMillis(100)), ts(100, 1, 1));
        assert_eq!(clock.now(UnixMillis(90)), ts(100, 2, 1), "a clock stepped back must not make time go back");
    }

    #[test]
    fn moves_past_a_remote_timestamp_ahead_of_it() {
        let mut clock = Hlc::new(NodeId(1));
        clock.now(UnixMillis(100));
        // The remote node's clock is 200 ms ahead: the receive event is ordered after it.
        let received = clock.observe(ts(300, 4, 2), UnixMillis(101)).unwrap();
        assert_eq!(received, ts(300, 5, 1));
        // Later local events stay after it even though the physical clock is still behind.
        assert_eq!(clock.now(UnixMillis(102)), ts(300, 6, 1));
        // Once the physical clock passes, it takes over again.
        assert_eq!(clock.now(UnixMillis(301)), ts(301, 0, 1));
    }

    #[test]
    fn a_remote_timestamp_behind_only_ticks_the_counter() {
        let mut clock = Hlc::new(NodeId(1));
        clock.now(UnixMillis(500));
        assert_eq!(clock.observe(ts(400, 9, 2), UnixMillis(450)).unwrap(), ts(500, 1, 1));
    }

    #[test]
    fn equal_wall_times_take_the_larger_counter() {
        let mut clock = Hlc::new(NodeId(1));
        clock.now(UnixMillis(500));
        assert_eq!(clock.observe(ts(500, 7, 2), UnixMillis(400)).unwrap(), ts(500, 8, 1));
    }

    #[test]
    fn physical_time_ahead_of_both_resets_the_counter() {
        let mut clock = Hlc::new(NodeId(1));
        clock.now(UnixMillis(500));
        assert_eq!(clock.observe(ts(400, 7, 2), UnixMillis(600)).unwrap(), ts(600, 0, 1));
    }

    #[test]
    fn refuses_a_remote_clock_beyond_the_drift_bound() {
        let mut clock = Hlc::with_drift_bound(NodeId(1), 100);
        clock.now(UnixMillis(1000));
        let error = clock.observe(ts(1101, 0, 2), UnixMillis(1000)).unwrap_err();
        assert_eq!(error.ahead_ms, 101);
        assert_eq!(clock.last(), ts(1000, 0, 1), "a refused timestamp leaves the clock alone");
        assert!(clock.observe(ts(1100, 0, 2), UnixMillis(1000)).is_ok(), "exactly the bound is allowed");
    }

    #[test]
    fn a_full_counter_carries_into_the_wall_time() {
        let mut clock = Hlc::resumed(NodeId(1), 100, ts(100, u16::MAX, 9));
        assert_eq!(clock.now(UnixMillis(100)), ts(101, 0, 1));
    }

    #[test]
    fn a_resumed_clock_never_reissues() {
        let mut clock = Hlc::resumed(NodeId(3), 100, ts(5000, 2, 3));
        assert!(clock.now(UnixMillis(10)) > ts(5000, 2, 3));
    }

    #[test]
    fn the_node_id_breaks_ties() {
        assert!(ts(5, 1, 2) > ts(5, 1, 1));
        assert!(ts(5, 2, 1) > ts(5, 1, 2));
        assert!(ts(6, 0, 1) > ts(5, 9, 2));
        assert_eq!(ts(6, 3, 1).packed(), (6 << 16) | 3);
    }

    #[derive(Debug, Clone)]
    enum Event {
        Local { physical: u64 },
        Receive { physical: u64, remote: (u64, u16) },
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..2000).prop_map(|physical| Event::Local { physical }),
            (0u64..2000, 0u64..2600, any::<u16>())
                .prop_map(|(physical, wall, logical)| Event::Receive { physical, remote: (wall, logical) }),
        ]
    }

    proptest! {
        /// The two HLC guarantees: timestamps strictly increase on a node, a receive event is after
        /// what it received, and the clock stays within the drift bound of the largest physical time.
        #[test]
        fn monotonic_and_after_every_observed(events in prop::collection::vec(arb_event(), 1..64)) {
            let mut clock = Hlc::with_drift_bound(NodeId(1), 500);
            let mut previous = clock.last();
            let mut physical_max = 0;
            for event in events {
                match event {
                    Event::Local { physical } => {
                        physical_max = physical_max.max(physical);
                        let issued = clock.now(UnixMillis(physical));
                        prop_assert!(issued.packed() > previous.packed());
                        previous = issued;
                    }
                    Event::Receive { physical, remote } => {
                        physical_max = physical_max.max(physical);
                        let remote = ts(remote.0, remote.1, 2);
                        match clock.observe(remote, UnixMillis(physical)) {
                            Ok(issued) => {
                                prop_assert!(issued.packed() > previous.packed());
                                prop_assert!(issued.packed() > remote.packed());
                                previous = issued;
                            }
                            Err(_) => {
                                prop_assert!(remote.wall_ms > physical + 500);
                                prop_assert_eq!(clock.last(), previous);
                            }
                        }
                    }
                }
                prop_assert!(clock.last().wall_ms <= physical_max + 500 + 1);
            }
        }
    }
}
