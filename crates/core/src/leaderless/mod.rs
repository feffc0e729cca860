//! Leaderless (Dynamo-style) replication: the sans-IO building blocks.
//!
//! Any replica of a key's preference list coordinates a request; writes go to all `n` replicas and
//! are acknowledged after `w` of them, reads after `r` (DeCandia et al., "Dynamo: Amazon's Highly
//! Available Key-value Store", 2007). Concurrent writes are kept as siblings under dotted version
//! vectors (Riak's model); counters are PN-counter CRDTs; replicas converge by read repair, by
//! Merkle-tree anti-entropy per slot range, and by hinted handoff.
//!
//! ```text
//!   clock     hybrid logical clock: LWW timestamps and dot counters
//!   version   dots, version vectors, the per-key container of siblings (write, merge, read)
//!   counter   PN-counter CRDT, and the INCR/DECR counter (a PN-counter on a ranked base)
//!   merkle    per-slot digests, a fixed-fanout tree over a slot range, and its diff
//!   hash      the stable 64-bit hash replicas compare
//!   placement preference lists (rendezvous hashing of slots), sloppy-quorum targets, n/w/r
//!   coordinator  the sans-IO request coordinator and replica: quorums, read repair, hinted handoff
//! ```
//!
//! See `docs/leaderless.md` for the data model and the reasons behind it.

pub mod clock;
pub mod coordinator;
pub mod counter;
pub mod hash;
pub mod merkle;
pub mod placement;
pub mod version;

pub use clock::{ClockDriftError, Hlc, HlcTimestamp};
pub use coordinator::{
    ClientReply, Coordinator, CoordinatorConfig, CoordinatorStats, Effect, HintChange, MemoryStore, Message,
    PlantedBug, Put, RequestError, Resolution, Store,
};
pub use counter::{Counter, CounterBase, CounterOverflow, PnCounter};
pub use merkle::{MerkleTree, RangeMismatch, SlotDigests};
pub use placement::{Quorum, Target, preference_list};
pub use version::{
    Causality, Dot, Fate, IncrementError, Payload, Sibling, TooManySiblings, VersionVector, VersionedValue,
};
