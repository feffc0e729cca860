//! What the leader knows about each follower's log, and how it replicates to it (raft-rs's
//! `Progress`): probing one message at a time until it finds where the logs agree, then pipelining
//! up to a bounded number of appends, or waiting for a snapshot when the entries it needs are gone.

use std::collections::VecDeque;

use crate::types::{LogIndex, UnixMillis};

/// How the leader is replicating to one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationState {
    /// Looking for the point where the logs agree: one append in flight at a time.
    Probe,
    /// The logs agree up to `next_index - 1` (optimistically): appends are pipelined.
    Replicate,
    /// The follower needs entries already compacted: a snapshot is being streamed to it.
    Snapshot,
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// The follower has every entry up to here durably, and they match the leader's.
    pub(crate) match_index: LogIndex,
    /// The next entry to send.
    pub(crate) next_index: LogIndex,
    pub(crate) state: ReplicationState,
    /// Probe: an append is out and unanswered; wait for its answer or the next heartbeat.
    pub(crate) probe_sent: bool,
    /// Snapshot: the leader's snapshot point when the snapshot was asked for, and when.
    pub(crate) snapshot_index: LogIndex,
    pub(crate) snapshot_sent_at: UnixMillis,
    /// Replicate: the last index of each append in flight, oldest first.
    pub(crate) inflight: VecDeque<LogIndex>,
    /// When the follower last answered in this term.
    pub(crate) last_contact: Option<UnixMillis>,
    /// When the leader started tracking it: check-quorum counts a follower that never answered as
    /// heard from then.
    pub(crate) added_at: UnixMillis,
    /// The highest read-index round the follower has answered.
    pub(crate) read_seq_acked: u64,
    /// Answers with an older read-index round were sent before the leader started tracking this
    /// follower (to an earlier life of a node removed and added back in this term): ignored.
    pub(crate) first_read_seq: u64,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex, now: UnixMillis, first_read_seq: u64) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            snapshot_index: LogIndex::ZERO,
            snapshot_sent_at: UnixMillis(0),
            inflight: VecDeque::new(),
            last_contact: None,
            added_at: now,
            read_seq_acked: 0,
            first_read_seq,
        }
    }

    /// Back to probing from `next_index`.
    pub(crate) fn become_probe(&mut self, next_index: LogIndex) {
        assert!(next_index > self.match_index, "probing at or below the match index");
        self.state = ReplicationState::Probe;
        self.next_index = next_index;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// The follower's log matches up to `appended`: pipeline from there.
    pub(crate) fn become_replicate(&mut self, appended: LogIndex) {
        self.state = ReplicationState::Replicate;
        self.next_index = appended.max(self.match_index).next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_index: LogIndex, now: UnixMillis) {
        self.state = ReplicationState::Snapshot;
        self.snapshot_index = snapshot_index;
        self.snapshot_sent_at = now;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records an append ending at `last` as in flight.
    pub(crate) fn sent(&mut self, last: LogIndex, inflight_max: usize) {
        assert!(self.inflight.len() < inflight_max, "in-flight limit exceeded");
        assert!(self.inflight.back().is_none_or(|previous| *previous < last), "in-flight appends out of order");
        self.inflight.push_back(last);
        self.next_index = last.next();
    }

    /// The follower has processed every append ending at or before `appended`.
    pub(crate) fn free_inflight_to(&mut self, appended: LogIndex) {
        while self.inflight.front().is_some_and(|last| *last <= appended) {
            self.inflight.pop_front();
        }
    }
}
