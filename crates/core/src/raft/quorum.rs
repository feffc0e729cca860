//! The commit rule of each durability mode, as data (garage's `ReplicationParameters` habit): one
//! function turns "who has the entry durably" into a commit point, instead of `if`s scattered through
//! the engine. Elections do not use this: a vote is always won by a majority of voters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

/// When an entry counts as committed (acknowledged to the client, applied everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Durability {
    /// Once the leader's own log has it durably. A failover can lose acknowledged entries.
    Async,
    /// Once the leader and `k` voter followers have it durably (fewer if the group has fewer voter
    /// followers). A failover can lose acknowledged entries unless `1 + k` is a majority.
    SemiSync(u32),
    /// Once a majority of voters have it durably (the leader among them). The default.
    #[default]
    Quorum,
    /// Once every voter has it durably.
    All,
}

impl Durability {
    /// How many voter followers (the leader excluded) must hold an entry durably, besides the leader
    /// itself, for the entry to commit in a group with `voter_followers` voters other than the leader.
    pub fn follower_acks_required(self, voter_followers: usize) -> usize {
        match self {
            Durability::Async => 0,
            Durability::SemiSync(k) => usize::try_from(k).unwrap_or(usize::MAX).min(voter_followers),
            Durability::Quorum => majority(voter_followers + 1) - 1,
            Durability::All => voter_followers,
        }
    }

    /// Whether this mode may acknowledge an entry that a later leader does not have: the entry is then
    /// discarded on the old leader when it rejoins (and must be reported, never dropped silently).
    pub fn can_lose_committed(self) -> bool {
        match self {
            Durability::Async | Durability::SemiSync(_) => true,
            Durability::Quorum | Durability::All => false,
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Async => f.write_str("async"),
            Durability::SemiSync(k) => write!(f, "semi-sync:{k}"),
            Durability::Quorum => f.write_str("quorum"),
            Durability::All => f.write_str("all"),
        }
    }
}

/// A durability setting that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability {0:?} (expected async, semi-sync:K, quorum or all)")]
pub struct ParseDurabilityError(pub String);

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    fn from_str(text: &str) -> Result<Durability, ParseDurabilityError> {
        let error = || ParseDurabilityError(text.to_owned());
        match text {
            "async" => Ok(Durability::Async),
            "quorum" => Ok(Durability::Quorum),
            "all" => Ok(Durability::All),
            _ => {
                let k = text.strip_prefix("semi-sync:").ok_or_else(error)?;
                k.parse().map(Durability::SemiSync).map_err(|_| error())
            }
        }
    }
}

/// The smallest number of voters that is more than half of `voters`.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index that `durability` lets commit, given how far the leader's own log is durable
/// and how far each voter follower's log is durable and matches the leader's. The leader is always
/// one of the holders: an entry never commits before the leader has it durably, so every committed
/// entry can be applied from the local log after a crash. (Raft additionally requires the entry at
/// that index to be of the leader's term, section 5.4.2; the caller checks that.)
pub(crate) fn commit_point(
    durability: Durability,
    leader_durable: LogIndex,
    mut followers_durable: Vec<LogIndex>,
) -> LogIndex {
    let required = durability.follower_acks_required(followers_durable.len());
    if required == 0 {
        return leader_durable;
    }
    followers_durable.sort_unstable_by(|a, b| b.cmp(a));
    followers_durable[required - 1].min(leader_durable)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule as a table: (mode, leader durable, followers durable, commit point).
    #[test]
    fn commit_point_table() {
        let cases: &[(Durability, u64, &[u64], u64)] = &[
            // Single voter: every mode is "the leader's own fsync".
            (Durability::Async, 7, &[], 7),
            (Durability::SemiSync(2), 7, &[], 7),
            (Durability::Quorum, 7, &[], 7),
            (Durability::All, 7, &[], 7),
            // Three voters.
            (Durability::Async, 7, &[0, 0], 7),
            (Durability::SemiSync(1), 7, &[5, 3], 5),
            (Durability::SemiSync(1), 4, &[5, 3], 4),
            (Durability::SemiSync(2), 7, &[5, 3], 3),
            (Durability::SemiSync(9), 7, &[5, 3], 3),
            (Durability::Quorum, 7, &[5, 3], 5),
            (Durability::Quorum, 2, &[5, 3], 2),
            (Durability::All, 7, &[5, 3], 3),
            // Five voters: a majority is the leader and two followers.
            (Durability::Quorum, 9, &[8, 1, 6, 2], 6),
            (Durability::Quorum, 9, &[8, 1, 0, 2], 2),
            (Durability::SemiSync(1), 9, &[8, 1, 6, 2], 8),
            (Durability::All, 9, &[8, 1, 6, 2], 1),
            // Two voters: a majority is both.
            (Durability::Quorum, 9, &[4], 4),
        ];
        for (durability, leader, followers, expected) in cases {
            let point = commit_point(*durability, LogIndex(*leader), followers.iter().copied().map(LogIndex).collect());
            assert_eq!(point, LogIndex(*expected), "{durability} leader {leader} followers {followers:?}");
        }
    }

    #[test]
    fn only_async_and_semi_sync_can_lose_committed_entries() {
        assert!(Durability::Async.can_lose_committed());
        assert!(Durability::SemiSync(1).can_lose_committed());
        assert!(!Durability::Quorum.can_lose_committed());
        assert!(!Durability::All.can_lose_committed());
    }

    #[test]
    fn parses_and_prints() {
        for text in ["async", "semi-sync:2", "quorum", "all"] {
            let durability: Durability = text.parse().expect("valid");
            assert_eq!(durability.to_string(), text);
        }
        assert!("semi-sync:".parse::<Durability>().is_err());
        assert!("majority".parse::<Durability>().is_err());
    }

    #[test]
    fn majorities() {
        assert_eq!([1, 2, 3, 4, 5].map(majority), [1, 2, 2, 3, 3]);
    }
}
