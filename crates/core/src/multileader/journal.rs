//! The journal: every change a DC applied, in apply order, at dense positions from 1. A DC's
//! outgoing streams read it; it keeps at most `entries_max` items, and a downstream DC that needs
//! trimmed positions gets a bootstrap instead.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::change::{Change, JournalItem};
use super::ids::DcId;

/// The positions a downstream asked for are no longer in the journal: send `export()` as a
/// bootstrap instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("journal trimmed through position {trimmed_through}, position {asked} asked")]
pub struct JournalTrimmed {
    pub asked: u64,
    pub trimmed_through: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    items: VecDeque<JournalItem>,
    /// Every position at or below this is gone (trimmed, or skipped by a bootstrap).
    trimmed_through: u64,
    /// The last position used.
    last: u64,
    entries_max: usize,
}

impl Journal {
    pub fn new(entries_max: usize) -> Journal {
        assert!(entries_max > 0, "a journal must hold at least one entry");
        Journal { items: VecDeque::new(), trimmed_through: 0, last: 0, entries_max }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn trimmed_through(&self) -> u64 {
        self.trimmed_through
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends `change` at the next position, trimming the oldest item past the bound.
    pub fn append(&mut self, change: Change) -> u64 {
        self.last += 1;
        self.items.push_back(JournalItem { position: self.last, change });
        while self.items.len() > self.entries_max {
            if let Some(oldest) = self.items.pop_front() {
                self.trimmed_through = oldest.position;
            }
        }
        self.assert_dense();
        self.last
    }

    /// Skips a position that stands for changes this DC did not apply one by one (merged from a
    /// bootstrap): every downstream still behind it must bootstrap from this DC, so the journal is
    /// trimmed through it.
    pub fn skip(&mut self) {
        self.last += 1;
        self.items.clear();
        self.trimmed_through = self.last;
    }

    /// Items after `position` that `forward(origin)` accepts, at most `max`, and the position the
    /// scan reached (what the batch covers: send it as `through`).
    pub fn since(
        &self,
        position: u64,
        max: usize,
        forward: &dyn Fn(DcId) -> bool,
    ) -> Result<(Vec<JournalItem>, u64), JournalTrimmed> {
        if position < self.trimmed_through {
            return Err(JournalTrimmed { asked: position, trimmed_through: self.trimmed_through });
        }
        let mut out = Vec::new();
        let mut through = position;
        for item in self.items.iter().filter(|item| item.position > position) {
            if out.len() == max {
                return Ok((out, through));
            }
            through = item.position;
            if forward(item.change.origin) {
                out.push(item.clone());
            }
        }
        Ok((out, self.last.max(position)))
    }

    fn assert_dense(&self) {
        if let (Some(first), Some(last)) = (self.items.front(), self.items.back()) {
            assert_eq!(first.position, self.trimmed_through + 1, "journal starts right after the trim");
            assert_eq!(last.position, self.last, "journal ends at its last position");
            assert_eq!(self.items.len() as u64, self.last - self.trimmed_through, "journal positions dense");
        }
    }
}
