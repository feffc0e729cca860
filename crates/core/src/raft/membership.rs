//! Who belongs to a replication group: voters elect the leader and count toward commits; learners
//! receive the log but never vote and are never counted. Changes go one server at a time (Raft
//! dissertation section 4.1), so any two consecutive configurations share a majority.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// A configuration of the group. Stored whole in `EntryPayload::Membership` entries and in snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Where members listen for peers, as the driver spells it (opaque to the engine). Replicated
    /// with the configuration so that every node, and every later leader, can reach a member added
    /// online; members started from `--initial-cluster` may have none here.
    #[serde(default)]
    pub addresses: BTreeMap<NodeId, String>,
}

/// One single-server change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new node that votes at once. Prefer `AddLearner` then `PromoteLearner`, so the group never
    /// waits on a voter that is still catching up.
    AddVoter(NodeId),
    /// A new node that receives the log without voting.
    AddLearner(NodeId),
    /// A voter or learner leaves.
    RemoveNode(NodeId),
    /// A learner becomes a voter.
    PromoteLearner(NodeId),
}

/// A change that does not apply to the current configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("node {0} is not a learner")]
    NotLearner(NodeId),
    #[error("node {0} is the last voter")]
    LastVoter(NodeId),
    #[error("node {0} is the leader: transfer leadership first")]
    RemovingLeader(NodeId),
}

impl Membership {
    /// A group of voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership { voters: voters.into_iter().collect(), learners: BTreeSet::new(), addresses: BTreeMap::new() }
    }

    /// The same configuration, recording that `node` listens for peers at `address`.
    pub fn with_address(mut self, node: NodeId, address: String) -> Membership {
        self.addresses.insert(node, address);
        self
    }

    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node)
    }

    pub fn is_member(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// Voters and learners, ascending.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let mut all: BTreeSet<NodeId> = self.voters.clone();
        all.extend(self.learners.iter().copied());
        all.into_iter()
    }

    /// The configuration after `change`.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddVoter(node) | MembershipChange::AddLearner(node) if self.is_member(node) => {
                return Err(MembershipError::AlreadyMember(node));
            }
            MembershipChange::AddVoter(node) => {
                next.voters.insert(node);
            }
            MembershipChange::AddLearner(node) => {
                next.learners.insert(node);
            }
            MembershipChange::RemoveNode(node) => {
                if !self.is_member(node) {
                    return Err(MembershipError::NotMember(node));
                }
                if self.voters.len() == 1 && self.is_voter(node) {
                    return Err(MembershipError::LastVoter(node));
                }
                next.voters.remove(&node);
                next.learners.remove(&node);
                next.addresses.remove(&node);
            }
            MembershipChange::PromoteLearner(node) => {
                if !next.learners.remove(&node) {
                    return Err(MembershipError::NotLearner(node));
                }
                next.voters.insert(node);
            }
        }
        assert!(next.voters.is_disjoint(&next.learners), "a node is both voter and learner");
        assert!(!next.voters.is_empty(), "a configuration without voters");
        Ok(next)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters {:?} learners {:?}", self.voters, self.learners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(nodes: &[u64]) -> BTreeSet<NodeId> {
        nodes.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn single_server_changes() {
        let base = Membership::with_voters([NodeId(1), NodeId(2)]);
        let learner = base.apply(MembershipChange::AddLearner(NodeId(3))).expect("add learner");
        assert_eq!((learner.voters.clone(), learner.learners.clone()), (ids(&[1, 2]), ids(&[3])));
        let promoted = learner.apply(MembershipChange::PromoteLearner(NodeId(3))).expect("promote");
        assert_eq!((promoted.voters.clone(), promoted.learners.clone()), (ids(&[1, 2, 3]), ids(&[])));
        let removed = promoted.apply(MembershipChange::RemoveNode(NodeId(1))).expect("remove");
        assert_eq!(removed.voters, ids(&[2, 3]));
        let voter = base.apply(MembershipChange::AddVoter(NodeId(4))).expect("add voter");
        assert_eq!(voter.voters, ids(&[1, 2, 4]));
    }

    #[test]
    fn invalid_changes_are_refused() {
        let base = Membership { voters: ids(&[1]), learners: ids(&[2]), ..Membership::default() };
        assert_eq!(base.apply(MembershipChange::AddVoter(NodeId(2))), Err(MembershipError::AlreadyMember(NodeId(2))));
        assert_eq!(base.apply(MembershipChange::AddLearner(NodeId(1))), Err(MembershipError::AlreadyMember(NodeId(1))));
        assert_eq!(base.apply(MembershipChange::RemoveNode(NodeId(9))), Err(MembershipError::NotMember(NodeId(9))));
        assert_eq!(base.apply(MembershipChange::RemoveNode(NodeId(1))), Err(MembershipError::LastVoter(NodeId(1))));
        assert_eq!(
            base.apply(MembershipChange::PromoteLearner(NodeId(1))),
            Err(MembershipError::NotLearner(NodeId(1)))
        );
        // Removing a learner from a one-voter group is fine.
        assert_eq!(base.apply(MembershipChange::RemoveNode(NodeId(2))), Ok(Membership::with_voters([NodeId(1)])));
    }
}
