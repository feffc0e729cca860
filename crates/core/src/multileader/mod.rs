//! Multi-leader replication (issue 6): the sans-IO core.
//!
//! Each datacenter (DC) is one Raft group; its leader streams the changes its group applied to the
//! other DCs, whose leaders propose them into their own logs. Everything here is replicated state,
//! applied in log order by [`MultiLeaderState::apply`]: no IO, no clock, no randomness.
//!
//! ```text
//!   ids        DcId, ConflictPolicy, OriginVector (applied vector and deps)
//!   change     ChangeOp, Change, MlEntry (what a log entry carries), JournalItem, Materialize
//!   container  one key: register versions + increments, conflict resolution, bootstrap join
//!   journal    the bounded, positioned list of applied changes a DC streams from
//!   topology   all-to-all, star, ring: routes and forwarding, around dead forwarders
//!   state      MultiLeaderState: apply (local, remote with causal hold-back, bootstrap), stats
//! ```
//!
//! See `docs/multileader.md` for the model and the exact conflict rules.

pub mod change;
pub mod container;
pub mod ids;
pub mod journal;
pub mod state;
pub mod topology;

#[cfg(test)]
mod tests;

pub use change::{Change, ChangeOp, JournalItem, Materialize, MlEntry, MlRefusal};
pub use container::{Increment, KeyState, Version};
pub use ids::{ConflictPolicy, DcId, OriginVector};
pub use journal::JournalTrimmed;
pub use state::{ConflictRecord, MlExport, MlPlantedBug, MlStats, MultiLeaderState, RECENT_CONFLICTS_MAX};
pub use topology::{Routes, Topology, TopologyKind};
